"""Drive an ASGI app directly, byte by byte: what a real server hands it, with the body's
consumption recorded (TestClient reads a streamed body in full before the app sees it)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio


@dataclass
class AsgiResult:
    """What the app answered, and how many body bytes it pulled from the client."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    consumed_bytes: int = 0
    chunks_pulled: int = 0

    def json(self) -> Any:
        import json

        return json.loads(self.body)


def asgi_request(app: Any, method: str, path: str, *, headers: dict[str, str] | None = None,
                 chunks: Iterable[bytes] = (), delay_s: float = 0.0) -> AsgiResult:
    """Send one HTTP request to ``app``; the body is ``chunks``, pulled lazily, each after
    ``delay_s`` seconds (a slow client)."""
    result = AsgiResult()
    it = iter(chunks)
    done = False
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": raw_headers,
             "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}

    async def receive() -> dict[str, Any]:
        nonlocal done
        if done:
            await anyio.sleep(3600)
        if delay_s:
            await anyio.sleep(delay_s)
        chunk = next(it, None)
        if chunk is None:
            done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        result.consumed_bytes += len(chunk)
        result.chunks_pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            result.status = message["status"]
            result.headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            result.body += message.get("body", b"")

    async def main() -> None:
        await app(scope, receive, send)

    anyio.run(main)
    return result
