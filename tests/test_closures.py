"""Closures and slowdowns: road selection, time windows, the routes they change, durability."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient

from api.app import create_app
from api.security import parse_api_keys
from api.settings import Settings
from conftest import shared_file
from graph.io import load_network
from graph.spatial import build_spatial_index
from traffic.closures import (Closure, ClosureError, ClosureStore, edges_along, edges_inside,
                              parse_closure)
from workers.services import LocalServices, PipelineConfig

pytestmark = pytest.mark.shared_data

A = (55.68176, 12.55832)  # Gyldenløvesgade, central Copenhagen
B = (55.6700, 12.5750)  # 22 edges away: interior edges can close


@pytest.fixture(scope="module")
def net():
    return load_network(shared_file("scenario_kbh/network.osm.pbf"))


def _edge_line(net, e: int) -> shapely.LineString:
    a, b = int(net.geom_offsets[e]), int(net.geom_offsets[e + 1])
    return shapely.LineString(np.column_stack([net.geom_lon[a:b], net.geom_lat[a:b]]))


def test_edges_along_takes_both_directions_unless_forward(net):
    two_way = np.flatnonzero(~np.asarray(net.edge_oneway) & (net.edge_length_m > 80))
    e = int(two_way[0])
    line = _edge_line(net, e)
    both = edges_along(net, line)
    assert e in both
    twins = both[(net.edge_src[both] == net.edge_dst[e]) & (net.edge_dst[both] == net.edge_src[e])]
    assert twins.size == 1
    fwd = edges_along(net, line, forward_only=True)
    assert e in fwd and twins[0] not in fwd
    # Looking only where the spatial index says (as the service does) finds the same edges.
    index = build_spatial_index(net)
    np.testing.assert_array_equal(edges_along(net, line, spatial=index), both)
    np.testing.assert_array_equal(edges_along(net, line, forward_only=True, spatial=index), fwd)
    # Every selected edge lies within 20 m of the line over its whole geometry.
    kx = 111_320.0 * math.cos(math.radians(55.68))
    for x in both:
        pts = np.column_stack([(net.geom_lon[net.geom_offsets[x]:net.geom_offsets[x + 1]]) * kx,
                               net.geom_lat[net.geom_offsets[x]:net.geom_offsets[x + 1]]
                               * 110_574.0])
        ref = np.column_stack([np.asarray(line.coords)[:, 0] * kx,
                               np.asarray(line.coords)[:, 1] * 110_574.0])
        assert shapely.LineString(ref).distance(shapely.MultiPoint(pts)) <= 20.0 + 1e-6


def test_edges_inside_polygon(net):
    poly = shapely.box(12.55, 55.675, 12.57, 55.685)
    inside = edges_inside(net, poly)
    assert inside.size > 10
    lon, lat = np.asarray(net.geom_lon), np.asarray(net.geom_lat)
    brute = [x for x in range(net.n_edges) if np.all(shapely.contains_xy(
        poly, lon[net.geom_offsets[x]:net.geom_offsets[x + 1]],
        lat[net.geom_offsets[x]:net.geom_offsets[x + 1]]))]
    assert inside.tolist() == brute
    assert edges_inside(net, poly, spatial=build_spatial_index(net)).tolist() == brute


def test_store_windows_overlaps_and_state(net):
    store = ClosureStore(net)
    c1 = Closure("a", "closure", math.inf, 100.0, 200.0, "", "both", None, (1, 2))
    c2 = Closure("b", "slowdown", 2.0, 150.0, 300.0, "", "both", None, (2, 3))
    store.add(c1, np.array([1, 2]))
    store.add(c2, np.array([2, 3]))
    e, f = store.factors_at(120.0)
    assert e.tolist() == [1, 2] and np.all(np.isinf(f))
    e, f = store.factors_at(160.0)
    assert e.tolist() == [1, 2, 3] and np.isinf(f[0]) and np.isinf(f[1]) and f[2] == 2.0
    e, f = store.factors_at(250.0)
    assert e.tolist() == [2, 3] and f.tolist() == [2.0, 2.0]
    assert store.factors_at(300.0)[0].size == 0  # ends by itself at end_t
    assert store.next_change_after(160.0) == 200.0
    keys = np.asarray(net.edge_key)
    real = ClosureStore(net)
    real.add(Closure("c", "slowdown", 3.0, 0.0, 10.0, "x", "both", None,
                     tuple(int(k) for k in keys[[5, 6]])), np.array([5, 6]))
    again = ClosureStore(net)
    again.load_state_dict(real.state_dict())
    assert again.list() == real.list()
    with pytest.raises(ValueError, match="version 7"):
        again.load_state_dict({"version": 7, "closures": []})


@pytest.mark.parametrize("body, message", [
    ({"kind": "closure", "end_t": 10.0, "start_t": 20.0,
      "geometry": {"edge_keys": [1]}}, "after `start_t`"),
    ({"kind": "slowdown", "factor": 0.5, "end_t": 10.0,
      "geometry": {"edge_keys": [1]}}, "`factor`"),
    ({"kind": "closure", "end_t": 10.0, "geometry": {"type": "Polygon", "coordinates": [
        [[0, 0], [0.001, 0], [0.001, 0.001], [0, 0.001], [0, 0]]]}}, "touches no road"),
    ({"kind": "closure", "end_t": 10.0, "geometry": {"type": "Polygon", "coordinates": [
        [[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}}, "not valid"),
    ({"kind": "closure", "end_t": 10.0, "geometry": {"edge_keys": [-5]}}, "unknown edge"),
])
def test_parse_closure_refuses_bad_input(net, body, message):
    with pytest.raises(ClosureError, match=message):
        parse_closure(net, body, now_s=0.0)


def _services(net, data_dir):
    return LocalServices(net, PipelineConfig(clock="wall", data_dir=str(data_dir),
                                             snapshot_every_s=None))


def test_closure_reroutes_slowdown_slows_removal_restores_and_restart_keeps(net, tmp_path):
    svc = _services(net, tmp_path)
    try:
        before = svc.route(A, B)
        keys = before["edges"]
        mid = keys[len(keys) // 2: len(keys) // 2 + 2]
        now = time.time()
        slow = svc.add_closure({"kind": "slowdown", "factor": 4.0, "end_t": now + 3600,
                                "geometry": {"edge_keys": keys}})
        slowed = svc.route(A, B)
        assert slowed["duration_s"] > before["duration_s"] * 1.5
        svc.remove_closure(slow["id"])
        assert svc.route(A, B)["duration_s"] == pytest.approx(before["duration_s"])
        closed = svc.add_closure({"kind": "closure", "end_t": now + 3600,
                                  "geometry": {"edge_keys": mid}, "reason": "works"})
        assert closed["factor"] is None and closed["n_edges"] == len(mid)
        around = svc.route(A, B)
        assert not set(mid) & set(around["edges"])
        assert around["duration_s"] >= before["duration_s"]
        # Learned speeds untouched: the estimator's state does not know about closures.
        assert [c["id"] for c in svc.list_closures()] == [closed["id"]]
    finally:
        svc.close()
    again = _services(net, tmp_path)  # restart on the same data dir
    try:
        assert [c["id"] for c in again.list_closures()] == [closed["id"]]
        assert not set(mid) & set(again.route(A, B)["edges"])
    finally:
        again.close()


def test_closure_ends_by_itself(net, tmp_path):
    svc = _services(net, tmp_path)
    try:
        before = svc.route(A, B)
        keys = before["edges"]
        svc.add_closure({"kind": "closure", "end_t": time.time() + 3.0,
                         "geometry": {"edge_keys": keys[1:3]}})
        assert not set(keys[1:3]) & set(svc.route(A, B)["edges"])
        time.sleep(3.2)
        svc.tick()
        assert svc.route(A, B)["edges"] == keys
        assert svc.list_closures() == []
    finally:
        svc.close()


def test_closures_over_http_roles_and_errors(net, tmp_path):
    svc = _services(net, tmp_path)
    ring = parse_api_keys("op-key:operator,rd-key:reader,adm:network-admin", source="test",
                          separator=",")
    settings = Settings(api_keys=ring)
    try:
        with TestClient(create_app(svc, settings)) as c:
            keys = svc.route(A, B)["edges"][2:4]
            body = {"kind": "closure", "end_t": time.time() + 600,
                    "geometry": {"edge_keys": keys}}
            r = c.post("/v1/closures", json=body, headers={"Authorization": "Bearer rd-key"})
            assert r.status_code == 403 and "`operator` or `network-admin`" in r.json()["message"]
            r = c.post("/v1/closures", json=body, headers={"Authorization": "Bearer op-key"})
            assert r.status_code == 201, r.text
            cid = r.json()["id"]
            listed = c.get("/v1/closures", headers={"Authorization": "Bearer rd-key"}).json()
            assert [x["id"] for x in listed["closures"]] == [cid]
            route = c.get("/v1/route", params={"from": "%f,%f" % A, "to": "%f,%f" % B},
                          headers={"Authorization": "Bearer rd-key"}).json()
            assert not set(keys) & set(route["edges"])
            bad = c.post("/v1/closures", json={**body, "start_t": body["end_t"] + 1},
                         headers={"Authorization": "Bearer adm"})
            assert bad.status_code == 422 and "`end_t`" in bad.json()["message"]
            extra = c.post("/v1/closures", json={**body, "colour": "red"},
                           headers={"Authorization": "Bearer adm"})
            assert extra.status_code == 422 and "colour" in extra.json()["message"]
            r = c.delete(f"/v1/closures/{cid}", headers={"Authorization": "Bearer rd-key"})
            assert r.status_code == 403
            r = c.delete(f"/v1/closures/{cid}", headers={"Authorization": "Bearer adm"})
            assert r.status_code == 204
            assert c.delete(f"/v1/closures/{cid}",
                            headers={"Authorization": "Bearer adm"}).status_code == 404
    finally:
        svc.close()


def test_congestion_shows_closures_beside_the_learned_state(net, tmp_path):
    svc = _services(net, tmp_path)
    try:
        keys = svc.route(A, B)["edges"]
        svc.add_closure({"kind": "closure", "end_t": time.time() + 600,
                         "geometry": {"edge_keys": keys[3:5]}})
        svc.add_closure({"kind": "slowdown", "factor": 2.5, "end_t": time.time() + 600,
                         "geometry": {"edge_keys": keys[8:9]}})
        frame = svc.congestion((12.52, 55.63, 12.63, 55.70)).frame
        closed = set(frame.filter(frame["closed"])["key"].to_list())
        assert closed == set(keys[3:5])
        slow = frame.filter(frame["override_factor"].is_not_null())
        assert slow["key"].to_list() == keys[8:9] and slow["override_factor"][0] == 2.5
        with TestClient(create_app(svc, Settings())) as c:
            gj = c.get("/v1/congestion", params={"bbox": "12.52,55.63,12.63,55.70"},
                       headers={"Accept": "application/geo+json"}).json()
            props = {f["properties"]["key"]: f["properties"] for f in gj["features"]}
            assert all(props[k]["closed"] for k in keys[3:5])
    finally:
        svc.close()


def test_closures_restored_from_the_checkpoint_when_their_file_is_gone(net, tmp_path):
    from workers.durability import DurabilityConfig

    cfg = PipelineConfig(clock="wall", data_dir=str(tmp_path), snapshot_every_s=None,
                         durability=DurabilityConfig(str(tmp_path),
                                                     pseudonym_key="closure-test-key-0001"))
    svc = LocalServices(net, cfg)
    try:
        keys = svc.route(A, B)["edges"]
        made = svc.add_closure({"kind": "closure", "end_t": time.time() + 600,
                                "geometry": {"edge_keys": keys[3:5]}})
        svc.checkpoint_now()
    finally:
        svc.close()
    (tmp_path / "closures" / "closures.json").unlink()
    again = LocalServices(net, cfg)
    try:
        assert [c["id"] for c in again.list_closures()] == [made["id"]]
        assert not set(keys[3:5]) & set(again.route(A, B)["edges"])
    finally:
        again.close()
