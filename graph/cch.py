"""Customizable Contraction Hierarchies behind our own interface (RoutingKit via ``routingkit_cch``).

Three phases, as in RoutingKit: :func:`prepare_cch` (once per network version: an
inertial-flow nested-dissection order from coordinates, cached on disk as ``.npy``, then the
metric-independent contraction), :func:`customize` (once per travel-time vector: a new
:class:`Metric`; or :func:`customize_partial` in place when few edges change), and queries on
a metric (:meth:`Metric.route_positions`, :meth:`Metric.route_nodes`, :meth:`Metric.table`).

Threads: a :class:`Metric` may be shared by any threads, but RoutingKit's query objects may
only be used and dropped by the thread that made them; query methods therefore take that
thread's :class:`QueryCache` (or build and drop their own per call). A new metric
(:func:`customize`) holds the GIL while RoutingKit customizes it (about 0.2 s on NY, 4.5 s at
26M edges), and so does a partial update; a full re-customization of an existing metric in
place (``CCHMetric.reset``) releases it. :func:`recustomize` updates a metric in place (the
idle one of a double buffer, see :class:`graph.router.Router`): partially, in chunks of
:data:`PARTIAL_CHUNK_ARCS` arcs so that no chunk holds the GIL long, when at most
:data:`FULL_CUSTOMIZE_FRACTION` of the edges changed, else fully (GIL released). RoutingKit
refuses either while any query object exists on the metric, so a metric counts its users:
the query objects that :class:`QueryCache` holds (``holders``, each with a ``wake`` that asks
its owning thread to drop them) and the queries running on it (``leases``, taken by the
router).

Turn restrictions: when the network has any, the hierarchy is built on the *turn-expanded*
graph, whose nodes are the network's directed edges ("standing at the head of edge ``e``,
having driven it") and whose arcs are the allowed turns ``e -> f`` (weight: the travel time of
``f``). Otherwise it is built on the network itself (arc ``i`` is edge ``i``).

Precision: RoutingKit takes unsigned 32-bit weights. Travel times are converted to whole
**milliseconds** (rounded to nearest); a value of :data:`INF_WEIGHT_MS` or more (about 24.8
days), and ``inf``, mean "closed". A query therefore picks a path that is optimal for the
rounded weights, within 0.5 ms per edge of the float optimum; the duration we report is the
exact float sum of the float travel times along that path.
"""

from __future__ import annotations

import array
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import routingkit_cch as rk

from graph.network import RoadNetwork, banned_turns, csr_index

log = logging.getLogger(__name__)

#: RoutingKit's infinity: weights and path lengths at or above it mean "unreachable".
INF_WEIGHT_MS = 2**31 - 1
MS_PER_S = 1000.0
#: Changed share of the edges above which :func:`recustomize` re-customizes the whole metric
#: (``CCHMetric.reset``, GIL released) instead of updating it partially (chunked, GIL held per
#: chunk). Measured on DIMACS NY (730k edges; benchmarks/publish.py, BENCHMARKS.md): the
#: chunked partial update costs as much compute as a full re-customization at 0.39 % and
#: 0.48 % of the edges in two runs on a loaded 2-core machine (about 60-65 ms each).
FULL_CUSTOMIZE_FRACTION = 0.004
#: Arcs per call of RoutingKit's partial updater: each call holds the GIL, 5-25 ms for 256
#: random arcs on NY on a loaded 2-core machine, so an event loop waiting for the GIL waits
#: about that long at most.
PARTIAL_CHUNK_ARCS = 128
#: After each partial-update call, sleep this many times as long as the call took, so the
#: updater holds the GIL at most ``1 / (1 + PARTIAL_PAUSE)`` of the time and a busy event loop
#: in the same process keeps up (0: no pause, for a router alone in its process).
PARTIAL_PAUSE = 1.0


@dataclass(frozen=True, slots=True, eq=False)
class RoutingGraph:
    """The graph the hierarchy is built on, and how it maps back to network edges.

    ``arc_tail``/``arc_head`` are routing-node ids; ``arc_edge[a]`` is the network edge whose
    travel time arc ``a`` carries. In node-based mode routing nodes are network nodes and
    ``arc_edge`` is the identity. In turn-expanded mode routing node ``e`` is network edge
    ``e`` and ``in_first``/``in_arc`` list the arcs entering each routing node (CSR).
    """

    turn_expanded: bool
    n_nodes: int
    arc_tail: np.ndarray  # int32[a]
    arc_head: np.ndarray  # int32[a]
    arc_edge: np.ndarray  # int32[a]
    in_first: np.ndarray  # int32[n + 1]
    in_arc: np.ndarray  # int32[a]
    node_lat: np.ndarray  # float64[n], for the inertial-flow order
    node_lon: np.ndarray


