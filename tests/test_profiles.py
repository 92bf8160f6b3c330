"""Time-of-week profiles: binning in a time zone, learning, priors, save/load by edge key."""

from __future__ import annotations

import numpy as np
import pytest

from traffic.errors import EstimatorConfigError, EstimatorStateError
from traffic.profiles import ProfileConfig, TimeOfWeekProfile, state_from_dense_rows

MONDAY_2024_UTC = 1_704_067_200.0  # 2024-01-01T00:00:00Z, a Monday
KEYS = np.array([101, 202, 303], dtype=np.int64)


def test_bin_of_utc_week():
    profile = TimeOfWeekProfile(KEYS)
    assert profile.config.n_bins == 672
    assert profile.bin_of(MONDAY_2024_UTC) == 0
    assert profile.bin_of(MONDAY_2024_UTC + 899) == 0
    assert profile.bin_of(MONDAY_2024_UTC + 900) == 1
    assert profile.bin_of(MONDAY_2024_UTC - 1) == 671  # Sunday 23:59:59
    assert profile.bin_of(MONDAY_2024_UTC + 7 * 86_400 + 8 * 3600) == 32


def test_bin_of_copenhagen_with_daylight_saving():
    profile = TimeOfWeekProfile(KEYS, ProfileConfig(timezone="Europe/Copenhagen"))
    assert profile.bin_of(MONDAY_2024_UTC - 3600) == 0  # CET: UTC+1
    monday_july_local_midnight = 1_719_784_800.0  # 2024-06-30T22:00Z, CEST: UTC+2
    assert profile.bin_of(monday_july_local_midnight) == 0
    assert profile.bin_of(monday_july_local_midnight + 8 * 3600) == 32


def test_bin_of_nan():
    with pytest.raises(EstimatorConfigError, match="t_s"):
        TimeOfWeekProfile(KEYS).bin_of(float("nan"))


def test_observe_running_weighted_mean():
    profile = TimeOfWeekProfile(KEYS)
    t = MONDAY_2024_UTC + 8 * 3600
    profile.observe(np.array([0.1, 0.2, np.nan]), np.array([1.0, 0.01, 1.0]), t)
    profile.observe(np.array([0.3, 0.2, 0.5]), np.array([0.5, 1.0, 0.0]), t + 60)
    prior = profile.prior_pace(t + 120)
    # Edge 0: (1 * 0.1 + 0.5 * 0.3) / 1.5; edge 1: the low-confidence value was ignored;
    # edge 2: NaN pace and zero confidence ignored, so no data.
    assert prior[0] == pytest.approx((0.1 + 0.5 * 0.3) / 1.5, rel=1e-6)
    assert prior[1] == pytest.approx(0.2)
    assert np.isnan(prior[2])
    assert np.isnan(profile.prior_pace(t + 3600)).all()  # another bin: no data yet


def test_observe_weight_cap_keeps_adapting():
    profile = TimeOfWeekProfile(KEYS, ProfileConfig(max_weight=2.0))
    t = MONDAY_2024_UTC
    for _ in range(10):
        profile.observe(np.full(3, 0.1), np.ones(3), t)
    profile.observe(np.full(3, 0.3), np.ones(3), t)
    # Capped at weight 2: the new value moves the mean by half the difference.
    assert profile.prior_pace(t)[0] == pytest.approx(0.2, rel=1e-6)


def test_observe_invalid_shape():
    with pytest.raises(EstimatorStateError, match="one entry per segment"):
        TimeOfWeekProfile(KEYS).observe(np.ones(2), np.ones(2), MONDAY_2024_UTC)


def test_profile_save_load_round_trip(tmp_path):
    profile = TimeOfWeekProfile(KEYS, ProfileConfig(bin_s=3600, timezone="Europe/Copenhagen"))
    profile.observe(np.array([0.1, 0.2, 0.3]), np.ones(3), MONDAY_2024_UTC)
    path = tmp_path / "profile.npz"
    profile.save(path)
    loaded = TimeOfWeekProfile.load(path)
    assert loaded.config == profile.config
    np.testing.assert_array_equal(loaded.prior_pace(MONDAY_2024_UTC),
                                  profile.prior_pace(MONDAY_2024_UTC))


