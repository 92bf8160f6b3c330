"""The car profile for OSM import: which ways a car may use, in which direction, how fast.

Pure functions over a way's tags (``tags.get(key)`` is all they need), so they are tested on
plain dicts and reused by any loader that sees OSM-style tags. :class:`CarProfile` owns the
country speed table and a small cache of parsed ``maxspeed`` strings (one profile per import).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from graph.network import (
    DEFAULT_SPEED_KPH,
    EDGE_FERRY,
    EDGE_ROUNDABOUT,
    EDGE_TOLL,
    ROAD_CLASS_INDEX,
    ROAD_CLASSES,
)

KPH_PER_MPH = 1.609344
KPH_PER_KNOT = 1.852

#: Highway classes a car may use: every named class of the model except ``unknown``.
#: ``service`` includes ``service=parking_aisle`` and ``service=driveway``: real car roads,
#: kept in the (slow) service class. Paths, footways, tracks, construction etc. are not here.
DRIVABLE_HIGHWAYS: frozenset[str] = frozenset(c for c in ROAD_CLASSES if c != "unknown")

#: Access values that shut cars out. ``destination``, ``permissive``, ``customers`` and
#: ``delivery`` stay open: a car may legally drive there, and a route may start or end there.
#: ``psv``/``bus`` mean "public transport only".
CLOSED_ACCESS: frozenset[str] = frozenset(
    {"no", "private", "agricultural", "forestry", "emergency", "psv", "bus", "military"}
)

#: Access keys from the most specific to the most general: the first one present decides.
ACCESS_KEYS: tuple[str, ...] = ("motorcar", "motor_vehicle", "vehicle", "access")

_ONEWAY_FORWARD = frozenset({"yes", "1", "true"})
_ONEWAY_BACKWARD = frozenset({"-1", "reverse"})
_ONEWAY_NO = frozenset({"no", "false", "0"})
# Reversible and alternating roads change direction by time of day or by signal; a network
# with fixed directions cannot route on them correctly, so they are left out (as OSRM does).
_ONEWAY_CLOSED = frozenset({"reversible", "alternating"})
_IMPLIED_ONEWAY_HIGHWAYS = frozenset({"motorway", "motorway_link"})
_IMPLIED_ONEWAY_JUNCTIONS = frozenset({"roundabout", "circular"})

#: Speed (km/h) used for ``maxspeed=none`` (no legal limit): a high but finite cruising speed.
NO_LIMIT_SPEED_KPH = 130.0
#: Speed (km/h) for ``maxspeed=walk`` and ``XX:walk`` (German "Schrittgeschwindigkeit").
WALK_SPEED_KPH = 7.0
#: Parsed numeric limits outside (0, MAX_PLAUSIBLE_KPH] are treated as tagging errors.
MAX_PLAUSIBLE_KPH = 200.0

#: Speed (km/h) of a ferry without a usable ``duration`` tag. OSRM's car profile uses the
#: same 5 km/h: a crossing's time is mostly boarding and waiting, not sailing, and a low
#: speed keeps routes from taking a ferry to save a short drive.
FERRY_DEFAULT_SPEED_KPH = 5.0
#: Speeds computed from a ferry's ``duration`` are clipped to this range (km/h).
FERRY_SPEED_RANGE_KPH = (1.0, 60.0)
_TOLL_VALUES = frozenset({"yes", "true", "1"})
_DURATION_ISO = re.compile(r"^P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?"
                           r"(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


def _mph(v: float) -> float:
    return v * KPH_PER_MPH


_CONTEXTS = ("urban", "rural", "trunk", "motorway")

# Default limits (km/h) behind ``XX:urban``, ``XX:rural``, ``XX:trunk``, ``XX:motorway``, from
# the OSM wiki page "Default speed limits" (legal defaults; where a country has no legal
# motorway limit, its advisory speed).
_COUNTRY_DEFAULTS_KPH: dict[str, tuple[float, float, float, float]] = {
    "DE": (50, 100, 100, 130),  # no legal motorway limit: 130 is the advisory speed
    "DK": (50, 80, 80, 130),
    "LI": (50, 80, 80, 120),  # Liechtenstein has no motorway
    "CH": (50, 80, 100, 120),
    "AT": (50, 100, 100, 130),
    "FI": (50, 80, 100, 120),
    "SE": (50, 70, 90, 110),
    "NO": (50, 80, 80, 90),
    "FR": (50, 80, 110, 130),
    "GB": (_mph(30), _mph(60), _mph(70), _mph(70)),  # national limits are in mph
    "NL": (50, 80, 100, 100),  # 100 on motorways by day since 2020; 130 only where signed
    "BE": (50, 90, 120, 120),
    "IT": (50, 90, 110, 130),
    "ES": (50, 90, 100, 120),
    "PL": (50, 90, 100, 140),
    "CZ": (50, 90, 110, 130),
    "RU": (60, 90, 90, 110),
    "US": (_mph(25), _mph(55), _mph(55), _mph(65)),  # set by states; typical values
}
_COUNTRY_EXTRA_KPH: dict[str, float] = {
    "DE:living_street": WALK_SPEED_KPH,
    "DE:bicycle_road": 30,
    "RU:living_street": 20,
    "GB:nsl_single": _mph(60),
    "GB:nsl_dual": _mph(70),
    "PL:expressway": 120,
    "BE-VLG:urban": 50,
    "BE-VLG:rural": 70,
    "BE-WAL:rural": 90,
    "BE-BRU:urban": 30,
}

#: ``{"DE:urban": 50.0, ...}``: the km/h behind every ``COUNTRY:context`` maxspeed value known.
COUNTRY_SPEEDS_KPH: dict[str, float] = {
    **{
        f"{country}:{context}": float(kph)
        for country, limits in _COUNTRY_DEFAULTS_KPH.items()
        for context, kph in zip(_CONTEXTS, limits, strict=True)
    },
    **{key: float(kph) for key, kph in _COUNTRY_EXTRA_KPH.items()},
}

_NUMBER = re.compile(r"^\s*(\d+(?:[.,]\d+)?)\s*(mph|km/h|kmh|kph|knots)?\s*$")
_ZONE = re.compile(r"^[A-Z]{2}(?:-[A-Z]+)?:ZONE:?(\d+)$")


class TagLookup(Protocol):
    """Anything with ``get(key, default=None)``: a dict, or pyosmium's ``TagList``."""

    def get(self, key: str, default: str | None = None, /) -> str | None: ...


