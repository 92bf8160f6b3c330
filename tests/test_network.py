"""graph.network: building, validating and versioning the RoadNetwork model."""

from __future__ import annotations

import numpy as np
import pytest

from graph import TURN_NO, TURN_ONLY, NetworkFormatError, banned_turns, build_network, haversine_m
from graph.network import polyline_lengths_m, stable_edge_keys


def _t_junction(**overrides):
    """Node 1 is a junction: 0 -> 1, 1 -> 2 (straight), 1 -> 3 (left), 1 -> 0 (U-turn)."""
    kw = dict(
        node_lat=[55.0, 55.001, 55.002, 55.001],
        node_lon=[12.0, 12.0, 12.0, 11.998],
        edge_src=[0, 1, 1, 1],
        edge_dst=[1, 2, 3, 0],
        edge_speed_kph=[50, 50, 30, 50],
        node_osm_id=[100, 101, 102, 103],
        edge_osm_way=[1, 1, 2, 1],
        edge_reversed=[False, False, False, True],
    )
    kw.update(overrides)
    return build_network(**kw)


def test_build_network_indexes():
    net = _t_junction()
    assert (net.n_nodes, net.n_edges) == (4, 4)
    assert net.out_edge[net.out_first[1]:net.out_first[2]].tolist() == [1, 2, 3]
    assert net.in_edge[net.in_first[0]:net.in_first[1]].tolist() == [3]
    assert net.edge_osm_from.tolist() == [100, 101, 101, 101]
    assert net.edge_osm_to.tolist() == [101, 102, 103, 100]


def test_build_network_lengths_are_great_circle():
    net = _t_junction()
    want = haversine_m(net.node_lat[net.edge_src], net.node_lon[net.edge_src],
                       net.node_lat[net.edge_dst], net.node_lon[net.edge_dst])
    np.testing.assert_allclose(net.edge_length_m, want, rtol=1e-12)
    assert net.edge_length_m[0] == pytest.approx(111.195, abs=1e-3)


def test_build_network_arrays_are_read_only():
    net = _t_junction()
    with pytest.raises(ValueError):
        net.edge_length_m[0] = 1.0


def test_build_network_version_is_content_hash():
    a, b = _t_junction(), _t_junction()
    assert a.version == b.version and len(a.version) == 16
    assert _t_junction(edge_speed_kph=[50, 50, 30, 60]).version != a.version


def test_stable_edge_keys_do_not_depend_on_dense_ids():
    net = _t_junction()
    # The same roads with nodes and edges numbered differently.
    perm = _t_junction(
        node_lat=[55.001, 55.0, 55.001, 55.002], node_lon=[11.998, 12.0, 12.0, 12.0],
        node_osm_id=[103, 100, 101, 102],
        edge_src=[2, 2, 2, 1], edge_dst=[1, 3, 0, 2],
        edge_speed_kph=[50, 50, 30, 50], edge_osm_way=[1, 1, 2, 1],
        edge_reversed=[True, False, False, False],
    )
    assert sorted(net.edge_key.tolist()) == sorted(perm.edge_key.tolist())
    np.testing.assert_array_equal(perm.edge_index_of_keys(net.edge_key), [3, 1, 2, 0])
    assert net.edge_key.min() >= 0


def test_stable_edge_keys_direction_matters():
    k = stable_edge_keys(np.array([7, 7]), np.array([5, 5]), np.array([5, 5]), np.array([False, True]))
    assert k[0] != k[1]


def test_edge_index_of_keys_unknown_is_minus_one():
    net = _t_junction()
    assert net.edge_index_of_keys(np.array([12345, net.edge_key[2]])).tolist() == [-1, 2]


def test_polyline_lengths_m_multi_point():
    off = np.array([0, 3, 5])
    lat = np.array([0.0, 0.0, 0.0, 1.0, 1.0])
    lon = np.array([0.0, 1.0, 2.0, 0.0, 1.0])
    got = polyline_lengths_m(off, lat, lon)
    assert got[0] == pytest.approx(2 * haversine_m(0.0, 0.0, 0.0, 1.0))
    assert got[1] == pytest.approx(haversine_m(1.0, 0.0, 1.0, 1.0))


