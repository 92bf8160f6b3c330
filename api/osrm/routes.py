"""OSRM v5 endpoints: ``GET /route/v1/{profile}/{coordinates}``, ``/table/v1/...``,
``/nearest/v1/...`` and ``/match/v1/...`` (Project-OSRM ``docs/http.md``), over the same
services as ``/v1``: routes, via legs, alternatives, steps and exclusions from
``Services.route`` (the same durations as ``/v1/route``: the forecast where it answers,
else the live weights), tables from ``Services.table`` (live weights), snapping from
``Services.nearest`` and matching from ``Services.match`` (the offline HMM of ``POST
/v1/match``). Any profile name means the car profile. Errors answer OSRM's ``{code,
message}`` with HTTP 400 (``InvalidUrl``, ``InvalidQuery``, ``InvalidValue``,
``InvalidOptions``, ``TooBig``, ``NotImplemented``, ``NoSegment``, ``NoRoute``, ``NoMatch``).

Limits: 27 route coordinates (25 via points), 100 table coordinates, 10,000 match
coordinates, 100 nearest candidates, 3 alternatives. ``table`` distances (``annotations=
duration,distance``) are the lengths of each cell's fastest route, one route per cell: a table
gets distances up to :data:`MAX_DISTANCE_CELLS` cells, larger ones answer ``TooBig``.
``radiuses`` on route/table/nearest: the largest finite one is the snapping radius of every
point (``unlimited``: 5 km); on match it is each point's GPS accuracy (sigma, m). Without
``timestamps`` a match assumes a point every ``max(1 s, straight distance / 5 m/s)``.
Match legs and matchings take their durations from the trace's own times.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import ServicesDep, SettingsDep
from api.osrm.encoding import overview_geometry
from api.osrm.params import OsrmError, parse_request
from api.osrm.shaping import osrm_route, waypoint
from graph.errors import NoCandidateError, NoRouteError
from graph.network import haversine_m

router = APIRouter(tags=["osrm"])

#: Most cells of a table that gets distances (one route each; ~0.5-1 ms per cell on kbh).
MAX_DISTANCE_CELLS = 2_500
#: Snapping radius for ``radiuses=unlimited`` (m).
UNLIMITED_SNAP_M = 5_000.0


def _json(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def _error(exc: Exception) -> JSONResponse:
    """OSRM's ``{code, message}``, with the ``details: null`` every error of this server has
    (``api.errors``; OSRM clients read ``code`` and ``message`` only)."""
    if isinstance(exc, OsrmError):
        code, message, status = exc.code, exc.message, exc.status
    elif isinstance(exc, NoCandidateError):
        code, message, status = "NoSegment", str(exc), 400
    else:
        code, message, status = "NoRoute", str(exc), 400
    return _json({"code": code, "message": message, "details": None}, status)


def _snap_m(opts: dict[str, Any], default: float) -> float:
    radii = [r for r in opts.get("radiuses") or () if r is not None]
    if not radii:
        return default
    r = max(radii)
    return UNLIMITED_SNAP_M if math.isinf(r) else max(float(r), 1.0)


def _waypoints(services: Any, points: list[tuple[float, float]], snap_m: float,
               opts: dict[str, Any]) -> list[dict[str, Any]]:
    snaps = services.nearest([p[0] for p in points], [p[1] for p in points], number=1,
                             max_snap_m=snap_m)
    return [waypoint(s[0] if s else None, hint=opts["generate_hints"]) for s in snaps]


@router.get("/route/v1/{profile}/{coordinates}")
def osrm_route_service(profile: str, coordinates: str, request: Request, services: ServicesDep,
                       settings: SettingsDep) -> JSONResponse:
    """OSRM ``route``: the fastest route through the coordinates, with alternatives, steps,
    annotations and the overview geometry asked for."""
    try:
        req = parse_request("route", coordinates, request.query_params.multi_items())
        o, pts = req.options, req.points
        snap_m = _snap_m(o, settings.max_snap_m)
        via = pts[1:-1]
        nav: dict[str, Any] = {"geometry_format": "geojson"}
        if via:
            nav["via"] = via
        elif o["alternatives"]:
            nav["alternatives"] = o["alternatives"]
        if o.get("bearing") is not None:
            nav["bearing"], nav["bearing_range"] = o["bearing"]
        if o["annotations"]:
            nav["annotations"] = True
        exclude = o.get("exclude") or ()
        out = services.route(pts[0], pts[-1], max_snap_m=snap_m, steps=o["steps"],
                             annotations=True, **({"exclude": exclude} if exclude else {}),
                             **{k: v for k, v in nav.items() if k != "annotations"})
        routes = [out, *out.get("alternatives", ())]
        body: dict[str, Any] = {"code": "Ok", "routes": [
            osrm_route(r, fmt=o["geometries"], overview=o["overview"], steps=o["steps"],
                       annotations=o["annotations"]) for r in routes]}
        if not o["skip_waypoints"]:
            body["waypoints"] = _waypoints(services, pts, snap_m, o)
        body["data_version"] = out.get("network_version")
        return _json(body)
    except (OsrmError, NoCandidateError, NoRouteError) as exc:
        return _error(exc)


def _cell_distances(services: Any, src: list[tuple[float, float]],
                    dst: list[tuple[float, float]], durations: list[list[Any]], snap_m: float,
                    exclude: tuple[str, ...]) -> list[list[float | None]]:
    """The length (m) of each cell's fastest route (``None`` where the duration is)."""
    if len(src) * len(dst) > MAX_DISTANCE_CELLS:
        raise OsrmError("TooBig", f"a table gets distances up to {MAX_DISTANCE_CELLS} cells; "
                        f"this one has {len(src) * len(dst)} (ask annotations=duration)")
    kw = {"exclude": exclude} if exclude else {}
    out: list[list[float | None]] = []
    for i, a in enumerate(src):
        row: list[float | None] = []
        for j, b in enumerate(dst):
            if durations[i][j] is None:
                row.append(None)
                continue
            try:
                row.append(float(services.route(a, b, max_snap_m=snap_m, **kw)["distance_m"]))
            except NoRouteError:
                row.append(None)
        out.append(row)
    return out


