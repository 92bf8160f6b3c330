"""CCH (RoutingKit) behind graph.cch against the exact Dijkstra reference.

Tolerance: weights are whole milliseconds, so the CCH picks a path optimal for rounded
weights; its exact float duration is within 0.5 ms per edge (of both paths) of the reference
optimum, and never below it.
"""

from __future__ import annotations

import numpy as np
import pytest

from graph.cch import INF_WEIGHT_MS, customize, prepare_cch, travel_times_to_ms
from graph.dijkstra import dijkstra, shortest_route_between_positions
from graph.network import TURN_NO, TURN_ONLY, banned_turns, build_network
from conftest import shared_file


def _tol(*paths) -> float:
    return 0.5e-3 * sum(len(p) for p in paths) + 1e-9


def _check_path(net, w, edges, duration):
    assert np.all(net.edge_dst[edges[:-1]] == net.edge_src[edges[1:]]), "consecutive edges must connect"
    assert float(w[edges].sum()) == pytest.approx(duration, abs=1e-9)


def _random_net(seed: int, n: int = 200, m: int = 600, *, restrictions: int = 0):
    rng = np.random.default_rng(seed)
    lat, lon = 47.1 + rng.random(n) * 0.05, 9.5 + rng.random(n) * 0.05
    src, dst = rng.integers(0, n, m), rng.integers(0, n, m)
    kw = {}
    if restrictions:
        # Random restrictions at real junctions: pick an edge and one edge leaving its head.
        frm = rng.integers(0, m, restrictions * 3)
        pairs = [(f, t) for f in frm for t in np.flatnonzero(src == dst[f])[:1]][:restrictions]
        kw = dict(turn_from_edge=[p[0] for p in pairs], turn_to_edge=[p[1] for p in pairs],
                  turn_via_node=[dst[p[0]] for p in pairs],
                  turn_kind=rng.choice([TURN_NO, TURN_ONLY], len(pairs)))
    return build_network(node_lat=lat, node_lon=lon, edge_src=src, edge_dst=dst,
                         edge_speed_kph=np.full(m, 40.0), edge_key=np.arange(m), **kw), rng


def test_travel_times_to_ms_rounds_and_closes():
    ms = travel_times_to_ms(np.array([0.0, 0.0004, 0.0006, 1.2344, np.inf, 3e6]))
    assert ms.dtype == np.uint32
    assert ms.tolist() == [0, 0, 1, 1234, INF_WEIGHT_MS, INF_WEIGHT_MS]
    with pytest.raises(ValueError, match="edge 1"):
        travel_times_to_ms(np.array([1.0, np.nan]))


@pytest.mark.parametrize("restrictions", [0, 40])
def test_metric_route_nodes_matches_dijkstra_on_random_networks(restrictions):
    net, rng = _random_net(5 + restrictions, restrictions=restrictions)
    bt = banned_turns(net) if restrictions else None
    index = prepare_cch(net)
    assert index.graph.turn_expanded == bool(restrictions)
    for _ in range(3):
        w = rng.exponential(30.0, net.n_edges)
        w[rng.random(net.n_edges) < 0.05] = 0.0
        metric = customize(index, w, "v")
        for s, t in rng.integers(0, net.n_nodes, (60, 2)):
            ref = dijkstra(net, w, s, t, banned_turns=bt)
            res = metric.route_nodes(int(s), int(t))
            if res is None:
                assert np.isinf(ref.dist_s[t]), f"{s}->{t} reachable in the reference"
                continue
            ref_path = ref.path_edges(int(t))
            assert ref.dist_s[t] - 1e-9 <= res.duration_s <= ref.dist_s[t] + _tol(res.edges, ref_path)
            if res.edges.size:
                _check_path(net, w, res.edges, res.duration_s)
                assert net.edge_src[res.edges[0]] == s and net.edge_dst[res.edges[-1]] == t


@pytest.mark.parametrize("restrictions", [0, 40])
def test_metric_route_positions_matches_reference(restrictions):
    net, rng = _random_net(17 + restrictions, restrictions=restrictions)
    bt = banned_turns(net) if restrictions else None
    index = prepare_cch(net)
    w = rng.exponential(30.0, net.n_edges)
    metric = customize(index, w, "v")
    for _ in range(150):
        es, et = (int(x) for x in rng.integers(0, net.n_edges, 2))
        fs, ft = rng.random(2)
        if rng.random() < 0.2:
            et = es  # same edge, ahead or behind
        ref_d, ref_edges = shortest_route_between_positions(net, w, es, fs, et, ft, banned_turns=bt)
        res = metric.route_positions(np.array([es]), np.array([fs]), np.array([et]), np.array([ft]))
        if res is None:
            assert np.isinf(ref_d)
            continue
        assert ref_d - 1e-9 <= res.duration_s <= ref_d + _tol(res.edges, ref_edges)
        assert res.edges[0] == es and res.edges[-1] == et