@dataclass(frozen=True, slots=True, eq=False)
class CCHIndex:
    """A prepared (metric-independent) hierarchy for one network version."""

    network_version: str
    graph: RoutingGraph
    order: np.ndarray  # int32[n], RoutingKit node order
    cch: rk.CCH
    edge_src: np.ndarray  # the network's edge tails and heads (references)
    edge_dst: np.ndarray
    out_first: np.ndarray
    out_edge: np.ndarray
    in_first: np.ndarray  # the network's in-edge CSR (turn-expanded node queries)
    in_edge: np.ndarray
    order_s: float  # seconds spent ordering (0 when read from the cache)
    contract_s: float


def routing_graph(net: RoadNetwork, *, turn_expanded: bool | None = None) -> RoutingGraph:
    """Build the node-based graph, or the turn-expanded one (default: when ``net`` has restrictions).

    The turn-expanded graph has one arc per allowed turn: ``sum(in_degree * out_degree)`` over
    the nodes, minus the banned pairs from :func:`graph.network.banned_turns`.
    """
    frm, to = banned_turns(net)
    if turn_expanded is None:
        turn_expanded = frm.size > 0
    if not turn_expanded:
        tail, head = net.edge_src, net.edge_dst
        arc_edge = np.arange(net.n_edges, dtype=np.int32)
        in_first, in_arc = csr_index(net.n_nodes, head)
        return RoutingGraph(False, net.n_nodes, tail, head, arc_edge, in_first, in_arc,
                            net.node_lat, net.node_lon)
    # Every edge e is followed by every edge leaving its head.
    deg = np.diff(net.out_first)[net.edge_dst].astype(np.int64)
    tail = np.repeat(np.arange(net.n_edges, dtype=np.int64), deg)
    start = np.repeat(net.out_first[net.edge_dst].astype(np.int64) - np.cumsum(deg) + deg, deg)
    head = net.out_edge[start + np.arange(tail.size)].astype(np.int64)
    if frm.size:
        m = np.int64(net.n_edges)
        keep = ~np.isin(tail * m + head, frm.astype(np.int64) * m + to)
        tail, head = tail[keep], head[keep]
    tail32, head32 = tail.astype(np.int32), head.astype(np.int32)
    in_first, in_arc = csr_index(net.n_edges, head32)
    lat = (net.node_lat[net.edge_src] + net.node_lat[net.edge_dst]) / 2
    lon = (net.node_lon[net.edge_src] + net.node_lon[net.edge_dst]) / 2
    return RoutingGraph(True, net.n_edges, tail32, head32, head32, in_first, in_arc, lat, lon)


def prepare_cch(
    net: RoadNetwork, *, cache_dir: str | os.PathLike[str] | None = None,
    turn_expanded: bool | None = None,
) -> CCHIndex:
    """Metric-independent preparation: order the routing graph and contract it.

    The inertial-flow order is the slow part (about 6.6 s on DIMACS NY, one core); with
    ``cache_dir`` it is saved as ``cch-order-<network version>-<node|turn>.npy`` and read
    back on the next start. Contraction itself takes about 0.15 s on NY.
    """
    graph = routing_graph(net, turn_expanded=turn_expanded)
    t0 = time.perf_counter()
    order = None
    path = None
    if cache_dir is not None:
        mode = "turn" if graph.turn_expanded else "node"
        path = Path(cache_dir) / f"cch-order-{net.version}-{mode}.npy"
        order = _read_order(path, graph.n_nodes)
    order_s = 0.0
    if order is None:
        order = np.asarray(
            rk.compute_order_inertial(graph.n_nodes, graph.arc_tail, graph.arc_head,
                                      graph.node_lat, graph.node_lon),
            dtype=np.int32,
        )
        order_s = time.perf_counter() - t0
        if path is not None:
            _write_order(path, order)
    t1 = time.perf_counter()
    cch = rk.CCH(order, graph.arc_tail, graph.arc_head, False)
    return CCHIndex(net.version, graph, order, cch, net.edge_src, net.edge_dst, net.out_first,
                    net.out_edge, net.in_first, net.in_edge, order_s, time.perf_counter() - t1)


def travel_times_to_ms(travel_time_s: np.ndarray) -> np.ndarray:
    """Convert travel times (s) to RoutingKit weights: uint32 milliseconds, rounded.

    ``inf`` and anything at or above :data:`INF_WEIGHT_MS` ms becomes :data:`INF_WEIGHT_MS`
    (closed). Raises ``ValueError`` naming the first NaN or negative entry.
    """
    t = np.asarray(travel_time_s, dtype=np.float64)
    bad = np.isnan(t) | (t < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"travel_time_s must be >= 0 s (inf closes an edge); edge {i} has {t[i]!r}")
    # Clamp before scaling so huge values cannot overflow to a warning.
    ms = np.rint(np.minimum(t, INF_WEIGHT_MS / MS_PER_S) * MS_PER_S)
    return ms.astype(np.uint32)


