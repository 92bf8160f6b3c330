"""Per-request avoids (graph.avoid): exclude classes and avoided polygons, checked against an
independent Dijkstra on the network with the closed edges removed."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import shapely
from conftest import TEST_DATA, shared_file

from graph.avoid import (
    AvoidGeometryError,
    AvoidRouter,
    PointInAvoidError,
    area_edges,
    excluded_edges,
    parse_avoid,
    parse_exclude,
)
from graph.dijkstra import shortest_route_between_positions
from graph.errors import NoCandidateError, NoRouteError
from graph.network import EDGE_FERRY, EDGE_TOLL, ROAD_CLASS_INDEX, banned_turns
from graph.osm import load_osm
from graph.router import Router


def _square(lon: float, lat: float, d: float) -> dict:
    return {"type": "Polygon", "coordinates": [[[lon - d, lat - d], [lon + d, lat - d],
                                                [lon + d, lat + d], [lon - d, lat + d],
                                                [lon - d, lat - d]]]}


def _oracle(router: Router, tt: np.ndarray, closed: np.ndarray, a, b) -> float:
    """Fastest duration between two points by Dijkstra with ``closed`` edges removed (inf),
    over every pair of equally-near open candidates (the router's own snapping)."""
    net = router.net
    w = tt.copy()
    w[closed] = np.inf
    allowed = ~closed
    lat = np.array([a[0], b[0]])
    lon = np.array([a[1], b[1]])
    pt, edge, off = router._snap(lat, lon, 200.0, allowed=allowed)
    frac = np.clip(off / net.edge_length_m[edge], 0, 1)
    bt = banned_turns(net)
    bt = bt if bt[0].size else None
    best = np.inf
    for i in np.flatnonzero(pt == 0):
        for j in np.flatnonzero(pt == 1):
            d, _ = shortest_route_between_positions(net, w, int(edge[i]), float(frac[i]),
                                                    int(edge[j]), float(frac[j]), banned_turns=bt)
            best = min(best, d)
    return best


def _check_route(ar: AvoidRouter, tt, closed, a, b, **kw) -> str:
    """Route with ``kw`` (exclude/avoid); compare with the oracle; 'ok' or 'none'."""
    want = _oracle(ar.router, tt, closed, a, b)
    try:
        got = ar.route(a, b, **kw)
    except NoRouteError:
        assert not np.isfinite(want)
        return "none"
    assert not closed[got.edge_ids].any()
    # Weights are whole milliseconds in the hierarchy: 0.5 ms per edge at most.
    assert got.duration_s == pytest.approx(want, abs=1e-3 * (got.edge_ids.size + 2))
    return "ok"


@pytest.fixture(scope="module")
def li():
    """Liechtenstein with synthetic classes (it has no motorway and no toll road): its
    tertiary roads (and links) relabelled motorway, every 7th secondary edge tolled."""
    net = load_osm(shared_file("osm/liechtenstein-latest.osm.pbf"))
    rc = net.edge_road_class.copy()
    rc[rc == ROAD_CLASS_INDEX["tertiary"]] = ROAD_CLASS_INDEX["motorway"]
    rc[rc == ROAD_CLASS_INDEX["tertiary_link"]] = ROAD_CLASS_INDEX["motorway_link"]
    flags = net.edge_flags.copy()
    sec = np.flatnonzero(rc == ROAD_CLASS_INDEX["secondary"])
    flags[sec[::7]] |= EDGE_TOLL
    net = dataclasses.replace(net, edge_road_class=rc, edge_flags=flags)
    router = Router(net)
    rng = np.random.default_rng(5)
    tt = net.edge_freeflow_time_s * rng.uniform(1.0, 2.5, net.n_edges)
    router.customize(tt, "1")
    yield net, router, tt
    router.close()


def _pairs(net, rng, n):
    for _ in range(n):
        a, b = rng.integers(net.n_nodes, size=2)
        yield ((float(net.node_lat[a]) + 2e-5, float(net.node_lon[a])),
               (float(net.node_lat[b]), float(net.node_lon[b]) + 2e-5))


# -- parsing ------------------------------------------------------------------------------
def test_parse_exclude() -> None:
    assert parse_exclude("ferry,motorway") == ("motorway", "ferry")
    assert parse_exclude(["toll", " toll "]) == ("toll",)
    assert parse_exclude(None) == parse_exclude("") == ()
    with pytest.raises(ValueError, match="has unknown class 'highway'; known classes: "
                                         "motorway, toll, ferry"):
        parse_exclude("motorway,highway")


@pytest.mark.parametrize(("obj", "field", "reason"), [
    ([1, 2], "avoid", "must be a GeoJSON Polygon or MultiPolygon object; got list"),
    ({"type": "Point", "coordinates": [1, 2]}, "avoid.type",
     "must be 'Polygon' or 'MultiPolygon'; got 'Point'"),
    ({"type": "Polygon"}, "avoid.coordinates", "must be a non-empty list"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]},
     "avoid.coordinates[0]",
     "is not closed: its first position [0.0, 0.0] differs from its last [0.0, 1.0]"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}, "avoid.coordinates[0]",
     ("must be a linear ring: a list of at least 4 positions [lon, lat], the last equal to "
      "the first")),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], ["x", 1], [0, 0]]]},
     "avoid.coordinates[0][2]",
     "must be a position [lon, lat] with -180 <= lon <= 180, -90 <= lat <= 90; got ['x', 1]"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 95], [0, 0]]]},
     "avoid.coordinates[0][2]",
     "must be a position [lon, lat] with -180 <= lon <= 180, -90 <= lat <= 90; got [1, 95]"),
    ({"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 0]]],
                                              [[[0, 0], [1, 0], [1, 1], [0, 2]]]]},
     "avoid.coordinates[1][0]",
     "is not closed: its first position [0.0, 0.0] differs from its last [0.0, 2.0]"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}, "avoid",
     "is not a valid polygon: Self-intersection[0.5 0.5]"),
])
def test_parse_avoid_errors(obj, field, reason) -> None:
    with pytest.raises(AvoidGeometryError) as err:
        parse_avoid(obj)
    assert (err.value.field, err.value.reason) == (field, reason)
    assert str(err.value) == f"`{field}` {reason}"


