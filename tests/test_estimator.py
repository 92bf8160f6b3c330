"""Speed estimator: decay, gating and blend on tiny inputs with hand-computed numbers; the
scatter-add against a Python loop; batching, replay, checkpoints, remap; NumPy/CuPy parity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from graph.network import build_network
from traffic import _kernels
from traffic._xp import to_host
from traffic.errors import (
    EstimatorConfigError,
    EstimatorStateError,
    KernelInputError,
    TraversalBatchError,
)
from traffic.estimator import (
    EstimatorConfig,
    EstimatorState,
    SpeedEstimator,
    TraversalBatch,
    confidence,
    current_pace,
    decayed_weight,
    fold_traversals,
)
from traffic.profiles import TimeOfWeekProfile
from traffic.traversals import Traversals

CONFIG = EstimatorConfig(prior_weight=1.0)  # hand-computed numbers below assume w0 = 1
T0 = 1_700_000_000.0


def _line_network(n_edges: int = 3, *, keys=None, speed_kph: float = 36.0):
    """A straight chain of ``n_edges`` edges ~111 m long at 36 km/h (free-flow pace 0.1 s/m)."""
    lat = 55.0 + 0.001 * np.arange(n_edges + 1)
    return build_network(
        node_lat=lat, node_lon=np.full(n_edges + 1, 12.0),
        edge_src=np.arange(n_edges), edge_dst=np.arange(1, n_edges + 1),
        edge_speed_kph=np.full(n_edges, speed_kph), edge_key=keys)


def _state(m: int = 2, prior: float = 0.1) -> EstimatorState:
    return EstimatorState.initial(np.full(m, prior))


def _fold(state, edge, pace, t, *, weight=None, config=CONFIG, t_obs=None):
    edge = np.asarray(edge, dtype=np.int32)
    w = np.ones(edge.shape) if weight is None else np.asarray(weight, dtype=float)
    return fold_traversals(state, edge, np.asarray(pace, dtype=float), w, t, t_obs_s=t_obs,
                           config=config)


def _batch(edge, pace, t_exit, weight=None) -> Traversals:
    edge = np.asarray(edge, dtype=np.int32)
    t_exit = np.broadcast_to(np.asarray(t_exit, dtype=float), edge.shape).copy()
    pace = np.asarray(pace, dtype=float)
    w = np.ones(edge.shape) if weight is None else np.asarray(weight, dtype=float)
    return Traversals(edge, t_exit - 10.0, t_exit, pace, w)


def test_fold_traversals_blend_with_prior():
    state = _fold(_state(), [0, 0], [0.2, 0.3], T0)
    # Evidence: mean 0.25, weight 2, variance 0.0025; prior 0.1 with weight 1.
    assert state.mu[0] == pytest.approx(0.25)
    assert state.c[0] == pytest.approx(2.0)
    assert state.var[0] == pytest.approx(0.0025)
    assert current_pace(state, config=CONFIG)[0] == pytest.approx((0.1 + 2 * 0.25) / 3)
    assert current_pace(state, config=CONFIG)[1] == pytest.approx(0.1)
    assert state.version == 1 and state.t_s == T0 and state.count.tolist() == [2, 0]


def test_current_pace_decays_to_prior():
    state = _fold(_state(), [0], [0.3], T0)
    c = math.exp(-1.0)  # one time constant later
    assert decayed_weight(state, T0 + 600, config=CONFIG)[0] == pytest.approx(c)
    assert current_pace(state, T0 + 600, config=CONFIG)[0] == pytest.approx((0.1 + c * 0.3) / (1 + c))
    assert current_pace(state, T0 + 1e6, config=CONFIG)[0] == pytest.approx(0.1)


def test_fold_traversals_decay_between_batches():
    state = _fold(_state(), [0], [0.2], T0)
    _fold(state, [0], [0.1], T0 + 600)
    c_old = math.exp(-1.0)
    assert state.c[0] == pytest.approx(c_old + 1)
    mu = (c_old * 0.2 + 0.1) / (c_old + 1)
    assert state.mu[0] == pytest.approx(mu)
    var = (c_old * (0.2 - mu) ** 2 + (0.1 - mu) ** 2) / (c_old + 1)
    assert state.var[0] == pytest.approx(var)
    assert state.last_t_s[0] == T0 + 600


def test_fold_traversals_weight_partial_and_own_age():
    # Weight 0.5, observed 600 s before the update time: effective weight 0.5 / e.
    state = _fold(_state(), [1], [0.2], T0 + 600, weight=[0.5], t_obs=[T0])
    assert state.c[1] == pytest.approx(0.5 * math.exp(-1.0))
    assert state.mu[1] == pytest.approx(0.2)


def test_fold_traversals_gate_rejects_outlier():
    state = _fold(_state(), [0] * 5, [0.1] * 5, T0)
    _fold(state, [0], [1.0], T0)
    # c = 5 >= gate_min_weight; estimate 0.1, sd floor 0.015: 1.0 is far outside 3 sd. It
    # keeps weight 0.05 and erodes the evidence weight by half.
    w = CONFIG.outlier_weight
    assert state.c[0] == pytest.approx(2.5 + w)
    assert state.mu[0] == pytest.approx((2.5 * 0.1 + w * 1.0) / (2.5 + w))
    assert state.count[0] == 5
    assert current_pace(state, config=CONFIG)[0] < 0.12


def test_fold_traversals_gate_keeps_inlier():
    state = _fold(_state(), [0] * 5, [0.1] * 5, T0)
    _fold(state, [0], [0.11], T0)  # within 3 x 0.015 of 0.1
    assert state.c[0] == pytest.approx(6)
    assert state.count[0] == 6


def test_fold_traversals_gate_open_with_little_evidence():
    # One traversal is below gate_min_weight: a 10x slower one (a jam) is taken in full.
    state = _fold(_state(), [0], [0.1], T0)
    _fold(state, [0], [1.0], T0)
    assert state.c[0] == pytest.approx(2.0)
    assert state.mu[0] == pytest.approx(0.55)


def test_fold_traversals_gate_opens_after_lasting_change():
    state = _fold(_state(), [0] * 10, [0.1] * 10, T0)
    paces = []
    for k in range(1, 7):
        _fold(state, [0], [0.5], T0 + 30 * k)
        paces.append(float(current_pace(state, config=CONFIG)[0]))
    # 10 -> 5 -> 2.5 (< gate_min_weight): the third slow traversal passes the open gate.
    assert paces[1] < 0.15 < paces[2]
    assert paces[-1] > 0.3 and paces == sorted(paces)


def test_fold_traversals_pace_clipped_to_bounds():
    state = _fold(_state(), [0, 1], [1e-6, 50.0], T0)
    assert state.mu[0] == pytest.approx(1 / 60)
    assert state.mu[1] == pytest.approx(1.0)


def test_fold_traversals_empty():
    state = _fold(_state(), [], [], T0)
    assert state.version == 1 and state.t_s == T0 and state.c.sum() == 0


def test_fold_traversals_needs_a_time():
    with pytest.raises(TraversalBatchError, match="update time"):
        fold_traversals(_state(), np.zeros(1, np.int32), np.ones(1), np.ones(1), config=CONFIG)


def test_fold_traversals_invalid_lengths():
    with pytest.raises(TraversalBatchError, match="length of `edge`"):
        fold_traversals(_state(), np.zeros(2, np.int32), np.ones(1), np.ones(2), T0,
                        config=CONFIG)


def test_fold_traversals_clock_never_goes_back():
    state = _fold(_state(), [0], [0.2], T0 + 100)
    _fold(state, [1], [0.2], T0 - 500, t_obs=[T0 - 500])
    assert state.t_s == T0 + 100
    assert state.c[1] == pytest.approx(math.exp(-1.0))  # late data is merely older


def _reference_fold(state: EstimatorState, edge, pace, weight, t_obs, t_s, config):
    """Python loop over traversals and segments: the slow reference of one fold."""
    p_ = config.kernel_params()
    sums: dict[int, list[float]] = {}
    counts: dict[int, int] = {}
    for e, p, w, to in zip(edge.tolist(), pace.tolist(), weight.tolist(), t_obs.tolist()):
        c_dec = state.c[e] * math.exp(-max(t_s - state.last_t_s[e], 0) * p_["inv_tau"])
        p_hat = (p_["prior_weight"] * state.prior[e] + c_dec * state.mu[e]) / (
            p_["prior_weight"] + c_dec)
        p = min(max(p, p_["min_pace"]), p_["max_pace"])
        sd = math.sqrt(max(state.var[e], (p_["min_rel"] * p_hat) ** 2))
        gated = c_dec >= p_["gate_min_weight"] and abs(p - p_hat) > p_["gate_sigma"] * sd
        w = w * math.exp(-max(t_s - to, 0) * p_["inv_tau"])
        s = sums.setdefault(e, [0.0, 0.0, 0.0, 0.0])
        s[3] += w if gated else 0.0
        w *= p_["outlier_weight"] if gated else 1
        dev = p - state.mu[e]
        s[0] += w
        s[1] += w * dev
        s[2] += w * dev * dev
        counts[e] = counts.get(e, 0) + (0 if gated else 1)
    out = {k: np.array(getattr(state, k), copy=True) for k in ("mu", "c", "var", "last_t_s", "count")}
    for e, (sw, s1, s2, g) in sums.items():
        out["count"][e] += counts[e]
        if sw <= 0 and g <= 0:
            continue
        c_dec = state.c[e] * math.exp(-max(t_s - state.last_t_s[e], 0) * p_["inv_tau"])
        c_dec *= CONFIG.gate_erosion ** g
        c_new = c_dec + sw
        delta = s1 / c_new
        out["mu"][e] = state.mu[e] + delta
        out["var"][e] = max((c_dec * state.var[e] + s2) / c_new - delta * delta, 0.0)
        out["c"][e] = c_new
        out["last_t_s"][e] = t_s
    return out


def _random_stream(rng, m: int, n: int, t_start: float, span_s: float):
    edge = rng.integers(0, m, n).astype(np.int32)
    base = rng.uniform(0.03, 0.3, m)
    pace = base[edge] * rng.lognormal(0, 0.2, n)
    outliers = rng.random(n) < 0.05
    pace[outliers] *= 8
    weight = rng.uniform(0.05, 1.0, n)
    t_obs = np.sort(rng.uniform(t_start, t_start + span_s, n))
    return edge, pace, weight, t_obs, base


def test_fold_traversals_scatter_add_matches_python_loop():
    rng = np.random.default_rng(42)
    m = 40
    state = _state(m)
    for k in range(4):
        edge, pace, weight, t_obs, _ = _random_stream(rng, m, 300, T0 + 200 * k, 200)
        t_s = float(t_obs.max())
        expected = _reference_fold(state, edge, pace, weight, t_obs, t_s, CONFIG)
        fold_traversals(state, edge, pace, weight, t_s, t_obs_s=t_obs, config=CONFIG)
        for key, want in expected.items():
            got = getattr(state, key)
            bad = ~np.isclose(got, want, rtol=1e-9, atol=1e-12)
            assert not bad.any(), f"{key} differs first at segment {int(np.argmax(bad))}"


def test_fold_traversals_batching_equivalent_without_gate():
    rng = np.random.default_rng(1)
    config = EstimatorConfig(gate_sigma=1e9)
    m = 25
    edge, pace, weight, t_obs, _ = _random_stream(rng, m, 2000, T0, 3600)
    one = _state(m)
    fold_traversals(one, edge, pace, weight, t_obs_s=t_obs, config=config)
    many = _state(m)
    for part in np.array_split(np.arange(edge.size), 37):
        fold_traversals(many, edge[part], pace[part], weight[part], t_obs_s=t_obs[part],
                        config=config)
    t_end = T0 + 4000
    for f in (decayed_weight, current_pace, confidence):
        np.testing.assert_allclose(f(many, t_end, config=config), f(one, t_end, config=config),
                                   rtol=1e-9)
    np.testing.assert_allclose(many.mu, one.mu, rtol=1e-9)
    np.testing.assert_allclose(many.var, one.var, rtol=1e-7, atol=1e-15)


def test_fold_traversals_batching_with_gate_rejects_outliers():
    # With the gate, batching changes which traversals count as outliers: folded at once,
    # nothing is gated (no evidence yet) and the 8x outliers pull the mean up; folded as a
    # stream, they are gated and the estimate stays nearer the true pace.
    rng = np.random.default_rng(2)
    m = 25
    edge, pace, weight, t_obs, base = _random_stream(rng, m, 3000, T0, 3600)
    one, many = _state(m), _state(m)
    fold_traversals(one, edge, pace, weight, t_obs_s=t_obs, config=CONFIG)
    for part in np.array_split(np.arange(edge.size), 60):
        fold_traversals(many, edge[part], pace[part], weight[part], t_obs_s=t_obs[part],
                        config=CONFIG)
    a = current_pace(one, T0 + 3600, config=CONFIG)
    b = current_pace(many, T0 + 3600, config=CONFIG)
    err_one, err_many = np.median(np.abs(a / base - 1)), np.median(np.abs(b / base - 1))
    assert err_many < 0.6 * err_one and err_many < 0.15


def test_speed_estimator_replay_deterministic():
    net = _line_network(30)
    rng = np.random.default_rng(3)
    edge, pace, weight, t_obs, _ = _random_stream(rng, net.n_edges, 1500, T0, 1800)
    batches = [_batch(edge[p], pace[p], t_obs[p], weight[p])
               for p in np.array_split(np.arange(edge.size), 20)]
    runs = []
    for _ in range(2):
        est = SpeedEstimator(net, CONFIG)
        versions = [est.apply(b) for b in batches]
        runs.append((versions, est.travel_times(), est.state_dict()))
    assert runs[0][0] == runs[1][0] == list(range(1, 21))
    assert np.array_equal(runs[0][1][1], runs[1][1][1])
    for k in ("mu", "c", "var", "last_t_s", "count"):
        assert np.array_equal(runs[0][2][k], runs[1][2][k])


def test_speed_estimator_travel_times():
    net = _line_network(3)
    est = SpeedEstimator(net, CONFIG)
    version, tt = est.travel_times()
    assert version == 0
    np.testing.assert_allclose(tt, net.edge_length_m / 10.0)
    assert est.apply(_batch([2, 2], [0.2, 0.2], T0)) == 1
    version, tt = est.travel_times()
    assert version == 1 and tt.dtype == np.float64
    assert tt[2] == pytest.approx(net.edge_length_m[2] * (0.1 + 2 * 0.2) / 3)
    np.testing.assert_allclose(est.speeds_mps()[:2], 10.0)


def test_speed_estimator_snapshot_columns():
    net = _line_network(3)
    est = SpeedEstimator(net, CONFIG)
    est.apply(_batch([0], [0.2], T0))
    snap = est.snapshot()
    assert snap.columns == ["edge", "edge_key", "speed_mps", "freeflow_mps", "ratio",
                            "confidence", "observations", "last_update_t"]
    assert snap.height == 3
    assert snap["edge_key"].to_list() == net.edge_key.tolist()
    row = snap.row(0, named=True)
    assert row["speed_mps"] == pytest.approx(1 / ((0.1 + 0.2) / 2))
    assert row["ratio"] == pytest.approx(row["speed_mps"] / 10.0)
    assert row["observations"] == 1 and row["last_update_t"] == T0
    assert snap["last_update_t"].null_count() == 2
    assert snap["confidence"].to_list()[1:] == [0.0, 0.0]
    assert 0 < row["confidence"] < 1


def test_speed_estimator_snapshot_of_some_edges_equals_those_rows():
    net = _line_network(6)
    rng = np.random.default_rng(2)
    edge, pace, weight, t_obs, _ = _random_stream(rng, net.n_edges, 100, T0, 600)
    est = SpeedEstimator(net, CONFIG)
    est.apply(_batch(edge, pace, t_obs, weight))
    full = est.snapshot(T0 + 900)
    ids = np.array([4, 0, 2])
    part = est.snapshot(T0 + 900, edges=ids)
    assert part.equals(full[ids.tolist()])
    assert est.snapshot(edges=np.zeros(0, dtype=np.int64)).height == 0
    with pytest.raises(ValueError, match="edge id 6 is out of range"):
        est.snapshot(edges=[1, 6])


def test_speed_estimator_snapshot_is_not_changed_by_later_folds():
    est = SpeedEstimator(_line_network(3), CONFIG)
    est.apply(_batch([0], [0.2], T0))
    snap = est.snapshot()
    before = snap.to_dict(as_series=False)  # plain Python values: a deep copy
    est.apply(_batch([0, 1], [0.3, 0.3], T0 + 60.0))
    assert snap.to_dict(as_series=False) == before


def test_speed_estimator_state_dict_round_trip(tmp_path):
    net = _line_network(5)
    rng = np.random.default_rng(4)
    edge, pace, weight, t_obs, _ = _random_stream(rng, net.n_edges, 200, T0, 600)
    est = SpeedEstimator(net, CONFIG)
    est.apply(_batch(edge, pace, t_obs, weight))
    path = tmp_path / "ckpt.npz"
    sd = est.state_dict()
    np.savez(path, **{k: v for k, v in sd.items() if k != "config"})
    loaded = dict(np.load(path))
    other = SpeedEstimator(net, CONFIG)
    other.load_state_dict(loaded)
    assert other.version == est.version and other.t_s == est.t_s
    assert other.snapshot().equals(est.snapshot())
    nxt = _batch([1, 2], [0.3, 0.05], T0 + 700)
    est.apply(nxt)
    other.apply(nxt)
    assert np.array_equal(est.travel_times()[1], other.travel_times()[1])


def test_sparse_state_holds_only_touched_edges_and_restores_exactly():
    """The default checkpoint lists only the edges with evidence; restored, every edge's
    state, the publications after it and a dense round trip are all the same."""
    net = _line_network(40)
    est = SpeedEstimator(net, CONFIG)
    est.apply(_batch([3, 7, 7, 21], [0.2, 0.05, 0.06, 0.3], T0))
    sparse, dense = est.state_dict(), est.state_dict(sparse=False)
    assert sparse["sparse"] and sorted(sparse["edge_key"].tolist()) == sorted(
        net.edge_key[[3, 7, 21]].tolist())
    assert dense["edge_key"].size == net.n_edges
    restored = []
    for sd in (sparse, dense):
        other = SpeedEstimator(net, CONFIG)
        other.load_state_dict(sd)
        assert other.snapshot().equals(est.snapshot())
        restored.append(other)
    nxt = _batch([1, 7], [0.3, 0.05], T0 + 700)
    for e in (est, *restored):
        e.apply(nxt)
    assert np.array_equal(restored[0].travel_times()[1], est.travel_times()[1])
    assert np.array_equal(restored[1].travel_times()[1], est.travel_times()[1])
    # Another network: refused when strict, mapped by key when not.
    other_net = _line_network(40, keys=np.arange(1000, 1040))
    with pytest.raises(EstimatorStateError, match="checkpoint is of network"):
        SpeedEstimator(other_net, CONFIG).load_state_dict(sparse)


def test_speed_estimator_load_state_dict_invalid():
    net = _line_network(3)
    est = SpeedEstimator(net, CONFIG)
    sd = est.state_dict()
    with pytest.raises(EstimatorStateError, match="lacks"):
        est.load_state_dict({k: v for k, v in sd.items() if k != "mu"})
    bad = dict(sd, mu=np.zeros(7))
    with pytest.raises(EstimatorStateError, match="`mu` has shape"):
        est.load_state_dict(bad)
    other = SpeedEstimator(_line_network(4), CONFIG)
    with pytest.raises(EstimatorStateError, match="strict=False"):
        other.load_state_dict(sd)


def test_speed_estimator_remap_to_keeps_common_keys():
    old = _line_network(3, keys=np.array([10, 20, 30]))
    est = SpeedEstimator(old, CONFIG)
    est.apply(_batch([0, 1, 2], [0.2, 0.3, 0.4], T0))
    # The new import drops key 20, keeps 10 and 30 (in another order) and adds key 40.
    new = _line_network(3, keys=np.array([30, 40, 10]))
    moved = est.remap_to(new)
    assert moved.version == est.version and moved.t_s == est.t_s
    pace_old, pace_new = est.current_pace(), moved.current_pace()
    assert pace_new[0] == pytest.approx(pace_old[2])
    assert pace_new[2] == pytest.approx(pace_old[0])
    assert pace_new[1] == pytest.approx(0.1)  # a new edge starts at its prior
    assert moved.snapshot()["observations"].to_list() == [1, 0, 1]


def test_speed_estimator_profile_prior():
    net = _line_network(2)
    profile = TimeOfWeekProfile.for_network(net)
    profile.observe(np.array([0.25, np.nan]), np.array([1.0, 1.0]), T0)
    est = SpeedEstimator(net, CONFIG, prior=profile)
    est.apply(_batch([1], [0.1], T0))
    # Edge 0 has no traversal: its estimate is the profile's pace for this time of week.
    assert est.current_pace()[0] == pytest.approx(0.25)
    assert est.current_pace()[1] == pytest.approx(0.1)


def test_speed_estimator_static_prior_invalid():
    with pytest.raises(EstimatorConfigError, match="one pace per edge"):
        SpeedEstimator(_line_network(2), CONFIG, prior=np.ones(3))


def test_traversal_batch_validate_cases():
    b = _batch([0, 1], [0.1, 0.2], T0)
    assert b.validate(3) is b
    assert len(Traversals.empty().validate(3)) == 0
    assert TraversalBatch is Traversals  # the old name, kept as an alias
    cases = [
        (dict(edge=np.array([0, 5], np.int32)), "`edge` must be within 0..2; got 5 at index 1"),
        (dict(pace_s_per_m=np.array([0.1, np.nan])), "`pace_s_per_m` must be finite and > 0"),
        (dict(weight=np.array([0.0, 1.0])), "`weight` must be within \\(0, 1\\]"),
        (dict(t_exit_s=np.array([T0, T0 - 20])), "`t_exit_s` must be finite and >= t_enter_s"),
        (dict(weight=np.ones(3)), "`weight` must be a 1-D array of length 2"),
        (dict(edge=np.array([0.0, 1.0])), "`edge` must be an integer array"),
    ]
    for change, message in cases:
        fields = dict(edge=b.edge, t_enter_s=b.t_enter_s, t_exit_s=b.t_exit_s,
                      pace_s_per_m=b.pace_s_per_m, weight=b.weight) | change
        with pytest.raises(TraversalBatchError, match=message):
            Traversals(**fields).validate(3)


def test_estimator_config_invalid_value():
    with pytest.raises(EstimatorConfigError, match="decay_tau_s"):
        EstimatorConfig(decay_tau_s=0)
    with pytest.raises(EstimatorConfigError, match="outlier_weight"):
        EstimatorConfig(outlier_weight=2)
    with pytest.raises(EstimatorConfigError, match="min_speed_mps"):
        EstimatorConfig(min_speed_mps=70)


def test_kernels_fold_pace_invalid_type():
    m = np.zeros(4, np.float32)
    out = (m.copy(), m.copy(), m.copy(), np.zeros(4, np.int32))
    args = dict(mu=m, c=m, var=m, prior=m, last=np.zeros(4), t_s=T0,
                params=CONFIG.kernel_params(), out=out)
    edge = np.zeros(2, np.int32)
    f32, f64 = np.ones(2, np.float32), np.zeros(2)
    with pytest.raises(KernelInputError, match="`pace` must be a float32 array; got float64"):
        _kernels.fold_pace(edge, f64, f32, f64, **args)
    with pytest.raises(KernelInputError, match="`weight` must have length 2; got 3"):
        _kernels.fold_pace(edge, f32, np.ones(3, np.float32), f64, **args)
    with pytest.raises(KernelInputError, match="C-contiguous"):
        _kernels.fold_pace(np.zeros(4, np.int32)[::2], f32, f32, f64, **args)
    with pytest.raises(KernelInputError, match="`n_obs` must be a int32"):
        _kernels.apply_pace((m, m, m, m, m), mu=m, c=m, var=m, last=np.zeros(4),
                            count=np.zeros(4, np.int32), t_s=T0, inv_tau=1.0, log_erosion=0.0)


def test_fold_traversals_xp_parity(xp):
    """float32 state on ``xp`` (CuPy: the CUDA kernels) against float64 NumPy."""
    rng = np.random.default_rng(5)
    m = 500
    ref = _state(m)
    dev = EstimatorState.initial(np.full(m, 0.1), xp=xp, dtype=xp.float32)
    for k in range(5):
        edge, pace, weight, t_obs, _ = _random_stream(rng, m, 4000, T0 + 300 * k, 300)
        fold_traversals(ref, edge, pace, weight, t_obs_s=t_obs, config=CONFIG)
        fold_traversals(dev, xp.asarray(edge), xp.asarray(pace), xp.asarray(weight),
                        t_obs_s=xp.asarray(t_obs), config=CONFIG)
    t_end = T0 + 1600
    for f in (current_pace, confidence):
        got = f(dev, t_end, config=CONFIG)
        got = to_host(got)
        want = f(ref, t_end, config=CONFIG)
        bad = ~np.isclose(got, want, rtol=2e-3, atol=1e-5)
        assert not bad.any(), f"{f.__name__} differs first at segment {int(np.argmax(bad))}"
    count = to_host(dev.count)
    # float32 rounding may flip a gate decision right at the boundary, nothing more.
    assert np.abs(count.astype(int) - ref.count).sum() <= 3


def test_fold_traversals_kernels_match_array_code(xp):
    """On CuPy the fused kernels and the array code give the same state (NumPy: trivially)."""
    rng = np.random.default_rng(6)
    m = 300
    a = EstimatorState.initial(np.full(m, 0.1), xp=xp, dtype=xp.float32)
    b = EstimatorState.initial(np.full(m, 0.1), xp=xp, dtype=xp.float32)
    for k in range(3):
        edge, pace, weight, t_obs, _ = _random_stream(rng, m, 3000, T0 + 300 * k, 300)
        args = (xp.asarray(edge), xp.asarray(pace), xp.asarray(weight))
        fold_traversals(a, *args, t_obs_s=xp.asarray(t_obs), config=CONFIG, use_kernels=True)
        fold_traversals(b, *args, t_obs_s=xp.asarray(t_obs), config=CONFIG, use_kernels=False)
    host = {k: [to_host(getattr(s, k)) for s in (a, b)] for k in ("mu", "c", "var", "count")}
    for key in ("mu", "c", "var"):
        got, want = host[key]
        bad = ~np.isclose(got, want, rtol=1e-4, atol=1e-6)
        assert not bad.any(), f"{key} differs first at segment {int(np.argmax(bad))}"
    got, want = host["count"]
    assert int(np.abs(got.astype(int) - want.astype(int)).sum()) <= 3


def _cpu_kernel_case(rng, m: int, n: int, dtype, *, with_t_obs: bool = True):
    """A state with evidence on part of the segments (gate closed there) and a batch."""
    state = EstimatorState.initial(rng.uniform(0.03, 0.3, m), dtype=dtype)
    some = rng.random(m) < 0.6
    state.c[some] = rng.uniform(0.5, 12.0, some.sum())
    state.mu[some] = state.prior[some] * rng.lognormal(0, 0.3, some.sum())
    state.var[some] = (0.1 * state.mu[some]) ** 2 * rng.uniform(0, 2, some.sum())
    state.last_t_s[some] = T0 - rng.uniform(0, 1200, some.sum())
    edge, pace, weight, t_obs, _ = _random_stream(rng, m, n, T0, 120)
    pace = np.asarray(state.prior, dtype=float)[edge] * rng.lognormal(0, 0.25, n)
    pace[rng.random(n) < 0.08] *= 6  # outliers, gated where the evidence is strong
    return state, (edge, pace.astype(dtype), weight.astype(dtype),
                   t_obs if with_t_obs else None)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fold_traversals_numba_matches_array_code(dtype):
    """The fused numba kernel against the array code it twins, over several cache windows
    (dense and sparse ones), with gated traversals, with and without observation times."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(7)
    tol = dict(rtol=1e-10, atol=1e-14) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-7)
    gated_total = 0
    # (2000000, 25): over 16 cache windows (489) per traversal, the kernel's sort branch.
    for m, n, with_t in ((3, 50, True), (9000, 30000, True), (20000, 1500, True),
                         (20000, 6000, False), (2000000, 25, True), (2000000, 25, False)):
        state, (edge, pace, weight, t_obs) = _cpu_kernel_case(rng, m, n, dtype,
                                                              with_t_obs=with_t)
        a, b = (EstimatorState(**{k: getattr(state, k).copy() for k in
                                  ("mu", "c", "var", "prior", "last_t_s", "count")})
                for _ in range(2))
        for k in range(3):
            t_s = T0 + 60 * k
            fold_traversals(a, edge, pace, weight, t_s, t_obs_s=t_obs, config=CONFIG)
            fold_traversals(b, edge, pace, weight, t_s, t_obs_s=t_obs, config=CONFIG,
                            use_kernels=False)
        for key in ("mu", "c", "var", "last_t_s"):
            got, want = getattr(a, key), getattr(b, key)
            bad = ~np.isclose(got, want, **tol)
            assert not bad.any(), f"m={m}: {key} differs first at segment {int(np.argmax(bad))}"
        diff = np.abs(a.count.astype(int) - b.count)
        assert diff.sum() <= (0 if dtype == np.float64 else 3), f"m={m}: counts differ"
        gated_total += 3 * n - int(b.count.sum() - state.count.sum())
    assert gated_total > 100  # the gate was exercised


