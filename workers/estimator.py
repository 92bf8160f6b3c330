"""The estimator stage: fold traversal batches into speed state and publish travel times.

:class:`EstimatorCore` owns a :class:`traffic.estimator.SpeedEstimator` and decides when to
publish: every ``refresh_s`` of event time (replay) or wall time (live). ``workers/pipeline.py``
runs it as one Ray actor (with the GPU when CuPy and a device are present); tests use it
directly.

Publications are deltas with a full vector at a bounded cadence
(:mod:`workers.publication`, where the bound on what a delta defers is stated).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from graph.network import RoadNetwork
from workers.estimator_profile import ProfileLearning
from workers.estimator_state import EstimatorState
from workers.publication import Publication
from workers.snapshot_writer import SnapshotWriter


@dataclass(frozen=True, slots=True)
class EstimatorServiceConfig:
    """When and how the estimator stage publishes.

    Attributes
    ----------
    refresh_s
        Publish at most once per this many seconds of the service clock.
    clock
        ``"wall"``: refresh by wall time; ``"event"``: by the event-time watermark of the
        folded traversals (replays run faster than real time).
    estimator
        ``traffic.estimator.EstimatorConfig``; ``None`` for its defaults.
    freshness_window
        How many recent freshness samples (probe accepted -> published, s) to keep.
    """

    refresh_s: float = 1.0
    clock: Literal["wall", "event"] = "wall"
    estimator: Any = None
    freshness_window: int = 4096
    #: Directory of the congestion snapshot store (``None``: snapshots are not written).
    snapshot_dir: str | None = None
    #: Snapshot period in event seconds (``None``: not written).
    snapshot_every_s: float | None = 60.0
    #: Snapshots older than this many event seconds are deleted (``None``: kept).
    snapshot_retention_s: float | None = 7 * 86400.0
    #: Where the learned time-of-week profile is saved (``None``: not saved).
    profile_path: str | None = None
    #: Fold the published paces into the profile once per this many event seconds.
    profile_observe_every_s: float = 60.0
    #: Save the profile when the event clock crosses a multiple of this (``None``: only at
    #: shutdown, :meth:`EstimatorCore.save_profile`).
    profile_save_every_s: float | None = 300.0
    #: Only edges whose estimate has at least this confidence are folded into the profile.
    profile_min_confidence: float = 0.2
    #: A full travel-time vector at least once per this many seconds of the service clock;
    #: publications in between are deltas (``None``: every publication is full). It bounds
    #: the decay drift deltas leave out (module docstring).
    full_every_s: float | None = 60.0


class EstimatorCore(EstimatorState, ProfileLearning):
    """Fold traversals, count applied probes, publish versioned travel times.

    Parameters
    ----------
    net
        The road network.
    config
        Publishing settings.
    xp
        ``numpy`` or ``cupy`` (the module or its name) for the estimator's arrays.
    prior
        A ``traffic.profiles.TimeOfWeekProfile`` (or ``None``: free-flow prior). It is the
        estimator's prior where it has data, and it learns: every
        ``profile_observe_every_s`` of event time, publications fold the paces of confident
        edges into it, and it is saved to ``profile_path`` every ``profile_save_every_s``.
    """

    def __init__(
        self,
        net: RoadNetwork,
        config: EstimatorServiceConfig | None = None,
        *,
        xp: Any = np,
        prior: Any = None,
    ) -> None:
        from traffic.estimator import EstimatorConfig, SpeedEstimator

        if isinstance(xp, str):  # "numpy" / "cupy": a module cannot travel to a Ray actor
            import importlib

            xp = importlib.import_module(xp)
        from traffic.profiles import TimeOfWeekProfile

        self.config = config or EstimatorServiceConfig()
        self.net = net
        self.xp = xp
        profile = prior if isinstance(prior, TimeOfWeekProfile) else None
        if profile is not None and not np.array_equal(profile.edge_key, net.edge_key):
            prior = profile = profile.remap_to(net.edge_key)  # one object: the estimator reads it
        self.prior = prior
        self.profile: TimeOfWeekProfile | None = profile
        self._profile_observed_t: float | None = None
        self._profile_saved_t: float | None = None
        self.profile_saves = 0
        self.profile_save_errors = 0
        ecfg = self.config.estimator if self.config.estimator is not None else EstimatorConfig()
        self.estimator = SpeedEstimator(net, ecfg, xp=xp, prior=prior)
        from traffic.forecast import PaceTrend

        #: Trend of traversal paces for forecasts (traffic.forecast), folded with the speeds.
        self.trend = PaceTrend(net.edge_key)
        self.applied = 0
        self.folds = 0
        self.traversals = 0
        self.fold_s = 0.0
        self.watermark_t: float | None = None
        self._covered = np.zeros(net.n_edges, dtype=bool)
        self._unpublished: list[tuple[float, int]] = []  # (accepted wall s, n probes)
        self._freshness_s: deque[float] = deque(maxlen=self.config.freshness_window)
        self._last: Publication | None = None
        self._last_publish_wall = -np.inf
        self._dirty = False
        # Delta bookkeeping: edges folded since the last publication (host arrays), the vector
        # the routers hold after the last publication, and when the last full one went out.
        self._touched: list[np.ndarray] = []
        self._published: np.ndarray | None = None
        self._full_clock: float | None = None
        self._full_prior_bin: Any = None
        self._seen_version: int | None = None  # state version after our last fold/publication
        self.publications = {"full": 0, "delta": 0}
        self.last_publication: dict[str, Any] = {}
        self._snapshots = SnapshotWriter.from_config(self.config)
        self._boot: str | None = None

    def fold(self, batch: Any, n_probes: int = 0, *, accepted_wall_s: float | None = None,
             batch_t_s: float | None = None,
             vehicles: tuple[int, float, int] | None = None) -> int:
        """Fold one traversal batch; ``n_probes`` matched probes become ``applied``.

        ``vehicles``: ``(partition, event time s, count)``, the probe vehicles an ingest
        partition follows (``workers.ingest.IngestReply.vehicles``), for the forecast's
        persistence (``traffic.accumulation``); ``None``: no count with this batch.

        ``batch_t_s``: the event time of the batch this one is a part of (an estimator shard
        folds its segments' part of every batch, :mod:`workers.shards`, possibly empty, at the
        whole batch's newest exit time, so that every shard's clock, watermark, profile and
        snapshot boundaries move as one estimator's would). ``None``: the newest exit time of
        ``batch`` (none when it is empty).

        Returns the estimator's state version after the fold.
        """
        t0 = time.perf_counter()
        t_batch = batch_t_s
        if t_batch is None and batch is not None and len(batch.edge):
            t_batch = float(np.max(np.asarray(batch.t_exit_s)))
        if self._snapshots is not None and t_batch is not None:
            # Snapshot the state as it stood at a crossed boundary, before this batch.
            self._snapshots.maybe_write(self, t_batch)
        if self.profile is not None and t_batch is not None:
            # Like snapshots: the state at a crossed event-time boundary, before this batch, so
            # what the profile learns depends on event time and fold order only (a replay at any
            # speed, or a crash-replay from a checkpoint, learns the same).
            self._learn_profile(t_batch)
        if vehicles is not None:
            part, t_v, n_v = vehicles
            self.trend.observe_vehicles(int(part), float(t_v), int(n_v))
        before = self.estimator.version
        version = (self.estimator.version if batch is None
                   else self.estimator.apply(batch, t_s=t_batch))
        if self._seen_version == before:
            self._seen_version = int(version)  # the state moved by this fold only
        if batch is not None and len(batch.edge):
            edge = np.asarray(batch.edge)
            # The forecast's trend: O(batch), at the traversals' mid times (traffic.forecast).
            mid_t = 0.5 * (np.asarray(batch.t_enter_s) + np.asarray(batch.t_exit_s))
            self.trend.update(edge, mid_t, np.asarray(batch.pace_s_per_m),
                              np.asarray(batch.weight), float(t_batch))
            self._touched.append(edge)  # O(batch): the next delta lists these edges
            self._covered[edge] = True
            self.traversals += int(edge.shape[0])
        if t_batch is not None:
            self.watermark_t = t_batch if self.watermark_t is None else max(self.watermark_t,
                                                                            t_batch)
        self.applied += int(n_probes)
        self.folds += 1
        self.fold_s += time.perf_counter() - t0
        if n_probes:
            self._unpublished.append((time.time() if accepted_wall_s is None else accepted_wall_s,
                                      int(n_probes)))
        self._dirty = True
        return int(version)

    def advance(self, watermark_t: float) -> None:
        """Move the event-time watermark forward without traversals (from ingest)."""
        if self._snapshots is not None:
            self._snapshots.maybe_write(self, float(watermark_t))
        if self.watermark_t is None or watermark_t > self.watermark_t:
            self.watermark_t = float(watermark_t)

    def due(self, now_wall_s: float | None = None) -> bool:
        """Whether a refresh interval has passed since the last publication."""
        if self._last is None:
            return True
        if not self._dirty:
            return False
        if self.config.clock == "event":
            last_t = self._last.weights_t
            return self.watermark_t is not None and (
                last_t is None or self.watermark_t - last_t >= self.config.refresh_s)
        now = time.time() if now_wall_s is None else now_wall_s
        return now - self._last_publish_wall >= self.config.refresh_s

    def maybe_publish(self, now_wall_s: float | None = None) -> Publication | None:
        """Publish when :meth:`due` (a delta unless a full vector is due); else ``None``."""
        return self.publish(now_wall_s, full=None) if self.due(now_wall_s) else None

    def full_due(self, now_wall_s: float | None = None) -> bool:
        """Whether the next publication must be a whole vector (see the module docstring)."""
        every = self.config.full_every_s
        if every is None or self._last is None or self._published is None:
            return True
        if self._seen_version != self.estimator.version:
            return True  # the state changed other than by our folds (restored, replaced)
        if getattr(self.estimator, "_prior_bin", None) != self._full_prior_bin:
            return True  # a new time-of-week bin: the prior of every edge changed
        clock = self._clock(now_wall_s)
        if clock is None or self._full_clock is None:
            return False  # no clock yet: counting starts with the first clocked publication
        return clock - self._full_clock >= every

    def _clock(self, now_wall_s: float | None) -> float | None:
        if self.config.clock == "event":
            return self.watermark_t
        return time.time() if now_wall_s is None else now_wall_s

    def publish_plan(self, now_wall_s: float) -> dict[str, Any]:
        """What :meth:`maybe_publish` would decide at ``now_wall_s``, without publishing:
        ``due``, ``full_due``, ``touched`` (edges folded since the last publication) and
        ``possible`` (a delta can be made). Estimator shards (:mod:`workers.shards`) are
        asked for it so that they all publish the same kind at once."""
        touched = self._touched_edges()
        return {"due": self.due(now_wall_s), "full_due": self.full_due(now_wall_s),
                "touched": int(touched.size),
                "possible": self._last is not None and self._published is not None
                and self._seen_version == self.estimator.version}

    def publish_if_booted(self, token: str | None, now_wall_s: float, *,
                          full: bool) -> Publication | None:
        """:meth:`publish` if this estimator still carries the boot ``token``, else ``None``
        (a restarted shard's state is short of folds and must not be published)."""
        return self.publish(now_wall_s, full=full) if self._boot == token else None

    def forget_publications(self) -> None:
        """Forget what was published (a restored shard): the next publication is full."""
        self._last, self._published, self._touched = None, None, []
        self._unpublished.clear()
        self._dirty = True

    def _touched_edges(self) -> np.ndarray:
        """The distinct edges folded since the last publication (kept merged)."""
        if not self._touched:
            return np.zeros(0, dtype=np.int32)
        if len(self._touched) > 1:
            self._touched = [np.unique(np.concatenate(self._touched)).astype(np.int32)]
        return np.unique(self._touched[0]).astype(np.int32)

    def publish(self, now_wall_s: float | None = None, *, full: bool | None = True) -> Publication:
        """Stamp a new publication of the travel times at the watermark.

        ``full=True`` (the default): the whole vector. ``full=None``: a delta of the edges
        folded since the last publication, unless :meth:`full_due` (or the delta would list
        more than a quarter of the edges). ``full=False``: a delta whenever one is possible.
        """
        now = time.time() if now_wall_s is None else now_wall_s
        t0 = time.perf_counter()
        touched = self._touched_edges()
        possible = self._last is not None and self._published is not None and \
            self._seen_version == self.estimator.version
        if full is None:
            full = self.full_due(now) or touched.size * 4 > self.net.n_edges
        if full or not possible:
            version, tt = self.estimator.travel_times(self.watermark_t)  # float64, on the host
            pub = Publication(version=int(version), weights_t=self.watermark_t, travel_time_s=tt,
                              network_version=self.net.version, published_wall_s=now,
                              eta=self.eta_model(tt))
            self._published = np.array(tt, dtype=np.float64)
            self._full_clock = self._clock(now)
            self._full_prior_bin = getattr(self.estimator, "_prior_bin", None)
        else:
            tt = self._travel_times_of(touched)
            changed = tt != self._published[touched]
            edges, tt = touched[changed], tt[changed]
            self._published[edges] = tt
            last = self._last
            pub = Publication(version=int(self.estimator.version), weights_t=self.watermark_t,
                              travel_time_s=tt, network_version=self.net.version,
                              published_wall_s=now, edges=edges, base_version=last.version,
                              base_weights_t=last.weights_t)
        if self._full_clock is None:
            self._full_clock = self._clock(now)
        self._touched.clear()
        self._seen_version = int(self.estimator.version)
        self.publications["full" if pub.full else "delta"] += 1
        self.last_publication = {"full": pub.full, "edges": int(pub.travel_time_s.shape[0]),
                                 "bytes": pub.nbytes, "publish_s": time.perf_counter() - t0}
        for accepted_s, n in self._unpublished:
            self._freshness_s.extend([max(now - accepted_s, 0.0)] * min(n, 64))
        self._unpublished.clear()
        # The ETA model (its evidence edges only) travels with the returned publication only:
        # what the estimator keeps of its newest publication is the key and the times.
        kept = pub if getattr(pub, "eta", None) is None else replace(pub, eta=None)
        self._last, self._last_publish_wall, self._dirty = kept, now, False
        return pub

    def eta_model(self, travel_time_s: np.ndarray | None = None) -> Any:
        """The forecast and range model at the watermark as it travels
        (``traffic.eta_model.CompactEtaModel``: the edges with evidence only), or ``None``
        before any event time. Built with full publications only; O(evidence edges) after
        the travel-time vector."""
        from traffic.estimator import decayed_weight
        from traffic.eta_model import build_compact_eta_model

        t = self.watermark_t
        if t is None:
            return None
        est = self.estimator
        if travel_time_s is None:
            travel_time_s = est.travel_times(t)[1]
        # Only the edges with evidence (in the estimator or the trend) travel; the routers
        # expand the rest from the defaults and attach their network's free-flow times
        # (eta_model.with_freeflow).
        idx = np.union1d(est.evidence_edges(), self.trend.evidence_edges())
        length = np.asarray(self.net.edge_length_m, dtype=np.float64)[idx]
        tt = np.asarray(travel_time_s, dtype=np.float64)[idx]
        pace = np.where(length > 0, tt / np.where(length > 0, length, 1.0), 1.0)
        sub = est.state.subset(est.xp.asarray(idx))
        w = decayed_weight(sub, t, config=est.config)
        weight = np.asarray(w.get() if hasattr(w, "get") else w, dtype=np.float64)
        var = np.asarray(sub.var.get() if hasattr(sub.var, "get") else sub.var)
        return build_compact_eta_model(self.trend, idx, pace, var, weight, t,
                                       prior_weight=est.config.prior_weight)

    def _travel_times_of(self, edges: np.ndarray) -> np.ndarray:
        """Travel times (s, float64, host) of ``edges`` at the watermark: the same arithmetic
        as ``SpeedEstimator.travel_times`` on those entries only, so the values are equal."""
        from traffic.estimator import current_pace

        est = self.estimator
        st = est.state
        idx = est.xp.asarray(edges)
        sub = st.subset(idx)
        pace = current_pace(sub, self.watermark_t, config=est.config)
        pace = np.asarray(pace.get() if hasattr(pace, "get") else pace).astype(np.float64)
        return np.asarray(self.net.edge_length_m)[edges] * pace

    def published_travel_times(self) -> np.ndarray | None:
        """A copy of the whole vector routers hold after the last publication (``None``
        before the first): the last full vector with every later delta applied."""
        return None if self._published is None else self._published.copy()

    @property
    def last(self) -> Publication | None:
        """The newest publication (``None`` before the first)."""
        return self._last

    def snapshot(self, at_t_s: float | None = None, edges: Any = None) -> Any:
        """Per-segment speed state as a polars DataFrame (see ``SpeedEstimator.snapshot``;
        ``edges``: only those edge ids' rows).

        The frame owns its memory: later folds do not change it.
        """
        return self.estimator.snapshot(self.watermark_t if at_t_s is None else at_t_s,
                                       edges=edges)

    def stored_snapshot(self, at_t_s: float) -> Any:
        """The snapshot a store keeps: the rows of ``SpeedEstimator.stored_edges`` only (a
        reader puts the others back as free-flow, :func:`traffic.snapshots.fill_absent`);
        at country scale a tenth of the rows or less, so the minute's write costs what the
        probes touched."""
        return self.snapshot(at_t_s, edges=self.estimator.stored_edges())

    def live_snapshot(self, edges: Any = None) -> tuple[float | None, Any]:
        """``(watermark_t, snapshot(edges=edges))``: the live state and the event time it
        stands at."""
        return self.watermark_t, self.snapshot(edges=edges)

    def remap_to(self, net: RoadNetwork) -> int:
        """Carry speed state over to a new network by stable edge keys; returns edges kept."""
        if self.profile is not None:
            self.profile = self.prior = self.profile.remap_to(net.edge_key)
            self._profile_observed_t = None
        self.estimator = self.estimator.remap_to(net) or self.estimator
        if self.profile is not None:
            self.estimator._profile = self.profile  # share it: the prior follows what we learn
        keep = net.edge_index_of_keys(self.net.edge_key)
        covered = np.zeros(net.n_edges, dtype=bool)
        covered[keep[(keep >= 0) & self._covered]] = True
        from traffic.forecast import PaceTrend

        trend = PaceTrend(net.edge_key, self.trend.config, accumulation=self.trend.vehicles.config)
        trend.load_state_dict(self.trend.state_dict())  # by edge key
        self.trend = trend
        self.net, self._covered, self._last, self._dirty = net, covered, None, True
        self._published, self._touched = None, []  # the next publication is full
        return int(np.count_nonzero(keep >= 0))

    def stats(self) -> dict[str, Any]:
        """Counters: applied probes, folds, coverage, fold seconds, freshness percentiles, and
        the forecast's vehicle count and persistence."""
        fresh = np.asarray(self._freshness_s, dtype=np.float64)
        return {
            "applied": self.applied,
            "folds": self.folds,
            "traversals": self.traversals,
            "fold_s": self.fold_s,
            "watermark_t": self.watermark_t,
            "weights_version": 0 if self._last is None else self._last.version,
            "weights_t": None if self._last is None else self._last.weights_t,
            "publications_full": self.publications["full"],
            "publications_delta": self.publications["delta"],
            "last_publication": dict(self.last_publication),
            "coverage_edges": float(self._covered.mean()) if self._covered.size else 0.0,
            "freshness_p50_s": float(np.percentile(fresh, 50)) if fresh.size else None,
            "freshness_p99_s": float(np.percentile(fresh, 99)) if fresh.size else None,
            "network_version": self.net.version,
            # The forecast's trend: the probe vehicles on the road and the persistence they
            # give its slopes (traffic.accumulation).
            "forecast": {**self.trend.vehicles.stats(),
                         "pool_slope_per_s": self.trend.pool_slope(),
                         "gain": self.trend.gain()},
            **({} if self.profile is None else {
                "profile_saves": self.profile_saves,
                "profile_save_errors": self.profile_save_errors}),
            **({} if self._snapshots is None else self._snapshots.stats()),
        }
