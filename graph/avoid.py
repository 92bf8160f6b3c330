"""Per-request avoids: routes that never use excluded road classes or enter avoided polygons.

A request may close edges two ways: ``exclude`` (tag classes: ``motorway`` = the ``motorway``
and ``motorway_link`` road classes, ``toll`` and ``ferry`` = the :data:`graph.network.EDGE_TOLL`
and :data:`graph.network.EDGE_FERRY` flags) and ``avoid`` (a GeoJSON Polygon or MultiPolygon:
every edge whose geometry intersects it, boundary included). Routes are searched on a metric
whose closed edges weigh :data:`graph.cch.INF_WEIGHT_MS`, and the end points snap only to
edges left open, so no route edge is ever a closed one.

Design: one pool of *overlay metrics*, not one metric per request and not one pre-built
metric per class.

- An overlay metric is a full :class:`graph.cch.Metric` (RoutingKit has no metric copy) that
  holds the router's live weights (or a profile's) with a set of edges closed, and remembers
  which: ``(source metric, its weights version, signature of the closed set)``.
- A request takes one metric of the pool **exclusively** and brings it to ``(current live
  weights, its closed set)`` in place (:func:`graph.cch.take_times`, then
  :func:`graph.cch.recustomize`): only the edges whose millisecond weight differs go to
  RoutingKit, partially (few) or as a full reset (more than
  :data:`graph.cch.FULL_CUSTOMIZE_FRACTION`). It queries on it on the calling thread (a
  query object made and dropped within the call, so nothing holds the metric afterwards) and
  gives it back.
- Polygons: taking a metric that last served another ~1 km² polygon costs a partial update of
  both polygons' edges. On DIMACS NY (730k edges) that is about 0.2-1.5 ms for 40-400 edges
  (measured while choosing this design; BENCHMARKS.md has the request figures), against
  60-100 ms for a new ``CCHMetric`` (full customization, GIL held) per request.
- Exclude classes: classes close many edges (motorways are 1-5 % of a country's edges, above
  the partial/full crossover), so a metric is kept per class set, as OSRM keeps one per
  exclude combination, but customized lazily and kept following the live weights: a request
  prefers a free metric with its own closed set, whose update then costs only the live delta
  since it was last used, and nothing when the weights version is unchanged (the cache key is
  ``(weights version, classes)``). A class set met for the first time, or after its metric
  was taken over, costs one full re-customization (``CCHMetric.reset``, GIL released).
- Memory: at most ``max_metrics`` overlay metrics (default 4), created on demand; each costs
  about 15-30 B per edge on NY (RoutingKit's shortcut weights, our float times and
  millisecond weights), so the default pool is about 60-120 B per edge. A request finding
  every metric busy waits for one (``wait_s``), which also bounds the concurrent customizing.
  OSRM's way (every class combination pre-customized at each weights update) would cost
  ``2^classes`` metrics customized on every live update, whether asked for or not.

Costs per request besides the customization: finding the polygon's edges (the spatial
index's grid rows under the polygon's bounding box, then shapely 2's vectorized
``intersects`` on those segments; O(segments under the box)), one O(edges) copy of the
source's weights and one O(edges) comparison (about 2 ms on NY; at 10^7 edges about 20-30 ms,
skipped when the metric already holds the request's closed set on the same weights version).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

from graph.cch import (
    FULL_CUSTOMIZE_FRACTION,
    PARTIAL_PAUSE,
    Metric,
    customize,
    metric_weights,
    recustomize,
    take_times,
)
from graph.errors import NoRouteError
from graph.network import EDGE_FERRY, EDGE_TOLL, ROAD_CLASS_INDEX, RoadNetwork
from graph.router import Route, Router, _as_points, _fractions
from graph.spatial import DEFAULT_SNAP_RADIUS_M, SpatialIndex, segments_in_box

#: Tag classes ``exclude`` accepts, in the order answers list them.
EXCLUDE_CLASSES: tuple[str, ...] = ("motorway", "toll", "ferry")
#: Road classes the ``motorway`` exclude class closes (as OSRM's car profile).
MOTORWAY_ROAD_CLASSES: tuple[str, ...] = ("motorway", "motorway_link")
#: Most vertices an avoid geometry may have (all rings together); bounds the parse and the
#: intersection test of one request.
MAX_AVOID_VERTICES = 10_000
#: Default number of overlay metrics a router keeps (see the module docstring).
DEFAULT_MAX_METRICS = 4
#: Changed edges up to which an overlay's partial update runs unpaced (``pause=0`` in
#: :func:`graph.cch.recustomize`): two ~1 km^2 polygons on NY are 100-1,000 edges, about
#: 0.2-3 ms of RoutingKit holding the GIL (benchmarks/avoid.py); each of the pacing's sleeps
#: gives up the CPU, which cost several ms per chunk on a busy 2-core machine.
UNPACED_EDGES = 2048


class AvoidGeometryError(ValueError):
    """An ``avoid`` geometry that does not parse, is not closed or is not a valid polygon.

    ``field`` names the offending part, e.g. ``avoid.coordinates[0]``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"`{field}` {message}")
        self.field = field
        self.reason = message


