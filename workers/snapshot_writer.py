"""Congestion snapshots of the estimator's state, written every ``snapshot_every_s`` of event
time into a :class:`traffic.snapshots.SnapshotStore` (what ``/v1/congestion?at=`` reads)."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


class SnapshotWriter:
    """Write the estimator's state into a snapshot store every ``snapshot_every_s`` of event time."""

    def __init__(self, directory: str, every_s: float, retention_s: float | None) -> None:
        from traffic.snapshots import SnapshotScheduler, SnapshotStore

        self.store = SnapshotStore(directory, retention_s=retention_s)
        self.scheduler = SnapshotScheduler(every_s)
        self.written = 0
        self.errors = 0
        self.last_t: float | None = None

    @classmethod
    def from_config(cls, config: Any) -> SnapshotWriter | None:
        if config.snapshot_dir is None or config.snapshot_every_s is None:
            return None
        return cls(config.snapshot_dir, config.snapshot_every_s, config.snapshot_retention_s)

    def maybe_write(self, core: Any, t_s: float) -> None:
        """Write a snapshot when events at ``t_s`` cross a boundary; never raises on I/O."""
        boundary = self.scheduler.due(t_s)
        if boundary is None:
            return
        try:
            frame = core.stored_snapshot(boundary) if hasattr(core, "stored_snapshot") \
                else core.snapshot(boundary)
            self.store.write(frame, t_s=boundary,
                             network_version=core.net.version)
            self.store.prune(boundary)
        except OSError:
            # A full or failing disk must not stop estimation; the count shows in stats.
            self.errors += 1
            logger.exception("snapshot at %s failed", boundary)
            return
        self.written += 1
        self.last_t = boundary

    def stats(self) -> dict[str, Any]:
        return {"snapshots_written": self.written, "snapshot_errors": self.errors,
                "last_snapshot_t": self.last_t}
