"""Turn-by-turn steps: manoeuvres, road names and English instructions for a driven route.

:func:`route_legs` turns a :class:`graph.router.Route` (its edges and its polyline) into the
``legs`` of the HTTP answer: one leg for now (via points will add legs: every leg has its own
``distance_m``, ``duration_s`` and ``steps``). Steps follow OSRM's model: each step starts
with a ``maneuver`` and runs, with its ``name``/``ref``, ``distance_m``, ``duration_s`` and
``geometry``, to the next one.

**Where a step starts.** Only where a driver notices something change; a junction passed
on the same road (same ``name`` and ``ref``; for a road with neither, the same OSM way), or
an OSM way split, gives no step. In order, a junction between the incoming edge ``p`` and
the outgoing edge ``q`` (``options`` are the edges leaving the junction, the U-turn back
along ``p`` excluded; ``delta`` is the turn angle below) is:

* ``roundabout`` when ``q`` enters a roundabout; the step covers the ring and the exit road
  (no separate exit step). ``exit`` counts, from the entry, every edge leaving the ring that a
  car may take (the network holds only car-legal directions, so one-way entries are not
  counted), the one taken included; ``exit`` is null when the route ends on the ring;
* ``turn`` with modifier ``uturn`` when ``q`` runs back along ``p``;
* ``off ramp`` from a motorway/trunk onto a link; ``on ramp`` from any other road onto a
  motorway/trunk link;
* ``merge`` from a link (or a motorway/trunk) onto a motorway/trunk where another
  motorway/trunk edge also enters the junction; the modifier (``slight left``/``slight right``)
  is the side the main road lies on;
* ``fork`` when two or more options of ``q``'s rank (motorway/trunk; their links; primary to
  tertiary; other local roads; service and living streets), ``q`` one of them, lie within
  ``FORK_MAX_DEG`` of straight on and ``q`` is not the only one continuing ``p``'s road (same
  road, and a ``*_link`` exactly when ``p`` is one: a slip lane that keeps the street's name
  does not make the street fork); ``slight left`` for the
  leftmost, ``slight right`` for the rightmost, ``straight`` between;
* ``end of road`` when there are options on both sides, none within ``END_OF_ROAD_DEG`` of
  straight on, and ``q`` is one of them;
* on the same road: no step, unless another option is straighter and ``q`` turns more than
  ``STRAIGHT_MAX_DEG``: ``continue`` (the road itself turns at the junction);
* onto another road: ``new name`` when ``q`` is the only option or goes straight on
  (``|delta| <= STRAIGHT_MAX_DEG``), else ``turn``. Between two roads with neither name nor
  ref, only a ``turn`` makes a step (a driver sees no sign change).

The route's first step is ``depart`` (at the start position), its last ``arrive`` (at the
end position, distance and duration 0, geometry the end point twice, as OSRM does).

**Modifiers** come from the turn angle ``delta``: the bearing of the first segment of ``q``
minus the bearing of the last segment of ``p``, in (-180, 180], positive to the right:

=================  =========================
``|delta|``        modifier (side by sign)
=================  =========================
<= 20              straight
20 .. 45           slight right / slight left
45 .. 120          right / left
> 120              sharp right / sharp left
=================  =========================

``uturn`` is for a turn back along the same road (``q`` is ``p`` reversed, or a dead end's
only way on). ``depart`` and ``arrive`` have no modifier (null). Bearings are whole degrees
clockwise from north: ``bearing_before`` of ``p``'s last segment (0 on depart),
``bearing_after`` of ``q``'s first segment (0 on arrive).

**Instructions** (``{road}``: the step's name, its ref in parentheses when it has both, the
ref alone when it has no name; the text in brackets is dropped for an unnamed road; ``{dir}``:
north, northeast, ... from ``bearing_after``; ``{side}``: left/right from the modifier):

=================  ========================================================================
type               instruction
=================  ========================================================================
depart             Head {dir}[ on {road}]
turn               Turn {modifier}[ onto {road}]; Go straight[ onto {road}];
                   Make a U-turn[ onto {road}]
continue           Continue {modifier}[ on {road}]; Continue straight[ on {road}]
new name           Continue[ onto {road}]
merge              Merge {side}[ onto {road}]
on ramp            Take the ramp on the {side}[ onto {road}]; Take the ramp[ onto {road}]
off ramp           Take the exit on the {side}[ onto {road}]; Take the exit[ onto {road}]
fork               Keep {side} at the fork[ onto {road}]; Keep straight at the fork[...]
end of road        At the end of the road, turn {modifier}[ onto {road}]
roundabout         At the roundabout, take the {1st, 2nd, 3rd, 4th, ...} exit[ onto {road}];
                   Enter the roundabout (route ends on the ring)
arrive             You have arrived at your destination
=================  ========================================================================

**Distances and durations.** Each route edge's driven length is its ``edge_length_m`` (the
first and last edges only in part: the share of their polyline the route's polyline covers);
the last edge takes whatever makes the sum the route's ``distance_m`` exactly. Durations are
the route's own per-edge driven seconds when the caller has them (``edge_duration_s``: the
live times the route was computed on, or the forecast driven times of
:meth:`traffic.eta_model.EtaModel.route_eta`; the route's ``duration_s`` is their sum, so the
steps add up to it, the way annotations do). Without them they split the route's
``duration_s`` in proportion to each edge's travel time (the live times when given, else
free-flow) times its driven share, so they add up to it as well.
Step geometries are the route's polyline cut at the manoeuvre points: joined, they are the
route's geometry.

Cost: O(route edges + route points) in Python plus O(degree) per junction; about 0.02 ms per
edge (a route of 500 edges: ~10 ms). The plain route answer does not pay it: steps are only
built when asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from graph.network import (
    EDGE_ROUNDABOUT,
    ROAD_CLASS_INDEX,
    ROAD_CLASSES,
    RoadNetwork,
    haversine_m,
)

__all__ = [
    "END_OF_ROAD_DEG", "FORK_MAX_DEG", "MODIFIERS", "SHARP_MIN_DEG", "SLIGHT_MAX_DEG",
    "STEP_TYPES", "STRAIGHT_MAX_DEG", "instruction", "modifier_for", "route_legs",
    "route_steps",
]

#: Turn angles (degrees) up to this are ``straight``.
STRAIGHT_MAX_DEG = 20.0
#: Up to this, ``slight left``/``slight right``.
SLIGHT_MAX_DEG = 45.0
#: Above this, ``sharp left``/``sharp right`` (between: ``left``/``right``).
SHARP_MIN_DEG = 120.0
#: Options within this angle of straight on make a fork.
FORK_MAX_DEG = 45.0
#: A junction where no option lies within this angle of straight on ends the road.
END_OF_ROAD_DEG = 45.0

STEP_TYPES: tuple[str, ...] = (
    "depart", "turn", "continue", "new name", "merge", "on ramp", "off ramp", "fork",
    "end of road", "roundabout", "arrive",
)
MODIFIERS: tuple[str, ...] = (
    "uturn", "sharp right", "right", "slight right", "straight", "slight left", "left",
    "sharp left",
)

_MOTORWAY = frozenset(ROAD_CLASS_INDEX[c] for c in ("motorway", "trunk"))
_LINK = frozenset(ROAD_CLASS_INDEX[c] for c in ("motorway_link", "trunk_link"))
# Road ranks for forks: motorway/trunk 0, their links 1, main roads 2, local roads 3 (the
# default), service roads and living streets 4.
_RANK_OF = {"motorway": 0, "trunk": 0, "motorway_link": 1, "trunk_link": 1, "primary": 2,
            "secondary": 2, "tertiary": 2, "primary_link": 2, "secondary_link": 2,
            "tertiary_link": 2, "service": 4, "living_street": 4}
_RANK = np.array([_RANK_OF.get(c, 3) for c in ROAD_CLASS_INDEX], dtype=np.int8)
_DIRECTIONS = ("north", "northeast", "east", "southeast", "south", "southwest", "west",
               "northwest")


def modifier_for(delta_deg: float) -> str:
    """The modifier of a turn angle (degrees, positive to the right; see the module doc).

    Examples
    --------
    >>> [modifier_for(d) for d in (0, -30, 90, 150, -179)]
    ['straight', 'slight left', 'right', 'sharp right', 'sharp left']
    """
    a = abs(delta_deg)
    if a <= STRAIGHT_MAX_DEG:
        return "straight"
    side = "right" if delta_deg > 0 else "left"
    if a <= SLIGHT_MAX_DEG:
        return f"slight {side}"
    if a <= SHARP_MIN_DEG:
        return side
    return f"sharp {side}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def road_label(name: str | None, ref: str | None) -> str | None:
    """``"Kehä III (50)"``, ``"Ring I"``, ``"E 18"`` or ``None`` for an unnamed road."""
    if name and ref:
        return f"{name} ({ref})"
    return name or ref or None


def instruction(kind: str, modifier: str | None, *, name: str | None = None,
                ref: str | None = None, exit: int | None = None,
                bearing_after: int = 0) -> str:
    """The English instruction of a step (templates in the module docstring).

    Examples
    --------
    >>> instruction("turn", "left", name="Mannerheimintie")
    'Turn left onto Mannerheimintie'
    >>> instruction("roundabout", "straight", name="Ring I", exit=2)
    'At the roundabout, take the 2nd exit onto Ring I'
    >>> instruction("turn", "right")
    'Turn right'
    """
    road = road_label(name, ref)
    onto = f" onto {road}" if road else ""
    on = f" on {road}" if road else ""
    side = "left" if modifier and "left" in modifier else (
        "right" if modifier and "right" in modifier else None)
    if kind == "depart":
        return f"Head {_DIRECTIONS[int(((bearing_after % 360) + 22.5) // 45) % 8]}{on}"
    if kind == "arrive":
        return "You have arrived at your destination"
    if kind == "roundabout":
        if exit is None:
            return "Enter the roundabout"
        return f"At the roundabout, take the {_ordinal(exit)} exit{onto}"
    if modifier == "uturn":
        return f"Make a U-turn{onto}"
    if kind == "turn":
        return f"Go straight{onto}" if modifier == "straight" else f"Turn {modifier}{onto}"
    if kind == "continue":
        return f"Continue {modifier}{on}"
    if kind == "new name":
        return f"Continue{onto}"
    if kind == "merge":
        return f"Merge {side}{onto}" if side else f"Merge{onto}"
    if kind in ("on ramp", "off ramp"):
        what = "ramp" if kind == "on ramp" else "exit"
        return f"Take the {what} on the {side}{onto}" if side else f"Take the {what}{onto}"
    if kind == "fork":
        return f"Keep {side or 'straight'} at the fork{onto}"
    if kind == "end of road":
        return f"At the end of the road, turn {modifier}{onto}"
    raise ValueError(f"unknown step type {kind!r}; known: {', '.join(STEP_TYPES)}")


def _bearing(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial great-circle bearing (degrees clockwise from north, 0..360)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    x = math.sin(dl) * math.cos(p2)
    y = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(x, y)) % 360.0


def _delta(before: float, after: float) -> float:
    """Turn angle in (-180, 180], positive to the right."""
    d = (after - before) % 360.0
    return d - 360.0 if d > 180.0 else d


@dataclass(slots=True)
class _Edges:
    """Per-network helpers: bearings at an edge's start and end (cached per edge)."""

    net: RoadNetwork

    def out_bearing(self, e: int) -> float:
        lat, lon = self.net.edge_geometry(e)
        return _bearing(lat[0], lon[0], lat[1], lon[1])

    def in_bearing(self, e: int) -> float:
        lat, lon = self.net.edge_geometry(e)
        return _bearing(lat[-2], lon[-2], lat[-1], lon[-1])

    def outs(self, v: int) -> np.ndarray:
        net = self.net
        return net.out_edge[net.out_first[v]:net.out_first[v + 1]]

    def ins(self, v: int) -> np.ndarray:
        net = self.net
        return net.in_edge[net.in_first[v]:net.in_first[v + 1]]

    def is_reverse(self, p: int, q: int) -> bool:
        net = self.net
        return bool(net.edge_dst[q] == net.edge_src[p] and net.edge_src[q] == net.edge_dst[p]
                    and net.edge_osm_way[q] == net.edge_osm_way[p])

    def road(self, e: int) -> tuple[int, int, int]:
        """Road identity: (name, ref) when either is set, else the OSM way."""
        net = self.net
        name, ref = int(net.edge_name[e]), int(net.edge_ref[e])
        if name >= 0 or ref >= 0:
            return (name, ref, -1)
        return (-1, -1, int(net.edge_osm_way[e]) if net.edge_osm_way[e] >= 0 else -2 - e)

    def named(self, e: int) -> bool:
        return bool(self.net.edge_name[e] >= 0 or self.net.edge_ref[e] >= 0)

    def link(self, e: int) -> bool:
        return ROAD_CLASSES[int(self.net.edge_road_class[e])].endswith("_link")

    def roundabout(self, e: int) -> bool:
        return bool(self.net.edge_flags[e] & EDGE_ROUNDABOUT)


