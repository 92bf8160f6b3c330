"""The router: snapping, CCH queries on the current metric, route geometry and duration tables.

A :class:`Router` owns a prepared :class:`graph.cch.CCHIndex`, a spatial index and the
current :class:`graph.cch.Metric`. :meth:`Router.customize` builds a new metric from a
travel-time vector and swaps it in (one attribute store, under a lock that only orders
concurrent swaps); a query reads the attribute once and works on that metric to the end, so it
never sees a half-customized one and never waits for a customization in progress.

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
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from graph.artifacts import spatial_index_for
from graph.cch import CCHIndex, Metric, PathResult, customize, prepare_cch
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

    The router starts on free-flow travel times (weights version ``"freeflow"``). Call
    :meth:`close` (or drop the router) to stop its threads.
    """

    def __init__(
        self, net: RoadNetwork, *, index: CCHIndex | None = None,
        cache_dir: str | None = None, spatial: SpatialIndex | None = None,
        query_threads: int = 2, profile_cache: int = 4,
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
        self._freeflow_s = net.edge_freeflow_time_s
        self._pt_cum_m = _point_positions_m(net, self.spatial)
        self._swap_lock = threading.Lock()
        self._metric: Metric = customize(self.index, self._freeflow_s, FREEFLOW_VERSION)
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
        """Customize with a new travel-time vector (s per edge) and swap it in atomically.

        Runs in the calling thread (about 60-80 ms on DIMACS NY); queries meanwhile keep
        using the previous metric.
        """
        metric = customize(self.index, travel_time_s, version)
        with self._swap_lock:
            self._metric = metric
            self._retain()

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
        metric = self._metric_for(profile)
        lat = np.array([from_latlon[0], to_latlon[0]], dtype=np.float64)
        lon = np.array([from_latlon[1], to_latlon[1]], dtype=np.float64)
        point, edge, offset = self._snap(lat, lon, max_snap_m, labels=("origin", "destination"))
        s, d = point == 0, point == 1
        frac = _fractions(offset, self.net.edge_length_m[edge])
        if on_caller:
            queries = None if caller_queries is None else caller_queries.for_metrics(
                self._threads.retained)
            res = metric.route_positions(edge[s], frac[s], edge[d], frac[d], queries=queries)
        else:
            res = self._threads.call(metric.route_positions, edge[s], frac[s], edge[d], frac[d])
        if res is None:
            raise NoRouteError(
                f"no route from (lat={lat[0]:.6f}, lon={lon[0]:.6f}) to "
                f"(lat={lat[1]:.6f}, lon={lon[1]:.6f}) on network {self.net.version}"
            )
        return self._build_route(metric, res, offset[s][res.src], offset[d][res.dst],
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
        metric = self._metric
        res = self._threads.call(metric.route_nodes, int(source_node), int(target_node))
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
            freeflow_duration_s=float(self._freeflow_s[edges].sum()),
            edge_ids=edges, edge_keys=self.net.edge_key[edges], lat=la, lon=lo,
            network_version=self.net.version, weights_version=metric.version,
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
        metric = self._metric_for(profile)
        src = _as_points(sources_latlon, "sources_latlon")
        dst = _as_points(destinations_latlon, "destinations_latlon")
        both = np.concatenate([src, dst])
        labels = tuple(f"source point {i}" for i in range(len(src))) + tuple(
            f"destination point {j}" for j in range(len(dst)))
        pt, edge, off = self._snap(both[:, 0], both[:, 1], max_snap_m, labels=labels)  # one batch
        frac = _fractions(off, self.net.edge_length_m[edge])
        s = pt < len(src)
        d = ~s
        return self._threads.call(metric.table, pt[s], edge[s], frac[s], len(src),
                                  pt[d] - len(src), edge[d], frac[d], len(dst))

    # -- internals -------------------------------------------------------------------------
    def _snap(
        self, lat: np.ndarray, lon: np.ndarray, max_snap_m: float, *,
        labels: tuple[str, ...] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Equally-near candidate edges per point: ``(point, edge, offset_m)``, sorted by point.

        Searches within :data:`FIRST_SNAP_M` first (most points lie near a road, and a small
        radius finds far fewer segments to project on), then within ``max_snap_m`` for the
        points whose nearest road (with its ties) is not surely inside the first radius.
        """
        r1 = min(max_snap_m, FIRST_SNAP_M)
        pi, ei, dist, off = candidates(self.spatial, lat, lon, radius_m=r1, k=_MAX_SNAP_CANDIDATES)
        if r1 < max_snap_m:
            nearest = np.full(lat.shape[0], np.inf)
            has, first = np.unique(pi, return_index=True)
            nearest[has] = dist[first]  # the first candidate of each point is its nearest
            again = np.flatnonzero(~(nearest <= r1 - SNAP_TIE_M))
            if again.size:
                pj, ej, dj, oj = candidates(self.spatial, lat[again], lon[again],
                                            radius_m=max_snap_m, k=_MAX_SNAP_CANDIDATES)
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

    def _build_route(
        self, metric: Metric, res: PathResult, off_s: float, off_t: float,
        frac_s: float, frac_t: float,
    ) -> Route:
        net = self.net
        edges = res.edges
        length, ff = net.edge_length_m, self._freeflow_s
        if edges.size == 1:
            e = int(edges[0])
            distance = off_t - off_s
            freeflow = (frac_t - frac_s) * ff[e]
            la, lo = self._cut_geometry(edges, off_s, off_t)
        else:
            e0, e1, mid = int(edges[0]), int(edges[-1]), edges[1:-1]
            distance = (length[e0] - off_s) + length[mid].sum() + off_t
            freeflow = (1.0 - frac_s) * ff[e0] + ff[mid].sum() + frac_t * ff[e1]
            la, lo = self._cut_geometry(edges, off_s, off_t)
        return Route(
            duration_s=float(res.duration_s), distance_m=float(distance),
            freeflow_duration_s=float(freeflow), edge_ids=edges, edge_keys=net.edge_key[edges],
            lat=la, lon=lo, network_version=net.version, weights_version=metric.version,
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
        cum = self._pt_cum_m
        # Interior points strictly between the cuts: skip points of the first edge at or before
        # off_s and points of the last edge at or after off_t.
        skip_head = int(np.searchsorted(cum[first_lo:go[e0 + 1]], off_s, side="right"))
        keep_tail = int(np.searchsorted(cum[go[e1]:last_hi], off_t, side="left"))
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

    def _point_at(self, edge: int, off_m: float) -> tuple[float, float]:
        """Position ``off_m`` metres along ``edge`` (linear between its geometry points)."""
        go = self.net.geom_offsets
        a, b = int(go[edge]), int(go[edge + 1])
        cum = self._pt_cum_m[a:b]
        la, lo = self.net.geom_lat[a:b], self.net.geom_lon[a:b]
        return float(np.interp(off_m, cum, la)), float(np.interp(off_m, cum, lo))


def _point_positions_m(net: RoadNetwork, spatial: SpatialIndex) -> np.ndarray:
    """Distance (m, ``edge_length_m`` units) of every geometry point from its edge's start.

    Taken from the spatial index's segment starts, so a snapped offset maps back to exactly
    the point the index projected onto.
    """
    n_pts = int(net.geom_offsets[-1])
    cum = np.empty(n_pts, dtype=np.float64)
    last = net.geom_offsets[1:] - 1
    not_last = np.ones(n_pts, dtype=bool)
    not_last[last] = False
    cum[not_last] = spatial.seg_start_m
    cum[last] = net.edge_length_m
    return cum


def _fractions(offset_m: np.ndarray, length_m: np.ndarray) -> np.ndarray:
    """Share ``0..1`` of each edge behind a position (0 on zero-length edges)."""
    frac = np.divide(offset_m, length_m, out=np.zeros_like(offset_m), where=length_m > 0)
    return np.clip(frac, 0.0, 1.0, out=frac)


def _as_points(points: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(points, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name} must be a (k, 2) array of (lat, lon); got shape {a.shape}")
    return a
