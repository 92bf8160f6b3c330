"""Alternative routes: via-node alternatives over a customized CCH, admissible by construction.

:func:`find_alternatives` follows the via-node approach of Abraham, Delling, Goldberg and
Werneck ("Alternative routes in road networks", 2013): an alternative to the fastest path
``P`` from ``a`` to ``b`` is the concatenation of two fastest paths ``a -> v`` and ``v -> b``
through a *via node* ``v``; it is returned only if it is **admissible**:

* its duration is at most ``max_stretch`` (1.3) times the fastest route's;
* it shares at most ``max_share`` (70 %) of its duration with the fastest route and with every
  alternative already chosen (we require ``shared <= max_share * min(duration of both)``, which
  satisfies every reading of "70 % of its duration");
* it is locally optimal: every sub-path of at most ``local_fraction`` (25 %) of the fastest
  route's duration is a fastest path (exactly, in the millisecond weights RoutingKit routes on,
  so within the rounding of the float weights: 0.5 ms per edge).

**Via-node candidates and their distances.** A nested-dissection order puts the separators of
the network at the top of the CCH order, and every path between two cells crosses the
separator between them; the top ``n_candidates`` nodes of the order are therefore the via
candidates (Liechtenstein: its top separators, NY: the top few thousand of 264k nodes). Their
exact distances from ``a`` and to ``b`` come from two pinned RoutingKit sweeps
(``CCHOneToMany``/``CCHManyToOne``, about 0.3-1 ms each on NY); candidates with
``d(a, v) + d(v, b)`` within the stretch bound are tried shortest first. Each tried candidate
costs two path queries; every candidate that lies on a path already tried (or on the fastest
one) is skipped, since its own via path would be (nearly) the same. At most ``max_tries``
candidates are tried.

**Penalty candidates (fallback).** When the separator candidates give fewer than
``penalty_below`` alternatives, up to ``penalty_rounds`` rounds of the penalty method name more
via candidates: on a request-local scratch metric (a small pool per CCH index, kept between
requests; its first use customizes it fully) the edges of the routes found so far weigh
``penalty`` times their weight (a partial update of the edges penalised before and now), the
fastest path there is taken, and the middle (by duration) of each of its two longest runs
off the known routes is tried as a via node. What comes back is still a via route through
the same admissibility checks below, so nothing is returned on the penalty path's word.

**Local optimality, exactly and cheaply.** Both halves are fastest paths, so only sub-paths
across ``v`` can fail. Every sub-path of duration ``<= T`` starting at node ``i`` lies inside
a window from an *anchor* ``a_k <= i`` with ``cum(i) - cum(a_k) <= step`` to the first node at
least ``T + step`` after ``a_k``; anchors are spaced ``step = window_step * T`` apart over the
``T`` before ``v``. If every window is a fastest path, so is every sub-path of it: about
``1 / window_step + 1`` distance queries prove the criterion (a slightly stronger one: windows
of ``T + step``). The test in the paper (one window of ``2T``) is weaker than the criterion.

Turn restrictions: on a turn-expanded hierarchy the routing nodes are network edges; a window
then ends at any edge into its last node (a fastest path *to that node*, as a node-based
Dijkstra with the turn restrictions sees it).

Cost on NY (1,000 random pairs): see BENCHMARKS.md ("Alternative routes"). Everything runs
within one call on the thread that owns ``queries`` (RoutingKit query objects made here are
dropped here).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import routingkit_cch as rk

from graph.cch import (INF_WEIGHT_MS, MS_PER_S, Metric, PathResult, QueryCache, customize,
                       recustomize, take_times)

__all__ = ["MAX_ALTERNATIVES", "AlternativesConfig", "find_alternatives", "route_shares"]

#: Most alternatives a request may ask for.
MAX_ALTERNATIVES = 3


@dataclass(frozen=True, slots=True)
class AlternativesConfig:
    """Admissibility bounds and search effort of :func:`find_alternatives`."""

    max_share: float = 0.7
    max_stretch: float = 1.3
    local_fraction: float = 0.25
    #: Via candidates: this many nodes from the top of the CCH order (the top separators).
    n_candidates: int = 4096
    #: Via paths tried (two path queries and up to ~6 distance queries each) per request.
    max_tries: int = 12
    #: Anchor spacing of the local-optimality windows, as a share of ``T``.
    window_step: float = 0.25
    #: Candidates within this share of the straight-line start-end distance of a route
    #: already tried (the fastest included) are skipped: their via routes are nearly the same.
    spread: float = 0.05
    #: Penalty rounds (0: none): the routes found so far are made ``penalty`` times slower
    #: on a request-local scratch metric and the fastest path there names via candidates.
    penalty_rounds: int = 2
    penalty: float = 1.5
    #: The penalty rounds run only when the separator candidates gave fewer alternatives
    #: than this (they cost a partial customization of a few hundred edges each).
    penalty_below: int = 1
    #: Scratch metrics kept per CCH index (one per concurrent request; a request finding
    #: none free goes without penalty candidates).
    scratch_metrics: int = 2


def find_alternatives(
    metric: Metric, main: PathResult, src_rem_s: float, dst_pre_s: float, n: int, *,
    config: AlternativesConfig = AlternativesConfig(), queries: QueryCache | None = None,
) -> list[PathResult]:
    """Up to ``n`` admissible alternatives to the fastest path ``main``, best first.

    ``main`` is a :meth:`graph.cch.Metric.route_positions` result (its first and last edges
    driven in part: ``src_rem_s`` from the start position to the end of the first edge,
    ``dst_pre_s`` from the start of the last edge to the end position). Alternatives start
    and end at the same positions (same ``src``/``dst``), with durations in the same float
    seconds as ``main``. A route within one edge has none. Run on the thread owning
    ``queries`` (see :mod:`graph.cch`).
    """
    if n <= 0 or main.edges.size < 2:
        return []
    s = _Search(metric, main, src_rem_s, dst_pre_s, config, queries)
    return s.run(n)


def route_shares(edges_a: np.ndarray, dur_a: np.ndarray, edges_b: np.ndarray) -> float:
    """Duration (s, as driven on route a) of the edges route a shares with route b."""
    common = np.isin(edges_a, edges_b)
    return float(dur_a[common].sum())


def _ms_array(values: list[int | None]) -> np.ndarray:
    """RoutingKit's distances (ms; ``None`` where unreachable) as float64, ``inf`` for None."""
    a = np.array(values, dtype=np.float64)
    a[np.isnan(a)] = np.inf
    return a