def test_parse_avoid_multipolygon_with_hole() -> None:
    outer = [[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]
    hole = [[1, 1], [3, 1], [3, 3], [1, 3], [1, 1]]
    g = parse_avoid({"type": "MultiPolygon", "coordinates": [[outer, hole],
                                                             [[[5, 5], [6, 5], [6, 6, 9], [5, 5]]]]})
    assert g.geom_type == "MultiPolygon" and g.area == pytest.approx(12 + 0.5)


# -- closed edges -------------------------------------------------------------------------
def test_area_edges_equal_brute_force(li) -> None:
    net, router, _ = li
    go = net.geom_offsets
    lines = shapely.linestrings(np.column_stack([net.geom_lon, net.geom_lat]),
                                indices=np.repeat(np.arange(net.n_edges), np.diff(go)))
    rng = np.random.default_rng(3)
    for _ in range(12):
        c = int(rng.integers(net.n_nodes))
        d = float(rng.uniform(0.0005, 0.01))
        area = parse_avoid(_square(float(net.node_lon[c]), float(net.node_lat[c]), d))
        got = area_edges(router.spatial, area)
        want = np.flatnonzero(shapely.intersects(area, lines))
        assert np.array_equal(got, want)
    far = parse_avoid(_square(0.0, 0.0, 0.1))
    assert area_edges(router.spatial, far).size == 0


def test_excluded_edges_follow_tags(li) -> None:
    net, _, _ = li
    mw = excluded_edges(net, ["motorway"])
    assert np.array_equal(mw, np.isin(net.edge_road_class, [ROAD_CLASS_INDEX["motorway"],
                                                            ROAD_CLASS_INDEX["motorway_link"]]))
    assert mw.any()
    toll = excluded_edges(net, ["toll"])
    assert np.array_equal(toll, (net.edge_flags & EDGE_TOLL) != 0) and toll.any()
    assert np.array_equal(excluded_edges(net, ["motorway", "toll"]), mw | toll)


# -- routes against Dijkstra --------------------------------------------------------------
@pytest.mark.shared_data
@pytest.mark.parametrize("exclude", [("motorway",), ("toll",), ("motorway", "toll")])
def test_exclude_routes_equal_dijkstra(li, exclude) -> None:
    net, router, tt = li
    avoid = AvoidRouter(router)
    closed = excluded_edges(net, exclude)
    outcomes = [_check_route(avoid, tt, closed, a, b, exclude=exclude)
                for a, b in _pairs(net, np.random.default_rng(len(exclude)), 12)]
    assert outcomes.count("ok") >= 6
    # One class set: one metric customized, then reused as is.
    assert avoid.counts["new"] == 1 and avoid.counts["cached"] == len(outcomes) - 1


@pytest.mark.shared_data
def test_avoid_polygon_routes_equal_dijkstra(li) -> None:
    net, router, tt = li
    avoid = AvoidRouter(router, max_metrics=2)
    rng = np.random.default_rng(8)
    ok = 0
    for a, b in _pairs(net, rng, 14):
        try:
            base = router.route(a, b)
        except NoRouteError:
            continue
        k = base.lat.size // 2
        poly = _square(float(base.lon[k]), float(base.lat[k]), 0.002)
        area = parse_avoid(poly)
        if shapely.intersects_xy(area, [a[1], b[1]], [a[0], b[0]]).any():
            continue
        closed = np.zeros(net.n_edges, dtype=bool)
        closed[area_edges(router.spatial, area)] = True
        assert closed[base.edge_ids].any()  # the polygon lies on the fastest route
        got = _check_route(avoid, tt, closed, a, b, avoid=poly)
        ok += got == "ok"
        if got == "ok":
            route = avoid.route(a, b, avoid=poly)
            line = shapely.LineString(np.column_stack([route.lon, route.lat]))
            assert not line.intersects(area)
    assert ok >= 5
    assert avoid.counts["partial"] + avoid.counts["full"] >= 1


@pytest.mark.shared_data
def test_exclude_and_avoid_together_and_table(li) -> None:
    net, router, tt = li
    avoid = AvoidRouter(router)
    rng = np.random.default_rng(21)
    pts = list(_pairs(net, rng, 4))
    src = np.array([p[0] for p in pts])
    dst = np.array([p[1] for p in pts])
    closed = excluded_edges(net, ["motorway"])
    mat = avoid.table(src, dst, exclude=["motorway"])
    for i in range(len(src)):
        for j in range(len(dst)):
            want = _oracle(router, tt, closed, tuple(src[i]), tuple(dst[j]))
            if np.isfinite(want):
                assert mat[i, j] == pytest.approx(want, abs=0.05)
            else:
                assert not np.isfinite(mat[i, j])
    a, b = pts[0]
    poly = _square(float(net.node_lon[0]), float(net.node_lat[0]), 0.003)
    area = parse_avoid(poly)
    both = closed.copy()
    both[area_edges(router.spatial, area)] = True
    if not shapely.intersects_xy(area, [a[1], b[1]], [a[0], b[0]]).any():
        _check_route(avoid, tt, both, a, b, exclude=["motorway"], avoid=poly)


@pytest.mark.shared_data
def test_overlay_follows_live_weights(li) -> None:
    """After the live weights change, an exclude route is on the new weights (the cached
    class metric is brought up to date, not answered stale)."""
    net, router, tt = li
    avoid = AvoidRouter(router)
    closed = excluded_edges(net, ["motorway"])
    pairs = list(_pairs(net, np.random.default_rng(4), 6))
    for a, b in pairs:
        _check_route(avoid, tt, closed, a, b, exclude=["motorway"])
    tt2 = tt.copy()
    rng = np.random.default_rng(9)
    changed = rng.choice(net.n_edges, 40, replace=False)
    tt2[changed] *= 3.0
    router.customize(tt2, "2")
    try:
        outcomes = [_check_route(avoid, tt2, closed, a, b, exclude=["motorway"])
                    for a, b in pairs]
        assert avoid.counts["partial"] + avoid.counts["full"] == 1  # once, then cached
        a, b = pairs[outcomes.index("ok")]
        assert avoid.route(a, b, exclude=["motorway"]).weights_version == "2"
    finally:
        router.customize(tt, "3")


@pytest.mark.shared_data
def test_plan_combines_exclude_with_via_alternatives_and_bearing(li) -> None:
    """Navigation options on an overlay: each leg of a via route equals the oracle between
    its points; alternatives use no closed edge and stay within 1.3x; a heading snaps the
    origin to an open edge running that way."""
    from graph.navigation import edge_bearing_at

    net, router, tt = li
    avoid = AvoidRouter(router)
    closed = excluded_edges(net, ["motorway"])
    rng = np.random.default_rng(31)
    legs_checked = alts_seen = 0
    for a, b in _pairs(net, rng, 40):
        k = int(rng.integers(net.n_nodes))
        v = (float(net.node_lat[k]) + 2e-5, float(net.node_lon[k]))
        try:
            plan = avoid.plan([a, v, b], exclude=["motorway"])
        except (NoRouteError, NoCandidateError):
            continue
        assert len(plan.legs) == 2
        for leg, (p, q) in zip(plan.legs, [(a, v), (v, b)]):
            assert not closed[leg.route.edge_ids].any()
            want = _oracle(router, tt, closed, p, q)
            assert leg.route.duration_s == pytest.approx(
                want, abs=1e-3 * (leg.route.edge_ids.size + 2))
            assert leg.edge_duration_s.sum() == pytest.approx(leg.route.duration_s, abs=1e-6)
            legs_checked += 1
        plan = avoid.plan([a, b], exclude=["motorway"], alternatives=2)
        main = plan.legs[0].route
        for alt in plan.alternatives:
            alts_seen += 1
            assert not closed[alt.route.edge_ids].any()
            assert alt.route.duration_s <= 1.3 * main.duration_s + 1e-6
            assert not np.array_equal(alt.route.edge_ids, main.edge_ids)
        first = main.edge_ids[0]
        heading = float(edge_bearing_at(net, router.point_positions, np.array([first]),
                                        np.array([0.0]))[0])
        turned = avoid.plan([a, b], exclude=["motorway"], bearing_deg=heading,
                            bearing_range_deg=30.0)
        e0 = int(turned.legs[0].route.edge_ids[0])
        assert not closed[e0]
    assert legs_checked >= 8 and alts_seen >= 2
    # A via point inside the avoided area is refused, naming it.
    a, b = next(_pairs(net, np.random.default_rng(2), 1))
    mid = (float(net.node_lat[7]), float(net.node_lon[7]))
    with pytest.raises(PointInAvoidError, match="via point 1") as err:
        avoid.plan([a, mid, b], avoid=_square(mid[1], mid[0], 0.001))
    assert err.value.label == "via point 1"


def test_point_in_avoid_and_no_route(li) -> None:
    net, router, _ = li
    avoid = AvoidRouter(router)
    c = 100
    a = (float(net.node_lat[c]), float(net.node_lon[c]))
    b = (float(net.node_lat[c + 500]), float(net.node_lon[c + 500]))
    with pytest.raises(PointInAvoidError, match=r"the destination \(lat=.*\) lies inside "
                                                r"the avoided area") as err:
        avoid.route(a, b, avoid=_square(b[1], b[0], 0.001))
    assert err.value.label == "destination"
    # A ring (polygon with a hole) around the destination: it stays outside the polygon but
    # every road out of the hole crosses the ring.
    d_in, d_out = 0.002, 0.004
    lon, lat = b[1], b[0]
    ring = {"type": "Polygon", "coordinates": [
        _square(lon, lat, d_out)["coordinates"][0], _square(lon, lat, d_in)["coordinates"][0]]}
    with pytest.raises(NoRouteError, match="avoiding the given area"):
        avoid.route(a, b, avoid=ring)


def test_fixture_real_tags_motorway_toll_ferry() -> None:
    """The hand-made OSM fixture's motorway (with a tolled stretch) and car ferry: routes
    between node pairs whose plain route uses the class avoid it, as Dijkstra does."""
    net = load_osm(TEST_DATA / "osm_navigation.osm")
    router = Router(net)
    avoid = AvoidRouter(router)
    tt = net.edge_freeflow_time_s
    rng = np.random.default_rng(0)
    try:
        for cls in ("motorway", "toll", "ferry"):
            closed = excluded_edges(net, [cls])
            assert closed.any()
            used = 0
            for u, v in rng.integers(net.n_nodes, size=(120, 2)):
                a = (float(net.node_lat[u]), float(net.node_lon[u]))
                b = (float(net.node_lat[v]), float(net.node_lon[v]))
                try:
                    base = router.route(a, b)
                    if not closed[base.edge_ids].any():
                        continue
                    _check_route(avoid, tt, closed, a, b, exclude=[cls])
                except (NoRouteError, NoCandidateError):
                    continue  # an end only on the class's roads (the ferry's far side)
                used += 1
            assert used >= 1, cls  # some plain routes used the class and were re-routed
    finally:
        router.close()


@pytest.mark.shared_data
def test_kbh_real_ferries() -> None:
    """Copenhagen's extract has one real car ferry (both directions), cut at the extract's
    edge: its far terminal has no other road, so with ``exclude=ferry`` a point there has no
    open road to snap to, while the plain route takes the ferry."""
    net = load_osm(shared_file("osm/kbh.osm.pbf"))
    closed = excluded_edges(net, ["ferry"])
    assert np.array_equal(closed, (net.edge_flags & EDGE_FERRY) != 0) and closed.sum() == 2
    router = Router(net)
    avoid = AvoidRouter(router)
    try:
        e = int(np.flatnonzero(closed)[0])
        deg = np.diff(net.out_first)
        far, near = sorted((int(net.edge_src[e]), int(net.edge_dst[e])), key=lambda n: deg[n])
        a = (float(net.node_lat[far]), float(net.node_lon[far]))
        b = (float(net.node_lat[near]) + 0.002, float(net.node_lon[near]))
        assert closed[router.route(a, b).edge_ids].any()
        with pytest.raises(NoCandidateError, match="no drivable road within 200 m of the origin"):
            avoid.route(a, b, exclude=["ferry"])
        rng = np.random.default_rng(2)
        for a, b in _pairs(net, rng, 5):
            _check_route(avoid, net.edge_freeflow_time_s, closed, a, b, exclude=["ferry"])
    finally:
        router.close()


@pytest.mark.shared_data
def test_concurrent_requests_each_get_their_own_metric(li) -> None:
    net, router, _ = li
    avoid = AvoidRouter(router, max_metrics=2)
    pairs = list(_pairs(net, np.random.default_rng(12), 8))
    want = {}
    for a, b in pairs:
        try:
            want[(a, b)] = avoid.route(a, b, exclude=["motorway"]).duration_s
        except NoRouteError:
            want[(a, b)] = None
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            for i in range(6):
                a, b = pairs[(k + i) % len(pairs)]
                kw = {"exclude": ["motorway"]} if (k + i) % 2 else {"exclude": ["toll"]}
                try:
                    r = avoid.route(a, b, **kw)
                except NoRouteError:
                    r = None
                if kw["exclude"] == ["motorway"]:
                    assert (r and r.duration_s) == want[(a, b)]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert avoid._n_slots <= 2


# -- HTTP ---------------------------------------------------------------------------------
A = "55.68176,12.55832"  # Gyldenløvesgade, central Copenhagen
B = "55.67970,12.56335"


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.settings import Settings
    from graph.io import load_network
    from workers.services import LocalServices, PipelineConfig

    net = load_network(shared_file("scenario_kbh/network.osm.pbf"))
    services = LocalServices(net, PipelineConfig(clock="event", n_ingest=1))
    with TestClient(create_app(services, Settings(clock="event"))) as c:
        yield c


def _mid(client) -> tuple[float, float, list[int]]:
    body = client.get("/v1/route", params={"from": A, "to": B}).json()
    coords = body["geometry"]["coordinates"]
    lon, lat = coords[len(coords) // 2]
    return lon, lat, body["edges"]


def test_http_get_exclude(client) -> None:
    plain = client.get("/v1/route", params={"from": A, "to": B}).json()
    r = client.get("/v1/route", params={"from": A, "to": B, "exclude": "motorway,ferry"})
    assert r.status_code == 200
    assert r.json()["edges"] == plain["edges"]  # no motorway or ferry on this route
    bad = client.get("/v1/route", params={"from": A, "to": B, "exclude": "motorway,tunnel"})
    assert bad.status_code == 422
    assert bad.json() == {"code": "invalid_value", "details": None, "message":
                          "`exclude` has unknown class 'tunnel'; known classes: motorway, "
                          "toll, ferry"}


def test_http_post_route_avoid(client) -> None:
    lon, lat, edges = _mid(client)
    poly = _square(lon, lat, 0.0008)
    a = [float(x) for x in A.split(",")]
    r = client.post("/v1/route", json={"from": a, "to": B, "avoid": poly, "exclude": ["ferry"]})
    assert r.status_code == 200, r.json()
    body = r.json()
    assert body["edges"] != edges
    line = shapely.LineString(body["geometry"]["coordinates"])
    assert not line.intersects(parse_avoid(poly))
    # Both point forms, and the GET parameters as fields.
    again = client.post("/v1/route", json={"from": A, "to": B, "avoid": poly, "steps": True})
    assert again.json()["edges"] == body["edges"] and again.json()["legs"]
    plain = client.post("/v1/route", json={"from": A, "to": B})
    assert plain.status_code == 200 and plain.json()["edges"] == edges


def test_http_post_route_errors(client) -> None:
    lat_b, lon_b = (float(x) for x in B.split(","))
    r = client.post("/v1/route", json={"from": A, "to": B, "avoid": _square(lon_b, lat_b, 0.001)})
    assert r.status_code == 422
    assert r.json() == {"code": "point_in_avoid", "details": {"field": "to"}, "message":
                        f"`to` (lat={lat_b:.6f}, lon={lon_b:.6f}) lies inside the avoided area"}
    ring = {"type": "Polygon", "coordinates": [_square(lon_b, lat_b, 0.004)["coordinates"][0],
                                               _square(lon_b, lat_b, 0.002)["coordinates"][0]]}
    r = client.post("/v1/route", json={"from": A, "to": B, "avoid": ring})
    assert (r.status_code, r.json()["code"]) == (404, "no_route")
    open_ring = {"type": "Polygon", "coordinates": [[[12.55, 55.67], [12.56, 55.67],
                                                     [12.56, 55.68], [12.55, 55.68]]]}
    r = client.post("/v1/route", json={"from": A, "to": B, "avoid": open_ring})
    assert r.status_code == 422
    assert r.json() == {"code": "invalid_value", "details": {"field": "avoid.coordinates[0]"},
                        "message": "`avoid.coordinates[0]` is not closed: its first position "
                                   "[12.55, 55.67] differs from its last [12.55, 55.68]"}
    r = client.post("/v1/route", json={"from": A, "to": B, "avoid": {"type": "Polygon",
                                                                     "coordinates": "x"}})
    assert (r.status_code, r.json()["message"]) == (
        422, "`avoid.coordinates` must be a non-empty list")
    r = client.post("/v1/route", json={"from": A, "to": B, "avoids": {}})
    assert (r.status_code, r.json()["code"]) == (422, "unknown_parameter")  # api/strict.py
    assert "`avoids`" in r.json()["message"]
    r = client.post("/v1/route", json={"from": [91, 12.5], "to": B})
    assert r.json()["message"] == "`from` latitude must be within [-90, 90]; got 91.0"


def test_http_table_exclude(client) -> None:
    pts = [[float(x) for x in p.split(",")] for p in (A, B)]
    plain = client.post("/v1/table", json={"sources": pts, "destinations": pts}).json()
    r = client.post("/v1/table", json={"sources": pts, "destinations": pts,
                                       "exclude": "ferry"})
    assert r.status_code == 200
    assert np.allclose(r.json()["durations_s"], plain["durations_s"], atol=1e-3)
    r = client.post("/v1/table", json={"sources": pts, "destinations": pts, "exclude": ["x"]})
    assert (r.status_code, r.json()["code"]) == (422, "invalid_value")