def _classify(h: _Edges, p: int, q: int) -> tuple[str, str] | None:
    """``(type, modifier)`` of the junction from edge ``p`` to ``q``; ``None``: no step."""
    net = h.net
    v = int(net.edge_dst[p])
    before = h.in_bearing(p)
    if h.is_reverse(p, q):
        return ("turn", "uturn")
    options = [int(o) for o in h.outs(v) if not h.is_reverse(p, int(o))]
    deltas = {o: _delta(before, h.out_bearing(o)) for o in options}
    dq = deltas.get(q, _delta(before, h.out_bearing(q)))
    mod = modifier_for(dq)
    cp, cq = int(net.edge_road_class[p]), int(net.edge_road_class[q])
    if cp in _MOTORWAY and cq in _LINK:
        return ("off ramp", mod)
    if cq in _LINK and cp not in _LINK and cp not in _MOTORWAY:
        return ("on ramp", mod)
    if cq in _MOTORWAY and (cp in _LINK or cp in _MOTORWAY):
        others = [int(e) for e in h.ins(v) if int(e) != p and not h.is_reverse(q, int(e))
                  and int(net.edge_road_class[e]) in _MOTORWAY]
        if others:
            side = _delta(before, h.in_bearing(others[0]))
            return ("merge", "slight left" if side < 0 else "slight right")
    same = h.road(p) == h.road(q)
    # Only roads of one rank fork: a service road leaving a primary at a slight angle is a
    # turn off it (or nothing), not a fork.
    rank = _RANK[cq]
    near = sorted((o for o in options if abs(deltas[o]) <= FORK_MAX_DEG
                   and _RANK[int(net.edge_road_class[o])] == rank), key=lambda o: deltas[o])
    if len(near) >= 2 and q in near:
        # The road continues on the option with its name that is a link exactly when it is.
        continuing = [o for o in near if h.road(o) == h.road(p) and h.link(o) == h.link(p)]
        if not (same and continuing == [q]):
            fork_mod = ("slight left" if q == near[0] else
                        "slight right" if q == near[-1] else "straight")
            return ("fork", fork_mod)
    if len(options) >= 2 and all(abs(d) > END_OF_ROAD_DEG for d in deltas.values()) and \
            any(d < 0 for d in deltas.values()) and any(d > 0 for d in deltas.values()):
        return ("end of road", mod)
    straightest = min(options, key=lambda o: abs(deltas[o])) if options else q
    if same:
        if straightest != q and abs(dq) > STRAIGHT_MAX_DEG:
            return ("continue", mod)
        return None
    if len(options) <= 1 or abs(dq) <= STRAIGHT_MAX_DEG:
        if not h.named(p) and not h.named(q):
            return None
        if h.road(p)[:2] == h.road(q)[:2]:
            return None
        return ("new name", mod)
    return ("turn", mod)


