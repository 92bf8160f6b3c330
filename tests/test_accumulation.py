"""The probe-vehicle count behind the forecast's persistence (traffic.accumulation)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from traffic.accumulation import AccumulationConfig, VehicleAccumulation
from traffic.errors import EstimatorConfigError, EstimatorStateError
from traffic.forecast import ForecastConfig, PaceTrend

T0 = 1_767_225_600.0  # a real clock: the lines must stay exact at unix times


def _feed(acc: VehicleAccumulation, count, t0: float, t1: float, step_s: float = 10.0,
          source: int = 0) -> None:
    for t in np.arange(t0, t1, step_s):
        acc.observe(source, T0 + t, round(count(t)))


def test_no_counts_mean_the_trend_as_measured():
    acc = VehicleAccumulation()
    assert acc.persistence() == 1.0
    acc.observe(0, T0, 100)
    assert acc.persistence() == 1.0  # one sample: no growth yet


def test_steady_growth_persists_and_a_steady_count_leaves_the_trend_alone():
    grow = VehicleAccumulation()
    _feed(grow, lambda t: 100 + 0.3 * t, 0, 1800)
    assert grow.persistence() == pytest.approx(1.0, abs=0.02)
    flat = VehicleAccumulation()
    _feed(flat, lambda t: 400, 0, 1800)
    assert flat.persistence() == 1.0  # a local queue's own trend stands


def test_growth_that_stops_fades_the_trend_and_a_falling_count_reverses_it():
    acc = VehicleAccumulation()
    _feed(acc, lambda t: 100 + 0.3 * t, 0, 1800)
    top = 100 + 0.3 * 1800
    _feed(acc, lambda t: top, 1800, 2100)
    five_min = acc.persistence()
    assert 0.0 <= five_min < 0.5
    _feed(acc, lambda t: top, 2100, 2400)
    assert 0.0 <= acc.persistence() < min(0.2, five_min)
    _feed(acc, lambda t: top - 0.3 * (t - 2400), 2400, 2700)
    assert acc.persistence() < -0.5
    assert acc.persistence() >= AccumulationConfig().min_persistence
    gs, gl = acc.growth()
    assert -0.3 < gs < -0.15 and gl > 0  # the fall, seen through 120 s of memory


def test_a_surge_is_bounded_by_max_persistence():
    acc = VehicleAccumulation(AccumulationConfig(max_persistence=1.0))
    _feed(acc, lambda t: 100 + 0.05 * t, 0, 1800)
    _feed(acc, lambda t: 190 + 2.0 * (t - 1800), 1800, 2000)  # a fleet connects
    assert acc.persistence() == 1.0


def test_sources_sum_and_a_silent_source_drops_out():
    acc = VehicleAccumulation(AccumulationConfig(stale_s=300.0))
    acc.observe(0, T0, 40)
    acc.observe(1, T0 + 1, 60)
    assert acc.total == 100
    acc.observe(1, T0 + 0.5, 999)  # older than the count held: ignored
    assert acc.total == 100
    acc.observe(1, T0 + 400, 70)  # source 0 silent for 400 s
    assert acc.total == 70


def test_samples_do_not_depend_on_how_often_counts_arrive():
    def count(t):
        return 100 + 0.2 * t - 1e-4 * t * t

    a, b = VehicleAccumulation(), VehicleAccumulation()
    _feed(a, count, 0, 2400, step_s=1.0)
    _feed(b, count, 0, 2400, step_s=5.0)
    assert a.persistence() == b.persistence()
    assert a.growth() == b.growth()


def test_state_round_trip_and_refusals():
    acc = VehicleAccumulation()
    _feed(acc, lambda t: 100 + 0.3 * t, 0, 900)
    acc.observe(3, T0 + 905, 12)
    other = VehicleAccumulation()
    other.load_state_dict(acc.state_dict())
    assert other.state_dict().keys() == acc.state_dict().keys()
    for t in (910.0, 920.0):
        acc.observe(0, T0 + t, 400)
        other.observe(0, T0 + t, 400)
    assert other.persistence() == acc.persistence() and other.total == acc.total
    bad = acc.state_dict()
    bad["version"] = 99
    with pytest.raises(EstimatorStateError, match="version 99"):
        VehicleAccumulation().load_state_dict(bad)
    bad = acc.state_dict()
    bad["short"] = np.zeros(2)
    with pytest.raises(EstimatorStateError, match="wrong shapes"):
        VehicleAccumulation().load_state_dict(bad)


@pytest.mark.parametrize("kwargs, name", [
    ({"short_tau_s": 0.0}, "short_tau_s"), ({"sample_s": math.nan}, "sample_s"),
    ({"min_persistence": 1.5}, "min_persistence"), ({"max_persistence": 0.5}, "persistence"),
])
def test_config_checks(kwargs, name):
    with pytest.raises(EstimatorConfigError, match=name):
        AccumulationConfig(**kwargs)


def test_bad_counts_are_refused():
    acc = VehicleAccumulation()
    with pytest.raises(ValueError, match="vehicle count"):
        acc.observe(0, T0, -1)
    with pytest.raises(ValueError, match="vehicle count"):
        acc.observe(0, math.inf, 3)


def test_the_trend_extrapolates_its_slopes_times_the_persistence():
    keys = np.arange(6, dtype=np.int64)
    trend = PaceTrend(keys, ForecastConfig(pool_prior_s2=1.0))
    rng = np.random.default_rng(3)
    for k in range(60):
        t = 1000.0 + 15.0 * k
        e = rng.integers(0, 6, 8)
        trend.update(e, np.full(8, t), 0.1 * np.exp(2e-4 * (t - 1000.0)) * np.ones(8),
                     np.ones(8), t)
        trend.observe_vehicles(0, t, 100 + k)
    t = 1000.0 + 15.0 * 59
    assert trend.persistence() == pytest.approx(1.0, abs=0.05)
    for k in range(20):  # the count falls for 5 min: the forecast slopes turn negative
        trend.observe_vehicles(0, t + 15.0 * (k + 1), 158 - k)
    m = trend.persistence()
    assert m < -0.5
    np.testing.assert_allclose(trend.forecast_slopes(t), m * trend.slopes(t), rtol=1e-12)
    assert trend.forecast_pool_slope() == pytest.approx(m * trend.pool_slope(), rel=1e-12)
    assert trend.pool_slope() > 0 > trend.forecast_pool_slope()


def test_trend_state_keeps_the_count_and_reads_older_versions():
    keys = np.arange(4, dtype=np.int64)
    trend = PaceTrend(keys)
    for k in range(40):
        trend.observe_vehicles(0, 100.0 + 10 * k, 50 + (k if k < 30 else 60 - k))
    state = trend.state_dict()
    assert state["version"] == 3
    other = PaceTrend(keys)
    other.load_state_dict(state)
    assert other.persistence() == trend.persistence() != 1.0
    old = {k: v for k, v in state.items() if not k.startswith("vehicles.")}
    old["version"] = 2
    again = PaceTrend(keys)
    again.load_state_dict(old)
    assert again.persistence() == 1.0 and again.vehicles.total == 0