@dataclass(frozen=True, slots=True)
class WayAttributes:
    """What the car profile says about one kept way.

    ``forward``/``backward`` are the directions a car may drive relative to the way's node
    order; at least one is True. Speeds are free-flow km/h per direction. ``flags`` holds
    :data:`graph.network.EDGE_ROUNDABOUT` / ``EDGE_TOLL`` / ``EDGE_FERRY`` bits. A ferry's
    ``duration_s`` (from its ``duration`` tag; ``None`` when absent or unparsable) sets its
    speed once the way's length is known (:func:`ferry_speed_kph`).
    """

    road_class: int
    forward: bool
    backward: bool
    speed_forward_kph: float
    speed_backward_kph: float
    flags: int = 0
    duration_s: float | None = None


class CarProfile:
    """Car-routing rules for OSM ways, with the country speed table used for ``XX:context``.

    Parameters
    ----------
    country_speeds
        Extra or overriding ``{"DE:urban": 50.0, ...}`` entries (km/h), merged over
        :data:`COUNTRY_SPEEDS_KPH`. Keys are matched case-insensitively.
    """

    def __init__(self, *, country_speeds: Mapping[str, float] | None = None) -> None:
        table = {k.upper(): float(v) for k, v in COUNTRY_SPEEDS_KPH.items()}
        for k, v in (country_speeds or {}).items():
            table[str(k).upper()] = float(v)
        self._country = table
        self._speed_cache: dict[tuple[str, str], float] = {}

    def way_attributes(self, tags: TagLookup) -> WayAttributes | None:
        """Return the car attributes of a way, or ``None`` when a car may not use it.

        Ferries (``route=ferry``, without a ``highway`` tag) are kept as OSRM's car profile
        keeps them: unless the access tags shut cars out (:func:`ferry_attributes`).
        """
        highway = tags.get("highway")
        if highway is None and tags.get("route") == "ferry":
            return ferry_attributes(tags)
        if highway not in DRIVABLE_HIGHWAYS or tags.get("area") == "yes":
            return None
        if not is_car_accessible(tags):
            return None
        directions = oneway_directions(highway, tags.get("oneway"), tags.get("junction"))
        if directions is None:
            return None
        general = tags.get("maxspeed")
        fwd = tags.get("maxspeed:forward") or general
        bwd = tags.get("maxspeed:backward") or general
        return WayAttributes(
            road_class=ROAD_CLASS_INDEX[highway],
            forward=directions[0],
            backward=directions[1],
            speed_forward_kph=self.speed_kph(fwd, highway),
            speed_backward_kph=self.speed_kph(bwd, highway),
            flags=way_flags(tags),
        )

    def speed_kph(self, maxspeed: str | None, highway: str) -> float:
        """Free-flow speed (km/h) for a ``maxspeed`` value on a road of class ``highway``.

        Numbers are km/h unless followed by ``mph`` or ``knots``; ``none`` gives
        :data:`NO_LIMIT_SPEED_KPH` on motorways and the class default elsewhere;
        ``XX:context`` values come from the country table; a semicolon list uses its first
        value. Anything unparsable (``signals``, ``variable``, typos, ``0``) falls back to the
        class default in :data:`graph.network.DEFAULT_SPEED_KPH`; this never raises.
        """
        default = DEFAULT_SPEED_KPH.get(highway, DEFAULT_SPEED_KPH["unknown"])
        if not maxspeed:
            return default
        key = (maxspeed, highway)
        cached = self._speed_cache.get(key)
        if cached is None:
            cached = self._parse_speed(maxspeed, highway)
            cached = default if cached is None else cached
            self._speed_cache[key] = cached
        return cached

    def _parse_speed(self, value: str, highway: str) -> float | None:
        value = value.split(";", 1)[0].strip()
        lower = value.lower()
        if lower == "none":
            return NO_LIMIT_SPEED_KPH if highway == "motorway" else None
        if lower == "walk":
            return WALK_SPEED_KPH
        match = _NUMBER.match(lower)
        if match:
            number = float(match.group(1).replace(",", "."))
            unit = match.group(2)
            kph = number * (
                KPH_PER_MPH if unit == "mph" else KPH_PER_KNOT if unit == "knots" else 1.0
            )
            return kph if 0 < kph <= MAX_PLAUSIBLE_KPH else None
        upper = value.upper()
        if upper in self._country:
            return self._country[upper]
        zone = _ZONE.match(upper)
        if zone:
            return float(zone.group(1)) or None
        if upper.endswith(":WALK"):
            return WALK_SPEED_KPH
        return None