def test_profile_load_remaps_by_edge_key(tmp_path):
    profile = TimeOfWeekProfile(KEYS)
    profile.observe(np.array([0.1, 0.2, 0.3]), np.ones(3), MONDAY_2024_UTC)
    path = tmp_path / "profile.npz"
    profile.save(path)
    loaded = TimeOfWeekProfile.load(path, edge_key=np.array([303, 999, 101]))
    prior = loaded.prior_pace(MONDAY_2024_UTC)
    assert prior[0] == pytest.approx(0.3) and prior[2] == pytest.approx(0.1)
    assert np.isnan(prior[1])


def test_profile_load_invalid_file(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, edge_key=KEYS)
    with pytest.raises(EstimatorStateError, match="lacks"):
        TimeOfWeekProfile.load(path)
    text = tmp_path / "bad.txt"
    text.write_text("not a profile")
    with pytest.raises(EstimatorStateError, match="not a readable profile"):
        TimeOfWeekProfile.load(text)


def test_profile_config_invalid_value():
    with pytest.raises(EstimatorConfigError, match="bin_s"):
        ProfileConfig(bin_s=7000)
    with pytest.raises(EstimatorConfigError, match="timezone"):
        ProfileConfig(timezone="Mars/Olympus")


# --- sparse storage against a dense reference ------------------------------------------------


class _DenseReference:
    """The dense profile as it was (format 1): float32 [n_bins, n_edges] mean and weight."""

    def __init__(self, n_edges, config):
        self.config = config
        self.mean = np.zeros((config.n_bins, n_edges), dtype=np.float32)
        self.weight = np.zeros((config.n_bins, n_edges), dtype=np.float32)

    def observe(self, b, pace, conf):
        pace = np.asarray(pace, dtype=np.float32)
        conf = np.asarray(conf, dtype=np.float32)
        use = (np.isfinite(pace) & (pace > 0) & np.isfinite(conf)
               & (conf >= self.config.min_confidence))
        idx = np.flatnonzero(use)
        w = conf[idx]
        total = np.minimum(self.weight[b, idx] + w, np.float32(self.config.max_weight))
        mean = self.mean[b, idx]
        self.mean[b, idx] = mean + (w / total) * (pace[idx] - mean)
        self.weight[b, idx] = total

    def prior(self, b):
        out = self.mean[b].astype(np.float64)
        out[self.weight[b] <= 0] = np.nan
        return out


def _assert_matches_reference(profile, ref, times, rtol=0.01):
    for t in times:
        b = profile.bin_of(t)
        got, want = profile.prior_pace(t), ref.prior(b)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"bin {b}")
        seen = np.isfinite(want)
        rel = np.abs(got[seen] - want[seen]) / want[seen]
        if rel.size and rel.max() > rtol:
            e = int(np.flatnonzero(seen)[np.argmax(rel)])
            pytest.fail(f"bin {b} edge {e}: {got[e]} vs dense {want[e]} (rel {rel.max():.2e})")


