"""Compiled network files and format detection: round trips, corruption, atomic writes."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from conftest import shared_file

from graph.errors import NetworkFileNotFoundError, NetworkFormatError
from graph.geojson import export_geojson
from graph.io import detect_format, load_compiled, load_network, save_network
from graph.network import TURN_NO, TURN_ONLY, RoadNetwork, build_network
from storage import write_atomic


def square_network() -> RoadNetwork:
    """Four nodes on a ~110 m square, a bent edge, one-ways and two turn restrictions."""
    return build_network(
        node_lat=[55.0, 55.0, 55.001, 55.001],
        node_lon=[12.0, 12.001, 12.001, 12.0],
        node_osm_id=[10, 11, 12, 13],
        edge_src=[0, 1, 1, 2, 3],
        edge_dst=[1, 0, 2, 3, 0],
        edge_speed_kph=[50.0, 50.0, 30.0, 30.0, 40.0],
        geom_offsets=[0, 2, 4, 7, 9, 11],
        geom_lat=[55.0, 55.0, 55.0, 55.0, 55.0, 55.0005, 55.001, 55.001, 55.001, 55.001, 55.0],
        geom_lon=[12.0, 12.001, 12.001, 12.0, 12.001, 12.0012, 12.001, 12.001, 12.0, 12.0, 12.0],
        edge_road_class=[6, 6, 2, 2, 8],
        edge_oneway=[False, False, True, True, True],
        edge_osm_way=[100, 100, 101, 102, 103],
        edge_reversed=[False, True, False, False, False],
        turn_from_edge=[0, 2],
        turn_via_node=[1, 2],
        turn_to_edge=[2, 3],
        turn_kind=[TURN_NO, TURN_ONLY],
        name="square",
    )


def assert_same_network(a: RoadNetwork, b: RoadNetwork) -> None:
    """Same arrays (dtype and bytes), same name and version."""
    arrays_a, arrays_b = a.arrays(), b.arrays()
    assert arrays_a.keys() == arrays_b.keys()
    for key in arrays_a:
        assert arrays_a[key].dtype == arrays_b[key].dtype, key
        np.testing.assert_array_equal(arrays_a[key], arrays_b[key], err_msg=key)
    assert (a.name, a.version) == (b.name, b.version)


def test_save_network_round_trip_hand_made(tmp_path):
    net = square_network()
    out = save_network(net, tmp_path / "square.net")
    back = load_compiled(out)
    assert_same_network(net, back)
    assert not back.edge_src.flags.writeable


def test_save_network_round_trip_empty_turns(tmp_path):
    net = build_network(
        node_lat=[0.0, 0.0],
        node_lon=[0.0, 0.001],
        edge_src=[0],
        edge_dst=[1],
        edge_speed_kph=[30.0],
    )
    assert_same_network(net, load_compiled(save_network(net, tmp_path / "one.net")))


def test_save_network_round_trip_liechtenstein(tmp_path):
    from graph.osm import load_osm

    net = load_osm(shared_file("osm/liechtenstein-latest.osm.pbf"))
    assert_same_network(net, load_compiled(save_network(net, tmp_path / "li.net")))


def test_save_network_round_trip_new_york(tmp_path):
    from graph.dimacs import find_coordinates, load_dimacs

    gr = shared_file("graphs/USA-road-t.NY.gr.gz")
    net = load_dimacs(gr, find_coordinates(gr))
    assert_same_network(net, load_compiled(save_network(net, tmp_path / "ny.net")))


def test_save_network_replaces_atomically(tmp_path):
    path = tmp_path / "net.net"
    save_network(square_network(), path)
    before = path.read_bytes()

    def fail(fh):
        fh.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(path, fail)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.net"]


def test_load_compiled_missing(tmp_path):
    with pytest.raises(NetworkFileNotFoundError, match="absent.net: no such file"):
        load_compiled(tmp_path / "absent.net")


def test_load_compiled_truncated(tmp_path):
    path = save_network(square_network(), tmp_path / "cut.net")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(NetworkFormatError, match="cut.net: not a readable compiled network"):
        load_compiled(path)


def test_load_compiled_corrupt_content(tmp_path):
    path = save_network(square_network(), tmp_path / "bad.net")
    data = bytearray(path.read_bytes())
    # Flip a byte inside the node_lat array payload: the member's CRC-32 check fails.
    at = data.find(b"node_lat.npy")
    at = data.find(b"\n", data.find(b"{'descr'", at)) + 5
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(NetworkFormatError, match="bad.net: .*Bad CRC-32"):
        load_compiled(path)


def test_load_compiled_version_mismatch(tmp_path):
    path = tmp_path / "forged.net"
    net = square_network()
    save_network(net, path)
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    header = json.loads(members["header.json"])
    header["version"] = "0000000000000000"
    members["header.json"] = json.dumps(header).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    # The CRCs are fresh, so only the hash check sees the forgery.
    assert load_compiled(path).version == "0000000000000000"
    with pytest.raises(NetworkFormatError, match="does not match its recorded version"):
        load_compiled(path, verify=True)


def test_load_compiled_other_zip(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(NetworkFormatError, match="other.zip: a ZIP archive but not a compiled"):
        load_compiled(path)


def test_load_compiled_future_format_version(tmp_path):
    path = save_network(square_network(), tmp_path / "new.net")
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    header = json.loads(members["header.json"])
    header["format_version"] = 99
    members["header.json"] = json.dumps(header).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    with pytest.raises(NetworkFormatError, match="format version 99 is not supported"):
        load_compiled(path)


def test_load_network_detects_every_format(tmp_path):
    net = square_network()
    compiled = save_network(net, tmp_path / "a.whatever")
    geojson = export_geojson(net, tmp_path / "b.data")
    assert detect_format(compiled) == "compiled"
    assert detect_format(geojson) == "geojson"
    assert load_network(compiled).version == net.version
    assert load_network(geojson).version == net.version


def test_load_network_dimacs_finds_coordinates(tmp_path):
    (tmp_path / "x-t.gr").write_text("p sp 2 2\na 1 2 10\na 2 1 10\n")
    (tmp_path / "x-d.co").write_text(
        "p aux sp co 2\nv 1 -73000000 40000000\nv 2 -73001000 40000000\n"
    )
    assert detect_format(tmp_path / "x-t.gr") == "dimacs"
    net = load_network(tmp_path / "x-t.gr")
    assert (net.n_nodes, net.n_edges) == (2, 2)


def test_load_network_osm_pbf():
    path = shared_file("osm/liechtenstein-latest.osm.pbf")
    stages = []
    net = load_network(path, progress=lambda stage, fraction: stages.append((stage, fraction)))
    assert detect_format(path) == "osm"
    assert net.n_edges > 0
    assert stages[-1] == ("done", 1.0)


def test_load_network_osm_xml(tmp_path):
    path = tmp_path / "tiny.osm"
    path.write_text(
        '<?xml version="1.0"?>\n<osm version="0.6">\n'
        '<node id="1" lat="47.1" lon="9.5"/><node id="2" lat="47.101" lon="9.5"/>\n'
        '<way id="5"><nd ref="1"/><nd ref="2"/><tag k="highway" v="residential"/></way>\n'
        "</osm>\n"
    )
    assert detect_format(path) == "osm"
    assert load_network(path).n_edges == 2


def test_load_network_missing(tmp_path):
    with pytest.raises(NetworkFileNotFoundError, match="gone.osm.pbf: no such file"):
        load_network(tmp_path / "gone.osm.pbf")


def test_load_network_directory(tmp_path):
    with pytest.raises(NetworkFileNotFoundError, match="is a directory"):
        load_network(tmp_path)


def test_load_network_unknown_format(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("just some text\n")
    with pytest.raises(NetworkFormatError) as err:
        load_network(path)
    message = str(err.value)
    assert "notes.txt: not a road network file" in message
    for fmt in ("compiled network", "OpenStreetMap", "GeoJSON", "DIMACS"):
        assert fmt in message


def test_load_network_empty_file(tmp_path):
    path = tmp_path / "empty.osm.pbf"
    path.write_bytes(b"")
    with pytest.raises(
        NetworkFormatError,
        match="empty.osm.pbf: not a road network file "
        r"\(the file is empty\)",
    ):
        load_network(path)


def test_load_network_pbf_cut_short(tmp_path):
    data = shared_file("osm/liechtenstein-latest.osm.pbf").read_bytes()
    path = tmp_path / "cut.osm.pbf"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(NetworkFormatError, match="cut.osm.pbf"):
        load_network(path)