@router.get("/table/v1/{profile}/{coordinates}")
def osrm_table_service(profile: str, coordinates: str, request: Request, services: ServicesDep,
                       settings: SettingsDep) -> JSONResponse:
    """OSRM ``table``: durations (and distances) between sources and destinations."""
    try:
        req = parse_request("table", coordinates, request.query_params.multi_items())
        o, pts = req.options, req.points
        snap_m = _snap_m(o, settings.max_snap_m)
        src = [pts[i] for i in o["sources"]]
        dst = [pts[i] for i in o["destinations"]]
        exclude = o.get("exclude") or ()
        kw = {"exclude": exclude} if exclude else {}
        res = services.table(src, dst, max_snap_m=snap_m, **kw)
        dur = res["durations_s"]
        body: dict[str, Any] = {"code": "Ok"}
        if "duration" in o["annotations"]:
            f = o["scale_factor"]
            body["durations"] = [[None if c is None else float(c) * f for c in row]
                                 for row in dur]
        if "distance" in o["annotations"]:
            body["distances"] = _cell_distances(services, src, dst, dur, snap_m, exclude)
        if not o["skip_waypoints"]:
            wps = _waypoints(services, pts, snap_m, o)
            body["sources"] = [wps[i] for i in o["sources"]]
            body["destinations"] = [wps[i] for i in o["destinations"]]
        body["data_version"] = res.get("network_version")
        return _json(body)
    except (OsrmError, NoCandidateError, NoRouteError) as exc:
        return _error(exc)


@router.get("/nearest/v1/{profile}/{coordinates}")
def osrm_nearest_service(profile: str, coordinates: str, request: Request,
                         services: ServicesDep, settings: SettingsDep) -> JSONResponse:
    """OSRM ``nearest``: the ``number`` nearest road positions to one coordinate."""
    try:
        req = parse_request("nearest", coordinates, request.query_params.multi_items())
        o, (lat, lon) = req.options, req.points[0]
        snaps = services.nearest([lat], [lon], number=o["number"],
                                 max_snap_m=_snap_m(o, settings.max_snap_m))[0]
        if not snaps:
            raise OsrmError("NoSegment", "no road segment near the coordinate")
        wps = []
        for s in snaps:
            w = waypoint(s, hint=o["generate_hints"])
            w["nodes"] = s["nodes"]
            wps.append(w)
        return _json({"code": "Ok", "waypoints": wps})
    except (OsrmError, NoCandidateError, NoRouteError) as exc:
        return _error(exc)


