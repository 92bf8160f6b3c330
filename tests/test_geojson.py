"""GeoJSON import/export: exact round trips, junction splitting, properties, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file
from test_io import assert_same_network, square_network

from graph.errors import NetworkFileNotFoundError, NetworkFormatError, NoDrivableRoadError
from graph.geojson import export_geojson, load_geojson
from graph.network import ROAD_CLASS_INDEX, polyline_lengths_m


def _line(coords, **props):
    return {
        "type": "Feature",
        "geometry": {"type": "LineString", "coordinates": coords},
        "properties": props,
    }


def _write(tmp_path: Path, features, name: str = "roads.geojson", **extra) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features, **extra}))
    return path


def test_export_geojson_round_trip_hand_made(tmp_path):
    net = square_network()
    back = load_geojson(export_geojson(net, tmp_path / "square.geojson"))
    assert_same_network(net, back)


def test_export_geojson_round_trip_liechtenstein(tmp_path):
    from graph.osm import load_osm

    net = load_osm(shared_file("osm/liechtenstein-latest.osm.pbf"))
    back = load_geojson(export_geojson(net, tmp_path / "li.geojson"))
    assert_same_network(net, back)


def test_export_geojson_features(tmp_path):
    net = square_network()
    doc = json.loads(export_geojson(net, tmp_path / "sq.geojson").read_text())
    feats = doc["features"]
    assert len(feats) == net.n_edges
    bent = feats[2]
    assert bent["geometry"]["type"] == "LineString"
    # Drawn in the direction of travel: from node 1 through the bend to node 2.
    assert bent["geometry"]["coordinates"] == [[12.001, 55.0], [12.0012, 55.0005], [12.001, 55.001]]
    props = bent["properties"]
    assert props["key"] == int(net.edge_key[2])
    assert props["highway"] == "primary"
    assert props["oneway"] is True
    assert props["maxspeed_kph"] == 30.0
    assert props["length_m"] == pytest.approx(net.edge_length_m[2])
    assert feats[1]["properties"]["oneway"] is False and feats[1]["properties"]["reversed"] is True


def test_load_geojson_endpoints_join(tmp_path):
    # Two two-way lines meeting end to end: 3 nodes, 4 directed edges.
    path = _write(
        tmp_path,
        [
            _line([[0.0, 0.0], [0.001, 0.0]], highway="residential"),
            _line([[0.001, 0.0], [0.002, 0.0]], highway="residential"),
        ],
    )
    net = load_geojson(path)
    assert (net.n_nodes, net.n_edges) == (3, 4)
    assert not net.edge_oneway.any()
    np.testing.assert_allclose(net.edge_speed_kph, 30.0)  # residential default
    np.testing.assert_allclose(
        net.edge_length_m, polyline_lengths_m(net.geom_offsets, net.geom_lat, net.geom_lon)
    )


def test_load_geojson_splits_at_shared_interior_vertex(tmp_path):
    # A crossing: each line passes through the other's middle vertex -> 5 nodes, 4 roads.
    path = _write(
        tmp_path,
        [
            _line([[0.0, 0.0], [0.001, 0.0], [0.002, 0.0]], highway="primary", oneway="yes"),
            _line([[0.001, -0.001], [0.001, 0.0], [0.001, 0.001]], highway="primary", oneway="yes"),
        ],
    )
    net = load_geojson(path)
    assert (net.n_nodes, net.n_edges) == (5, 4)
    assert net.edge_oneway.all()
    centre = np.flatnonzero((net.node_lon == 0.001) & (net.node_lat == 0.0))
    assert centre.size == 1
    assert np.bincount(net.edge_dst, minlength=5)[centre[0]] == 2
    assert np.bincount(net.edge_src, minlength=5)[centre[0]] == 2


def test_load_geojson_rounding_joins_nearby_endpoints(tmp_path):
    path = _write(
        tmp_path,
        [
            _line([[0.0, 0.0], [0.001, 0.0]], highway="service"),
            _line([[0.00100000001, 0.0], [0.002, 0.0]], highway="service"),
        ],
    )
    assert load_geojson(path).n_nodes == 3


def test_load_geojson_oneway_values(tmp_path):
    path = _write(
        tmp_path,
        [
            _line([[0.0, 0.0], [0.001, 0.0]], highway="tertiary", oneway="-1"),
            _line([[0.0, 0.001], [0.001, 0.001]], highway="tertiary", oneway=True),
            _line([[0.0, 0.002], [0.001, 0.002]], highway="tertiary", oneway="no"),
            _line([[0.0, 0.003], [0.001, 0.003]], highway="motorway"),
            _line([[0.0, 0.004], [0.001, 0.004]], highway="tertiary", junction="roundabout"),
        ],
    )
    net = load_geojson(path)
    assert net.n_edges == 6
    src_lon, dst_lon = net.node_lon[net.edge_src], net.node_lon[net.edge_dst]
    lat = net.node_lat[net.edge_src]
    # oneway=-1: drawn against the line, from lon 0.001 to 0.
    back = np.flatnonzero(lat == 0.0)
    assert back.size == 1 and src_lon[back[0]] == 0.001 and dst_lon[back[0]] == 0.0
    assert net.edge_reversed[back[0]] and net.edge_oneway[back[0]]
    for row in (0.001, 0.003, 0.004):  # yes, implied motorway, implied roundabout
        e = np.flatnonzero(lat == row)
        assert e.size == 1 and src_lon[e[0]] == 0.0 and net.edge_oneway[e[0]]
    assert np.sum(net.node_lat[net.edge_src] == 0.002) == 2


def test_load_geojson_speeds(tmp_path):
    path = _write(
        tmp_path,
        [
            _line([[0.0, 0.0], [0.001, 0.0]], highway="primary", maxspeed="30 mph", oneway="yes"),
            _line([[0.0, 0.001], [0.001, 0.001]], highway="primary", maxspeed="80", oneway="yes"),
            _line(
                [[0.0, 0.002], [0.001, 0.002]], highway="primary", maxspeed_kph=42.5, oneway="yes"
            ),
            _line([[0.0, 0.003], [0.001, 0.003]], highway="primary", maxspeed="none", oneway="yes"),
        ],
    )
    net = load_geojson(path)
    by_lat = dict(zip(net.node_lat[net.edge_src].tolist(), net.edge_speed_kph.tolist()))
    assert by_lat[0.0] == pytest.approx(48.28032)
    assert by_lat[0.001] == 80.0 and by_lat[0.002] == 42.5 and by_lat[0.003] == 70.0


def test_load_geojson_skips_footways(tmp_path):
    path = _write(
        tmp_path,
        [
            _line([[0.0, 0.0], [0.001, 0.0]], highway="footway"),
            _line([[0.0, 0.001], [0.001, 0.001]], highway="secondary"),
        ],
    )
    net = load_geojson(path)
    assert net.n_edges == 2
    assert set(net.edge_road_class.tolist()) == {ROAD_CLASS_INDEX["secondary"]}


def test_load_geojson_multilinestring(tmp_path):
    feature = {
        "type": "Feature",
        "properties": {"highway": "residential", "oneway": "yes"},
        "geometry": {
            "type": "MultiLineString",
            "coordinates": [[[0.0, 0.0], [0.001, 0.0]], [[0.0, 0.001], [0.001, 0.001]]],
        },
    }
    assert load_geojson(_write(tmp_path, [feature])).n_edges == 2


def test_load_geojson_keys_stable_and_reused(tmp_path):
    feats = [
        _line([[0.0, 0.0], [0.001, 0.0]], highway="residential", osm_way_id=7),
        _line([[0.0, 0.001], [0.001, 0.001]], highway="residential", oneway="yes", key=12345),
    ]
    a = load_geojson(_write(tmp_path, feats, "a.geojson"))
    b = load_geojson(_write(tmp_path, feats[::-1], "b.geojson"))
    assert sorted(a.edge_key.tolist()) == sorted(b.edge_key.tolist())
    assert 12345 in a.edge_key.tolist()
    assert a.edge_osm_way.tolist().count(7) == 2


def test_load_geojson_duplicate_line_kept_once(tmp_path):
    line = _line([[0.0, 0.0], [0.001, 0.0]], highway="residential", oneway="yes")
    assert load_geojson(_write(tmp_path, [line, line])).n_edges == 1


def test_load_geojson_exported_without_member(tmp_path):
    # An exported file whose foreign member was dropped by another tool still loads:
    # every feature is one directed edge.
    net = square_network()
    doc = json.loads(export_geojson(net, tmp_path / "e.geojson").read_text())
    del doc["traffic_network"]
    path = tmp_path / "stripped.geojson"
    path.write_text(json.dumps(doc))
    back = load_geojson(path)
    assert back.n_edges == net.n_edges
    assert sorted(back.edge_key.tolist()) == sorted(net.edge_key.tolist())
    np.testing.assert_array_equal(np.sort(back.edge_oneway), np.sort(net.edge_oneway))


def test_load_geojson_missing_file(tmp_path):
    with pytest.raises(NetworkFileNotFoundError, match="none.geojson: no such file"):
        load_geojson(tmp_path / "none.geojson")


def test_load_geojson_not_json(tmp_path):
    path = tmp_path / "broken.geojson"
    path.write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(NetworkFormatError, match="broken.geojson: not JSON"):
        load_geojson(path)


def test_load_geojson_not_feature_collection(tmp_path):
    path = tmp_path / "feature.geojson"
    path.write_text(json.dumps(_line([[0, 0], [1, 1]])))
    with pytest.raises(
        NetworkFormatError, match="not a GeoJSON FeatureCollection .type is 'Feature'"
    ):
        load_geojson(path)


def test_load_geojson_feature_without_coordinates(tmp_path):
    feats = [
        _line([[0, 0], [0.001, 0]], highway="primary"),
        {"type": "Feature", "geometry": None, "properties": {"highway": "primary"}},
    ]
    with pytest.raises(NetworkFormatError, match="roads.geojson: feature 1 has no coordinates"):
        load_geojson(_write(tmp_path, feats))


def test_load_geojson_coordinates_out_of_range(tmp_path):
    feats = [
        _line([[0, 0], [0.001, 0]], highway="primary"),
        _line([[0, 0], [0.001, 0]], highway="primary"),
        _line([[0, 0], [12.0, 95.0]], highway="primary"),
    ]
    with pytest.raises(
        NetworkFormatError,
        match=r"feature 2 has coordinates out of range at position 1 \(lon=12.0, lat=95.0",
    ):
        load_geojson(_write(tmp_path, feats))


def test_load_geojson_point_geometry(tmp_path):
    feats = [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]}, "properties": {}}
    ]
    with pytest.raises(NetworkFormatError, match="feature 0 is a 'Point'"):
        load_geojson(_write(tmp_path, feats))


def test_load_geojson_single_position(tmp_path):
    with pytest.raises(NetworkFormatError, match="feature 0 needs a line of at least two"):
        load_geojson(_write(tmp_path, [_line([[0, 0]], highway="primary")]))


def test_load_geojson_degenerate_line(tmp_path):
    feats = [_line([[0, 0], [0.001, 0]]), _line([[0.5, 0.5], [0.5, 0.5]], highway="primary")]
    with pytest.raises(
        NetworkFormatError, match="feature 1 has a line with fewer than two distinct"
    ):
        load_geojson(_write(tmp_path, feats))


def test_load_geojson_bad_oneway(tmp_path):
    with pytest.raises(NetworkFormatError, match="feature 0 has oneway='sometimes'"):
        load_geojson(_write(tmp_path, [_line([[0, 0], [0.001, 0]], oneway="sometimes")]))


def test_load_geojson_no_drivable_road(tmp_path):
    path = _write(
        tmp_path,
        [
            _line([[0, 0], [0.001, 0]], highway="footway"),
            _line([[0, 0], [0, 0.001]], highway="cycleway"),
        ],
    )
    with pytest.raises(NoDrivableRoadError, match="roads.geojson: no drivable road"):
        load_geojson(path)


def test_load_geojson_empty(tmp_path):
    with pytest.raises(NoDrivableRoadError, match="no drivable road"):
        load_geojson(_write(tmp_path, []))
