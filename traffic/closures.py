"""Closures and incidents: operator overrides of the travel times, in force for a time window.

A closure names road segments (by a LineString the road runs along, a Polygon it lies in, or
stable edge keys) and a window ``[start_t, end_t)`` of the service clock (wall time, or event
time under ``--clock event``). ``kind="closure"`` makes the segments impassable;
``kind="slowdown"`` multiplies their travel time by ``factor`` (> 1). The learned speeds of
the segments are untouched: an override applies on top of whatever the estimator publishes,
while it lasts, and ends by itself at ``end_t``.

:class:`ClosureStore` holds the closures of one network and answers, for a clock time, the
multiplier per affected edge (:meth:`ClosureStore.factors_at`; ``inf`` closes). Segments are
chosen by :func:`edges_along` (within ``ALONG_M`` of the line over their whole length, both
directions unless ``direction="forward"``, where the segment must run the line's way) and
:func:`edges_inside` (every point of the segment's geometry inside the polygon). Its state
(:meth:`ClosureStore.state_dict`) is versioned and goes into checkpoints like every stage's.
"""

from __future__ import annotations

import math
import threading
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import shapely

from graph.network import RoadNetwork

#: A LineString closes the segments running along it within this distance (m).
ALONG_M = 20.0
#: Largest slowdown factor (a larger one is a closure).
MAX_FACTOR = 100.0
_M_PER_DEG_LAT = 110_574.0
_M_PER_DEG_LON_EQ = 111_320.0
#: Version of :meth:`ClosureStore.state_dict`.
STATE_VERSION = 1


class ClosureError(ValueError):
    """A closure request is invalid (the message names the field)."""


@dataclass(frozen=True, slots=True)
class Closure:
    """One closure or slowdown: its id, what it covers and when (clock seconds)."""

    id: str
    kind: str
    factor: float
    start_t: float
    end_t: float
    reason: str
    direction: str
    geometry: dict[str, Any] | None
    edge_keys: tuple[int, ...]

    def to_json(self, *, n_edges: int | None = None) -> dict[str, Any]:
        """The closure as the API shows it."""
        out = asdict(self)
        out["edge_keys"] = list(self.edge_keys)
        out["factor"] = None if math.isinf(self.factor) else self.factor  # JSON has no inf
        if n_edges is not None:
            out["n_edges"] = n_edges
        return out


def _project(lat0: float) -> float:
    return _M_PER_DEG_LON_EQ * math.cos(math.radians(lat0))


