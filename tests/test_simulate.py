"""Probe simulator: deterministic for a seed, time-ordered, probes near their true edge; the
default field builds congestion (a growing rush on main roads, an incident on a main road)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import shared_file

from graph.network import ROAD_CLASS_INDEX
from traffic.simulate import (
    MAIN_ROAD_CLASSES,
    SimConfig,
    incident_edges,
    simulate_probes,
    true_speed_mps,
)


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
    with pytest.raises(ValueError, match="incident_factor"):
        SimConfig(incident_factor=1.5)
    with pytest.raises(ValueError, match="main_rush_depth"):
        SimConfig(main_rush_depth=-0.1)
    with pytest.raises(ValueError, match="incident_every_s"):
        SimConfig(incident_every_s=-5)
    with pytest.raises(ValueError, match="rush_width_s"):
        SimConfig(rush_width_s=0)


#: The defaults (what ``traffic serve --simulate`` runs) over the first 15 minutes, with the
#: true edge of every probe and no GPS noise.
DEMO = SimConfig(n_vehicles=300, duration_s=900, seed=0, include_truth=True, gps_sigma_m=0.0)


@pytest.fixture(scope="module")
def demo(kbh):
    df = pl.concat(list(simulate_probes(kbh, DEMO)))
    return df.with_columns(
        t_rel=pl.col("t") - DEMO.t0_s,
        ratio=pl.col("speed_mps") / pl.Series(kbh.edge_freeflow_mps[df["true_edge"].to_numpy()]))


def test_incident_edges_stretch_of_one_main_road(kbh):
    (edges, t_on, t_off), = incident_edges(kbh, DEMO)
    assert t_on == DEMO.t0_s + DEMO.incident_start_s
    assert t_off == t_on + DEMO.incident_duration_s
    assert 0.9 * DEMO.incident_length_m <= kbh.edge_length_m[edges].sum() <= 3 * DEMO.incident_length_m
    main = [ROAD_CLASS_INDEX[c] for c in MAIN_ROAD_CLASSES]
    assert np.isin(kbh.edge_road_class[edges], main).all()
    # One connected path in one direction: each edge but one starts where another ends,
    # and no edge's reverse is in it.
    src, dst = kbh.edge_src[edges], kbh.edge_dst[edges]
    assert np.isin(src, dst).sum() == edges.size - 1
    assert not any((s, d) in set(zip(dst.tolist(), src.tolist())) for s, d in zip(src.tolist(), dst.tolist()))
    # Same stretch for the same seed; none with incident_every_s=-1; one per hour with 3600.
    assert np.array_equal(incident_edges(kbh, DEMO)[0][0], edges)
    assert incident_edges(kbh, SimConfig(incident_every_s=-1)) == []
    hourly = incident_edges(kbh, SimConfig(duration_s=3 * 3600, incident_every_s=3600))
    assert [round(a - DEMO.t0_s) for _, a, _ in hourly] == [120, 3720, 7320]


def test_simulate_probes_incident_speed_collapses(kbh, demo):
    (edges, t_on, t_off), = incident_edges(kbh, DEMO)
    on_stretch = demo.filter(pl.col("true_edge").is_in(edges.tolist()))
    before = on_stretch.filter(pl.col("t") < t_on)
    during = on_stretch.filter((pl.col("t") >= t_on + 60) & (pl.col("t") < t_off))
    assert before.height >= 10 and during.height >= 200
    # Free-flowing (no more than the early rush) before, crawling at about a tenth during.
    assert before["ratio"].mean() > 0.8
    assert during["ratio"].max() <= DEMO.incident_factor + 1e-9
    assert during["ratio"].mean() < 0.15
    # The truth says the same, and the rest of the network is not crawling.
    want = true_speed_mps(kbh, DEMO, during["true_edge"].to_numpy(), during["t"].to_numpy())
    assert np.allclose(during["speed_mps"].to_numpy(), want)
    off_stretch = demo.filter(~pl.col("true_edge").is_in(edges.tolist()) & (pl.col("t") >= t_on + 60))
    assert off_stretch["ratio"].mean() > 0.5


def test_simulate_probes_rush_builds_on_main_roads(kbh, demo):
    (edges, _, _), = incident_edges(kbh, DEMO)
    main_ids = [ROAD_CLASS_INDEX[c] for c in MAIN_ROAD_CLASSES]
    is_main = pl.Series(np.isin(kbh.edge_road_class[demo["true_edge"].to_numpy()], main_ids))
    rest = demo.with_columns(main=is_main).filter(~pl.col("true_edge").is_in(edges.tolist()))
    by_window = (rest.with_columns(w=(pl.col("t_rel") // 120).cast(pl.Int32))
                 .group_by("w", "main").agg(pl.col("ratio").mean(), pl.len()).sort("w"))
    main = by_window.filter(pl.col("main"))
    other = by_window.filter(~pl.col("main"))
    assert (main["len"] >= 50).all(), main
    r = main["ratio"].to_numpy()
    # Falls as demand builds over the first 10 minutes: from near free flow to about half.
    assert r[0] > 0.85 and r[5] < 0.65 and r[0] - r[5] > 0.3, main
    assert (np.diff(r[:6]) < 0.02).all(), main  # (nearly) every window slower than the last
    # Main roads are hit harder than the side streets.
    assert r[5] < other["ratio"].to_numpy()[5] - 0.1, (main, other)


def test_simulate_probes_plain_field_has_no_incident_or_main_road_rush(kbh):
    cfg = SimConfig(n_vehicles=50, duration_s=300, seed=2, include_truth=True, incident_every_s=-1,
                    main_rush_depth=None, n_hotspots=0, rush_depth=0.0)
    df = pl.concat(list(simulate_probes(kbh, cfg)))
    ff = kbh.edge_freeflow_mps[df["true_edge"].to_numpy()]
    assert np.allclose(df["speed_mps"].to_numpy(), ff)
