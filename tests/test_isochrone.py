"""Isochrones: reach times against scipy's Dijkstra; contours hold what they promise."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import shapely
from fastapi.testclient import TestClient
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree

from api.app import create_app
from api.settings import Settings
from conftest import shared_file
from graph.io import load_network
from graph.isochrone import EdgeGeometry, check_minutes, isochrones, reach_times
from workers.services import LocalServices, PipelineConfig

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def net():
    return load_network(shared_file("osm/liechtenstein-latest.osm.pbf"))


@pytest.fixture(scope="module")
def times(net):
    rng = np.random.default_rng(7)
    free = np.asarray(net.edge_length_m) / np.asarray(net.edge_freeflow_mps)
    return free * rng.uniform(1.0, 3.0, net.n_edges)  # congested, unevenly


def _reference(net, tt, seeds, seed_s, *, reverse):
    """scipy Dijkstra from a super-source joined to the seeds by their start times."""
    n = net.n_nodes
    src, dst = np.asarray(net.edge_src), np.asarray(net.edge_dst)
    if reverse:
        src, dst = dst, src
    rows = np.concatenate([src, np.full(len(seeds), n)])
    cols = np.concatenate([dst, seeds])
    w = np.concatenate([tt, seed_s]) + 1e-12  # scipy drops explicit zeros
    g = sp.coo_matrix((w, (rows, cols)), shape=(n + 1, n + 1)).tocsr()
    g.sum_duplicates()  # parallel edges: keep the fastest
    g = sp.coo_matrix((w, (rows, cols)), shape=(n + 1, n + 1))
    best = {}
    for r, c, x in zip(g.row.tolist(), g.col.tolist(), g.data.tolist(), strict=True):
        if (r, c) not in best or x < best[(r, c)]:
            best[(r, c)] = x
    keys = np.array(list(best.keys()))
    g = sp.csr_matrix((np.array(list(best.values())), (keys[:, 0], keys[:, 1])),
                      shape=(n + 1, n + 1))
    return dijkstra(g, indices=n)[:n]


@pytest.mark.parametrize("reverse", [False, True])
def test_reach_times_match_scipy_dijkstra(net, times, reverse):
    rng = np.random.default_rng(3)
    seeds = rng.integers(0, net.n_nodes, 2)
    seed_s = np.array([0.0, 30.0])
    got = reach_times(net, times, seeds, seed_s, 900.0, reverse=reverse)
    ref = _reference(net, times, seeds, seed_s, reverse=reverse)
    within = ref <= 900.0 - 1e-6
    assert within.sum() > 100
    np.testing.assert_allclose(got[within], ref[within], rtol=1e-9, atol=1e-6)
    assert np.all(np.isinf(got[ref > 900.0 + 1e-6]))


@pytest.mark.parametrize("reverse", [False, True])
def test_contours_contain_reached_nest_and_stay_close(net, times, reverse):
    rng = np.random.default_rng(11 + reverse)
    geometry = EdgeGeometry(net)
    for _ in range(3):
        e = int(rng.integers(net.n_edges))
        frac = float(rng.uniform(0.1, 0.9))
        off = frac * float(net.edge_length_m[e])
        contours = isochrones(net, times, np.array([e]), np.array([off]), [3, 6, 10],
                              reverse=reverse, geometry=geometry)
        assert [c.minutes for c in contours] == [3, 6, 10]
        if reverse:
            t = reach_times(net, times, net.edge_src[[e]], [frac * times[e]], 1e9,
                            reverse=True)
        else:
            t = reach_times(net, times, net.edge_dst[[e]], [(1 - frac) * times[e]], 1e9)
        lon, lat = np.asarray(net.node_lon), np.asarray(net.node_lat)
        for i, c in enumerate(contours):
            limit = c.minutes * 60.0
            poly = c.polygon
            assert c.area_km2 > 0 and poly.is_valid
            # Every node reached within the contour's time is inside.
            reached = t <= limit
            assert np.all(shapely.intersects_xy(poly, lon[reached], lat[reached]))
            # A node well beyond the time lies inside only within 100 m of a reached stretch.
            far = np.flatnonzero((t > 1.2 * limit) & shapely.intersects_xy(poly, lon, lat))
            if far.size:
                kx = 111_320.0 * np.cos(np.radians(lat[far].mean()))
                edges_ok = np.flatnonzero((t[net.edge_src] if not reverse
                                           else t[net.edge_dst]) <= limit)
                sl, so = geometry.sample(edges_ok, np.zeros(edges_ok.size),
                                         np.ones(edges_ok.size), step_m=10.0)
                tree = cKDTree(np.column_stack([so * kx, sl * 110_574.0]))
                d, _ = tree.query(np.column_stack([lon[far] * kx, lat[far] * 110_574.0]))
                assert d.max() <= 100.0, d.max()
            if i:
                assert contours[i - 1].polygon.difference(poly).area < 1e-12  # nesting
                assert contours[i - 1].area_km2 <= c.area_km2


def test_check_minutes_limits():
    assert check_minutes([10, 5, 5]) == [5.0, 10.0]
    with pytest.raises(ValueError, match="1 to 4 contours"):
        check_minutes([1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match=r"within \(0, 120\]"):
        check_minutes([121])


@pytest.fixture(scope="module")
def client():
    net = load_network(shared_file("scenario_kbh/network.osm.pbf"))
    svc = LocalServices(net, PipelineConfig(clock="event"))
    with TestClient(create_app(svc, Settings(clock="event"))) as c:
        yield c
    svc.close()


def test_isochrone_endpoint_geojson(client):
    r = client.get("/v1/isochrone", params={"from": "55.68176,12.55832", "minutes": "2,5"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "FeatureCollection" and body["basis"] == "live"
    assert [f["properties"]["minutes"] for f in body["features"]] == [2.0, 5.0]
    polys = [shapely.geometry.shape(f["geometry"]) for f in body["features"]]
    assert polys[0].within(polys[1].buffer(1e-9))
    assert polys[1].contains(shapely.Point(12.55832, 55.68176))
    back = client.get("/v1/isochrone", params={"from": "55.68176,12.55832", "minutes": "5",
                                               "reverse": "true"}).json()
    assert back["reverse"] is True and back["features"][0]["properties"]["area_km2"] > 0


@pytest.mark.parametrize("params, message", [
    ({"from": "55.68,12.55", "minutes": "5,10,15,20,25"}, "1 to 4 contours"),
    ({"from": "55.68,12.55", "minutes": "121"}, r"within \(0, 120\]"),
    ({"from": "55.68,12.55", "minutes": "ten"}, "comma-separated list of numbers"),
    ({"from": "95,12.55", "minutes": "5"}, "`from`"),
])
def test_isochrone_bad_input_is_422(client, params, message):
    r = client.get("/v1/isochrone", params=params)
    assert r.status_code == 422, r.text
    import re

    assert re.search(message, r.json()["message"]), r.json()