class PointInAvoidError(ValueError):
    """A route end point (or via point) lies inside the avoided area."""

    def __init__(self, label: str, message: str) -> None:
        super().__init__(message)
        self.label = label


# -- input --------------------------------------------------------------------------------
def parse_exclude(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Exclude classes from ``"motorway,toll"`` (or a list of names): distinct, in
    :data:`EXCLUDE_CLASSES` order; ``()`` for none. Raises ``ValueError`` naming an unknown one.

    Examples
    --------
    >>> parse_exclude("toll, motorway,toll")
    ('motorway', 'toll')
    >>> parse_exclude("")
    ()
    """
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    names = {str(v).strip() for v in items} - {""}
    unknown = sorted(names - set(EXCLUDE_CLASSES))
    if unknown:
        raise ValueError(f"has unknown class {unknown[0]!r}; known classes: "
                         f"{', '.join(EXCLUDE_CLASSES)}")
    return tuple(c for c in EXCLUDE_CLASSES if c in names)


def parse_avoid(obj: Any, *, field: str = "avoid") -> shapely.Geometry:
    """A shapely (Multi)Polygon in ``(lon, lat)`` from a GeoJSON Polygon or MultiPolygon.

    Every ring needs at least 4 positions, its first equal to its last (closed), positions
    ``[lon, lat]`` (a third number, an altitude, is ignored) within range, and the polygon
    must be valid (OGC: no self-intersection). Raises :class:`AvoidGeometryError` naming the
    field (``avoid.coordinates[0][3]``) and what is wrong.

    Examples
    --------
    >>> parse_avoid({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}).area
    0.5
    >>> parse_avoid({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]})
    Traceback (most recent call last):
    ...
    graph.avoid.AvoidGeometryError: `avoid.coordinates[0]` is not closed: its first position [0.0, 0.0] differs from its last [0.0, 1.0]
    """
    if not isinstance(obj, dict):
        raise AvoidGeometryError(field, f"must be a GeoJSON Polygon or MultiPolygon object; "
                                        f"got {type(obj).__name__}")
    kind = obj.get("type")
    coords = obj.get("coordinates")
    if kind not in ("Polygon", "MultiPolygon"):
        raise AvoidGeometryError(f"{field}.type", f"must be 'Polygon' or 'MultiPolygon'; got {kind!r}")
    if not isinstance(coords, list) or not coords:
        raise AvoidGeometryError(f"{field}.coordinates", "must be a non-empty list")
    where = f"{field}.coordinates"
    if kind == "Polygon":
        parts = [_polygon_rings(coords, where)]
    else:
        parts = [_polygon_rings(p, f"{where}[{i}]") for i, p in enumerate(coords)]
    n_vertices = sum(len(r) for rings in parts for r in rings)
    if n_vertices > MAX_AVOID_VERTICES:
        raise AvoidGeometryError(where, f"has {n_vertices} positions; at most "
                                        f"{MAX_AVOID_VERTICES} are accepted")
    polys = [shapely.Polygon(rings[0], rings[1:]) for rings in parts]
    geom = polys[0] if kind == "Polygon" else shapely.MultiPolygon(polys)
    if not shapely.is_valid(geom):
        raise AvoidGeometryError(field, f"is not a valid polygon: {shapely.is_valid_reason(geom)}")
    return geom


def _polygon_rings(rings: Any, where: str) -> list[np.ndarray]:
    if not isinstance(rings, list) or not rings:
        raise AvoidGeometryError(where, "must be a non-empty list of linear rings")
    return [_ring(r, f"{where}[{j}]") for j, r in enumerate(rings)]


def _ring(ring: Any, where: str) -> np.ndarray:
    if not isinstance(ring, list) or len(ring) < 4:
        raise AvoidGeometryError(where, "must be a linear ring: a list of at least 4 positions "
                                        "[lon, lat], the last equal to the first")
    out = np.empty((len(ring), 2))
    for k, pos in enumerate(ring):
        ok = isinstance(pos, list) and len(pos) in (2, 3) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in pos)
        if not ok or not (-180 <= pos[0] <= 180 and -90 <= pos[1] <= 90):
            raise AvoidGeometryError(f"{where}[{k}]", f"must be a position [lon, lat] with "
                                                      f"-180 <= lon <= 180, -90 <= lat <= 90; "
                                                      f"got {pos!r}")
        out[k] = pos[:2]
    if not np.array_equal(out[0], out[-1]):
        raise AvoidGeometryError(where, f"is not closed: its first position {out[0].tolist()} "
                                        f"differs from its last {out[-1].tolist()}")
    return out


def points_in_area(area: shapely.Geometry, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Which points (degrees) lie in ``area`` or on its boundary (bool per point)."""
    return np.asarray(shapely.intersects_xy(area, np.asarray(lon, dtype=np.float64),
                                            np.asarray(lat, dtype=np.float64)))


