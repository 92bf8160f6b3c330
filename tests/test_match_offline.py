"""Offline map matching (traffic.matching.OfflineMatcher) and POST /v1/match: the whole-trace
Viterbi equals the online matcher with a lag as long as the trace; accuracy on kbh's noise-free
truth; the HTTP answer, its bad input and ``ingest=true``."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import shared_file
from fastapi.testclient import TestClient

from api.app import create_app
from api.security import parse_api_keys
from api.settings import Settings
from graph.io import load_network
from graph.route_distances import build_route_distances
from graph.spatial import build_spatial_index
from traffic.matching import MatcherConfig, OfflineMatcher, OnlineMatcher, match_trace
from workers.services import LocalServices, PipelineConfig

KBH = "scenario_kbh"


@pytest.fixture(scope="module")
def kbh():
    net = load_network(shared_file(f"{KBH}/network.osm.pbf"))
    probes = pl.read_parquet(shared_file(f"{KBH}/probes.parquet")).sort(["vehicle_id", "t"])
    return net, build_spatial_index(net), probes


def _trace(probes, i):
    vid = probes["vehicle_id"].unique(maintain_order=True)[i]
    tr = probes.filter(pl.col("vehicle_id") == vid)
    return vid, {c: tr[c].to_numpy() for c in ("t", "lat", "lon", "speed_mps", "heading_deg")}


def test_match_trace_equals_online_with_full_lag(kbh) -> None:
    net, index, probes = kbh
    for i in range(0, 60, 6):
        _, tr = _trace(probes, i)
        n = tr["t"].size
        off = match_trace(net, index, build_route_distances(net), tr["t"], tr["lat"], tr["lon"],
                          speed_mps=tr["speed_mps"], heading_deg=tr["heading_deg"])
        online = OnlineMatcher(net, index, build_route_distances(net), MatcherConfig(lag=n))
        o1 = online.push(np.full(n, "v"), tr["t"], tr["lat"], tr["lon"],
                         speed_mps=tr["speed_mps"], heading_deg=tr["heading_deg"])
        o2 = online.flush()
        rows = np.r_[o1.point_row, o2.point_row]
        edges = np.r_[o1.point_edge, o2.point_edge]
        offs = np.r_[o1.point_offset_m, o2.point_offset_m]
        np.testing.assert_array_equal(off.point_edge[rows], edges)
        np.testing.assert_array_equal(off.point_offset_m[rows], offs)
        pe = np.r_[o1.piece_edge, o2.piece_edge]
        # The driven edges are the online pieces with repeats on one edge merged.
        merged = pe[np.r_[True, pe[1:] != pe[:-1]]]
        assert off.edge.size <= pe.size and set(off.edge.tolist()) == set(merged.tolist())


def test_offline_matcher_route_times_and_geometry(kbh) -> None:
    net, index, probes = kbh
    m = OfflineMatcher(net, index, build_route_distances(net))
    _, tr = _trace(probes, 3)
    out = m.match(tr["t"], tr["lat"], tr["lon"], speed_mps=tr["speed_mps"])
    assert out.n_traces >= 1 and (out.point_edge >= 0).all()
    assert np.all(out.edge_t1_s >= out.edge_t0_s) and np.all(np.diff(out.edge_t0_s) >= -1e-9)
    assert out.edge_t0_s[0] == tr["t"][0] and out.edge_t1_s[-1] == tr["t"][-1]
    # Consecutive edges of one sub-trace are joined in the network.
    same = out.edge_trace[1:] == out.edge_trace[:-1]
    assert np.all(net.edge_dst[out.edge[:-1][same]] == net.edge_src[out.edge[1:][same]])
    d = np.hypot((out.point_lat - tr["lat"]) * 111_000,
                 (out.point_lon - tr["lon"]) * 63_000)
    assert np.median(d) < 10.0  # snapped positions lie near the noisy fixes (sigma 5 m)
    lat, _, first = m.geometry(out.edge, out.edge_off0_m, out.edge_off1_m)
    assert lat.size >= out.edge.size and first.size == out.edge.size
    assert 0.0 < out.trace_confidence.min() <= out.trace_confidence.max() <= 1.0


def test_offline_matcher_empty_and_invalid(kbh) -> None:
    net, index, _ = kbh
    m = OfflineMatcher(net, index, build_route_distances(net))
    out = m.match(np.zeros(0), np.zeros(0), np.zeros(0))
    assert out.n_traces == 0 and out.edge.size == 0
    far = m.match(np.array([0.0, 10.0]), np.array([10.0, 10.0]), np.array([10.0, 10.001]))
    assert far.n_traces == 0 and list(far.point_reason) == ["no_candidate"] * 2
    with pytest.raises(ValueError, match="strictly increasing"):
        m.match(np.array([5.0, 5.0]), np.array([55.68, 55.68]), np.array([12.56, 12.56]))
    with pytest.raises(ValueError, match="equal length"):
        m.match(np.array([5.0]), np.array([55.68, 55.68]), np.array([12.56, 12.56]))


def test_offline_accuracy_beats_online_on_kbh_sample(kbh) -> None:
    """Way+direction accuracy against the noise-free truth on 150 probe vehicles (the full
    scenario figure, 0.962, is in BENCHMARKS.md from benchmarks/match_offline.py)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from match_offline import traces, truth_ok

    net, index, probes = kbh
    vids = probes["vehicle_id"].unique(maintain_order=True)[:150]
    sub = probes.filter(pl.col("vehicle_id").is_in(vids.implode()))
    m = OfflineMatcher(net, index, build_route_distances(net))
    trs = traces(sub)
    edge = np.concatenate([m.match(t, la, lo, speed_mps=v, heading_deg=h).point_edge
                           for _, t, la, lo, v, h in trs])
    vid = np.concatenate([x[0] for x in trs])
    t = np.concatenate([x[1] for x in trs])
    ok = truth_ok(net, shared_file(KBH), vid, t, edge)
    assert ok.mean() >= 0.95


