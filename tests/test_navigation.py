"""Navigation options (issue 11 items 3, 4, 7, 8): alternatives checked by an independent
Dijkstra, via points, headings, summaries, annotations, encoded polylines, strict parameters."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from conftest import shared_file
from fastapi.testclient import TestClient

from api.app import create_app
from api.schemas import RouteOut
from api.settings import Settings
from graph.dijkstra import dijkstra_multi
from graph.errors import NoRouteError
from graph.io import load_network
from graph.navigation import CONGESTION_LEVELS, congestion_levels, edge_bearing_at
from graph.network import banned_turns
from graph.polyline import decode_polyline, encode_polyline
from workers.router import RouterCore
from workers.services import LocalServices, PipelineConfig

LI = "osm/liechtenstein-latest.osm.pbf"
A, B = (47.1410, 9.5209), (47.2250, 9.5300)  # Triesen -> Eschen


@pytest.fixture(scope="module")
def li():
    return load_network(shared_file(LI))


@pytest.fixture(scope="module")
def core(li, tmp_path_factory):
    c = RouterCore(li, cache_dir=str(tmp_path_factory.mktemp("nav")))
    rng = np.random.default_rng(7)
    tt = li.edge_freeflow_time_s * rng.uniform(0.8, 2.0, li.n_edges)
    c.router.customize(tt, "1")
    yield c
    c.router.close()


# -- polyline ---------------------------------------------------------------------------------
def test_polyline_google_example() -> None:
    lat, lon = np.array([38.5, 40.7, 43.252]), np.array([-120.2, -120.95, -126.453])
    assert encode_polyline(lat, lon, precision=5) == "_p~iF~ps|U_ulLnnqC_mqNvxq`@"
    assert encode_polyline(lat, lon, precision=6) == "_izlhA~rlgdF_{geC~ywl@_kwzCn`{nI"
    la, lo = decode_polyline("_izlhA~rlgdF_{geC~ywl@_kwzCn`{nI", precision=6)
    assert la.tolist() == pytest.approx(lat.tolist()) and lo.tolist() == pytest.approx(lon.tolist())


def test_polyline_round_trip_and_edge_cases() -> None:
    rng = np.random.default_rng(1)
    lat, lon = rng.uniform(-90, 90, 200), rng.uniform(-180, 180, 200)
    la, lo = decode_polyline(encode_polyline(lat, lon))
    assert np.abs(la - lat).max() <= 5e-7 and np.abs(lo - lon).max() <= 5e-7
    assert encode_polyline(np.array([]), np.array([])) == ""
    assert encode_polyline(np.array([0.0]), np.array([0.0])) == "??"
    with pytest.raises(ValueError):
        decode_polyline("_izlhA~rlgd")


# -- alternatives, checked by the reference Dijkstra -----------------------------------------
def _node_path(li, edges):
    return np.concatenate([[li.edge_dst[edges[0]]], li.edge_dst[edges[1:-1]]])


def _check_local_optimality(li, w, bt, edges, t_s):
    """Every sub-path of at most t_s between nodes of the route is a fastest path (reference
    edge-based Dijkstra from the edge arriving at its first node, turn restrictions kept)."""
    core = edges[1:-1]
    cum = np.concatenate([[0.0], np.cumsum(w[core])])
    for i in range(core.size):
        j = int(np.searchsorted(cum, cum[i] + t_s, side="right")) - 1
        if j <= i:
            continue
        target = int(li.edge_dst[core[j - 1]])
        sp = dijkstra_multi(li, w, np.array([edges[i]]), np.array([0.0]), target=target,
                            banned_turns=bt, sources_are_edges=True)
        k = j - i + sp.path_edges(target).size
        assert cum[j] - cum[i] <= sp.dist_s[target] + 0.0005 * k + 1e-9, (i, j)


def _driven(li, w, route_edges, first_s, last_s):
    d = w[route_edges].astype(float)
    d[0], d[-1] = first_s, last_s
    return d


@pytest.mark.parametrize("mode", ["default", "penalty_only"])
def test_alternatives_are_admissible_by_reference(li, core, mode, monkeypatch) -> None:
    if mode == "penalty_only":  # no separator candidates: every via node from the penalty rounds
        import graph.navigation as nav
        from graph.alternatives import AlternativesConfig
        monkeypatch.setattr(nav, "AlternativesConfig",
                            lambda: AlternativesConfig(max_tries=0, penalty_below=3, penalty_rounds=4))
    rng = np.random.default_rng(3)
    w = core.router._metric.travel_time_s
    bt = banned_turns(li)
    found = checked = 0
    for _ in range(30):
        s, t = rng.integers(0, li.n_nodes, 2)
        try:
            out = core.route((li.node_lat[s], li.node_lon[s]), (li.node_lat[t], li.node_lon[t]),
                             alternatives=3, annotations=True)
        except NoRouteError:  # a node on a piece the car cannot leave or reach
            continue
        RouteOut.model_validate(out)
        main_keys = np.array(out["edges"])
        routes = [out, *out["alternatives"]]
        edges = [li.edge_index_of_keys(np.array(r["edges"])) for r in routes]
        durs = [np.array(r["annotations"]["duration_s"]) for r in routes]
        for r, d in zip(routes, durs):
            assert d.sum() == pytest.approx(r["duration_s"], abs=1e-6)
        found += bool(out["alternatives"])
        for k in range(1, len(routes)):
            checked += 1
            e, d = edges[k], durs[k]
            assert routes[k]["duration_s"] <= 1.3 * out["duration_s"] + 1e-6
            assert e[0] == edges[0][0] and e[-1] == edges[0][-1]
            for m in range(k):  # the fastest and every alternative before it
                shared = d[np.isin(e, edges[m])].sum()
                assert shared <= 0.7 * min(routes[k]["duration_s"], routes[m]["duration_s"]) + 1e-6
            _check_local_optimality(li, w, bt, e, 0.25 * out["duration_s"])
            assert not np.array_equal(np.array(routes[k]["edges"]), main_keys)
    assert checked >= 3 and found >= 3


# -- via points, headings, summaries, annotations --------------------------------------------
def test_via_points_make_legs_that_sum(core) -> None:
    v = (47.17, 9.51)
    out = core.route(A, B, via=[v])
    RouteOut.model_validate(out)
    assert len(out["legs"]) == 2
    one = core.route(A, v, steps=False)
    two = core.route(v, B)
    assert out["legs"][0]["duration_s"] == pytest.approx(one["duration_s"])
    assert out["legs"][1]["duration_s"] == pytest.approx(two["duration_s"])
    assert out["duration_s"] == pytest.approx(one["duration_s"] + two["duration_s"])
    assert out["distance_m"] == pytest.approx(one["distance_m"] + two["distance_m"])
    assert out["edges"] == one["edges"] + two["edges"]
    assert all(leg["summary"] for leg in out["legs"]) and out["summary"]
    stepped = core.route(A, B, via=[v], steps=True)
    for leg in stepped["legs"]:
        assert sum(s["duration_s"] for s in leg["steps"]) == pytest.approx(leg["duration_s"], abs=0.5)


def test_bearing_picks_the_direction_of_travel(li, core) -> None:
    plain = core.route(A, B)
    first = li.edge_index_of_keys(np.array(plain["edges"][:1]))
    lat, lon = plain["geometry"]["coordinates"][0][1], plain["geometry"]["coordinates"][0][0]
    b0 = edge_bearing_at(li, core.router.point_positions, first, np.array([0.0]))[0]
    for heading in (b0, (b0 + 180.0) % 360.0):
        out = core.route((lat, lon), B, bearing=heading, bearing_range=30)
        e = li.edge_index_of_keys(np.array(out["edges"][:1]))
        start = out["geometry"]["coordinates"][0]
        pts = core.router.point_positions
        # the first edge's direction at the start point is within range of the heading
        lo, la = start
        from graph.spatial import candidates

        _, ei, _, off = candidates(core.router.spatial, np.array([la]), np.array([lo]),
                                   radius_m=5, k=16)
        bb = edge_bearing_at(li, pts, e, off[ei == e[0]][:1])[0]
        assert abs((bb - heading + 180) % 360 - 180) <= 30


def test_congestion_levels_follow_the_map_classes() -> None:
    ff = np.full(6, 10.0)
    tt = np.array([10.0, 11.0, 14.0, 20.0, 30.0, np.inf])
    assert [x[0] for x in CONGESTION_LEVELS] == ["low", "moderate", "heavy", "severe"]
    assert congestion_levels(np.arange(6), tt, ff) == [
        "unknown", "low", "moderate", "heavy", "severe", "unknown"]
    assert congestion_levels(np.arange(2), tt, ff, observed=False) == ["unknown", "unknown"]


# -- HTTP ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(li):
    services = LocalServices(li, PipelineConfig(clock="event", n_ingest=1))
    with TestClient(create_app(services, Settings(clock="event"))) as c:
        yield c


Q = {"from": f"{A[0]},{A[1]}", "to": f"{B[0]},{B[1]}"}


def test_http_annotations_polyline_and_alternatives(client) -> None:
    r = client.get("/v1/route", params={**Q, "annotations": "true", "alternatives": "2",
                                        "geometry_format": "polyline6"})
    assert r.status_code == 200, r.text
    body = r.json()
    RouteOut.model_validate(body)
    n = len(body["edges"])
    assert all(len(body["annotations"][k]) == n for k in
               ("speed_mps", "duration_s", "congestion", "edge_keys"))
    assert body["annotations"]["edge_keys"] == body["edges"]
    plain = client.get("/v1/route", params=Q).json()
    la, lo = decode_polyline(body["geometry"])
    coords = np.array(plain["geometry"]["coordinates"])
    assert np.abs(lo - coords[:, 0]).max() < 1e-6 and np.abs(la - coords[:, 1]).max() < 1e-6
    assert "summary" not in plain and "alternatives" not in plain  # the hot path is unchanged
    for alt in body["alternatives"]:
        assert set(alt) >= {"duration_s", "distance_m", "geometry", "edges", "legs", "summary",
                            "annotations", "weights_version", "basis"}


@pytest.mark.parametrize(("params", "field"), [
    ({"via": ";".join(["47.17,9.51"] * 26)}, "via"),
    ({"alternatives": "4"}, "alternatives"),
    ({"alternatives": "1", "via": "47.17,9.51"}, "alternatives"),
    ({"via": "47.17,9.51;nope"}, "via[1]"),
    ({"bearing": "400"}, "bearing"),
    ({"bearing_range": "10"}, "bearing_range"),
    ({"geometry_format": "wkt"}, "geometry_format"),
    ({"alternative": "2"}, "alternative"),
])
def test_http_bad_navigation_input(client, params, field) -> None:
    r = client.get("/v1/route", params={**Q, **params})
    assert r.status_code == 422, r.text
    assert f"`{field}`" in r.json()["message"] or field in r.text


def test_strict_parameters(client) -> None:
    r = client.get("/v1/route", params={**Q, "stepz": "true"})
    assert r.status_code == 422
    assert r.json()["code"] == "unknown_parameter"
    assert r.json()["message"].startswith("unknown query parameter `stepz`")
    r = client.post("/v1/table", json={"sources": [list(A)], "destinations": [list(B)],
                                       "colour": "red"})
    assert r.status_code == 422 and r.json()["code"] == "unknown_parameter"
    assert "`colour`" in r.json()["message"]
    r = client.get("/v1/network", params={"x": "1"})
    assert r.status_code == 422 and "`x`" in r.json()["message"]
    # probe records keep ignoring extra fields
    r = client.post("/v1/probes", json={"probes": [{"vehicle_id": "v", "t": 1.0, "lat": A[0],
                                                    "lon": A[1], "extra": 1}]})
    assert r.status_code == 202, r.text


def test_http_post_route_takes_the_navigation_options_as_fields(client) -> None:
    via = [[47.17, 9.51]]
    got = client.get("/v1/route", params={**Q, "via": "47.17,9.51", "annotations": "true"})
    assert got.status_code == 200, got.text
    r = client.post("/v1/route", json={"from": list(A), "to": list(B), "via": via,
                                       "annotations": True})
    assert r.status_code == 200, r.text
    post, get = r.json(), got.json()
    assert len(post["legs"]) == 2
    assert post["edges"] == get["edges"]
    assert post["duration_s"] == pytest.approx(get["duration_s"])
    assert post["annotations"]["edge_keys"] == get["annotations"]["edge_keys"]
    as_text = client.post("/v1/route", json={"from": list(A), "to": list(B),
                                             "via": "47.17,9.51"}).json()
    assert as_text["edges"] == post["edges"]
    # avoid and exclude combine with via points, alternatives and annotations: a square on
    # the first leg's middle is avoided by both legs, and a via point inside it is refused.
    coords = get["geometry"]["coordinates"]
    lon, lat = coords[len(coords) // 4]
    d = 0.0006
    square = {"type": "Polygon", "coordinates": [[[lon - d, lat - d], [lon + d, lat - d],
                                                  [lon + d, lat + d], [lon - d, lat + d],
                                                  [lon - d, lat - d]]]}
    r = client.post("/v1/route", json={"from": list(A), "to": list(B), "via": via,
                                       "avoid": square, "exclude": "ferry",
                                       "annotations": True, "steps": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["legs"]) == 2 and body["legs"][0]["steps"]
    assert body["edges"] != get["edges"]
    assert not shapely.LineString(body["geometry"]["coordinates"]).intersects(
        shapely.Polygon(square["coordinates"][0]))
    assert sum(body["annotations"]["duration_s"]) == pytest.approx(body["duration_s"], abs=1e-6)
    r = client.post("/v1/route", json={"from": list(A), "to": list(B), "via": [[lat, lon]],
                                       "avoid": square})
    assert r.status_code == 422 and r.json()["code"] == "point_in_avoid"
    assert r.json()["details"] == {"field": "via[0]"}
    r = client.post("/v1/route", json={"from": list(A), "to": list(B), "alternatives": 2,
                                       "avoid": square})
    assert r.status_code == 200, r.text
    for route in (r.json(), *r.json()["alternatives"]):
        assert not shapely.LineString(route["geometry"]["coordinates"]).intersects(
            shapely.Polygon(square["coordinates"][0]))
    got = client.get("/v1/route", params={**Q, "alternatives": "1", "exclude": "motorway",
                                          "bearing": "90", "geometry_format": "polyline6"})
    assert got.status_code == 200, got.text
    assert isinstance(got.json()["geometry"], str)
    r = client.post("/v1/route", json={"from": list(A), "to": list(B), "alternatives": 4})
    assert r.status_code == 422 and "alternatives" in r.json()["message"]
