"""``GET /v1/isochrone``: the area reachable from a point (or that reaches it) in given times.

A GeoJSON FeatureCollection, one (Multi)Polygon per contour with ``minutes`` and
``area_km2``, on the live travel times (or the time-of-week profile for a departure beyond
the profile horizon), computed by the router (:mod:`graph.isochrone`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from api.deps import ServicesDep, SettingsDep
from api.errors import ApiError
from api.routes.params import latlon_query, time_query
from graph.isochrone import MAX_CONTOURS, check_minutes

router = APIRouter(prefix="/v1", tags=["routing"])


def minutes_query(value: str) -> list[float]:
    """``5,10,15`` (minutes) from the parameter ``minutes``; 422 naming the limit."""
    try:
        return check_minutes([float(v) for v in value.split(",")])
    except ValueError as exc:
        msg = str(exc) if str(exc).startswith("`minutes`") else (
            f"`minutes` must be a comma-separated list of numbers; got {value!r}")
        raise ApiError(422, "invalid_value", msg) from None


@router.get("/isochrone")
async def get_isochrone(
    services: ServicesDep,
    settings: SettingsDep,
    from_: Annotated[str, Query(alias="from", description="origin as `lat,lon`",
                                examples=["55.68176,12.55832"])],
    minutes: Annotated[str, Query(description=f"up to {MAX_CONTOURS} contours in minutes "
                                              "(each at most 120), comma-separated",
                                  examples=["5,10,15"])],
    depart_at: Annotated[str | None, Query(description="unix seconds or ISO 8601; "
                                                       "default now")] = None,
    reverse: Annotated[bool, Query(description="the area from which `from` is reached "
                                               "instead")] = False,
) -> Any:
    """Areas reachable from ``from`` within each of ``minutes`` (``reverse``: reaching it)."""
    origin = latlon_query(from_, name="from")
    mins = minutes_query(minutes)
    t = None if depart_at == "now" else time_query(depart_at, name="depart_at")
    return await run_in_threadpool(
        services.isochrone, origin, mins, reverse=reverse, depart_at_s=t,
        max_snap_m=settings.max_snap_m, profile_horizon_s=settings.profile_horizon_s)
