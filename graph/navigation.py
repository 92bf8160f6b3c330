"""Routes for navigation apps: via points, a heading at the origin, alternatives, and the
per-edge figures (annotations) and summaries of the answer.

:func:`plan_route` runs on a :class:`graph.router.Router` (its snapping, metric lease and
query threads; the router's own :meth:`~graph.router.Router.route` stays the lean hot path):

* **via points**: ``points`` is origin, via points..., destination; one leg per stretch, each
  routed between the snapped positions of its two ends (every equally near candidate edge,
  as in ``Router.route``), so a leg may arrive at a via point in one direction of a two-way
  road and leave in the other (a U-turn at the via point, as OSRM allows by default);
* **heading**: with ``bearing_deg`` the origin snaps to the nearest road position within
  ``max_snap_m`` whose direction of travel there (the bearing of the edge's geometry segment at
  the snapped point, degrees clockwise from north) is within ``bearing_range_deg`` of it;
  a driver heading north on a two-way street starts northbound, not with a U-turn;
* **alternatives** (no via points): :func:`graph.alternatives.find_alternatives`.

All legs (and the alternatives) are searched in one call on a query thread, on one leased
metric, so they share one weights version.

**One duration.** Every figure of an answer sums one vector of per-edge driven seconds
(:attr:`Leg.edge_duration_s`): the route's and each leg's ``duration_s``, the steps'
(:func:`graph.steps.route_steps`) and the annotations'. On the live weights they are the
metric's times times each edge's driven share; :func:`forecast_legs` replaces them with the
forecast driven times (:meth:`traffic.eta_model.EtaModel.route_eta`: each edge at its forecast
for when the car reaches it; a via leg departs when the previous one arrives, an alternative
at the departure), and a plain route (:func:`route_edge_shares`) gets the very same numbers.
:func:`scale_legs` multiplies them by one factor (the router's learned correction of its
optimism, ``workers.router.RouterCore``), so the figures still sum the same vector.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

import numpy as np
from numba import njit

from graph.alternatives import AlternativesConfig, find_alternatives
from graph.cch import QueryCache
from graph.errors import NoCandidateError, NoRouteError
from graph.network import NO_NAME, RoadNetwork
from graph.polyline import encode_polyline
from graph.spatial import candidates

__all__ = [
    "CONGESTION_LEVELS",
    "DEFAULT_BEARING_RANGE_DEG",
    "MAX_VIA_POINTS",
    "Leg",
    "Plan",
    "congestion_levels",
    "forecast_legs",
    "plan_route",
    "route_edge_shares",
    "route_summary",
    "scale_legs",
]

#: Most via points a request may give (as OSRM's default ``max-viaroute-size`` leaves room for).
MAX_VIA_POINTS = 25
#: Allowed deviation (degrees) of the origin's direction of travel from ``bearing``.
DEFAULT_BEARING_RANGE_DEG = 45.0
#: Congestion classes of the ratio speed / free-flow speed, as the map page colours roads
#: (``api/static/map.js`` ``CLASSES``): the first whose lower bound the ratio reaches.
CONGESTION_LEVELS = (("low", 0.85), ("moderate", 0.65), ("heavy", 0.45), ("severe", -np.inf))
_BEARING_CANDIDATES = 64
_SNAP_TIE_M = 0.01


@dataclass(frozen=True, slots=True, eq=False)
class Leg:
    """One stretch of a route: the :class:`graph.router.Route` and, per edge of it, the
    seconds and metres driven on it and the driven share of the edge (0..1; below 1 only
    for the first and last edges). ``route.duration_s`` is the sum of ``edge_duration_s``."""

    route: Any  # graph.router.Route
    edge_duration_s: np.ndarray  # float64[k]
    edge_distance_m: np.ndarray  # float64[k]
    edge_share: np.ndarray  # float64[k]


@dataclass(frozen=True, slots=True, eq=False)
class Plan:
    """The fastest route's legs (one per stretch between points) and its alternatives."""

    legs: list[Leg]
    alternatives: list[Leg]
    weights_version: str