def is_car_accessible(tags: TagLookup) -> bool:
    """Whether the access tags let a private car in (the most specific key present decides).

    ``motorcar`` beats ``motor_vehicle`` beats ``vehicle`` beats ``access``, so ``access=no``
    with ``motor_vehicle=yes`` is open. A semicolon list is closed only when every value in it
    is closed.
    """
    for key in ACCESS_KEYS:
        value = tags.get(key)
        if value:
            parts = [p.strip() for p in value.split(";")]
            return not all(p in CLOSED_ACCESS for p in parts)
    return True


def oneway_directions(
    highway: str, oneway: str | None, junction: str | None
) -> tuple[bool, bool] | None:
    """Return ``(forward, backward)`` allowed for a car, or ``None`` when the way is closed.

    Explicit ``oneway`` wins (``yes|1|true`` forward, ``-1|reverse`` backward, ``no|false|0``
    both ways even on a motorway or roundabout); ``reversible``/``alternating`` close the way.
    Without an explicit value, motorways, motorway links and ``junction=roundabout|circular``
    are one-way forward (the implied-oneway rule of OSRM's car profile); anything else is
    two-way. Unrecognised ``oneway`` values count as absent.
    """
    if oneway is not None:
        value = oneway.strip().lower()
        if value in _ONEWAY_FORWARD:
            return (True, False)
        if value in _ONEWAY_BACKWARD:
            return (False, True)
        if value in _ONEWAY_NO:
            return (True, True)
        if value in _ONEWAY_CLOSED:
            return None
    if highway in _IMPLIED_ONEWAY_HIGHWAYS or junction in _IMPLIED_ONEWAY_JUNCTIONS:
        return (True, False)
    return (True, True)