def test_kernels_cpu_fold_apply_invalid():
    pytest.importorskip("numba")
    state = _state(4)
    args = dict(mu=state.mu, c=state.c, var=state.var, prior=state.prior,
                last=state.last_t_s, count=state.count, scratch={}, t_s=T0,
                params=CONFIG.kernel_params())
    ones = np.ones(2)
    with pytest.raises(TraversalBatchError, match="`edge` must be within 0..3 .*got 4 at index 1"):
        _kernels.cpu_fold_apply(np.array([0, 4], np.int32), ones, ones, None, **args)
    with pytest.raises(KernelInputError, match="`pace` must be a float64 array; got float32"):
        _kernels.cpu_fold_apply(np.zeros(2, np.int32), ones.astype(np.float32), ones, None,
                                **args)
    assert state.count.sum() == 0 and state.c.sum() == 0  # nothing written


def _copy_state(state: EstimatorState) -> EstimatorState:
    return EstimatorState(**{k: getattr(state, k).copy() for k in
                             ("mu", "c", "var", "prior", "last_t_s", "count")},
                          t_s=state.t_s, version=state.version)


def _paths(xp):
    """(name, use_kernels) of every fold path on ``xp``: kernels and array code."""
    if xp is np:
        paths = [("array code", False)]
        if _kernels.cpu_kernels() is not None:
            paths.append(("numba kernel", True))
        return paths
    return [("CUDA kernels", True), ("array code", False)]