def plan_route(
    router: Any, points_latlon: list[tuple[float, float]], *, max_snap_m: float,
    profile: Any = None, bearing_deg: float | None = None,
    bearing_range_deg: float = DEFAULT_BEARING_RANGE_DEG, alternatives: int = 0,
    config: AlternativesConfig | None = None, allowed: np.ndarray | None = None,
    overlay: Callable[[], AbstractContextManager[Any]] | None = None,
) -> Plan:
    """Fastest route through ``points_latlon`` (origin, via points, destination) and, for two
    points, up to ``alternatives`` admissible alternatives.

    ``allowed`` (bool per edge) and ``overlay`` route around closed edges
    (:meth:`graph.avoid.AvoidRouter.plan`): every point snaps only to allowed edges, and the
    search runs on the calling thread on the metric that ``overlay()`` holds exclusively for
    its ``with`` block, instead of on the router's query threads on its leased metric.

    Raises
    ------
    NoCandidateError
        A point has no road within ``max_snap_m`` (for the origin with ``bearing_deg``: no
        road in that direction).
    NoRouteError
        A leg cannot be driven; the message names it.
    """
    pts = np.asarray(points_latlon, dtype=np.float64).reshape(-1, 2)
    n = pts.shape[0]
    labels = ("origin", *(f"via point {i}" for i in range(1, n - 1)), "destination")
    pt, edge, off = router._snap(pts[:, 0], pts[:, 1], max_snap_m, labels=labels,
                                 **({} if allowed is None else {"allowed": allowed}))
    if bearing_deg is not None:
        e0, o0 = _snap_heading(router, pts[0], max_snap_m, bearing_deg, bearing_range_deg,
                               allowed)
        keep = pt != 0
        pt = np.concatenate([np.zeros(e0.size, dtype=pt.dtype), pt[keep]])
        edge = np.concatenate([e0, edge[keep]])
        off = np.concatenate([o0, off[keep]])
    length = router.net.edge_length_m[edge]
    frac = np.divide(off, length, out=np.zeros_like(off), where=length > 0).clip(0.0, 1.0)
    bounds = np.searchsorted(pt, np.arange(n + 1))
    ends = [(edge[a:b], frac[a:b], off[a:b]) for a, b in pairwise(bounds.tolist())]
    cfg = config or AlternativesConfig()
    if overlay is None:
        metric = router._lease(profile)
        try:
            found = router._threads.call(_search, metric, ends, int(alternatives), cfg)
            return _plan(router, pts, labels, ends, found, metric)  # under the lease
        finally:
            metric.release()
    with overlay() as metric:
        queries = QueryCache()  # this thread's, dropped before the metric goes back
        try:
            found = _search(metric, ends, int(alternatives), cfg, queries=queries)
        finally:
            queries.clear()
        return _plan(router, pts, labels, ends, found, metric)


def _plan(router: Any, pts: np.ndarray, labels: tuple[str, ...],
          ends: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
          found: tuple[list[Any], list[Any]], metric: Any) -> Plan:
    """The :class:`Plan` of the searches' results, while ``metric`` is still held."""
    n = pts.shape[0]
    version = metric.version
    legs: list[Leg] = []
    for i, res in enumerate(found[0]):
        if res is None:
            what = "the route" if n == 2 else f"leg {i} (from the {labels[i]} to the {labels[i + 1]})"
            a, b = pts[i], pts[i + 1]
            raise NoRouteError(
                f"no route for {what}: from (lat={a[0]:.6f}, lon={a[1]:.6f}) to "
                f"(lat={b[0]:.6f}, lon={b[1]:.6f}) on network {router.net.version}")
        legs.append(_leg(router, version, res, ends[i], ends[i + 1], metric.travel_time_s))
    alts = [_leg(router, version, res, ends[0], ends[1], metric.travel_time_s)
            for res in found[1]]
    return Plan(legs, alts, version)