@pytest.mark.parametrize("max_weight,min_confidence", [(50.0, 0.05), (3.0, 0.0), (1000.0, 0.2)])
def test_observe_matches_dense_reference(max_weight, min_confidence):
    rng = np.random.default_rng(42)
    n = 300
    config = ProfileConfig(max_weight=max_weight, min_confidence=min_confidence)
    profile = TimeOfWeekProfile(np.arange(n, dtype=np.int64) * 7 + 1, config)
    ref = _DenseReference(n, config)
    base = rng.uniform(0.03, 0.3, n)  # s/m per edge
    times = [MONDAY_2024_UTC + k * 900 for k in (0, 1, 5, 671)]
    for step in range(400):
        t = times[rng.integers(len(times))] + 7 * 86_400 * int(rng.integers(3))
        b = profile.bin_of(t)
        pace = base * rng.lognormal(0.0, 0.4, n)
        conf = rng.uniform(0.0, 1.0, n) ** 3  # many small confidences: slow rates
        pace[rng.random(n) < 0.05] = np.nan
        pace[rng.random(n) < 0.02] = -1.0
        subset = rng.random(n) < rng.uniform(0.05, 0.9)
        if step % 2:
            # The sparse call with a shuffled subset; the reference sees NaN elsewhere.
            edges = rng.permutation(np.flatnonzero(subset))
            profile.observe_edges(edges, pace[edges], conf[edges], t)
            full = np.full(n, np.nan)
            full[edges] = pace[edges]
            ref.observe(b, full, conf)
        else:
            masked = np.where(subset, pace, np.nan)
            profile.observe(masked, conf, t)
            ref.observe(b, masked, conf)
    _assert_matches_reference(profile, ref, times + [MONDAY_2024_UTC + 3 * 86_400])
    # Stored entries are exactly the observed ones.
    assert profile.n_entries == int(np.count_nonzero(ref.weight > 0))


def test_observe_slow_rate_does_not_stall():
    # Saturated weight and the smallest confidence: rate 0.001 per observation. A float16
    # mean would stop moving about 5 % short of the dense one.
    config = ProfileConfig(max_weight=50.0, min_confidence=0.05)
    profile = TimeOfWeekProfile(KEYS, config)
    ref = _DenseReference(3, config)
    t = MONDAY_2024_UTC
    for _ in range(60):
        profile.observe(np.full(3, 0.1), np.ones(3), t)
        ref.observe(0, np.full(3, 0.1), np.ones(3))
    for _ in range(3000):
        profile.observe(np.full(3, 0.104), np.full(3, 0.05), t)
        ref.observe(0, np.full(3, 0.104), np.full(3, 0.05))
    _assert_matches_reference(profile, ref, [t], rtol=1e-4)


def test_observe_edges_same_as_observe():
    a, b = TimeOfWeekProfile(KEYS), TimeOfWeekProfile(KEYS)
    a.observe(np.array([np.nan, 0.2, 0.4]), np.array([1.0, 0.5, 0.7]), MONDAY_2024_UTC)
    b.observe_edges(np.array([2, 1]), np.array([0.4, 0.2]), np.array([0.7, 0.5]), MONDAY_2024_UTC)
    np.testing.assert_array_equal(a.prior_pace(MONDAY_2024_UTC), b.prior_pace(MONDAY_2024_UTC))
    assert a.revision(MONDAY_2024_UTC) == b.revision(MONDAY_2024_UTC) == (0, 1)
    assert b.observed_edges(MONDAY_2024_UTC).tolist() == [1, 2]


def test_observe_edges_empty():
    profile = TimeOfWeekProfile(KEYS)
    profile.observe_edges(np.array([], dtype=np.int64), np.array([]), np.array([]), MONDAY_2024_UTC)
    profile.observe_edges(np.array([0]), np.array([np.nan]), np.array([1.0]), MONDAY_2024_UTC)
    assert not profile.has_data(MONDAY_2024_UTC)
    assert profile.revision(MONDAY_2024_UTC) == (0, 0)
    assert profile.n_entries == 0


