"""DIMACS .gr/.co loading: hand-written files with known answers, and the real NY graph."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file

from graph.dimacs import DIMACS_TIME_UNIT_S, MIN_EDGE_LENGTH_M, find_coordinates, load_dimacs
from graph.errors import NetworkFileNotFoundError, NetworkFormatError, NoDrivableRoadError
from graph.network import haversine_m

# Four nodes on a small square near Manhattan: 1 -> 2 twice (parallel, weights 900 and 700),
# 2 <-> 3 both ways, 3 -> 4 one-way, and a self-loop on 4 (dropped).
GR = """c hand-written test graph
c two weights on 1 -> 2
p sp 4 7
a 1 2 900
a 1 2 700
a 2 3 500
c a comment in the middle
a 3 2 500
a 3 4 1000
a 4 4 10
a 4 1 2000
"""
CO = """c coordinates
p aux sp co 4
v 1 -73990000 40750000
v 2 -73989000 40750000
v 3 -73989000 40751000
v 4 -73990000 40751000
"""


def _write(tmp_path: Path, gr: str = GR, co: str = CO, name: str = "toy-t.gr") -> tuple[Path, Path]:
    gr_path = tmp_path / name
    co_path = tmp_path / name.replace(".gr", ".co")
    gr_path.write_text(gr)
    co_path.write_text(co)
    return gr_path, co_path


def test_load_dimacs_known_answers(tmp_path):
    net = load_dimacs(*_write(tmp_path))
    assert net.n_nodes == 4
    # Self-loop dropped, the parallel pair collapsed: 1->2, 2->3, 3->2, 3->4, 4->1.
    pairs = list(zip(net.edge_src.tolist(), net.edge_dst.tolist()))
    assert pairs == [(0, 1), (1, 2), (2, 1), (2, 3), (3, 0)]
    assert net.node_osm_id.tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(net.node_lon, [-73.99, -73.989, -73.989, -73.99])
    np.testing.assert_allclose(net.node_lat, [40.75, 40.75, 40.751, 40.751])
    # The travel time equals the file's weight (smallest of the parallel arcs) in time units.
    weight = np.array([700, 500, 500, 1000, 2000])
    np.testing.assert_allclose(net.edge_freeflow_time_s, weight * DIMACS_TIME_UNIT_S)
    geo = haversine_m(
        net.node_lat[net.edge_src],
        net.node_lon[net.edge_src],
        net.node_lat[net.edge_dst],
        net.node_lon[net.edge_dst],
    )
    np.testing.assert_allclose(net.edge_length_m, geo)
    assert net.edge_oneway.tolist() == [True, False, False, True, True]
    assert net.name == "toy-t"


def test_load_dimacs_keys_stable_across_id_order(tmp_path):
    a = load_dimacs(*_write(tmp_path))
    lines = GR.splitlines()
    shuffled = "\n".join(lines[:3] + lines[3:][::-1]) + "\n"
    b = load_dimacs(*_write(tmp_path, gr=shuffled, name="other-t.gr"))
    assert a.edge_key.tolist() == b.edge_key.tolist()
    assert len(set(a.edge_key.tolist())) == a.n_edges


def test_load_dimacs_distance_graph(tmp_path):
    net = load_dimacs(*_write(tmp_path, name="toy-d.gr"))
    np.testing.assert_allclose(net.edge_length_m, [70.0, 50.0, 50.0, 100.0, 200.0])
    assert np.all(net.edge_speed_kph == 50.0)


def test_load_dimacs_coincident_nodes_get_min_length(tmp_path):
    co = CO.replace("v 2 -73989000 40750000", "v 2 -73990000 40750000")
    net = load_dimacs(*_write(tmp_path, co=co))
    assert net.edge_length_m[0] == MIN_EDGE_LENGTH_M
    np.testing.assert_allclose(net.edge_freeflow_time_s[0], 700 * DIMACS_TIME_UNIT_S)


def test_load_dimacs_gzip(tmp_path):
    gr, co = tmp_path / "g-t.gr.gz", tmp_path / "g-t.co.gz"
    gr.write_bytes(gzip.compress(GR.encode()))
    co.write_bytes(gzip.compress(CO.encode()))
    assert load_dimacs(gr, co).version == load_dimacs(*_write(tmp_path, name="g-t.gr")).version


def test_find_coordinates_challenge_naming(tmp_path):
    gr = tmp_path / "USA-road-t.XX.gr.gz"
    gr.write_bytes(b"")
    co = tmp_path / "USA-road-d.XX.co.gz"
    co.write_bytes(b"")
    assert find_coordinates(gr) == co
    same = tmp_path / "USA-road-t.XX.co"
    same.write_bytes(b"")
    assert find_coordinates(gr) == same


def test_find_coordinates_missing(tmp_path):
    gr = tmp_path / "lonely.gr"
    gr.write_text(GR)
    with pytest.raises(NetworkFileNotFoundError, match="lonely.gr: no DIMACS coordinate file"):
        find_coordinates(gr)


def test_load_dimacs_missing_file(tmp_path):
    with pytest.raises(NetworkFileNotFoundError, match="nope.gr: no such file"):
        load_dimacs(tmp_path / "nope.gr", tmp_path / "nope.co")


def test_load_dimacs_cut_short(tmp_path):
    gr = "\n".join(GR.splitlines()[:6]) + "\n"
    with pytest.raises(
        NetworkFormatError, match=r"declares 7 records but the file has 3 \(cut short"
    ):
        load_dimacs(*_write(tmp_path, gr=gr))


def test_load_dimacs_truncated_gzip(tmp_path):
    gr, co = _write(tmp_path)
    data = gzip.compress(GR.encode() * 50)
    gr.write_bytes(data[: len(data) // 2])
    with pytest.raises(NetworkFormatError, match="gzip data is corrupt or cut short"):
        load_dimacs(gr, co)


def test_load_dimacs_malformed_arc(tmp_path):
    gr = GR.replace("a 2 3 500", "a 2 three 500")
    with pytest.raises(NetworkFormatError, match="toy-t.gr: a 'a' line is malformed"):
        load_dimacs(*_write(tmp_path, gr=gr))


def test_load_dimacs_not_dimacs(tmp_path):
    with pytest.raises(NetworkFormatError, match="not a DIMACS arc file"):
        load_dimacs(*_write(tmp_path, gr="hello world\n"))


def test_load_dimacs_node_out_of_range(tmp_path):
    gr = GR.replace("a 3 4 1000", "a 3 9 1000")
    with pytest.raises(NetworkFormatError, match=r"arc 5 \(3 -> 9\) names a node outside 1..4"):
        load_dimacs(*_write(tmp_path, gr=gr))


def test_load_dimacs_node_count_mismatch(tmp_path):
    co = CO.replace("p aux sp co 4", "p aux sp co 3").replace("v 4 -73990000 40751000\n", "")
    with pytest.raises(NetworkFormatError, match="has 3 nodes but"):
        load_dimacs(*_write(tmp_path, co=co))


def test_load_dimacs_zero_weight(tmp_path):
    with pytest.raises(NetworkFormatError, match="weights must be > 0"):
        load_dimacs(*_write(tmp_path, gr=GR.replace("a 2 3 500", "a 2 3 0")))


def test_load_dimacs_empty_graph(tmp_path):
    with pytest.raises(NoDrivableRoadError, match="has no arc"):
        load_dimacs(*_write(tmp_path, gr="p sp 4 0\n"))


def test_load_dimacs_new_york():
    gr = shared_file("graphs/USA-road-t.NY.gr.gz")
    net = load_dimacs(gr, find_coordinates(gr))
    assert net.n_nodes == 264_346
    assert net.n_edges == 730_100  # 733,846 arcs, 3,746 parallel ones collapsed
    # The four speed categories of the travel-time graph read as 40..100 km/h.
    assert (
        35 < np.quantile(net.edge_speed_kph, 0.01) and np.quantile(net.edge_speed_kph, 0.99) < 105
    )
    lon0, lat0, lon1, lat1 = net.bbox
    assert -75 < lon0 < lon1 < -71 and 40 < lat0 < lat1 < 42