def _search(metric: Any, ends: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_alt: int,
            config: AlternativesConfig, *, queries: Any = None) -> tuple[list[Any], list[Any]]:
    """On a query thread: each leg's fastest path, then the first leg's alternatives."""
    paths = []
    for (se, sf, _), (de, df, _) in pairwise(ends):
        paths.append(metric.route_positions(se, sf, de, df, queries=queries))
    alts: list[Any] = []
    if n_alt > 0 and len(paths) == 1 and paths[0] is not None:
        main = paths[0]
        t = metric.travel_time_s
        src_rem = (1.0 - ends[0][1][main.src]) * t[main.edges[0]]
        dst_pre = ends[1][1][main.dst] * t[main.edges[-1]]
        alts = find_alternatives(metric, main, float(src_rem), float(dst_pre), n_alt,
                                 config=config, queries=queries)
    return paths, alts


def _leg(router: Any, version: str, res: Any, start: tuple[np.ndarray, ...],
         end: tuple[np.ndarray, ...], tt: np.ndarray) -> Leg:
    """A leg's Route (built as ``Router.route`` builds one) and its per-edge figures."""
    (_, f_s, o_s), (_, f_t, o_t) = start, end
    fs, ft, os_, ot = float(f_s[res.src]), float(f_t[res.dst]), float(o_s[res.src]), float(o_t[res.dst])
    route = router._build_route(version, res, os_, ot, fs, ft)
    edges = res.edges
    dur = np.array(tt[edges], dtype=np.float64)
    dist = np.array(router.net.edge_length_m[edges], dtype=np.float64)
    share = np.ones(edges.size)
    if edges.size == 1:
        share[0] = ft - fs
        dist[0] = ot - os_
    else:
        share[0], share[-1] = 1.0 - fs, ft
        dist[0] -= os_
        dist[-1] = ot
    # The route's duration is the float sum of exactly these terms (graph.cch); keep it exact.
    dur[0] *= share[0]
    if edges.size > 1:
        dur[-1] *= share[-1]
    return Leg(route, dur, dist, share)


def forecast_legs(legs: list[Leg], eta: Any, travel_time_s: np.ndarray, *,
                  depart_in_s: float) -> tuple[list[Leg], tuple[float, float, float]]:
    """The legs driven one after the other on the forecast, and the route's
    ``(duration_s, p10_s, p90_s)``.

    ``eta`` is a :class:`traffic.eta_model.EtaModel`; ``travel_time_s`` the live times (s per
    network edge) it forecasts from; ``depart_in_s`` the departure after the model's time
    (s). One :meth:`~traffic.eta_model.EtaModel.route_eta` over all legs' edges with their
    driven shares: each edge at its forecast for when the car reaches it, so a leg departs
    when the previous one arrives. Each returned leg's ``edge_duration_s`` is its slice of the
    forecast driven times and its ``route.duration_s`` their sum; distances and shares are
    kept. O(route edges).
    """
    edges = np.concatenate([lg.route.edge_ids for lg in legs])
    share = np.concatenate([lg.edge_share for lg in legs])
    d, lo, hi, tt = eta.route_eta(edges, travel_time_s[edges], depart_in_s=depart_in_s,
                                  share=share)
    out, i = [], 0
    for lg in legs:
        k = lg.route.edge_ids.size
        part = tt[i:i + k]
        i += k
        out.append(Leg(replace(lg.route, duration_s=float(part.sum())), part,
                       lg.edge_distance_m, lg.edge_share))
    return out, (float(d), float(lo), float(hi))


def scale_legs(legs: list[Leg], factor: float) -> list[Leg]:
    """``legs`` with every per-edge driven time (:attr:`Leg.edge_duration_s`) times
    ``factor`` and each leg's ``route.duration_s`` their sum; distances and shares kept.
    ``factor`` 1 returns ``legs`` as they are. O(route edges)."""
    if factor == 1.0:
        return legs
    out = []
    for lg in legs:
        part = lg.edge_duration_s * float(factor)
        out.append(Leg(replace(lg.route, duration_s=float(part.sum())), part,
                       lg.edge_distance_m, lg.edge_share))
    return out