_NEIGHBOURS = np.array([dx * 4_000_003 + dy for dx in (-1, 0, 1) for dy in (-1, 0, 1)],
                       dtype=np.int64)


class _Search:
    """One request's state: the fastest path in routing nodes and the accepted routes."""

    def __init__(self, metric: Metric, main: PathResult, src_rem_s: float, dst_pre_s: float,
                 config: AlternativesConfig, queries: QueryCache | None) -> None:
        self.metric, self.main, self.cfg, self.queries = metric, main, config, queries
        idx = metric.index
        self.turn = idx.graph.turn_expanded
        self.t = metric.travel_time_s
        self.ms = metric._edge_ms  # the weights RoutingKit routes on, per edge
        self.src_rem, self.dst_pre = float(src_rem_s), float(dst_pre_s)
        e = main.edges
        self.e0, self.e1 = int(e[0]), int(e[-1])
        if self.turn:
            self.a, self.b = self.e0, self.e1
        else:
            self.a, self.b = int(idx.edge_dst[self.e0]), int(idx.edge_src[self.e1])
        self.max_s = config.max_stretch * main.duration_s
        self.t_ms = config.local_fraction * main.duration_s * MS_PER_S
        self.routes: list[tuple[np.ndarray, np.ndarray, float]] = [self._with_durations(e)]

    # -- the search ------------------------------------------------------------------------
    def run(self, n: int) -> list[PathResult]:
        pins, length = self._candidates()
        seen = np.zeros(pins.size, dtype=bool)
        self._setup_grid(pins)
        self._mark(seen, pins, self._routing_nodes(self.main.edges))
        self._out: list[PathResult] = []
        self._tried: set[int] = set()
        tries = 0
        for k in np.argsort(length, kind="stable"):
            if len(self._out) >= n or tries >= self.cfg.max_tries:
                break
            if seen[k]:
                continue
            tries += 1
            seen[k] = True
            self._try(int(pins[k]), seen, pins)
        if self.cfg.penalty_rounds > 0 and len(self._out) < min(n, self.cfg.penalty_below):
            self._penalty_candidates(n, seen, pins)
        return self._out

    def _try(self, v: int, seen: np.ndarray, pins: np.ndarray) -> np.ndarray | None:
        """Try the via route of ``v``; its edges (``None``: unreachable or tried before)."""
        if v in self._tried:
            return None
        self._tried.add(v)
        found = self._via_path(v)
        if found is None:
            return None
        edges, iv = found
        rnodes = self._routing_nodes(edges)
        if pins.size:
            self._mark(seen, pins, rnodes)
        if any(r[0].size == edges.size and np.array_equal(r[0], edges) for r in self.routes):
            return edges
        res = self._admit(edges, rnodes, iv)
        if res is not None:
            self._out.append(res)
        return edges

    def _penalty_candidates(self, n: int, seen: np.ndarray, pins: np.ndarray) -> None:
        """Via candidates from the penalty method: on a scratch metric, the edges of the
        routes found so far are ``penalty`` times slower; the middle of each detour of the
        fastest path there (the longest first) is tried as a via node (so what is returned
        is still a via route, admissible by the same checks)."""
        slot = _acquire_scratch(self.metric, self.cfg.scratch_metrics)
        if slot is None:
            return
        try:
            factor = np.ones(0)
            pen_edges = np.zeros(0, dtype=np.int64)
            inner = self.main.edges[1:-1].astype(np.int64)
            for _ in range(self.cfg.penalty_rounds):
                if len(self._out) >= n:
                    break
                pen_edges, factor = _merge_penalty(pen_edges, factor, inner, self.cfg.penalty)
                _sync_scratch(slot, self.metric, pen_edges, factor)
                path = self._scratch_path(slot.metric)
                if path is None:
                    break
                inner = path[1:-1]
                vias = self._detour_vias(path)
                if not vias:
                    continue
                for v in vias:
                    if len(self._out) >= n:
                        break
                    got = self._try(v, seen, pins)
                    if got is not None:  # penalise the via route too
                        inner = np.union1d(inner, got[1:-1])
        finally:
            _release_scratch(slot, self.metric.index)

    def _scratch_path(self, scratch: Metric) -> np.ndarray | None:
        """The fastest path ``a -> b`` on ``scratch`` as route edges (start and end included)."""
        path = scratch._run(None, None, self.a, self.b)  # a query object made and dropped here
        if path is None:
            return None
        if self.turn:
            return np.asarray(path, dtype=np.int64)
        return np.asarray([self.e0, *path, self.e1], dtype=np.int64)

    def _detour_vias(self, edges: np.ndarray) -> list[int]:
        """Routing nodes in the middle (by duration) of each run of ``edges`` off every route
        found so far, longest run first."""
        on = np.zeros(edges.size, dtype=bool)
        for r in self.routes:
            on |= np.isin(edges, r[0])
        on[0] = on[-1] = True
        off = ~on
        if not off.any():
            return []
        d = np.diff(np.concatenate([[0], off.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
        t = self.t[edges]
        runs = []
        for i, j in zip(starts.tolist(), ends.tolist()):
            cum = np.cumsum(t[i:j])
            k = i + int(np.searchsorted(cum, cum[-1] / 2))
            node = int(edges[k]) if self.turn else int(self.metric.index.edge_dst[edges[k]])
            runs.append((-float(cum[-1]), node))
        runs.sort()
        return [v for _, v in runs[:2]]

    def _candidates(self) -> tuple[np.ndarray, np.ndarray]:
        """Via candidates within the stretch bound and ``d(a, v) + d(v, b)`` (ms) of each."""
        order = self.metric.index.order
        pins = np.sort(order[-min(self.cfg.n_candidates, order.size):])
        pin_list = pins.tolist()
        fwd = rk.CCHOneToMany(self.metric._metric, pin_list)
        try:
            d_a = _ms_array(fwd.distances_from(self.a))
        finally:
            fwd = None  # dropped on this thread
        bwd = rk.CCHManyToOne(self.metric._metric, pin_list)
        try:
            d_b = _ms_array(bwd.distances_to(self.b))
        finally:
            bwd = None
        length = d_a + d_b
        bound_ms = (self.max_s - self.src_rem - self.dst_pre) * MS_PER_S
        if self.turn:  # d(v, b) counts all of the last edge (b is that edge)
            bound_ms += float(self.ms[self.e1])
        ok = (d_a < INF_WEIGHT_MS) & (d_b < INF_WEIGHT_MS) & (length <= bound_ms)
        return pins[ok], length[ok]

    def _via_path(self, v: int) -> tuple[np.ndarray, int] | None:
        """Edges of the route start -> a -> v -> b -> end and the via node's index among its
        routing nodes (``None``: unreachable).

        Where ``a -> v`` and ``v -> b`` meet before ``v`` (a spike out to ``v`` and back),
        the route is cut at the first node ``x`` of ``a -> v`` that ``v -> b`` also visits:
        ``a -> x`` and ``x -> b`` are fastest paths too (prefix and suffix of fastest paths),
        so the result is the via route of ``x``, without a repeated node.
        """
        p1 = self._path(self.a, v)
        p2 = self._path(v, self.b)
        if p1 is None or p2 is None:
            return None
        n1 = self._nodes_of_half(p1, first=True)
        n2 = self._nodes_of_half(p2, first=False)
        common = np.isin(n1, n2)
        i = int(np.argmax(common))  # first node of a -> v on v -> b (v itself at the latest)
        j = int(np.flatnonzero(n2 == n1[i])[0])
        if self.turn:  # node paths of routing nodes (= edges)
            edges = np.asarray(p1[: i + 1] + p2[j + 1:], dtype=np.int32)
        else:  # arc paths (= edges); node k of a half is the head of its arc k - 1
            edges = np.asarray([self.e0, *p1[:i], *p2[j:], self.e1], dtype=np.int32)
        return edges, i

    def _nodes_of_half(self, path: list[int], *, first: bool) -> np.ndarray:
        """Routing nodes along one half (``a -> v`` or ``v -> b``), both ends included."""
        if self.turn:
            return np.asarray(path, dtype=np.int64)
        dst = self.metric.index.edge_dst
        start = self.a if first else (int(self.metric.index.edge_src[path[0]]) if path else self.b)
        return np.concatenate([[start], dst[np.asarray(path, dtype=np.int64)]]).astype(np.int64)

    def _admit(self, edges: np.ndarray, rnodes: np.ndarray, iv: int) -> PathResult | None:
        route = self._with_durations(edges)
        dur = route[2]
        if dur > self.max_s + 1e-9:
            return None
        share = self.cfg.max_share
        for other_edges, _other_dur, other_total in self.routes:
            shared = route_shares(edges, route[1], other_edges)
            if shared > share * min(dur, other_total):
                return None
        if not self._locally_optimal(edges, rnodes, iv):
            return None
        self.routes.append(route)
        return PathResult(dur, edges, self.main.src, self.main.dst)

    def _locally_optimal(self, edges: np.ndarray, rnodes: np.ndarray, iv: int) -> bool:
        """Whether every window across ``rnodes[iv]`` (see the module docstring) is fastest."""
        # Step k joins routing nodes k and k+1: the arc into the next routing node (an edge
        # when turn-expanded) or the route's core edge (node-based).
        steps_ms = self.ms[edges[1:]] if self.turn else self.ms[edges[1:-1]]
        cum = np.concatenate([[0], np.cumsum(steps_ms, dtype=np.int64)])
        t_ms = self.t_ms
        step = max(self.cfg.window_step * t_ms, 1.0)
        i = int(np.searchsorted(cum, cum[iv] - t_ms, side="right")) - 1
        i = max(i, 0)
        last = cum.size - 1
        while i < iv:
            j = min(int(np.searchsorted(cum, cum[i] + t_ms + step, side="left")), last)
            if j > iv and self._distance(int(rnodes[i]), int(rnodes[j])) < cum[j] - cum[i]:
                return False
            nxt = int(np.searchsorted(cum, cum[i] + step, side="right")) - 1
            i = max(nxt, i + 1)
        return True

    # -- helpers ---------------------------------------------------------------------------
    def _with_durations(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """``(edges, seconds driven on each, total)``; the ends driven in part."""
        d = self.t[edges].astype(np.float64)
        d[0] = self.src_rem
        d[-1] = self.dst_pre
        return edges, d, float(d.sum())

    def _routing_nodes(self, edges: np.ndarray) -> np.ndarray:
        """The routing nodes from ``a`` to ``b`` along a route's edges."""
        if self.turn:
            return np.asarray(edges, dtype=np.int64)
        dst = self.metric.index.edge_dst
        return np.concatenate([[self.a], dst[edges[1:-1]]]).astype(np.int64)

    def _setup_grid(self, pins: np.ndarray) -> None:
        """A grid of cells ``spread`` x the a-b distance wide, and each candidate's cell."""
        g = self.metric.index.graph
        lat0 = float(g.node_lat[self.a])
        self._kx = np.cos(np.radians(lat0))
        dx = (float(g.node_lon[self.b]) - float(g.node_lon[self.a])) * self._kx
        dy = float(g.node_lat[self.b]) - lat0
        self._cell = max(self.cfg.spread * float(np.hypot(dx, dy)), 1e-6)
        self._pin_cells = self._cells(pins)

    def _cells(self, nodes: np.ndarray) -> np.ndarray:
        g = self.metric.index.graph
        cx = np.floor(g.node_lon[nodes] * self._kx / self._cell).astype(np.int64)
        cy = np.floor(g.node_lat[nodes] / self._cell).astype(np.int64)
        return cx * 4_000_003 + cy

    def _mark(self, seen: np.ndarray, pins: np.ndarray, nodes: np.ndarray) -> None:
        """Mark the candidates (``pins``) in or next to a grid cell that ``nodes`` visit."""
        cells = np.unique(self._cells(nodes))
        near = (cells[:, None] + _NEIGHBOURS[None, :]).ravel()
        seen[np.isin(self._pin_cells, near)] = True

    def _path(self, source: int, target: int) -> list[int] | None:
        if source == target:
            return [source] if self.turn else []
        return self.metric._run(None, None, source, target, queries=self.queries)

    def _distance(self, source: int, target: int) -> int:
        """Shortest distance (ms) from routing node ``source`` to ``target``'s network node."""
        q = rk.CCHQuery(self.metric._metric) if self.queries is None else self.queries.query(self.metric)
        if self.turn:
            idx = self.metric.index
            node = int(idx.edge_dst[target])
            ins = idx.in_edge[idx.in_first[node]:idx.in_first[node + 1]].tolist()
            res = q.run_multi([(source, 0)], [(e, 0) for e in ins])
        else:
            res = q.run(source, target)
        dist = res.distance
        del res  # RoutingKit's binding requires it dropped before the next run
        return INF_WEIGHT_MS if dist is None else int(dist)


# -- scratch metrics for the penalty rounds ---------------------------------------------------
class _Scratch:
    """A metric holding a source metric's weights with some edges penalised."""

    __slots__ = ("metric", "key", "edges")

    def __init__(self) -> None:
        self.metric: Metric | None = None
        self.key: tuple[int, str] | None = None  # (id of the source metric, its version)
        self.edges = np.zeros(0, dtype=np.int64)  # edges whose weight differs from the source's


_SCRATCH_LOCK = threading.Lock()
#: id(CCHIndex) -> (the index, free slots, slots made), most recently used last; only the
#: last few indexes are kept (a network swap leaves the old one to be collected).
_SCRATCH: dict[int, tuple[object, list[_Scratch], list[int]]] = {}
_SCRATCH_INDEXES = 2


def _acquire_scratch(metric: Metric, limit: int) -> _Scratch | None:
    index = metric.index
    with _SCRATCH_LOCK:
        entry = _SCRATCH.pop(id(index), None)
        if entry is None or entry[0] is not index:
            entry = (index, [], [0])
        _SCRATCH[id(index)] = entry
        while len(_SCRATCH) > _SCRATCH_INDEXES:
            del _SCRATCH[next(iter(_SCRATCH))]
        _, free, made = entry
        if free:
            return free.pop()
        if made[0] < limit:
            made[0] += 1
            return _Scratch()
        return None


def _release_scratch(slot: _Scratch, index: object) -> None:
    with _SCRATCH_LOCK:
        entry = _SCRATCH.get(id(index))
        if entry is None or entry[0] is not index:
            return
        if slot.metric is None:  # failed half-way: forgotten, a new one may be made
            entry[2][0] -= 1
        else:
            entry[1].append(slot)


def _merge_penalty(edges: np.ndarray, factor: np.ndarray, add: np.ndarray,
                   penalty: float) -> tuple[np.ndarray, np.ndarray]:
    """Penalised edges and their factors after multiplying ``add``'s by ``penalty``."""
    add = np.unique(np.asarray(add, dtype=np.int64))
    out = np.union1d(edges, add)
    f = np.ones(out.size)
    f[np.searchsorted(out, edges)] = factor
    f[np.searchsorted(out, add)] *= penalty
    return out, f


def _sync_scratch(slot: _Scratch, source: Metric, edges: np.ndarray, factor: np.ndarray) -> None:
    """Bring ``slot``'s metric to ``source``'s weights with ``edges`` times ``factor``.

    Only the edges penalised before, now, or changed in the source since are updated
    (a partial customization of a few hundred edges on NY); the first use customizes a new
    metric (about 60-100 ms on NY).
    """
    key = (id(source), source.version)
    try:
        if slot.metric is None:
            tt = np.array(source.travel_time_s)
            tt[edges] = tt[edges] * factor
            slot.metric = customize(source.index, tt, "alternatives-scratch")
        else:
            if slot.key != key:
                slot.key = None
                diff = take_times(slot.metric, source)
                upd = np.union1d(np.union1d(diff, slot.edges), edges)
            else:
                upd = np.union1d(slot.edges, edges)
            values = np.array(source.travel_time_s[upd])
            pos = np.searchsorted(upd, edges)
            values[pos] = values[pos] * factor
            recustomize(slot.metric, upd, values, "alternatives-scratch", pause=0.0)
    except BaseException:
        slot.metric, slot.key = None, None
        raise
    slot.key, slot.edges = key, edges
