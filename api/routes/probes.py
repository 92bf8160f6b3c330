"""``POST /v1/probes``: push GPS probes as JSON ``{"probes": [...]}``, NDJSON or CSV."""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
import polars as pl
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.deps import ServicesDep, SettingsDep
from api.errors import ApiError, Overloaded
from api.schemas import ProbeAckOut, ProbeBatchIn, inline_json_schema
from traffic.probes import PROBE_SCHEMA, probes_from_csv, probes_from_records
from workers.services import Overloaded as PipelineOverloaded

router = APIRouter(prefix="/v1", tags=["probes"])

#: Bytes a probe batch body may hold (10,000 probes of generous JSON fit well within).
MAX_BODY_BYTES = 16 * 1024 * 1024

_BODY_DOC = {
    "requestBody": {
        "content": {
            "application/json": {"schema": inline_json_schema(ProbeBatchIn)},
            "application/x-ndjson": {"schema": {"type": "string"}},
            "text/csv": {"schema": {"type": "string"}},
        },
        "required": True,
    }
}


def parse_probe_body(body: bytes, content_type: str, *, max_probes: int) -> pl.DataFrame:
    """Turn a request body into a probe DataFrame; 4xx ``ApiError`` for malformed input."""
    kind = content_type.split(";")[0].strip().lower()
    if kind in ("", "application/json"):
        df = _from_json(body)
    elif kind in ("application/x-ndjson", "application/ndjson", "application/jsonl"):
        df = _from_ndjson(body)
    elif kind in ("text/csv", "application/csv"):
        df = probes_from_csv(body, source="request body")
    else:
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type {kind!r} is not accepted; send application/json, "
                       "application/x-ndjson or text/csv")
    if df.height > max_probes:
        raise ApiError(413, "too_big",
                       f"a request may carry at most {max_probes} probes; got {df.height}",
                       details={"max_probes": max_probes, "probes": df.height})
    return df


def _from_json(body: bytes) -> pl.DataFrame:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson is strict JSON; the stdlib also reads NaN/Infinity literals, which then get
        # a per-probe reason (``nan_value``) instead of failing the whole batch.
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise ApiError(400, "invalid_json", f"request body is not valid JSON: {err}") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("probes"), list):
        raise ApiError(422, "invalid_value", "body must be a JSON object with a `probes` list")
    records = doc["probes"]
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise ApiError(422, "invalid_value", f"`probes[{bad}]` must be an object")
    return probes_from_records(records, source="request body")


def _from_ndjson(body: bytes) -> pl.DataFrame:
    records: list[Any] = []
    for n, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as err:
            raise ApiError(400, "invalid_json", f"NDJSON line {n} is not valid JSON: {err}") from err
        if not isinstance(rec, dict):
            raise ApiError(422, "invalid_value", f"NDJSON line {n} must be an object")
        records.append(rec)
    if not records:
        return pl.DataFrame(schema=PROBE_SCHEMA)
    return probes_from_records(records, source="request body")


@router.post("/probes", status_code=202, response_model=ProbeAckOut, openapi_extra=_BODY_DOC)
async def post_probes(request: Request, services: ServicesDep, settings: SettingsDep) -> Any:
    """Validate and queue probes; 202 with how many were accepted and why others were not.

    Acknowledged probes are never dropped silently: each ends applied, pending in a matcher
    or unmatched (``GET /v1/status``). When ingest is saturated the answer is 503 with
    ``Retry-After`` and nothing of the batch was taken.
    """
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ApiError(413, "too_big", f"request body above {MAX_BODY_BYTES} bytes")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, "too_big", f"request body above {MAX_BODY_BYTES} bytes")
    t0 = time.perf_counter()
    df = parse_probe_body(body, request.headers.get("content-type", ""),
                          max_probes=settings.max_probes_per_request)
    t1 = time.perf_counter()
    try:
        accepted, rejected = await run_in_threadpool(services.ingest, df)
    except PipelineOverloaded as exc:
        raise Overloaded(str(exc), retry_after_s=exc.retry_after_s) from exc
    t2 = time.perf_counter()
    # Server-Timing (W3C): where this request's time went, for clients and the benchmarks.
    timing = f"parse;dur={(t1 - t0) * 1e3:.3f}, ingest;dur={(t2 - t1) * 1e3:.3f}"
    return JSONResponse({"accepted": accepted,
                         "rejected": [{"index": i, "reason": r} for i, r in rejected]},
                        status_code=202, headers={"Server-Timing": timing})