def _point_route_m(m: Any, trace: int, pts: np.ndarray) -> np.ndarray:
    """Distance along matching ``trace``'s route (m) of each of its matched points ``pts``:
    each point is found on the next traversal of its edge, in driving order."""
    sel = np.flatnonzero(m.edge_trace == trace)
    e, o0, o1 = m.edge[sel], m.edge_off0_m[sel], m.edge_off1_m[sel]
    start = np.r_[0.0, np.cumsum(np.maximum(o1 - o0, 0.0))][:-1]
    out = np.zeros(pts.size)
    j = 0
    for n, p in enumerate(pts.tolist()):
        edge, off = m.point_edge[p], m.point_offset_m[p]
        k = j
        while k < e.size and e[k] != edge:
            k += 1
        if k < e.size:
            j = k
            out[n] = start[k] + min(max(off - o0[k], 0.0), o1[k] - o0[k])
        else:
            out[n] = out[n - 1] if n else 0.0
    return np.maximum.accumulate(out)


@router.get("/match/v1/{profile}/{coordinates}")
def osrm_match_service(profile: str, coordinates: str, request: Request, services: ServicesDep,
                       settings: SettingsDep) -> JSONResponse:
    """OSRM ``match``: the trace snapped to the roads (the offline HMM of ``/v1/match``)."""
    try:
        req = parse_request("match", coordinates, request.query_params.multi_items())
        o = req.options
        lat = np.array([p[0] for p in req.points])
        lon = np.array([p[1] for p in req.points])
        if o["timestamps"] is not None:
            t = np.asarray(o["timestamps"], dtype=np.float64)
        else:
            step = np.maximum(1.0, haversine_m(lat[:-1], lon[:-1], lat[1:], lon[1:]) / 5.0)
            t = np.r_[0.0, np.cumsum(step)]
        acc = None
        if o.get("radiuses") is not None:
            acc = np.array([np.nan if r is None or math.isinf(r) else r
                            for r in o["radiuses"]], dtype=np.float64)
        m, matcher = services.match(t, lat, lon, accuracy_m=acc)
        if m.n_traces == 0:
            raise OsrmError("NoMatch", "no point of the trace could be matched")
        return _json(_match_body(m, matcher, t, lat, lon, o))
    except (OsrmError, NoCandidateError, NoRouteError) as exc:
        return _error(exc)


def _match_body(m: Any, matcher: Any, t: np.ndarray, lat: np.ndarray, lon: np.ndarray,
                o: dict[str, Any]) -> dict[str, Any]:
    net = matcher.net
    matchings = []
    tracepoints: list[dict[str, Any] | None] = [None] * lat.size
    matched = np.flatnonzero(m.point_edge >= 0)
    d_in = haversine_m(lat[matched], lon[matched], m.point_lat[matched], m.point_lon[matched])
    for i in range(m.n_traces):
        sel = m.edge_trace == i
        glat, glon, _ = matcher.geometry(m.edge[sel], m.edge_off0_m[sel], m.edge_off1_m[sel])
        pts = matched[m.point_trace[matched] == i]
        pos = _point_route_m(m, i, pts)
        legs = [{"distance": float(pos[j + 1] - pos[j]),
                 "duration": float(t[pts[j + 1]] - t[pts[j]]),
                 "weight": float(t[pts[j + 1]] - t[pts[j]]), "summary": "", "steps": []}
                for j in range(pts.size - 1)]
        dur = float(t[pts[-1]] - t[pts[0]])
        mt = {"confidence": float(m.trace_confidence[i]),
              "distance": float(m.edge_distance_m[sel].sum()), "duration": dur,
              "weight": dur, "weight_name": "duration", "legs": legs}
        geometry = overview_geometry(glat, glon, fmt=o["geometries"], overview=o["overview"])
        if geometry is not None:
            mt["geometry"] = geometry
        matchings.append(mt)
        for w, p in enumerate(pts.tolist()):
            e = int(m.point_edge[p])
            tp = {"name": net.edge_name_str(e) or "",
                  "location": [float(m.point_lon[p]), float(m.point_lat[p])],
                  "distance": float(d_in[np.searchsorted(matched, p)]),
                  "matchings_index": i, "waypoint_index": w, "alternatives_count": 0}
            if o["generate_hints"]:
                tp["hint"] = ""
            tracepoints[p] = tp
    return {"code": "Ok", "matchings": matchings, "tracepoints": tracepoints,
            "data_version": net.version}
