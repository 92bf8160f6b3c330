"""Request limits as one pure ASGI middleware: body size (413), body-read time (408), rate (429).

* Body size: a ``Content-Length`` above the endpoint's limit is answered 413 before the body
  is read; a body without one (chunked) is counted as it arrives and cut off with 413 at the
  limit. Limits are per ``(method, path)`` with a default for everything else.
* Slow clients: the whole body must arrive within ``body_timeout_s`` of the request's first
  read, else 408 (a trickle of bytes does not hold a worker forever). Idle keep-alive
  connections are uvicorn's ``timeout_keep_alive``.
* Rate: a token bucket per API key (``scope["traffic.principal"]`` from
  :class:`api.security.AuthMiddleware`) or, without one, per client address; 429 with
  ``Retry-After`` when empty. Off unless ``rate_per_s`` is set.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import send_error
from api.security import PRINCIPAL_SCOPE_KEY

MIB = 1024 * 1024

#: Paths the rate limiter never counts (probes of liveness and scraping).
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


@dataclass(frozen=True, slots=True)
class Limits:
    """What :class:`LimitsMiddleware` enforces.

    Attributes
    ----------
    max_body_bytes
        Default largest request body (bytes).
    body_limits
        Per ``(METHOD, path)`` body limits (bytes) that replace the default.
    body_timeout_s
        Wall seconds the whole body may take to arrive (408 after).
    rate_per_s
        Sustained requests per second per key or client address; ``None``: no rate limit.
    rate_burst
        Bucket size: requests allowed at once after an idle period.
    max_buckets
        Callers tracked at once (least recently seen dropped first), bounding memory.
    """

    max_body_bytes: int = 64 * MIB
    body_limits: dict[tuple[str, str], int] = field(default_factory=dict)
    body_timeout_s: float = 60.0
    rate_per_s: float | None = None
    rate_burst: int = 20
    max_buckets: int = 100_000

    def body_limit(self, method: str, path: str) -> int:
        """The body limit (bytes) of one endpoint."""
        return self.body_limits.get((method.upper(), path.rstrip("/") or "/"),
                                    self.max_body_bytes)


class BodyTooLarge(HTTPException):
    """A body grew past its limit while being read (413, ``too_big``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body above {limit} bytes")


class BodyTimeout(HTTPException):
    """The body did not arrive within the limit (408)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"request body not received within {timeout_s:g} s")


class TokenBuckets:
    """Token buckets by caller, bounded in number; ``take`` says how long to wait (s) or 0."""

    def __init__(self, *, rate_per_s: float, burst: int, max_buckets: int) -> None:
        self.rate_per_s, self.burst, self.max_buckets = rate_per_s, float(burst), max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, caller: str, now_s: float) -> float:
        """Take one token for ``caller`` at ``now_s``; 0.0 if allowed, else seconds to wait."""
        tokens, last = self._buckets.pop(caller, (self.burst, now_s))
        tokens = min(self.burst, tokens + (now_s - last) * self.rate_per_s)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate_per_s
        self._buckets[caller] = (tokens, now_s)
        if len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)
        return wait


class LimitsMiddleware:
    """Enforce :class:`Limits` on every HTTP request (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, limits: Limits) -> None:
        self.app, self.limits = app, limits
        self.buckets = None if limits.rate_per_s is None else TokenBuckets(
            rate_per_s=limits.rate_per_s, burst=limits.rate_burst,
            max_buckets=limits.max_buckets)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.buckets is not None and scope["path"] not in UNLIMITED_PATHS:
            wait_s = self.buckets.take(_caller(scope), time.monotonic())
            if wait_s > 0:
                await send_error(send, 429, "too_many_requests",
                                 f"rate limit of {self.limits.rate_per_s:g} requests/s exceeded; "
                                 f"retry in {wait_s:.2f} s", {"retry_after_s": round(wait_s, 3)},
                                 {"Retry-After": str(max(1, math.ceil(wait_s)))})
                return
        limit = self.limits.body_limit(scope["method"], scope["path"])
        length = _content_length(scope)
        if length is not None and length > limit:
            await send_error(send, 413, "too_big", f"request body of {length} bytes is above "
                             f"the limit of {limit} bytes", {"max_bytes": limit}, {})
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, self._limited_receive(receive, limit), send_wrapper)
        except (BodyTooLarge, BodyTimeout) as exc:
            # Raised inside a handler that let it through; answer unless already answering.
            if started:
                raise
            code = "too_big" if exc.status_code == 413 else "request_timeout"
            await send_error(send, exc.status_code, code, str(exc.detail), None, {})

    def _limited_receive(self, receive: Receive, limit: int) -> Receive:
        timeout_s = self.limits.body_timeout_s
        received = 0
        deadline: float | None = None
        done = False

        async def limited() -> Message:
            nonlocal received, deadline, done
            if done:
                # The body is in; later reads only wait for a disconnect.
                return await receive()
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout_s
            message: Message | None = None
            with anyio.move_on_after(max(0.0, deadline - now)):
                message = await receive()
            if message is None:
                raise BodyTimeout(timeout_s)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        return limited


def _caller(scope: Scope) -> str:
    principal = scope.get(PRINCIPAL_SCOPE_KEY)
    if principal:
        return principal
    client = scope.get("client")
    return f"addr-{client[0]}" if client else "addr-unknown"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None
