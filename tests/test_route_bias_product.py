"""The router's optimism in the product (issue 14): completed probe trips go from the ingest
stage with the traversals to the next publication, each router learns
``traffic.route_bias.RouteBiasLearner`` from them on its live weights, and forecast answers
are corrected by one factor per route (``eta_correction``), every duration still the sum of
one per-edge vector. Compaction (eligible trips, the bound per reply, memory per open trace)
is tested on hand-made matcher outputs."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from common import kbh_module_fixtures

from graph.network import build_network
from traffic.matching import MatchOutput
from traffic.probe_trips import (
    ProbeTripCollector,
    RouteTripCollector,
    compact_trips,
    concat_route_trips,
)
from traffic.route_bias import BUCKET_NAMES, bucket_of
from workers.publication import Publication, TripBuffer

A = (55.68176, 12.55832)  # Gyldenløvesgade, central Copenhagen
C = (55.69000, 12.58000)  # A -> C has an alternative on kbh
REL = 1e-6


# -- hand-made matcher outputs ----------------------------------------------------------
def _ring(n: int = 12):
    """A one-way ring of ``n`` nodes (edge i: node i -> i+1 mod n) plus one chord 0 -> 6
    (edge n), on lat 55."""
    src = list(range(n)) + [0]
    dst = [(i + 1) % n for i in range(n)] + [n // 2]
    lon = 12.0 + 0.01 * np.arange(n)
    return build_network(node_lat=np.full(n, 55.0), node_lon=lon, edge_src=src, edge_dst=dst,
                         edge_speed_kph=np.full(n + 1, 50.0))


def _out(pieces: list[tuple[int, int]], ended: list[int] = ()) -> MatchOutput:
    """A matcher output with ``(trace, edge)`` pieces (driving order) and ended traces."""
    tr = np.array([p[0] for p in pieces], dtype=np.int64)
    e = np.array([p[1] for p in pieces], dtype=np.int32)
    z, zf = np.zeros(0, dtype=np.int64), np.zeros(0)
    one = np.ones(tr.size)
    return MatchOutput(point_row=z, point_slot=z, point_trace=z, point_edge=z,
                       point_offset_m=zf, point_t_s=zf, piece_trace=tr, piece_edge=e,
                       piece_off0_m=0 * one, piece_off1_m=one, piece_t0_s=0 * one,
                       piece_t1_s=one, ended_traces=np.array(ended, dtype=np.int64))


def test_compaction_keeps_contiguous_trips_of_four_edges_or_more():
    net = _ring()
    col = RouteTripCollector(net, max_trips=64)
    # Trace 1 over two pushes, with a piece repeated across them: edges 0..4, kept (1..3).
    # Trace 2: three edges (too short). Trace 3: a gap (edge 1 then 3). Trace 4 goes on.
    first = col.push(_out([(1, 0), (1, 1), (1, 1), (2, 5), (2, 6), (3, 0), (3, 1), (4, 2)]))
    assert len(first) == 0 and col.open_count() == 4
    got = col.push(_out([(1, 1), (1, 2), (1, 3), (1, 4), (2, 7), (3, 3), (3, 4), (3, 5)],
                        ended=[1, 2, 3]))
    assert len(got) == 1 and got.network_version == net.version
    np.testing.assert_array_equal(got.mid_edges(0), [1, 2, 3])
    assert (got.src_node[0], got.dst_node[0]) == (1, 4)
    assert col.open_count() == 1 and col.held_edges() == 1  # trace 4's edge 2
    # The chord makes a contiguous trip that skips nodes: still one trip, its middle kept.
    got = col.push(_out([(5, 11), (5, 12), (5, 6), (5, 7), (5, 8)], ended=[5]))
    np.testing.assert_array_equal(got.mid_edges(0), [12, 6, 7])
    assert (got.src_node[0], got.dst_node[0]) == (0, 8)


def test_compaction_equals_probe_trip_collector():
    """The lean collector finds the trips the benchmark's collector and rule find."""
    net = _ring()
    rng = np.random.default_rng(7)
    lean, whole = RouteTripCollector(net, max_trips=64), ProbeTripCollector()
    pos = {t: int(rng.integers(0, 12)) for t in range(20)}
    want, got = [], []
    for step in range(30):
        pieces = []
        for t in range(20):
            for _ in range(int(rng.integers(0, 3))):
                if rng.random() < 0.1:
                    pos[t] = (pos[t] + 2) % 12  # a gap
                pieces.append((t, pos[t]))
                pos[t] = (pos[t] + 1) % 12 if rng.random() < 0.7 else pos[t]
        ended = sorted(rng.choice(20, size=3, replace=False).tolist()) if step % 3 == 2 else []
        out = _out(pieces, ended)
        got.append(lean.push(out))
        want.append(compact_trips([p.edge for p in whole.push(out)], net, max_trips=64))
    a, b = (concat_route_trips(x, max_trips=10_000) for x in (got, want))
    assert a is not None and len(a) >= 5
    for name in ("src_node", "dst_node", "edge_first", "edge"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_compaction_caps_trips_newest_kept():
    net = _ring()
    col = RouteTripCollector(net, max_trips=64)
    traces = list(range(100, 170))  # 70 eligible trips ending in one push
    pieces = [(t, e) for t in traces for e in (t % 12, (t + 1) % 12, (t + 2) % 12,
                                               (t + 3) % 12)]
    got = col.push(_out(pieces, ended=traces))
    assert len(got) == 64
    # The newest: the last 64 in the matcher's order of ending.
    np.testing.assert_array_equal(got.src_node, [(t + 1) % 12 for t in traces[6:]])
    assert got.edge_first[-1] == got.edge.size == 64 * 2
    assert col.trips == 64
    assert len(got.newest(10)) == 10 and got.newest(10).mid_edges(9).tolist() == \
        got.mid_edges(63).tolist()


def test_collector_memory_bounded_for_a_very_long_trace():
    net = _ring()
    col = RouteTripCollector(net, max_edges_per_trace=50, max_trips=64)
    edge = 0
    peak_held, peak_chunks = 0, 0
    for _ in range(2000):  # 10,000 edges round and round the ring
        pieces = []
        for _ in range(5):
            pieces.append((9, edge))
            edge = (edge + 1) % 12
        col.push(_out(pieces))
        peak_held = max(peak_held, col.held_edges())
        peak_chunks = max(peak_chunks, len(col._open[9]))
    assert peak_held <= 2 * 50 and peak_chunks <= RouteTripCollector.MAX_CHUNKS
    (trip,) = [col.push(_out([], ended=[9]))]
    assert len(trip) == 1 and col.open_count() == 0 and col.held_edges() == 0
    mid = trip.mid_edges(0)
    assert 50 - 2 <= mid.size <= 2 * 50 - 2
    # The newest edges of the trace, contiguous, ending where the trace ended.
    assert (net.edge_dst[mid[:-1]] == net.edge_src[mid[1:]]).all()
    assert mid[-1] == (edge - 2) % 12


def test_trip_buffer_bounds_and_network_version():
    net, other = _ring(), _ring(14)
    buf = TripBuffer(max_trips=5)
    for start in range(8):
        buf.add(compact_trips([np.arange(start, start + 4) % 12], net, max_trips=64))
    got = buf.take(net.version)
    assert len(got) == 5 and got.src_node.tolist() == [(s + 1) % 12 for s in range(3, 8)]
    assert buf.take(net.version) is None  # taken
    buf.add(compact_trips([np.arange(4)], net, max_trips=64))
    buf.add(compact_trips([np.arange(5)], other, max_trips=64))  # a new network replaces
    assert buf.take(net.version) is None and buf.dropped >= 4
    assert TripBuffer(0).take(net.version) is None


def test_pipeline_config_switch():
    from workers.services import PipelineConfig

    assert PipelineConfig().ingest_config().route_trips_max == 64
    off = PipelineConfig(route_bias=False)
    assert off.ingest_config().route_trips_max == 0 and off.route_bias_config() is None
    assert PipelineConfig(route_bias_tau_s=600.0).route_bias_config().tau_s == 600.0
    with pytest.raises(ValueError, match="route_bias_max_trips"):
        PipelineConfig(route_bias_max_trips=-1)


# -- the service on scenario_kbh --------------------------------------------------------
services, client = kbh_module_fixtures(1200.0)


def _route(client, a, b, **params):
    resp = client.get("/v1/route", params={"from": f"{a[0]},{a[1]}", "to": f"{b[0]},{b[1]}",
                                           **params})
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.mark.shared_data
def test_replay_learns_from_trips_and_corrects_the_forecast(services, client):
    from graph.navigation import plan_route

    core = services.router
    learner = core.route_bias
    assert learner.trips > 0
    st = client.get("/v1/status").json()
    rb = st["workers"]["router"]["route_bias"]
    assert rb["enabled"] and rb["trips"] == learner.trips and rb["steps"] > 0
    assert list(rb["log_correction"]) == list(BUCKET_NAMES)
    assert st["workers"]["ingest"][0]["route_trips"] > 0
    # Trips are not probes: the accounting identity holds exactly.
    p = st["probes"]
    assert p["accepted"] == p["applied"] + p["pending"] + p["unmatched"]

    body = _route(client, A, C, annotations="true")
    assert body["basis"] == "forecast"
    # The uncorrected forecast ETA of the same route, as the router computes it.
    (leg,) = plan_route(core.router, [A, C], max_snap_m=200.0).legs
    e = leg.route.edge_ids
    d = core._eta.route_eta(e, core._travel_times(None)[e], share=leg.edge_share)[0]
    f = body["eta_correction"]
    assert f == pytest.approx(math.exp(float(learner.log_correction(d))), rel=1e-12)
    assert f != 1.0  # the replay taught it something in this bucket
    assert body["duration_s"] == pytest.approx(d * f, rel=REL)
    ann = np.asarray(body["annotations"]["duration_s"])
    assert ann.sum() == pytest.approx(body["duration_s"], rel=REL)
    assert body["duration_p10_s"] <= body["duration_s"] <= body["duration_p90_s"]
    plain = _route(client, A, C)
    assert plain["eta_correction"] == f
    assert plain["duration_s"] == pytest.approx(body["duration_s"], rel=REL)
    assert plain["duration_p10_s"] <= plain["duration_s"] <= plain["duration_p90_s"]


@pytest.mark.shared_data
def test_each_alternative_gets_its_own_factor_and_steps_sum(services, client):
    core = services.router
    body = _route(client, A, C, alternatives=1, steps="true", annotations="true")
    assert body["alternatives"]
    for r in (body, *body["alternatives"]):
        f = r["eta_correction"]
        assert f == core.eta_correction(r["duration_s"] / f)
        steps = sum(s["duration_s"] for lg in r["legs"] for s in lg.get("steps") or ())
        assert steps == pytest.approx(r["duration_s"], rel=REL)
        assert sum(r["annotations"]["duration_s"]) == pytest.approx(r["duration_s"], rel=REL)


@pytest.mark.shared_data
def test_answers_off_the_forecast_are_not_corrected(services, client):
    core = services.router
    model = core._eta
    far = core.weights_t + 2 * model.forecast.profile_blend_s
    late = _route(client, A, C, depart_at=str(int(far)))
    assert late["basis"] == "live" and late.get("eta_correction") is None
    table = client.post("/v1/table", json={"sources": [list(A)], "destinations": [list(C)]})
    assert "eta_correction" not in table.json()
    # Isochrones stay the uncorrected forecast's reach (workers/router.py docstring).
    with_corr = core.isochrone(A, [5])
    saved, core.bias._log_corr = core.bias._log_corr, np.zeros_like(core.bias._log_corr)
    try:
        assert core.eta_correction(600.0) == 1.0
        without = core.isochrone(A, [5])
    finally:
        core.bias._log_corr = saved
    assert with_corr["features"] == without["features"]


@pytest.mark.shared_data
def _detour(core, net):
    """A trip driven on a detour between two nodes of the fastest A -> C path:
    ``(u, v, detour edges, trips)``."""
    route = core.router.route(A, C)
    e = route.edge_ids
    u, v = int(net.edge_src[e[1]]), int(net.edge_dst[e[-2]])
    # Via a node off the fastest path: u -> w -> v.
    w = int(net.edge_dst[net.out_edge[net.out_first[u]:net.out_first[u + 1]]].max())
    p1 = core.router.route_nodes(u, w).edge_ids
    p2 = core.router.route_nodes(w, v).edge_ids
    e_in = np.flatnonzero(net.edge_dst == u)[0]
    e_out = np.flatnonzero(net.edge_src == v)[0]
    driven_edges = np.concatenate([[e_in], p1, p2, [e_out]]).astype(np.int64)
    trips = compact_trips([driven_edges], net, max_trips=64)
    assert len(trips) == 1
    return u, v, np.concatenate([p1, p2]).astype(np.int64), trips


def test_router_learns_each_publication_once_from_a_detour(services):
    """One trip driven on a detour: the learner sees exactly log(driven / router) on the
    live weights, once, however often the chain is handed to the replica."""
    from workers.router import RouterCore

    net = services.net
    core = RouterCore(net, index=services.router.index)
    tt = np.asarray(net.edge_freeflow_time_s, dtype=np.float64)
    first = Publication(version=1, weights_t=1000.0, travel_time_s=tt,
                        network_version=net.version)
    assert core.apply_publication(first) == "full"
    u, v, detour, trips = _detour(core, net)
    r = core.router.route_nodes(u, v).duration_s
    d = float(tt[detour].sum())
    assert d > r >= 60.0
    delta = Publication(version=2, weights_t=1060.0, travel_time_s=tt[:1], network_version=
                        net.version, edges=np.array([0], dtype=np.int32), base_version=1,
                        base_weights_t=1000.0, trips=trips)
    assert core.apply_publication([first, delta]) == "delta"
    lr = core.route_bias
    b = int(bucket_of(r))
    assert lr.trips == 1 and lr.w[b] == 1.0
    assert lr.s[b] == pytest.approx(min(math.log(d / r), lr.config.max_log), rel=1e-9)
    assert core.apply_publication([first, delta]) == "ignored"
    assert lr.trips == 1
    # The replica's state: the learner, carried whole (a network swap hands it on).
    fresh = RouterCore(net, index=services.router.index)
    fresh.load_state_dict(core.state_dict())
    assert fresh.eta_correction(r) == core.eta_correction(r) > 1.0
    assert RouterCore(net, index=services.router.index, route_bias=None).eta_correction(r) \
        == 1.0
    with pytest.raises(ValueError, match="version 7"):
        fresh.load_state_dict({"version": 7})


def test_router_learns_on_the_forecast_it_corrects(services):
    """With a forecast model, the replica compares the forecast ETAs (departing now) of the
    driven detour and of its own route, the ETAs its correction multiplies, not their live
    sums: a queue growing on the detour widens the gap."""
    from traffic.eta_model import build_compact_eta_model
    from traffic.forecast import PaceTrend
    from workers.router import RouterCore

    net = services.net
    core = RouterCore(net, index=services.router.index)
    tt = np.asarray(net.edge_freeflow_time_s, dtype=np.float64)
    core.apply_publication(Publication(version=1, weights_t=1000.0, travel_time_s=tt,
                                       network_version=net.version))
    u, v, detour, trips = _detour(core, net)
    router_edges = core.router.route_nodes(u, v).edge_ids.astype(np.int64)
    trend = PaceTrend(net.edge_key)
    pace = tt / np.maximum(np.asarray(net.edge_length_m), 1.0)
    for k in range(40):  # the detour's paces rise 3% a minute; the rest stay flat
        t = 400.0 + 15.0 * k
        grow = np.exp(5e-4 * (t - 400.0))
        e = np.concatenate([detour, router_edges])
        p = np.concatenate([pace[detour] * grow, pace[router_edges]])
        trend.update(e, np.full(e.size, t), p, np.ones(e.size), t)
    idx = np.union1d(detour, router_edges)
    model = build_compact_eta_model(trend, idx, pace[idx], np.zeros(idx.size),
                                    np.full(idx.size, 5.0), 1000.0, prior_weight=0.3)
    pub = Publication(version=2, weights_t=1000.0, travel_time_s=tt,
                      network_version=net.version, eta=model, trips=trips)
    assert core.apply_publication(pub) == "full"
    dense = model.expand(np.asarray(net.edge_freeflow_time_s, dtype=np.float32))
    d_fc = dense.drive(detour, tt[detour])[0]
    r_fc = dense.drive(router_edges, tt[router_edges])[0]
    live = math.log(tt[detour].sum() / tt[router_edges].sum())
    assert math.log(d_fc / r_fc) > live + 0.05  # the growing queue is on the detour
    lr = core.route_bias
    b = int(bucket_of(r_fc))
    assert lr.trips == 1
    assert lr.s[b] == pytest.approx(min(math.log(d_fc / r_fc), lr.config.max_log), rel=1e-9)


def test_the_correction_fades_with_the_forecast_persistence(services):
    """The learned gap applies in full while the probe-vehicle count grows as it did
    (persistence 1), in proportion below (``exp(m * r)``), and not at all once the count
    falls (persistence <= 0): the queues behind it drain."""
    from dataclasses import replace

    from traffic.eta_model import build_compact_eta_model
    from traffic.forecast import PaceTrend
    from workers.router import RouterCore

    net = services.net
    core = RouterCore(net, index=services.router.index)
    tt = np.asarray(net.edge_freeflow_time_s, dtype=np.float64)
    first = Publication(version=1, weights_t=1000.0, travel_time_s=tt,
                        network_version=net.version)
    core.apply_publication(first)
    u, v, _, trips = _detour(core, net)
    delta = Publication(version=2, weights_t=1060.0, travel_time_s=tt[:1], network_version=
                        net.version, edges=np.array([0], dtype=np.int32), base_version=1,
                        base_weights_t=1000.0, trips=trips)
    assert core.apply_publication([first, delta]) == "delta"
    r = core.router.route_nodes(u, v).duration_s
    whole = core.eta_correction(r)  # no forecast model yet: the whole correction
    assert whole > 1.0
    empty = np.zeros(0, dtype=np.int64)
    base = build_compact_eta_model(PaceTrend(net.edge_key), empty, np.zeros(0), np.zeros(0),
                                   np.zeros(0), 1100.0, prior_weight=0.3)
    assert base.persistence == 1.0
    for version, m, want in ((3, 0.5, math.sqrt(whole)), (4, -0.7, 1.0), (5, 1.0, whole)):
        assert core.apply_publication(Publication(
            version=version, weights_t=1000.0 + 60 * version, travel_time_s=tt,
            network_version=net.version, eta=replace(base, persistence=m))) == "full"
        assert core.eta_correction(r) == pytest.approx(want, rel=1e-12)


@pytest.mark.shared_data
def test_ray_router_replica_learns_from_trips(ray_local):
    """On Ray: ingest actor -> facade -> publication in the object store -> a router
    replica's learner."""
    from conftest import shared_file

    from graph.io import load_network
    from workers.pipeline import RayPipeline
    from workers.services import PipelineConfig

    net = load_network(shared_file("scenario_kbh/network.osm.pbf"))
    df = pl.read_parquet(shared_file("scenario_kbh/probes.parquet")).sort("t")
    df = df.filter(pl.col("t") < df["t"].min() + 600)
    pipe = RayPipeline(net, PipelineConfig(clock="event", n_ingest=1, router_replicas=1))
    try:
        pipe.ingest(df)
        pipe.flush()
        st = pipe.drain()
        rb = st["workers"]["router"]["route_bias"]
        assert rb["enabled"] and rb["trips"] > 0 and rb["steps"] > 0
        p = st["probes"]
        assert p["accepted"] == p["applied"] + p["pending"] + p["unmatched"]
        out = pipe.route(A, C)
        assert out["basis"] == "forecast"
        bucket = BUCKET_NAMES[int(bucket_of(out["duration_s"] / out["eta_correction"]))]
        assert out["eta_correction"] == pytest.approx(math.exp(rb["log_correction"][bucket]),
                                                      rel=1e-12)
    finally:
        pipe.close()