# -- closed edges -------------------------------------------------------------------------
def excluded_edges(net: RoadNetwork, classes: Sequence[str]) -> np.ndarray:
    """Bool per edge: whether it belongs to one of the exclude ``classes``. O(edges)."""
    out = np.zeros(net.n_edges, dtype=bool)
    for c in parse_exclude(classes):
        if c == "motorway":
            codes = [ROAD_CLASS_INDEX[r] for r in MOTORWAY_ROAD_CLASSES]
            out |= np.isin(net.edge_road_class, codes)
        else:
            out |= (net.edge_flags & (EDGE_TOLL if c == "toll" else EDGE_FERRY)) != 0
    return out


def area_edges(spatial: SpatialIndex, area: shapely.Geometry) -> np.ndarray:
    """Sorted distinct ids of the edges whose geometry intersects ``area`` (lon/lat), boundary
    included.

    Reads the spatial index's grid rows under the area's bounding box (widened by the
    longest registered piece), keeps the segments whose own box meets it, and tests those
    with shapely 2's vectorized ``intersects`` on a prepared polygon, all in the index's
    local plane. That projection is affine in lon/lat, so straight segments and polygon sides
    stay straight and the test is exact for the network's polylines.
    """
    xmin, ymin, xmax, ymax = area.bounds
    x0, y0 = spatial.project(np.array([ymin]), np.array([xmin]))
    x1, y1 = spatial.project(np.array([ymax]), np.array([xmax]))
    seg = segments_in_box(spatial, float(x0[0]), float(y0[0]), float(x1[0]), float(y1[0]))
    if seg.size == 0:
        return np.zeros(0, dtype=np.int32)
    sx0, sy0, sx1, sy1 = (a[seg] for a in (spatial.seg_x0, spatial.seg_y0, spatial.seg_x1,
                                           spatial.seg_y1))
    meets = ((np.maximum(sx0, sx1) >= x0) & (np.minimum(sx0, sx1) <= x1)
             & (np.maximum(sy0, sy1) >= y0) & (np.minimum(sy0, sy1) <= y1))
    seg, sx0, sy0, sx1, sy1 = (a[meets] for a in (seg, sx0, sy0, sx1, sy1))
    local = shapely.transform(area, lambda xy: np.column_stack(
        spatial.project(xy[:, 1], xy[:, 0])))
    shapely.prepare(local)
    lines = shapely.linestrings(np.stack([np.column_stack([sx0, sy0]),
                                          np.column_stack([sx1, sy1])], axis=1))
    hit = shapely.intersects(local, lines)
    return np.unique(spatial.seg_edge[seg[hit]]).astype(np.int32)


