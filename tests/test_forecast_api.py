"""GET /v1/route with the forecast (issue 14): ranges present and ordered, basis ``forecast``,
a later departure on a rising trend; the estimator's trend survives a checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
from common import kbh_services_after
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings

A = "55.68176,12.55832"  # Gyldenløvesgade, central Copenhagen
B = "55.67970,12.56335"


@pytest.fixture(scope="module")
def services():
    svc = kbh_services_after(1200.0)
    yield svc
    svc.close()


@pytest.fixture()
def client(services):
    with TestClient(create_app(services, Settings(clock="event"))) as c:
        yield c


def test_route_forecast_ranges_ordered(client):
    body = client.get("/v1/route", params={"from": A, "to": B}).json()
    assert body["basis"] == "forecast"
    assert 0 < body["duration_p10_s"] <= body["duration_s"] <= body["duration_p90_s"]


def test_route_forecast_later_departure(client, services):
    now = client.get("/v1/route", params={"from": A, "to": B}).json()
    t = services.router.weights_t
    later = client.get("/v1/route", params={"from": A, "to": B,
                                            "depart_at": str(int(t + 600))}).json()
    assert later["basis"] == "forecast"
    assert later["duration_p10_s"] <= later["duration_s"] <= later["duration_p90_s"]
    # Further ahead the range is at least as wide (relative to the ETA).
    rel = lambda b: (b["duration_p90_s"] - b["duration_p10_s"]) / b["duration_s"]
    assert rel(later) >= rel(now) - 1e-9


def test_route_with_steps_is_forecast(client):
    """Steps no longer change a route's duration (one duration everywhere; more in
    tests/test_one_duration.py)."""
    plain = client.get("/v1/route", params={"from": A, "to": B}).json()
    body = client.get("/v1/route", params={"from": A, "to": B, "steps": "true"}).json()
    assert body["basis"] == "forecast"
    assert body["duration_s"] == pytest.approx(plain["duration_s"], abs=1e-6)
    assert body["duration_p10_s"] <= body["duration_s"] <= body["duration_p90_s"]
    steps = body["legs"][0]["steps"]
    assert sum(s["duration_s"] for s in steps) == pytest.approx(body["duration_s"], abs=1e-6)


def test_estimator_trend_checkpoint_round_trip(services):
    from workers.estimator import EstimatorCore

    core = EstimatorCore(services.net)
    core.trend.update(np.array([0, 1, 0]), np.array([10.0, 20.0, 200.0]),
                      np.array([0.1, 0.2, 0.15]), np.ones(3), 300.0)
    state = core.state_dict()
    assert any(k.startswith("trend.") for k in state)
    other = EstimatorCore(services.net)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.trend.slopes(400.0), core.trend.slopes(400.0))
    assert other.trend.slopes(400.0)[0] != 0.0
    # A state written before the trend existed loads with an empty trend.
    old = {k: v for k, v in state.items() if not k.startswith("trend.")}
    fresh = EstimatorCore(services.net)
    fresh.load_state_dict(old)
    assert fresh.trend.pool_slope() == 0.0


def test_ingest_counts_probe_vehicles_for_the_forecast_persistence(client, services):
    """Each ingest reply carries the vehicles its partition follows; the estimator's trend
    takes them (the forecast's persistence, traffic.accumulation), /v1/status shows them, and
    the model routers get has the measured slopes times the persistence."""
    import polars as pl
    from conftest import shared_file

    fc = services.estimator.stats()["forecast"]
    # The last ingest call's count: vehicles with a probe within 60 s of its newest probe.
    df = pl.read_parquet(shared_file("scenario_kbh/probes.parquet")).sort("t")
    df = df.filter(pl.col("t") < df["t"].min() + 1200.0)
    last = df.tail(df.height - (df.height - 1) // 20_000 * 20_000)["t"].max()
    want = df.filter(pl.col("t") >= last - 60.0)["vehicle_id"].n_unique()
    assert want > 100
    assert abs(fc["vehicles"] - want) <= 0.02 * want, (fc["vehicles"], want)
    status = client.get("/v1/status").json()
    assert status["workers"]["estimator"]["forecast"]["vehicles"] == fc["vehicles"]
    trend = services.estimator.trend
    m = trend.persistence()
    assert fc["persistence"] == m and -1.0 <= m <= 1.0
    model = services.estimator.eta_model()
    assert model.pool_slope_per_s == pytest.approx(m * trend.pool_slope(), rel=1e-12)
    np.testing.assert_allclose(model.slope_per_s,
                               (m * trend.slopes(model.t_s, model.edges)).astype(np.float32))


def test_a_checkpoint_keeps_the_vehicle_count(services):
    from workers.estimator import EstimatorCore

    core = EstimatorCore(services.net)
    for k in range(30):
        core.fold(None, 0, vehicles=(k % 2, 1000.0 + 10 * k, 50 + k))
    other = EstimatorCore(services.net)
    other.load_state_dict(core.state_dict())
    assert other.trend.vehicles.total == core.trend.vehicles.total == 2 * 50 + 28 + 29
    assert other.trend.persistence() == core.trend.persistence()


def test_a_later_departure_is_routed_on_the_forecast_metric(services):
    """A queue forecast to grow on the live-fastest path: departing now the route stays on
    the live metric; departing in 30 min it is found on the forecast metric at that time,
    avoids the queue and its ETA (time-dependent, basis forecast) beats the live path's
    forecast; steps give the same route and duration."""
    from graph.navigation import route_edge_shares
    from traffic.eta_model import build_compact_eta_model
    from traffic.forecast import PaceTrend
    from workers.publication import Publication
    from workers.router import RouterCore

    a, c = (55.68176, 12.55832), (55.69000, 12.58000)  # kbh: A -> C has an alternative
    net = services.net
    core = RouterCore(net, index=services.router.index, route_bias=None)
    tt = np.asarray(net.edge_freeflow_time_s, dtype=np.float64)
    core.apply_publication(Publication(version=1, weights_t=1000.0, travel_time_s=tt,
                                       network_version=net.version))
    live_res = core.router.route(a, c)
    queue = live_res.edge_ids[live_res.edge_ids.size // 3: 2 * live_res.edge_ids.size // 3]
    trend = PaceTrend(net.edge_key)
    pace = tt / np.maximum(np.asarray(net.edge_length_m), 1.0)
    for k in range(40):  # the queue's paces rise 3% a minute
        t = 400.0 + 15.0 * k
        trend.update(queue, np.full(queue.size, t),
                     pace[queue] * np.exp(5e-4 * (t - 400.0)), np.ones(queue.size), t)
    model = build_compact_eta_model(trend, np.sort(queue), pace[np.sort(queue)],
                                    np.zeros(queue.size), np.full(queue.size, 5.0), 1000.0,
                                    prior_weight=0.3)
    assert core.apply_publication(Publication(
        version=2, weights_t=1000.0, travel_time_s=tt, network_version=net.version,
        eta=model)) == "full"
    now = core.route(a, c)
    assert now["edges"] == live_res.edge_keys.tolist() and now["basis"] == "forecast"
    later = core.route(a, c, depart_at_s=1000.0 + 1800.0)
    assert later["basis"] == "forecast" and later["edges"] != now["edges"]
    assert later["weights_version"] == now["weights_version"]
    dense = model.expand(np.asarray(net.edge_freeflow_time_s, dtype=np.float32))
    e = live_res.edge_ids
    stay, _, _, _ = dense.route_eta(e, tt[e], depart_in_s=1800.0,
                                    share=route_edge_shares(core.router, live_res))
    assert later["duration_s"] < stay
    assert later["duration_p10_s"] <= later["duration_s"] <= later["duration_p90_s"]
    nav = core.route(a, c, depart_at_s=1000.0 + 1800.0, steps=True)
    assert nav["edges"] == later["edges"]
    assert nav["duration_s"] == pytest.approx(later["duration_s"], rel=1e-9)
    assert sum(s["duration_s"] for s in nav["legs"][0]["steps"]) == pytest.approx(
        later["duration_s"], rel=1e-6)
    # Above FORECAST_ROUTE_MAX_EDGES later departures stay on the live metric (its ETA is
    # still the forecast).
    core.FORECAST_ROUTE_MAX_EDGES = net.n_edges - 1
    big = core.route(a, c, depart_at_s=1000.0 + 1800.0)
    assert big["edges"] == now["edges"] and big["basis"] == "forecast"


def test_a_later_departure_avoids_a_closure_posted_after_its_metric(services):
    """The forecast metric a later departure is routed on follows the closures in force: one
    posted after the metric was made is avoided at once, not at the next full publication."""
    from workers.publication import Publication
    from workers.router import RouterCore

    a, c = (55.68176, 12.55832), (55.69000, 12.58000)
    net = services.net
    core = RouterCore(net, index=services.router.index, route_bias=None)
    tt = np.asarray(net.edge_freeflow_time_s, dtype=np.float64)
    model = services.estimator.eta_model(tt)
    core.apply_publication(Publication(version=1, weights_t=model.t_s, travel_time_s=tt,
                                       network_version=net.version, eta=model))
    later = model.t_s + 1200.0
    first = core.route(a, c, depart_at_s=later)
    assert first["basis"] == "forecast"
    key_of = {int(k): i for i, k in enumerate(net.edge_key)}
    mid = key_of[first["edges"][len(first["edges"]) // 2]]
    assert core.set_overrides(np.array([mid]), np.array([np.inf]), revision=1)
    again = core.route(a, c, depart_at_s=later)
    assert int(net.edge_key[mid]) not in again["edges"]
    assert again["duration_s"] >= first["duration_s"] - 1e-6


def test_the_vehicle_count_survives_a_network_swap(services):
    """A partition's count comes from its dedupe memory, which a network swap keeps: the
    matcher starts afresh, the count does not drop (a drop would read as draining queues)."""
    import polars as pl
    from conftest import shared_file

    from workers.ingest import IngestCore

    net = services.net
    core = IngestCore(net)
    df = pl.read_parquet(shared_file("scenario_kbh/probes.parquet")).sort("t")
    t0 = df["t"].min()
    first = core.ingest(df.filter(pl.col("t") < t0 + 600.0), now_s=t0 + 600.0)
    part, w, n = first.vehicles
    assert part == 0 and n > 50
    assert n == df.filter((pl.col("t") >= w - 60.0) & (pl.col("t") <= w))["vehicle_id"].n_unique()
    core.swap_network(net)
    assert core.matcher.pending_count() == 0 and core.active_vehicles(w) == n
    nxt = core.ingest(df.filter((pl.col("t") >= t0 + 600.0) & (pl.col("t") < t0 + 630.0)),
                      now_s=t0 + 630.0)
    assert nxt.vehicles[2] >= 0.8 * n
    assert core.tick(t0 + 700.0).vehicles is None  # ticks carry no count
