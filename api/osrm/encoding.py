"""Geometries in OSRM's formats: ``polyline`` (precision 5), ``polyline6`` and ``geojson``,
and the ``overview`` levels (``full``, ``simplified``, ``false``).

The encoder is :func:`graph.polyline.encode_polyline` (the one ``/v1``'s ``geometry_format``
uses); ``simplified`` is a Douglas-Peucker simplification (Shapely) with a tolerance of
:data:`SIMPLIFY_TOLERANCE_DEG`, endpoints kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graph.polyline import decode_polyline, encode_polyline

__all__ = ["GEOMETRIES", "OVERVIEWS", "decode_coordinates_polyline", "encode_geometry",
           "overview_geometry"]

GEOMETRIES = ("polyline", "polyline6", "geojson")
OVERVIEWS = ("full", "simplified", "false")
#: Douglas-Peucker tolerance of ``overview=simplified`` (degrees; about 5 m of latitude).
SIMPLIFY_TOLERANCE_DEG = 5e-5


def encode_geometry(lat: np.ndarray, lon: np.ndarray, fmt: str) -> Any:
    """A polyline as an encoded string (precision 5 or 6) or a GeoJSON LineString."""
    if fmt == "geojson":
        return {"type": "LineString", "coordinates": np.column_stack([lon, lat]).tolist()}
    return encode_polyline(np.asarray(lat), np.asarray(lon),
                           precision=6 if fmt == "polyline6" else 5)


def overview_geometry(lat: np.ndarray, lon: np.ndarray, *, fmt: str, overview: str) -> Any:
    """The route geometry ``overview`` asks for; ``None`` for ``false`` (the key is left out)."""
    if overview == "false":
        return None
    if overview == "simplified" and lat.size > 2:
        import shapely

        line = shapely.simplify(shapely.linestrings(np.column_stack([lon, lat])),
                                SIMPLIFY_TOLERANCE_DEG, preserve_topology=False)
        xy = shapely.get_coordinates(line)
        lon, lat = xy[:, 0], xy[:, 1]
    return encode_geometry(lat, lon, fmt)


def decode_coordinates_polyline(text: str, precision: int) -> list[tuple[float, float]]:
    """Coordinates given as ``polyline(...)``/``polyline6(...)`` in the URL, as (lat, lon)."""
    lat, lon = decode_polyline(text, precision=precision)
    return list(zip(lat.tolist(), lon.tolist()))
