"""Isochrones: the area reachable from a point (or that reaches it) within given times.

One time-bounded Dijkstra over the travel times the router uses gives every node's time
from the origin (or, ``reverse``, to it). Each contour of ``c`` seconds is then the set of
road stretches reached within ``c``: whole edges whose far node is reached, and the part of
an edge that can be driven in the time left at its near node. Those stretches are sampled
every ``cell_m / 2`` metres along their geometry and the samples are put on a square grid
of ``cell_m`` cells (a local equirectangular projection around the origin); a contour's
polygon is the union of its marked cells, joined with Shapely's coverage union (the cells
never overlap and share whole edges, so that union is near linear-time).

What a contour guarantees, by construction:

- it contains every node reached within its time (each node is a sample);
- every point inside lies within ``cell_m * sqrt(5)`` of a reached road stretch (98 m with
  the default 44-m cells: a cell holds a sample, or is added where two cells meet only at a
  corner, which keeps the polygon valid without a costly repair), so a node outside the
  reach lies inside only that close to a reached edge;
- contours nest: a contour's cells include those of every smaller one.

Polygons are in lon/lat (GeoJSON order), areas in km² on the projection. Cost: the search
over the reached region, plus O(reached road length / cell) for the polygons.

**On the forecast** (``forecast``, a :class:`traffic.eta_model.EtaModel`): the search is
time-dependent, as route ETAs are (:func:`traffic.forecast.eta_along`): each edge takes its
forecast travel time for the moment it is reached (``depart_in_s`` after the model's time plus
the node's reach time), the same formula per edge, so a point inside a contour of ``c``
minutes is one whose route ETA is within ``c`` (the forecast changes slowly with time, so
waiting never arrives earlier and the labels are final when settled). It costs one ``exp``
per relaxed edge more than the static search. Only forward: a reverse contour fixes the
arrival, not the departure, and each start point would need its own search; reverse contours
stay on the static times (the caller says ``basis: live``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from numba import njit

from graph.network import RoadNetwork

#: Grid cell (m): a contour is a union of cells of this size.
DEFAULT_CELL_M = 44.0
#: Most contours per request, and the longest one (minutes).
MAX_CONTOURS = 4
MAX_MINUTES = 120.0
_M_PER_DEG_LAT = 110_574.0
_M_PER_DEG_LON_EQ = 111_320.0


@dataclass(frozen=True, slots=True)
class Contour:
    """One contour: its time (minutes), polygon (lon/lat) and area (km²)."""

    minutes: float
    polygon: shapely.Geometry
    area_km2: float


def check_minutes(minutes: list[float]) -> list[float]:
    """Validate contour times (minutes): 1 to :data:`MAX_CONTOURS` values in (0, 120].

    Returns them sorted ascending without repeats; raises ``ValueError`` naming the limit.
    """
    vals = [float(m) for m in minutes]
    if not vals or len(vals) > MAX_CONTOURS:
        raise ValueError(f"`minutes` takes 1 to {MAX_CONTOURS} contours; got {len(vals)}")
    for m in vals:
        if not (math.isfinite(m) and 0 < m <= MAX_MINUTES):
            raise ValueError(f"`minutes` must be within (0, {MAX_MINUTES:g}]; got {m!r}")
    return sorted(set(vals))


def _forecast_args(forecast: Any, n_edges: int) -> tuple[Any, ...]:
    """The model's arrays and scalars in :func:`_forecast_tt`'s order (after ``h``)."""
    if forecast.n_edges != n_edges:
        raise ValueError(f"the forecast model holds {forecast.n_edges} edges; the network "
                         f"has {n_edges} (a model of another network version?)")
    c = forecast.forecast
    return (forecast.slope_per_s, forecast.lag_s, forecast.freeflow_tt_s, float(c.gain),
            float(forecast.pool_slope_per_s), float(c.damping_s), float(c.local_tau_s),
            bool(c.correct_lag), bool(c.local_tau_s >= 1e8), float(c.max_log_change))


def forecast_edge_times(forecast: Any, travel_time_s: np.ndarray, edges: np.ndarray,
                        horizon_s: np.ndarray) -> np.ndarray:
    """Forecast travel time (s, whole edge) of each of ``edges`` entered ``horizon_s`` after
    the model's time: the formula of :func:`traffic.forecast.eta_along` (with its free-flow
    floor), from the live ``travel_time_s`` (per network edge)."""
    e = np.asarray(edges, dtype=np.int64)
    h = np.broadcast_to(np.asarray(horizon_s, dtype=np.float64), e.shape)
    tt = np.ascontiguousarray(travel_time_s, dtype=np.float64)
    return _forecast_times(tt, e, np.ascontiguousarray(h), *_forecast_args(forecast, tt.size))


def reach_times(net: RoadNetwork, travel_time_s: np.ndarray, seed_node: np.ndarray,
                seed_s: np.ndarray, limit_s: float, *, reverse: bool = False,
                forecast: Any = None, depart_in_s: float = 0.0) -> np.ndarray:
    """Seconds from the seeds to every node (``reverse``: from every node to the seeds)
    within ``limit_s``; ``inf`` where not reached in time. ``travel_time_s`` per edge.

    With ``forecast`` (a :class:`traffic.eta_model.EtaModel`; forward only) ``travel_time_s``
    are the live times it forecasts from, and each edge takes its forecast for the moment
    it is entered: ``depart_in_s`` (s after the model's time) plus the node's time."""
    tt = np.ascontiguousarray(travel_time_s, dtype=np.float64)
    if tt.shape != (net.n_edges,):
        raise ValueError(f"`travel_time_s` must hold one time per edge ({net.n_edges}); "
                         f"got shape {tt.shape}")
    if forecast is not None:
        if reverse:
            raise ValueError("forecast reach times run forward only (a reverse search fixes "
                             "the arrival, not the departure); pass forecast=None")
        return _dijkstra_td(np.asarray(net.out_first, np.int64),
                            np.asarray(net.out_edge, np.int64),
                            np.asarray(net.edge_dst, np.int64), tt,
                            np.asarray(seed_node, np.int64), np.asarray(seed_s, np.float64),
                            float(limit_s), net.n_nodes, float(depart_in_s),
                            *_forecast_args(forecast, net.n_edges))
    if reverse:
        first, edges, ends = net.in_first, net.in_edge, net.edge_src
    else:
        first, edges, ends = net.out_first, net.out_edge, net.edge_dst
    return _dijkstra(np.asarray(first, np.int64), np.asarray(edges, np.int64),
                     np.asarray(ends, np.int64), tt, np.asarray(seed_node, np.int64),
                     np.asarray(seed_s, np.float64), float(limit_s), net.n_nodes)


def isochrones(net: RoadNetwork, travel_time_s: np.ndarray, origin_edge: np.ndarray,
               origin_offset_m: np.ndarray, minutes: list[float], *, reverse: bool = False,
               cell_m: float = DEFAULT_CELL_M,
               geometry: EdgeGeometry | None = None, forecast: Any = None,
               depart_in_s: float = 0.0) -> list[Contour]:
    """Contours reached from the origin (edges it snapped to, offsets along them, m).

    ``reverse``: the areas from which the origin is reached within each time.
    ``geometry``: the network's :class:`EdgeGeometry`, built once by the caller (else here).
    ``forecast``: a :class:`traffic.eta_model.EtaModel` (forward only): the contours of the
    time-dependent search departing ``depart_in_s`` after its time (module docstring), with
    ``travel_time_s`` the live times it forecasts from.
    """
    mins = check_minutes(minutes)
    tt = np.asarray(travel_time_s, dtype=np.float64)
    e = np.asarray(origin_edge, dtype=np.int64)
    length = np.asarray(net.edge_length_m, dtype=np.float64)
    frac = np.clip(np.asarray(origin_offset_m, np.float64) / np.maximum(length[e], 1e-9), 0, 1)
    limit = mins[-1] * 60.0
    tt_at = None
    if forecast is not None:
        if reverse:
            raise ValueError("forecast isochrones run forward only (a reverse contour fixes "
                             "the arrival, not the departure); pass forecast=None")
        dep = max(float(depart_in_s), 0.0)
        def tt_at(edges: np.ndarray, t_s: np.ndarray) -> np.ndarray:
            return forecast_edge_times(forecast, tt, edges, dep + t_s)
    if reverse:  # to the origin: from the start of its edge, then backwards
        times = reach_times(net, tt, net.edge_src[e], frac * tt[e], limit, reverse=True)
    elif tt_at is not None:
        seed = (1.0 - frac) * tt_at(e, np.zeros(e.size))
        times = reach_times(net, tt, net.edge_dst[e], seed, limit, forecast=forecast,
                            depart_in_s=dep)
    else:
        times = reach_times(net, tt, net.edge_dst[e], (1.0 - frac) * tt[e], limit)
    lat0 = float(np.mean(net.node_lat[net.edge_src[e]]))
    lon0 = float(np.mean(net.node_lon[net.edge_src[e]]))
    kx = _M_PER_DEG_LON_EQ * math.cos(math.radians(lat0))
    geom = geometry if geometry is not None else EdgeGeometry(net)
    out, cells = [], np.zeros(0, dtype=np.int64)
    for m in mins:
        c = m * 60.0
        stretch = _stretches(net, tt, times, e, frac, c, reverse=reverse, tt_at=tt_at)
        lat, lon = geom.sample(*stretch, step_m=cell_m / 2.0)
        new = _cell_ids((lon - lon0) * kx, (lat - lat0) * _M_PER_DEG_LAT, cell_m)
        # Nesting: every smaller contour's cells stay.
        cells = _fill_corners(np.union1d(cells, new))
        poly = _cells_polygon(cells, cell_m)
        area = float(shapely.area(poly)) / 1e6
        lonlat = shapely.transform(poly, lambda p: np.column_stack(
            [lon0 + p[:, 0] / kx, lat0 + p[:, 1] / _M_PER_DEG_LAT]))
        out.append(Contour(minutes=m, polygon=lonlat, area_km2=area))
    return out


def _stretches(net: RoadNetwork, tt: np.ndarray, times: np.ndarray, oe: np.ndarray,
               ofrac: np.ndarray, c: float, *, reverse: bool,
               tt_at: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(edge, from fraction, to fraction)`` of every road stretch reached within ``c`` s.
    ``tt_at(edges, t_s)``: an edge's time when entered ``t_s`` after the start (default its
    ``tt``)."""
    near = net.edge_dst if reverse else net.edge_src
    t_near = times[near]
    ok = np.flatnonzero(t_near <= c)
    edge_tt = np.maximum(tt[ok] if tt_at is None else tt_at(ok, t_near[ok]), 1e-9)
    reach = np.clip((c - t_near[ok]) / edge_tt, 0.0, 1.0)
    if reverse:  # the part of the edge ending at its reached end node
        a, b = 1.0 - reach, np.ones_like(reach)
    else:
        a, b = np.zeros_like(reach), reach
    # The origin's own edges: from the origin onwards (reverse: up to it).
    o_tt = tt[oe] if tt_at is None else tt_at(oe, np.zeros(oe.size))
    o_reach = np.clip(c / np.maximum(o_tt, 1e-9), 0.0, 1.0)
    if reverse:
        oa, ob = np.maximum(ofrac - o_reach, 0.0), ofrac
    else:
        oa, ob = ofrac, np.minimum(ofrac + o_reach, 1.0)
    return (np.concatenate([ok, oe]), np.concatenate([a, oa]), np.concatenate([b, ob]))


class EdgeGeometry:
    """Cumulative lengths (m) along every edge's geometry, to place points on edges.

    Built once per network (O(geometry points)) and reused by every request; a request then
    costs O(points it places).
    """

    def __init__(self, net: RoadNetwork) -> None:
        off = np.asarray(net.geom_offsets, dtype=np.int64)
        lat, lon = np.asarray(net.geom_lat), np.asarray(net.geom_lon)
        kx = _M_PER_DEG_LON_EQ * np.cos(np.radians(0.5 * (lat[1:] + lat[:-1])))
        seg = np.hypot(np.diff(lon) * kx, np.diff(lat) * _M_PER_DEG_LAT)
        seg[off[1:-1] - 1] = 0.0  # no length across the boundary of two edges
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        self.lat, self.lon, self.cum, self.off = lat, lon, cum, off
        self.start = cum[off[:-1]]  # cumulative length at each edge's first point
        self.length = cum[off[1:] - 1] - self.start

    def sample(self, edge: np.ndarray, a: np.ndarray, b: np.ndarray, *, step_m: float
               ) -> tuple[np.ndarray, np.ndarray]:
        """``(lat, lon)`` of points every ``step_m`` along each edge's stretch ``[a, b]``
        (fractions of its length), both ends included."""
        if edge.size == 0:
            return np.zeros(0), np.zeros(0)
        L = self.length[edge]
        d0, d1 = a * L, b * L
        n = np.ceil((d1 - d0) / step_m).astype(np.int64) + 1
        rep = np.repeat(np.arange(edge.size), n)
        k = np.arange(rep.size) - np.repeat(np.cumsum(n) - n, n)
        d = np.minimum(d0[rep] + k * step_m, d1[rep])
        e = edge[rep]
        target = self.start[e] + d
        # The segment of each point: the last geometry point of its edge at or before it.
        i = np.searchsorted(self.cum, target, side="right") - 1
        i = np.maximum(np.minimum(i, self.off[e + 1] - 2), self.off[e])
        seg = self.cum[i + 1] - self.cum[i]
        t = np.where(seg > 0, (target - self.cum[i]) / np.where(seg > 0, seg, 1.0), 0.0)
        t = np.clip(t, 0.0, 1.0)
        return (self.lat[i] + t * (self.lat[i + 1] - self.lat[i]),
                self.lon[i] + t * (self.lon[i + 1] - self.lon[i]))


def _cell_ids(x: np.ndarray, y: np.ndarray, cell_m: float) -> np.ndarray:
    """One id per occupied grid cell (row-major with an offset so ids are non-negative)."""
    cx = np.floor(x / cell_m).astype(np.int64) + (1 << 20)
    cy = np.floor(y / cell_m).astype(np.int64) + (1 << 20)
    return np.unique(cy * _ROW + cx)


_ROW = 1 << 21  # cell id = row * _ROW + column


def _fill_corners(cells: np.ndarray) -> np.ndarray:
    """Add a cell wherever two cells meet only at a corner, so the union is a valid polygon
    without a costly repair (a ring may not touch itself). Sorted ids in and out."""
    def has(ids: np.ndarray) -> np.ndarray:
        i = np.minimum(np.searchsorted(cells, ids), cells.size - 1)
        return cells[i] == ids

    while cells.size:  # an added cell can make a new corner contact: until none is left
        add = []
        for diag, side_a, side_b in ((_ROW + 1, 1, _ROW), (_ROW - 1, -1, _ROW)):
            lone = has(cells + diag) & ~has(cells + side_a) & ~has(cells + side_b)
            add.append(cells[lone] + side_a)
        extra = np.concatenate(add)
        if extra.size == 0:
            break
        cells = np.union1d(cells, extra)
    return cells


def _cells_polygon(cells: np.ndarray, cell_m: float) -> shapely.Geometry:
    """Union of the cells (sorted ids). Unit boxes share whole edges and vertices, a valid
    coverage, so GEOS's coverage union applies (row runs would leave T-junctions, which it
    does not node)."""
    if cells.size == 0:
        return shapely.Polygon()
    cy, cx = cells // _ROW - (1 << 20), cells % _ROW - (1 << 20)
    boxes = shapely.box(cx * cell_m, cy * cell_m, (cx + 1) * cell_m, (cy + 1) * cell_m)
    # Valid as it is: _fill_corners left no cells meeting only at a corner (tests check).
    return shapely.coverage_union_all(boxes)


@njit(cache=True, nogil=True, inline="always")
def _push(heap_d, heap_v, size, d, v):  # pragma: no cover - jitted
    """Push ``(d, v)`` on the binary min-heap of ``size`` entries; returns the (possibly
    grown) arrays."""
    if size == heap_d.shape[0]:
        grown_d = np.empty(2 * size)
        grown_v = np.empty(2 * size, dtype=np.int64)
        grown_d[:size] = heap_d
        grown_v[:size] = heap_v
        heap_d, heap_v = grown_d, grown_v
    j = size
    while j > 0 and heap_d[(j - 1) >> 1] > d:
        heap_d[j], heap_v[j] = heap_d[(j - 1) >> 1], heap_v[(j - 1) >> 1]
        j = (j - 1) >> 1
    heap_d[j], heap_v[j] = d, v
    return heap_d, heap_v


@njit(cache=True, nogil=True, inline="always")
def _pop(heap_d, heap_v, size):  # pragma: no cover - jitted
    """Pop the least ``(d, v)`` off the binary min-heap of ``size`` entries (in place);
    returns ``(d, v, size - 1)``."""
    d, v = heap_d[0], heap_v[0]
    size -= 1
    ld, lv = heap_d[size], heap_v[size]
    j = 0
    while True:
        c = 2 * j + 1
        if c >= size:
            break
        if c + 1 < size and heap_d[c + 1] < heap_d[c]:
            c += 1
        if heap_d[c] >= ld:
            break
        heap_d[j], heap_v[j] = heap_d[c], heap_v[c]
        j = c
    if size > 0:
        heap_d[j], heap_v[j] = ld, lv
    return d, v, size


@njit(cache=True, nogil=True)
def _seeded(seed_node, seed_s, limit, n):  # pragma: no cover - jitted
    """Distances (inf but at the seeds within ``limit``) and the heap holding the seeds."""
    dist = np.full(n, np.inf)
    heap_d = np.empty(1024)
    heap_v = np.empty(1024, dtype=np.int64)
    size = 0
    for i in range(seed_node.shape[0]):
        v, d = seed_node[i], seed_s[i]
        if d <= limit and d < dist[v]:
            dist[v] = d
            heap_d, heap_v = _push(heap_d, heap_v, size, d, v)
            size += 1
    return dist, heap_d, heap_v, size


@njit(cache=True, nogil=True)
def _dijkstra(first, edges, ends, tt, seed_node, seed_s, limit, n):  # pragma: no cover
    dist, heap_d, heap_v, size = _seeded(seed_node, seed_s, limit, n)
    while size > 0:
        d, u, size = _pop(heap_d, heap_v, size)
        if d > dist[u]:
            continue
        for k in range(first[u], first[u + 1]):
            e = edges[k]
            nd = d + tt[e]
            w = ends[e]
            if nd <= limit and nd < dist[w]:
                dist[w] = nd
                heap_d, heap_v = _push(heap_d, heap_v, size, nd, w)
                size += 1
    return dist


@njit(cache=True, nogil=True, inline="always")
def _forecast_tt(live, slope, lag, floor, h, gain, pool, damping_s, local_tau_s, correct_lag,
                 no_fade, max_change):  # pragma: no cover - jitted
    """One edge's forecast travel time (s) entered ``h`` s after the model's time: the
    arithmetic of :func:`traffic.forecast.eta_along` for one edge."""
    u = h + lag
    ch_pool = damping_s * -math.expm1(-u / damping_s)
    if not correct_lag:
        ch_pool -= damping_s * -math.expm1(-lag / damping_s)
    if no_fade:
        ch_loc = u if correct_lag else u - lag
    else:
        ch_loc = local_tau_s * -math.expm1(-u / local_tau_s)
        if not correct_lag:
            ch_loc -= local_tau_s * -math.expm1(-lag / local_tau_s)
    ch = gain * pool * ch_pool + gain * (slope - pool) * ch_loc
    ch = min(max(ch, -max_change), max_change)
    return max(live * math.exp(ch), min(live, floor))


@njit(cache=True, nogil=True)
def _forecast_times(tt, edges, h, slope, lag, floor, gain, pool, damping_s, local_tau_s,
                    correct_lag, no_fade, max_change):  # pragma: no cover - jitted
    out = np.empty(edges.shape[0])
    for i in range(edges.shape[0]):
        e = edges[i]
        out[i] = _forecast_tt(tt[e], float(slope[e]), float(lag[e]), float(floor[e]), h[i],
                              gain, pool, damping_s, local_tau_s, correct_lag, no_fade,
                              max_change)
    return out


@njit(cache=True, nogil=True)
def _dijkstra_td(first, edges, ends, tt, seed_node, seed_s, limit, n, depart_in, slope, lag,
                 floor, gain, pool, damping_s, local_tau_s, correct_lag, no_fade,
                 max_change):  # pragma: no cover - jitted
    """:func:`_dijkstra` with each edge at its forecast for the time it is entered."""
    dist, heap_d, heap_v, size = _seeded(seed_node, seed_s, limit, n)
    while size > 0:
        d, u, size = _pop(heap_d, heap_v, size)
        if d > dist[u]:
            continue
        for k in range(first[u], first[u + 1]):
            e = edges[k]
            nd = d + _forecast_tt(tt[e], float(slope[e]), float(lag[e]), float(floor[e]),
                                  depart_in + d, gain, pool, damping_s, local_tau_s,
                                  correct_lag, no_fade, max_change)
            w = ends[e]
            if nd <= limit and nd < dist[w]:
                dist[w] = nd
                heap_d, heap_v = _push(heap_d, heap_v, size, nd, w)
                size += 1
    return dist
