"""The ingest stage for one partition of vehicles: validate -> map-match -> traversals.

:class:`IngestCore` is plain Python (unit-tested without Ray); ``workers/pipeline.py`` wraps
it in a Ray actor per partition. Vehicles are assigned to partitions by
:func:`partition_of`, a stable hash of ``vehicle_id`` (not Python's per-process salted
``hash()``), so one vehicle's trace always reaches the same matcher, on any node.

Every probe the core sees ends in exactly one counter: ``rejected`` (by reason), or, once
accepted, ``pending`` (held by the matcher awaiting later points), ``unmatched`` (decided,
matching no road, by reason) or ``matched`` (decided and handed on in a traversal batch;
the estimator counts it ``applied`` when it folds the batch).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from graph.network import RoadNetwork
from traffic.probes import ProbeValidationConfig, VehicleLastSeen, validate_probes

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def partition_of(vehicle_id: np.ndarray | pl.Series | list[str], n_partitions: int) -> np.ndarray:
    """Return the partition (``0..n_partitions-1``) of each vehicle id, stable across processes.

    FNV-1a over the UTF-8 bytes, vectorised over ids (one pass per byte position), so it is
    the same on every machine and Python run.

    Examples
    --------
    >>> partition_of(["a", "b", "a"], 4).tolist()[0] == partition_of(["a"], 4).tolist()[0]
    True
    """
    if n_partitions < 1:
        raise ValueError(f"`n_partitions` must be >= 1; got {n_partitions!r}")
    ids = pl.Series(vehicle_id, dtype=pl.Utf8) if not isinstance(vehicle_id, pl.Series) else vehicle_id
    if ids.len() == 0 or n_partitions == 1:
        return np.zeros(ids.len(), dtype=np.int32)
    uniq = ids.unique()
    raw = np.asarray(uniq.fill_null("").to_list(), dtype=object).astype("S")
    width = raw.dtype.itemsize
    codes = raw.view(np.uint8).reshape(len(raw), width)
    h = np.full(len(raw), _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(width):
            byte = codes[:, j].astype(np.uint64)
            # Padding NULs past the end of shorter ids must not change their hash.
            h = np.where(byte > 0, (h ^ byte) * _FNV_PRIME, h)
    part_u = (h % np.uint64(n_partitions)).astype(np.int32)
    lookup = pl.DataFrame({"vehicle_id": uniq, "_p": part_u})
    return ids.to_frame("vehicle_id").join(lookup, on="vehicle_id", how="left")["_p"].to_numpy()


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """How an ingest partition validates and matches.

    Attributes
    ----------
    validation
        Bounds of :func:`traffic.probes.validate_probes`.
    idle_flush_s
        A vehicle with no new point for this long (event time, s) is flushed: its held
        points are decided, so ``pending`` drains when a vehicle stops reporting.
    matcher
        The matcher's configuration (``traffic.matching.MatcherConfig``); ``None`` for its
        defaults.
    route_bound_m
        Farthest road distance (m) the matcher's on-demand route searches reach
        (``graph.route_distances``): beyond it a transition is infeasible.
    traversal
        ``traffic.traversals.TraversalConfig`` (``None``: its defaults).
    cache_dir
        Where the table is cached by network version (``None``: built in memory each time).
    route_trips_max
        Completed probe trips handed on per reply for the routers' bias learning (the newest
        eligible ones, :class:`traffic.probe_trips.RouteTripCollector`); 0: none collected.
    route_trip_max_edges
        Edges an open trace keeps for its trip (the newest; memory bound per trace).
    """

    validation: ProbeValidationConfig = field(default_factory=ProbeValidationConfig)
    idle_flush_s: float = 60.0
    matcher: Any = None
    route_bound_m: float = 1500.0
    traversal: Any = None
    cache_dir: str | None = None
    route_trips_max: int = 64
    route_trip_max_edges: int = 256


@dataclass(slots=True)
class IngestReply:
    """What one ``ingest`` call gives back to the API and passes on to the estimator.

    ``rejected`` holds ``(row, reason)`` pairs with ``row`` indexing the input batch;
    ``batch`` is the traversal batch to fold (``None`` when empty) and ``n_matched`` the
    number of probes whose match was decided on a road by this call (they become
    ``applied`` when the estimator folds ``batch``). ``trips``: the completed probe trips
    this call closed (``traffic.probe_trips.RouteTrips``, the newest ``route_trips_max``;
    ``None`` when none), for the routers' bias learning; they are not probes and count in
    no probe counter. ``vehicles``: ``(partition, event time s, vehicles)``, the probe
    vehicles of this partition with an accepted probe within ``idle_flush_s`` of its newest
    (:meth:`IngestCore.active_vehicles`), for the forecast's persistence
    (``traffic.accumulation``); only ingest calls carry it (``None`` for ticks and flushes,
    whose timing is the wall clock's: the count then depends on the probes alone).
    """

    accepted: int
    rejected: list[tuple[int, str]]
    batch: Any
    n_matched: int
    stage_s: dict[str, float]
    #: Wall time (unix s) the batch was accepted by the API (``None``: a tick or flush).
    accepted_wall_s: float | None = None
    trips: Any = None
    vehicles: tuple[int, float, int] | None = None


class IngestCore:
    """Validate, match and extract traversals for the vehicles of one partition.

    Parameters
    ----------
    net
        The road network.
    config
        Partition settings.
    index, routes
        A prepared ``graph.spatial.SpatialIndex`` and the matcher's route distances
        (``graph.route_distances.RouteDistances``), shared when several cores run in one
        process; made here when ``None``.
    partition
        This core's partition number (reported in :meth:`stats`).

    Traversal batches go back in each reply; the service folds them into the estimator in
    the order of its calls (``workers.services.Services``), so the fold order, and with it
    the estimates, do not depend on which partition answered first.
    """

    def __init__(
        self,
        net: RoadNetwork,
        config: IngestConfig | None = None,
        *,
        index: Any = None,
        routes: Any = None,
        partition: int = 0,
    ) -> None:
        self.config = config or IngestConfig()
        self.partition = partition
        self._counts: Counter[str] = Counter()
        self._rejected_by_reason: Counter[str] = Counter()
        self._stage_s: Counter[str] = Counter()
        self._watermark_t: float | None = None
        self._set_network(net, index=index, routes=routes)

    def _set_network(self, net: RoadNetwork, *, index: Any = None, routes: Any = None) -> None:
        from graph.artifacts import spatial_index_for
        from graph.route_distances import build_route_distances
        from traffic.matching import MatcherConfig, OnlineMatcher
        from traffic.traversals import TraversalExtractor

        self.net = net
        # The network's extent, read once: RoadNetwork.bbox is a pass over every geometry
        # point (1.4 s of every 2.4 s of matching at K=6 when read per batch).
        self._bbox = net.bbox
        # Mapped from the prepared artifacts in cache_dir (shared by every process), when set.
        index = index if index is not None else spatial_index_for(net, self.config.cache_dir)
        if routes is None:  # nothing precomputed: searches run on demand, cached
            routes = build_route_distances(net, bound_m=self.config.route_bound_m)
        mcfg = self.config.matcher if self.config.matcher is not None else MatcherConfig()
        self.matcher = OnlineMatcher(net, index, routes, mcfg)
        tcfg = self.config.traversal
        self.extractor = (TraversalExtractor(net) if tcfg is None
                          else TraversalExtractor(net, tcfg))
        self.trip_collector = self._new_trip_collector(net)
        self.last_seen = VehicleLastSeen(horizon_s=self.config.validation.duplicate_horizon_s)

    # -- the hot path -------------------------------------------------------------------
    def ingest(
        self, probes: pl.DataFrame, *, now_s: float, accepted_wall_s: float | None = None
    ) -> IngestReply:
        """Validate a probe batch, push accepted points to the matcher, return traversals.

        ``now_s`` is the service clock (wall, or the event-time watermark when replaying);
        it bounds future timestamps and drives the idle flush.
        """
        t0 = time.perf_counter()
        res = validate_probes(probes, config=self.config.validation, now_s=now_s,
                              bbox=self._bbox, last_seen=self.last_seen)
        t1 = time.perf_counter()
        acc = res.accepted
        self._counts["received"] += probes.height
        self._counts["accepted"] += acc.height
        for reason, n in res.counts.items():
            if reason != "ok" and n:
                self._rejected_by_reason[reason] += n
        if acc.height:
            tmax = float(acc["t"].max())  # type: ignore[arg-type]
            self._watermark_t = tmax if self._watermark_t is None else max(self._watermark_t, tmax)
        matched = self._push(acc)
        idle_now = now_s if self._watermark_t is None else min(now_s, self._watermark_t)
        matched += self._flush_idle(idle_now)
        t2 = time.perf_counter()
        batch, n_matched = self._traversals(matched)
        t3 = time.perf_counter()
        trips = self._route_trips(matched)
        t4 = time.perf_counter()
        stage = {"validate": t1 - t0, "match": t2 - t1, "traversals": t3 - t2, "trips": t4 - t3}
        self._stage_s.update(stage)
        rej = res.rejected
        w = self._watermark_t
        vehicles = None if w is None else (self.partition, w, self.active_vehicles(w))
        return self._reply(IngestReply(
            accepted=acc.height,
            rejected=list(zip(rej["row"].to_list(), rej["reason"].to_list(), strict=True)),
            batch=batch, n_matched=n_matched, stage_s=stage, vehicles=vehicles,
        ), accepted_wall_s, trips)

    def tick(self, now_s: float) -> IngestReply:
        """Flush vehicles idle at ``now_s`` (no new probes); returns their traversals."""
        outputs = self._flush_idle(now_s)
        batch, n = self._traversals(outputs)
        return self._reply(IngestReply(0, [], batch, n, {}), None, self._route_trips(outputs))

    def flush(self) -> IngestReply:
        """Decide every held point now (end of a replay, shutdown); returns traversals."""
        outputs = [self.matcher.flush()]
        batch, n = self._traversals(outputs)
        return self._reply(IngestReply(0, [], batch, n, {}), None, self._route_trips(outputs))

    @staticmethod
    def _reply(reply: IngestReply, accepted_wall_s: float | None,
               trips: Any = None) -> IngestReply:
        reply.accepted_wall_s = accepted_wall_s
        reply.trips = trips
        return reply

    def active_vehicles(self, t_s: float) -> int:
        """Vehicles of this partition whose newest accepted probe is at or after ``t_s -
        idle_flush_s`` (s): the probe vehicles on the road. Read from the dedupe memory
        (``traffic.probes.VehicleLastSeen``), which a network swap keeps and checkpoints
        hold, so the count does not drop when the matchers start afresh. O(vehicles seen),
        vectorised."""
        return self.last_seen.active(t_s, self.config.idle_flush_s)

    def swap_network(self, net: RoadNetwork, *, index: Any = None,
                     routes: Any = None) -> IngestReply:
        """Flush held points on the old network, then match on ``net`` from now on."""
        reply = self.flush()
        seen = self.last_seen
        self._set_network(net, index=index, routes=routes)
        self.last_seen = seen
        return reply

    # -- state (checkpoints: workers/state.py) ------------------------------------------
    #: Version of :meth:`state_dict`'s contents.
    STATE_VERSION = 2

    def state_dict(self) -> dict[str, Any]:
        """Everything this partition must keep across a restart, as flat arrays and scalars.

        Version 2: ``version``; ``counts`` and ``rejected_by_reason`` (probe fates);
        ``watermark_t`` (s); ``last_seen.*`` (the dedupe memory,
        ``traffic.probes.VehicleLastSeen.state_dict``); ``matcher.*`` (pending candidates of
        every vehicle, ``traffic.matching.OnlineMatcher.state_dict``); ``extractor.*`` (open
        traversal runs, ``traffic.traversals.TraversalExtractor.state_dict``). Taken without
        a flush, so a checkpoint does not change what the matcher decides. (Version 1, the
        first release's, was taken after a flush: dedupe arrays at the top level,
        ``matcher_counts``, no pending state.)

        Not saved: the open traces' edges held for route trips (:attr:`trip_collector`).
        After a restore a trace's trip starts at the restore; the routers' bias learning
        uses only a trip's middle between two junctions, so nothing else changes (and no
        probe count or traversal depends on it).
        """
        from workers.state import prefixed

        out: dict[str, Any] = {
            "version": self.STATE_VERSION,
            "counts": {k: int(v) for k, v in self._counts.items()},
            "rejected_by_reason": {k: int(v) for k, v in self._rejected_by_reason.items()},
            "watermark_t": self._watermark_t,
        }
        out.update(prefixed("last_seen", self.last_seen.state_dict()))
        out.update(prefixed("matcher", self.matcher.state_dict()))
        out.update(prefixed("extractor", self.extractor.state_dict()))
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved into this core (same network).

        Raises ``ValueError`` naming both versions when ``state`` is of a version this code
        does not read.
        """
        from workers.state import unprefixed

        version = state.get("version", 1)
        if version not in (1, self.STATE_VERSION):
            raise ValueError(f"ingest partition {self.partition}: state version {version!r}; "
                             f"this code reads 1 and {self.STATE_VERSION}")
        self.reset()
        if version == 1:
            self.last_seen.load_state_dict({k: state[k] for k in (
                "last_vid", "last_t", "last_lat", "last_lon", "pair_vid", "pair_t")})
            self.matcher.counts.update({k: int(v) for k, v in state["matcher_counts"].items()})
        else:
            self.last_seen.load_state_dict(unprefixed("last_seen", state))
            self.matcher.load_state_dict(unprefixed("matcher", state))
            self.extractor.load_state_dict(unprefixed("extractor", state))
        self._counts = Counter({k: int(v) for k, v in state["counts"].items()})
        self._rejected_by_reason = Counter(
            {k: int(v) for k, v in state["rejected_by_reason"].items()})
        self._watermark_t = state["watermark_t"]

    def reset(self) -> None:
        """Forget everything: empty matcher, runs, dedupe memory and counters (the pipeline
        replays the log after a reset)."""
        self._set_network(self.net, index=self.matcher.index, routes=self.matcher.routes)
        self._counts, self._rejected_by_reason, self._watermark_t = Counter(), Counter(), None

    def stats(self) -> dict[str, Any]:
        """Counters of this partition (probe fates, stage seconds, watermark)."""
        unmatched = self._unmatched_by_reason()
        return {
            "partition": self.partition,
            "received": self._counts["received"],
            "accepted": self._counts["accepted"],
            "rejected_by_reason": dict(self._rejected_by_reason),
            "matched": self._counts["matched"],
            "traversals": self._counts["traversals"],
            "open_runs": self.extractor.open_count(),
            **self._trip_stats(),
            "pending": int(self.matcher.pending_count()),
            "unmatched_by_reason": unmatched,
            "watermark_t": self._watermark_t,
            "stage_s": dict(self._stage_s),
            "network_version": self.net.version,
        }

    # -- adapters over traffic.matching / traffic.traversals ----------------------------
    def _push(self, acc: pl.DataFrame) -> list[Any]:
        if acc.height == 0:
            return []

        def opt(name: str) -> np.ndarray | None:
            col = acc[name]
            return None if col.null_count() == col.len() else col.fill_null(np.nan).to_numpy()

        return [self.matcher.push(
            acc["vehicle_id"].to_numpy(), acc["t"].to_numpy(),
            acc["lat"].to_numpy(), acc["lon"].to_numpy(),
            speed_mps=opt("speed_mps"), heading_deg=opt("heading_deg"),
            accuracy_m=opt("accuracy_m"), row_ids=acc["row"].to_numpy(),
        )]

    def _flush_idle(self, now_t: float) -> list[Any]:
        return [self.matcher.flush_idle(now_t, self.config.idle_flush_s)]

    def _traversals(self, outputs: list[Any]) -> tuple[Any, int]:
        """Turn matcher outputs into one traversal batch; count the probes they decided.

        A vehicle's run on its current edge stays open in the extractor until it leaves
        the edge (or its trace ends), so a traversal is folded once, whole.
        """
        from traffic.traversals import Traversals as TraversalBatch

        n_probes = sum(int(o.point_row.shape[0]) for o in outputs)
        self._counts["matched"] += n_probes
        parts = [self.extractor.push(o) for o in outputs]
        parts = [p for p in parts if len(p)]
        if not parts:
            return None, n_probes
        cols = ("edge", "t_enter_s", "t_exit_s", "pace_s_per_m", "weight")
        arrays = {c: np.concatenate([getattr(p, c) for p in parts]) for c in cols}
        self._counts["traversals"] += int(arrays["edge"].shape[0])
        return TraversalBatch(**arrays), n_probes

    def _new_trip_collector(self, net: RoadNetwork) -> Any:
        """The route-trip collector for ``net`` (``None`` with ``route_trips_max`` 0)."""
        from traffic.probe_trips import RouteTripCollector

        if self.config.route_trips_max <= 0:
            return None
        return RouteTripCollector(net, max_edges_per_trace=self.config.route_trip_max_edges,
                                  max_trips=self.config.route_trips_max)

    def _route_trips(self, outputs: list[Any]) -> Any:
        """The eligible probe trips ``outputs`` closed, the newest ``route_trips_max``
        (``traffic.probe_trips.RouteTrips``), or ``None``. O(pieces of ``outputs``)."""
        from traffic.probe_trips import concat_route_trips

        col = self.trip_collector
        if col is None:
            return None
        return concat_route_trips([col.push(o) for o in outputs],
                                  max_trips=self.config.route_trips_max)

    def _trip_stats(self) -> dict[str, int]:
        col = self.trip_collector
        if col is None:
            return {}
        return {"route_trips": col.trips, "trip_traces_open": col.open_count(),
                "trip_edges_held": col.held_edges()}

    def _unmatched_by_reason(self) -> dict[str, int]:
        counts = self.matcher.counts
        return {k: int(v) for k, v in counts.items() if k not in ("pushed", "matched") and v}