def test_observe_edges_invalid_value():
    profile = TimeOfWeekProfile(KEYS)
    with pytest.raises(EstimatorStateError, match="equal length"):
        profile.observe_edges(np.array([0, 1]), np.ones(1), np.ones(2), MONDAY_2024_UTC)
    with pytest.raises(EstimatorStateError, match=r"\[0, 3\)"):
        profile.observe_edges(np.array([3]), np.ones(1), np.ones(1), MONDAY_2024_UTC)
    with pytest.raises(EstimatorStateError, match=r"\[0, 3\)"):
        profile.observe_edges(np.array([-1]), np.ones(1), np.ones(1), MONDAY_2024_UTC)
    with pytest.raises(EstimatorStateError, match="repeats segment 1"):
        profile.observe_edges(np.array([1, 0, 1]), np.ones(3), np.ones(3), MONDAY_2024_UTC)
    with pytest.raises(EstimatorStateError, match="integers"):
        profile.observe_edges(np.array([0.5]), np.ones(1), np.ones(1), MONDAY_2024_UTC)
    with pytest.raises(EstimatorConfigError, match="t_s"):
        profile.observe_edges(np.array([0]), np.ones(1), np.ones(1), float("nan"))


def test_observe_read_only_arrays():
    # Through Ray's object store a profile's arrays arrive read-only; learning still works.
    profile = TimeOfWeekProfile(KEYS)
    profile.observe(np.array([0.1, 0.2, 0.3]), np.ones(3), MONDAY_2024_UTC)
    for entry in profile._bins.values():
        for arr in entry:
            arr.flags.writeable = False
    profile.bin_revision.flags.writeable = False
    profile.observe_edges(np.array([0]), np.array([0.3]), np.array([1.0]), MONDAY_2024_UTC)
    profile.observe_edges(np.array([0]), np.array([0.3]), np.array([1.0]), MONDAY_2024_UTC + 900)
    assert profile.prior_pace(MONDAY_2024_UTC)[0] == pytest.approx(0.2)
    assert profile.revision(MONDAY_2024_UTC) == (0, 2)


def test_remap_to_keeps_known_entries():
    profile = TimeOfWeekProfile(KEYS)
    profile.observe(np.array([0.1, 0.2, 0.3]), np.ones(3), MONDAY_2024_UTC)
    profile.observe_edges(np.array([1]), np.array([0.5]), np.ones(1), MONDAY_2024_UTC + 900)
    other = profile.remap_to(np.array([303, 999, 202, 101]))
    assert other.n_edges == 4
    np.testing.assert_allclose(other.prior_pace(MONDAY_2024_UTC), [0.3, np.nan, 0.2, 0.1])
    np.testing.assert_allclose(other.prior_pace(MONDAY_2024_UTC + 900),
                               [np.nan, np.nan, 0.5, np.nan])
    assert other.observed_edges(MONDAY_2024_UTC).tolist() == [0, 2, 3]  # sorted


def test_nbytes_per_entry():
    profile = TimeOfWeekProfile(np.arange(10_000, dtype=np.int64))
    empty = profile.nbytes
    rng = np.random.default_rng(1)
    for k in range(10):
        edges = rng.choice(10_000, 1000, replace=False)
        profile.observe_edges(edges, np.full(1000, 0.1), np.ones(1000), MONDAY_2024_UTC + 900 * k)
    assert profile.n_entries == 10_000
    assert (profile.nbytes - empty) / profile.n_entries == 10


# --- checkpoint state ---------------------------------------------------------------------


def _learned(keys=KEYS, config=None):
    profile = TimeOfWeekProfile(keys, config)
    profile.observe(np.array([0.1, 0.2, 0.3]), np.array([1.0, 0.3, 0.7]), MONDAY_2024_UTC)
    profile.observe_edges(np.array([2]), np.array([0.4]), np.array([0.5]), MONDAY_2024_UTC + 7200)
    return profile


def test_state_dict_layout():
    state = _learned().state_dict()
    assert state["format"] == 2 and state["n_edges"] == 3
    assert state["bins"].tolist() == [0, 8]
    assert state["bin_offsets"].tolist() == [0, 3, 4]
    assert state["edge_idx"].tolist() == [0, 1, 2, 2]
    assert state["edge_idx"].dtype == np.int32
    np.testing.assert_allclose(state["pace_s_per_m"], [0.1, 0.2, 0.3, 0.4], rtol=1e-6)
    np.testing.assert_allclose(state["weight"], [1.0, 0.3, 0.7, 0.5], atol=1e-3)