def way_flags(tags: TagLookup) -> int:
    """``EDGE_ROUNDABOUT`` for ``junction=roundabout|circular``, ``EDGE_TOLL`` for
    ``toll=yes`` (or ``toll:motorcar=yes``), ``EDGE_FERRY`` for ``route=ferry``, or'd."""
    flags = 0
    if tags.get("junction") in _IMPLIED_ONEWAY_JUNCTIONS:
        flags |= EDGE_ROUNDABOUT
    toll = tags.get("toll:motorcar") or tags.get("toll")
    if toll is not None and toll.strip().lower() in _TOLL_VALUES:
        flags |= EDGE_TOLL
    if tags.get("route") == "ferry":
        flags |= EDGE_FERRY
    return flags


def ferry_attributes(tags: TagLookup) -> WayAttributes | None:
    """Car attributes of a ``route=ferry`` way, or ``None`` when cars may not board.

    Access as for roads (``motorcar=no``, ``motor_vehicle=no``, ``access=no`` close it); a
    ferry with no ``motorcar``/``motor_vehicle``/``vehicle`` tag but ``foot=yes`` or
    ``bicycle=yes`` is taken for a passenger ferry and left out; an untagged ferry is kept, as
    OSRM keeps it; both directions unless ``oneway`` says otherwise; road class ``unknown`` with the
    ``EDGE_FERRY`` flag; speed :data:`FERRY_DEFAULT_SPEED_KPH` until the loader sets it from
    ``duration`` and the way's length (:func:`ferry_speed_kph`).
    """
    if not is_car_accessible(tags):
        return None
    # No motor-vehicle access tag but open to walkers or cyclists: a passenger ferry.
    if not any(tags.get(k) for k in ACCESS_KEYS[:3]) and (
            tags.get("foot") == "yes" or tags.get("bicycle") == "yes"):
        return None
    directions = oneway_directions("ferry", tags.get("oneway"), None)
    if directions is None:
        return None
    return WayAttributes(
        road_class=ROAD_CLASS_INDEX["unknown"],
        forward=directions[0],
        backward=directions[1],
        speed_forward_kph=FERRY_DEFAULT_SPEED_KPH,
        speed_backward_kph=FERRY_DEFAULT_SPEED_KPH,
        flags=way_flags(tags) | EDGE_FERRY,
        duration_s=parse_duration_s(tags.get("duration")),
    )


def parse_duration_s(value: str | None) -> float | None:
    """Seconds from an OSM ``duration``: ``mm``, ``hh:mm``, ``hh:mm:ss`` or ISO 8601
    (``PT1H30M``); ``None`` when absent, unparsable or not positive."""
    if not value:
        return None
    text = value.strip()
    iso = _DURATION_ISO.match(text.upper())
    if iso and text.upper() not in ("P", "PT"):
        d, h, m, sec = (float(g) if g else 0.0 for g in iso.groups())
        total = ((d * 24 + h) * 60 + m) * 60 + sec
        return total if total > 0 else None
    parts = text.split(":")
    if not 1 <= len(parts) <= 3:
        return None
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        return None
    if any(n < 0 for n in numbers):
        return None
    scale = {1: (60.0,), 2: (3600.0, 60.0), 3: (3600.0, 60.0, 1.0)}[len(parts)]
    total = sum(n * f for n, f in zip(numbers, scale))
    return total if total > 0 else None


def ferry_speed_kph(length_m: float, duration_s: float | None) -> float:
    """A ferry's speed: its length over its ``duration``, clipped to
    :data:`FERRY_SPEED_RANGE_KPH`; :data:`FERRY_DEFAULT_SPEED_KPH` without a duration."""
    if duration_s is None or not duration_s > 0 or not length_m > 0:
        return FERRY_DEFAULT_SPEED_KPH
    lo, hi = FERRY_SPEED_RANGE_KPH
    return min(max(length_m / duration_s * 3.6, lo), hi)
