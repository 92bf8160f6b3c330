"""Time-of-week profiles: binning in a time zone, learning, priors, save/load by edge key."""

from __future__ import annotations

import numpy as np
import pytest

from traffic.errors import EstimatorConfigError, EstimatorStateError
from traffic.profiles import ProfileConfig, TimeOfWeekProfile

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
