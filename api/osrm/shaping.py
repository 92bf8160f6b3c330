"""OSRM v5 response objects (``Waypoint``, ``Route``, ``RouteLeg``, ``RouteStep``,
``Annotation``) shaped from ``/v1`` answers, so both APIs tell the same route.

Distances are metres, durations seconds; ``weight`` is the duration (``weight_name``
``duration``). Every duration comes from the ``/v1`` answer's (the route's, legs' and steps'
as they are; they sum one vector of per-edge driven times, live or forecast). Annotations
are per coordinate pair of the full geometry, as OSRM's are: each pair's distance is its
great-circle length, its speed the speed of the edge under its midpoint (``/v1``'s per-edge
annotations), its duration its share (by length) of that edge's driven duration; each leg's
pair durations are then scaled to sum to the leg's duration exactly (an edge shorter than
the pairs' spacing may have no pair of its own).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from api.osrm.encoding import encode_geometry, overview_geometry
from graph.network import haversine_m

__all__ = ["osrm_route", "waypoint"]


def waypoint(snap: dict[str, Any] | None, *, hint: bool = True) -> dict[str, Any]:
    """An OSRM Waypoint from a ``Services.nearest`` entry."""
    if snap is None:
        return {"name": "", "location": None, "distance": None}
    out = {"name": snap["name"] or "", "location": [snap["lon"], snap["lat"]],
           "distance": snap["distance_m"]}
    if hint:
        out["hint"] = ""
    return out


def _coords(geometry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    xy = np.asarray(geometry["coordinates"], dtype=np.float64).reshape(-1, 2)
    return xy[:, 1], xy[:, 0]


def _step(step: dict[str, Any], fmt: str) -> dict[str, Any]:
    man = step["maneuver"]
    lat, lon = _coords(step["geometry"])
    m = {"location": man["location"], "bearing_before": man["bearing_before"],
         "bearing_after": man["bearing_after"], "type": man["type"]}
    if man.get("modifier") is not None:
        m["modifier"] = man["modifier"]
    if man.get("exit") is not None:
        m["exit"] = man["exit"]
    if man["type"] == "depart":
        inter = {"location": man["location"], "bearings": [man["bearing_after"]],
                 "entry": [True], "out": 0}
    elif man["type"] == "arrive":
        inter = {"location": man["location"], "bearings": [(man["bearing_before"] + 180) % 360],
                 "entry": [True], "in": 0}
    else:
        inter = {"location": man["location"],
                 "bearings": [(man["bearing_before"] + 180) % 360, man["bearing_after"]],
                 "entry": [False, True], "in": 0, "out": 1}
    out = {"distance": step["distance_m"], "duration": step["duration_s"],
           "weight": step["duration_s"], "geometry": encode_geometry(lat, lon, fmt),
           "name": step.get("name") or "", "mode": "driving", "driving_side": "right",
           "maneuver": m, "intersections": [inter]}
    if step.get("ref"):
        out["ref"] = step["ref"]
    return out


def _segment_annotations(lat: np.ndarray, lon: np.ndarray, ann: dict[str, Any],
                         names: tuple[str, ...]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per coordinate pair: the asked annotations, and the cumulative distance at each
    pair's midpoint (to split them among legs)."""
    seg = haversine_m(lat[:-1], lon[:-1], lat[1:], lon[1:]) if lat.size > 1 else np.zeros(0)
    cum = np.cumsum(seg)
    mid = cum - seg / 2
    speed_e = np.asarray(ann["speed_mps"], dtype=np.float64)
    dur_e = np.asarray(ann["duration_s"], dtype=np.float64)
    dist_e = dur_e * speed_e
    edge = np.clip(np.searchsorted(np.cumsum(dist_e), mid, side="right"), 0,
                   max(speed_e.size - 1, 0))
    sp = speed_e[edge] if speed_e.size else np.zeros(seg.size)
    # Each edge's driven duration, split over its pairs by length (by count where they have
    # none); distance / speed where the edge has no duration to split.
    if speed_e.size:
        seg_e = np.bincount(edge, weights=seg, minlength=speed_e.size)
        n_e = np.bincount(edge, minlength=speed_e.size)
        by_len = seg_e[edge] > 0
        dur = np.where(by_len, dur_e[edge] * seg / np.where(by_len, seg_e[edge], 1.0),
                       dur_e[edge] / np.maximum(n_e[edge], 1))
    else:
        dur = np.divide(seg, sp, out=np.zeros_like(seg), where=sp > 0)
    vals = {"distance": seg, "duration": dur, "speed": np.round(sp, 1), "weight": dur}
    return {k: vals[k] for k in names}, mid


def osrm_route(r: dict[str, Any], *, fmt: str, overview: str, steps: bool,
               annotations: tuple[str, ...]) -> dict[str, Any]:
    """An OSRM Route from a ``/v1`` route answer made with ``geometry_format=geojson``,
    ``annotations`` when any are asked for, and ``steps`` when asked for."""
    lat, lon = _coords(r["geometry"])
    legs = []
    seg_ann, mid = (_segment_annotations(lat, lon, r["annotations"], annotations)
                    if annotations else ({}, None))
    bounds = np.cumsum([lg["distance_m"] for lg in r["legs"]])
    leg_of = (np.minimum(np.searchsorted(bounds, mid, side="right"), len(bounds) - 1)
              if mid is not None else None)
    for i, lg in enumerate(r["legs"]):
        leg = {"distance": lg["distance_m"], "duration": lg["duration_s"],
               "weight": lg["duration_s"], "summary": lg.get("summary") or "",
               "steps": [_step(s, fmt) for s in lg.get("steps", ())] if steps else []}
        if annotations:
            sel = leg_of == i
            leg["annotation"] = {k: v[sel] for k, v in seg_ann.items()}
            for k in ("duration", "weight"):  # sum to the leg's duration exactly
                v = leg["annotation"].get(k)
                if v is not None and v.sum() > 0:
                    leg["annotation"][k] = v * (float(lg["duration_s"]) / float(v.sum()))
            leg["annotation"] = {k: v.tolist() for k, v in leg["annotation"].items()}
        legs.append(leg)
    out = {"distance": r["distance_m"], "duration": r["duration_s"],
           "weight": r["duration_s"], "weight_name": "duration", "legs": legs}
    geometry = overview_geometry(lat, lon, fmt=fmt, overview=overview)
    if geometry is not None:
        out["geometry"] = geometry
    return out
