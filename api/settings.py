"""API settings: one frozen dataclass built at the entry point and passed to ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


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