@pytest.mark.parametrize("bad_edge", [7, -1, 2**31 - 1])
def test_fold_traversals_out_of_range_edge_folds_nothing(xp, bad_edge):
    """An edge id outside 0..m-1 raises, naming it, its index and the range, on every path
    (the CUDA kernels are never launched), and leaves the state as it was."""
    dtype = xp.float32 if xp is not np else np.float64
    for name, kern in _paths(xp):
        state = EstimatorState.initial(np.full(7, 0.1), xp=xp, dtype=dtype)
        fold_traversals(state, xp.asarray(np.array([1, 2], np.int32)), xp.asarray([0.2, 0.2]),
                        xp.ones(2), T0, config=CONFIG, use_kernels=kern)
        before = {k: to_host(getattr(state, k)).copy() for k in ("mu", "c", "var", "count")}
        edge = xp.asarray(np.array([0, 3, bad_edge, 1], np.int32))
        with pytest.raises(TraversalBatchError,
                           match=rf"`edge` must be within 0..6 .*got {bad_edge} at index 2"):
            fold_traversals(state, edge, xp.full(4, 0.3), xp.ones(4), T0 + 60, config=CONFIG,
                            use_kernels=kern)
        for k, want in before.items():
            assert np.array_equal(to_host(getattr(state, k)), want), (name, k)
        assert state.version == 1 and state.t_s == T0, name


