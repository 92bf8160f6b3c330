"""``/v1/speeds``: speed feeds in OSRM's segment-speed CSV, in and out.

``POST /v1/speeds`` (``text/csv``, role ``probe-writer``) takes lines
``from_osm_node_id,to_osm_node_id,speed_kmh[,rate]`` (one per direction; a line applies to
the part of an edge between those two consecutive OSM nodes; speed 0 closes the edge until a
later line or the age limit) and answers 202 with the counts and ``rejected``
(``[{row, reason}]``: lines naming no segment of the network). A malformed file is a 400
``invalid_value`` and nothing of it is applied. ``GET /v1/speeds.csv`` writes the live travel
times in the same format, one line per consecutive OSM node pair of every edge, at the edge's
speed in whole km/h, for ``osrm-customize --segment-speed-file``. See
:mod:`traffic.speed_feeds` for the blend.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from api.deps import ServicesDep
from api.errors import ApiError
from traffic.speed_feeds import FeedFormatError

router = APIRouter(prefix="/v1", tags=["speeds"])

#: Largest speed file taken in one request (a country's feed is tens of MB).
MAX_FEED_BYTES = 512 * 1024 * 1024

_BODY_DOC: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "text/csv": {"schema": {"type": "string"},
                 "example": "25217851,25217852,42\n25217852,25217851,38.5,1\n"}}}}


@router.post("/speeds", status_code=202, openapi_extra=_BODY_DOC)
async def post_speeds(request: Request, services: ServicesDep) -> Any:
    """Apply an OSRM segment-speed file; 202 with what was applied and why lines were not."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_FEED_BYTES:
        raise ApiError(413, "too_big", f"request body above {MAX_FEED_BYTES} bytes")
    kind = request.headers.get("content-type", "text/csv").split(";")[0].strip().lower()
    if kind not in ("text/csv", "application/csv", "text/plain"):
        raise ApiError(415, "unsupported_media_type",
                       f"content type {kind!r} is not accepted; send text/csv")
    body = await request.body()
    if len(body) > MAX_FEED_BYTES:
        raise ApiError(413, "too_big", f"request body above {MAX_FEED_BYTES} bytes")
    try:
        out = await run_in_threadpool(services.import_speeds, body)
    except FeedFormatError as exc:
        raise ApiError(400, "invalid_value", f"speed file: {exc}") from None
    return JSONResponse(out, status_code=202)


@router.get("/speeds.csv")
async def get_speeds_csv(services: ServicesDep) -> Response:
    """The live travel times as an OSRM segment-speed file."""
    data = await run_in_threadpool(services.export_speeds)
    return Response(data, media_type="text/csv",
                    headers={"X-Network-Version": services.net.version})
