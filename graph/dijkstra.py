"""Exact shortest paths over the CSR arrays: the reference (oracle) every faster engine is checked against.

Plain binary-heap Dijkstra in Python (``heapq``) on float travel times in seconds. It is slow
(about a second for a one-to-all search on DIMACS NY) and meant for tests, verification and
small tools, not for serving. Two modes:

* node-based (no turn restrictions): one label per node;
* edge-based (``banned_turns`` given): one label per directed edge, "standing at the head of
  this edge having arrived through it", so a forbidden ``(from_edge, to_edge)`` pair is simply
  never relaxed. U-turns at a node are allowed unless banned, as in the node-based mode.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from graph.network import csr_index

#: ``edge_pred`` value of a seed edge (a search that starts on that edge: it is not traversed).
SEED = -2


class GraphArrays(Protocol):
    """What the searches read: a :class:`graph.network.RoadNetwork` or a :class:`CSRGraph`."""

    edge_src: np.ndarray
    edge_dst: np.ndarray
    out_first: np.ndarray
    out_edge: np.ndarray

    @property
    def n_nodes(self) -> int: ...  # noqa: D102


class CSRGraph(NamedTuple):
    """A bare directed multigraph (loops and parallel edges allowed) in CSR form."""

    n_nodes: int
    edge_src: np.ndarray  # int32[m]
    edge_dst: np.ndarray  # int32[m]
    out_first: np.ndarray  # int32[n + 1]
    out_edge: np.ndarray  # int32[m]


def csr_graph(n_nodes: int, edge_src: np.ndarray, edge_dst: np.ndarray) -> CSRGraph:
    """Build a :class:`CSRGraph` from edge end points (ids ``0..n_nodes-1``)."""
    src = np.ascontiguousarray(edge_src, dtype=np.int32)
    dst = np.ascontiguousarray(edge_dst, dtype=np.int32)
    if src.shape != dst.shape or src.ndim != 1:
        raise ValueError(f"edge_src and edge_dst must be 1-D of equal length; got {src.shape}, {dst.shape}")
    if src.size and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= n_nodes):
        raise ValueError(f"edge end points must lie in 0..{n_nodes - 1}")
    first, item = csr_index(n_nodes, src)
    return CSRGraph(n_nodes, src, dst, first, item)


@dataclass(frozen=True, slots=True, eq=False)
class ShortestPaths:
    """Result of a search: distances (s) and predecessor links to rebuild paths.

    ``dist_s[v]`` is the shortest travel time to node ``v`` (``inf`` when unreachable or not
    settled before the search stopped at its target). ``pred_edge[v]`` is the last edge of that
    path (``-1`` at a source). In edge-based mode ``edge_dist_s[e]`` is the time to stand at
    the head of edge ``e`` having driven through it, and ``edge_pred[e]`` the edge before it
    (``-1`` when ``e`` left a source node, :data:`SEED` when the search started on ``e``).
    """

    dist_s: np.ndarray  # float64[n]
    pred_edge: np.ndarray  # int32[n]
    edge_src: np.ndarray  # int32[m], the graph's edge tails (a reference, for path rebuilding)
    edge_dist_s: np.ndarray | None = None  # float64[m], edge-based mode only
    edge_pred: np.ndarray | None = None  # int32[m], edge-based mode only

    def path_edges(self, node: int) -> np.ndarray:
        """Edges of the shortest path to ``node`` in driving order (empty at a source).

        Raises
        ------
        LookupError
            When ``node`` was not reached.
        """
        if not np.isfinite(self.dist_s[node]):
            raise LookupError(f"node {node} was not reached")
        last = int(self.pred_edge[node])
        if last < 0:
            return np.zeros(0, dtype=np.int32)
        if self.edge_pred is None:
            out = []
            e = last
            while e >= 0:
                out.append(e)
                e = int(self.pred_edge[int(self.edge_src[e])])
            return np.array(out[::-1], dtype=np.int32)
        return self.edge_path(last)

    def edge_path(self, edge: int) -> np.ndarray:
        """Edge-based mode: the edges driven to stand at the head of ``edge`` (seed excluded)."""
        if self.edge_pred is None or self.edge_dist_s is None:
            raise ValueError("edge_path needs an edge-based search (banned_turns given)")
        if not np.isfinite(self.edge_dist_s[edge]):
            raise LookupError(f"edge {edge} was not reached")
        out = []
        e = edge
        while True:
            p = int(self.edge_pred[e])
            if p == SEED:
                break
            out.append(e)
            if p < 0:
                break
            e = p
        return np.array(out[::-1], dtype=np.int32)


def dijkstra(
    net_or_csr: GraphArrays,
    weights_s: np.ndarray,
    source: int,
    target: int | None = None,
    *,
    banned_turns: tuple[np.ndarray, np.ndarray] | None = None,
) -> ShortestPaths:
    """Shortest travel times from ``source`` to every node (or until ``target`` is settled).

    Parameters
    ----------
    net_or_csr
        The graph arrays (a ``RoadNetwork`` or a :class:`CSRGraph`).
    weights_s
        Travel time of each edge (s), finite and ``>= 0``; ``inf`` closes an edge.
    source, target
        Node ids. With ``target`` the search stops once it is settled.
    banned_turns
        ``(from_edge, to_edge)`` pairs that may not be driven in sequence (see
        :func:`graph.network.banned_turns`); switches to the edge-based search.

    Examples
    --------
    >>> g = csr_graph(3, np.array([0, 1, 0]), np.array([1, 2, 2]))
    >>> sp = dijkstra(g, np.array([1.0, 1.0, 5.0]), 0)
    >>> sp.dist_s.tolist(), sp.path_edges(2).tolist()
    ([0.0, 1.0, 2.0], [0, 1])
    """
    return dijkstra_multi(
        net_or_csr, weights_s, np.array([source]), np.array([0.0]), target=target,
        banned_turns=banned_turns,
    )


def dijkstra_multi(
    net_or_csr: GraphArrays,
    weights_s: np.ndarray,
    sources: np.ndarray,
    initial_s: np.ndarray,
    *,
    target: int | None = None,
    banned_turns: tuple[np.ndarray, np.ndarray] | None = None,
    sources_are_edges: bool = False,
) -> ShortestPaths:
    """Multi-source Dijkstra with initial times, e.g. for a route that starts mid-edge.

    With ``sources_are_edges=False`` each source is a node reached at ``initial_s``. With
    ``sources_are_edges=True`` each source is an edge the vehicle is on: the search starts at
    the head of that edge at ``initial_s`` (the caller includes the remaining time on it),
    and in edge-based mode the turns out of that edge obey ``banned_turns``. Source edges are
    not part of the rebuilt paths.
    """
    g = net_or_csr
    n, m = int(g.n_nodes), int(g.edge_src.shape[0])
    w = _check_weights(weights_s, m)
    sources = np.atleast_1d(np.asarray(sources, dtype=np.int64))
    initial = np.atleast_1d(np.asarray(initial_s, dtype=np.float64))
    if sources.shape != initial.shape:
        raise ValueError(f"sources and initial_s differ in length: {sources.shape} vs {initial.shape}")
    limit = m if sources_are_edges else n
    if sources.size and (sources.min() < 0 or sources.max() >= limit):
        raise ValueError(f"source ids must lie in 0..{limit - 1}")
    if banned_turns is None:
        seeds_nodes = g.edge_dst[sources] if sources_are_edges else sources
        res = _node_search(g, w, seeds_nodes, initial, target)
    else:
        res = _edge_search(g, w, sources, initial, target, banned_turns, sources_are_edges)
    return res


def shortest_route_between_positions(
    net_or_csr: GraphArrays,
    weights_s: np.ndarray,
    src_edge: int,
    src_fraction: float,
    dst_edge: int,
    dst_fraction: float,
    *,
    banned_turns: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[float, np.ndarray]:
    """Exact fastest route from a point on one edge to a point on another (reference).

    A position is an edge and the fraction ``0..1`` of its length already behind it. The
    route drives the rest of ``src_edge`` (``(1 - src_fraction)`` of its time), whole edges,
    then the first ``dst_fraction`` of ``dst_edge``; on the same edge with the target ahead
    it drives only the piece between. Returns ``(duration_s, edges)`` with both end edges
    included, or ``(inf, [])`` when unreachable.
    """
    w = _check_weights(weights_s, int(net_or_csr.edge_src.shape[0]))
    best = (np.inf, np.zeros(0, dtype=np.int32))
    if src_edge == dst_edge and dst_fraction >= src_fraction:
        best = ((dst_fraction - src_fraction) * w[src_edge], np.array([src_edge], dtype=np.int32))
    dst_tail = int(net_or_csr.edge_src[dst_edge])
    sp = dijkstra_multi(
        net_or_csr, w, np.array([src_edge]), np.array([(1.0 - src_fraction) * w[src_edge]]),
        target=dst_tail if banned_turns is None else None, banned_turns=banned_turns,
        sources_are_edges=True,
    )
    extra = dst_fraction * w[dst_edge]
    if banned_turns is None:
        d = sp.dist_s[dst_tail] + extra
        if d < best[0]:
            mid = sp.path_edges(dst_tail)
            best = (float(d), np.concatenate([[src_edge], mid, [dst_edge]]).astype(np.int32))
        return best
    preds = _allowed_predecessors(net_or_csr, dst_edge, banned_turns)
    if preds.size:
        dists = np.asarray(sp.edge_dist_s)[preds] + extra
        i = int(np.argmin(dists))
        if dists[i] < best[0]:
            mid = sp.edge_path(int(preds[i]))
            best = (float(dists[i]), np.concatenate([[src_edge], mid, [dst_edge]]).astype(np.int32))
    return best


def _allowed_predecessors(
    g: GraphArrays, edge: int, banned_turns: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Edges entering the tail of ``edge`` from which turning into ``edge`` is allowed."""
    ins = np.flatnonzero(g.edge_dst == g.edge_src[edge]).astype(np.int32)
    frm, to = banned_turns
    banned = np.asarray(frm)[np.asarray(to) == edge]
    return ins[~np.isin(ins, banned)]


