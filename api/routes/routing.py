"""``GET``/``POST /v1/route`` and ``POST /v1/table``: routes and ETAs over the newest travel times.

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
from api.schemas import PointIn, RouteIn, RouteOut, TableIn, TableOut
from graph.avoid import (
    AvoidGeometryError,
    PointInAvoidError,
    parse_avoid,
    parse_exclude,
    points_in_area,
)

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
    exclude: Annotated[str | None, Query(
        description="tag classes the route may not use, comma-separated: motorway, toll, "
                    "ferry")] = None,
) -> Response:
    """Fastest route and ETA from ``from`` to ``to``, leaving at ``depart_at``; with
    ``steps=true`` also ``legs: [{steps: [...]}]`` (manoeuvres, names, instructions); with
    ``exclude`` it uses no road of those classes (``POST /v1/route`` also avoids areas)."""
    a = latlon_query(from_, name="from")
    b = latlon_query(to, name="to")
    t = _departure(depart_at)
    nav = navigation_options(via=via, bearing=bearing, bearing_range=bearing_range,
                             alternatives=alternatives, annotations=annotations,
                             geometry_format=geometry_format)
    classes = exclude_query(exclude)
    snap_m = max_snap_m if max_snap_m is not None else settings.max_snap_m
    if nav:  # via points, headings, alternatives, annotations: graph.navigation, threadpool
        out = await run_in_threadpool(partial(
            _route, services, a, b, depart_at_s=t, max_snap_m=snap_m,
            profile_horizon_s=settings.profile_horizon_s, steps=steps, exclude=classes, **nav))
        return Response(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY),
                        media_type="application/json")
    # Steps cost O(route edges) in Python, avoids a customization: in the threadpool, never
    # on the event loop.
    core = inline_router(services) if t is None and not steps and not classes else None
    if steps or classes:
        out = await run_in_threadpool(partial(
            _route, services, a, b, depart_at_s=t, max_snap_m=snap_m,
            profile_horizon_s=settings.profile_horizon_s, steps=steps, exclude=classes))
    elif core is not None:
        out = core.route(a, b, max_snap_m=snap_m, on_caller=True,
                         caller_queries=getattr(request.app.state, "route_queries", None))
    else:
        out = await run_in_threadpool(partial(
            services.route, a, b, depart_at_s=t, max_snap_m=snap_m,
            profile_horizon_s=settings.profile_horizon_s))
    return Response(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json")


@router.post("/route", response_model=RouteOut)
def post_route(body: RouteIn, services: ServicesDep, settings: SettingsDep) -> Response:
    """The route of ``GET /v1/route`` with its parameters as JSON fields (``via`` also as a
    list of points), plus ``avoid``: a GeoJSON Polygon or MultiPolygon the route never
    enters (no road that meets it is used). ``avoid`` and ``exclude`` combine with via
    points (each must lie outside the area), headings, alternatives and annotations.

    404 ``no_route`` when every route enters it; 422 ``point_in_avoid`` when ``from`` or
    ``to`` lies in it; 422 ``invalid_value`` naming the field for a polygon that does not
    parse, is not closed or is not valid. Costs a partial re-customization of a pooled
    metric (:mod:`graph.avoid`), a few ms for a polygon of about 1 km^2.
    """
    a = point_value(body.from_, name="from")
    b = point_value(body.to, name="to")
    t = _departure(None if body.depart_at is None else str(body.depart_at))
    classes = exclude_query(body.exclude)
    avoid = None
    if body.avoid is not None:
        try:
            area = parse_avoid(body.avoid)
        except AvoidGeometryError as exc:
            raise ApiError(422, "invalid_value", str(exc), details={"field": exc.field}) from None
        avoid = body.avoid
    snap_m = body.max_snap_m if body.max_snap_m is not None else settings.max_snap_m
    via = body.via
    if isinstance(via, list):  # points as [lat, lon] or "lat,lon": the GET form
        via = ";".join(f"{p[0]},{p[1]}" if not isinstance(p, str) else p for p in via)
    nav = navigation_options(via=via, bearing=body.bearing, bearing_range=body.bearing_range,
                             alternatives=body.alternatives, annotations=body.annotations,
                             geometry_format=body.geometry_format)
    if avoid is not None:
        named = [("from", a), *((f"via[{i}]", p) for i, p in enumerate(nav.get("via", ()))),
                 ("to", b)]
        inside = points_in_area(area, [p[0] for _, p in named], [p[1] for _, p in named])
        for (name, point), hit in zip(named, inside):
            if hit:
                raise ApiError(422, "point_in_avoid",
                               f"`{name}` (lat={point[0]:.6f}, lon={point[1]:.6f}) lies inside "
                               f"the avoided area", details={"field": name})
    out = _route(services, a, b, depart_at_s=t, max_snap_m=snap_m,
                 profile_horizon_s=settings.profile_horizon_s, steps=body.steps,
                 exclude=classes, avoid=avoid, **nav)
    return Response(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json")


def _route(services: Any, a: tuple[float, float], b: tuple[float, float], *,
           steps: bool = False, exclude: tuple[str, ...] = (),
           avoid: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """``services.route`` with only the options asked for (a replica of an older build, or a
    test double, need not know the others)."""
    extra: dict[str, Any] = {}
    if steps:
        extra["steps"] = True
    if exclude:
        extra["exclude"] = exclude
    if avoid is not None:
        extra["avoid"] = avoid
    try:
        return services.route(a, b, **kwargs, **extra)
    except PointInAvoidError as exc:  # checked above; a replica may still find it first
        raise ApiError(422, "point_in_avoid", str(exc)) from None


def exclude_query(value: str | list[str] | None) -> tuple[str, ...]:
    """Exclude classes from the ``exclude`` parameter or field; 422 naming an unknown one."""
    try:
        return parse_exclude(value)
    except ValueError as exc:
        raise ApiError(422, "invalid_value", f"`exclude` {exc}") from None


def point_value(value: PointIn, *, name: str) -> tuple[float, float]:
    """A point of a JSON body, ``[lat, lon]`` or ``"lat,lon"``; 422 naming the field."""
    if isinstance(value, str):
        return latlon_query(value, name=name)
    lat, lon = float(value[0]), float(value[1])
    if not (-90.0 <= lat <= 90.0):
        raise ApiError(422, "invalid_value", f"`{name}` latitude must be within [-90, 90]; "
                                             f"got {lat!r}")
    if not (-180.0 <= lon <= 180.0):
        raise ApiError(422, "invalid_value", f"`{name}` longitude must be within [-180, 180]; "
                                             f"got {lon!r}")
    return lat, lon


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
    classes = exclude_query(body.exclude)
    extra = {"exclude": classes} if classes else {}
    if t is None:  # the common case: the live weights, as before
        return services.table(pts[0], pts[1], max_snap_m=settings.max_snap_m, **extra)
    return services.table(pts[0], pts[1], max_snap_m=settings.max_snap_m, depart_at_s=t,
                          profile_horizon_s=settings.profile_horizon_s, **extra)
