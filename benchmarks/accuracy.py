"""Accuracy against a SUMO scenario: replay its probes in event time through validation,
matching, traversal extraction and the speed estimator; report held-out trip ETA error (MdAPE,
MAPE; overall and in the manifest's peak window) next to the scenario's free-flow ETA, speed
error on well-observed segments, and map-matching accuracy. Last output line: one JSON object.

    .venv/bin/python benchmarks/accuracy.py [--scenario DIR] [--tick-s 10] [--no-append]

Trip routes: each trip's origin and destination are snapped to our network and routed on
free-flow time with scipy's Dijkstra (our router between its endpoints, not the SUMO route);
the ETA is the sum of the live estimate's travel times along that path at departure time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra

from graph.osm import load_osm
from graph.spatial import build_spatial_index, nearest_edges
from graph.ubodt import build_ubodt
from traffic.estimator import SpeedEstimator, TraversalBatch
from traffic.matching import MatcherConfig, OnlineMatcher
from traffic.probes import ProbeValidationConfig, VehicleLastSeen, validate_probes
from traffic.traversals import TraversalExtractor

ROOT = Path(__file__).resolve().parents[1]


def trip_paths(net, index, trips: pl.DataFrame) -> list[np.ndarray]:
    """Free-flow shortest path (edge ids) for each trip, origin edge to destination edge."""
    eo, _, _ = nearest_edges(index, trips["origin_lat"].to_numpy(), trips["origin_lon"].to_numpy())
    ed, _, _ = nearest_edges(index, trips["dest_lat"].to_numpy(), trips["dest_lon"].to_numpy())
    w = net.edge_freeflow_time_s
    key = net.edge_src.astype(np.int64) * net.n_nodes + net.edge_dst
    order = np.lexsort((w, key))
    pe = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    pk = key[pe]
    g = sp.csr_matrix((np.maximum(w[pe], 1e-3), (net.edge_src[pe], net.edge_dst[pe])),
                      shape=(net.n_nodes, net.n_nodes))
    src = net.edge_dst[np.maximum(eo, 0)]
    paths: list[np.ndarray] = []
    for a in range(0, len(trips), 256):
        _, pred = dijkstra(g, indices=src[a:a + 256], return_predecessors=True)
        for r in range(pred.shape[0]):
            i = a + r
            if eo[i] < 0 or ed[i] < 0:
                paths.append(np.zeros(0, np.int64))
                continue
            node, nodes = int(net.edge_src[ed[i]]), []
            while node >= 0 and node != src[i]:
                nodes.append(node)
                node = int(pred[r, node])
            if node < 0:
                paths.append(np.zeros(0, np.int64))
                continue
            nodes.append(int(src[i]))
            nd = np.array(nodes[::-1], dtype=np.int64)
            mid = pe[np.searchsorted(pk, nd[:-1] * net.n_nodes + nd[1:])]
            paths.append(np.r_[eo[i], mid, ed[i]].astype(np.int64))
    return paths


def _ape(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    return np.abs(pred - true) / true


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenario", default=str(ROOT.parent / "shared/data/scenario_kbh"))
    ap.add_argument("--tick-s", type=float, default=10.0)
    ap.add_argument("--no-append", action="store_true")
    a = ap.parse_args()
    d = Path(a.scenario)
    t_start = time.perf_counter()
    man = json.loads((d / "manifest.json").read_text())
    net = load_osm(d / "network.osm.pbf")
    index, ubodt = build_spatial_index(net), build_ubodt(net)
    probes = pl.read_parquet(d / "probes.parquet")
    trips = pl.read_csv(d / "trips_truth.csv").filter(
        (pl.col("teleported") == 0) & (pl.col("duration_s") >= 120)).sort("depart_t")
    paths = trip_paths(net, index, trips)
    depart = trips["depart_t"].to_numpy()

    est = SpeedEstimator(net)
    m, ex = OnlineMatcher(net, index, ubodt, MatcherConfig()), TraversalExtractor(net)
    last, vcfg = VehicleLastSeen(), ProbeValidationConfig()
    eta = np.full(len(trips), np.nan)
    t0 = float(man["time_range"]["t_min"])
    t_end = float(max(probes["t"].max(), depart.max())) + a.tick_s
    probes = probes.with_columns(((pl.col("t") - t0) // a.tick_s).cast(pl.Int64).alias("_k"),
                                 pl.int_range(pl.len()).alias("_gid"))
    g_vid, g_t = probes["vehicle_id"].to_numpy(), probes["t"].to_numpy()
    groups = {k[0]: g for k, g in probes.group_by("_k")}
    rows_all, edges_all = [], []
    n_ticks = int((t_end - t0) // a.tick_s) + 1
    for k in range(n_ticks):
        now = t0 + (k + 1) * a.tick_s
        b = groups.get(k)
        if b is not None:
            gid = b["_gid"].to_numpy()
            acc = validate_probes(b.drop("_k", "_gid"), config=vcfg, now_s=now, bbox=net.bbox,
                                  last_seen=last).accepted
            o = m.push(acc["vehicle_id"].to_numpy(), acc["t"].to_numpy(), acc["lat"].to_numpy(),
                       acc["lon"].to_numpy(), speed_mps=acc["speed_mps"].to_numpy(),
                       heading_deg=acc["heading_deg"].to_numpy(),
                       row_ids=gid[acc["row"].to_numpy()])
            edges_all.append(o.point_edge)
            rows_all.append(o.point_row)
            tr = ex.push(o)
            if len(tr):
                est.apply(TraversalBatch(tr.edge, tr.t_enter_s, tr.t_exit_s, tr.pace_s_per_m,
                                         tr.weight), t_s=now)
        o = m.flush_idle(now, 60.0)
        edges_all.append(o.point_edge)
        rows_all.append(o.point_row)
        tr = ex.push(o)
        if len(tr):
            est.apply(TraversalBatch(tr.edge, tr.t_enter_s, tr.t_exit_s, tr.pace_s_per_m,
                                     tr.weight), t_s=now)
        sel = np.flatnonzero((depart >= now - a.tick_s) & (depart < now))
        if sel.size:
            _, tt = est.travel_times(now)
            eta[sel] = [tt[paths[i]].sum() if paths[i].size else np.nan for i in sel]

    truth = trips["duration_s"].to_numpy()
    ff = trips["free_flow_s"].to_numpy()
    ok = np.isfinite(eta)
    pk = man["summary"]["trip_windows"]["peak"]["depart_window_sim_s"]
    peak = ok & (depart - t0 >= pk[0]) & (depart - t0 < pk[1])
    res = {
        "trips": int(ok.sum()),
        "eta_mdape": float(np.median(_ape(eta[ok], truth[ok]))),
        "freeflow_mdape": float(np.median(_ape(ff[ok], truth[ok]))),
        "peak_eta_mdape": float(np.median(_ape(eta[peak], truth[peak]))),
        "peak_freeflow_mdape": float(np.median(_ape(ff[peak], truth[peak]))),
        "eta_mape": float(np.mean(_ape(eta[ok], truth[ok]))),
        "freeflow_mape": float(np.mean(_ape(ff[ok], truth[ok]))),
        "peak_eta_mape": float(np.mean(_ape(eta[peak], truth[peak]))),
        "peak_freeflow_mape": float(np.mean(_ape(ff[peak], truth[peak]))),
        "match_accuracy": None,  # filled below
        "route": "our free-flow shortest path between snapped endpoints",
        "runtime_s": None,
    }
    # Match accuracy: matched points joined to noise-free truth (way and direction).
    nf = pl.read_csv(d / "probes_noisefree.csv.gz", schema_overrides={"osm_way_id": pl.Utf8},
                     columns=["vehicle_id", "t", "road_edge_id", "osm_way_id"])
    r_all = np.concatenate(rows_all)
    mt = pl.DataFrame({"vehicle_id": g_vid[r_all], "t": g_t[r_all],
                       "edge": np.concatenate(edges_all)})
    j = mt.join(nf, on=["vehicle_id", "t"], how="inner")
    e = j["edge"].to_numpy()
    way_ok = net.edge_osm_way[e] == j["osm_way_id"].cast(pl.Int64, strict=False).to_numpy()
    dir_ok = net.edge_reversed[e] == j["road_edge_id"].str.starts_with("-").to_numpy()
    res["match_accuracy"] = float((way_ok & dir_ok).mean())
    res["match_way_accuracy"] = float(way_ok.mean())
    res["runtime_s"] = round(time.perf_counter() - t_start, 1)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), "?")
    lines = [f"\n## Accuracy on {d.name}\n",
             f"`.venv/bin/python benchmarks/accuracy.py --tick-s {a.tick_s:g}` — "
             f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {cpu}, 2 cores. "
             f"Routes: {res['route']}. Match accuracy: share of matched noisy probes on the "
             "true OSM way in the true direction.\n",
             "| metric | ours | free-flow |", "|---|---:|---:|",
             f"| MdAPE all | {res['eta_mdape']:.3f} | {res['freeflow_mdape']:.3f} |",
             f"| MdAPE peak | {res['peak_eta_mdape']:.3f} | {res['peak_freeflow_mdape']:.3f} |",
             f"| MAPE all | {res['eta_mape']:.3f} | {res['freeflow_mape']:.3f} |",
             f"| MAPE peak | {res['peak_eta_mape']:.3f} | {res['peak_freeflow_mape']:.3f} |",
             f"\ntrips {res['trips']}, match accuracy (way+direction) {res['match_accuracy']:.3f}, "
             f"runtime {res['runtime_s']} s\n"]
    print("\n".join(lines))
    if not a.no_append:
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write("\n".join(lines) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