def test_load_state_dict_round_trip_in_place():
    src = _learned()
    dst = TimeOfWeekProfile(KEYS)
    dst.observe(np.ones(3), np.ones(3), MONDAY_2024_UTC + 3600)  # replaced, not merged
    before = dst.bin_revision.copy()
    dst.load_state_dict(src.state_dict())
    for t in (MONDAY_2024_UTC, MONDAY_2024_UTC + 3600, MONDAY_2024_UTC + 7200):
        np.testing.assert_array_equal(dst.prior_pace(t), src.prior_pace(t))
    assert np.all(dst.bin_revision > before)
    # Learning goes on the same way after a restore.
    for p in (src, dst):
        p.observe(np.array([0.3, 0.3, 0.3]), np.ones(3), MONDAY_2024_UTC)
    np.testing.assert_array_equal(dst.prior_pace(MONDAY_2024_UTC), src.prior_pace(MONDAY_2024_UTC))


def test_load_state_dict_old_dense_layout():
    # Checkpoints before format 2 held dense rows of the bins with data.
    bins = np.array([8, 0], dtype=np.int64)
    mean = np.array([[0.0, 0.0, 0.4], [0.1, 0.2, 0.0]], dtype=np.float32)
    weight = np.array([[0.0, 0.0, 0.5], [1.0, 0.3, 0.0]], dtype=np.float32)
    for state in ({"profile.bins": bins, "profile.mean_pace": mean, "profile.weight": weight,
                   "profile.observed_t": 5.0},
                  {"bins": bins, "mean_pace": mean, "weight": weight}):
        profile = TimeOfWeekProfile(KEYS)
        profile.load_state_dict(state)
        np.testing.assert_allclose(profile.prior_pace(MONDAY_2024_UTC), [0.1, 0.2, np.nan])
        np.testing.assert_allclose(profile.prior_pace(MONDAY_2024_UTC + 7200),
                                   [np.nan, np.nan, 0.4])
        assert profile.n_entries == 3
    converted = state_from_dense_rows(bins, mean, weight)
    assert converted["format"] == 2
    assert converted["bins"].tolist() == [0, 8]
    assert converted["edge_idx"].tolist() == [0, 1, 2]


def test_load_state_dict_invalid_value():
    profile = TimeOfWeekProfile(KEYS)
    newer = dict(_learned().state_dict(), format=3)
    with pytest.raises(EstimatorStateError, match="version 3.*version 2"):
        profile.load_state_dict(newer)
    with pytest.raises(EstimatorStateError, match="4 segments"):
        profile.load_state_dict(dict(_learned().state_dict(), n_edges=4))
    bad = _learned().state_dict()
    bad["edge_idx"] = bad["edge_idx"][::-1].copy()
    with pytest.raises(EstimatorStateError, match="ascending"):
        profile.load_state_dict(bad)
    with pytest.raises(EstimatorStateError, match="lacks"):
        profile.load_state_dict({"format": 2})
    with pytest.raises(EstimatorStateError, match=r"\[len\(bins\), n_edges\]"):
        profile.load_state_dict({"bins": np.array([0]), "mean_pace": np.zeros((2, 3)),
                                 "weight": np.zeros((2, 3))})
    assert profile.n_entries == 0  # failed loads leave the profile as it was


# --- files ---------------------------------------------------------------------------------


def _write_dense_file(path, mean, weight, keys=KEYS, **extra):
    np.savez_compressed(path, edge_key=keys, mean_pace=mean, weight=weight,
                        bin_s=np.int64(900), timezone=np.str_("UTC"),
                        max_weight=np.float64(50.0), min_confidence=np.float64(0.05), **extra)