def route_edge_shares(router: Any, route: Any) -> np.ndarray:
    """Driven share (0..1) of each edge of a :class:`graph.router.Route` built by
    ``router`` (``Router.route``, ``AvoidRouter.route``): 1 but for the first and last edges.

    A Route does not keep its end positions' offsets, so they are read back from its
    polyline, whose first and last points ``Router._point_at`` placed by linear
    interpolation along the end edges' geometry (``Router.point_positions``): each is projected on
    its edge's segments (O(points of the two end edges), ~2 us). The shares match those
    :func:`plan_route` gives its legs (:class:`Leg`) to ~1e-12.
    """
    edges = route.edge_ids
    k = edges.size
    share = np.ones(k)
    if k == 0:
        return share
    net = router.net
    length = net.edge_length_m
    e0, e1 = int(edges[0]), int(edges[-1])
    lat, lon = route.lat, route.lon
    go = net.geom_offsets
    a0, b0, a1, b1 = int(go[e0]), int(go[e0 + 1]), int(go[e1]), int(go[e1 + 1])
    off_s = _offset_on_edge(net.geom_lat[a0:b0], net.geom_lon[a0:b0], router.point_positions(e0),
                            0, b0 - a0, float(lat[0]), float(lon[0]))
    off_t = _offset_on_edge(net.geom_lat[a1:b1], net.geom_lon[a1:b1], router.point_positions(e1),
                            0, b1 - a1, float(lat[-1]), float(lon[-1]))
    l0, l1 = float(length[e0]), float(length[e1])
    fs = min(max(off_s / l0, 0.0), 1.0) if l0 > 0 else 0.0
    ft = min(max(off_t / l1, 0.0), 1.0) if l1 > 0 else 0.0
    if k == 1:
        share[0] = max(ft - fs, 0.0)
    else:
        share[0], share[-1] = 1.0 - fs, ft
    return share


@njit(cache=True, nogil=True)
def _offset_on_edge(glat, glon, cum, a, b, plat, plon):  # pragma: no cover - jitted
    """Offset (m, ``cum`` units) along the edge whose geometry points are ``a..b-1`` of the
    point ``(plat, plon)`` on it: the nearest segment's start offset plus the projected part
    of its length (local equirectangular plane)."""
    kx = np.cos(np.radians(plat))
    best, off = np.inf, cum[a]
    for i in range(a, b - 1):
        dx = (glon[i + 1] - glon[i]) * kx
        dy = glat[i + 1] - glat[i]
        px = (plon - glon[i]) * kx
        py = plat - glat[i]
        den = dx * dx + dy * dy
        t = 0.0 if den <= 0.0 else min(max((px * dx + py * dy) / den, 0.0), 1.0)
        ex, ey = px - t * dx, py - t * dy
        err = ex * ex + ey * ey
        if err < best:
            best = err
            off = cum[i] + t * (cum[i + 1] - cum[i])
    return off


