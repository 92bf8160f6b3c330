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
