"""API settings: one frozen dataclass built at the entry point and passed to ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from api.limits import MIB, Limits
from api.security import KeyRing


@dataclass(frozen=True, slots=True)
class Settings:
    """Limits and behaviour of the HTTP layer.

    Attributes
    ----------
    clock
        ``"wall"``: live service, probes far in the future are rejected; ``"event"``:
        replay, time advances with the probes.
    max_probes_per_request
        Largest probe batch one ``POST /v1/probes`` may carry.
    max_table_sources, max_table_destinations, max_table_cells
        Size limits of ``POST /v1/table`` (413 above them).
    max_upload_bytes
        Largest network file ``PUT /v1/network`` accepts (413 above it).
    retry_after_s
        What ``Retry-After`` says when ingest queues are full.
    max_snap_m
        Default snapping distance (m) from a query point to the road.
    profile_horizon_s
        A ``depart_at`` more than this many seconds after the newest estimate uses the
        time-of-week profile (where one has been learned) instead of the live estimate.
    api_keys
        Keys and roles (``api.security``); empty: the server is open and warns at start.
    protect_reads
        Reads need a key with role ``reader`` too (writes always need their role).
    max_body_bytes
        Largest request body (413 from ``Content-Length`` before reading, or when a chunked
        body passes it); probes, tables and uploads have their own limits below.
    max_probe_body_bytes, max_table_body_bytes
        Body limits of ``POST /v1/probes`` and ``POST /v1/table``.
    body_timeout_s
        Seconds a request body may take to arrive in full (408 after).
    rate_per_s, rate_burst
        Token bucket per API key (per client address when open); ``None``: no rate limit.
    keep_alive_s
        Seconds an idle keep-alive connection is held (uvicorn ``timeout_keep_alive``). 75 s,
        longer than the 60 s idle timeout load balancers use in front of a backend, and
        longer than any pause of the event loop: uvicorn's 5 s default closed, when a loop
        stalled for 6 s (a router built in the API process during a network swap, RoutingKit
        holding the GIL), the idle connections a client was just sending on (3 failed
        routes in the K=4 swap benchmark).
    """

    clock: Literal["wall", "event"] = "wall"
    max_probes_per_request: int = 10_000
    max_table_sources: int = 100
    max_table_destinations: int = 100
    max_table_cells: int = 2_500
    max_upload_bytes: int = 512 * 1024 * 1024
    retry_after_s: float = 1.0
    max_snap_m: float = 200.0
    profile_horizon_s: float = 900.0
    title: str = "traffic"
    api_keys: KeyRing = KeyRing()
    protect_reads: bool = False
    max_body_bytes: int = 64 * MIB
    max_probe_body_bytes: int = 16 * MIB
    max_table_body_bytes: int = 1 * MIB
    body_timeout_s: float = 60.0
    rate_per_s: float | None = None
    rate_burst: int = 20
    keep_alive_s: float = 75.0

    def limits(self) -> Limits:
        """The request limits these settings ask for."""
        return Limits(
            max_body_bytes=self.max_body_bytes,
            body_limits={("POST", "/v1/probes"): self.max_probe_body_bytes,
                         ("POST", "/v1/table"): self.max_table_body_bytes,
                         ("PUT", "/v1/network"): self.max_upload_bytes},
            body_timeout_s=self.body_timeout_s,
            rate_per_s=self.rate_per_s,
            rate_burst=self.rate_burst,
        )
