"""Speed feeds (issue 12 items 3-4): OSM node ids of geometry points, OSRM segment-speed CSV in
and out, part-of-edge blending, speed-0 closures, age limit, errors, roles, restarts."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from conftest import shared_file
from fastapi.testclient import TestClient

from api.app import create_app
from api.security import parse_api_keys
from api.settings import Settings
from graph.io import load_compiled, save_network, write_array_archive
from graph.network import build_network
from graph.osm import load_osm
from traffic.speed_feeds import (
    FeedConfig,
    FeedFormatError,
    FeedStore,
    export_speed_csv,
    parse_speed_csv,
    segment_parts,
)
from workers.services import LocalServices, PipelineConfig

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def net():
    return load_osm(shared_file("osm/liechtenstein-latest.osm.pbf"))


def _services(net, data_dir, clock: str = "wall", **kw):
    return LocalServices(net, PipelineConfig(clock=clock, data_dir=str(data_dir),
                                             snapshot_every_s=None, **kw))


def _long_edge(net, min_points: int = 4) -> int:
    n_pts = np.diff(net.geom_offsets)
    return int(np.flatnonzero((n_pts >= min_points) & (net.edge_length_m > 50))[0])


def _seg_line(net, e: int, j: int, speed: float) -> str:
    a = int(net.geom_offsets[e]) + j
    return f"{int(net.geom_osm_node[a])},{int(net.geom_osm_node[a + 1])},{speed:g}\n"


# -- OSM node ids in the network ----------------------------------------------------------
def test_geom_osm_node_from_osm_import(net):
    assert net.geom_osm_node.shape == net.geom_lat.shape
    assert (net.geom_osm_node != -1).all()
    off = net.geom_offsets
    np.testing.assert_array_equal(net.geom_osm_node[off[:-1]], net.edge_osm_from)
    np.testing.assert_array_equal(net.geom_osm_node[off[1:] - 1], net.edge_osm_to)


@pytest.mark.parametrize("mmap", [False, True])
def test_geom_osm_node_compiled_round_trip(net, tmp_path, mmap):
    back = load_compiled(save_network(net, tmp_path / "li.net"), mmap=mmap, verify=True)
    assert back.version == net.version
    np.testing.assert_array_equal(back.geom_osm_node, net.geom_osm_node)


def test_geom_osm_node_old_format_loads_with_minus_one(tmp_path):
    small = build_network(node_lat=[47.1, 47.1, 47.2], node_lon=[9.5, 9.6, 9.6],
                          edge_src=[0, 1], edge_dst=[1, 2], edge_speed_kph=[50, 50])
    assert (small.geom_osm_node == -1).all()
    arrays = {k: v for k, v in small.arrays().items() if k != "geom_osm_node"}
    header = {"format": "traffic-road-network", "format_version": 2, "name": small.name,
              "version": small.version,
              "arrays": {k: [a.dtype.str, list(a.shape)] for k, a in arrays.items()}}
    path = tmp_path / "old.net"
    with path.open("wb") as fh:
        write_array_archive(fh, header, arrays)
    back = load_compiled(path, verify=True)
    assert back.version == small.version
    assert (back.geom_osm_node == -1).all() and back.geom_osm_node.shape == small.geom_lat.shape


# -- parsing and mapping --------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("1,2,fast\n", "must be numeric"),
    ("1,2\n", "expected 3 or 4 columns"),
    ("1,2,3,4,5\n", "expected 3 or 4 columns"),
    ("a,2,30\n", "must be integers"),
    ("1,2,-5\n", ">= 0"),
    ("1,2,nan\n", ">= 0"),
    ("1,2,30\n3,4,30,x\n", "row 2"),
])
def test_parse_speed_csv_invalid_value(text, message):
    with pytest.raises(FeedFormatError, match=message):
        parse_speed_csv(text)


def test_parse_speed_csv_empty_and_rate():
    frm, to, v, rows = parse_speed_csv(b"\n1,2,30,1.5\n\n3,4,0\n")
    assert frm.tolist() == [1, 3] and to.tolist() == [2, 4] and v.tolist() == [30, 0]
    assert rows.tolist() == [2, 4]
    assert parse_speed_csv("")[0].size == 0


def test_segment_parts_sum_to_edge_length(net):
    e = _long_edge(net)
    a, b = int(net.geom_offsets[e]), int(net.geom_offsets[e + 1])
    edge, length = segment_parts(net, np.arange(a, b - 1))
    assert (edge == e).all()
    assert length.sum() == pytest.approx(net.edge_length_m[e], rel=1e-9)


def test_feed_store_part_blend_and_age_limit(net):
    e = _long_edge(net)
    store = FeedStore(net, FeedConfig(weight=1.0, age_limit_s=100.0))
    f, t, v, _ = parse_speed_csv(_seg_line(net, e, 1, 20.0))
    assert store.apply(f, t, v, now_s=1000.0) == []
    seg = int(net.geom_offsets[e]) + 1
    _, (len_j,) = segment_parts(net, np.array([seg]))
    L = net.edge_length_m[e]
    edges, keep, add = store.blend(1000.0)
    assert edges.tolist() == [e]
    assert keep[0] == pytest.approx(1 - len_j / L) and add[0] == pytest.approx(len_j / (20 / 3.6))
    edges, keep, add = store.blend(1050.0)  # half the age limit: half the weight
    assert keep[0] == pytest.approx(1 - 0.5 * len_j / L)
    assert add[0] == pytest.approx(0.5 * len_j / (20 / 3.6))
    assert store.blend(1100.0)[0].size == 0  # past the age limit: the probe estimate alone
    assert store.expire(1100.0) == 1 and store.stats(1100.0)["parts_live"] == 0


# -- the service ----------------------------------------------------------------------------
def test_post_speeds_applies_to_part_of_an_edge(net, tmp_path):
    svc = _services(net, tmp_path)
    try:
        e = _long_edge(net)
        before = svc.router.live_travel_times()[e]
        out = svc.import_speeds(_seg_line(net, e, 1, 7.0).encode())
        assert out["applied"] == 1 and out["rejected"] == []
        seg = int(net.geom_offsets[e]) + 1
        _, (len_j,) = segment_parts(net, np.array([seg]))
        L = net.edge_length_m[e]
        after = svc.router.live_travel_times()[e]
        # The fed part at 7 km/h, the other parts keep the estimate (weight ~1, age ~0).
        expect = before * (1 - len_j / L) + len_j / (7 / 3.6)
        assert after == pytest.approx(expect, rel=1e-4)
        assert after > before
        others = np.delete(svc.router.live_travel_times(), e)
        np.testing.assert_allclose(others, np.delete(net.edge_freeflow_time_s, e))
    finally:
        svc.close()


def test_speed_zero_closes_and_later_line_reopens(net, tmp_path):
    svc = _services(net, tmp_path)
    try:
        e = _long_edge(net)
        key = int(net.edge_key[e])
        out = svc.import_speeds(_seg_line(net, e, 0, 0).encode())
        assert out["closed_edges"] == 1
        closures = [c for c in svc.list_closures() if c["id"] == f"feed-{key}"]
        assert len(closures) == 1 and closures[0]["reason"] == "speed feed"
        assert closures[0]["kind"] == "closure" and closures[0]["edge_keys"] == [key]
        assert closures[0]["end_t"] == pytest.approx(time.time() + 900, abs=5)
        assert np.isinf(svc.router.live_travel_times()[e])
        out = svc.import_speeds(_seg_line(net, e, 0, 30).encode())
        assert out["reopened_edges"] == 1
        assert not [c for c in svc.list_closures() if c["id"] == f"feed-{key}"]
        assert np.isfinite(svc.router.live_travel_times()[e])
    finally:
        svc.close()


def test_speed_feed_fades_with_age_on_tick(net, tmp_path):
    svc = _services(net, tmp_path)
    try:
        # An age limit of seconds, not tenths: the import itself may take a good part of a
        # second on a loaded machine, and the blend must still be strong when checked.
        svc.feed_config = FeedConfig(weight=1.0, age_limit_s=3.0, refresh_s=0.0)
        svc.feeds = FeedStore(net, svc.feed_config)
        e = _long_edge(net)
        free = net.edge_freeflow_time_s[e]
        svc.import_speeds("".join(_seg_line(net, e, j, 5) for j in range(3)).encode())
        assert svc.router.live_travel_times()[e] > free * 1.5
        time.sleep(3.1)
        svc.tick()
        assert svc.router.live_travel_times()[e] == pytest.approx(free)
        assert svc.status()["sources"]["speed_feed"]["parts_live"] == 0
    finally:
        svc.close()


def test_speeds_over_http_errors_roles_and_status(net, tmp_path):
    svc = _services(net, tmp_path)
    ring = parse_api_keys("pw:probe-writer,rd:reader", source="test", separator=",")
    try:
        with TestClient(create_app(svc, Settings(api_keys=ring))) as c:
            e = _long_edge(net)
            good = _seg_line(net, e, 0, 25)
            hdr = {"Content-Type": "text/csv"}
            r = c.post("/v1/speeds", content=good, headers={**hdr, "Authorization": "Bearer rd"})
            assert r.status_code == 403 and "probe-writer" in r.json()["message"]
            assert c.post("/v1/speeds", content=good, headers=hdr).status_code == 401
            pw = {**hdr, "Authorization": "Bearer pw"}
            bad = c.post("/v1/speeds", content=good + "1,2,fast\n", headers=pw)
            assert bad.status_code == 400 and bad.json()["code"] == "invalid_value"
            assert "row 2" in bad.json()["message"] and "numeric" in bad.json()["message"]
            assert svc.feeds.stats(time.time())["parts_live"] == 0  # nothing applied
            cols = c.post("/v1/speeds", content="1,2\n", headers=pw)
            assert cols.status_code == 400 and "columns" in cols.json()["message"]
            a = int(net.geom_offsets[e])
            n0, _, n2 = (int(x) for x in net.geom_osm_node[a:a + 3])
            body = good + f"{n0},{n2},30\n" + "1,2,40\n"
            r = c.post("/v1/speeds", content=body, headers=pw)
            assert r.status_code == 202, r.text
            ans = r.json()
            assert ans["applied"] == 1 and [x["row"] for x in ans["rejected"]] == [2, 3]
            assert "not consecutive" in ans["rejected"][0]["reason"]
            st = c.get("/v1/status", headers={"Authorization": "Bearer rd"}).json()
            feed = st["sources"]["speed_feed"]
            assert feed["parts_live"] == 1 and feed["lines_rejected"] == 2
            assert feed["weight"] == 1.0 and feed["age_limit_s"] == 900.0
            assert "probes" in st["sources"]
            csv = c.get("/v1/speeds.csv", headers={"Authorization": "Bearer rd"})
            assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    finally:
        svc.close()


def test_feeds_survive_a_restart_and_the_checkpoint(net, tmp_path):
    from workers.durability import DurabilityConfig

    cfg = PipelineConfig(clock="wall", data_dir=str(tmp_path), snapshot_every_s=None,
                         durability=DurabilityConfig(str(tmp_path),
                                                     pseudonym_key="feed-test-key-000001"))
    e = _long_edge(net)
    svc = LocalServices(net, cfg)
    try:
        svc.import_speeds(_seg_line(net, e, 1, 9).encode())
        fed = svc.router.live_travel_times()[e]
        svc.checkpoint_now()
    finally:
        svc.close()
    again = LocalServices(net, cfg)
    try:
        assert again.router.live_travel_times()[e] == pytest.approx(fed, rel=1e-3)
    finally:
        again.close()
    (tmp_path / "feeds" / "feeds.npz").unlink()
    third = LocalServices(net, cfg)
    try:
        assert third.router.live_travel_times()[e] == pytest.approx(fed, rel=1e-3)
        assert third.status()["sources"]["speed_feed"]["lines_applied"] == 1
    finally:
        third.close()


def test_speeds_csv_round_trip_liechtenstein(net, tmp_path):
    rng = np.random.default_rng(12)
    # Event clock: no probes move it, so neither feed fades while the test runs (on the
    # wall clock a loaded machine's seconds between the two imports showed as > 1 km/h).
    first = _services(net, tmp_path / "a", clock="event")
    second = _services(net, tmp_path / "b", clock="event")
    try:
        # Live speeds on every segment: a feed at random speeds, one line per part, so the
        # edges' speeds are blends of several parts (not the export's whole km/h).
        osm, off = net.geom_osm_node, net.geom_offsets
        start = np.ones(osm.size, dtype=bool)
        start[off[1:] - 1] = False
        seg = np.flatnonzero(start)
        speeds = rng.uniform(5, 120, seg.size)
        feed = "".join(f"{osm[s]},{osm[s + 1]},{v:.3f}\n" for s, v in zip(seg, speeds))
        with TestClient(create_app(first, Settings())) as c:
            assert c.post("/v1/speeds", content=feed,
                          headers={"Content-Type": "text/csv"}).status_code == 202
            exported = c.get("/v1/speeds.csv").content
        assert exported.count(b"\n") == seg.size  # one line per consecutive OSM node pair
        with TestClient(create_app(second, Settings())) as c:
            r = c.post("/v1/speeds", content=exported, headers={"Content-Type": "text/csv"})
            assert r.status_code == 202 and r.json()["rejected"] == []
        kmh_a = net.edge_length_m / first.router.live_travel_times() * 3.6
        kmh_b = net.edge_length_m / second.router.live_travel_times() * 3.6
        # The feed is in force (not the free-flow speeds on both sides) ...
        kmh_ff = net.edge_length_m / net.edge_freeflow_time_s * 3.6
        assert np.mean(np.abs(kmh_a - kmh_ff) > 5.0) > 0.5
        # ... and came through the export unchanged.
        assert np.abs(kmh_a - kmh_b).max() <= 1.0
        # Exporting again from the second server gives the same file.
        assert export_speed_csv(net, second.router.live_travel_times()) == exported
    finally:
        first.close()
        second.close()


def test_cli_speeds_import_and_export(net, tmp_path, monkeypatch, capsys):
    import httpx

    from cli import main

    svc = _services(net, tmp_path)
    try:
        with TestClient(create_app(svc, Settings())) as c:
            def post(url, **kw):  # type: ignore[no-untyped-def]
                kw.pop("timeout", None)
                return c.post(url.replace("http://srv", ""), **kw)

            def get(url, **kw):  # type: ignore[no-untyped-def]
                kw.pop("timeout", None)
                return c.get(url.replace("http://srv", ""), **kw)

            monkeypatch.setattr(httpx, "post", post)
            monkeypatch.setattr(httpx, "get", get)
            e = _long_edge(net)
            feed = tmp_path / "feed.csv"
            feed.write_text(_seg_line(net, e, 0, 12) + "1,2,30\n")
            assert main(["speeds", "import", str(feed), "--url", "http://srv"]) == 0
            out = capsys.readouterr()
            assert json.loads(out.out)["applied"] == 1 and "row 2" in out.err
            feed.write_text("1,2,x\n")
            assert main(["speeds", "import", str(feed), "--url", "http://srv"]) == 2
            assert "400" in capsys.readouterr().err
            dest = tmp_path / "out.csv"
            assert main(["speeds", "export", str(dest), "--url", "http://srv"]) == 0
            assert dest.read_bytes() == svc.export_speeds()
    finally:
        svc.close()


def test_feed_line_sets_every_segment_of_its_pair():
    # Two ways drawn over the same two OSM nodes: one line sets both edges' parts.
    two = build_network(node_lat=[47.1, 47.1], node_lon=[9.5, 9.51], edge_src=[0, 0],
                        edge_dst=[1, 1], edge_speed_kph=[50, 50], edge_osm_way=[1, 2],
                        node_osm_id=[10, 11], geom_osm_node=[10, 11, 10, 11])
    store = FeedStore(two)
    f, t, v, _ = parse_speed_csv("10,11,25\n11,10,25\n")
    rejected = store.apply(f, t, v, now_s=0.0)
    assert [r for r, _ in rejected] == [1] and "one-way" in rejected[0][1]
    edges, _, add = store.blend(0.0)
    assert edges.tolist() == [0, 1]
    np.testing.assert_allclose(add, two.edge_length_m / (25 / 3.6))
    back = FeedStore(two)
    back.load_state_dict(store.state_dict())
    np.testing.assert_allclose(back.blend(0.0)[2], add)


def test_feed_carried_over_a_network_swap(net, tmp_path):
    from graph.connectivity import keep_largest_scc

    svc = _services(net, tmp_path)
    try:
        e = _long_edge(net)
        svc.import_speeds(_seg_line(net, e, 1, 6).encode())
        fed = svc.router.live_travel_times()[e]
        new = keep_largest_scc(net)
        assert new.version != net.version
        svc._swap(new, svc._prepare(new))
        (e2,) = new.edge_index_of_keys(np.array([net.edge_key[e]]))
        assert e2 >= 0
        assert svc.router.live_travel_times()[e2] == pytest.approx(fed, rel=1e-3)
    finally:
        svc.close()
