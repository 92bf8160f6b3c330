"""Closures and slowdowns on the service facade: operators' overrides of the travel times.

:class:`ClosureOps` is a part of :class:`workers.services.Services` (a mixin). It keeps the
closures of the serving network in a :class:`traffic.closures.ClosureStore`, saved under
``<data-dir>/closures/closures.json`` (atomically, before the request is answered, and in
the store's versioned ``state_dict`` form) and read back at start; checkpoints carry the
same state (``closures.*``), restored when the file is missing. It hands the
overrides in force to every router (``RouterCore.set_overrides``): at once when a closure is
added or removed, and from the housekeeping tick when one starts or ends by the clock. A
closure's edges keep their learned speeds; the override applies on top while it lasts.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from storage import write_atomic
from traffic.closures import ClosureStore, parse_closure

logger = logging.getLogger(__name__)


class UnknownClosure(LookupError):
    """No closure has this id."""


class ClosureOps:
    """Closure methods of :class:`workers.services.Services` (see the module docstring)."""

    def _new_closures(self) -> None:
        """An empty store (before recovery, so a checkpoint can always read it)."""
        self.closures = ClosureStore(self.net)
        self._closure_lock = threading.Lock()
        self._closures_sent: tuple[bytes, bytes] | None = None
        self._closure_revision = 0

    def _load_closures(self, checkpointed: dict[str, Any] | None) -> None:
        """Load the closures file, else the checkpoint's part (older: the file is written
        at every change)."""
        path = self._closures_path()
        if path is not None and path.exists():
            self.closures.load_state_dict(json.loads(path.read_text()))
            logger.info("restored %d closures from %s", len(self.closures.list()), path)
        elif checkpointed:
            self.closures.load_state_dict(checkpointed)
            logger.info("restored %d closures from the checkpoint", len(self.closures.list()))

    def _closures_path(self) -> Path | None:
        data_dir = self.config.data_dir
        return None if data_dir is None else Path(data_dir) / "closures" / "closures.json"

    def add_closure(self, body: dict[str, Any]) -> dict[str, Any]:
        """Validate and keep a closure (``traffic.closures.parse_closure``: ``ClosureError``
        naming the field); in force on the routers before this returns."""
        closure, edges = parse_closure(self.net, body, now_s=self.now_s(),
                                       spatial=self.spatial_index())
        with self._closure_lock:
            self.closures.add(closure, edges)
            self._save_closures()
        self.push_overrides(wait=True)
        return closure.to_json(n_edges=int(edges.size))

    def list_closures(self) -> list[dict[str, Any]]:
        """Every closure not yet ended."""
        self.closures.expire(self.now_s())
        return self.closures.list()

    def remove_closure(self, closure_id: str) -> None:
        """Drop a closure (:class:`UnknownClosure` when there is none with this id)."""
        with self._closure_lock:
            if not self.closures.remove(closure_id):
                raise UnknownClosure(f"no closure with id {closure_id!r}")
            self._save_closures()
        self.push_overrides(wait=True)

    def override_factors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(edges, factor)`` in force now (``inf``: closed)."""
        return self.closures.factors_at(self.now_s())

    def push_overrides(self, *, wait: bool = False) -> bool:
        """Hand the overrides in force now to the routers when they changed since the last
        hand-over; returns whether it did."""
        edges, factors = self.override_factors()
        sig = (edges.tobytes(), factors.tobytes())
        with self._closure_lock:
            if sig == self._closures_sent:
                return False
            self._closures_sent = sig
            self._closure_revision += 1
            rev = self._closure_revision
        if self.router is not None:
            self.router.set_overrides(edges, factors, rev)
        if self.router_actors:
            s = self.stages
            futures = [s.call(r, "set_overrides", edges, factors, rev) for r in self.router_actors]
            if wait:
                s.get(futures)
        return True

    def _save_closures(self) -> None:
        path = self._closures_path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.closures.state_dict()).encode()
        write_atomic(path, lambda fh: fh.write(data))
