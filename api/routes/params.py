"""Query-parameter readers for the routes: the :mod:`api.params` parsers, with a bad value
answered as 422 ``invalid_value`` whose message names the parameter."""

from __future__ import annotations

from api.errors import ApiError
from api.params import ParameterError, parse_bbox, parse_latlon, parse_time

#: Latest time a snapshot partition name can hold: 9999-12-31T23:59:59Z (unix s).
MAX_T_S = 253402300799.0


def latlon_query(value: str, *, name: str) -> tuple[float, float]:
    """``lat,lon`` (degrees) from the parameter ``name``; 422 when it does not parse."""
    try:
        return parse_latlon(value)
    except ParameterError as exc:
        raise ApiError(422, "invalid_value", f"`{name}` {exc}") from None


def time_query(value: str | None, *, name: str, bounded: bool = False) -> float | None:
    """Unix seconds or ISO 8601 from the parameter ``name``; ``None`` when absent or empty.

    ``bounded`` also requires 1970-01-01 <= t <= 9999-12-31 UTC (times a snapshot can have).
    """
    if value is None or value == "":
        return None
    try:
        t_s = parse_time(value)
    except ParameterError as exc:
        raise ApiError(422, "invalid_value", f"`{name}`: {exc}") from None
    if bounded and not 0.0 <= t_s <= MAX_T_S:
        raise ApiError(422, "invalid_value",
                       f"`{name}` must be between 1970-01-01 and 9999-12-31 UTC; got {value!r}")
    return t_s


def bbox_query(value: str, *, name: str = "bbox") -> tuple[float, float, float, float]:
    """``minlon,minlat,maxlon,maxlat`` (degrees) from the parameter ``name``; 422 when bad."""
    try:
        return parse_bbox(value)
    except ParameterError as exc:
        raise ApiError(422, "invalid_value", f"`{name}`: {exc}") from None
