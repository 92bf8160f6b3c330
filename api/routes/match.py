"""``POST /v1/match``: map-match a recorded trace (offline HMM, full look-ahead).

The engine is the ingest matcher's model decoded over the whole trace
(:class:`traffic.matching.OfflineMatcher`, through ``Services.match``). Nothing reaches the
estimator unless ``ingest`` is true; then the trace goes through ``Services.ingest`` exactly
as ``POST /v1/probes`` sends a batch (validation, the probe log, the ingest stages), which
needs a ``vehicle_id`` and, when keys are configured, the ``probe-writer`` role.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import ServicesDep, SettingsDep
from api.errors import ApiError, Overloaded
from api.schemas import MatchIn, MatchOut
from api.security import PRINCIPAL_SCOPE_KEY
from graph.navigation import geometry_json
from graph.network import haversine_m
from traffic.probes import probes_from_records
from workers.services import Overloaded as PipelineOverloaded

router = APIRouter(prefix="/v1", tags=["matching"])

#: Most points one trace may hold.
MAX_TRACE_POINTS = 10_000


def trace_arrays(points: list[Any]) -> dict[str, np.ndarray]:
    """Columns of a validated trace (``t``, ``lat``, ``lon``, ``speed_mps``, ``heading_deg``;
    NaN for a missing speed or heading)."""
    def col(name: str) -> np.ndarray:
        return np.array([np.nan if getattr(p, name) is None else getattr(p, name)
                         for p in points], dtype=np.float64)

    return {name: col(name) for name in ("t", "lat", "lon", "speed_mps", "heading_deg")}


def check_trace(t: np.ndarray, *, field: str = "points") -> None:
    """413 ``too_big`` above :data:`MAX_TRACE_POINTS`; 422 ``invalid_value`` naming the first
    point whose time does not increase."""
    if t.size > MAX_TRACE_POINTS:
        raise ApiError(413, "too_big", f"`{field}` may hold at most {MAX_TRACE_POINTS} points; "
                       f"got {t.size}", details={"field": field, "max_points": MAX_TRACE_POINTS})
    bad = np.flatnonzero(np.diff(t) <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        raise ApiError(422, "invalid_value",
                       f"`{field}[{i}].t` must be later than `{field}[{i - 1}].t` "
                       f"(timestamps must increase); got {float(t[i])!r} after {float(t[i - 1])!r}",
                       details={"field": f"{field}[{i}].t"})


def require_role(request: Request, settings: Any, role: str) -> None:
    """401/403 unless the caller's key holds ``role`` (open servers pass)."""
    keys = settings.api_keys
    if keys.open:
        return
    principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if principal is None:
        raise ApiError(401, "unauthorized", f"`ingest=true` needs a key with role `{role}`",
                       headers={"WWW-Authenticate": "Bearer"})
    if role not in keys.roles[int(str(principal).rsplit("-", 1)[1])]:
        raise ApiError(403, "forbidden", f"this API key lacks role `{role}`, which "
                       "`ingest=true` needs")