@dataclass(frozen=True, slots=True, eq=False)
class PathResult:
    """A path between positions: both end edges included (one edge when driven directly).

    ``src``/``dst`` index the candidate arrays given to the query; ``duration_s`` is the exact
    float sum of the metric's travel times along the path, partial end edges included.
    """

    duration_s: float
    edges: np.ndarray  # int32
    src: int
    dst: int


class QueryCache:
    """RoutingKit query objects of **one thread**, one per metric it has queried.

    RoutingKit's query objects hold ``O(n)`` buffers (building one costs about 0.04 ms on NY,
    as much as a query) and may only be used and dropped by the thread that created them. So a
    cache belongs to the thread that made it: use it, :meth:`keep_only` and :meth:`clear` it
    there. :class:`graph.query_threads.QueryThreads` gives each of its threads one. Nothing
    else may hold its entries: a reference taken elsewhere (``gc.get_objects()`` in a test, a
    debugger) may outlive the entry and drop the query object on the wrong thread.
    """

    def __init__(self, wake: Callable[[Metric], None] | None = None) -> None:
        self._entries: dict[int, tuple[Metric, rk.CCHQuery]] = {}
        self._owner = threading.get_ident()
        #: Called (from any thread) by a writer waiting to update a metric this cache holds:
        #: it must make the owning thread call :meth:`drop` soon. ``None``: no way to ask.
        self.wake = wake

    def query(self, metric: Metric) -> rk.CCHQuery:
        """The query object for ``metric``, built on first use."""
        entry = self._entries.get(id(metric))
        if entry is None or entry[0] is not metric:
            if entry is not None:
                self._drop_key(id(metric))
            entry = (metric, rk.CCHQuery(metric._metric))
            self._entries[id(metric)] = entry
            metric._add_holder(self)
        return entry[1]

    def keep_only(self, metrics: tuple[Metric, ...]) -> None:
        """Drop the query objects of every metric not in ``metrics``."""
        keep = {id(m) for m in metrics}
        for key in [k for k in self._entries if k not in keep]:
            self._drop_key(key)

    def drop(self, metric: Metric) -> None:
        """Drop the query object of ``metric`` (if any); on the owning thread."""
        entry = self._entries.get(id(metric))
        if entry is not None and entry[0] is metric:
            self._drop_key(id(metric))

    def clear(self) -> None:
        """Drop every query object."""
        for key in list(self._entries):
            self._drop_key(key)

    def ask_drop(self, metric: Metric) -> None:
        """Ask the owner to drop ``metric``'s query object: at once on the owning thread, else
        through :attr:`wake` (nothing without one)."""
        if threading.get_ident() == self._owner:
            self.drop(metric)
        elif self.wake is not None:
            self.wake(metric)

    def _drop_key(self, key: int) -> None:
        metric, q = self._entries.pop(key)
        del q  # the query object goes here, on this (the owning) thread
        metric._remove_holder(self)

    def __len__(self) -> int:
        return len(self._entries)