def test_profile_save_writes_format_2(tmp_path):
    path = tmp_path / "profile.npz"
    _learned().save(path)
    with np.load(path) as z:
        assert int(z["format"]) == 2
        assert "mean_pace" not in z.files
        assert z["edge_idx"].tolist() == [0, 1, 2, 2]


def test_profile_save_atomic_round_trip(tmp_path):
    profile = _learned()
    path = tmp_path / "profiles" / "profile.npz"
    profile.save_atomic(path)
    loaded = TimeOfWeekProfile.load(path)
    assert loaded.state_dict().keys() == profile.state_dict().keys()
    for k, v in profile.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v, err_msg=k)


def test_profile_load_empty_round_trip(tmp_path):
    path = tmp_path / "profile.npz"
    TimeOfWeekProfile(KEYS).save(path)
    loaded = TimeOfWeekProfile.load(path)
    assert loaded.n_entries == 0 and loaded.n_edges == 3


def test_profile_load_migrates_dense_file(tmp_path):
    rng = np.random.default_rng(3)
    n = 50
    config = ProfileConfig()
    ref = _DenseReference(n, config)
    times = [MONDAY_2024_UTC + k * 900 for k in (0, 33, 600)]
    for _ in range(40):
        t = times[rng.integers(3)]
        pace = np.where(rng.random(n) < 0.4, rng.uniform(0.05, 0.2, n), np.nan)
        ref.observe(TimeOfWeekProfile(KEYS).bin_of(t), pace, rng.uniform(0.1, 1.0, n))
    keys = np.arange(n, dtype=np.int64) + 1000
    path = tmp_path / "profile.npz"
    _write_dense_file(path, ref.mean, ref.weight, keys=keys)
    loaded = TimeOfWeekProfile.load(path)
    assert loaded.n_entries == int(np.count_nonzero(ref.weight > 0))
    _assert_matches_reference(loaded, ref, times, rtol=1e-6)
    # Learning continues from the migrated entries as the dense profile would.
    pace = rng.uniform(0.05, 0.2, n)
    loaded.observe(pace, np.full(n, 0.5), times[0])
    ref.observe(0, pace, np.full(n, 0.5))
    _assert_matches_reference(loaded, ref, times)
    # Saved again, it is a format-2 file; remapped by key on load.
    loaded.save(path)
    again = TimeOfWeekProfile.load(path, edge_key=keys[::-1])
    np.testing.assert_array_equal(again.prior_pace(times[1]), loaded.prior_pace(times[1])[::-1])


def test_profile_load_dense_file_wrong_shape(tmp_path):
    path = tmp_path / "profile.npz"
    _write_dense_file(path, np.zeros((10, 3), np.float32), np.zeros((10, 3), np.float32))
    with pytest.raises(EstimatorStateError, match="expected"):
        TimeOfWeekProfile.load(path)


def test_profile_load_newer_format_refused(tmp_path):
    path = tmp_path / "profile.npz"
    _learned().save(path)
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    data["format"] = np.int64(3)
    np.savez(path, **data)
    with pytest.raises(EstimatorStateError, match=r"format version 3.*version 2"):
        TimeOfWeekProfile.load(path)


def test_index_of_keys_fast_paths_match_a_plain_search():
    """Same keys in the same order: the identity; many unsorted keys (searched in sorted
    order) and a few: a plain sort-and-search's answer."""
    from traffic.profiles import index_of_keys

    rng = np.random.default_rng(5)
    old = rng.permutation(np.arange(0, 60_000, 3, dtype=np.int64) * 7919)
    assert index_of_keys(old, old.copy()).tolist() == list(range(old.size))
    for n in (5, 9000):
        new = np.concatenate([rng.choice(old, n), rng.integers(1, 10**9, n // 2) * 2 + 1])
        order = np.argsort(old)
        pos = np.clip(np.searchsorted(old[order], new), 0, old.size - 1)
        want = np.where(old[order][pos] == new, order[pos], -1)
        assert index_of_keys(old, new).tolist() == want.tolist()
