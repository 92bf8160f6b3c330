"""Forecasts (traffic.forecast), ETA ranges (traffic.eta_range), the router-bias learner
(traffic.route_bias) and completed probe trips (traffic.probe_trips)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from traffic.errors import EstimatorConfigError, EstimatorStateError
from traffic.eta_range import RangeConfig, duration_range, edge_uncertainty, route_sigma
from traffic.forecast import (
    ForecastConfig,
    PaceTrend,
    eta_along,
    forecast_log_change,
    forecast_travel_times,
)
from traffic.matching import MatchOutput
from traffic.probe_trips import ProbeTripCollector
from traffic.route_bias import RouteBiasLearner, bucket_of

KEYS = np.arange(10, 15, dtype=np.int64) * 7


def _feed(trend: PaceTrend, slope: float, *, t0: float = 1000.0, n: int = 60,
          step_s: float = 30.0, edges=(0, 1, 2), pace0: float = 0.1) -> float:
    """Traversals on ``edges`` every ``step_s``, log pace rising by ``slope`` per s."""
    t = t0
    for _ in range(n):
        e = np.asarray(edges, dtype=np.int64)
        trend.update(e, np.full(e.size, t), np.full(e.size, pace0 * math.exp(slope * (t - t0))),
                     np.ones(e.size), t)
        t += step_s
    return t - step_s


# --- forecast -------------------------------------------------------------------------------

def test_eta_along_flat_trend_equals_live():
    live = np.array([60.0, 30.0, 45.0])
    share = np.array([0.5, 1.0, 0.2])
    d, tt = eta_along(live, np.zeros(3), ForecastConfig(), depart_in_s=900.0, share=share)
    assert d == pytest.approx(float((live * share).sum()), rel=0, abs=1e-12)
    np.testing.assert_allclose(tt, live * share, rtol=0, atol=1e-12)


def test_pace_trend_flat_forecast_equals_live():
    trend = PaceTrend(KEYS)
    t = _feed(trend, 0.0)
    slope = trend.slopes(t)
    assert np.abs(slope).max() < 1e-9
    live = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    e = np.arange(5)
    d, _ = eta_along(live, slope, ForecastConfig(), lag_s=trend.lags(t, e),
                     pool_slope_per_s=trend.pool_slope())
    assert d == pytest.approx(150.0, rel=1e-6)  # float32 sums: slope ~1e-10, not exactly 0


def test_pace_trend_rising_slope_recovered():
    trend = PaceTrend(KEYS, ForecastConfig(shrink_s=1.0, pool_prior_s2=1.0, adapt_gain=False))
    t = _feed(trend, 2e-4)
    s = trend.slopes(t)
    np.testing.assert_allclose(s[:3], 2e-4, rtol=1e-3)
    assert trend.pool_slope() == pytest.approx(2e-4, rel=1e-3)
    # Untouched edges take the pooled slope.
    np.testing.assert_allclose(s[3:], trend.pool_slope(), rtol=1e-9)
    # And a rising trend makes a later edge slower than live.
    d, tt = eta_along(np.array([100.0, 100.0]), s[:2], ForecastConfig(), depart_in_s=600.0)
    assert d > 200.0 and tt[1] > tt[0]


def test_pace_trend_one_batch_or_many():
    rng = np.random.default_rng(7)
    n = 200
    e = rng.integers(0, 5, n)
    t = np.sort(rng.uniform(0, 600, n)) + 1e6
    p = rng.uniform(0.05, 0.3, n)
    w = rng.uniform(0.2, 1.0, n)
    a, b = PaceTrend(KEYS), PaceTrend(KEYS)
    a.update(e, t, p, w, 1e6 + 600)
    for chunk in np.array_split(np.arange(n), 7):
        b.update(e[chunk], t[chunk], p[chunk], w[chunk], 1e6 + 600)
    for k in ("w", "t_mean", "x_mean", "ctt", "ctx"):
        np.testing.assert_allclose(getattr(a, k), getattr(b, k), rtol=2e-4, atol=1e-3, err_msg=k)
    assert a.pool_slope() == pytest.approx(b.pool_slope(), rel=1e-3)


def test_pace_trend_empty_update():
    trend = PaceTrend(KEYS)
    trend.update(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0), 5.0)
    assert trend.pool_slope() == 0.0
    assert np.all(trend.slopes(5.0) == 0.0)


def test_pace_trend_state_round_trip():
    trend = PaceTrend(KEYS)
    t = _feed(trend, 1e-4)
    other = PaceTrend(KEYS)
    other.load_state_dict(trend.state_dict())
    np.testing.assert_array_equal(other.slopes(t), trend.slopes(t))
    np.testing.assert_array_equal(other.lags(t), trend.lags(t))
    # By key: a network with the keys reversed and one new edge.
    keys2 = np.r_[KEYS[::-1], 999]
    moved = PaceTrend(keys2)
    moved.load_state_dict(trend.state_dict())
    np.testing.assert_allclose(moved.slopes(t)[:5], trend.slopes(t)[::-1], rtol=1e-6)
    assert moved.w[5] == 0.0


def test_pace_trend_state_version_refused():
    state = PaceTrend(KEYS).state_dict()
    state["version"] = 99
    with pytest.raises(EstimatorStateError, match="version 99"):
        PaceTrend(KEYS).load_state_dict(state)


def test_forecast_floor_and_clip():
    cfg = ForecastConfig(max_log_change=0.5)
    # A falling trend stops at min(live, free-flow).
    out = forecast_travel_times(np.array([100.0, 50.0]), np.array([-1e-3, -1e-3]), 3600.0, cfg,
                                floor_tt_s=np.array([80.0, 70.0]))
    np.testing.assert_allclose(out, [80.0, 50.0])
    ch = forecast_log_change(np.array([1.0, -1.0]), 3600.0, cfg)
    np.testing.assert_allclose(ch, [0.5, -0.5])


def test_forecast_profile_blend():
    cfg = ForecastConfig(profile_blend_s=3600.0)
    out = forecast_travel_times(np.array([100.0, 100.0]), np.zeros(2), np.array([1800.0, 7200.0]),
                                cfg, profile_tt_s=np.array([200.0, np.nan]))
    np.testing.assert_allclose(out, [150.0, 100.0])


def test_forecast_config_invalid_value():
    with pytest.raises(EstimatorConfigError, match="`damping_s`"):
        ForecastConfig(damping_s=0.0)
    with pytest.raises(EstimatorConfigError, match="`gain`"):
        ForecastConfig(gain=float("nan"))
    with pytest.raises(EstimatorConfigError, match="`skill_tau_s`"):
        ForecastConfig(skill_tau_s=-1.0)


# --- ranges ---------------------------------------------------------------------------------

def test_duration_range_ordered():
    rng = np.random.default_rng(3)
    for _ in range(50):
        d = float(rng.uniform(60, 3600))
        lo, hi = duration_range(d, float(rng.uniform(0, 1)))
        assert lo <= d <= hi
    assert duration_range(100.0, 0.0) == (100.0, 100.0)


def test_route_ranges_widen_with_uncertainty():
    cfg = RangeConfig()
    tt = np.full(10, 60.0)
    pace = np.full(10, 0.1)
    sigmas = []
    # Low dispersion and much evidence < more dispersion < less evidence.
    for var, evidence in (((0.01) ** 2, 20.0), ((0.03) ** 2, 20.0), ((0.03) ** 2, 1.0)):
        spread, err = edge_uncertainty(pace, np.full(10, var), np.full(10, evidence),
                                       prior_weight=0.3, config=cfg)
        sigmas.append(route_sigma(tt, spread, err, np.cumsum(tt), cfg))
    assert sigmas == sorted(sigmas) and sigmas[0] < sigmas[-1]
    # No evidence (the prior alone) is wider than much consistent evidence.
    spread, err = edge_uncertainty(pace, np.zeros(10), np.zeros(10), prior_weight=0.3, config=cfg)
    assert route_sigma(tt, spread, err, np.cumsum(tt), cfg) > sigmas[0]
    # Further ahead, wider; a forecast that moves far from live, wider.
    spread, err = edge_uncertainty(pace, np.zeros(10), np.full(10, 5.0), prior_weight=0.3,
                                   config=cfg)
    near = route_sigma(tt, spread, err, np.cumsum(tt), cfg)
    far = route_sigma(tt, spread, err, np.cumsum(tt) + 1800.0, cfg)
    moved = route_sigma(tt, spread, err, np.cumsum(tt), cfg, live_tt_s=tt / 1.5)
    assert near < far and near < moved


def test_route_ranges_correlation_keeps_long_routes_wide():
    # Independent spread shrinks relative to a long route; the correlated part does not.
    cfg = RangeConfig(error_scale=0.0, horizon_rel_per_h=0.0, floor_rel=0.0)
    spread, err = np.full(100, 0.3), np.full(100, 0.1)
    short = route_sigma(np.full(4, 60.0), spread[:4], err[:4], 0.0, cfg)
    long_ = route_sigma(np.full(100, 60.0), spread, err, 0.0, cfg)
    assert long_ < short
    cfg2 = RangeConfig(spread_scale=0.0, horizon_rel_per_h=0.0, floor_rel=0.0)
    assert route_sigma(np.full(4, 60.0), spread[:4], err[:4], 0.0, cfg2) == pytest.approx(
        route_sigma(np.full(100, 60.0), spread, err, 0.0, cfg2))


def test_edge_uncertainty_no_evidence_is_prior():
    cfg = RangeConfig(prior_rel=0.4, min_spread_rel=0.2)
    spread, err = edge_uncertainty(np.array([0.1]), np.array([0.0]), np.array([0.0]),
                                   prior_weight=0.3, config=cfg)
    assert spread[0] == pytest.approx(0.2) and err[0] == pytest.approx(0.4)


# --- router bias ----------------------------------------------------------------------------

def test_route_bias_learns_and_round_trips():
    b = RouteBiasLearner()
    assert b.correct(np.array([400.0]))[0] == 400.0
    b.observe(100.0, np.full(50, 400.0), np.full(50, 400.0 * 1.2))
    r = float(b.log_correction(np.array([400.0]))[0])
    assert 0 < r < math.log(1.2) and r == pytest.approx(math.log(1.2) * 50 / 55)
    assert float(b.log_correction(np.array([100.0]))[0]) == 0.0  # a shorter bucket
    # Longer buckets without evidence take the shorter neighbour's correction.
    np.testing.assert_allclose(b.log_correction(np.array([900.0, 3000.0])), [r, r])
    b.observe(100.0, np.full(20, 900.0), np.full(20, 900.0 * 1.5))
    r10 = (20 * math.log(1.5) + 5 * r) / 25
    np.testing.assert_allclose(b.log_corrections(), [0.0, r, r10, r10])
    c = RouteBiasLearner()
    c.load_state_dict(b.state_dict())
    assert c.correct(np.array([400.0]))[0] == b.correct(np.array([400.0]))[0]
    np.testing.assert_array_equal(bucket_of([10, 300, 599, 1200, 5000]), [0, 1, 1, 3, 3])


def test_route_bias_empty_and_short_trips_ignored():
    b = RouteBiasLearner()
    b.observe(10.0, np.zeros(0), np.zeros(0))
    b.observe(20.0, np.array([30.0, np.nan]), np.array([60.0, 100.0]))
    assert b.trips == 0


# --- probe trips ----------------------------------------------------------------------------

def _out(trace, edge, off0, off1, t0, t1, ended=()):
    f = np.asarray
    z = np.zeros(0)
    return MatchOutput(point_row=z.astype(np.int64), point_slot=z.astype(np.int64),
                       point_trace=z.astype(np.int64), point_edge=z.astype(np.int32),
                       point_offset_m=z, point_t_s=z, piece_trace=f(trace, np.int64),
                       piece_edge=f(edge, np.int32), piece_off0_m=f(off0, float),
                       piece_off1_m=f(off1, float), piece_t0_s=f(t0, float),
                       piece_t1_s=f(t1, float), ended_traces=f(ended, np.int64))


def test_probe_trip_collector_merges_and_closes():
    c = ProbeTripCollector()
    assert c.push(_out([1, 1, 2], [5, 5, 9], [0, 20, 0], [20, 50, 10], [0, 2, 0],
                       [2, 5, 1])) == []
    done = c.push(_out([1], [6], [0], [30], [5], [8], ended=[1]))
    assert len(done) == 1 and c.open_count() == 1
    trip = done[0]
    np.testing.assert_array_equal(trip.edge, [5, 6])
    np.testing.assert_allclose(trip.covered_m, [50, 30])
    assert trip.duration_s == 8.0


# --- the router's model ---------------------------------------------------------------------

def _model(slope: float = 0.0, n: int = 400):
    from traffic.eta_model import build_eta_model

    trend = PaceTrend(np.arange(n, dtype=np.int64))
    if slope:
        _feed(trend, slope, edges=tuple(range(n)))
    t = float(trend.pool_t) if math.isfinite(trend.pool_t) else 0.0
    pace = np.full(n, 0.1)
    return build_eta_model(trend, pace, np.full(n, 0.02 ** 2), np.full(n, 3.0),
                           np.full(n, 5.0), t, prior_weight=0.3)


def test_eta_model_flat_is_live_and_ordered():
    m = _model()
    live = np.full(50, 10.0)
    d, lo, hi, tt = m.route_eta(np.arange(50), live)
    assert d == pytest.approx(500.0) and lo < d < hi
    np.testing.assert_allclose(tt.sum(), d)


def test_eta_model_rising_trend_later_departure_longer_and_wider():
    m = _model(2e-4)
    live = np.full(50, 10.0)
    now = m.route_eta(np.arange(50), live)
    later = m.route_eta(np.arange(50), live, depart_in_s=1800.0)
    assert now[0] > 500.0 and later[0] > now[0]
    assert (later[2] - later[1]) / later[0] > (now[2] - now[1]) / now[0]


def test_eta_model_route_cost_under_budget():
    import time

    m = _model(1e-4, n=5000)
    edges = np.arange(0, 5000, 50)  # a 100-edge route
    live = np.full(edges.size, 12.0)
    m.route_eta(edges, live)
    t0 = time.perf_counter()
    for _ in range(200):
        m.route_eta(edges, live)
    per_call_ms = (time.perf_counter() - t0) / 200 * 1e3
    # The budget is 0.1 ms on top of a route request; shared CI cores are slower.
    assert per_call_ms < 1.0, per_call_ms


def test_eta_along_fast_path_matches_reference():
    # The inlined walk == the walk through forecast_travel_times (an all-NaN profile).
    rng = np.random.default_rng(11)
    for correct_lag, local in ((True, 900.0), (False, 900.0), (True, 1e9), (False, 1e9)):
        cfg = ForecastConfig(correct_lag=correct_lag, local_tau_s=local, max_log_change=0.4)
        n = 40
        live = rng.uniform(5, 60, n)
        args = {"depart_in_s": 300.0, "share": rng.uniform(0.2, 1, n),
                "lag_s": rng.uniform(0, 120, n), "pool_slope_per_s": 2e-4,
                "floor_tt_s": live * rng.uniform(0.5, 1.2, n)}
        slope = rng.normal(0, 5e-4, n)
        fast = eta_along(live, slope, cfg, **args)
        ref = eta_along(live, slope, cfg, profile_tt_s=np.full(n, np.nan), **args)
        np.testing.assert_allclose(fast[1], ref[1], rtol=1e-12 if local < 1e8 else 1e-5)


def test_pace_trend_skill_follows_the_trend():
    # A steady rise comes true: skill near 1. A rise that stops: skill falls.
    trend = PaceTrend(KEYS, ForecastConfig(gain=1.0, pool_prior_s2=1.0, adapt_gain=True))
    t = _feed(trend, 2e-4, n=120, step_s=15.0)
    assert 0.8 < trend.gain() < 1.3
    _feed(trend, 0.0, t0=t + 15.0, n=60, step_s=15.0, pace0=0.1 * math.exp(2e-4 * (t - 1000.0)))
    assert trend.gain() < 0.8


def test_pace_trend_short_skill_memory_fades_sooner_after_a_turn():
    # Ten minutes after a rise stops, a skill with 150 s of memory has faded more than one
    # with the slopes' 900 s: the trend stops extrapolating growth sooner.
    gains = {}
    for tau in (150.0, 900.0):
        trend = PaceTrend(KEYS, ForecastConfig(gain=1.0, pool_prior_s2=1.0, skill_tau_s=tau,
                                               adapt_gain=True))
        t = _feed(trend, 2e-4, n=120, step_s=15.0)
        assert 0.7 < trend.gain() < 1.3
        _feed(trend, 0.0, t0=t + 15.0, n=40, step_s=15.0,
              pace0=0.1 * math.exp(2e-4 * (t - 1000.0)))
        gains[tau] = trend.gain()
    assert gains[150.0] < 0.75 and gains[150.0] < gains[900.0] - 0.1


def test_pace_trend_reads_version_1_state():
    trend = PaceTrend(KEYS)
    _feed(trend, 1e-4)
    state = trend.state_dict()
    state["version"] = 1
    del state["skill_xy"], state["skill_xx"]
    other = PaceTrend(KEYS)
    other.load_state_dict(state)
    assert other.skill_xx == 0.0 and other.pool_slope() == trend.pool_slope()


def test_edge_uncertainty_without_evidence_is_the_constants_and_the_rest_the_formula():
    """Edges without evidence get min_spread_rel and prior_rel (computed for the others
    only); every entry equals the whole-array formula."""
    from traffic.eta_range import RangeConfig, edge_uncertainty

    rng = np.random.default_rng(0)
    n = 5000
    pace = rng.uniform(0.03, 0.3, n)
    var = rng.uniform(0, 0.01, n) * (rng.random(n) < 0.7)
    ev = np.where(rng.random(n) < 0.3, rng.uniform(0, 20, n), 0.0)
    ev[:3] = [-1.0, 1e-12, 3.0]
    cfg = RangeConfig(prior_rel=0.123456789)
    spread, err = edge_uncertainty(pace, var, ev, prior_weight=2.0, config=cfg)
    c = np.maximum(ev, 0.0)
    want_spread = np.where(c > 0, np.maximum(np.sqrt(var) / pace, cfg.min_spread_rel),
                           cfg.min_spread_rel)
    share = c / (c + 2.0)
    se = want_spread / np.sqrt(np.maximum(c, 1e-9))
    want_err = np.sqrt((share * se) ** 2 + ((1.0 - share) * cfg.prior_rel) ** 2)
    assert np.array_equal(spread, want_spread) and np.array_equal(err, want_err)
    assert (err[c == 0] == cfg.prior_rel).all()


def test_eta_model_travels_without_free_flow_and_the_router_attaches_it():
    """A model built without free-flow times (as full publications ship it) answers exactly
    as one built with them once the router attaches its network's."""
    from traffic.eta_model import build_eta_model, with_freeflow

    n = 400
    trend = PaceTrend(np.arange(n, dtype=np.int64))
    _feed(trend, 2e-4, edges=tuple(range(n)))
    t = float(trend.pool_t)
    args = (trend, np.full(n, 0.1), np.full(n, 0.02 ** 2), np.full(n, 3.0))
    full = build_eta_model(*args, np.full(n, 5.0), t, prior_weight=0.3)
    bare = build_eta_model(*args, None, t, prior_weight=0.3)
    assert bare.freeflow_tt_s is None
    got = with_freeflow(bare, np.full(n, 5.0))
    assert with_freeflow(got, np.zeros(n)) is got  # kept when present
    live = np.full(60, 10.0)
    for a, b in zip(full.route_eta(np.arange(60), live, depart_in_s=900.0),
                    got.route_eta(np.arange(60), live, depart_in_s=900.0)):
        np.testing.assert_array_equal(a, b)


