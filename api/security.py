"""API keys with roles, checked by an ASGI middleware before any handler reads the body.

Roles are independent: ``reader`` (GET endpoints and ``POST /v1/table`` when reads are
protected), ``probe-writer`` (``POST /v1/probes``) and ``network-admin`` (``PUT
/v1/network``). A key holds several roles by being listed once per role
(``k1:probe-writer,k1:reader``); no role implies another, so a key can do exactly what its
lines say.

Configuration is ``TRAFFIC_API_KEYS=key:role,key:role`` or a file with one ``key:role`` per
line (``#`` starts a comment), read once at the entry point and passed in as a
:class:`KeyRing`. Keys are kept only as SHA-256 digests and compared in constant time against
every configured key (no early exit), and never appear in logs, errors or metrics.

The check is a middleware keyed by method and path rather than a FastAPI dependency because
FastAPI parses pydantic body parameters before it runs dependencies: a middleware answers
401/403 before one byte of the body has been received.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import send_error

logger = logging.getLogger(__name__)

ROLES = ("reader", "probe-writer", "network-admin", "operator")

#: The role each write endpoint needs, by ``(method, path)``; a tuple: any one of them.
WRITE_ROLES: dict[tuple[str, str], str | tuple[str, ...]] = {
    ("POST", "/v1/probes"): "probe-writer",
    ("PUT", "/v1/network"): "network-admin",
    ("POST", "/v1/closures"): ("operator", "network-admin"),
    ("POST", "/v1/speeds"): "probe-writer",
}
#: The same for paths under a prefix (``DELETE /v1/closures/{id}``).
WRITE_PREFIX_ROLES: dict[tuple[str, str], str | tuple[str, ...]] = {
    ("DELETE", "/v1/closures/"): ("operator", "network-admin"),
}

#: Paths that stay open even with ``protect_reads`` (probes and the API description).
ALWAYS_OPEN = frozenset({"/healthz", "/readyz", "/docs", "/redoc", "/openapi.json",
                         "/docs/oauth2-redirect"})

#: Scope key under which the middleware leaves the caller's key id (``key-3``) or ``None``.
PRINCIPAL_SCOPE_KEY = "traffic.principal"


class ApiKeyConfigError(ValueError):
    """The API key configuration is malformed (the message names the source and line)."""


@dataclass(frozen=True, slots=True)
class KeyRing:
    """Configured API keys as SHA-256 digests, each with its set of roles.

    Attributes
    ----------
    digests
        SHA-256 of each distinct key, in configuration order.
    roles
        The roles of the key at the same position.
    """

    digests: tuple[bytes, ...] = ()
    roles: tuple[frozenset[str], ...] = ()

    @property
    def open(self) -> bool:
        """No key configured: every endpoint is open (development)."""
        return not self.digests

    def identify(self, key: str) -> int | None:
        """Position of ``key`` in the ring, or ``None``; constant time in the key's value.

        Every configured digest is compared (``hmac.compare_digest`` over equal-length
        digests), so neither timing nor length tells which key, if any, matched.
        """
        presented = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found = -1
        for i, digest in enumerate(self.digests):
            hit = hmac.compare_digest(presented, digest)
            found = i if hit else found
        return None if found < 0 else found


def parse_api_keys(text: str, *, source: str, separator: str = "\n") -> KeyRing:
    """Parse ``key:role`` entries (one per ``separator``; ``#`` comments, blanks skipped).

    Raises
    ------
    ApiKeyConfigError
        An entry without ``:``, an empty key, or an unknown role; the message names
        ``source`` and the entry number but never the key.
    """
    by_key: dict[str, set[str]] = {}
    for n, raw in enumerate(text.split(separator), start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        key, sep, role = entry.rpartition(":")
        key, role = key.strip(), role.strip()
        if not sep or not key:
            raise ApiKeyConfigError(f"{source}: entry {n} must be `key:role`")
        if role not in ROLES:
            raise ApiKeyConfigError(
                f"{source}: entry {n} has unknown role {role!r}; expected one of {list(ROLES)}")
        by_key.setdefault(key, set()).add(role)
    return KeyRing(
        digests=tuple(hashlib.sha256(k.encode("utf-8", "surrogatepass")).digest() for k in by_key),
        roles=tuple(frozenset(r) for r in by_key.values()),
    )


def load_api_keys(*, env_value: str | None = None, file: str | Path | None = None) -> KeyRing:
    """The key ring from ``TRAFFIC_API_KEYS`` (comma-separated) and/or a key file, merged."""
    rings = []
    if env_value:
        rings.append(parse_api_keys(env_value, source="TRAFFIC_API_KEYS", separator=","))
    if file is not None:
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ApiKeyConfigError(f"--api-keys {path}: cannot read: {err.strerror}") from err
        rings.append(parse_api_keys(text, source=f"--api-keys {path}"))
    merged: dict[bytes, frozenset[str]] = {}
    for ring in rings:
        for digest, roles in zip(ring.digests, ring.roles):
            merged[digest] = merged.get(digest, frozenset()) | roles
    return KeyRing(digests=tuple(merged), roles=tuple(merged.values()))


def required_role(method: str, path: str, *,
                  protect_reads: bool) -> str | tuple[str, ...] | None:
    """The role a request needs (a tuple: any one of them), or ``None`` when it is open."""
    path = path.rstrip("/") or "/"
    role = WRITE_ROLES.get((method.upper(), path))
    if role is not None:
        return role
    for (m, prefix), prefix_role in WRITE_PREFIX_ROLES.items():
        if m == method.upper() and path.startswith(prefix):
            return prefix_role
    if protect_reads and path not in ALWAYS_OPEN:
        return "reader"
    return None


def bearer_token(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, or ``None``."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer" and token and " " not in token:
                return token
            return None
    return None


def warn_if_open(keys: KeyRing) -> None:
    """Log the warning an open server gives at start."""
    if keys.open:
        logger.warning("no API keys configured: every endpoint is open to anyone who can "
                       "reach the server (development only; set TRAFFIC_API_KEYS or --api-keys)")


class AuthMiddleware:
    """Answer 401/403 from the headers alone, before the app reads the request body.

    401 (with ``WWW-Authenticate: Bearer``): no key, a malformed header, or an unknown key.
    403: a known key without the endpoint's role. Otherwise the request goes on with the
    key's id (``key-N``, never the key) under ``scope[PRINCIPAL_SCOPE_KEY]``.
    """

    def __init__(self, app: ASGIApp, *, keys: KeyRing, protect_reads: bool = False) -> None:
        self.app, self.keys, self.protect_reads = app, keys, protect_reads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        index = self.keys.identify(token) if token is not None else None
        scope[PRINCIPAL_SCOPE_KEY] = None if index is None else f"key-{index}"
        role = None if self.keys.open else required_role(
            scope["method"], scope["path"], protect_reads=self.protect_reads)
        if role is not None:
            roles = (role,) if isinstance(role, str) else role
            named = " or ".join(f"`{r}`" for r in roles)
            if index is None:
                why = ("missing or malformed `Authorization: Bearer` header" if token is None
                       else "unknown API key")
                await send_error(send, 401, "unauthorized", f"{why}; this endpoint needs a key "
                            f"with role {named}", None, {"WWW-Authenticate": "Bearer"})
                return
            if not set(roles) & self.keys.roles[index]:
                await send_error(send, 403, "forbidden",
                            f"this API key lacks role {named}, which this endpoint needs", None,
                            {})
                return
        await self.app(scope, receive, send)
