"""The router: snapping, CCH queries on the current metric, route geometry and duration tables.

A :class:`Router` owns a prepared :class:`graph.cch.CCHIndex`, a spatial index and two
:class:`graph.cch.Metric` buffers: the live one, which queries use, and an idle one.
:meth:`Router.customize` (a whole travel-time vector) and :meth:`Router.update_edges` (the
edges that changed) bring the idle metric up to date in place (:func:`graph.cch.recustomize`:
partially, or fully above :data:`graph.cch.FULL_CUSTOMIZE_FRACTION` of the edges) and swap it
in (one attribute store); the previous live metric becomes the idle one. A query leases the
live metric (:meth:`graph.cch.Metric.lease`) and works on it to the end, so it never sees a
half-customized one and never waits for a customization in progress. Before touching the idle
metric the writer waits until no query runs on it and every thread has dropped its query
objects on it (RoutingKit refuses otherwise); a thread that does not drop them within
``idle_wait_s`` (an event loop with no request since the swap and no way to be woken) makes
the writer customize a new metric instead (``Router.fallbacks`` counts these).

Threads: RoutingKit's query objects belong to the thread that made them, so the router runs
its CCH searches on a small pool of its own threads (:class:`graph.query_threads.QueryThreads`)
that own them; the calling thread snaps points and builds geometry, and hands the search over.
``route(..., on_caller=True)`` searches on the calling thread instead (no hand-over: the API's
event loop does so, the search being ~0.1-0.3 ms), with the caller's own query objects
(:class:`graph.query_threads.CallerQueries`) or, without them, one made and dropped per call.
A replaced metric's query objects are dropped by their owning threads, and the threads exit when
the router is closed or garbage-collected, from any thread: no leak, no unraisable errors.

Departures in the future: the caller (the live service) knows the time-of-week profiles; it
customizes one with :meth:`Router.customize_profile` under a key of its choosing (e.g. the
time-of-week bin) and routes on it with ``route(..., profile=key)``. The router keeps the
``profile_cache`` most recently used profile metrics.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from graph.artifacts import spatial_index_for
from graph.cch import (
    FULL_CUSTOMIZE_FRACTION, CCHIndex, Metric, PathResult, customize, prepare_cch, recustomize,
)
from graph.errors import NoCandidateError, NoRouteError
from graph.network import RoadNetwork
from graph.query_threads import CallerQueries, QueryThreads
from graph.spatial import DEFAULT_SNAP_RADIUS_M, SpatialIndex, candidates

#: Weights version of the metric a router starts with (free-flow travel times).
FREEFLOW_VERSION = "freeflow"
#: Candidates within this many metres of the nearest one count as equally near (both
#: directions of a two-way road; every edge at a junction).
SNAP_TIE_M = 0.01
_MAX_SNAP_CANDIDATES = 16
#: First snapping radius (m); points with no road this near are searched again up to the limit.
FIRST_SNAP_M = 40.0


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """A driven route between two positions (or nodes), with its geometry and versions.

    ``edge_ids`` lists the edges driven, partial first and last ones included; ``lat``/``lon``
    is the polyline from the start position to the end position (degrees).
    """

    duration_s: float
    distance_m: float
    freeflow_duration_s: float
    edge_ids: np.ndarray  # int32[k]
    edge_keys: np.ndarray  # int64[k]
    lat: np.ndarray  # float64[p]
    lon: np.ndarray  # float64[p]
    network_version: str
    weights_version: str

    def to_json(self) -> dict[str, Any]:
        """The fields of the HTTP route answer (GeoJSON LineString in ``[lon, lat]`` order)."""
        return {
            "duration_s": self.duration_s,
            "distance_m": self.distance_m,
            "freeflow_duration_s": self.freeflow_duration_s,
            "geometry": {
                "type": "LineString",
                "coordinates": np.column_stack([self.lon, self.lat]).tolist(),
            },
            "edges": self.edge_keys.tolist(),
            "network_version": self.network_version,
            "weights_version": self.weights_version,
        }


class Router:
    """Route and table queries on one network, on the latest customized travel times.

    Parameters
    ----------
    net
        The road network.
    index
        A prepared hierarchy for ``net`` (built, or its order read from ``cache_dir``, if not
        given).
    cache_dir
        Prepared artifacts (graph.artifacts): the CCH node order and the spatial index per
        network version, read (the index mapped) when present, else built and saved there.
    spatial
        A spatial index of ``net`` (built if not given).
    query_threads
        Threads that own the RoutingKit query objects and run the searches.
    profile_cache
        How many profile metrics (:meth:`customize_profile`) to keep, least recently used out.
    full_fraction
        Changed share of the edges above which an update re-customizes the idle metric fully
        rather than partially (default :data:`graph.cch.FULL_CUSTOMIZE_FRACTION`).
    idle_wait_s
        How long an update waits for the idle metric's users to let it go before it
        customizes a new metric instead.

    The router starts on free-flow travel times (weights version ``"freeflow"``). Call
    :meth:`close` (or drop the router) to stop its threads. It holds two live-weight metrics
    (live and idle, the second from the first update on) plus up to ``profile_cache`` profiles.
    """

    def __init__(
        self, net: RoadNetwork, *, index: CCHIndex | None = None,
        cache_dir: str | None = None, spatial: SpatialIndex | None = None,
        query_threads: int = 2, profile_cache: int = 4,
        full_fraction: float = FULL_CUSTOMIZE_FRACTION, idle_wait_s: float = 1.0,
    ) -> None:
        if index is not None and index.network_version != net.version:
            raise ValueError(
                f"the CCH index was prepared for network version {index.network_version}, "
                f"not {net.version}"
            )
        self.net = net
        self.index = index if index is not None else prepare_cch(net, cache_dir=cache_dir)
        # Mapped from the prepared artifacts in cache_dir (graph.artifacts) when given.
        self.spatial = spatial if spatial is not None else spatial_index_for(net, cache_dir)
        # Every edge has at least two points: its segments are points go[e]..go[e+1]-2,
        # the spatial index's segments go[e]-e onwards (see point_positions).
        if net.n_edges and int(np.diff(net.geom_offsets).min()) < 2:
            raise ValueError("every edge needs at least two geometry points")
        self._swap_lock = threading.Lock()
        self._metric: Metric = customize(self.index, net.edge_freeflow_time_s, FREEFLOW_VERSION)
        # Double buffer: the idle metric and the edges where its times differ from the live
        # metric's (None: not known, compare whole vectors).
        self._idle: Metric | None = None
        self._idle_stale: np.ndarray | None = None
        self._write_lock = threading.Lock()
        self.full_fraction = float(full_fraction)
        self.idle_wait_s = float(idle_wait_s)
        #: Updates that found the idle metric still in use and customized a new one.
        self.fallbacks = 0
        #: The last update: ``mode`` (new/full/partial/none), ``changed_edges``, seconds.
        self.last_update: dict[str, Any] = {"mode": "new", "changed_edges": net.n_edges,
                                             "customize_s": self._metric.customize_s,
                                             "wait_s": 0.0}
        self._profiles: OrderedDict[Hashable, Metric] = OrderedDict()
        self._profile_cache = int(profile_cache)
        self._threads = QueryThreads(query_threads)
        self._threads.retain((self._metric,))
        # Stops the threads when the router is dropped; holds no reference to the router.
        self._finalizer = weakref.finalize(self, self._threads.close)

    def close(self) -> None:
        """Stop the query threads (they drop their RoutingKit objects); later queries raise."""
        self._finalizer()

    @property
    def weights_version(self) -> str:
        """Version of the travel times queries currently use."""
        return self._metric.version

    def customize(self, travel_time_s: np.ndarray, version: str) -> None:
        """Take a whole new travel-time vector (s per edge) and swap it in atomically.

        The idle metric is brought to it in place (partially where few edges differ from it,
        else fully; on NY about 0.1 s with the GIL released) in the calling thread; queries
        meanwhile keep using the live metric.
        """
        t = np.asarray(travel_time_s, dtype=np.float64)
        m = self.net.n_edges
        if t.shape != (m,):
            raise ValueError(f"travel_time_s must have one entry per edge ({m}); got shape {t.shape}")
        with self._write_lock:
            t0 = time.perf_counter()
            idle = self._take_idle()
            wait_s = time.perf_counter() - t0
            if idle is None:
                metric = customize(self.index, t, version)
            else:
                changed = np.flatnonzero(t != idle._tt)
                recustomize(idle, changed, t[changed], version, full_fraction=self.full_fraction)
                metric = idle
            old = self._swap_in(metric, wait_s)
            stale = np.flatnonzero(old._tt != metric._tt)
            # Kept for the next partial update when small; after a full vector most edges
            # differ, and a list of them (8 B per edge) is found again when needed instead.
            self._idle_stale = stale if stale.size * 8 < m else None

    def update_edges(self, edges: np.ndarray, travel_time_s: np.ndarray, version: str) -> None:
        """Change the travel times (s) of ``edges`` (distinct ids) on the live weights; swap in.

        Costs O(edges changed since the idle metric's version) plus RoutingKit's partial
        update (or a full re-customization above ``full_fraction``); queries meanwhile keep
        using the live metric.
        """
        e = np.asarray(edges)
        v = np.asarray(travel_time_s, dtype=np.float64)
        m = self.net.n_edges
        if e.ndim != 1 or v.shape != e.shape:
            raise ValueError(f"edges and travel_time_s must be 1-D of equal length; got shapes "
                             f"{e.shape} and {v.shape}")
        if e.size and (e.dtype.kind not in "iu" or e.min() < 0 or e.max() >= m):
            raise ValueError(f"edges must be edge ids in [0, {m})")
        order = np.argsort(e, kind="stable")
        e, v = e[order].astype(np.int64), v[order]
        if e.size > 1 and np.any(e[1:] == e[:-1]):
            raise ValueError("edges must be distinct")
        with self._write_lock:
            live = self._metric
            t0 = time.perf_counter()
            idle = self._take_idle()
            wait_s = time.perf_counter() - t0
            if idle is None:
                t = np.array(live._tt)
                t[e] = v
                metric = customize(self.index, t, version)
            else:
                stale = (np.flatnonzero(idle._tt != live._tt) if self._idle_stale is None
                         else self._idle_stale)
                both = np.union1d(stale, e)
                vals = live._tt[both]  # a copy (fancy indexing)
                vals[np.searchsorted(both, e)] = v
                recustomize(idle, both, vals, version, full_fraction=self.full_fraction)
                metric = idle
            self._swap_in(metric, wait_s)
            self._idle_stale = e

    def _take_idle(self) -> Metric | None:
        """The idle metric once nobody uses it; ``None`` (build a new one) when there is none
        or its users did not let it go within ``idle_wait_s``."""
        idle = self._idle
        if idle is None:
            return None
        if idle.wait_unused(self.idle_wait_s):
            return idle
        # A thread still holds a query object on it and could not be asked to drop it: leave
        # the metric to it (it goes when that thread drops it) and customize a new one.
        self._idle, self._idle_stale = None, None
        self.fallbacks += 1
        return None

    def _swap_in(self, metric: Metric, wait_s: float) -> Metric:
        """Make ``metric`` live; the previous live metric becomes the idle one (returned)."""
        with self._swap_lock:
            old, self._metric = self._metric, metric
            self._retain()
        self._idle = old
        self.last_update = {"mode": metric.mode, "changed_edges": metric.changed_edges,
                            "customize_s": metric.customize_s, "wait_s": wait_s}
        return old

    def customize_profile(self, key: Hashable, travel_time_s: np.ndarray, version: str) -> None:
        """Customize travel times for a profile (e.g. a time-of-week bin) kept under ``key``.

        Routes ask for it with ``profile=key``. The ``profile_cache`` most recently used
        profiles are kept; customizing an existing key replaces it.
        """
        metric = customize(self.index, travel_time_s, version)
        with self._swap_lock:
            self._profiles[key] = metric
            self._profiles.move_to_end(key)
            while len(self._profiles) > self._profile_cache:
                self._profiles.popitem(last=False)
            self._retain()

    def has_profile(self, key: Hashable) -> bool:
        """Whether a profile metric is customized under ``key``."""
        return key in self._profiles

    def _retain(self) -> None:
        self._threads.retain((self._metric, *self._profiles.values()))

    def _lease(self, profile: Hashable | None = None) -> Metric:
        """The metric a query uses, leased (release it with ``metric.release()``).

        The live metric may become the idle one between reading and leasing it; then the
        lease is returned and taken again on the new live metric, so the writer, which swaps
        first and then waits for the old metric's leases to end, never updates a leased one.
        """
        while True:
            metric = self._metric_for(profile)
            metric.lease()
            if profile is not None or metric is self._metric:
                return metric
            metric.release()

    def travel_times(self, profile: Hashable | None = None) -> np.ndarray:
        """The travel times (s per edge) routes on the live weights (or ``profile``) use now.

        Read without a lease: an update swapping metrics meanwhile only means the answer is
        of the previous weights. Raises ``KeyError`` for a profile not customized here.
        """
        return self._metric_for(profile).travel_time_s

    def _metric_for(self, profile: Hashable | None) -> Metric:
        if profile is None:
            return self._metric
        try:
            metric = self._profiles[profile]
        except KeyError:
            raise KeyError(f"profile {profile!r} is not customized on this router "
                           f"(call customize_profile first)") from None
        try:
            self._profiles.move_to_end(profile)
        except KeyError:  # evicted meanwhile by another thread: still usable for this query
            pass
        return metric

    def route(
        self, from_latlon: tuple[float, float], to_latlon: tuple[float, float], *,
        max_snap_m: float = DEFAULT_SNAP_RADIUS_M, profile: Hashable | None = None,
        on_caller: bool = False, caller_queries: CallerQueries | None = None,
    ) -> Route:
        """Fastest route between two points, each snapped to its nearest road.

        Uses the live travel times, or with ``profile`` the profile metric customized under
        that key (:meth:`customize_profile`; a ``KeyError`` if there is none).

        With ``on_caller`` the search runs on the calling thread rather than a query thread,
        with ``caller_queries``' query objects when they belong to this thread (else a query
        object made and dropped within the call).

        Raises
        ------
        NoCandidateError
            When a point has no road within ``max_snap_m``.
        NoRouteError
            When the destination cannot be reached.
        """
        lat = np.array([from_latlon[0], to_latlon[0]], dtype=np.float64)
        lon = np.array([from_latlon[1], to_latlon[1]], dtype=np.float64)
        point, edge, offset = self._snap(lat, lon, max_snap_m, labels=("origin", "destination"))
        s, d = point == 0, point == 1
        frac = _fractions(offset, self.net.edge_length_m[edge])
        metric = self._lease(profile)
        try:
            if on_caller:
                queries = None if caller_queries is None else caller_queries.for_metrics(
                    self._threads.retained)
                res = metric.route_positions(edge[s], frac[s], edge[d], frac[d], queries=queries)
            else:
                res = self._threads.call(metric.route_positions, edge[s], frac[s], edge[d],
                                         frac[d])
            version = metric.version  # read under the lease: an idle metric changes
        finally:
            metric.release()
        if res is None:
            raise NoRouteError(
                f"no route from (lat={lat[0]:.6f}, lon={lon[0]:.6f}) to "
                f"(lat={lat[1]:.6f}, lon={lon[1]:.6f}) on network {self.net.version}"
            )
        return self._build_route(version, res, offset[s][res.src], offset[d][res.dst],
                                 frac[s][res.src], frac[d][res.dst])

    def route_nodes(self, source_node: int, target_node: int) -> Route:
        """Fastest route from one network node to another (same result fields as :meth:`route`).

        Raises
        ------
        NoRouteError
            When ``target_node`` cannot be reached from ``source_node``.
        """
        n = self.net.n_nodes
        for name, v in (("source_node", source_node), ("target_node", target_node)):
            if not 0 <= v < n:
                raise ValueError(f"{name} {v} is not a node of this network (0..{n - 1})")
        metric = self._lease()
        try:
            res = self._threads.call(metric.route_nodes, int(source_node), int(target_node))
            version = metric.version  # read under the lease: an idle metric changes
        finally:
            metric.release()
        if res is None:
            raise NoRouteError(f"no route from node {source_node} to node {target_node}")
        edges = res.edges
        if edges.size == 0:
            la, lo = self.net.node_lat[[source_node]], self.net.node_lon[[source_node]]
        else:
            la, lo = self._full_geometry(edges)
        return Route(
            duration_s=res.duration_s,
            distance_m=float(self.net.edge_length_m[edges].sum()),
            freeflow_duration_s=float(self.net.freeflow_time_s_at(edges).sum()),
            edge_ids=edges, edge_keys=self.net.edge_key[edges], lat=la, lon=lo,
            network_version=self.net.version, weights_version=version,
        )

    def table(
        self, sources_latlon: np.ndarray, destinations_latlon: np.ndarray, *,
        max_snap_m: float = DEFAULT_SNAP_RADIUS_M, profile: Hashable | None = None,
    ) -> np.ndarray:
        """Durations (s) from every source point to every destination point.

        Points are ``(k, 2)`` arrays of ``(lat, lon)``. Returns ``float64[n_src, n_dst]``,
        ``inf`` where unreachable; millisecond precision (see :mod:`graph.cch`). ``profile``
        as in :meth:`route`.

        Raises
        ------
        NoCandidateError
            When a point has no road within ``max_snap_m``.
        """
        src = _as_points(sources_latlon, "sources_latlon")
        dst = _as_points(destinations_latlon, "destinations_latlon")
        both = np.concatenate([src, dst])
        labels = tuple(f"source point {i}" for i in range(len(src))) + tuple(
            f"destination point {j}" for j in range(len(dst)))
        pt, edge, off = self._snap(both[:, 0], both[:, 1], max_snap_m, labels=labels)  # one batch
        frac = _fractions(off, self.net.edge_length_m[edge])
        s = pt < len(src)
        d = ~s
        metric = self._lease(profile)
        try:
            return self._threads.call(metric.table, pt[s], edge[s], frac[s], len(src),
                                      pt[d] - len(src), edge[d], frac[d], len(dst))
        finally:
            metric.release()

    # -- internals -------------------------------------------------------------------------
    def _snap(
        self, lat: np.ndarray, lon: np.ndarray, max_snap_m: float, *,
        labels: tuple[str, ...] | None = None, allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Equally-near candidate edges per point: ``(point, edge, offset_m)``, sorted by point.

        Searches within :data:`FIRST_SNAP_M` first (most points lie near a road, and a small
        radius finds far fewer segments to project on), then within ``max_snap_m`` for the
        points whose nearest road (with its ties) is not surely inside the first radius.
        ``allowed`` (bool per edge) restricts snapping to those edges (:mod:`graph.avoid`).
        """
        r1 = min(max_snap_m, FIRST_SNAP_M)
        pi, ei, dist, off = self._candidates(lat, lon, r1, allowed)
        if r1 < max_snap_m:
            nearest = np.full(lat.shape[0], np.inf)
            has, first = np.unique(pi, return_index=True)
            nearest[has] = dist[first]  # the first candidate of each point is its nearest
            again = np.flatnonzero(~(nearest <= r1 - SNAP_TIE_M))
            if again.size:
                pj, ej, dj, oj = self._candidates(lat[again], lon[again], max_snap_m, allowed)
                keep = nearest[pi] <= r1 - SNAP_TIE_M
                pi = np.concatenate([pi[keep], again[pj]])
                ei, dist, off = (np.concatenate([a[keep], b]) for a, b in ((ei, ej), (dist, dj), (off, oj)))
                order = np.lexsort((dist, pi))
                pi, ei, dist, off = pi[order], ei[order], dist[order], off[order]
        found = np.zeros(lat.shape[0], dtype=bool)
        found[pi] = True
        if not found.all():
            i = int(np.argmin(found))
            what = labels[i] if labels is not None else f"point {i}"
            raise NoCandidateError(
                f"no drivable road within {max_snap_m:g} m of the {what} "
                f"(lat={float(lat[i]):.6f}, lon={float(lon[i]):.6f})"
            )
        # Candidates come sorted by point, then distance: the first of each point is nearest.
        first = np.searchsorted(pi, pi)
        keep = dist <= dist[first] + SNAP_TIE_M
        return pi[keep], ei[keep], off[keep]

    def _candidates(
        self, lat: np.ndarray, lon: np.ndarray, radius_m: float, allowed: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:func:`graph.spatial.candidates`, keeping only ``allowed`` edges (when given; then
        more candidates are searched, as the nearest ones may all be excluded)."""
        if allowed is None:
            return candidates(self.spatial, lat, lon, radius_m=radius_m, k=_MAX_SNAP_CANDIDATES)
        pi, ei, dist, off = candidates(self.spatial, lat, lon, radius_m=radius_m,
                                       k=_MAX_SNAP_CANDIDATES * 8)
        keep = allowed[ei]
        return pi[keep], ei[keep], dist[keep], off[keep]

    def _build_route(
        self, weights_version: str, res: PathResult, off_s: float, off_t: float,
        frac_s: float, frac_t: float,
    ) -> Route:
        net = self.net
        edges = res.edges
        length = net.edge_length_m
        # Free-flow times of the route's edges only (no per-edge array kept per router).
        ff = net.freeflow_time_s_at(edges)
        if edges.size == 1:
            distance = off_t - off_s
            freeflow = (frac_t - frac_s) * ff[0]
            la, lo = self._cut_geometry(edges, off_s, off_t)
        else:
            e0, mid = int(edges[0]), edges[1:-1]
            distance = (length[e0] - off_s) + length[mid].sum() + off_t
            freeflow = (1.0 - frac_s) * ff[0] + ff[1:-1].sum() + frac_t * ff[-1]
            la, lo = self._cut_geometry(edges, off_s, off_t)
        return Route(
            duration_s=float(res.duration_s), distance_m=float(distance),
            freeflow_duration_s=float(freeflow), edge_ids=edges, edge_keys=net.edge_key[edges],
            lat=la, lon=lo, network_version=net.version, weights_version=weights_version,
        )

    def _full_geometry(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = self._point_indices(edges)
        return self.net.geom_lat[idx], self.net.geom_lon[idx]

    def _point_indices(self, edges: np.ndarray) -> np.ndarray:
        """Geometry point indices of consecutive edges, each shared junction point once."""
        go = self.net.geom_offsets
        a, b = go[edges], go[edges + 1]
        a = a.copy()
        a[1:] += 1  # the first point of each later edge repeats the previous edge's last
        counts = b - a
        starts = np.repeat(a - np.cumsum(counts) + counts, counts)
        return starts + np.arange(int(counts.sum()))

    def _cut_geometry(self, edges: np.ndarray, off_s: float, off_t: float) -> tuple[np.ndarray, np.ndarray]:
        """Polyline of ``edges`` from ``off_s`` m on the first to ``off_t`` m on the last."""
        net = self.net
        go = net.geom_offsets
        e0, e1 = int(edges[0]), int(edges[-1])
        first_lo = go[e0]
        last_hi = go[e1 + 1]
        # Interior points strictly between the cuts: skip points of the first edge at or before
        # off_s and points of the last edge at or after off_t.
        skip_head = int(np.searchsorted(self.point_positions(e0), off_s, side="right"))
        keep_tail = int(np.searchsorted(self.point_positions(e1), off_t, side="left"))
        if edges.size == 1:
            inner = np.arange(first_lo + skip_head, go[e1] + keep_tail)
        else:
            idx = self._point_indices(edges)
            n_last_dropped = int(last_hi - go[e1]) - keep_tail
            inner = idx[skip_head: idx.size - n_last_dropped]
        la0, lo0 = self._point_at(e0, off_s)
        la1, lo1 = self._point_at(e1, off_t)
        lat = np.concatenate([[la0], net.geom_lat[inner], [la1]])
        lon = np.concatenate([[lo0], net.geom_lon[inner], [lo1]])
        return lat, lon

    def point_positions(self, edge: int) -> np.ndarray:
        """Distance (m, ``edge_length_m`` units) of each of ``edge``'s geometry points from
        its start: the spatial index's segment starts (so a snapped offset maps back to
        exactly the point the index projected onto), then the edge's length. Read from the
        mapped index per call (O(points of the edge)) instead of a per-point array held in
        every router process (16 B per edge)."""
        go = self.net.geom_offsets
        a, b = int(go[edge]), int(go[edge + 1])
        out = np.empty(b - a, dtype=np.float64)
        s0 = a - int(edge)
        out[:-1] = self.spatial.seg_start_m[s0:s0 + b - a - 1]
        out[-1] = self.net.edge_length_m[edge]
        return out

    def _point_at(self, edge: int, off_m: float) -> tuple[float, float]:
        """Position ``off_m`` metres along ``edge`` (linear between its geometry points)."""
        go = self.net.geom_offsets
        a, b = int(go[edge]), int(go[edge + 1])
        cum = self.point_positions(edge)
        la, lo = self.net.geom_lat[a:b], self.net.geom_lon[a:b]
        return float(np.interp(off_m, cum, la)), float(np.interp(off_m, cum, lo))


def _fractions(offset_m: np.ndarray, length_m: np.ndarray) -> np.ndarray:
    """Share ``0..1`` of each edge behind a position (0 on zero-length edges)."""
    frac = np.divide(offset_m, length_m, out=np.zeros_like(offset_m), where=length_m > 0)
    return np.clip(frac, 0.0, 1.0, out=frac)


def _as_points(points: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(points, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name} must be a (k, 2) array of (lat, lon); got shape {a.shape}")
    return a