def test_banned_turns_no_and_only():
    no_left = _t_junction(turn_from_edge=[0], turn_via_node=[1], turn_to_edge=[2], turn_kind=[TURN_NO])
    assert [a.tolist() for a in banned_turns(no_left)] == [[0], [2]]
    only_straight = _t_junction(turn_from_edge=[0], turn_via_node=[1], turn_to_edge=[1],
                                turn_kind=[TURN_ONLY])
    assert [a.tolist() for a in banned_turns(only_straight)] == [[0, 0], [2, 3]]
    assert [a.tolist() for a in banned_turns(_t_junction())] == [[], []]


@pytest.mark.parametrize("overrides, match", [
    (dict(node_lat=[55.0, 95.0, 55.002, 55.001]), r"node 1 has coordinates out of range"),
    (dict(node_lon=[12.0, np.nan, 12.0, 11.998]), r"node 1 has coordinates out of range"),
    (dict(edge_dst=[1, 2, 3, 9]), r"edge 3 refers to a node outside 0..3"),
    (dict(edge_dst=[1, 2, 3]), r"edge_dst and edge_src differ in length"),
    (dict(edge_speed_kph=[50, 0, 30, 50]), r"speeds must be finite and > 0"),
    (dict(edge_speed_kph=[50, np.nan, 30, 50]), r"speeds must be finite and > 0"),
    (dict(edge_length_m=[1.0, -1.0, 1.0, 1.0]), r"lengths must be finite and >= 0"),
    (dict(edge_reversed=[False, False, False, False], edge_dst=[1, 2, 3, 1], edge_src=[0, 1, 1, 0]),
     r"is not unique"),
    (dict(turn_from_edge=[0], turn_via_node=[1], turn_to_edge=[7], turn_kind=[TURN_NO]),
     r"turn restriction refers to an edge"),
    (dict(geom_offsets=[0, 1, 3, 5, 7], geom_lat=[55.0] * 7, geom_lon=[12.0] * 7),
     r"at least two points"),
])
def test_build_network_invalid_value(overrides, match):
    with pytest.raises(NetworkFormatError, match=match):
        _t_junction(**overrides)


def test_build_network_error_names_source():
    with pytest.raises(NetworkFormatError, match=r"^roads\.geojson: "):
        _t_junction(edge_speed_kph=[50, -1, 30, 50], source="roads.geojson")


def test_build_network_empty():
    net = build_network(node_lat=[], node_lon=[], edge_src=[], edge_dst=[], edge_speed_kph=[])
    assert (net.n_nodes, net.n_edges) == (0, 0)
    assert net.out_first.tolist() == [0]


def test_edge_index_of_keys_small_and_large_asks_match_a_sort():
    """A few keys go through a binary search of the kept order, many through the sorted
    keys; both equal a plain sort-and-search, and the order is computed once."""
    rng = np.random.default_rng(3)
    n = 3000
    net = build_network(node_lat=55 + rng.random(n + 1) * 0.01, node_lon=12 + rng.random(n + 1) * 0.01,
                        edge_src=np.arange(n), edge_dst=np.arange(1, n + 1),
                        edge_speed_kph=np.full(n, 50.0),
                        edge_key=rng.permutation(np.arange(10**6, 10**6 + 5 * n, 5)))
    keys = net.edge_key
    order = np.argsort(keys)
    for ask in (keys[[7]], np.array([keys[3], 42, keys[-1], keys[0]]), np.concatenate(
            [keys[rng.integers(0, n, 400)], rng.integers(0, 10**7, 400)])):
        pos = np.clip(np.searchsorted(keys[order], ask), 0, n - 1)
        want = np.where(keys[order][pos] == ask, order[pos], -1)
        assert net.edge_index_of_keys(ask).tolist() == want.tolist()
    first = net._key_order
    net.edge_index_of_keys(keys[:2])
    assert net._key_order is first  # kept, not recomputed