def _check_weights(weights_s: np.ndarray, m: int) -> np.ndarray:
    w = np.asarray(weights_s, dtype=np.float64)
    if w.shape != (m,):
        raise ValueError(f"weights_s must have one travel time per edge ({m}); got shape {w.shape}")
    if np.isnan(w).any() or (w < 0).any():
        i = int(np.argmax(np.isnan(w) | (w < 0)))
        raise ValueError(f"weights_s must be >= 0 s (inf closes an edge); edge {i} has {w[i]!r}")
    return w


def _node_search(
    g: GraphArrays, w: np.ndarray, seeds: np.ndarray, initial: np.ndarray, target: int | None
) -> ShortestPaths:
    n = int(g.n_nodes)
    first, out_edge, dst = g.out_first.tolist(), g.out_edge.tolist(), g.edge_dst.tolist()
    wl = w.tolist()
    dist = [float("inf")] * n
    pred = [-1] * n
    done = [False] * n
    heap: list[tuple[float, int]] = []
    for v, d0 in zip(seeds.tolist(), initial.tolist()):
        if d0 < dist[v]:
            dist[v] = d0
            heapq.heappush(heap, (d0, v))
    while heap:
        d, v = heapq.heappop(heap)
        if done[v]:
            continue
        done[v] = True
        if v == target:
            break
        for i in range(first[v], first[v + 1]):
            e = out_edge[i]
            nd = d + wl[e]
            u = dst[e]
            if nd < dist[u]:
                dist[u] = nd
                pred[u] = e
                heapq.heappush(heap, (nd, u))
    dist_a = np.array(dist)
    if target is not None:
        dist_a[~np.array(done, dtype=bool)] = np.inf
    return ShortestPaths(dist_a, np.array(pred, dtype=np.int32), g.edge_src)


