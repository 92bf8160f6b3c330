"""Navigation options of ``GET /v1/route`` (issue 11 items 3, 4, 7): parsed and checked
here, answered by the router replica (:mod:`graph.navigation`).

Bad input is a 422 in the usual shape naming the parameter: more than
:data:`graph.navigation.MAX_VIA_POINTS` via points, ``alternatives`` with via points (as in
OSRM, alternatives need exactly two points). ``alternatives`` above 3 and bad bearings are refused by the parameters' own
bounds.
"""

from __future__ import annotations

from typing import Any

from api.errors import ApiError
from api.routes.params import latlon_query
from graph.alternatives import MAX_ALTERNATIVES
from graph.navigation import MAX_VIA_POINTS

__all__ = ["MAX_ALTERNATIVES", "MAX_VIA_POINTS", "navigation_options", "via_points"]


def via_points(value: str | None) -> list[tuple[float, float]]:
    """``via=lat,lon;lat,lon`` as points; 422 naming ``via`` when there are too many or one
    does not parse."""
    if value is None or value == "":
        return []
    items = value.split(";")
    if len(items) > MAX_VIA_POINTS:
        raise ApiError(422, "invalid_value",
                       f"`via` takes at most {MAX_VIA_POINTS} points; got {len(items)}",
                       details={"field": "via", "count": len(items)})
    return [latlon_query(item.strip(), name=f"via[{i}]") for i, item in enumerate(items)]


def navigation_options(
    *, via: str | None, bearing: float | None, bearing_range: float | None,
    alternatives: int, annotations: bool, geometry_format: str,
) -> dict[str, Any]:
    """The options given, as ``Services.route`` keywords (empty: none of them)."""
    out: dict[str, Any] = {}
    points = via_points(via)
    if points:
        out["via"] = points
    if alternatives:
        if points:
            raise ApiError(422, "invalid_value",
                           "`alternatives` cannot be combined with `via`: alternatives are "
                           "computed between two points only", details={"field": "alternatives"})
        out["alternatives"] = int(alternatives)
    if bearing is not None:
        out["bearing"] = float(bearing)
    if bearing_range is not None:
        if bearing is None:
            raise ApiError(422, "invalid_value", "`bearing_range` needs `bearing`",
                           details={"field": "bearing_range"})
        out["bearing_range"] = float(bearing_range)
    if annotations:
        out["annotations"] = True
    if geometry_format != "geojson":
        out["geometry_format"] = geometry_format
    return out
