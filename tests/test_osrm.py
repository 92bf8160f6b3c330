"""The OSRM v5 compatible facade (api/osrm), driven over real HTTP by an OSRM client library
from PyPI (routingpy's ``OSRM``), and checked against ``/v1``'s answers for the same queries:
directions with steps and alternatives, matrix (durations and distances), a match call, and
OSRM's error codes."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from common import served
from conftest import shared_file

from api.app import create_app
from api.settings import Settings
from graph.io import load_network
from graph.polyline import decode_polyline
from workers.services import LocalServices, PipelineConfig

routingpy = pytest.importorskip("routingpy")

LI = "osm/liechtenstein-latest.osm.pbf"
A, B, C = (47.1410, 9.5209), (47.2250, 9.5300), (47.1650, 9.5100)  # Triesen, Eschen, Vaduz


def _ll(p):
    return f"{p[1]},{p[0]}"


@pytest.fixture(scope="module")
def url():
    net = load_network(shared_file(LI))
    services = LocalServices(net, PipelineConfig(clock="event", n_ingest=1))
    with served(create_app(services, Settings(clock="event"))) as base:
        yield base
    services.close()


@pytest.fixture(scope="module")
def client(url):
    return routingpy.OSRM(base_url=url, timeout=60)


def _v1(url, a, b, **params):
    r = httpx.get(f"{url}/v1/route", params={"from": f"{a[0]},{a[1]}", "to": f"{b[0]},{b[1]}",
                                            **params}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_osrm_directions_steps_alternatives_match_v1(client, url) -> None:
    d = client.directions([[A[1], A[0]], [B[1], B[0]]], profile="driving", steps=True,
                          alternatives=3, geometries="polyline6", overview="full")
    v1 = _v1(url, A, B, alternatives=3, steps="true")
    routes = list(d)
    assert len(routes) == 1 + len(v1["alternatives"]) >= 2  # Triesen -> Eschen has one
    for got, want in zip(routes, [v1, *v1["alternatives"]]):
        raw = got.raw
        assert raw["duration"] == pytest.approx(want["duration_s"], rel=1e-9)
        assert raw["distance"] == pytest.approx(want["distance_m"], rel=1e-9)
        steps = raw["legs"][0]["steps"]
        assert [s["maneuver"]["type"] for s in steps] == [
            s["maneuver"]["type"] for s in want["legs"][0]["steps"]]
        assert steps[0]["maneuver"]["type"] == "depart" and steps[-1]["maneuver"]["type"] == "arrive"
        assert sum(s["duration"] for s in steps) == pytest.approx(raw["duration"], rel=1e-6)
        coords = np.asarray(want["geometry"]["coordinates"])
        geom = np.asarray(got.geometry)  # routingpy decoded polyline6: [lon, lat]
        assert geom.shape == coords.shape and np.abs(geom - coords).max() < 2e-6
    body = d.raw
    assert body["code"] == "Ok" and len(body["waypoints"]) == 2
    assert set(body["waypoints"][0]) >= {"name", "location", "distance"}


def test_osrm_route_via_annotations_and_overview(url) -> None:
    q = f"{url}/route/v1/car/{_ll(A)};{_ll(C)};{_ll(B)}"
    r = httpx.get(q, params={"annotations": "duration,distance,speed", "overview": "full",
                             "geometries": "geojson"}, timeout=60).json()
    assert r["code"] == "Ok"
    route = r["routes"][0]
    assert len(route["legs"]) == 2 and len(r["waypoints"]) == 3
    n_pairs = len(route["geometry"]["coordinates"]) - 1
    ann = [lg["annotation"] for lg in route["legs"]]
    assert sum(len(a["distance"]) for a in ann) == n_pairs
    total = sum(sum(a["distance"]) for a in ann)
    assert total == pytest.approx(route["distance"], rel=0.01)
    for a, lg in zip(ann, route["legs"]):  # each leg's pairs sum to its duration
        assert sum(a["duration"]) == pytest.approx(lg["duration"], rel=1e-9)
    assert sum(sum(a["duration"]) for a in ann) == pytest.approx(route["duration"], rel=1e-9)
    v1 = httpx.get(f"{url}/v1/route", params={"from": f"{A[0]},{A[1]}", "to": f"{B[0]},{B[1]}",
                                             "via": f"{C[0]},{C[1]}"}, timeout=60).json()
    assert route["duration"] == pytest.approx(v1["duration_s"], rel=1e-9)
    simple = httpx.get(q, params={"overview": "simplified"}, timeout=60).json()["routes"][0]
    full = httpx.get(q, params={"overview": "full"}, timeout=60).json()["routes"][0]
    assert len(decode_polyline(simple["geometry"], precision=5)[0]) < len(
        decode_polyline(full["geometry"], precision=5)[0])
    none = httpx.get(q, params={"overview": "false"}, timeout=60).json()["routes"][0]
    assert "geometry" not in none


def test_osrm_matrix_matches_v1(client, url) -> None:
    locs = [[A[1], A[0]], [B[1], B[0]], [C[1], C[0]]]
    m = client.matrix(locs, profile="driving", sources=[0, 2], destinations=[0, 1, 2])
    assert m.raw["code"] == "Ok" and len(m.raw["sources"]) == 2
    table = httpx.post(f"{url}/v1/table", json={
        "sources": [list(A), list(C)], "destinations": [list(A), list(B), list(C)]},
        timeout=60).json()
    for i, src in enumerate((A, C)):
        for j, dst in enumerate((A, B, C)):
            assert m.durations[i][j] == pytest.approx(table["durations_s"][i][j], abs=1e-6)
            if src != dst:
                assert m.distances[i][j] == pytest.approx(_v1(url, src, dst)["distance_m"],
                                                          rel=1e-9)


def test_osrm_match_call_and_nearest(client, url) -> None:
    v1 = _v1(url, A, C)
    coords = np.asarray(v1["geometry"]["coordinates"])
    # Points every ~100 m along the /v1 route, 10 s apart: the match must follow the route.
    seg = np.hypot(np.diff(coords[:, 0]) * 75_000, np.diff(coords[:, 1]) * 111_000)
    cum = np.r_[0, np.cumsum(seg)]
    at = np.arange(0, cum[-1], 100.0)
    lon = np.round(np.interp(at, cum, coords[:, 0]), 6)
    lat = np.round(np.interp(at, cum, coords[:, 1]), 6)
    t = 1_700_000_000 + 10 * np.arange(at.size)
    path = ";".join(f"{x:.6f},{y:.6f}" for x, y in zip(lon, lat))
    body = client.client._request(f"/match/v1/driving/{path}", get_params={
        "timestamps": ";".join(str(int(x)) for x in t), "radiuses": ";".join(["5"] * at.size),
        "geometries": "geojson", "overview": "full"})
    assert body["code"] == "Ok" and len(body["matchings"]) == 1
    mt = body["matchings"][0]
    assert mt["confidence"] > 0.8 and len(mt["legs"]) == at.size - 1
    assert mt["distance"] == pytest.approx(cum[-1], rel=0.05)
    assert len(body["tracepoints"]) == at.size and all(body["tracepoints"])
    same = httpx.post(f"{url}/v1/match", json={"points": [
        {"t": float(a), "lat": float(b), "lon": float(c)} for a, b, c in zip(t, lat, lon)]},
        timeout=60).json()
    assert mt["distance"] == pytest.approx(same["distance_m"], rel=1e-9)
    assert set(same["edges"]) <= set(v1["edges"]) | set(same["edges"][:1] + same["edges"][-1:])
    near = httpx.get(f"{url}/nearest/v1/driving/{_ll(A)}", params={"number": 3}).json()
    assert near["code"] == "Ok" and len(near["waypoints"]) == 3
    assert near["waypoints"][0]["distance"] <= near["waypoints"][-1]["distance"]
    assert len(near["waypoints"][0]["nodes"]) == 2


@pytest.mark.parametrize(("query", "code"), [
    ("/route/v1/driving/9.52,95.0;9.53,47.2", "InvalidValue"),
    ("/route/v1/driving/abc;9.53,47.2", "InvalidUrl"),
    (f"/route/v1/driving/{_ll(A)};{_ll(B)}?colour=red", "InvalidQuery"),
    (f"/route/v1/driving/{_ll(A)};{_ll(B)}?steps=maybe", "InvalidValue"),
    (f"/route/v1/driving/{_ll(A)};{_ll(B)}?radiuses=5", "InvalidOptions"),
    (f"/route/v1/driving/{_ll(A)};{_ll(B)}?alternatives=7", "TooBig"),
    (f"/route/v1/driving/{_ll(A)};{_ll(B)}?annotations=nodes", "NotImplemented"),
    (f"/route/v1/driving/{_ll(A)};{_ll(B)}?approaches=curb;curb", "NotImplemented"),
    ("/route/v1/driving/0,0;0.1,0.1", "NoSegment"),
    (f"/match/v1/driving/{_ll(A)};{_ll(C)}?timestamps=10;5", "InvalidValue"),
    (f"/match/v1/driving/{_ll(A)};{_ll(C)}?gaps=ignore", "NotImplemented"),
    (f"/table/v1/driving/{_ll(A)};{_ll(B)}?fallback_speed=10", "NotImplemented"),
    (f"/table/v1/driving/{_ll(A)};{_ll(B)}?sources=5", "InvalidOptions"),
    (f"/nearest/v1/driving/{_ll(A)};{_ll(B)}", "InvalidOptions"),
])
def test_osrm_bad_requests_answer_osrm_codes(url, query, code) -> None:
    r = httpx.get(url + query, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == code and r.json()["message"]


def test_osrm_every_documented_option_is_accepted(url) -> None:
    n2 = f"{_ll(A)};{_ll(B)}"
    ok = {
        "route": {"alternatives": "false", "steps": "false", "annotations": "false",
                  "geometries": "polyline", "overview": "simplified",
                  "continue_straight": "default", "waypoints": "0;1", "bearings": "10,90;",
                  "radiuses": "unlimited;100", "generate_hints": "false", "hints": ";",
                  "approaches": "unrestricted;", "snapping": "any", "skip_waypoints": "true"},
        "table": {"sources": "all", "destinations": "0;1", "annotations": "duration",
                  "scale_factor": "2", "exclude": "ferry"},
        "match": {"timestamps": "0;300", "radiuses": "5;5", "gaps": "split", "tidy": "false",
                  "steps": "false", "annotations": "false", "geometries": "geojson",
                  "overview": "false"},
    }
    for service, params in ok.items():
        r = httpx.get(f"{url}/{service}/v1/driving/{n2}", params=params, timeout=60)
        assert r.status_code == 200, (service, r.text)
        assert r.json()["code"] == "Ok"
    assert "waypoints" not in httpx.get(f"{url}/route/v1/driving/{n2}",
                                        params={"skip_waypoints": "true"}).json()