def test_speed_estimator_apply_unvalidated_out_of_range_edge():
    est = SpeedEstimator(_line_network(3), CONFIG)
    with pytest.raises(TraversalBatchError, match=r"within 0..2 .*got 3 at index 1"):
        est.apply(_batch([0, 3], [0.2, 0.2], T0), validate=False)
    assert est.version == 0 and est.state.c.sum() == 0


def _median_fold_s(state, edge, pace, weight, t_obs, kern, repeats: int = 7) -> float:
    import time

    xp = type(state.mu).__module__.split(".")[0]
    sync = (lambda: state.mu.device.synchronize()) if xp == "cupy" else (lambda: None)
    times = []
    for k in range(repeats):
        t = time.perf_counter()
        fold_traversals(state, edge, pace, weight, t_obs_s=t_obs + 60 * (k + 1), config=CONFIG,
                        use_kernels=kern)
        sync()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


@pytest.mark.slow
def test_fold_traversals_cost_does_not_grow_with_network(xp):
    """A probe batch costs O(batch): 1,000 traversals into 5 M segments take less than 10x
    their time into 50 k (an O(segments) pass per fold would make it ~100x)."""
    rng = np.random.default_rng(11)
    n = 1_000
    dtype = xp.float32 if xp is not np else np.float64
    for name, kern in _paths(xp):
        times = []
        for m in (50_000, 5_000_000):
            state = EstimatorState.initial(xp.full(m, 0.1, dtype=dtype), xp=xp, dtype=dtype)
            edge = xp.asarray(rng.integers(0, m, n).astype(np.int32))
            pace = xp.asarray((0.1 * rng.lognormal(0, 0.2, n)).astype(dtype))
            weight, t_obs = xp.ones(n, dtype=dtype), xp.asarray(T0 + rng.uniform(0, 60, n))
            fold_traversals(state, edge, pace, weight, t_obs_s=t_obs, config=CONFIG,
                            use_kernels=kern)  # warm-up (numba load, CUDA compile)
            if xp is not np:
                xp.cuda.Device().synchronize()
            times.append(_median_fold_s(state, edge, pace, weight, t_obs, kern))
            del state
        assert times[1] < 10 * times[0] + 2e-4, (
            f"{name}: {times[1] * 1e3:.2f} ms into 5M vs {times[0] * 1e3:.2f} ms into 50k")


