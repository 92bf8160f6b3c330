"""Street names, refs and edge flags (roundabout, toll, ferry): OSM import, the string
table, the compiled format (and its version-1 files) and GeoJSON round trips."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from graph.errors import NetworkFormatError
from graph.geojson import export_geojson, load_geojson
from graph.io import load_compiled, save_network
from graph.network import (
    EDGE_FERRY,
    EDGE_ROUNDABOUT,
    EDGE_TOLL,
    NAME_ARRAYS,
    NO_NAME,
    RoadNetwork,
    build_network,
    content_version,
)
from graph.osm import load_osm
from graph.osm_profile import (
    FERRY_DEFAULT_SPEED_KPH,
    CarProfile,
    ferry_speed_kph,
    parse_duration_s,
    way_flags,
)
from tests.common import three_edges_with_detour

NAV = Path(__file__).parent / "data" / "osm_navigation.osm"


@pytest.fixture(scope="module")
def nav() -> RoadNetwork:
    return load_osm(NAV)


def _edges_of_way(net: RoadNetwork, way: int) -> np.ndarray:
    return np.flatnonzero(net.edge_osm_way == way)


def test_load_osm_names_and_refs(nav: RoadNetwork) -> None:
    names = {w: {nav.edge_name_str(int(e)) for e in _edges_of_way(nav, w)}
             for w in (101, 102, 103, 200, 201, 204, 300, 305)}
    assert names == {101: {"Mannerheimintie"}, 102: {"Mannerheimintie"},
                     103: {"Aleksanterinkatu"}, 200: {None}, 201: {"Ring I"},
                     204: {"Läntinen"}, 300: {None}, 305: {"Kehä III"}}
    assert {nav.edge_ref_str(int(e)) for e in _edges_of_way(nav, 300)} == {"E 18"}
    assert {nav.edge_ref_str(int(e)) for e in _edges_of_way(nav, 305)} == {"50"}
    assert {nav.edge_ref_str(int(e)) for e in _edges_of_way(nav, 101)} == {None}


def test_load_osm_string_table_is_sorted_and_distinct(nav: RoadNetwork) -> None:
    table = [nav.string(i) for i in range(nav.n_strings)]
    assert table == sorted(set(table))
    assert "Mannerheimintie" in table and "E 18" in table and "Kevyt" not in table
    assert nav.edge_name.dtype == np.int32 and nav.edge_flags.dtype == np.uint8
    assert nav.string(NO_NAME) is None


def test_load_osm_flags(nav: RoadNetwork) -> None:
    ring = _edges_of_way(nav, 200)
    assert ring.size == 5 and np.all(nav.edge_flags[ring] == EDGE_ROUNDABOUT)
    assert np.all(nav.edge_oneway[ring])
    assert np.all(nav.edge_flags[_edges_of_way(nav, 301)] == EDGE_TOLL)
    assert np.all(nav.edge_flags[_edges_of_way(nav, 300)] == 0)


def test_load_osm_ferry_speed_from_duration(nav: RoadNetwork) -> None:
    ferry = _edges_of_way(nav, 400)
    assert ferry.size == 2  # both directions
    assert np.all(nav.edge_flags[ferry] == EDGE_FERRY)
    # 00:10 for ~222 m: length / duration, clipped to at least 1 km/h.
    expected = nav.edge_length_m[ferry[0]] / 600.0 * 3.6
    np.testing.assert_allclose(nav.edge_speed_kph[ferry], expected, rtol=1e-9)
    assert {nav.edge_name_str(int(e)) for e in ferry} == {"Saarilautta"}
    # The foot=yes ferry with no motor-vehicle tag is a passenger ferry: not imported.
    assert _edges_of_way(nav, 402).size == 0


def test_ferry_attributes_access() -> None:
    profile = CarProfile()
    assert profile.way_attributes({"route": "ferry", "motorcar": "no"}) is None
    assert profile.way_attributes({"route": "ferry", "foot": "yes"}) is None
    kept = profile.way_attributes({"route": "ferry", "foot": "yes", "motor_vehicle": "yes"})
    assert kept is not None and kept.flags == EDGE_FERRY
    assert kept.speed_forward_kph == FERRY_DEFAULT_SPEED_KPH and kept.duration_s is None
    assert profile.way_attributes({"route": "bus"}) is None


@pytest.mark.parametrize("value, seconds", [
    ("30", 1800.0), ("1:30", 5400.0), ("01:30:15", 5415.0), ("PT1H30M", 5400.0),
    ("PT45S", 45.0), (None, None), ("", None), ("PT", None), ("soon", None), ("-5", None),
    ("0:00", None), ("1:2:3:4", None),
])
def test_parse_duration_s(value: str | None, seconds: float | None) -> None:
    assert parse_duration_s(value) == seconds


def test_ferry_speed_kph_clipped_and_default() -> None:
    assert ferry_speed_kph(1000.0, None) == FERRY_DEFAULT_SPEED_KPH
    assert ferry_speed_kph(1000.0, 3600.0) == pytest.approx(1.0)
    assert ferry_speed_kph(100_000.0, 60.0) == 60.0
    assert ferry_speed_kph(10.0, 3600.0) == 1.0


def test_way_flags() -> None:
    assert way_flags({"junction": "circular", "toll": "yes"}) == EDGE_ROUNDABOUT | EDGE_TOLL
    assert way_flags({"toll": "no", "toll:motorcar": "yes"}) == EDGE_TOLL
    assert way_flags({"junction": "jughandle", "toll": "no"}) == 0


def test_build_network_without_names_keeps_its_version() -> None:
    net = three_edges_with_detour()
    assert np.all(net.edge_name == NO_NAME) and net.n_strings == 0
    core = {k: a for k, a in net.arrays().items() if k not in NAME_ARRAYS}
    assert content_version(core) == net.version


def test_build_network_names_are_canonical() -> None:
    base = dict(node_lat=[55.0, 55.0, 55.0], node_lon=[12.0, 12.1, 12.2], edge_src=[0, 1],
                edge_dst=[1, 2], edge_speed_kph=[50, 50])
    a = build_network(**base, edge_name=[0, 1], edge_ref=[-1, 2], strings=["B", "A", "R", "x"])
    b = build_network(**base, edge_name=[1, 2], edge_ref=[-1, 0], strings=["R", "B", "A"])
    assert a.version == b.version
    assert [a.edge_name_str(0), a.edge_name_str(1), a.edge_ref_str(1)] == ["B", "A", "R"]
    assert a.n_strings == 3  # "x" is not used by any edge


@pytest.mark.parametrize("kwargs, message", [
    (dict(edge_name=[0, 5], strings=["A"]), "edge_name refers to a string outside"),
    (dict(edge_ref=[-2, -1]), "edge_ref refers to a string outside"),
    (dict(edge_flags=[8, 0]), "edge_flags holds unknown bits"),
    (dict(edge_name=[0]), "one entry per edge"),
])
def test_build_network_names_invalid_value(kwargs: dict, message: str) -> None:
    with pytest.raises(NetworkFormatError, match=message):
        build_network(node_lat=[55.0, 55.0, 55.0], node_lon=[12.0, 12.1, 12.2],
                      edge_src=[0, 1], edge_dst=[1, 2], edge_speed_kph=[50, 50], **kwargs)


def _same(a: RoadNetwork, b: RoadNetwork) -> None:
    assert a.version == b.version
    for key in NAME_ARRAYS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)


@pytest.mark.parametrize("mmap", [False, True])
def test_save_network_keeps_names(nav: RoadNetwork, tmp_path: Path, mmap: bool) -> None:
    path = save_network(nav, tmp_path / "nav.net")
    back = load_compiled(path, mmap=mmap, verify=True)
    _same(nav, back)
    assert back.edge_name_str(int(_edges_of_way(back, 204)[0])) == "Läntinen"


def test_load_compiled_version_1_file_has_no_names(tmp_path: Path) -> None:
    """A file written before names existed (format 1, no name arrays) loads with none, and
    its recorded version still checks out."""
    net = three_edges_with_detour()
    arrays = {k: a for k, a in net.arrays().items() if k not in NAME_ARRAYS}
    header = {"format": "traffic-road-network", "format_version": 1, "name": net.name,
              "version": net.version,
              "arrays": {k: [a.dtype.str, list(a.shape)] for k, a in arrays.items()}}
    path = tmp_path / "v1.net"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("header.json", json.dumps(header))
        for key, a in arrays.items():
            with zf.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array(member, a, allow_pickle=False)
    for mmap in (False, True):
        back = load_compiled(path, mmap=mmap, verify=True)
        assert back.version == net.version
        assert np.all(back.edge_name == NO_NAME) and back.n_strings == 0
        assert back.edge_flags.shape == (net.n_edges,)


def test_load_compiled_version_2_without_names_is_an_error(tmp_path: Path) -> None:
    net = three_edges_with_detour()
    path = save_network(net, tmp_path / "x.net")
    cut = tmp_path / "cut.net"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(cut, "w") as dst:
        for info in src.infolist():
            if info.filename != "edge_name.npy":
                dst.writestr(info, src.read(info))
    with pytest.raises(NetworkFormatError, match="edge_name"):
        load_compiled(cut)


def test_export_geojson_carries_names(nav: RoadNetwork, tmp_path: Path) -> None:
    path = export_geojson(nav, tmp_path / "nav.geojson")
    doc = json.loads(path.read_text())
    props = [f["properties"] for f in doc["features"]]
    by_way = {p["osm_way_id"]: p for p in props}
    assert by_way[305]["name"] == "Kehä III" and by_way[305]["ref"] == "50"
    assert by_way[300]["name"] is None and by_way[300]["ref"] == "E 18"
    assert by_way[200]["roundabout"] and by_way[301]["toll"] and by_way[400]["ferry"]
    back = load_geojson(path)
    _same(nav, back)


def test_load_geojson_generic_names_and_flags(tmp_path: Path) -> None:
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "LineString",
                                         "coordinates": [[12.0, 55.0], [12.001, 55.0]]},
         "properties": {"highway": "primary", "name": "Nørregade", "ref": "E 20",
                        "toll": "yes"}},
        {"type": "Feature", "geometry": {"type": "LineString",
                                         "coordinates": [[12.001, 55.0], [12.002, 55.0]]},
         "properties": {"highway": "residential", "junction": "roundabout"}},
        {"type": "Feature", "geometry": {"type": "LineString",
                                         "coordinates": [[12.002, 55.0], [12.003, 55.0]]},
         "properties": {"route": "ferry", "name": 7}},
    ]}
    path = tmp_path / "roads.geojson"
    path.write_text(json.dumps(doc))
    net = load_geojson(path)
    first = int(np.flatnonzero(net.edge_road_class == 2)[0])
    assert (net.edge_name_str(first), net.edge_ref_str(first)) == ("Nørregade", "E 20")
    assert net.edge_flags[first] == EDGE_TOLL
    # The roundabout is one-way (implied); the others are two-way.
    assert sorted(net.edge_flags.tolist()) == [EDGE_ROUNDABOUT, EDGE_TOLL, EDGE_TOLL,
                                               EDGE_FERRY, EDGE_FERRY]
    ferry = int(np.flatnonzero(net.edge_flags == EDGE_FERRY)[0])
    assert net.edge_name_str(ferry) == "7"
