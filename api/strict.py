"""Strict parameters: an unknown query parameter or JSON body field on a ``/v1`` endpoint is a
422 ``unknown_parameter`` that names it (issue 11 item 8), so a misspelt option is never
silently ignored (``&alternative=2`` would otherwise answer as if no option had been given).

Query parameters: :class:`StrictQueryMiddleware` compares the names in a request's raw query
string with the ones its endpoint declares, read once from the app's OpenAPI schema: a split
and a set lookup per parameter before any handler runs, so the hot route path pays a few
microseconds (a global FastAPI dependency cost about 70 us per request).
Body fields: the JSON body models forbid extra fields (``extra="forbid"``) and
:func:`api.errors.unknown_body_field` turns pydantic's ``extra_forbidden`` error into the
same answer.
``POST /v1/probes`` is exempt (probe providers send extra fields, which its models ignore),
as are paths outside ``/v1``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_plus

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import send_error

#: ``(method, path)`` pairs that keep accepting unknown fields.
EXEMPT = frozenset({("POST", "/v1/probes")})


def declared_query_names(schema: dict[str, Any]) -> list[tuple[str, re.Pattern[str], frozenset[str]]]:
    """``(method, path pattern, query names)`` of every operation in an OpenAPI schema."""
    out = []
    for path, ops in schema.get("paths", {}).items():
        pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$")
        for method, op in ops.items():
            if not isinstance(op, dict):
                continue
            names = frozenset(p["name"] for p in op.get("parameters", ())
                              if p.get("in") == "query")
            out.append((method.upper(), pattern, names))
    return out


class StrictQueryMiddleware:
    """Answer 422 ``unknown_parameter`` for an undeclared query parameter on ``/v1``.

    The declared names come from the app's OpenAPI schema (``schema()``), read once.
    """

    def __init__(self, app: ASGIApp, *, schema: Any) -> None:
        self.app, self._schema = app, schema
        self._ops: list[tuple[str, re.Pattern[str], frozenset[str]]] | None = None
        self._by_path: dict[tuple[str, str], frozenset[str] | None] = {}

    def _declared(self, scope: Scope) -> frozenset[str] | None:
        key = (scope["method"], scope["path"])
        if key in self._by_path:
            return self._by_path[key]
        if self._ops is None:
            self._ops = declared_query_names(self._schema())
        found, static = None, True
        for method, pattern, names in self._ops:
            if method == key[0] and pattern.match(key[1]):
                found, static = names, "[^/]+" not in pattern.pattern
                break
        if static and len(self._by_path) < 4096:
            self._by_path[key] = found  # static paths only: ids in a path are unbounded
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["path"].startswith("/v1")
                and scope["query_string"] and (scope["method"], scope["path"]) not in EXEMPT):
            declared = self._declared(scope)
            if declared is not None:
                for part in scope["query_string"].split(b"&"):
                    name = unquote_plus(part.split(b"=", 1)[0].decode("latin-1"))
                    if name and name not in declared:
                        known = ", ".join(sorted(declared)) or "none"
                        await send_error(send, 422, "unknown_parameter",
                                         f"unknown query parameter `{name}` (this endpoint "
                                         f"takes: {known})", {"field": name}, {})
                        return
        await self.app(scope, receive, send)
