"""Probe simulator: deterministic for a seed, time-ordered, probes near their true edge."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from conftest import shared_file
from traffic.simulate import SimConfig, simulate_probes, true_speed_mps


@pytest.fixture(scope="module")
def kbh():
    from graph.osm import load_osm

    return load_osm(shared_file("osm/kbh.osm.pbf"))


def test_simulate_probes_deterministic(kbh):
    cfg = SimConfig(n_vehicles=30, duration_s=120, seed=5, include_truth=True)
    a = pl.concat(list(simulate_probes(kbh, cfg)))
    b = pl.concat(list(simulate_probes(kbh, cfg)))
    assert a.equals(b) and a.height > 30 * 120 / 5 * 0.8
    assert (np.diff(a["t"].to_numpy()) >= 0).all()


def test_simulate_probes_speed_matches_truth(kbh):
    cfg = SimConfig(n_vehicles=20, duration_s=60, seed=1, include_truth=True, gps_sigma_m=0.0)
    df = pl.concat(list(simulate_probes(kbh, cfg)))
    want = true_speed_mps(kbh, cfg, df["true_edge"].to_numpy(), df["t"].to_numpy())
    assert np.allclose(df["speed_mps"].to_numpy(), want)
    assert (want <= kbh.edge_freeflow_mps[df["true_edge"].to_numpy()] + 1e-9).all()


def test_simconfig_invalid_value():
    with pytest.raises(ValueError, match="n_vehicles"):
        SimConfig(n_vehicles=0)