def _edge_search(
    g: GraphArrays,
    w: np.ndarray,
    sources: np.ndarray,
    initial: np.ndarray,
    target: int | None,
    banned_turns: tuple[np.ndarray, np.ndarray],
    sources_are_edges: bool,
) -> ShortestPaths:
    n, m = int(g.n_nodes), int(g.edge_src.shape[0])
    first, out_edge, dst = g.out_first.tolist(), g.out_edge.tolist(), g.edge_dst.tolist()
    wl = w.tolist()
    banned: set[tuple[int, int]] = set(
        zip(np.asarray(banned_turns[0]).tolist(), np.asarray(banned_turns[1]).tolist())
    )
    edist = [float("inf")] * m
    epred = [-1] * m
    done = [False] * m
    node_dist = [float("inf")] * n
    node_pred = [-1] * n
    heap: list[tuple[float, int]] = []
    for s, d0 in zip(sources.tolist(), initial.tolist()):
        if sources_are_edges:
            if d0 < edist[s]:
                edist[s], epred[s] = d0, SEED
                heapq.heappush(heap, (d0, s))
        else:
            # Standing at a source node: its out-edges are entered with no turn to check.
            node_dist[s] = min(node_dist[s], d0)
            for i in range(first[s], first[s + 1]):
                e = out_edge[i]
                nd = d0 + wl[e]
                if nd < edist[e]:
                    edist[e], epred[e] = nd, -1
                    heapq.heappush(heap, (nd, e))
    while heap:
        d, e = heapq.heappop(heap)
        if done[e]:
            continue
        done[e] = True
        v = dst[e]
        if d < node_dist[v]:
            node_dist[v] = d
            node_pred[v] = e if epred[e] != SEED else -1
        if v == target:
            break
        for i in range(first[v], first[v + 1]):
            f = out_edge[i]
            if (e, f) in banned:
                continue
            nd = d + wl[f]
            if nd < edist[f]:
                edist[f], epred[f] = nd, e
                heapq.heappush(heap, (nd, f))
    ed = np.array(edist)
    if target is not None:
        ed[~np.array(done, dtype=bool)] = np.inf
    return ShortestPaths(np.array(node_dist), np.array(node_pred, dtype=np.int32), g.edge_src, ed,
                         np.array(epred, dtype=np.int32))
