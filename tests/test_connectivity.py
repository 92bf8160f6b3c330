"""Strongly connected components, keeping the largest one, and the network summary."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from conftest import shared_file

from graph.connectivity import (
    keep_largest_scc,
    largest_scc_nodes,
    largest_scc_share,
    network_summary,
    strong_components,
)
from graph.network import TURN_NO, TURN_ONLY, RoadNetwork, build_network


def two_islands() -> RoadNetwork:
    """A 4-node two-way cycle (0-3), a one-way pair 4 -> 5 hanging off it, and a 2-node island.

    Nodes 0..3 form the largest SCC; 4, 5 are singletons (3 -> 4 -> 5 one-way); 6 <-> 7 is
    a separate SCC. Turn restrictions: one inside the big SCC, one leaving it.
    """
    lat = [0.0, 0.0, 0.001, 0.001, 0.002, 0.003, 0.01, 0.01]
    lon = [0.0, 0.001, 0.001, 0.0, 0.0, 0.0, 0.01, 0.011]
    src = [0, 1, 1, 2, 2, 3, 3, 0, 3, 4, 6, 7]
    dst = [1, 0, 2, 1, 3, 2, 0, 3, 4, 5, 7, 6]
    return build_network(
        node_lat=lat,
        node_lon=lon,
        node_osm_id=np.arange(100, 108),
        edge_src=src,
        edge_dst=dst,
        edge_speed_kph=np.full(12, 30.0),
        edge_oneway=[False] * 8 + [True, True, False, False],
        edge_road_class=[6] * 8 + [8, 8, 2, 2],
        turn_from_edge=[0, 4, 6],
        turn_via_node=[1, 3, 0],
        turn_to_edge=[2, 8, 7],
        turn_kind=[TURN_NO, TURN_ONLY, TURN_NO],
        name="islands",
    )


def test_strong_components_known(tmp_path):
    count, label = strong_components(two_islands())
    assert count == 4
    assert len(set(label[:4])) == 1 and label[6] == label[7]
    assert len({label[0], label[4], label[5], label[6]}) == 4


def test_largest_scc_share_known():
    assert largest_scc_share(two_islands()) == pytest.approx(4 / 8)
    assert largest_scc_nodes(two_islands()).tolist() == [True] * 4 + [False] * 4


def test_largest_scc_share_empty():
    net = build_network(node_lat=[], node_lon=[], edge_src=[], edge_dst=[], edge_speed_kph=[])
    assert largest_scc_share(net) == 0.0
    assert strong_components(net)[0] == 0


def test_keep_largest_scc_known():
    net = two_islands()
    core = keep_largest_scc(net)
    assert (core.n_nodes, core.n_edges) == (4, 8)
    assert core.node_osm_id.tolist() == [100, 101, 102, 103]
    np.testing.assert_array_equal(core.edge_key, net.edge_key[:8])
    np.testing.assert_array_equal(core.geom_lat, net.geom_lat[: net.geom_offsets[8]])
    # The restriction leaving the SCC (to edge 8) is dropped; the others are remapped.
    assert core.turn_from_edge.tolist() == [0, 6]
    assert core.turn_to_edge.tolist() == [2, 7]
    assert core.turn_via_node.tolist() == [1, 0]
    assert largest_scc_share(core) == 1.0
    assert core.name == "islands" and core.version != net.version


def test_keep_largest_scc_already_connected_is_same_version():
    core = keep_largest_scc(two_islands())
    assert keep_largest_scc(core).version == core.version


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_largest_scc_share_matches_networkx(seed):
    rng = np.random.default_rng(seed)
    n, m = 60, 110
    src, dst = rng.integers(0, n, m), rng.integers(0, n, m)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    pair = np.unique(src * n + dst)
    src, dst = pair // n, pair % n
    net = build_network(
        node_lat=rng.uniform(0, 0.1, n),
        node_lon=rng.uniform(0, 0.1, n),
        edge_src=src,
        edge_dst=dst,
        edge_speed_kph=np.full(src.size, 30.0),
    )
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_edges_from(zip(src.tolist(), dst.tolist()))
    biggest = max(nx.strongly_connected_components(g), key=len)
    assert largest_scc_share(net) == pytest.approx(len(biggest) / n)
    core = keep_largest_scc(net)
    assert core.n_edges == g.subgraph(biggest).number_of_edges()


def test_network_summary_known():
    s = network_summary(two_islands())
    assert (s["nodes"], s["edges"], s["turn_restrictions"]) == (8, 12, 3)
    assert s["oneway_edges"] == 2 and s["largest_scc_share"] == 0.5
    assert s["bbox"] == [0.0, 0.0, 0.011, 0.01]
    net = two_islands()
    length_km = net.edge_length_m / 1000
    # Two-way roads counted once: 4 residential roads of ~111 m each.
    assert s["road_km_by_class"]["residential"] == pytest.approx(length_km[:8].sum() / 2, abs=1e-3)
    assert s["road_km_by_class"]["service"] == pytest.approx(length_km[8:10].sum(), abs=1e-3)
    assert s["directed_km"] == pytest.approx(length_km.sum(), abs=1e-3)
    assert s["version"] == net.version and s["name"] == "islands"


def test_keep_largest_scc_liechtenstein():
    from graph.osm import load_osm

    net = load_osm(shared_file("osm/liechtenstein-latest.osm.pbf"))
    core = keep_largest_scc(net)
    assert 0.9 < largest_scc_share(net) < 1.0
    assert core.n_nodes == int(largest_scc_nodes(net).sum())
    assert largest_scc_share(core) == 1.0
    assert set(core.edge_key.tolist()) <= set(net.edge_key.tolist())