def match_answer(net_version: str, m: Any, matcher: Any, lat: np.ndarray, lon: np.ndarray,
                 *, geometry_format: str = "geojson") -> dict[str, Any]:
    """The JSON answer of ``POST /v1/match`` from a :class:`traffic.matching.TraceMatch`."""
    net = matcher.net
    keys = net.edge_key[m.edge]
    dist = m.edge_distance_m
    n_tr = m.n_traces
    starts = np.searchsorted(m.edge_trace, np.arange(n_tr))
    ends = np.searchsorted(m.edge_trace, np.arange(n_tr), side="right")
    parts = []
    for i in range(n_tr):
        a, b = int(starts[i]), int(ends[i])
        glat, glon, _ = matcher.geometry(m.edge[a:b], m.edge_off0_m[a:b], m.edge_off1_m[a:b])
        parts.append((glat, glon))
    if len(parts) == 1:
        geometry = geometry_json(*parts[0], geometry_format)
    elif geometry_format == "polyline6":
        geometry = [geometry_json(la, lo, geometry_format) for la, lo in parts]
    else:
        geometry = {"type": "MultiLineString",
                    "coordinates": [np.column_stack([lo, la]).tolist() for la, lo in parts]}
    n_pts = np.bincount(m.point_trace[m.point_trace >= 0], minlength=n_tr)
    matched = m.point_edge >= 0
    conf = (float(matched.mean() * (n_pts @ m.trace_confidence) / max(n_pts.sum(), 1))
            if n_tr else 0.0)
    matchings = [{
        "confidence": float(m.trace_confidence[i]),
        "distance_m": float(dist[starts[i]:ends[i]].sum()),
        "duration_s": float(m.edge_t1_s[ends[i] - 1] - m.edge_t0_s[starts[i]]),
        "first_point": int(m.trace_first_point[i]), "last_point": int(m.trace_last_point[i]),
        "edge_start": int(starts[i]), "edge_count": int(ends[i] - starts[i])}
        for i in range(n_tr)]
    off_dist = np.where(matched, haversine_m(lat, lon, np.where(matched, m.point_lat, lat),
                                             np.where(matched, m.point_lon, lon)), np.nan)
    pe = np.where(matched, m.point_edge, 0)
    p_key, p_way = net.edge_key[pe], net.edge_osm_way[pe]
    tracepoints = [
        {"lat": float(m.point_lat[i]), "lon": float(m.point_lon[i]), "edge": int(p_key[i]),
         "osm_way_id": int(p_way[i]), "offset_m": float(m.point_offset_m[i]),
         "distance_m": float(off_dist[i]), "matching": int(m.point_trace[i]), "reason": None}
        if matched[i] else
        {"lat": None, "lon": None, "edge": None, "osm_way_id": None, "offset_m": None,
         "distance_m": None, "matching": None, "reason": str(m.point_reason[i])}
        for i in range(lat.size)]
    return {
        "network_version": net_version, "confidence": conf,
        "distance_m": float(dist.sum()),
        "duration_s": float(sum(x["duration_s"] for x in matchings)),
        "edges": keys.tolist(), "osm_way_ids": net.edge_osm_way[m.edge].tolist(),
        "enter_s": m.edge_t0_s.tolist(), "exit_s": m.edge_t1_s.tolist(),
        "edge_distance_m": dist.tolist(), "geometry": geometry,
        "matchings": matchings, "tracepoints": tracepoints, "ingest": None,
    }


def _ingest(services: Any, vehicle_id: str, points: list[Any]) -> dict[str, Any]:
    """The trace as a probe batch, through the same parsing and ``Services.ingest`` call as
    ``POST /v1/probes``."""
    records = [{"vehicle_id": vehicle_id, **p.model_dump(exclude_none=True)} for p in points]
    accepted, rejected = services.ingest(probes_from_records(records, source="request body"))
    return {"accepted": accepted, "rejected": [{"index": i, "reason": r} for i, r in rejected]}


@router.post("/match", response_model=MatchOut)
async def post_match(body: MatchIn, request: Request, services: ServicesDep,
                     settings: SettingsDep) -> Response:
    """Match a trace to the road network and return the route driven, with per-edge enter
    and exit times, a confidence, and one ``tracepoints`` entry per input point.

    413 ``too_big`` above 10,000 points; 422 ``invalid_value`` naming the field for a
    coordinate out of range or a timestamp that does not increase. With ``ingest=true`` the
    trace is also accepted as probes (``ingest`` in the answer, as ``POST /v1/probes``
    answers), which needs ``vehicle_id`` and the ``probe-writer`` role.
    """
    cols = trace_arrays(body.points)
    check_trace(cols["t"])
    if body.ingest:
        if body.vehicle_id is None:
            raise ApiError(422, "invalid_value", "`vehicle_id` is required with `ingest=true`",
                           details={"field": "vehicle_id"})
        require_role(request, settings, "probe-writer")
    speed = cols["speed_mps"] if np.isfinite(cols["speed_mps"]).any() else None
    heading = cols["heading_deg"] if np.isfinite(cols["heading_deg"]).any() else None
    m, matcher = await run_in_threadpool(partial(
        services.match, cols["t"], cols["lat"], cols["lon"], speed_mps=speed,
        heading_deg=heading))
    out = match_answer(matcher.network_version, m, matcher, cols["lat"], cols["lon"],
                       geometry_format=body.geometry_format)
    if body.ingest:
        try:
            out["ingest"] = await run_in_threadpool(_ingest, services, body.vehicle_id,
                                                   body.points)
        except PipelineOverloaded as exc:
            raise Overloaded(str(exc), retry_after_s=exc.retry_after_s) from exc
    return Response(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json")