def _snap_heading(router: Any, point: np.ndarray, max_snap_m: float, bearing_deg: float,
                  range_deg: float, allowed: np.ndarray | None = None,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The nearest origin positions whose direction of travel is within range of the bearing:
    ``(edge, offset_m)`` (equally near ones all kept; only ``allowed`` edges when given)."""
    lat, lon = np.array([point[0]]), np.array([point[1]])
    _, ei, dist, off = candidates(router.spatial, lat, lon, radius_m=max_snap_m,
                                  k=_BEARING_CANDIDATES)
    if allowed is not None and ei.size:
        ok = allowed[ei]
        ei, dist, off = ei[ok], dist[ok], off[ok]
    if ei.size:
        b = edge_bearing_at(router.net, router.point_positions, ei, off)
        diff = np.abs((b - float(bearing_deg) + 180.0) % 360.0 - 180.0)
        ok = diff <= float(range_deg)
        ei, dist, off = ei[ok], dist[ok], off[ok]
    if ei.size == 0:
        raise NoCandidateError(
            f"no drivable road within {max_snap_m:g} m of the origin (lat={lat[0]:.6f}, "
            f"lon={lon[0]:.6f}) runs within {range_deg:g} degrees of bearing {bearing_deg:g}")
    keep = dist <= dist.min() + _SNAP_TIE_M
    return ei[keep], off[keep]


def edge_bearing_at(net: RoadNetwork, point_positions: Any, edges: np.ndarray,
                    offset_m: np.ndarray) -> np.ndarray:
    """Direction of travel (degrees clockwise from north, 0..360) of each edge at the given
    offset: the bearing of its geometry segment there. ``point_positions(edge)`` is each of
    the edge's geometry points' distance from its start (``Router.point_positions``)."""
    go = net.geom_offsets
    out = np.empty(edges.size, dtype=np.float64)
    for k, (e, o) in enumerate(zip(edges.tolist(), offset_m.tolist())):
        a, b = int(go[e]), int(go[e + 1])
        seg = int(np.searchsorted(point_positions(e), o, side="right")) - 1
        i = a + min(max(seg, 0), b - a - 2)
        la1, lo1, la2, lo2 = np.radians([net.geom_lat[i], net.geom_lon[i],
                                         net.geom_lat[i + 1], net.geom_lon[i + 1]])
        y = np.sin(lo2 - lo1) * np.cos(la2)
        x = np.cos(la1) * np.sin(la2) - np.sin(la1) * np.cos(la2) * np.cos(lo2 - lo1)
        out[k] = np.degrees(np.arctan2(y, x)) % 360.0
    return out


# -- the answer ---------------------------------------------------------------------------
def route_summary(net: RoadNetwork, edges: np.ndarray, distance_m: np.ndarray) -> str:
    """The names of the longest roads of a route, longest first, joined by ``", "``: the two
    longest, and a third that covers at least a fifth of the route. A road is its name, else
    its ref; unnamed roads are left out (``""`` when none is named)."""
    name = np.where(net.edge_name[edges] != NO_NAME, net.edge_name[edges], net.edge_ref[edges])
    named = name != NO_NAME
    if not named.any():
        return ""
    ids, inv = np.unique(name[named], return_inverse=True)
    total = np.bincount(inv, weights=distance_m[named])
    order = np.argsort(-total, kind="stable")
    keep = [int(k) for i, k in enumerate(order[:3])
            if i < 2 or total[k] >= 0.2 * float(distance_m.sum())]
    return ", ".join(net.string(int(ids[k])) or "" for k in keep)


def congestion_levels(edges: np.ndarray, travel_time_s: np.ndarray,
                      freeflow_s: np.ndarray, *, observed: bool = True) -> list[str]:
    """Congestion class per edge (:data:`CONGESTION_LEVELS`) from the ratio free-flow time /
    travel time (= speed / free-flow speed); ``unknown`` where the weights are free-flow
    (``observed=False``) or an edge's travel time is exactly its free-flow time (nothing has
    moved it: no observation)."""
    tt = travel_time_s[edges]
    ff = freeflow_s[edges]
    ratio = np.divide(ff, tt, out=np.zeros_like(ff, dtype=np.float64), where=tt > 0)
    out = np.full(edges.size, "unknown", dtype=object)
    known = (tt != ff) & np.isfinite(tt) if observed else np.zeros(edges.size, dtype=bool)
    for label, lo in reversed(CONGESTION_LEVELS):
        out[known & (ratio >= lo)] = label
    return out.tolist()


def leg_answers(net: RoadNetwork, legs: list[Leg]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(edges, seconds, metres)`` per edge over all legs, in order."""
    return (np.concatenate([lg.route.edge_ids for lg in legs]),
            np.concatenate([lg.edge_duration_s for lg in legs]),
            np.concatenate([lg.edge_distance_m for lg in legs]))


def join_geometry(legs: list[Leg]) -> tuple[np.ndarray, np.ndarray]:
    """The legs' polylines joined (a point shared by two legs once)."""
    lat, lon = [legs[0].route.lat], [legs[0].route.lon]
    for lg in legs[1:]:
        la, lo = lg.route.lat, lg.route.lon
        same = la.size and la[0] == lat[-1][-1] and lo[0] == lon[-1][-1]
        lat.append(la[1:] if same else la)
        lon.append(lo[1:] if same else lo)
    return np.concatenate(lat), np.concatenate(lon)


