"""Strict parameters: an unknown query parameter or JSON body field on a ``/v1`` endpoint is a
422 ``unknown_parameter`` that names it (issue 11 item 8), so a misspelt option is never
silently ignored (``&alternative=2`` would otherwise answer as if no option had been given).

:func:`strict_parameters` is a global dependency (``FastAPI(dependencies=...)``). Per route it
computes once the query parameter names (aliases) the endpoint declares, and the top-level
fields of its JSON body model, and compares each request with them: a set lookup per
parameter on the hot path. ``POST /v1/probes`` is exempt (probe providers send extra fields,
which its models ignore), as are paths outside ``/v1``.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import BaseModel

from api.errors import ApiError

#: ``(method, path)`` pairs that keep accepting unknown fields.
EXEMPT = frozenset({("POST", "/v1/probes")})

def _declared(route: Any) -> tuple[frozenset[str], frozenset[str] | None]:
    """Query names and body field names (``None``: no JSON object body to check)."""
    hit = getattr(route, "_strict_declared", None)
    if hit is None:
        query_fields: list[Any] = []
        body_fields: list[Any] = []
        stack = [route.dependant]
        while stack:  # the endpoint and its dependencies, recursively
            dep = stack.pop()
            query_fields += dep.query_params
            body_fields += dep.body_params
            stack += dep.dependencies
        query = frozenset(f.alias for f in query_fields)
        body: frozenset[str] | None = None
        if len(body_fields) == 1:
            ann = body_fields[0].field_info.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                body = frozenset(
                    f.alias or name for name, f in ann.model_fields.items())
        hit = (query, body)
        route._strict_declared = hit  # kept on the route: computed once per app
    return hit


async def strict_parameters(request: Request) -> None:
    """Answer 422 ``unknown_parameter`` for a query parameter or top-level body field the
    endpoint does not declare (``/v1`` only; see the module docstring)."""
    path = request.url.path
    route = request.scope.get("route")
    if route is None or not path.startswith("/v1") or (request.method, path) in EXEMPT:
        return
    query, body = _declared(route)
    for name in request.query_params:
        if name not in query:
            known = ", ".join(sorted(query)) or "none"
            raise ApiError(422, "unknown_parameter",
                           f"unknown query parameter `{name}` (this endpoint takes: {known})",
                           details={"field": name})
    if body is not None and request.headers.get("content-type", "").startswith("application/json"):
        try:
            data = await request.json()
        except ValueError:
            return  # malformed JSON: FastAPI's own validation answers it
        if isinstance(data, dict):
            for name in data:
                if name not in body:
                    raise ApiError(422, "unknown_parameter",
                                   f"unknown body field `{name}` (this endpoint takes: "
                                   f"{', '.join(sorted(body))})", details={"field": name})
