"""``GET /v1/route`` and ``POST /v1/table``: routes and ETAs over the newest travel times.

``GET /v1/route`` is the hot path. It is an ``async def``: a route on the live weights with an
in-process router (:func:`inline_router`) is computed on the event-loop thread itself (the
CCH search is ~0.1-0.3 ms, cheaper than the two thread hand-overs it replaces, and RoutingKit
holds the GIL while searching anyway), with the loop thread's own query objects
(``app.state.route_queries``, made and closed in the app's lifespan). Anything that may block
(a Ray router replica, a departure far enough ahead to need a profile customization) goes to
the threadpool as before. The answer is encoded once with orjson; ``RouteOut`` still documents
it in the OpenAPI schema (tests check answers against it).
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import ServicesDep, SettingsDep
from api.errors import ApiError
from api.navigation import MAX_ALTERNATIVES, MAX_VIA_POINTS, navigation_options
from api.routes.params import latlon_query, time_query
from api.schemas import RouteOut, TableIn, TableOut

router = APIRouter(prefix="/v1", tags=["routing"])

#: The shape of a ``lat,lon`` parameter, published in the OpenAPI schema so that clients
#: (and the schema fuzzer) can tell a well-formed point. Not enforced by FastAPI:
#: :func:`api.routes.params.latlon_query` checks it, with a message that names the parameter
#: and the range.
LATLON_PATTERN = r"^-?[0-9]{1,3}(\.[0-9]{1,9})?, ?-?[0-9]{1,3}(\.[0-9]{1,9})?$"


def _departure(value: str | None) -> float | None:
    """``depart_at`` in unix s; ``None`` (the live weights) when absent, empty or ``now``."""
    return None if value == "now" else time_query(value, name="depart_at")


def inline_router(services: Any) -> Any:
    """The facade's in-process router when live-weight routes may run on the caller
    (``Services.inline_router``: ``route`` with no departure time is exactly its ``route``);
    ``None`` when routers are replicas elsewhere or the network is still loading."""
    return services.inline_router()


@router.get("/route", response_model=RouteOut)
async def get_route(
    request: Request,
    services: ServicesDep,
    settings: SettingsDep,
    from_: Annotated[str, Query(alias="from", description="origin as `lat,lon`",
                                examples=["55.68176,12.55832"],
                                json_schema_extra={"pattern": LATLON_PATTERN})],
    to: Annotated[str, Query(description="destination as `lat,lon`",
                             examples=["55.67970,12.56335"],
                             json_schema_extra={"pattern": LATLON_PATTERN})],
    depart_at: Annotated[str | None, Query(description="unix seconds or ISO 8601; default now")] = None,
    max_snap_m: Annotated[float | None, Query(gt=0, le=5000)] = None,
    steps: Annotated[bool, Query(description="add `legs` with turn-by-turn steps")] = False,
    via: Annotated[str | None, Query(description=f"up to {MAX_VIA_POINTS} points between "
                                 "`from` and `to`, as `lat,lon;lat,lon`: one leg each")] = None,
    bearing: Annotated[float | None, Query(ge=0, le=360, description="origin's direction of "
                                           "travel, degrees clockwise from north")] = None,
    bearing_range: Annotated[float | None, Query(ge=0, le=180, description="allowed deviation "
                                                 "from `bearing` (degrees, default 45)")] = None,
    alternatives: Annotated[int, Query(ge=0, le=MAX_ALTERNATIVES, description="up to 3 "
                                       "admissible alternative routes")] = 0,
    annotations: Annotated[bool, Query(description="per-edge speed_mps, duration_s, "
                                       "congestion, edge_keys")] = False,
    geometry_format: Annotated[Literal["geojson", "polyline6"], Query(
        description="GeoJSON LineString or Google encoded polyline (precision 6)")] = "geojson",
) -> Response:
    """Fastest route and ETA from ``from`` to ``to``, leaving at ``depart_at``; with
    ``steps=true`` also ``legs: [{steps: [...]}]`` (manoeuvres, names, instructions)."""
    a = latlon_query(from_, name="from")
    b = latlon_query(to, name="to")
    t = _departure(depart_at)
    nav = navigation_options(via=via, bearing=bearing, bearing_range=bearing_range,
                             alternatives=alternatives, annotations=annotations,
                             geometry_format=geometry_format,
                             exclude=request.query_params.get("exclude"))
    if nav:  # via points, headings, alternatives, annotations: graph.navigation, threadpool
        out = await run_in_threadpool(partial(
            services.route, a, b, depart_at_s=t,
            max_snap_m=max_snap_m if max_snap_m is not None else settings.max_snap_m,
            profile_horizon_s=settings.profile_horizon_s, **({"steps": True} if steps else {}),
            **nav))
        return Response(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY),
                        media_type="application/json")
    snap_m = max_snap_m if max_snap_m is not None else settings.max_snap_m
    # Steps cost O(route edges) in Python: built in the threadpool, never on the event loop.
    core = inline_router(services) if t is None and not steps else None
    if steps:
        out = await run_in_threadpool(partial(
            services.route, a, b, depart_at_s=t, max_snap_m=snap_m,
            profile_horizon_s=settings.profile_horizon_s, steps=True))
    elif core is not None:
        out = core.route(a, b, max_snap_m=snap_m, on_caller=True,
                         caller_queries=getattr(request.app.state, "route_queries", None))
    else:
        out = await run_in_threadpool(partial(
            services.route, a, b, depart_at_s=t, max_snap_m=snap_m,
            profile_horizon_s=settings.profile_horizon_s))
    return Response(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json")


@router.post("/table", response_model=TableOut)
def post_table(body: TableIn, services: ServicesDep, settings: SettingsDep) -> dict[str, Any]:
    """Durations (s) from every source to every destination, leaving at ``depart_at``.

    Live weights, or the learned time-of-week profile for a departure beyond the profile
    horizon where one has been learned; ``basis`` says which.
    """
    ns, nd = len(body.sources), len(body.destinations)
    if ns > settings.max_table_sources or nd > settings.max_table_destinations \
            or ns * nd > settings.max_table_cells:
        raise ApiError(
            413, "too_big",
            f"table of {ns} x {nd} is above the limits ({settings.max_table_sources} sources, "
            f"{settings.max_table_destinations} destinations, {settings.max_table_cells} cells)",
            details={"sources": ns, "destinations": nd})
    pts = []
    for name, items in (("sources", body.sources), ("destinations", body.destinations)):
        for i, (lat, lon) in enumerate(items):
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise ApiError(422, "invalid_value",
                               f"`{name}[{i}]` must be [lat, lon] within range; got [{lat}, {lon}]")
        pts.append([(float(a), float(b)) for a, b in items])
    t = _departure(None if body.depart_at is None else str(body.depart_at))
    if t is None:  # the common case: the live weights, as before
        return services.table(pts[0], pts[1], max_snap_m=settings.max_snap_m)
    return services.table(pts[0], pts[1], max_snap_m=settings.max_snap_m, depart_at_s=t,
                          profile_horizon_s=settings.profile_horizon_s)
