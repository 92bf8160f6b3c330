"""The exact reference: Dijkstra over CSR arrays against networkx, and turn restrictions by hand."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from graph.dijkstra import csr_graph, dijkstra, dijkstra_multi, shortest_route_between_positions


def _random_multigraph(seed: int, n: int = 40, m: int = 120):
    """Random directed multigraph with loops, parallel edges, zero weights and an unreachable part."""
    rng = np.random.default_rng(seed)
    core = n - 5  # nodes core..n-1 only have edges among themselves: a disconnected part
    src = rng.integers(0, core, m)
    dst = rng.integers(0, core, m)
    src = np.concatenate([src, [3, 3, 7, core, core + 1]])
    dst = np.concatenate([dst, [3, 9, 9, core + 1, core + 2]])  # a loop, parallel candidates
    w = rng.exponential(10.0, src.size)
    w[rng.random(src.size) < 0.1] = 0.0
    return csr_graph(n, src, dst), w


def _nx_graph(g, w) -> nx.DiGraph:
    # networkx DiGraph keeps one edge per pair: the cheapest of the parallel ones.
    G = nx.DiGraph()
    G.add_nodes_from(range(g.n_nodes))
    for e, (a, b) in enumerate(zip(g.edge_src.tolist(), g.edge_dst.tolist())):
        if not G.has_edge(a, b) or G[a][b]["weight"] > w[e]:
            G.add_edge(a, b, weight=float(w[e]))
    return G


def _path_cost(g, w, edges, source):
    v = source
    for e in edges:
        assert g.edge_src[e] == v, f"edge {e} does not leave node {v}"
        v = int(g.edge_dst[e])
    return float(w[edges].sum()), v


@pytest.mark.parametrize("seed", range(8))
def test_dijkstra_matches_networkx_on_random_multigraphs(seed):
    g, w = _random_multigraph(seed)
    G = _nx_graph(g, w)
    for source in (0, 5, g.n_nodes - 1):
        sp = dijkstra(g, w, source)
        ref = nx.single_source_dijkstra_path_length(G, source)
        for v in range(g.n_nodes):
            if v in ref:
                assert sp.dist_s[v] == pytest.approx(ref[v], abs=1e-9), f"node {v}"
                cost, end = _path_cost(g, w, sp.path_edges(v), source)
                assert end == v and cost == pytest.approx(sp.dist_s[v], abs=1e-9)
            else:
                assert np.isinf(sp.dist_s[v]), f"node {v} should be unreachable"


@pytest.mark.parametrize("seed", range(4))
def test_dijkstra_target_stops_with_exact_distance(seed):
    g, w = _random_multigraph(seed)
    full = dijkstra(g, w, 1)
    for t in range(g.n_nodes):
        sp = dijkstra(g, w, 1, t)
        assert sp.dist_s[t] == full.dist_s[t]


def test_dijkstra_multi_matches_networkx_super_source():
    g, w = _random_multigraph(11)
    G = _nx_graph(g, w)
    sources, init = np.array([2, 8, 13]), np.array([5.0, 0.0, 2.5])
    for s, d in zip(sources, init):
        G.add_edge("S", int(s), weight=float(d))
    ref = nx.single_source_dijkstra_path_length(G, "S")
    sp = dijkstra_multi(g, w, sources, init)
    for v in range(g.n_nodes):
        assert sp.dist_s[v] == pytest.approx(ref.get(v, np.inf), abs=1e-9)


def test_dijkstra_edge_based_without_bans_equals_node_based():
    g, w = _random_multigraph(3)
    empty = (np.zeros(0, np.int32), np.zeros(0, np.int32))
    a, b = dijkstra(g, w, 0), dijkstra(g, w, 0, banned_turns=empty)
    np.testing.assert_allclose(a.dist_s, b.dist_s, atol=1e-9)
    for v in np.flatnonzero(np.isfinite(b.dist_s)):
        cost, end = _path_cost(g, w, b.path_edges(int(v)), 0)
        assert end == v and cost == pytest.approx(b.dist_s[v], abs=1e-9)


def _junction():
    """A plus-shaped junction: centre 0, arms W=1, E=2, N=3, S=4, plus a ring road N-E.

    Edges (two-way arms): 0:W->C 1:C->W 2:E->C 3:C->E 4:N->C 5:C->N 6:S->C 7:C->S 8:N->E 9:E->N.
    """
    src = np.array([1, 0, 2, 0, 3, 0, 4, 0, 3, 2])
    dst = np.array([0, 1, 0, 2, 0, 3, 0, 4, 2, 3])
    w = np.array([10.0, 10, 10, 10, 10, 10, 10, 10, 15, 15])
    return csr_graph(5, src, dst), w


def test_dijkstra_banned_turn_forces_detour():
    g, w = _junction()
    # From W, turning left to N (edge 0 -> 5) is forbidden: go E, then the ring E->N (35 s),
    # cheaper than a U-turn at S (40 s).
    banned = (np.array([0], np.int32), np.array([5], np.int32))
    free = dijkstra_multi(g, w, np.array([0]), np.array([10.0]), sources_are_edges=True)
    assert free.dist_s[3] == 20.0
    sp = dijkstra_multi(g, w, np.array([0]), np.array([10.0]), sources_are_edges=True,
                        banned_turns=banned)
    assert sp.dist_s[3] == 10.0 + 10.0 + 15.0
    assert sp.path_edges(3).tolist() == [3, 9]


def test_dijkstra_only_straight_on_forbids_other_turns():
    g, w = _junction()
    # only_straight_on from S (edge 6) to N (edge 5): banned 6->1, 6->3, 6->7.
    banned = (np.array([6, 6, 6], np.int32), np.array([1, 3, 7], np.int32))
    sp = dijkstra_multi(g, w, np.array([6]), np.array([0.0]), sources_are_edges=True,
                        banned_turns=banned)
    assert sp.dist_s[3] == 10.0
    assert sp.dist_s[2] == 10.0 + 15.0  # E only via N and the ring
    assert sp.path_edges(2).tolist() == [5, 8]
    assert sp.dist_s[1] == 10.0 + 10.0 + 10.0  # W: N, back to the centre (U-turn at N), W
    assert sp.path_edges(1).tolist() == [5, 4, 1]


def test_shortest_route_between_positions_same_edge_ahead_and_behind():
    g, w = _junction()
    d, edges = shortest_route_between_positions(g, w, 3, 0.2, 3, 0.7)
    assert d == pytest.approx(5.0) and edges.tolist() == [3]
    # Behind on a dead-end arm: drive to E, U-turn, back to the centre, out again.
    d, edges = shortest_route_between_positions(g, w, 3, 0.7, 3, 0.2)
    assert d == pytest.approx(3.0 + 10.0 + 2.0) and edges.tolist() == [3, 2, 3]


def test_dijkstra_rejects_bad_weights():
    g, w = _junction()
    with pytest.raises(ValueError, match="edge 2"):
        dijkstra(g, np.where(np.arange(10) == 2, -1.0, w), 0)
    with pytest.raises(ValueError, match="one travel time per edge"):
        dijkstra(g, w[:3], 0)