# -- the pool of overlay metrics ----------------------------------------------------------
@dataclass(eq=False)
class _Slot:
    """One overlay metric and what it holds: ``state`` = (source id, weights version,
    signature); ``base`` = its exclude classes (a metric with the same classes is the cheap
    one to bring to a new polygon)."""

    metric: Metric | None = None
    state: tuple[Any, ...] | None = None
    base: tuple[str, ...] | None = None
    used_t: float = 0.0


class AvoidRouter:
    """Routes and tables with closed edges, on a pool of overlay metrics of one :class:`Router`.

    Parameters
    ----------
    router
        The router whose live weights (or profile metrics) the overlays follow, and whose
        snapping and route building they use.
    max_metrics
        Most overlay metrics kept (each about one live metric's memory).
    wait_s
        How long a request waits for a free overlay metric when all are busy before it
        raises ``TimeoutError``.
    full_fraction
        Changed share of the edges above which an overlay is re-customized fully.

    Thread-safe: each request holds its metric exclusively. ``counts`` says how the
    requests' metrics were brought up to date (``new``, ``full``, ``partial``, ``none`` when
    the metric held only float changes, ``cached`` when it already held the request's
    closed set on the current weights).
    """

    def __init__(self, router: Router, *, max_metrics: int = DEFAULT_MAX_METRICS,
                 wait_s: float = 30.0, full_fraction: float = FULL_CUSTOMIZE_FRACTION) -> None:
        if max_metrics < 1:
            raise ValueError(f"max_metrics must be >= 1; got {max_metrics}")
        self.router = router
        self.net = router.net
        self.max_metrics = int(max_metrics)
        self.wait_s = float(wait_s)
        self.full_fraction = float(full_fraction)
        self._cond = threading.Condition(threading.Lock())
        self._free: list[_Slot] = []
        self._n_slots = 0
        self._class_closed: dict[tuple[str, ...], np.ndarray] = {}
        self.counts = {"new": 0, "full": 0, "partial": 0, "none": 0, "cached": 0}
        #: The last request's costs (s): ``closed_s`` (finding edges), ``sync_s``, ``mode``.
        self.last: dict[str, Any] = {}

    # -- public ----------------------------------------------------------------------------
    def route(
        self, from_latlon: tuple[float, float], to_latlon: tuple[float, float], *,
        exclude: Sequence[str] = (), avoid: shapely.Geometry | dict[str, Any] | None = None,
        max_snap_m: float = DEFAULT_SNAP_RADIUS_M, profile: Hashable | None = None,
    ) -> Route:
        """Fastest route that uses no excluded class and no edge meeting ``avoid``.

        ``avoid`` is a shapely (Multi)Polygon in lon/lat or a GeoJSON dict
        (:func:`parse_avoid`). ``profile`` as in :meth:`Router.route`.

        Raises
        ------
        PointInAvoidError
            When an end point lies in ``avoid`` (boundary included).
        NoCandidateError
            When a point has no open road within ``max_snap_m``.
        NoRouteError
            When every route is closed.
        """
        lat = np.array([from_latlon[0], to_latlon[0]], dtype=np.float64)
        lon = np.array([from_latlon[1], to_latlon[1]], dtype=np.float64)
        labels = ("origin", "destination")
        closed, allowed, signature, classes = self._closed(exclude, avoid, lat, lon, labels)
        point, edge, offset = self.router._snap(lat, lon, max_snap_m, labels=labels,
                                                allowed=allowed)
        s, d = point == 0, point == 1
        frac = _fractions(offset, self.net.edge_length_m[edge])
        with self._overlay(closed, signature, classes, profile) as metric:
            res = metric.route_positions(edge[s], frac[s], edge[d], frac[d])
            version = metric.version
        if res is None:
            what = " and ".join(x for x in (
                f"excluding {', '.join(classes)}" if classes else "",
                "avoiding the given area" if avoid is not None else "") if x)
            raise NoRouteError(
                f"no route from (lat={lat[0]:.6f}, lon={lon[0]:.6f}) to (lat={lat[1]:.6f}, "
                f"lon={lon[1]:.6f}) {what} on network {self.net.version}")
        return self.router._build_route(version, res, offset[s][res.src], offset[d][res.dst],
                                        frac[s][res.src], frac[d][res.dst])

    def plan(
        self, points_latlon: Sequence[tuple[float, float]], *, exclude: Sequence[str] = (),
        avoid: shapely.Geometry | dict[str, Any] | None = None,
        max_snap_m: float = DEFAULT_SNAP_RADIUS_M, profile: Hashable | None = None,
        **options: Any,
    ) -> Any:
        """A navigation plan (:func:`graph.navigation.plan_route`: via points, a heading,
        alternatives) that uses no excluded class and no edge meeting ``avoid``.

        ``points_latlon`` is origin, via points..., destination; every one of them must lie
        outside ``avoid``. ``options`` are :func:`~graph.navigation.plan_route`'s
        (``bearing_deg``, ``bearing_range_deg``, ``alternatives``, ``config``). All legs and
        alternatives are searched on one overlay metric, on the calling thread.

        Raises
        ------
        PointInAvoidError, NoCandidateError, NoRouteError
            As :meth:`route`; a leg that cannot be driven is named.
        """
        from graph.navigation import plan_route

        pts = np.asarray(points_latlon, dtype=np.float64).reshape(-1, 2)
        n = pts.shape[0]
        labels = ("origin", *(f"via point {i}" for i in range(1, n - 1)), "destination")
        closed, allowed, signature, classes = self._closed(exclude, avoid, pts[:, 0],
                                                           pts[:, 1], labels)
        try:
            return plan_route(self.router, pts.tolist(), max_snap_m=max_snap_m,
                              allowed=allowed, **options,
                              overlay=lambda: self._overlay(closed, signature, classes, profile))
        except NoRouteError as exc:
            what = " and ".join(x for x in (
                f"excluding {', '.join(classes)}" if classes else "",
                "avoiding the given area" if avoid is not None else "") if x)
            raise NoRouteError(f"{exc} {what}") from None

    def table(
        self, sources_latlon: np.ndarray, destinations_latlon: np.ndarray, *,
        exclude: Sequence[str] = (), avoid: shapely.Geometry | dict[str, Any] | None = None,
        max_snap_m: float = DEFAULT_SNAP_RADIUS_M, profile: Hashable | None = None,
    ) -> np.ndarray:
        """Durations (s, ``inf`` where unreachable) as :meth:`Router.table`, with closed edges."""
        src = _as_points(sources_latlon, "sources_latlon")
        dst = _as_points(destinations_latlon, "destinations_latlon")
        both = np.concatenate([src, dst])
        labels = tuple(f"source point {i}" for i in range(len(src))) + tuple(
            f"destination point {j}" for j in range(len(dst)))
        closed, allowed, signature, classes = self._closed(exclude, avoid, both[:, 0],
                                                           both[:, 1], labels)
        pt, edge, off = self.router._snap(both[:, 0], both[:, 1], max_snap_m, labels=labels,
                                          allowed=allowed)
        frac = _fractions(off, self.net.edge_length_m[edge])
        s = pt < len(src)
        d = ~s
        with self._overlay(closed, signature, classes, profile) as metric:
            return metric.table(pt[s], edge[s], frac[s], len(src), pt[d] - len(src), edge[d],
                                frac[d], len(dst))

    # -- internals -------------------------------------------------------------------------
    def _closed(
        self, exclude: Sequence[str], avoid: shapely.Geometry | dict[str, Any] | None,
        lat: np.ndarray, lon: np.ndarray, labels: tuple[str, ...],
    ) -> tuple[np.ndarray, np.ndarray | None, Hashable, tuple[str, ...]]:
        """``(closed edge ids, allowed mask or None, signature, classes)`` of a request."""
        t0 = time.perf_counter()
        classes = parse_exclude(exclude)
        cls_closed, cls_allowed = self._classes(classes)
        if avoid is None:
            self.last = {"closed_s": time.perf_counter() - t0}
            return cls_closed, cls_allowed, ("classes", classes), classes
        area = avoid if isinstance(avoid, shapely.Geometry) else parse_avoid(avoid)
        inside = points_in_area(area, lat, lon)
        if inside.any():
            i = int(np.argmax(inside))
            raise PointInAvoidError(labels[i], f"the {labels[i]} (lat={lat[i]:.6f}, "
                                               f"lon={lon[i]:.6f}) lies inside the avoided area")
        poly = area_edges(self.router.spatial, area)
        closed = np.union1d(cls_closed, poly).astype(np.int32)
        allowed = np.ones(self.net.n_edges, dtype=bool) if cls_allowed is None else cls_allowed.copy()
        allowed[poly] = False
        digest = hashlib.blake2b(closed.tobytes(), digest_size=16).hexdigest()
        self.last = {"closed_s": time.perf_counter() - t0, "area_edges": int(poly.size)}
        return closed, allowed, ("edges", digest), classes

    def _classes(self, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        """Closed edge ids and allowed mask (None: all) of a class set, computed once."""
        if not classes:
            return np.zeros(0, dtype=np.int32), None
        got = self._class_closed.get(classes)
        if got is None:
            got = np.flatnonzero(excluded_edges(self.net, classes)).astype(np.int32)
            self._class_closed[classes] = got
        allowed = np.ones(self.net.n_edges, dtype=bool)
        allowed[got] = False
        return got, allowed

    @contextmanager
    def _overlay(self, closed: np.ndarray, signature: Hashable, classes: tuple[str, ...],
                 profile: Hashable | None) -> Iterator[Metric]:
        """A metric of the pool holding the source's weights with ``closed`` closed, held
        exclusively for the ``with`` block."""
        slot = self._acquire(signature, classes)
        try:
            t0 = time.perf_counter()
            mode = self._sync(slot, closed, signature, classes, profile)
            self.counts[mode] += 1
            self.last.update(mode=mode, sync_s=time.perf_counter() - t0)
            assert slot.metric is not None
            yield slot.metric
        finally:
            self._release(slot)

    def _sync(self, slot: _Slot, closed: np.ndarray, signature: Hashable,
              classes: tuple[str, ...], profile: Hashable | None) -> str:
        """Bring ``slot``'s metric to the source's current weights with ``closed`` closed;
        the mode (``cached`` when it held exactly that already)."""
        source = self.router._lease(profile)
        try:
            version = source.version
            state = (id(source), version, signature)
            if slot.state == state:
                return "cached"
            slot.state = None  # until the update below completes
            if slot.metric is None:
                tt, _ = metric_weights(source)
                diff = None
            else:
                diff = take_times(slot.metric, source)  # floats now; weights below
        finally:
            source.release()
        try:
            if diff is None:
                tt[closed] = np.inf
                slot.metric = customize(self.router.index, tt, version)
                mode = "new"
            else:
                edges = np.union1d(diff, closed)
                values = slot.metric.travel_time_s[edges]  # a copy (fancy indexing)
                values[np.isin(edges, closed, assume_unique=True)] = np.inf
                # A small update (a polygon) runs in one go: paced chunks would add a sleep,
                # and a reschedule on a busy machine, per chunk to a ~1 ms update.
                pause = 0.0 if edges.size <= UNPACED_EDGES else PARTIAL_PAUSE
                mode = recustomize(slot.metric, edges, values, version,
                                   full_fraction=self.full_fraction, pause=pause)
        except BaseException:
            slot.metric = None  # half-updated: made anew by the next request
            raise
        slot.state, slot.base = state, classes
        return mode

    def _acquire(self, signature: Hashable, classes: tuple[str, ...]) -> _Slot:
        """A free slot: one holding ``signature``, else one with the same classes, else a new
        one (under ``max_metrics``), else the least recently used; waits while all are busy."""
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while True:
                if self._free:
                    slot = self._pick(signature, classes)
                    if slot is not None:
                        self._free.remove(slot)
                        return slot
                if self._n_slots < self.max_metrics:
                    self._n_slots += 1
                    return _Slot()
                if self._free:
                    slot = min(self._free, key=lambda s: s.used_t)
                    self._free.remove(slot)
                    return slot
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"all {self.max_metrics} avoid metrics stayed busy for "
                                       f"{self.wait_s:g} s")
                self._cond.wait(left)

    def _pick(self, signature: Hashable, classes: tuple[str, ...]) -> _Slot | None:
        same = [s for s in self._free if s.state is not None and s.state[2] == signature]
        if same:
            return max(same, key=lambda s: s.used_t)
        near = [s for s in self._free if s.base == classes]
        return max(near, key=lambda s: s.used_t) if near else None

    def _release(self, slot: _Slot) -> None:
        slot.used_t = time.monotonic()
        with self._cond:
            self._free.append(slot)
            self._cond.notify()