def test_fold_traversals_array_code_allocates_nothing_network_sized():
    """The NumPy array code's small-batch fold allocates O(batch) memory (traced by
    tracemalloc, which sees NumPy's allocations): no array of the network's length."""
    import tracemalloc

    m, n = 2_000_000, 500
    rng = np.random.default_rng(12)
    state = EstimatorState.initial(np.full(m, 0.1))
    edge = rng.integers(0, m, n).astype(np.int32)
    pace, weight = 0.1 * rng.lognormal(0, 0.2, n), np.ones(n)
    t_obs = T0 + rng.uniform(0, 60, n)
    fold_traversals(state, edge, pace, weight, t_obs_s=t_obs, config=CONFIG, use_kernels=False)
    tracemalloc.start()
    try:
        fold_traversals(state, edge, pace, weight, t_obs_s=t_obs + 60, config=CONFIG,
                        use_kernels=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000 * n, f"peak {peak} B for {n} traversals (an m-long float64 is {8 * m} B)"


def test_fold_traversals_small_batches_on_large_network_match_reference(xp):
    """Sparse folds (batch << network: unique/compact sums, the sparse CUDA apply, the
    numba sort branch) against the float64 NumPy reference with the dense large-batch fold
    in between, on segments touched many times; CUDA sums are left zeroed after each fold."""
    rng = np.random.default_rng(13)
    m = 60_000
    hot = rng.choice(m, 300, replace=False)
    dtype = xp.float32 if xp is not np else np.float64
    ref = _state(m)
    states = {name: (EstimatorState.initial(np.full(m, 0.1), xp=xp, dtype=dtype), kern)
              for name, kern in _paths(xp)}
    for k in range(12):
        n = 20_000 if k == 6 else 400  # one dense fold in the middle
        edge = hot[rng.integers(0, hot.size, n)].astype(np.int32)
        pace = 0.1 * rng.lognormal(0, 0.3, n)
        pace[rng.random(n) < 0.05] *= 8
        weight = rng.uniform(0.2, 1.0, n)
        t_obs = T0 + 60 * k + rng.uniform(0, 60, n)
        fold_traversals(ref, edge, pace, weight, t_obs_s=t_obs, config=CONFIG,
                        use_kernels=False)
        for state, kern in states.values():
            fold_traversals(state, xp.asarray(edge), xp.asarray(pace), xp.asarray(weight),
                            t_obs_s=xp.asarray(t_obs), config=CONFIG, use_kernels=kern)
            for a in state.extra.get("gpu_fold_sums", ()):
                assert int(xp.count_nonzero(a)) == 0
    tol = dict(rtol=1e-9, atol=1e-12) if xp is np else dict(rtol=2e-3, atol=1e-5)
    for name, (state, _) in states.items():
        for f in (current_pace, confidence):
            got, want = to_host(f(state, T0 + 800, config=CONFIG)), f(ref, T0 + 800, config=CONFIG)
            bad = ~np.isclose(got, want, **tol)
            assert not bad.any(), f"{name}: {f.__name__} differs at {int(np.argmax(bad))}"
        diff = np.abs(to_host(state.count).astype(int) - ref.count).sum()
        assert diff <= (0 if xp is np and dtype == np.float64 else 5), name
        assert int((to_host(state.count) > 0).sum()) == hot.size


def test_kernels_fold_pace_first_needs_hits():
    m = np.zeros(4, np.float32)
    args = dict(mu=m, c=m, var=m, prior=m, last=np.zeros(4), t_s=T0,
                params=CONFIG.kernel_params())
    f32, f64 = np.ones(2, np.float32), np.zeros(2)
    out5 = (m.copy(), m.copy(), m.copy(), m.copy(), np.zeros(4, np.int32))
    with pytest.raises(KernelInputError, match="sixth array, `hits`"):
        _kernels.fold_pace(np.zeros(2, np.int32), f32, f32, f64, out=out5,
                           first=np.zeros(2, np.int32), **args)
    with pytest.raises(KernelInputError, match="`first` must have length 2; got 3"):
        _kernels.fold_pace(np.zeros(2, np.int32), f32, f32, f64,
                           out=(*out5, np.zeros(4, np.int32)), first=np.zeros(3, np.int32),
                           **args)


def test_kernels_check_edge_range():
    _kernels.check_edge_range(np.array([0, 4], np.int32), 5)
    _kernels.check_edge_range(np.zeros(0, np.int32), 0)
    with pytest.raises(TraversalBatchError, match=r"within 0..4 .*got 5 at index 1"):
        _kernels.check_edge_range(np.array([0, 5, -3], np.int32), 5)


def test_profile_learning_on_evidence_edges_equals_the_whole_network():
    """What the estimator folds into the profile from its evidence edges only equals what
    folding every edge's pace and confidence gives (the others cannot be confident)."""
    from traffic.profiles import ProfileConfig, TimeOfWeekProfile

    net = _line_network(30)
    rng = np.random.default_rng(9)
    edge, pace, weight, t_obs, _ = _random_stream(rng, 12, 300, T0, 600)
    est = SpeedEstimator(net, CONFIG)
    est.apply(_batch(edge, pace, t_obs, weight))
    at = T0 + 620
    whole = TimeOfWeekProfile(net.edge_key, ProfileConfig())
    _, tt = est.travel_times(at)
    conf = est.confidence(at).astype(np.float32)
    conf[conf < 0.2] = 0.0
    whole.observe(tt / net.edge_length_m, conf, at)
    part = TimeOfWeekProfile(net.edge_key, ProfileConfig())
    ids = est.evidence_edges()
    assert 0 < ids.size <= 12
    p, c = est.pace_and_confidence_of(ids, at)
    c = c.astype(np.float32)
    c[c < 0.2] = 0.0
    part.observe_edges(ids, p, c, at)
    assert whole.n_entries > 0
    for k, v in whole.state_dict().items():
        np.testing.assert_array_equal(part.state_dict()[k], v, err_msg=k)