class Metric:
    """A customized hierarchy: one travel-time vector on one :class:`CCHIndex`.

    Immutable to its users: only :func:`recustomize` changes it, in place, and only while
    nobody uses it (no query running on it, no query object on it; see the module docstring).
    Query methods take ``queries`` (the calling thread's :class:`QueryCache`) to reuse query
    objects; without it each call builds and drops its own (about 0.07 ms more on NY).
    ``customize_s`` is the time RoutingKit took; ``convert_s`` the float-to-weights conversion;
    ``mode`` how the last (re)customization ran: ``"new"``, ``"full"``, ``"partial"``,
    ``"none"`` (nothing changed).
    """

    def __init__(self, index: CCHIndex, travel_time_s: np.ndarray, version: str) -> None:
        m = index.edge_src.shape[0]
        t = np.array(travel_time_s, dtype=np.float64)  # own copy: the caller may reuse its buffer
        if t.shape != (m,):
            raise ValueError(f"travel_time_s must have one entry per edge ({m}); got shape {t.shape}")
        t0 = time.perf_counter()
        edge_ms = travel_times_to_ms(t)
        g = index.graph
        weights = _weights_arg(edge_ms[g.arc_edge] if g.turn_expanded else edge_ms)
        t1 = time.perf_counter()
        self._metric = rk.CCHMetric(index.cch, weights)
        self.customize_s = time.perf_counter() - t1
        self.convert_s = t1 - t0
        self.index = index
        self._set_times(t)
        self.version = version
        self._edge_ms = edge_ms  # what RoutingKit holds, per edge (for partial updates)
        self.mode = "new"
        self.changed_edges = m
        self._init_usage()

    def _set_times(self, t: np.ndarray) -> None:
        """Own ``t`` (writable, for :func:`recustomize`) and expose a read-only view of it."""
        self._tt = t
        view = t.view()
        view.setflags(write=False)
        self.travel_time_s = view

    # -- users (see the module docstring) ---------------------------------------------------
    def _init_usage(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._leases = 0
        self._holders: dict[int, QueryCache] = {}

    def _add_holder(self, cache: QueryCache) -> None:
        with self._cond:
            self._holders[id(cache)] = cache

    def _remove_holder(self, cache: QueryCache) -> None:
        with self._cond:
            self._holders.pop(id(cache), None)
            self._cond.notify_all()

    def lease(self) -> None:
        """Count a query running on this metric (pair with :meth:`release`)."""
        with self._cond:
            self._leases += 1

    def release(self) -> None:
        """End a query counted by :meth:`lease`."""
        with self._cond:
            self._leases -= 1
            if not self._leases:
                self._cond.notify_all()

    def in_use(self) -> bool:
        """Whether a query runs on this metric or a query object exists on it (that we know of)."""
        with self._cond:
            return bool(self._leases or self._holders)

    def wait_unused(self, timeout_s: float, *, poll_s: float = 0.02) -> bool:
        """Wait until :meth:`in_use` is false, asking the holders' threads to drop their query
        objects (every ``poll_s``); whether it became unused within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._cond:
                if not (self._leases or self._holders):
                    return True
                holders = list(self._holders.values())
            for cache in holders:
                cache.ask_drop(self)
            left = deadline - time.monotonic()
            if left <= 0:
                return not self.in_use()
            with self._cond:
                if self._leases or self._holders:
                    self._cond.wait(min(poll_s, left))

    # -- positions -------------------------------------------------------------------------
    def route_positions(
        self, src_edges: np.ndarray, src_fraction: np.ndarray,
        dst_edges: np.ndarray, dst_fraction: np.ndarray, *, queries: QueryCache | None = None,
    ) -> PathResult | None:
        """Fastest path from any source position to any target position (``None``: none).

        A position is an edge and the fraction ``0..1`` of it behind the point. Several
        candidates per end (e.g. both directions of a two-way road) are searched at once.
        """
        t = self.travel_time_s
        src_edges = np.asarray(src_edges)
        dst_edges = np.asarray(dst_edges)
        src_rem = (1.0 - np.asarray(src_fraction)) * t[src_edges]
        dst_pre = np.asarray(dst_fraction) * t[dst_edges]
        best: PathResult | None = self._direct(src_edges, src_fraction, dst_edges, dst_fraction)
        s_nodes, s_ms = self._source_pairs(src_edges, src_rem)
        d_nodes, d_ms, d_cand = self._target_pairs(dst_edges, dst_pre)
        if s_nodes.size and d_nodes.size:
            u_nodes, u_ms = _min_per_node(d_nodes, d_ms)
            found = self._run(list(zip(s_nodes.tolist(), s_ms.tolist())),
                              list(zip(u_nodes.tolist(), u_ms.tolist())), queries=queries)
            if found is not None:
                g = self.index.graph
                if g.turn_expanded:
                    first, last = found[0], found[-1]
                    mid = np.asarray(found[1:], dtype=np.int32)
                    si = int(np.flatnonzero(src_edges == first)[np.argmin(src_rem[src_edges == first])])
                    sel = np.flatnonzero(d_nodes == last)
                    di = int(d_cand[sel[np.argmin(d_ms[sel])]])
                else:
                    mid = np.asarray(found, dtype=np.int32)
                    if mid.size:
                        first, last = self.index.edge_src[mid[0]], self.index.edge_dst[mid[-1]]
                    else:  # source and target routing node coincide
                        first = last = _meeting_node(s_nodes, s_ms, u_nodes, u_ms)
                    heads = self.index.edge_dst[src_edges]
                    sel = np.flatnonzero(heads == first)
                    si = int(sel[np.argmin(src_rem[sel])])
                    tails = self.index.edge_src[dst_edges]
                    sel = np.flatnonzero(tails == last)
                    di = int(sel[np.argmin(dst_pre[sel])])
                dur = float(src_rem[si] + t[mid].sum() + dst_pre[di])
                if best is None or dur < best.duration_s:
                    edges = np.empty(mid.size + 2, dtype=np.int32)
                    edges[0], edges[1:-1], edges[-1] = src_edges[si], mid, dst_edges[di]
                    best = PathResult(dur, edges, si, di)
        return best

    def route_nodes(
        self, source: int, target: int, *, queries: QueryCache | None = None
    ) -> PathResult | None:
        """Fastest path from network node ``source`` to ``target`` (``None``: unreachable).

        ``edges`` holds the driven edges only (empty when ``source == target``); ``src`` and
        ``dst`` are 0.
        """
        idx = self.index
        if source == target:
            return PathResult(0.0, np.zeros(0, dtype=np.int32), 0, 0)
        if not idx.graph.turn_expanded:
            found = self._run(None, None, source, target, queries=queries)
            if found is None:
                return None
            edges = np.asarray(found, dtype=np.int32)
        else:
            outs = idx.out_edge[idx.out_first[source]:idx.out_first[source + 1]]
            ins = idx.in_edge[idx.in_first[target]:idx.in_first[target + 1]]
            if outs.size == 0 or ins.size == 0:
                return None
            s_ms = travel_times_to_ms(self.travel_time_s[outs])
            found = self._run(list(zip(outs.tolist(), s_ms.tolist())), [(e, 0) for e in ins.tolist()],
                              queries=queries)
            if found is None:
                return None
            edges = np.asarray(found, dtype=np.int32)
        return PathResult(float(self.travel_time_s[edges].sum()), edges, 0, 0)

    def table(
        self,
        src_point: np.ndarray, src_edges: np.ndarray, src_fraction: np.ndarray, n_src: int,
        dst_point: np.ndarray, dst_edges: np.ndarray, dst_fraction: np.ndarray, n_dst: int,
        *, queries: QueryCache | None = None,
    ) -> np.ndarray:
        """Durations (s, float64 ``[n_src, n_dst]``, ``inf`` where unreachable) between positions.

        Candidates are flat arrays (``*_point`` says which point each belongs to, sorted).
        One RoutingKit sweep per point of the smaller side against the other side's routing
        nodes, pinned once: one-to-many from each source when ``n_src <= n_dst``, else
        many-to-one towards each destination. Precision is that of the millisecond weights
        (0.5 ms per edge). ``queries`` is accepted for symmetry; the pinned query object is
        built and dropped within the call.
        """
        t = self.travel_time_s
        src_rem = (1.0 - src_fraction) * t[src_edges]
        dst_pre = dst_fraction * t[dst_edges]
        s_nodes, s_ms, s_cand = self._source_seeds(src_edges, src_rem)
        d_nodes, d_ms, d_cand = self._target_pairs(dst_edges, dst_pre)
        s_pt, d_pt = src_point[s_cand], dst_point[d_cand]
        if n_src <= n_dst:
            out = self._sweeps(rk.CCHOneToMany, d_nodes, d_ms, d_pt, n_dst, s_nodes, s_ms, s_pt, n_src)
        else:
            out = self._sweeps(rk.CCHManyToOne, s_nodes, s_ms, s_pt, n_src, d_nodes, d_ms, d_pt, n_dst).T
        # Same-edge pairs driven directly (target ahead on the source's edge).
        same = src_edges[:, None] == dst_edges[None, :]
        ahead = same & (dst_fraction[None, :] >= src_fraction[:, None])
        if ahead.any():
            si, di = np.nonzero(ahead)
            direct = (dst_fraction[di] - src_fraction[si]) * t[src_edges[si]]
            np.minimum.at(out, (src_point[si], dst_point[di]), direct)
        return np.ascontiguousarray(out)

    # -- internals -------------------------------------------------------------------------
    def _direct(self, se: np.ndarray, sf: np.ndarray, de: np.ndarray, df: np.ndarray) -> PathResult | None:
        same = (se[:, None] == de[None, :]) & (np.asarray(df)[None, :] >= np.asarray(sf)[:, None])
        if not same.any():
            return None
        si, di = np.nonzero(same)
        dur = (np.asarray(df)[di] - np.asarray(sf)[si]) * self.travel_time_s[se[si]]
        k = int(np.argmin(dur))
        return PathResult(float(dur[k]), np.array([se[si[k]]], dtype=np.int32), int(si[k]), int(di[k]))

    def _sweeps(
        self, kind: type, pin_nodes: np.ndarray, pin_ms: np.ndarray, pin_point: np.ndarray,
        n_pin_points: int, seed_nodes: np.ndarray, seed_ms: np.ndarray, seed_point: np.ndarray,
        n_seed_points: int,
    ) -> np.ndarray:
        """Best durations (s) ``[n_seed_points, n_pin_points]``: one sweep per seed point.

        ``kind`` is ``rk.CCHOneToMany`` (seeds are sources, pins targets) or
        ``rk.CCHManyToOne`` (seeds are targets, pins sources). Pinned nodes carry no initial
        distance in RoutingKit, so ``pin_ms`` is added afterwards per candidate; candidates of
        one point are then reduced to their minimum (``pin_point`` is sorted).
        """
        out = np.full((n_seed_points, n_pin_points), np.inf)
        if pin_nodes.size == 0 or seed_nodes.size == 0:
            return out
        pins, pin_of = np.unique(pin_nodes, return_inverse=True)
        k_pt, k_node, k_ms = _min_per_point_node(seed_point, seed_nodes, seed_ms)
        pairs = list(zip(k_node.tolist(), k_ms.tolist()))
        bounds = np.searchsorted(k_pt, np.arange(n_seed_points + 1))
        rows = np.flatnonzero(bounds[1:] > bounds[:-1])
        lo, hi = bounds[rows].tolist(), bounds[rows + 1].tolist()
        sweeper = kind(self._metric, pins.tolist())
        try:
            run = sweeper.distances_from_multi if kind is rk.CCHOneToMany else sweeper.distances_to_multi
            dist = np.array([run(pairs[a:b]) for a, b in zip(lo, hi)], dtype=np.float64)
        finally:
            run = sweeper = None  # dropped here, on the thread that made it
        dist = dist.reshape(rows.size, pins.size)
        cand = dist[:, pin_of] + pin_ms.astype(np.float64)
        cand[np.isnan(cand)] = np.inf
        pts, starts = np.unique(pin_point, return_index=True)
        out[np.ix_(rows, pts)] = np.minimum.reduceat(cand, starts, axis=1) / MS_PER_S
        return out

    def _source_seeds(
        self, src_edges: np.ndarray, src_rem_s: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Routing node, ms to reach it, and candidate index of each usable source candidate."""
        nodes = src_edges if self.index.graph.turn_expanded else self.index.edge_dst[src_edges]
        ms = travel_times_to_ms(src_rem_s)
        ok = np.flatnonzero(ms < INF_WEIGHT_MS)
        return np.asarray(nodes)[ok], ms[ok], ok

    def _source_pairs(self, src_edges: np.ndarray, src_rem_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nodes = src_edges if self.index.graph.turn_expanded else self.index.edge_dst[src_edges]
        ms = travel_times_to_ms(src_rem_s)
        ok = ms < INF_WEIGHT_MS
        return _min_per_node(np.asarray(nodes)[ok], ms[ok])

    def _target_pairs(
        self, dst_edges: np.ndarray, dst_pre_s: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Routing nodes to reach for each target candidate, their extra ms, and the candidate."""
        ms = travel_times_to_ms(dst_pre_s)
        g = self.index.graph
        if not g.turn_expanded:
            ok = ms < INF_WEIGHT_MS
            return self.index.edge_src[dst_edges][ok], ms[ok], np.flatnonzero(ok)
        # Turn-expanded: stand at the head of any edge from which turning into the target is allowed.
        counts = g.in_first[dst_edges + 1] - g.in_first[dst_edges]
        cand = np.repeat(np.arange(dst_edges.size), counts)
        start = np.repeat(g.in_first[dst_edges] - np.cumsum(counts) + counts, counts)
        arcs = g.in_arc[start + np.arange(cand.size)]
        ok = ms[cand] < INF_WEIGHT_MS
        return g.arc_tail[arcs][ok], ms[cand][ok], cand[ok]

    def _run(
        self, sources: list[tuple[int, int]] | None, targets: list[tuple[int, int]] | None,
        source: int = -1, target: int = -1, *, queries: QueryCache | None = None,
    ) -> list[int] | None:
        """Run one query; return the arc path (node-based) or node path (turn-expanded)."""
        q = rk.CCHQuery(self._metric) if queries is None else queries.query(self)
        res = q.run(source, target) if sources is None else q.run_multi(sources, targets)
        # RoutingKit's binding requires the result to be dropped before the next run.
        # Only the path we need: each getter converts a whole path to a Python list.
        dist = res.distance
        path = None if dist is None else (
            res.node_path if self.index.graph.turn_expanded else res.arc_path)
        del res
        return path


def _weights_arg(arc_ms: np.ndarray) -> array.array:
    """uint32 weights in the form RoutingKit's binding reads fastest.

    The binding converts any sequence element by element; an ``array.array`` of C unsigned
    ints hands out plain ints and is built from the NumPy buffer in one copy (NY: about 60 ms
    for conversion + customization, against 80 ms from a NumPy array and 70 ms via a list).
    """
    out = array.array("I")
    if out.itemsize != 4:  # pragma: no cover - every platform we run on has 4-byte unsigned int
        return array.array("L", np.ascontiguousarray(arc_ms, dtype=np.uint32).tolist())
    out.frombytes(np.ascontiguousarray(arc_ms, dtype=np.uint32).tobytes())
    return out


def _meeting_node(s_nodes: np.ndarray, s_ms: np.ndarray, t_nodes: np.ndarray, t_ms: np.ndarray) -> int:
    """The node a zero-arc path uses: in both seed sets, with the least initial sum."""
    common, si, ti = np.intersect1d(s_nodes, t_nodes, return_indices=True)
    return int(common[np.argmin(s_ms[si].astype(np.int64) + t_ms[ti])])


def _min_per_point_node(
    point: np.ndarray, nodes: np.ndarray, ms: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ``(point, node, ms)`` per point and node, the smallest ms; sorted by point."""
    order = np.lexsort((ms, nodes, point))
    point, nodes, ms = point[order], nodes[order], ms[order]
    first = np.ones(point.size, dtype=bool)
    first[1:] = (point[1:] != point[:-1]) | (nodes[1:] != nodes[:-1])
    return point[first], nodes[first], ms[first]


def _min_per_node(nodes: np.ndarray, ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep one ``(node, ms)`` pair per node, the smallest (RoutingKit expects distinct seeds)."""
    if nodes.size < 2:
        return nodes, ms
    order = np.lexsort((ms, nodes))
    nodes, ms = nodes[order], ms[order]
    first = np.ones(nodes.size, dtype=bool)
    first[1:] = nodes[1:] != nodes[:-1]
    return nodes[first], ms[first]


def customize(index: CCHIndex, travel_time_s: np.ndarray, version: str) -> Metric:
    """Customize ``index`` with a travel-time vector (s per edge) into a new :class:`Metric`.

    About 60-80 ms on DIMACS NY (one core). The old metric stays valid, so a server can keep
    answering on it and swap once this returns.
    """
    return Metric(index, travel_time_s, version)


def customize_partial(metric: Metric, travel_time_s: np.ndarray, version: str) -> Metric:
    """Re-customize ``metric`` **in place** for the edges whose weight changed; a new :class:`Metric`.

    RoutingKit's partial updater recomputes only the shortcuts above the changed arcs (see
    :func:`recustomize`; here always partial). The old ``metric`` is consumed (its queries
    raise afterwards) and **no query object may be alive on it** in any thread (RoutingKit
    refuses with a panic), so this suits a single owner; :class:`graph.router.Router`
    double-buffers with :func:`recustomize` instead.
    """
    if metric._metric is None:
        raise ValueError(f"metric {metric.version!r} was already consumed by a partial update")
    m = metric.index.edge_src.shape[0]
    t = np.asarray(travel_time_s, dtype=np.float64)
    if t.shape != (m,):
        raise ValueError(f"travel_time_s must have one entry per edge ({m}); got shape {t.shape}")
    edges = np.flatnonzero(travel_times_to_ms(t) != metric._edge_ms).astype(np.int32)
    new = Metric.__new__(Metric)
    new._metric, new.index, new.version = metric._metric, metric.index, metric.version
    new._edge_ms = metric._edge_ms
    new._set_times(np.array(t, dtype=np.float64))  # the float values of unchanged-ms edges too
    new._init_usage()
    recustomize(new, edges, t[edges], version, full_fraction=math.inf)
    metric._metric = None
    return new


def recustomize(
    metric: Metric, edges: np.ndarray, travel_time_s: np.ndarray, version: str, *,
    full_fraction: float = FULL_CUSTOMIZE_FRACTION, chunk_arcs: int = PARTIAL_CHUNK_ARCS,
    pause: float = PARTIAL_PAUSE,
) -> str:
    """Set the travel times of ``edges`` to ``travel_time_s`` and re-customize ``metric`` in place.

    ``edges`` (int, distinct) and ``travel_time_s`` (s, one per edge listed) say what changed;
    the rest keeps its times. When the edges whose **millisecond weight** changed are at most
    ``full_fraction`` of all, RoutingKit's partial updater runs on their arcs in calls of
    ``chunk_arcs`` (each holds the GIL; after each the thread sleeps ``pause`` times as long
    as the call took, letting other threads run); above it the whole metric is re-customized with
    ``CCHMetric.reset`` (GIL released, buffers reused). Both give the same metric as a new
    :func:`customize` of the resulting vector. Returns the mode (``"partial"``, ``"full"`` or
    ``"none"``) and sets ``metric.mode``, ``metric.changed_edges``, ``metric.customize_s``
    and ``metric.convert_s``.

    Raises ``RuntimeError`` when the metric is in use (:meth:`Metric.in_use`; RoutingKit would
    panic) and ``ValueError`` for bad input (checked before anything changes).
    """
    if metric._metric is None:
        raise ValueError(f"metric {metric.version!r} was already consumed by a partial update")
    if metric.in_use():
        raise RuntimeError(f"metric {metric.version!r} is in use by queries; it cannot be "
                           f"re-customized in place")
    index = metric.index
    m = index.edge_src.shape[0]
    edges = np.asarray(edges)
    values = np.asarray(travel_time_s, dtype=np.float64)
    if edges.ndim != 1 or values.shape != edges.shape:
        raise ValueError(f"edges and travel_time_s must be 1-D of equal length; got shapes "
                         f"{edges.shape} and {values.shape}")
    if edges.size and (edges.dtype.kind not in "iu" or edges.min() < 0 or edges.max() >= m):
        raise ValueError(f"edges must be edge ids in [0, {m}); got dtype {edges.dtype}, range "
                         f"[{edges.min()}, {edges.max()}]")
    t0 = time.perf_counter()
    new_ms = travel_times_to_ms(values)  # validates the values too
    metric._tt[edges] = values
    changed = new_ms != metric._edge_ms[edges]
    edges, new_ms = edges[changed], new_ms[changed]
    metric._edge_ms[edges] = new_ms
    metric.version = version
    metric.changed_edges = int(edges.size)
    g = index.graph
    if edges.size == 0:
        metric.mode, metric.convert_s, metric.customize_s = "none", time.perf_counter() - t0, 0.0
        return metric.mode
    if edges.size > full_fraction * m:
        weights = _weights_arg(metric._edge_ms[g.arc_edge] if g.turn_expanded else metric._edge_ms)
        t1 = time.perf_counter()
        metric._metric.reset(weights)  # releases the GIL while it customizes
        metric.mode = "full"
    else:
        if g.turn_expanded:  # arc a carries the time of its head edge: the arcs entering node e
            counts = g.in_first[edges + 1] - g.in_first[edges]
            start = np.repeat(g.in_first[edges] - np.cumsum(counts) + counts, counts)
            arcs = g.in_arc[start + np.arange(int(counts.sum()))]
        else:
            arcs = edges
        arc_ms = metric._edge_ms[g.arc_edge[arcs]]
        arcs_l, ms_l = arcs.tolist(), arc_ms.tolist()
        t1 = time.perf_counter()
        updater = rk.CCHMetricPartialUpdater(index.cch)  # unsendable: made and used here
        step = max(1, int(chunk_arcs))
        busy = 0.0
        for a in range(0, len(arcs_l), step):
            c0 = time.perf_counter()
            updater.apply(metric._metric, dict(zip(arcs_l[a:a + step], ms_l[a:a + step])))
            took = time.perf_counter() - c0
            busy += took
            if pause > 0 and a + step < len(arcs_l):
                # Let a thread waiting for the GIL (an event loop) run. Not with pause=0:
                # even sleep(0) gives up the CPU, a few ms on a busy machine.
                time.sleep(took * pause)
        del updater
        metric.mode = "partial"
        metric.convert_s, metric.customize_s = t1 - t0, busy  # compute time, pauses excluded
        return metric.mode
    metric.convert_s, metric.customize_s = t1 - t0, time.perf_counter() - t1
    return metric.mode


def metric_weights(metric: Metric) -> tuple[np.ndarray, np.ndarray]:
    """Copies of ``metric``'s travel times (s, float64) and millisecond weights (uint32).

    Hold a lease on ``metric`` (:meth:`Metric.lease`) while calling this when it may be
    re-customized meanwhile (a router's live metric). O(edges); on NY about 1 ms.
    """
    return np.array(metric._tt), np.array(metric._edge_ms)


def take_times(metric: Metric, source: Metric) -> np.ndarray:
    """Copy ``source``'s float travel times into ``metric`` in place; return the edges whose
    millisecond weight differs between the two (sorted), for :func:`recustomize`.

    Afterwards ``metric`` answers durations with ``source``'s floats but still routes on its
    old weights until ``recustomize(metric, edges, ...)`` runs on the returned edges (with
    any further changes merged in). Nobody may use ``metric`` meanwhile; hold a lease on
    ``source`` for the call. Two O(edges) passes and no allocation of edge-sized arrays
    (besides a bool mask): on NY about 1-2 ms.
    """
    if metric.index is not source.index:
        raise ValueError("both metrics must customize the same CCHIndex")
    diff = np.flatnonzero(source._edge_ms != metric._edge_ms)
    np.copyto(metric._tt, source._tt)
    return diff


def _read_order(path: Path, n: int) -> np.ndarray | None:
    try:
        order = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        if path.exists():
            log.warning("ignoring unreadable CCH order cache %s: %s", path, exc)
        return None
    if order.shape != (n,) or order.dtype != np.int32:
        log.warning("ignoring CCH order cache %s: shape %s dtype %s", path, order.shape, order.dtype)
        return None
    return order


def _write_order(path: Path, order: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, order, allow_pickle=False)
    os.replace(tmp, path)