def _roundabout_exit(h: _Edges, edges: np.ndarray, i: int) -> tuple[int | None, int]:
    """From the route's first ring edge ``edges[i]``: ``(exit number or None, index of the
    first edge after the ring)``."""
    net = h.net
    count = 0
    j = i
    while j < edges.size and h.roundabout(int(edges[j])):
        r = int(edges[j])
        u = int(net.edge_dst[r])
        exits = [int(o) for o in h.outs(u) if not h.roundabout(int(o))]
        if j + 1 < edges.size and not h.roundabout(int(edges[j + 1])):
            x = int(edges[j + 1])
            before = h.in_bearing(r)
            dx = _delta(before, h.out_bearing(x))
            # Exits at the same node further right come first.
            count += 1 + sum(1 for o in exits if o != x and _delta(before, h.out_bearing(o)) > dx)
            return count, j + 1
        count += len(exits)
        j += 1
    return None, j


def _split_points(net: RoadNetwork, edges: np.ndarray, lat: np.ndarray,
                  lon: np.ndarray) -> np.ndarray:
    """Index in the route polyline of the junction node between ``edges[i-1]`` and
    ``edges[i]``, for ``i`` in ``1..k-1`` (the polyline passes through each exactly)."""
    k = edges.size
    out = np.zeros(max(k - 1, 0), dtype=np.int64)
    if k < 2:
        return out
    go = net.geom_offsets
    npts = (go[edges + 1] - go[edges]).astype(np.int64)
    nodes = net.edge_src[edges[1:]]
    nlat, nlon = net.node_lat[nodes], net.node_lon[nodes]
    # Where the first junction sits depends on how much of the first edge the route cuts.
    window = min(int(npts[0]) + 1, lat.size)
    hit = np.flatnonzero((lat[:window] == nlat[0]) & (lon[:window] == nlon[0]))
    first = int(hit[-1]) if hit.size else 0
    guess = first + np.concatenate([[0], np.cumsum(npts[1:-1] - 1)])
    guess = np.minimum(guess, lat.size - 1)
    ok = (lat[guess] == nlat) & (lon[guess] == nlon)
    out[:] = guess
    for i in np.flatnonzero(~ok):  # not where expected: the nearest point after the last
        lo = int(out[i - 1]) if i else 0
        d = haversine_m(lat[lo:], lon[lo:], nlat[i], nlon[i])
        out[i] = lo + int(np.argmin(d))
    return np.maximum.accumulate(out)