def _all_points(net: RoadNetwork, edges: np.ndarray, ok: Any) -> np.ndarray:
    """The ``edges`` (with geometry) every geometry point of which passes ``ok(lon, lat)``;
    costs O(their points), not O(network)."""
    off = np.asarray(net.geom_offsets, dtype=np.int64)
    edges = edges[off[edges + 1] > off[edges]]
    counts = off[edges + 1] - off[edges]
    idx = np.repeat(off[edges] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
    passed = ok(np.asarray(net.geom_lon)[idx], np.asarray(net.geom_lat)[idx])
    all_ok = np.ones(edges.size, dtype=bool)
    np.logical_and.at(all_ok, np.repeat(np.arange(edges.size), counts), passed)
    return edges[all_ok]


def _near(net: RoadNetwork, area: shapely.Geometry, spatial: Any) -> np.ndarray:
    """Edges that may meet ``area``: found by the spatial index (``graph.avoid.area_edges``)
    when one is given, else every edge."""
    if spatial is None:
        return np.arange(net.n_edges, dtype=np.int64)
    from graph.avoid import area_edges

    return area_edges(spatial, area).astype(np.int64)


def edges_along(net: RoadNetwork, line: shapely.LineString, *, forward_only: bool = False,
                within_m: float = ALONG_M, spatial: Any = None) -> np.ndarray:
    """Edges whose whole geometry lies within ``within_m`` of ``line`` (lon/lat); with
    ``forward_only``, only those drawn the line's way (their start nearer its start).
    ``spatial``: the network's spatial index, to look only at the edges near the line."""
    coords = np.asarray(line.coords)
    lat0 = float(coords[:, 1].mean())
    kx = _project(lat0)

    def xy(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        return np.column_stack([(lon - coords[0, 0]) * kx, (lat - lat0) * _M_PER_DEG_LAT])

    pline = shapely.LineString(xy(coords[:, 0], coords[:, 1]))
    x0, y0, x1, y1 = line.bounds
    dx, dy = within_m / kx, within_m / _M_PER_DEG_LAT
    near = _near(net, shapely.box(x0 - dx, y0 - dy, x1 + dx, y1 + dy), spatial)
    cand = _all_points(net, near, lambda lon, lat: shapely.dwithin(
        shapely.points(xy(lon, lat)), pline, within_m))
    # A segment merely crossing the line near a junction is not "along" it: it must cover
    # some of the line's length.
    off = np.asarray(net.geom_offsets, dtype=np.int64)
    lon, lat = np.asarray(net.geom_lon), np.asarray(net.geom_lat)
    first, last = off[cand], off[cand + 1] - 1
    a = shapely.line_locate_point(pline, shapely.points(xy(lon[first], lat[first])))
    b = shapely.line_locate_point(pline, shapely.points(xy(lon[last], lat[last])))
    length = np.asarray(net.edge_length_m)[cand]
    keep = np.abs(b - a) >= np.minimum(0.5 * length, within_m)
    if forward_only:
        keep &= b > a
    return cand[keep]


def edges_inside(net: RoadNetwork, polygon: shapely.Geometry, *,
                 spatial: Any = None) -> np.ndarray:
    """Edges whose every geometry point lies inside ``polygon`` (lon/lat). ``spatial``: the
    network's spatial index, to look only at the edges that meet the polygon."""
    return _all_points(net, _near(net, polygon, spatial),
                       lambda lon, lat: shapely.contains_xy(polygon, lon, lat))


def parse_closure(net: RoadNetwork, body: dict[str, Any], *, now_s: float,
                  spatial: Any = None) -> tuple[Closure, np.ndarray]:
    """A :class:`Closure` and its edge ids from an API body; :class:`ClosureError` naming
    the field when something is wrong (unknown kind, factor, times, geometry, no road).
    ``spatial``: the network's spatial index (a geometry then costs what is near it)."""
    kind = body.get("kind")
    if kind not in ("closure", "slowdown"):
        raise ClosureError(f"`kind` must be `closure` or `slowdown`; got {kind!r}")
    factor = body.get("factor")
    if kind == "closure":
        if factor is not None:
            raise ClosureError("`factor` applies to a slowdown only; a closure has none")
        factor = math.inf
    else:
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not (
                1.0 < float(factor) <= MAX_FACTOR):
            raise ClosureError(f"`factor` must be a number in (1, {MAX_FACTOR:g}] (travel "
                               f"time multiplier); got {factor!r}")
        factor = float(factor)
    start_t = _time(body.get("start_t", now_s), "start_t")
    end_t = _time(body.get("end_t"), "end_t")
    if end_t <= start_t:
        raise ClosureError(f"`end_t` ({end_t}) must be after `start_t` ({start_t})")
    direction = body.get("direction", "both")
    if direction not in ("both", "forward"):
        raise ClosureError(f"`direction` must be `both` or `forward`; got {direction!r}")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 500:
        raise ClosureError("`reason` must be a string of at most 500 characters")
    geometry = body.get("geometry")
    edges = _edges_of(net, geometry, forward_only=direction == "forward", spatial=spatial)
    if edges.size == 0:
        raise ClosureError("`geometry` touches no road of the serving network")
    keys = tuple(int(k) for k in np.asarray(net.edge_key)[edges])
    shape = None if isinstance(geometry, dict) and "edge_keys" in geometry else geometry
    closure = Closure(id=uuid.uuid4().hex[:12], kind=kind, factor=factor, start_t=start_t,
                      end_t=end_t, reason=reason, direction=direction, geometry=shape,
                      edge_keys=keys)
    return closure, edges


def _time(value: Any, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ClosureError(f"`{name}` must be unix seconds on the service clock; got {value!r}")
    return float(value)


def _edges_of(net: RoadNetwork, geometry: Any, *, forward_only: bool,
              spatial: Any = None) -> np.ndarray:
    if not isinstance(geometry, dict):
        raise ClosureError("`geometry` must be a GeoJSON LineString or Polygon, or "
                           "{edge_keys: [...]}")
    if "edge_keys" in geometry:
        keys = geometry["edge_keys"]
        if not isinstance(keys, list) or not keys or not all(
                isinstance(k, int) and not isinstance(k, bool) for k in keys):
            raise ClosureError("`geometry.edge_keys` must be a non-empty list of integers")
        idx = net.edge_index_of_keys(np.asarray(keys, dtype=np.int64))
        if np.any(idx < 0):
            raise ClosureError(f"`geometry.edge_keys` names unknown edge "
                               f"{int(np.asarray(keys)[idx < 0][0])}")
        return np.unique(idx)
    try:
        shape = shapely.geometry.shape(geometry)
    except Exception as exc:  # shapely raises several types for malformed GeoJSON
        raise ClosureError(f"`geometry` is not valid GeoJSON: {exc}") from None
    if shape.geom_type == "LineString":
        if shape.length == 0:
            raise ClosureError("`geometry` LineString needs two distinct points")
        return edges_along(net, shape, forward_only=forward_only, spatial=spatial)
    if shape.geom_type in ("Polygon", "MultiPolygon"):
        if not shape.is_valid or shape.area == 0:
            raise ClosureError("`geometry` polygon is not valid (closed, non-empty, not "
                               "self-intersecting)")
        return edges_inside(net, shape, spatial=spatial)
    raise ClosureError(f"`geometry` must be a LineString or Polygon; got {shape.geom_type}")


class ClosureStore:
    """The closures of one network (see the module docstring). Thread-safe."""

    def __init__(self, net: RoadNetwork) -> None:
        self.net = net
        self._lock = threading.Lock()
        self._items: dict[str, tuple[Closure, np.ndarray]] = {}
        self.revision = 0  # grows with every add or removal

    def add(self, closure: Closure, edges: np.ndarray) -> None:
        """Keep ``closure`` over ``edges`` (edge ids of this store's network)."""
        with self._lock:
            self._items[closure.id] = (closure, np.asarray(edges, dtype=np.int64))
            self.revision += 1

    def remove(self, closure_id: str) -> bool:
        """Drop a closure; whether it existed."""
        with self._lock:
            found = self._items.pop(closure_id, None) is not None
            self.revision += found
            return found

    def list(self) -> list[dict[str, Any]]:
        """Every closure (ended ones until removed), as the API shows them."""
        with self._lock:
            return [c.to_json(n_edges=int(e.size)) for c, e in self._items.values()]

    def expire(self, now_s: float) -> int:
        """Forget closures that ended before ``now_s``; returns how many."""
        with self._lock:
            gone = [k for k, (c, _) in self._items.items() if c.end_t <= now_s]
            for k in gone:
                del self._items[k]
            self.revision += bool(gone)
            return len(gone)

    def factors_at(self, now_s: float) -> tuple[np.ndarray, np.ndarray]:
        """``(edges, factor)`` in force at ``now_s``: sorted edge ids and each one's travel
        time multiplier (``inf``: closed; several overlapping overrides multiply)."""
        with self._lock:
            live = [(c, e) for c, e in self._items.values() if c.start_t <= now_s < c.end_t]
        if not live:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        edges = np.concatenate([e for _, e in live])
        f = np.concatenate([np.full(e.size, c.factor) for c, e in live])
        order = np.argsort(edges, kind="stable")
        edges, f = edges[order], f[order]
        first = np.r_[True, edges[1:] != edges[:-1]]
        idx = np.flatnonzero(first)
        return edges[idx], np.multiply.reduceat(f, idx)

    def next_change_after(self, now_s: float) -> float | None:
        """The next clock time a closure starts or ends after ``now_s`` (``None``: none)."""
        with self._lock:
            times = [t for c, _ in self._items.values() for t in (c.start_t, c.end_t)
                     if t > now_s]
        return min(times) if times else None

    # -- state (checkpoints) -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Version 1: ``version`` and ``closures``, a list of closures as plain values with
        their stable edge keys (edge ids are derived again on load)."""
        with self._lock:
            return {"version": STATE_VERSION,
                    "closures": [c.to_json() for c, _ in self._items.values()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; closures whose edges are all gone from the
        network (after a network swap) are dropped. ``ValueError`` for another version."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"closure state has version {state.get('version')!r}; this code "
                             f"reads {STATE_VERSION}")
        items = {}
        for raw in state["closures"]:
            factor = math.inf if raw["factor"] is None else float(raw["factor"])
            c = Closure(**{**raw, "edge_keys": tuple(int(k) for k in raw["edge_keys"]),
                           "factor": factor})
            idx = self.net.edge_index_of_keys(np.asarray(c.edge_keys, dtype=np.int64))
            idx = idx[idx >= 0]
            if idx.size:
                items[c.id] = (c, np.unique(idx))
        with self._lock:
            self._items = items
            self.revision += 1

    def remap_to(self, net: RoadNetwork) -> ClosureStore:
        """The same closures over another network version (by stable edge keys)."""
        other = ClosureStore(net)
        other.load_state_dict(self.state_dict())
        return other
