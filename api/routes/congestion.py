"""``GET /v1/congestion`` (+ ``/history``, ``/aggregate``, ``/snapshots``): congestion now and in the past.

Handlers parse and check the query, call the services facade (``congestion``,
``edge_history``, ``aggregate``, ``snapshot_times``) and encode the answer as GeoJSON or JSON
(default), Parquet, Arrow IPC or CSV, chosen by ``format=`` or else the ``Accept`` header.
Edge keys are 64-bit integers; JSON answers also give them as strings (a GeoJSON feature's
``id``, the history's ``edge``), because a browser's numbers hold only 53 bits.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import polars as pl
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from api.deps import ServicesDep
from api.errors import ApiError
from api.formats import MEDIA_TYPES, to_arrow_ipc_bytes, to_csv_bytes, to_geojson, to_parquet_bytes
from api.routes.params import bbox_query, time_query
from traffic.errors import NoSnapshotError

router = APIRouter(prefix="/v1/congestion", tags=["congestion"])

_FORMATS = ("geojson", "json", "parquet", "arrow", "csv")
_TABULAR = {"parquet": to_parquet_bytes, "arrow": to_arrow_ipc_bytes, "csv": to_csv_bytes}
_ACCEPT = {**{v: k for k, v in MEDIA_TYPES.items()}, "application/json": "json",
           "application/vnd.apache.arrow.file": "arrow", "application/x-parquet": "parquet"}
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _content(*types: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {t: {} for t in types}}}


_TABLE_TYPES = (MEDIA_TYPES["parquet"], MEDIA_TYPES["arrow"], MEDIA_TYPES["csv"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "`no_snapshot`: no snapshot at or before the time asked"},
    422: {"description": "`invalid_value`: a bad parameter (the message names it)"},
}

_DEG = r"-?[0-9]{1,3}(\.[0-9]{1,9})?"
#: Published in the OpenAPI schema (clients and the schema fuzzer see the shape); the
#: parser checks values and order with messages that name the parameter.
BBOX_PATTERN = rf"^{_DEG},{_DEG},{_DEG},{_DEG}$"
BboxQ = Annotated[str, Query(description="minlon,minlat,maxlon,maxlat (degrees)",
                             examples=["12.55,55.67,12.57,55.69"],
                             json_schema_extra={"pattern": BBOX_PATTERN})]
FormatQ = Annotated[str | None, Query(description="geojson (default), parquet, arrow or csv; "
                                                  "else chosen by the Accept header")]
TimeQ = Annotated[str | None, Query(description="unix seconds or ISO 8601 (UTC when no offset)")]
RoadClassQ = Annotated[list[str] | None, Query(description="keep only these road classes "
                                                          "(repeat, or comma-separated)")]


@router.get("", responses={**_content(MEDIA_TYPES["geojson"], *_TABLE_TYPES), **_ERRORS})
def get_congestion(
    request: Request,
    services: ServicesDep,
    bbox: BboxQ,
    at: TimeQ = None,
    road_class: RoadClassQ = None,
    min_ratio: Annotated[float | None, Query(description="keep edges with speed/free-flow >= this")] = None,
    max_ratio: Annotated[float | None, Query(description="keep edges with speed/free-flow <= this")] = None,
    format: FormatQ = None,
) -> Response:
    """Per-edge speed, free-flow speed, ratio, confidence and observations in a bbox.

    Without ``at``: the live estimator state. With ``at``: the nearest snapshot at or before
    it (404 ``no_snapshot`` before the first one).
    """
    fmt = _negotiate(request, format)
    box = bbox_query(bbox)
    at_s = time_query(at, name="at", bounded=True)
    try:
        answer = services.congestion(box, at_s=at_s, road_class=_classes(road_class),
                                     min_ratio=_ratio(min_ratio, "min_ratio"),
                                     max_ratio=_ratio(max_ratio, "max_ratio"))
    except NoSnapshotError as exc:
        raise ApiError(404, "no_snapshot", str(exc), details={"at": at_s}) from None
    headers = {"X-Source": answer.source, "X-Network-Version": answer.network_version}
    if answer.as_of_t_s is not None:
        headers["X-As-Of"] = repr(float(answer.as_of_t_s))
    if fmt in ("geojson", "json"):
        body = to_geojson(services.net, answer.frame, as_of_t_s=answer.as_of_t_s,
                          network_version=answer.network_version)
        for feature in body["features"]:
            feature["id"] = str(feature["properties"]["key"])
        body["source"] = answer.source
        body["as_of"] = answer.as_of_t_s
        return JSONResponse(body, media_type=MEDIA_TYPES["geojson"], headers=headers)
    frame = answer.frame.with_columns(pl.lit(answer.as_of_t_s, dtype=pl.Float64).alias("as_of"))
    return _table(frame, fmt, headers)


@router.get("/history", responses={**_content("application/json", *_TABLE_TYPES), **_ERRORS})
def get_history(
    request: Request,
    services: ServicesDep,
    edge: Annotated[str, Query(description="stable edge key (a 64-bit integer)")],
    from_: Annotated[str | None, Query(alias="from", description="unix s or ISO 8601; default to - 6 h")] = None,
    to: TimeQ = None,
    format: FormatQ = None,
) -> Response:
    """One edge's snapshots over time: ``t, speed_mps, freeflow_mps, ratio, confidence,
    observations, last_update_t`` (JSON: one array per column)."""
    fmt = _negotiate(request, format)
    key = _edge_key(edge)
    t_from = time_query(from_, name="from", bounded=True)
    t_to = time_query(to, name="to", bounded=True)
    try:
        frame = services.edge_history(key, t_from, t_to)
    except NoSnapshotError as exc:
        raise ApiError(404, "no_snapshot", str(exc)) from None
    if frame.height == 0 and services.net.edge_index_of_keys([key])[0] < 0:
        raise ApiError(404, "unknown_edge",
                       f"`edge` {key} is not an edge of the serving network and has no history")
    if fmt not in ("geojson", "json"):
        return _table(frame, fmt, {})
    return JSONResponse({"edge": str(key), "from": t_from, "to": t_to, "n": frame.height,
                         "series": _columns(frame)})


@router.get("/aggregate", responses={**_content("application/json", *_TABLE_TYPES), **_ERRORS})
def get_aggregate(
    request: Request,
    services: ServicesDep,
    bbox: BboxQ,
    from_: Annotated[str | None, Query(alias="from", description="unix s or ISO 8601; default to - 6 h")] = None,
    to: TimeQ = None,
    interval: Annotated[str, Query(description="bucket length: seconds, or with s/m/h/d")] = "5m",
    road_class: RoadClassQ = None,
    format: FormatQ = None,
) -> Response:
    """Mean speed/free-flow ratio over the bbox's edges per interval of snapshot time:
    ``t_bucket`` (unix s, aligned to the epoch), ``mean_ratio``, ``n`` (edge-snapshot rows)."""
    fmt = _negotiate(request, format)
    box = bbox_query(bbox)
    interval_s = _duration(interval, "interval")
    t_from = time_query(from_, name="from", bounded=True)
    t_to = time_query(to, name="to", bounded=True)
    try:
        frame = services.aggregate(box, t_from, t_to, interval_s=interval_s,
                                   road_class=_classes(road_class))
    except NoSnapshotError as exc:
        raise ApiError(404, "no_snapshot", str(exc)) from None
    if fmt not in ("geojson", "json"):
        return _table(frame, fmt, {})
    return JSONResponse({"interval_s": interval_s, "from": t_from, "to": t_to,
                         "series": _columns(frame)})


@router.get("/snapshots", responses=_ERRORS)
def get_snapshots(services: ServicesDep, from_: Annotated[str | None, Query(alias="from")] = None,
                  to: TimeQ = None) -> dict[str, Any]:
    """Times (unix s, ascending) of the stored snapshots in ``[from, to]``, and the live time."""
    t_from = time_query(from_, name="from", bounded=True)
    t_to = time_query(to, name="to", bounded=True)
    if t_from is not None and t_to is not None and t_from > t_to:
        raise ApiError(422, "invalid_value", f"`from` ({t_from:g}) is after `to` ({t_to:g})")
    times = services.snapshot_times(t_from, t_to)
    return {"times": times.tolist(), "first": float(times[0]) if times.size else None,
            "last": float(times[-1]) if times.size else None, "now": services.now_s()}


# ---------------------------------------------------------------------- parsing
def _negotiate(request: Request, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in _FORMATS:
            raise ApiError(422, "invalid_value",
                           f"`format` must be one of {', '.join(_FORMATS)}; got {fmt!r}")
        return fmt
    for part in request.headers.get("accept", "").split(","):
        media = part.split(";")[0].strip().lower()
        if media in _ACCEPT:
            return _ACCEPT[media]
    return "geojson"


def _ratio(value: float | None, name: str) -> float | None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ApiError(422, "invalid_value", f"`{name}` must be a finite number >= 0; got {value!r}")
    return value


def _classes(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [c.strip() for v in values for c in v.split(",") if c.strip()] or None


def _edge_key(text: str) -> int:
    try:
        key = int(text)
    except ValueError:
        raise ApiError(422, "invalid_value", f"`edge` must be an integer edge key; got {text!r}") from None
    if not -(2**63) <= key < 2**63:
        raise ApiError(422, "invalid_value", f"`edge` must fit in 64 bits; got {text!r}")
    return key


def _duration(text: str, name: str) -> float:
    raw = text.strip().lower()
    scale = _DURATION_UNITS.get(raw[-1:])
    try:
        seconds = float(raw[:-1] if scale is not None else raw) * (scale or 1.0)
    except ValueError:
        seconds = float("nan")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ApiError(422, "invalid_value",
                       f"`{name}` must be a duration > 0 (seconds, or with s/m/h/d); got {text!r}")
    return seconds


# ---------------------------------------------------------------------- encoding
def _table(frame: pl.DataFrame, fmt: str, headers: dict[str, str]) -> Response:
    return Response(_TABULAR[fmt](frame), media_type=MEDIA_TYPES[fmt], headers=headers)


def _columns(frame: pl.DataFrame) -> dict[str, list[Any]]:
    """One JSON array per column; NaN becomes null (JSON has no NaN)."""
    return {c: frame[c].fill_nan(None).to_list() if frame[c].dtype.is_float() else frame[c].to_list()
            for c in frame.columns}