def _polyline_m(lat: np.ndarray, lon: np.ndarray) -> float:
    if lat.size < 2:
        return 0.0
    return float(haversine_m(lat[:-1], lon[:-1], lat[1:], lon[1:]).sum())


def _edge_amounts(net: RoadNetwork, route: Any, cut: np.ndarray,
                  travel_time_s: np.ndarray | None,
                  edge_duration_s: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Driven metres and seconds of each route edge; they sum to the route's totals.

    ``edge_duration_s`` (s per route edge, first and last in part) are taken as the seconds
    as they are; otherwise the route's ``duration_s`` is split as the module doc says."""
    edges = np.asarray(route.edge_ids, dtype=np.int64)
    k = edges.size
    length = net.edge_length_m[edges].astype(np.float64)
    total_m, total_s = float(route.distance_m), float(route.duration_s)
    share = np.ones(k)
    if k == 1:
        share[0] = total_m / length[0] if length[0] > 0 else 0.0
        dist = np.array([total_m])
    else:
        lat, lon = np.asarray(route.lat), np.asarray(route.lon)
        for i, (a, b) in ((0, (0, int(cut[0]))), (k - 1, (int(cut[-1]), lat.size - 1))):
            full = _polyline_m(*net.edge_geometry(int(edges[i])))
            part = _polyline_m(lat[a:b + 1], lon[a:b + 1])
            share[i] = min(part / full, 1.0) if full > 0 else 0.0
        dist = length * share
        dist[-1] = max(total_m - float(dist[:-1].sum()), 0.0)
        if length[-1] > 0:
            share[-1] = min(dist[-1] / length[-1], 1.0)
    if edge_duration_s is not None:
        return dist, edge_duration_s
    tt = (net.freeflow_time_s_at(edges) if travel_time_s is None
          else np.asarray(travel_time_s, dtype=np.float64)[edges])
    weight = np.where(np.isfinite(tt), tt, 0.0) * share
    if weight.sum() > 0:
        secs = total_s * weight / weight.sum()
    elif dist.sum() > 0:
        secs = total_s * dist / dist.sum()
    else:
        secs = np.full(k, total_s / k)
    return dist, secs


def route_steps(net: RoadNetwork, route: Any, *, travel_time_s: np.ndarray | None = None,
                edge_duration_s: np.ndarray | None = None) -> list[dict[str, Any]]:
    """The steps of one driven route (see the module docstring), JSON-ready dicts.

    Parameters
    ----------
    net
        The network the route was computed on.
    route
        A :class:`graph.router.Route` (``edge_ids``, ``lat``/``lon``, ``distance_m``,
        ``duration_s``).
    travel_time_s
        Per-edge travel times (s, one per network edge) the route was computed on; they
        split the route's duration over its edges. Free-flow times when ``None``.
    edge_duration_s
        The seconds driven on each route edge (one per route edge, in driving order, the
        first and last in part), summing to the route's ``duration_s``: the steps' durations
        are sums of them (:class:`graph.navigation.Leg`'s, live or forecast). Takes the
        place of ``travel_time_s``.

    Raises
    ------
    ValueError
        When ``edge_duration_s`` does not hold one finite value per route edge.
    """
    edges = np.asarray(route.edge_ids, dtype=np.int64)
    if edge_duration_s is not None:
        edge_duration_s = np.asarray(edge_duration_s, dtype=np.float64)
        if edge_duration_s.shape != edges.shape or not np.isfinite(edge_duration_s).all():
            raise ValueError(
                f"`edge_duration_s` must hold one finite time (s) per route edge "
                f"({edges.size}); got shape {edge_duration_s.shape}")
    lat, lon = np.asarray(route.lat, dtype=np.float64), np.asarray(route.lon, dtype=np.float64)
    h = _Edges(net)
    cut = _split_points(net, edges, lat, lon)
    dist, secs = _edge_amounts(net, route, cut, travel_time_s, edge_duration_s)
    # Each step: (first route edge, polyline index it starts at, maneuver fields).
    starts: list[tuple[int, int, dict[str, Any]]] = []
    first_after = _bearing(lat[0], lon[0], lat[1], lon[1]) if lat.size > 1 and (
        lat[0] != lat[1] or lon[0] != lon[1]) else h.out_bearing(int(edges[0]))
    starts.append((0, 0, {"type": "depart", "modifier": None, "bearing_before": 0,
                          "bearing_after": round(first_after) % 360, "exit": None,
                          "road_edge": int(edges[0])}))
    i = 1
    while i < edges.size:
        p, q = int(edges[i - 1]), int(edges[i])
        if h.roundabout(q) and not h.roundabout(p):
            exit_no, after = _roundabout_exit(h, edges, i)
            road = int(edges[after]) if after < edges.size else q
            starts.append((i, int(cut[i - 1]), {
                "type": "roundabout", "modifier": modifier_for(
                    _delta(h.in_bearing(p), h.out_bearing(road)) if after < edges.size else 0.0),
                "bearing_before": round(h.in_bearing(p)) % 360,
                "bearing_after": round(h.out_bearing(q)) % 360, "exit": exit_no,
                "road_edge": road}))
            i = after + 1
            continue
        kind = _classify(h, p, q)
        if kind is not None:
            starts.append((i, int(cut[i - 1]), {
                "type": kind[0], "modifier": kind[1],
                "bearing_before": round(h.in_bearing(p)) % 360,
                "bearing_after": round(h.out_bearing(q)) % 360, "exit": None,
                "road_edge": q}))
        i += 1
    return _assemble_steps(net, starts, edges, lat, lon, dist, secs)


def _assemble_steps(net: RoadNetwork, starts: list[tuple[int, int, dict[str, Any]]],
                    edges: np.ndarray, lat: np.ndarray, lon: np.ndarray, dist: np.ndarray,
                    secs: np.ndarray) -> list[dict[str, Any]]:
    steps = []
    bounds = [s[0] for s in starts] + [edges.size]
    pts = [s[1] for s in starts] + [lat.size - 1]
    for n, (first, at, man) in enumerate(starts):
        road = man.pop("road_edge")
        name, ref = net.edge_name_str(road), net.edge_ref_str(road)
        a, b = first, bounds[n + 1]
        coords = np.column_stack([lon[at:pts[n + 1] + 1], lat[at:pts[n + 1] + 1]]).tolist()
        if len(coords) < 2:
            coords = coords * 2
        man["location"] = [float(lon[at]), float(lat[at])]
        steps.append(_step(man, name, ref, float(dist[a:b].sum()), float(secs[a:b].sum()),
                           coords))
    end = [float(lon[-1]), float(lat[-1])]
    before = round(_bearing(lat[-2], lon[-2], lat[-1], lon[-1])) % 360 if lat.size > 1 and (
        lat[-2] != lat[-1] or lon[-2] != lon[-1]) else 0
    last = int(edges[-1])
    steps.append(_step({"type": "arrive", "modifier": None, "bearing_before": before,
                        "bearing_after": 0, "exit": None, "location": end},
                       net.edge_name_str(last), net.edge_ref_str(last), 0.0, 0.0, [end, end]))
    return steps


def _step(man: dict[str, Any], name: str | None, ref: str | None, distance_m: float,
          duration_s: float, coords: list[list[float]]) -> dict[str, Any]:
    text = instruction(man["type"], man["modifier"], name=name, ref=ref, exit=man["exit"],
                       bearing_after=man["bearing_after"])
    maneuver = {k: man[k] for k in ("type", "modifier", "bearing_before", "bearing_after",
                                    "location", "exit")}
    return {"maneuver": maneuver, "name": name, "ref": ref, "distance_m": distance_m,
            "duration_s": duration_s,
            "geometry": {"type": "LineString", "coordinates": coords},
            "instruction": text}


def route_legs(net: RoadNetwork, route: Any, *, travel_time_s: np.ndarray | None = None,
               edge_duration_s: np.ndarray | None = None) -> list[dict[str, Any]]:
    """The ``legs`` of a route answer: one leg (``distance_m``, ``duration_s``, ``steps``)
    per stretch between waypoints; a route without via points has one.
    ``travel_time_s``/``edge_duration_s`` as in :func:`route_steps`."""
    steps = route_steps(net, route, travel_time_s=travel_time_s,
                        edge_duration_s=edge_duration_s)
    return [{"distance_m": float(route.distance_m), "duration_s": float(route.duration_s),
             "steps": steps}]