def _junction_net(turns):
    """Plus junction: centre 0 at (0, 0); arms W=1, E=2, N=3, S=4; a ring road N<->E.

    Edges: 0:W->C 1:C->W 2:E->C 3:C->E 4:N->C 5:C->N 6:S->C 7:C->S 8:N->E 9:E->N.
    """
    lat = np.array([0.0, 0.0, 0.0, 0.001, -0.001])
    lon = np.array([0.0, -0.001, 0.001, 0.0, 0.0])
    src = np.array([1, 0, 2, 0, 3, 0, 4, 0, 3, 2])
    dst = np.array([0, 1, 0, 2, 0, 3, 0, 4, 2, 3])
    frm, to, kind = (np.array(x) for x in zip(*turns)) if turns else ([], [], [])
    net = build_network(node_lat=lat, node_lon=lon, edge_src=src, edge_dst=dst,
                        edge_speed_kph=np.full(10, 36.0), edge_key=np.arange(10),
                        turn_from_edge=frm, turn_to_edge=to, turn_via_node=np.zeros(len(frm)),
                        turn_kind=kind)
    w = np.array([10.0, 10, 10, 10, 10, 10, 10, 10, 15, 15])
    return net, w


def test_metric_no_left_turn_forces_detour():
    net, w = _junction_net([(0, 5, TURN_NO)])  # W -> N forbidden
    metric = customize(prepare_cch(net), w, "v")
    res = metric.route_nodes(1, 3)
    assert res.duration_s == 35.0 and res.edges.tolist() == [0, 3, 9]
    free = customize(prepare_cch(_junction_net([])[0]), w, "v").route_nodes(1, 3)
    assert free.duration_s == 20.0 and free.edges.tolist() == [0, 5]


def test_metric_only_straight_on_bans_other_turns():
    net, w = _junction_net([(6, 5, TURN_ONLY)])  # from S: straight on to N only
    metric = customize(prepare_cch(net), w, "v")
    res = metric.route_nodes(4, 2)
    assert res.duration_s == 10 + 10 + 15 and res.edges.tolist() == [6, 5, 8]
    res = metric.route_nodes(4, 1)
    assert res.duration_s == 40 and res.edges.tolist() == [6, 5, 4, 1]


def test_prepare_cch_caches_order_per_network_version(tmp_path):
    net, _ = _random_net(3)
    first = prepare_cch(net, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and net.version in files[0].name
    second = prepare_cch(net, cache_dir=tmp_path)
    assert second.order_s == 0.0
    np.testing.assert_array_equal(first.order, second.order)


def test_prepare_cch_ignores_a_corrupt_cache(tmp_path):
    net, _ = _random_net(4)
    (tmp_path / f"cch-order-{net.version}-node.npy").write_bytes(b"not numpy")
    index = prepare_cch(net, cache_dir=tmp_path)
    assert index.order_s > 0 and sorted(index.order.tolist()) == list(range(net.n_nodes))


def test_metric_matches_dijkstra_on_kbh_with_recustomization():
    from graph.io import load_network

    net = load_network(shared_file("osm/kbh.osm.pbf"))
    bt = banned_turns(net)
    index = prepare_cch(net)
    rng = np.random.default_rng(42)
    for k in range(3):
        w = net.edge_freeflow_time_s * rng.uniform(0.5, 3.0, net.n_edges)
        metric = customize(index, w, f"v{k}")
        for s, t in rng.integers(0, net.n_nodes, (100, 2)):
            ref = dijkstra(net, w, s, t, banned_turns=bt)
            res = metric.route_nodes(int(s), int(t))
            if res is None:
                assert np.isinf(ref.dist_s[t])
                continue
            assert ref.dist_s[t] - 1e-9 <= res.duration_s <= ref.dist_s[t] + _tol(res.edges, ref.path_edges(int(t)))
            if res.edges.size:
                _check_path(net, w, res.edges, res.duration_s)


@pytest.mark.parametrize("restrictions", [0, 40])
def test_customize_partial_equals_full_customization(restrictions):
    from graph.cch import customize_partial

    net, rng = _random_net(31 + restrictions, restrictions=restrictions)
    index = prepare_cch(net)
    w = rng.exponential(30.0, net.n_edges)
    metric = customize(index, w, "v0")
    pairs = rng.integers(0, net.n_nodes, (80, 2))
    for k in range(1, 4):
        w = w.copy()
        changed = rng.choice(net.n_edges, 15, replace=False)
        w[changed] = rng.exponential(30.0, changed.size)
        w[changed[:2]] = np.inf  # closures too
        old = metric
        metric = customize_partial(metric, w, f"v{k}")
        full = customize(index, w, f"full{k}")
        assert metric.version == f"v{k}"
        for s, t in pairs:
            a, b = metric.route_nodes(int(s), int(t)), full.route_nodes(int(s), int(t))
            assert (a is None) == (b is None)
            if a is not None:
                assert a.duration_s == pytest.approx(b.duration_s, abs=_tol(a.edges, b.edges))
        with pytest.raises(ValueError, match="consumed"):
            customize_partial(old, w, "again")
