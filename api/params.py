"""Parsing of request and command-line parameters: times, bounding boxes, ``lat,lon`` points.

Shared by the HTTP routes (:mod:`api.routes.params` turns a :class:`ParameterError` into a
422 answer naming the parameter) and the command line (``cli``, which prints the message as a
one-line error). Plain functions with no web framework imports; the core (``traffic``,
``graph``) takes numbers, never text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np

from traffic.errors import SnapshotQueryError
from traffic.snapshots import check_bbox

__all__ = ["ParameterError", "parse_bbox", "parse_latlon", "parse_time"]


class ParameterError(ValueError):
    """A parameter's text does not parse or is out of range; the message says which and why."""


def parse_time(text: str | float | int) -> float:
    """Parse a time given as unix seconds (``"1767227400"``, ``1767227400.5``) or ISO 8601.

    An ISO time without an offset is taken as UTC (``"2026-01-01T08:15"``); ``Z`` and
    ``+01:00`` offsets are honoured. Returns unix seconds.

    Raises
    ------
    ParameterError
        Neither a finite number nor an ISO 8601 date-time.
    """
    if isinstance(text, (int, float, np.integer, np.floating)) and not isinstance(text, bool):
        if not math.isfinite(float(text)):
            raise ParameterError(f"time {text!r} must be finite unix seconds")
        return float(text)
    raw = str(text).strip()
    try:
        t_s = float(raw)
    except ValueError:
        pass
    else:
        if math.isfinite(t_s):
            return t_s
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise ParameterError(
            f"time {raw!r} is neither unix seconds nor ISO 8601 (e.g. 2026-01-01T08:15:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def parse_bbox(text: str | Sequence[float]) -> tuple[float, float, float, float]:
    """Parse ``"minlon,minlat,maxlon,maxlat"`` (degrees) into a checked 4-tuple.

    Raises
    ------
    ParameterError
        Not four numbers, not finite, out of range, or min above max (a box crossing the
        antimeridian is not supported).
    """
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise ParameterError(
            f"bbox {text!r} must be four numbers minlon,minlat,maxlon,maxlat") from None
    try:
        return check_bbox(values, shown=repr(text))
    except SnapshotQueryError as exc:
        raise ParameterError(str(exc)) from None


def parse_latlon(text: str) -> tuple[float, float]:
    """Parse ``"lat,lon"`` (degrees) into ``(lat, lon)``.

    The message of the error leaves the parameter's name to the caller (it reads after it:
    ``"`from` " + message``).

    Raises
    ------
    ParameterError
        Not two numbers, or latitude outside [-90, 90] or longitude outside [-180, 180].
    """
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        lat, lon = float(parts[0]), float(parts[1])
    except ValueError:
        raise ParameterError(f"must be `lat,lon` in degrees; got {text!r}") from None
    if not (math.isfinite(lat) and -90.0 <= lat <= 90.0):
        raise ParameterError(f"latitude must be within [-90, 90]; got {lat!r}")
    if not (math.isfinite(lon) and -180.0 <= lon <= 180.0):
        raise ParameterError(f"longitude must be within [-180, 180]; got {lon!r}")
    return lat, lon
