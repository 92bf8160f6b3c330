"""The facade's stand-in for one estimator when it runs as N shards.

:class:`ShardedEstimator` holds the shards' handles and the :class:`workers.shards.ShardMap`;
it answers every call the service makes of its estimator (folds split per shard in order,
publications and snapshots merged, state per shard, boot tokens) by fanning out to the
shards. See :mod:`workers.shards` for the mapping, the fold journal and the design.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Any

import numpy as np
import polars as pl

from workers.publication import Publication
from workers.shards import (FoldJournal, ShardMap, shard_prior,
                            shard_profile_path)

logger = logging.getLogger(__name__)


class ShardedEstimator:
    """The facade's estimator when it is sharded: fans calls out to the shards, merges.

    Has the methods of :class:`workers.estimator.EstimatorCore` that the facade calls
    (``publish``, ``maybe_publish``, ``stats``, ``live_snapshot``, ``snapshot``, state and
    boot methods, profile queries, ``remap_to``, ``save_profile``), each a fan-out over the
    runner ``stages`` and a merge (module docstring). Built by :meth:`start`.
    """

    #: Journal bound (bytes of traversal arrays since the last checkpoint).
    JOURNAL_MAX_BYTES = 1 << 30

    def __init__(self, stages: Any, net: Any, shard_map: ShardMap, handles: list[Any],
                 config: Any) -> None:
        from workers.snapshot_writer import SnapshotWriter

        self.stages, self.net, self.map, self.handles = stages, net, shard_map, handles
        self.config = config  # the service's EstimatorServiceConfig (snapshots: here)
        self._snapshots = SnapshotWriter.from_config(config)
        self._last: Publication | None = None
        self._lock = threading.Lock()
        self.publications = {"full": 0, "delta": 0}
        self.last_publication: dict[str, Any] = {}
        #: Set by the facade when it is durable (without checkpoints nothing is restored).
        self.journal: FoldJournal | None = None
        self.boot: str | None = None
        self.restores = [0] * shard_map.n

    @classmethod
    def start(cls, stages: Any, net: Any, config: Any, *, n_shards: int, prior: Any,
              data_dir: str | None, use_gpu: str) -> tuple[ShardedEstimator, bool]:
        """Start ``n_shards`` estimator stages over ``net``'s segments; ``(sharded, on_gpu)``."""
        smap = ShardMap(net, n_shards)
        views, priors, configs = [], [], []
        for s in range(n_shards):
            view = smap.view(net, s)
            path = shard_profile_path(data_dir, s, n_shards) if config.profile_path else None
            views.append(view)
            priors.append(shard_prior(prior, view, smap.edges[s], path))
            configs.append(replace(config, snapshot_dir=None, profile_path=path))
        handles, on_gpu = stages.start_estimator_shards(views, configs, priors=priors,
                                                        use_gpu=use_gpu)
        return cls(stages, net, smap, handles, config), on_gpu

    # -- runner helpers ------------------------------------------------------------------
    def _all(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any
             ) -> list[Any]:
        s = self.stages
        return s.get([s.call(h, method, *args, **kwargs) for h in self.handles], timeout=timeout)

    # -- folds ---------------------------------------------------------------------------
    def fold_calls(self, batch: Any, n_matched: int, wall_s: float,
                   vehicles: tuple[int, float, int] | None = None
                   ) -> list[tuple[Any, tuple, dict]]:
        """The fold call of every shard for one batch (see the module docstring); journals
        them and writes a snapshot first when the batch crosses a snapshot boundary. Every
        shard gets the vehicle count ``vehicles`` (its trend's persistence is the
        network's)."""
        if batch is None:
            parts, t_batch = [None] * self.map.n, None
        else:
            parts = self.map.split(batch)
            t_batch = float(np.max(np.asarray(batch.t_exit_s))) if len(batch) else None
        if self._snapshots is not None and t_batch is not None:
            self._snapshots.maybe_write(self, t_batch)
        calls = [(parts[s], n_matched if s == 0 else 0, wall_s, t_batch, vehicles)
                 for s in range(self.map.n)]
        if self.journal is not None:
            self.journal.append(calls)
        return [(self.handles[s], (c[0], c[1]),
                 {"accepted_wall_s": c[2], "batch_t_s": c[3], "vehicles": c[4]})
                for s, c in enumerate(calls)]

    # -- publications --------------------------------------------------------------------
    def maybe_publish(self, now_wall_s: float | None = None) -> Publication | None:
        """Publish when any shard is due (all shards publish the same kind); else ``None``."""
        import time

        now = time.time() if now_wall_s is None else now_wall_s
        plans = self._all("publish_plan", now)
        if not any(p["due"] for p in plans):
            return None
        full = (any(p["full_due"] for p in plans) or not all(p["possible"] for p in plans)
                or sum(p["touched"] for p in plans) * 4 > self.map.n_edges)
        return self.publish(now, full=full)

    def publish(self, now_wall_s: float | None = None, *, full: bool | None = True
                ) -> Publication | None:
        """One merged publication; ``None`` when a shard restarted (it is restored first)."""
        import time

        now = time.time() if now_wall_s is None else now_wall_s
        if full is None:
            return self.maybe_publish(now)
        with self._lock:
            last = self._last
            full = bool(full) or last is None
            pubs = self._all("publish_if_booted", self.boot, now, full=full)
            if any(p is None for p in pubs):
                return None
            if not full and any(p.full for p in pubs):  # a shard could not make a delta
                pubs = self._all("publish_if_booted", self.boot, now, full=True)
                if any(p is None for p in pubs):
                    return None
                full = True
            version = max(p.version for p in pubs)
            marks = [p.weights_t for p in pubs if p.weights_t is not None]
            weights_t = max(marks) if marks else None
            t0 = time.perf_counter()
            if full:
                pub = Publication(version=version, weights_t=weights_t,
                                  travel_time_s=self.map.merge_full(
                                      [p.travel_time_s for p in pubs]),
                                  network_version=self.net.version, published_wall_s=now)
            else:
                edges, tt = self.map.merge_delta([p.edges for p in pubs],
                                                 [p.travel_time_s for p in pubs])
                pub = Publication(version=version, weights_t=weights_t, travel_time_s=tt,
                                  network_version=self.net.version, published_wall_s=now,
                                  edges=edges, base_version=last.version,
                                  base_weights_t=last.weights_t)
            self._last = pub
            self.publications["full" if pub.full else "delta"] += 1
            self.last_publication = {"full": pub.full, "edges": int(pub.travel_time_s.shape[0]),
                                     "bytes": pub.nbytes,
                                     "merge_s": time.perf_counter() - t0}
            return pub

    @property
    def last(self) -> Publication | None:
        """The newest merged publication."""
        return self._last

    # -- queries -------------------------------------------------------------------------
    def snapshot(self, at_t_s: float | None = None) -> pl.DataFrame:
        """The shards' snapshots merged (global edge ids, sorted by edge)."""
        return self.map.merge_frames(self._all("snapshot", at_t_s))

    def stored_snapshot(self, at_t_s: float) -> pl.DataFrame:
        """The shards' stored snapshots merged (each only its edges with state; see
        ``EstimatorCore.stored_snapshot``)."""
        return self.map.merge_frames(self._all("stored_snapshot", at_t_s))

    def live_snapshot(self, edges: Any = None) -> tuple[float | None, pl.DataFrame]:
        """``(watermark, merged snapshot)`` (every shard holds the same watermark); with
        ``edges`` (global ids) each shard answers only its own of them."""
        if edges is None:
            got = self._all("live_snapshot")
        else:
            ids = np.asarray(edges, dtype=np.int64)
            part, local = self.map.shard[ids], self.map.local[ids]
            s = self.stages
            got = s.get([s.call(h, "live_snapshot", edges=local[part == i])
                         for i, h in enumerate(self.handles)])
        marks = [w for w, _ in got if w is not None]
        return (max(marks) if marks else None), self.map.merge_frames([f for _, f in got])

    def profile_revision(self, t_s: float) -> tuple[int, int] | None:
        """``(bin, sum of the shards' revisions)``: changes whenever any shard learned."""
        revs = [r for r in self._all("profile_revision", t_s) if r is not None]
        if not revs:
            return None
        return int(revs[0][0]), int(sum(int(r[1]) for r in revs))

    def profile_travel_times(self, t_s: float) -> np.ndarray | None:
        """The shards' profile travel times merged; free-flow on shards without data then."""
        got = self._all("profile_travel_times", t_s)
        if all(g is None for g in got):
            return None
        length = np.asarray(self.net.edge_length_m, dtype=np.float64)
        out = length / np.asarray(self.net.edge_freeflow_mps, dtype=np.float64)
        for s, g in enumerate(got):
            if g is not None:
                out[self.map.edges[s]] = g
        return out

    def save_profile(self) -> bool:
        """Every shard saves its profile file; whether all were written."""
        return all(self._all("save_profile"))

    # -- state ---------------------------------------------------------------------------
    def state_dict_if_booted(self, token: str | None) -> list[dict[str, Any]] | None:
        """Every shard's state, or ``None`` when one restarted (no checkpoint then)."""
        states = self._all("state_dict_if_booted", token)
        return None if any(s is None for s in states) else states

    def load_state_dict(self, state: Any) -> None:
        """Load a sharded state (a list, one per shard) or split an unsharded one by key."""
        s = self.stages
        if isinstance(state, dict):
            state = {**state, "network_keys": np.asarray(self.net.edge_key)}
            s.get([s.call(h, "load_state_by_key", state, keep_applied=(i == 0))
                   for i, h in enumerate(self.handles)])
            self._all("forget_publications")
            self._last = None
            return
        if len(state) != self.map.n:
            raise ValueError(f"the checkpoint holds {len(state)} estimator shards; this "
                             f"service has {self.map.n}")
        s.get([s.call(h, "load_state_dict", st) for h, st in zip(self.handles, state,
                                                                  strict=True)])
        self._all("forget_publications")
        self._last = None

    def mark_boot(self, token: str) -> None:
        self.boot = token
        self._all("mark_boot", token)

    def boot_tokens(self) -> list[str | None]:
        """Every shard's boot token (``None`` on one that restarted)."""
        return self._all("boot_token", timeout=30)

    def boot_token(self) -> str | None:
        """The common token, or ``None`` when any shard lost it."""
        tokens = self.boot_tokens()
        return tokens[0] if all(t == tokens[0] for t in tokens) else None

    def remap_to(self, net: Any) -> int:
        """Move every shard to ``net`` by edge key (an edge keeps its shard); edges kept."""
        smap = ShardMap(net, self.map.n)
        s = self.stages
        carried = s.get([s.call(h, "remap_to", s.share(smap.view(net, i)))
                         for i, h in enumerate(self.handles)])
        self.net, self.map, self._last = net, smap, None
        if self.journal is not None:
            # Its parts are in the old network's local ids: a restart before the next
            # checkpoint restores the whole pipeline.
            self.journal.reset(None)
        return int(sum(carried))

    # -- status --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Shard 0's stats with the sums over shards, the merged publications' counters and
        every shard's own stats under ``shards``."""
        sts = self._all("stats", timeout=30)
        sizes = [e.size for e in self.map.edges]
        cov = sum(st["coverage_edges"] * n for st, n in zip(sts, sizes, strict=True))
        last = self._last
        out = dict(sts[0])
        out.update({
            "applied": int(sum(st["applied"] for st in sts)),
            "traversals": int(sum(st["traversals"] for st in sts)),
            "fold_s": float(sum(st["fold_s"] for st in sts)),
            "watermark_t": max((st["watermark_t"] for st in sts
                                if st["watermark_t"] is not None), default=None),
            "weights_version": 0 if last is None else last.version,
            "weights_t": None if last is None else last.weights_t,
            "publications_full": self.publications["full"],
            "publications_delta": self.publications["delta"],
            "last_publication": dict(self.last_publication),
            "coverage_edges": float(cov / max(self.map.n_edges, 1)),
            "network_version": self.net.version,
            "estimator_shards": self.map.n,
            "shard_restores": list(self.restores),
            "journal_bytes": 0 if self.journal is None else self.journal.nbytes,
            "shards": sts,
        })
        for k in ("snapshots_written", "snapshot_errors", "last_snapshot_t"):
            out.pop(k, None)
        if self._snapshots is not None:
            out.update(self._snapshots.stats())
        if "profile_saves" in out:
            out["profile_saves"] = int(sum(st.get("profile_saves", 0) for st in sts))
            out["profile_save_errors"] = int(sum(st.get("profile_save_errors", 0) for st in sts))
        return out
