"""One error shape for every 4xx/5xx answer: ``{"code", "message", "details"}``.

Handlers translate our exception classes (``graph.errors.NetworkError``,
``traffic.errors.TrafficError``), FastAPI's request validation errors and
``HTTPException`` into that shape, with a machine-readable ``code`` a client can branch on.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from graph.errors import (
    NetworkError,
    NetworkFileNotFoundError,
    NoCandidateError,
    NoRouteError,
)
from traffic.errors import TrafficError


class ApiError(Exception):
    """An error the API answers with a given status, ``code`` and ``message``."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


class Overloaded(ApiError):
    """The ingest queues are full: the request was not acknowledged; retry later."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(
            503,
            "overloaded",
            message,
            details={"retry_after_s": retry_after_s},
            headers={"Retry-After": str(max(1, int(round(retry_after_s))))},
        )


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The JSON body of every error answer."""
    return {"code": code, "message": message, "details": details}


async def send_error(send: Send, status: int, code: str, message: str, details: Any,
                     headers: dict[str, str]) -> None:
    """Answer with the error shape straight from an ASGI middleware (no handler ran)."""
    body = json.dumps(error_body(code, message, details)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _network_error_status(exc: NetworkError) -> tuple[int, str]:
    if isinstance(exc, NoCandidateError):
        return 422, "no_segment"
    if isinstance(exc, NoRouteError):
        return 404, "no_route"
    if isinstance(exc, NetworkFileNotFoundError):
        return 404, "not_found"
    return 422, "invalid_network"


def unknown_body_field(errors: list[dict[str, Any]]) -> str | None:
    """The name of the first extra body field among pydantic's errors (body models forbid
    unknown fields: api/strict.py), if any."""
    for e in errors:
        if e.get("type") == "extra_forbidden":
            loc = [str(p) for p in e.get("loc", ()) if p != "body"]
            return ".".join(loc) or None
    return None


def _validation_message(errors: list[dict[str, Any]]) -> str:
    first = errors[0]
    loc = list(first.get("loc", ()))
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    where = ".".join(str(p) for p in loc) or "request body"
    return f"`{where}`: {first.get('msg', 'invalid value')}"


def _jsonable_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # pydantic puts the raw exception in ctx; keep only what JSON can carry.
    out = []
    for e in errors:
        item = {k: e[k] for k in ("loc", "msg", "type") if k in e}
        item["loc"] = [str(p) for p in item.get("loc", ())]
        out.append(item)
    return out


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "too_big",
    415: "unsupported_media_type",
    422: "invalid_value",
    429: "too_many_requests",
    503: "unavailable",
}


def register_error_handlers(app: FastAPI) -> None:
    """Install the handlers that give every error the ``{code, message, details}`` shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message, exc.details),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        extra = unknown_body_field(errors)
        if extra is not None:  # body models forbid unknown fields (api/strict.py)
            return JSONResponse(error_body(
                "unknown_parameter", f"unknown body field `{extra}`", {"field": extra}),
                status_code=422)
        return JSONResponse(
            error_body("invalid_value", _validation_message(errors), _jsonable_errors(errors)),
            status_code=422,
        )

    @app.exception_handler(NetworkError)
    async def _network_error(request: Request, exc: NetworkError) -> JSONResponse:
        status, code = _network_error_status(exc)
        return JSONResponse(error_body(code, str(exc)), status_code=status)

    @app.exception_handler(TrafficError)
    async def _traffic_error(request: Request, exc: TrafficError) -> JSONResponse:
        return JSONResponse(error_body("invalid_value", str(exc)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        return JSONResponse(
            error_body(code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )
