"""Parsing of OSRM v5 request URLs: ``/{service}/v1/{profile}/{coordinates}[.json]?options``.

Every option OSRM's ``docs/http.md`` documents for ``route``, ``table``, ``nearest`` and
``match`` is recognised; a value OSRM would reject is ``InvalidValue``/``InvalidOptions``, an
unknown option ``InvalidQuery``, and a documented one this server does not implement (see
:data:`NOT_IMPLEMENTED`) ``NotImplemented``. Any profile name means the car profile.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from api.osrm.encoding import GEOMETRIES, OVERVIEWS, decode_coordinates_polyline

__all__ = ["GENERAL", "OsrmError", "Request", "parse_request"]

#: Options of every service (docs/http.md "General options").
GENERAL = ("bearings", "radiuses", "generate_hints", "hints", "approaches", "exclude",
           "snapping", "skip_waypoints")
#: Options of each service, beside the general ones.
SERVICE_OPTIONS = {
    "route": ("alternatives", "steps", "annotations", "geometries", "overview",
              "continue_straight", "waypoints"),
    "table": ("sources", "destinations", "annotations", "fallback_speed",
              "fallback_coordinate", "scale_factor"),
    "nearest": ("number",),
    "match": ("steps", "geometries", "annotations", "overview", "timestamps", "radiuses",
              "gaps", "tidy", "waypoints"),
}
#: Most coordinates per request (OSRM's ``max-viaroute-size`` default is 500; our via
#: routes take at most 25 via points, so 27 coordinates).
MAX_ROUTE_COORDINATES = 27
MAX_TABLE_COORDINATES = 100
MAX_MATCH_COORDINATES = 10_000
MAX_NEAREST_NUMBER = 100
MAX_ALTERNATIVES = 3
_ANNOTATIONS = ("duration", "distance", "speed", "weight", "nodes", "datasources")
_NUM = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_COORD = re.compile(rf"^\s*({_NUM})\s*,\s*({_NUM})\s*$")


class OsrmError(Exception):
    """An OSRM error answer: ``{"code": code, "message": message}`` with an HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass
class Request:
    """A parsed request: the service, the points as ``(lat, lon)`` and the options."""

    service: str
    points: list[tuple[float, float]]
    options: dict[str, Any] = field(default_factory=dict)


def parse_request(service: str, coordinates: str, query: list[tuple[str, str]]) -> Request:
    """Parse the coordinates segment and the query string of one request."""
    coordinates, fmt = _strip_format(coordinates)
    if fmt not in ("", "json"):
        raise OsrmError("NotImplemented", f"output format {fmt!r} is not supported; use json")
    points = _coordinates(coordinates)
    raw: dict[str, str] = {}
    allowed = set(GENERAL) | set(SERVICE_OPTIONS[service])
    for name, value in query:
        if name not in allowed:
            raise OsrmError("InvalidQuery", f"Query string malformed close to `{name}`: "
                            f"{service} takes no option {name!r}")
        if name in raw:
            raise OsrmError("InvalidQuery", f"option {name!r} given twice")
        raw[name] = value
    opts = _general(raw, len(points))
    opts.update(_SERVICE_PARSERS[service](raw, len(points)))
    return Request(service, points, opts)


def _strip_format(coordinates: str) -> tuple[str, str]:
    m = re.match(r"^(.*?)\.(json|flatbuffers)$", coordinates)
    return (m.group(1), m.group(2)) if m else (coordinates, "")


def _coordinates(text: str) -> list[tuple[float, float]]:
    m = re.match(r"^polyline(6?)\((.*)\)$", text)
    if m:
        try:
            pts = decode_coordinates_polyline(m.group(2), 6 if m.group(1) else 5)
        except ValueError as err:
            raise OsrmError("InvalidUrl", f"URL string malformed: {err}") from err
    else:
        pts = []
        for i, item in enumerate(text.split(";")):
            c = _COORD.match(item)
            if c is None:
                raise OsrmError("InvalidUrl", f"URL string malformed close to coordinate {i}: "
                                f"{item!r} is not `lon,lat`")
            pts.append((float(c.group(2)), float(c.group(1))))
    if not pts:
        raise OsrmError("InvalidUrl", "URL string malformed: no coordinates")
    for i, (lat, lon) in enumerate(pts):
        if not (math.isfinite(lat) and math.isfinite(lon)
                and -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            raise OsrmError("InvalidValue", f"Invalid coordinate value at index {i}: "
                            f"lon {lon!r} must be in [-180, 180] and lat {lat!r} in [-90, 90]")
    return pts


def _bool(raw: dict[str, str], name: str, default: bool) -> bool:
    v = raw.get(name)
    if v is None:
        return default
    if v not in ("true", "false"):
        raise OsrmError("InvalidValue", f"`{name}` must be true or false; got {v!r}")
    return v == "true"


def _choice(raw: dict[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    v = raw.get(name, default)
    if v not in choices:
        raise OsrmError("InvalidValue", f"`{name}` must be one of {', '.join(choices)}; got {v!r}")
    return v


def _per_coordinate(raw: dict[str, str], name: str, n: int) -> list[str] | None:
    v = raw.get(name)
    if v is None:
        return None
    items = v.split(";")
    if len(items) != n:
        raise OsrmError("InvalidOptions", f"`{name}` has {len(items)} entries; there are {n} "
                        "coordinates")
    return items


def _indices(raw: dict[str, str], name: str, n: int) -> list[int] | None:
    v = raw.get(name)
    if v is None or v == "all":
        return None
    try:
        idx = [int(x) for x in v.split(";")]
    except ValueError as err:
        raise OsrmError("InvalidValue", f"`{name}` must be `all` or indices joined by `;`; "
                        f"got {v!r}") from err
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise OsrmError("InvalidOptions", f"`{name}` index {bad[0]} is out of range for "
                        f"{n} coordinates")
    return idx


def _general(raw: dict[str, str], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    radiuses = _per_coordinate(raw, "radiuses", n)
    if radiuses is not None:
        vals = []
        for r in radiuses:
            if r in ("", "unlimited"):
                vals.append(math.inf if r == "unlimited" else None)
                continue
            try:
                x = float(r)
            except ValueError as err:
                raise OsrmError("InvalidValue", f"`radiuses` entries must be numbers, empty or "
                                f"`unlimited`; got {r!r}") from err
            if not (math.isfinite(x) and x >= 0):
                raise OsrmError("InvalidValue", f"`radiuses` entries must be >= 0; got {r!r}")
            vals.append(x)
        out["radiuses"] = vals
    bearings = _per_coordinate(raw, "bearings", n)
    if bearings is not None:
        parsed: list[tuple[float, float] | None] = []
        for b in bearings:
            if b == "":
                parsed.append(None)
                continue
            m = re.fullmatch(r"(\d+),(\d+)", b)
            if not m or int(m.group(1)) > 360 or int(m.group(2)) > 180:
                raise OsrmError("InvalidValue", f"`bearings` entries must be `value,range` "
                                f"with value 0-360 and range 0-180; got {b!r}")
            parsed.append((float(m.group(1)), float(m.group(2))))
        if any(p is not None for p in parsed[1:]):
            raise OsrmError("NotImplemented", "`bearings` is supported on the first "
                            "coordinate only")
        out["bearing"] = parsed[0]
    out["generate_hints"] = _bool(raw, "generate_hints", True)
    hints = _per_coordinate(raw, "hints", n)  # accepted; a hint only speeds up OSRM's snapping
    out["hints"] = hints
    approaches = _per_coordinate(raw, "approaches", n)
    if approaches is not None:
        for a in approaches:
            if a not in ("", "unrestricted", "curb", "opposite"):
                raise OsrmError("InvalidValue", f"`approaches` entries must be curb, opposite "
                                f"or unrestricted; got {a!r}")
            if a in ("curb", "opposite"):
                raise OsrmError("NotImplemented", f"`approaches={a}` is not supported")
    exclude = raw.get("exclude")
    if exclude is not None:
        classes = [c for c in exclude.split(",") if c]
        bad = [c for c in classes if c not in ("motorway", "toll", "ferry")]
        if bad:
            raise OsrmError("InvalidValue", f"`exclude` class {bad[0]!r} is not one of "
                            "motorway, toll, ferry")
        out["exclude"] = tuple(classes)
    out["snapping"] = _choice(raw, "snapping", ("default", "any"), "default")
    out["skip_waypoints"] = _bool(raw, "skip_waypoints", False)
    return out


def _annotations(raw: dict[str, str], allowed: tuple[str, ...],
                 default: tuple[str, ...] = ()) -> tuple[str, ...]:
    v = raw.get("annotations")
    if v is None or v == "false":
        return default
    if v == "true":
        return allowed
    names = tuple(v.split(","))
    bad = [a for a in names if a not in _ANNOTATIONS]
    if bad:
        raise OsrmError("InvalidValue", f"`annotations` entry {bad[0]!r} is not one of "
                        f"{', '.join(_ANNOTATIONS)}")
    unsupported = [a for a in names if a not in allowed]
    if unsupported:
        raise OsrmError("NotImplemented", f"`annotations={unsupported[0]}` is not supported "
                        f"(supported: {', '.join(allowed)})")
    return names


def _route(raw: dict[str, str], n: int) -> dict[str, Any]:
    if n < 2:
        raise OsrmError("InvalidOptions", "route needs at least 2 coordinates")
    if n > MAX_ROUTE_COORDINATES:
        raise OsrmError("TooBig", f"route takes at most {MAX_ROUTE_COORDINATES} coordinates; "
                        f"got {n}")
    alt = raw.get("alternatives", "false")
    if alt in ("true", "false"):
        n_alt = 1 if alt == "true" else 0
    elif alt.isdigit():
        n_alt = int(alt)
        if n_alt > MAX_ALTERNATIVES:
            raise OsrmError("TooBig", f"`alternatives` is at most {MAX_ALTERNATIVES}; got {n_alt}")
    else:
        raise OsrmError("InvalidValue", f"`alternatives` must be true, false or a number; "
                        f"got {alt!r}")
    cs = _choice(raw, "continue_straight", ("default", "true", "false"), "default")
    if cs == "true" and n > 2:
        raise OsrmError("NotImplemented", "`continue_straight=true` at via points is not "
                        "supported (legs may turn back at a via point)")
    waypoints = _indices(raw, "waypoints", n)
    if waypoints is not None and waypoints != list(range(n)):
        raise OsrmError("NotImplemented", "`waypoints` other than every coordinate is not "
                        "supported")
    return {"alternatives": n_alt, "steps": _bool(raw, "steps", False),
            "annotations": _annotations(raw, ("duration", "distance", "speed", "weight")),
            "geometries": _choice(raw, "geometries", GEOMETRIES, "polyline"),
            "overview": _choice(raw, "overview", OVERVIEWS, "simplified")}


def _table(raw: dict[str, str], n: int) -> dict[str, Any]:
    if n > MAX_TABLE_COORDINATES:
        raise OsrmError("TooBig", f"table takes at most {MAX_TABLE_COORDINATES} coordinates; "
                        f"got {n}")
    for name in ("fallback_speed", "fallback_coordinate"):
        if name in raw:
            raise OsrmError("NotImplemented", f"`{name}` is not supported (unreachable cells "
                            "are null)")
    scale = raw.get("scale_factor", "1")
    try:
        scale_f = float(scale)
    except ValueError as err:
        raise OsrmError("InvalidValue", f"`scale_factor` must be a number; got {scale!r}") from err
    if not (math.isfinite(scale_f) and scale_f > 0):
        raise OsrmError("InvalidValue", f"`scale_factor` must be > 0; got {scale!r}")
    ann = raw.get("annotations", "duration")
    names = tuple(ann.split(","))
    if not names or any(a not in ("duration", "distance") for a in names):
        raise OsrmError("InvalidValue", f"table `annotations` takes duration and/or distance; "
                        f"got {ann!r}")
    src = _indices(raw, "sources", n)
    dst = _indices(raw, "destinations", n)
    return {"sources": list(range(n)) if src is None else src,
            "destinations": list(range(n)) if dst is None else dst,
            "annotations": names, "scale_factor": scale_f}


def _nearest(raw: dict[str, str], n: int) -> dict[str, Any]:
    if n != 1:
        raise OsrmError("InvalidOptions", f"nearest takes exactly 1 coordinate; got {n}")
    v = raw.get("number", "1")
    if not v.isdigit() or int(v) < 1:
        raise OsrmError("InvalidValue", f"`number` must be an integer >= 1; got {v!r}")
    if int(v) > MAX_NEAREST_NUMBER:
        raise OsrmError("TooBig", f"`number` is at most {MAX_NEAREST_NUMBER}; got {v}")
    return {"number": int(v)}


def _match(raw: dict[str, str], n: int) -> dict[str, Any]:
    if n < 2:
        raise OsrmError("InvalidOptions", "match needs at least 2 coordinates")
    if n > MAX_MATCH_COORDINATES:
        raise OsrmError("TooBig", f"match takes at most {MAX_MATCH_COORDINATES} coordinates; "
                        f"got {n}")
    ts = raw.get("timestamps")
    times = None
    if ts is not None:
        items = ts.split(";")
        if len(items) != n:
            raise OsrmError("InvalidOptions", f"`timestamps` has {len(items)} entries; there "
                            f"are {n} coordinates")
        try:
            times = [float(x) for x in items]
        except ValueError as err:
            raise OsrmError("InvalidValue", f"`timestamps` must be numbers; got {ts!r}") from err
        for i in range(1, n):
            if not times[i] > times[i - 1]:
                raise OsrmError("InvalidValue", f"`timestamps` must increase: entry {i} "
                                f"({items[i]}) is not after entry {i - 1} ({items[i - 1]})")
    if _bool(raw, "steps", False):
        raise OsrmError("NotImplemented", "`steps=true` is not supported by match")
    if _choice(raw, "gaps", ("split", "ignore"), "split") == "ignore":
        raise OsrmError("NotImplemented", "`gaps=ignore` is not supported (traces split at "
                        "gaps above 60 s)")
    if _bool(raw, "tidy", False):
        raise OsrmError("NotImplemented", "`tidy=true` is not supported")
    waypoints = _indices(raw, "waypoints", n)
    if waypoints is not None and waypoints != list(range(n)):
        raise OsrmError("NotImplemented", "`waypoints` other than every coordinate is not "
                        "supported")
    return {"timestamps": times,
            "annotations": _annotations(raw, ()),
            "geometries": _choice(raw, "geometries", GEOMETRIES, "polyline"),
            "overview": _choice(raw, "overview", OVERVIEWS, "simplified")}


_SERVICE_PARSERS = {"route": _route, "table": _table, "nearest": _nearest, "match": _match}