def test_compact_eta_model_expands_to_the_dense_model():
    """What a full publication carries (the evidence edges only) expands, in the router, to
    the model built over every edge: the pooled slope, the lag and the no-evidence range
    constants elsewhere. It is smaller than the dense model by the share of edges without
    evidence."""
    from traffic.eta_model import (
        CompactEtaModel,
        build_compact_eta_model,
        build_eta_model,
        with_freeflow,
    )

    n = 5000
    rng = np.random.default_rng(5)
    trend = PaceTrend(np.arange(n, dtype=np.int64))
    seen = np.sort(rng.choice(n, 300, replace=False))
    _feed(trend, 2e-4, edges=tuple(seen[:200].tolist()))
    t = float(trend.pool_t)
    pace = rng.uniform(0.05, 0.2, n)
    var = rng.uniform(0, 1e-3, n)
    weight = np.zeros(n)
    weight[seen[100:]] = rng.uniform(0.5, 8.0, 200)  # estimator evidence: overlaps the trend's
    dense = build_eta_model(trend, pace, var, weight, None, t, prior_weight=0.3)
    idx = np.union1d(np.flatnonzero(weight > 0), trend.evidence_edges())
    assert idx.size == 300
    compact = build_compact_eta_model(trend, idx, pace[idx], var[idx], weight[idx], t,
                                      prior_weight=0.3)
    assert isinstance(compact, CompactEtaModel) and compact.nbytes < 0.1 * 16 * n
    ff = rng.uniform(1, 30, n).astype(np.float32)
    got = with_freeflow(compact, ff)
    for name in ("slope_per_s", "lag_s", "spread_rel", "error_rel"):
        np.testing.assert_allclose(getattr(got, name), getattr(dense, name), rtol=1e-6,
                                   err_msg=name)
    assert got.pool_slope_per_s == dense.pool_slope_per_s and got.t_s == dense.t_s
    assert got.forecast == dense.forecast and got.freeflow_tt_s is not None
    live = rng.uniform(5, 60, 80)
    route = rng.choice(n, 80, replace=False)
    a = with_freeflow(dense, ff).route_eta(route, live, depart_in_s=600.0)
    b = got.route_eta(route, live, depart_in_s=600.0)
    np.testing.assert_allclose(a[:3], b[:3], rtol=1e-6)
    with pytest.raises(ValueError, match="one value per edge"):
        compact.expand(np.ones(n - 1))