def geometry_json(lat: np.ndarray, lon: np.ndarray, fmt: str) -> Any:
    """A geometry as GeoJSON LineString (``geojson``) or an encoded polyline string
    (``polyline6``)."""
    if fmt == "polyline6":
        return encode_polyline(lat, lon, precision=6)
    return {"type": "LineString", "coordinates": np.column_stack([lon, lat]).tolist()}


def plan_answer(
    net: RoadNetwork, plan: Plan, *, steps: bool = False, annotations: bool = False,
    geometry_format: str = "geojson", travel_time_s: np.ndarray | None = None,
    observed: bool = True,
) -> dict[str, Any]:
    """The JSON fields of a planned route: the fastest route's totals (sums over its legs),
    joined geometry and edges, ``summary``, ``legs`` (each with ``summary``; ``steps`` when
    asked), ``annotations`` when asked, and ``alternatives`` (the same fields, one leg each)
    when any were asked for. Every duration sums the legs' :attr:`Leg.edge_duration_s`
    (live or, after :func:`forecast_legs`, forecast); ``travel_time_s`` is the metric's
    per-edge times (congestion, which tells the roads as they are now, and the speed of an
    edge not driven at all)."""
    out = _route_fields(net, plan.legs, steps=steps, annotations=annotations,
                        geometry_format=geometry_format, travel_time_s=travel_time_s,
                        observed=observed)
    out["alternatives"] = [
        _route_fields(net, [lg], steps=steps, annotations=annotations,
                      geometry_format=geometry_format, travel_time_s=travel_time_s,
                      observed=observed)
        for lg in plan.alternatives]
    return out


def _route_fields(net: RoadNetwork, legs: list[Leg], *, steps: bool, annotations: bool,
                  geometry_format: str, travel_time_s: np.ndarray | None,
                  observed: bool) -> dict[str, Any]:
    edges, dur, dist = leg_answers(net, legs)
    lat, lon = join_geometry(legs)
    first = legs[0].route
    out: dict[str, Any] = {
        "duration_s": float(sum(lg.route.duration_s for lg in legs)),
        "distance_m": float(sum(lg.route.distance_m for lg in legs)),
        "freeflow_duration_s": float(sum(lg.route.freeflow_duration_s for lg in legs)),
        "geometry": geometry_json(lat, lon, geometry_format),
        "edges": net.edge_key[edges].tolist(),
        "network_version": first.network_version,
        "weights_version": first.weights_version,
        "summary": route_summary(net, edges, dist),
    }
    out["legs"] = [_leg_fields(net, lg, steps=steps, travel_time_s=travel_time_s) for lg in legs]
    if annotations:
        freeflow = net.freeflow_time_s_at(edges)  # O(route edges), not O(network)
        full = freeflow if travel_time_s is None else np.asarray(travel_time_s)[edges]
        length = net.edge_length_m[edges]
        # The speed the durations are driven at (forecast or live); an edge not driven at
        # all (a zero share at an end) gets its whole-edge speed on the metric.
        speed = np.divide(length, full, out=np.zeros_like(length), where=full > 0)
        np.divide(dist, dur, out=speed, where=(dur > 0) & (dist > 0))
        out["annotations"] = {
            "speed_mps": speed.tolist(), "duration_s": dur.tolist(),
            # Both arrays already per route edge: positions 0..k-1 index them.
            "congestion": congestion_levels(np.arange(edges.size), full, freeflow,
                                            observed=observed and travel_time_s is not None),
            "edge_keys": net.edge_key[edges].tolist(),
        }
    return out


def _leg_fields(net: RoadNetwork, leg: Leg, *, steps: bool,
                travel_time_s: np.ndarray | None) -> dict[str, Any]:
    r = leg.route
    out: dict[str, Any] = {"distance_m": float(r.distance_m), "duration_s": float(r.duration_s),
                           "summary": route_summary(net, r.edge_ids, leg.edge_distance_m)}
    if steps:
        from graph.steps import route_steps

        out["steps"] = route_steps(net, r, travel_time_s=travel_time_s,
                                   edge_duration_s=leg.edge_duration_s)
    return out
