"""Offline (whole-trace) map matching on a scenario: way+direction accuracy against the
noise-free truth and throughput, beside the online fixed-lag matcher's accuracy on the same
probes. Appends a section to BENCHMARKS.md unless ``--no-append``.

    .venv/bin/python benchmarks/match_offline.py [--scenario DIR] [--repeat 3] [--no-append]

Input: the scenario's noisy ``probes.parquet``, one trace per probe vehicle (as POST /v1/match
would receive it, at most 10,000 points each). Accuracy: share of points whose matched edge
is on the true OSM way in the true direction (``probes_noisefree.csv.gz``: ``osm_way_id`` and
``road_edge_id``'s sign), over matched points (as benchmarks/accuracy.py counts the online
matcher) and over all points (an unmatched point counted wrong). Speed: points per second of
``OfflineMatcher.match`` on one core, route-distance cache cold at the start of each repeat.
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import polars as pl

from graph.osm import load_osm
from graph.route_distances import build_route_distances
from graph.spatial import build_spatial_index
from traffic.matching import MatcherConfig, OfflineMatcher, OnlineMatcher

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import append_section, machine_description, utc_now

ROOT = Path(__file__).resolve().parents[1]


def truth_ok(net, d: Path, vid: np.ndarray, t: np.ndarray, edge: np.ndarray) -> np.ndarray:
    """Per (vehicle, t, edge): on the true way in the true direction (False if no truth row)."""
    nf = pl.read_csv(d / "probes_noisefree.csv.gz", schema_overrides={"osm_way_id": pl.Utf8},
                     columns=["vehicle_id", "t", "road_edge_id", "osm_way_id"])
    mt = pl.DataFrame({"vehicle_id": vid, "t": t, "edge": edge,
                       "_i": np.arange(vid.size)})
    j = mt.join(nf, on=["vehicle_id", "t"], how="inner")
    e = j["edge"].to_numpy()
    ok = np.zeros(vid.size, dtype=bool)
    good = e >= 0
    way = np.zeros(e.size, bool)
    way[good] = net.edge_osm_way[e[good]] == j["osm_way_id"].cast(pl.Int64, strict=False).to_numpy()[good]
    dirn = np.zeros(e.size, bool)
    dirn[good] = net.edge_reversed[e[good]] == j["road_edge_id"].str.starts_with("-").to_numpy()[good]
    ok[j["_i"].to_numpy()] = way & dirn & good
    return ok


def traces(probes: pl.DataFrame) -> list[tuple[np.ndarray, ...]]:
    probes = probes.sort(["vehicle_id", "t"])
    vid = probes["vehicle_id"].to_numpy()
    cols = [probes[c].to_numpy() for c in ("t", "lat", "lon", "speed_mps", "heading_deg")]
    cut = np.flatnonzero(np.r_[True, vid[1:] != vid[:-1], True])
    out = []
    for a, b in pairwise(cut):
        for s in range(a, b, 10_000):
            e = min(b, s + 10_000)
            out.append((vid[s:e], *(c[s:e] for c in cols)))
    return out


def run_offline(net, index, tr, cfg) -> tuple[float, float, np.ndarray]:
    """Wall and CPU seconds of matching every trace, and the matched edge per point."""
    m = OfflineMatcher(net, index, build_route_distances(net), cfg)
    edges = []
    t0, c0 = time.perf_counter(), time.process_time()
    for _, t, lat, lon, v, h in tr:
        edges.append(m.match(t, lat, lon, speed_mps=v, heading_deg=h).point_edge)
    return time.perf_counter() - t0, time.process_time() - c0, np.concatenate(edges)


def run_online(net, index, probes: pl.DataFrame, tick_s: float = 10.0):
    m = OnlineMatcher(net, index, build_route_distances(net), MatcherConfig())
    probes = probes.with_columns(((pl.col("t") - pl.col("t").min()) // tick_s).alias("_k"))
    rows_v, rows_t, rows_e = [], [], []
    for _, g in probes.sort("_k").group_by("_k", maintain_order=True):
        g = g.sort(["vehicle_id", "t"])
        outs = [m.push(g["vehicle_id"].to_numpy(), g["t"].to_numpy(), g["lat"].to_numpy(),
                       g["lon"].to_numpy(), speed_mps=g["speed_mps"].to_numpy(),
                       heading_deg=g["heading_deg"].to_numpy())]
        for o in outs:
            rows_v.append(g["vehicle_id"].to_numpy()[o.point_row])
            rows_t.append(g["t"].to_numpy()[o.point_row])
            rows_e.append(o.point_edge)
    o = m.flush()
    # Flushed points: their rows index the last push's arrays only when pushed there; the
    # online matcher reports rows of the call that received them, so map by (slot, t) instead.
    return rows_v, rows_t, rows_e, o


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenario", default=str(ROOT.parent / "shared/data/scenario_kbh"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    d = Path(a.scenario)
    net = load_osm(d / "network.osm.pbf")
    index = build_spatial_index(net)
    probes = pl.read_parquet(d / "probes.parquet")
    tr = traces(probes)
    cfg = MatcherConfig()
    run_offline(net, index, tr[:20], cfg)  # compile / load the numba kernels
    secs, cpus = [], []
    for _ in range(a.repeat):
        s, c, edge = run_offline(net, index, tr, cfg)
        secs.append(s)
        cpus.append(c)
    vid = np.concatenate([x[0] for x in tr])
    t = np.concatenate([x[1] for x in tr])
    ok = truth_ok(net, d, vid, t, edge)
    matched = edge >= 0
    n = edge.size
    acc_matched = float(ok[matched].mean())
    acc_all = float(ok.mean())
    rates = [n / s for s in secs]
    cpu_rates = [n / c for c in cpus]
    lines = [
        f"## Offline map matching (POST /v1/match engine) on {d.name}\n",
        (f"`.venv/bin/python benchmarks/match_offline.py --repeat {a.repeat}` — {utc_now()}, "
         f"{machine_description(note='one used')} (other engineers' work was running on the "
         "same 2 cores, so rates are lower bounds).\n"),
        (f"{len(tr)} traces (one per probe vehicle), {n} noisy probes; matcher "
         "`traffic.matching.OfflineMatcher` (the online matcher's candidates, emission and "
         "transition code and route distances, Viterbi over the whole trace), default "
         "MatcherConfig; route-distance cache cold at the start of each repeat.\n"),
        "| measure | value |", "|---|---:|",
        f"| way+direction accuracy, matched points | {acc_matched:.4f} |",
        f"| way+direction accuracy, all points (unmatched = wrong) | {acc_all:.4f} |",
        f"| points matched | {matched.mean():.4f} |",
        f"| median points/s, wall clock (one thread) | {np.median(rates):,.0f} |",
        f"| worst points/s, wall clock | {np.min(rates):,.0f} |",
        f"| median points/s per CPU second (process time) | {np.median(cpu_rates):,.0f} |",
        f"| worst points/s per CPU second | {np.min(cpu_rates):,.0f} |",
        *([f"\n{a.note}"] if a.note else []),
    ]
    print("\n".join(lines))
    if not a.no_append:
        append_section("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