@pytest.fixture(scope="module")
def http(kbh):
    net, _, probes = kbh
    services = LocalServices(net, PipelineConfig(clock="event", n_ingest=1))
    keys = parse_api_keys("w:probe-writer\nr:reader", source="test")
    with TestClient(create_app(services, Settings(clock="event", api_keys=keys))) as c:
        yield c, probes
    services.close()


def _points(tr):
    return [{"t": float(a), "lat": float(b), "lon": float(c), "speed_mps": float(d)}
            for a, b, c, d in zip(tr["t"], tr["lat"], tr["lon"], tr["speed_mps"])]


def test_http_match_answer(http) -> None:
    c, probes = http
    _, tr = _trace(probes, 5)
    pts = _points(tr)
    pts.insert(3, {"t": (pts[2]["t"] + pts[3]["t"]) / 2, "lat": 10.0, "lon": 10.0})
    before = c.get("/v1/status").json()
    r = c.post("/v1/match", json={"points": pts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["tracepoints"]) == len(pts)
    assert body["tracepoints"][3] == {"lat": None, "lon": None, "edge": None,
                                      "osm_way_id": None, "offset_m": None, "distance_m": None,
                                      "matching": None, "reason": "no_candidate"}
    tp = body["tracepoints"][0]
    assert tp["edge"] in body["edges"] and tp["reason"] is None and tp["distance_m"] < 30
    n = len(body["edges"])
    assert len(body["enter_s"]) == len(body["exit_s"]) == len(body["osm_way_ids"]) == n
    assert body["geometry"]["type"] == "LineString" and 0 < body["confidence"] <= 1
    assert body["ingest"] is None
    # Nothing was fed to the estimator.
    assert c.get("/v1/status").json()["probes"] == before["probes"]


@pytest.mark.parametrize(("mutate", "status", "field"), [
    (lambda p: p[1].update(lat=91.0), 422, "points.1.lat"),
    (lambda p: p[2].update(lon=-181.0), 422, "points.2.lon"),
    (lambda p: p[4].update(t=p[3]["t"] - 1), 422, "points[4].t"),
    (lambda p: p.extend([dict(p[-1], t=p[-1]["t"] + i + 1) for i in range(10_001)]), 413,
     "points"),
])
def test_http_match_bad_input(http, mutate, status, field) -> None:
    c, probes = http
    _, tr = _trace(probes, 5)
    pts = _points(tr)
    mutate(pts)
    r = c.post("/v1/match", json={"points": pts})
    assert r.status_code == status, r.text
    assert set(r.json()) == {"code", "message", "details"} and field in r.json()["message"]


def test_http_match_ingest_needs_vehicle_and_role(http) -> None:
    c, probes = http
    vid, tr = _trace(probes, 7)
    pts = _points(tr)
    r = c.post("/v1/match", json={"points": pts, "ingest": True})
    assert r.status_code == 422 and "vehicle_id" in r.json()["message"]
    r = c.post("/v1/match", json={"points": pts, "ingest": True, "vehicle_id": vid},
               headers={"Authorization": "Bearer r"})
    assert r.status_code == 403
    before = c.get("/v1/status").json()["probes"]
    r = c.post("/v1/match", json={"points": pts, "ingest": True, "vehicle_id": vid},
               headers={"Authorization": "Bearer w"})
    assert r.status_code == 200, r.text
    assert r.json()["ingest"] == {"accepted": len(pts), "rejected": []}
    assert c.get("/v1/status").json()["probes"] != before
