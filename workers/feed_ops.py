"""Speed feeds on the service facade: OSRM segment-speed files in, the live estimate out.

:class:`FeedOps` is a part of :class:`workers.services.Services` (a mixin, like
:class:`workers.closure_ops.ClosureOps`). It keeps the serving network's feed lines in a
:class:`traffic.speed_feeds.FeedStore`, saved under ``<data-dir>/feeds/feeds.npz``
(atomically, before ``POST /v1/speeds`` is answered) and read back at start; checkpoints
carry the same state (``feeds.*``), restored when the file is missing. The blend goes to
every router (``RouterCore.set_feed``) at once when a feed is accepted and from the
housekeeping tick every ``FeedConfig.refresh_s`` while lines fade (O(fed parts) per
refresh). Speed-0 lines become closures (kind ``closure``, reason ``speed feed``, id
``feed-<edge key>``, ending at the line's time plus the age limit) in the facade's
``ClosureStore``; a later non-zero line removes the closure.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from storage import write_atomic
from traffic.closures import Closure
from traffic.speed_feeds import FeedConfig, FeedStore, export_speed_csv, parse_speed_csv

logger = logging.getLogger(__name__)

#: Closures made by the feed have ids ``feed-<edge key>``.
FEED_CLOSURE_PREFIX = "feed-"


class FeedOps:
    """Speed-feed methods of :class:`workers.services.Services` (see the module docstring)."""

    def _new_feeds(self, config: FeedConfig | None = None) -> None:
        """An empty store (before recovery, so a checkpoint can always read it)."""
        self.feed_config = config or FeedConfig()
        self.feeds = FeedStore(self.net, self.feed_config)
        self._feed_lock = threading.Lock()
        self._feed_revision = 0
        self._feed_sent_wall = 0.0
        self._feed_nonempty = False

    def _load_feeds(self, checkpointed: dict[str, Any] | None) -> None:
        """Load the feeds file, else the checkpoint's part; hand the blend to the routers."""
        path = self._feeds_path()
        if path is not None and path.exists():
            with np.load(path, allow_pickle=False) as z:
                self.feeds.load_state_dict({k: z[k] for k in z.files})
            logger.info("restored %d speed-feed lines from %s", self.feeds.stats(
                self.now_s())["parts_live"], path)
        elif checkpointed:
            self.feeds.load_state_dict(checkpointed)
        self.push_feed(force=True)

    def _feeds_path(self) -> Path | None:
        data_dir = self.config.data_dir
        return None if data_dir is None else Path(data_dir) / "feeds" / "feeds.npz"

    def import_speeds(self, data: bytes) -> dict[str, Any]:
        """Apply an OSRM segment-speed file (``FeedFormatError`` for a malformed one: nothing
        applied); saved and in force on the routers before this returns. Returns the counts
        and ``rejected``: ``[{row, reason}]`` for lines naming no segment of the network."""
        t0 = time.perf_counter()
        frm, to, speed, rows = parse_speed_csv(data)
        now = self.now_s()
        with self._feed_lock:
            rejected = self.feeds.apply(frm, to, speed, now)
            self._save_feeds()
        closed, reopened = self._sync_feed_closures(now)
        self.push_feed(force=True, wait=True)
        return {"lines": int(frm.size), "applied": int(frm.size) - len(rejected),
                "rejected": [{"row": int(rows[i]), "reason": why} for i, why in rejected],
                "closed_edges": closed, "reopened_edges": reopened, "received_t": now,
                "import_s": round(time.perf_counter() - t0, 4)}

    def export_speeds(self) -> bytes:
        """The live travel times as an OSRM segment-speed file (``export_speed_csv``)."""
        return export_speed_csv(self.net, self._on_router("live_travel_times"))

    def feed_source(self) -> dict[str, Any]:
        """The speed feed's entry under ``sources`` in ``/v1/status``."""
        return self.feeds.stats(self.now_s())

    def push_feed(self, *, force: bool = False, wait: bool = False) -> bool:
        """Send the blend in force now to the routers (every ``refresh_s`` from the tick, at
        once with ``force``); returns whether it did."""
        wall = time.monotonic()
        if not force and wall - self._feed_sent_wall < self.feed_config.refresh_s:
            return False
        # The blend is computed and numbered under the lock: a tick that read the lines
        # before an import must not reach the routers with a later revision than it.
        with self._feed_lock:
            now = self.now_s()
            if self.feeds.expire(now):
                self._save_feeds()
            edges, keep, add = self.feeds.blend(now)
            self._feed_sent_wall = wall
            if not force and edges.size == 0 and not self._feed_nonempty:
                return False  # nothing fed before or now: the routers hold no blend
            self._feed_revision += 1
            rev, self._feed_sent_wall = self._feed_revision, wall
            self._feed_nonempty = bool(edges.size)
        if self.router is not None:
            self.router.set_feed(edges, keep, add, rev)
        if self.router_actors:
            s = self.stages
            futures = [s.call(r, "set_feed", edges, keep, add, rev) for r in self.router_actors]
            if wait:
                s.get(futures)
        return True

    def _sync_feed_closures(self, now: float) -> tuple[int, int]:
        """Make the feed's closures those of its live speed-0 parts; ``(closed, reopened)``."""
        edges, end = self.feeds.zero_edges(now)
        keys = np.asarray(self.net.edge_key)[edges]
        want = {f"{FEED_CLOSURE_PREFIX}{int(k)}": (int(e), float(t), int(k))
                for e, t, k in zip(edges.tolist(), end.tolist(), keys.tolist())}
        with self._closure_lock:
            held = {c["id"]: c for c in self.closures.list()
                    if str(c["id"]).startswith(FEED_CLOSURE_PREFIX)}
            gone = [cid for cid in held if cid not in want]
            for cid in gone:
                self.closures.remove(cid)
            added = 0
            for cid, (e, t, k) in want.items():
                if cid in held and held[cid]["end_t"] == t:
                    continue
                added += cid not in held
                self.closures.add(Closure(
                    id=cid, kind="closure", factor=float("inf"), start_t=now, end_t=t,
                    reason="speed feed", direction="forward", geometry=None,
                    edge_keys=(k,)), np.array([e], dtype=np.int64))
            if gone or want:
                self._save_closures()
        if gone or want:
            self.push_overrides(wait=True)
        return added, len(gone)

    def _swap_feeds(self) -> None:
        """Carry the feed over to a swapped-in network (by OSM node pairs)."""
        self.feeds = self.feeds.remap_to(self.net)
        self._feed_revision += 1
        self.push_feed(force=True, wait=True)

    def _save_feeds(self) -> None:
        path = self._feeds_path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **self.feeds.state_dict())
        data = buf.getvalue()
        write_atomic(path, lambda fh: fh.write(data))
