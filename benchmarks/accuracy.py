"""Accuracy against a SUMO scenario: replay its probes in event time through validation,
matching, traversal extraction and the speed estimator; report held-out trip ETA error (MdAPE,
MAPE; overall and in the manifest's peak window) next to the scenario's free-flow ETA, speed
error on well-observed segments, and map-matching accuracy. Last output line: one JSON object.

    .venv/bin/python benchmarks/accuracy.py [--scenario DIR] [--tick-s 10] [--no-append]
        [--min-traversals 3] [--decay-tau-s T] [--prior-weight W] [--gate-sigma S] [--no-router]

Trip routes (headline `eta_*`): each trip's true SUMO route mapped onto our edges (see
benchmarks/_scenario.py) when that mapping is faithful for >= 95% of trips, else our router
between the snapped endpoints; both are reported (`router_eta_*`: graph.router.Router on the
live travel times). ETAs use the live estimate as of the departure tick (no look-ahead).
Also reported: our own free-flow ETA on the true route (our speed limits and defaults), an
oracle (SUMO's true per-edge times of the departure's 5-min interval along the true route), and
speed error per (SUMO edge, 5-min interval) with >= ``--min-traversals`` traversals. Options
``--decay-tau-s``, ``--prior-weight``, ``--gate-sigma`` override EstimatorConfig defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra

from graph.osm import load_osm
from graph.spatial import build_spatial_index, nearest_edges
from graph.route_distances import build_route_distances
from traffic.estimator import EstimatorConfig, SpeedEstimator, TraversalBatch
from traffic.matching import MatcherConfig, OnlineMatcher
from traffic.probes import ProbeValidationConfig, VehicleLastSeen, validate_probes
from traffic.traversals import TraversalExtractor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _report import append_section, machine_description, utc_now  # noqa: E402
from _scenario import EdgeMap, Scenario, map_sumo_edges, map_true_routes  # noqa: E402


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


def _errs(prefix: str, pred: np.ndarray, true: np.ndarray, sel: np.ndarray,
          peak: np.ndarray) -> dict[str, float | int]:
    """``{prefix}mdape, {prefix}mape, peak_{prefix}mdape, peak_{prefix}mape`` over finite rows."""
    ok = sel & np.isfinite(pred)
    out: dict[str, float | int] = {}
    for tag, m in (("", ok), ("peak_", ok & peak)):
        e = _ape(pred[m], true[m])
        out[f"{tag}{prefix}mdape"] = float(np.median(e)) if e.size else float("nan")
        out[f"{tag}{prefix}mape"] = float(np.mean(e)) if e.size else float("nan")
    return out


def _make_router(net, index):
    """graph.router.Router when it imports and builds here, else None (scipy fallback)."""
    try:
        from graph.router import Router
        return Router(net, spatial=index)
    except Exception as exc:  # noqa: BLE001 - the fallback is reported in the output
        print(f"# Router unavailable ({type(exc).__name__}: {exc}); scipy free-flow paths")
        return None


def _oracle_eta(sc: Scenario, trips: pl.DataFrame, peak_rows: np.ndarray) -> np.ndarray:
    """Sum of SUMO's true per-edge travel times of the departure's interval along the true
    route (partial first/last edges by the trip's offsets); free-flow where no car was."""
    e = pl.read_csv(sc.root / "edges.csv.gz", columns=["edge_id", "length_m", "speed_limit_mps"])
    ids = {s: i for i, s in enumerate(e["edge_id"].to_list())}
    length, vmax = e["length_m"].to_numpy(), e["speed_limit_mps"].to_numpy()
    sp_ = pl.read_csv(sc.root / "edge_speeds_truth.csv.gz",
                      columns=["interval_begin_t", "interval_end_t", "edge_id", "travel_time_s"])
    b0 = float(sp_["interval_begin_t"].min())
    step = float((sp_["interval_end_t"] - sp_["interval_begin_t"]).median())
    k = ((sp_["interval_begin_t"].to_numpy() - b0) // step).astype(np.int64)
    tt = np.tile((length / np.maximum(vmax, 0.1))[:, None], (1, int(k.max()) + 2))
    ei = np.array([ids.get(s, -1) for s in sp_["edge_id"].to_list()])
    good = ei >= 0
    tt[ei[good], k[good]] = sp_["travel_time_s"].to_numpy()[good]
    dep = trips["depart_t"].to_numpy()
    col = np.clip(((dep - b0) // step).astype(np.int64), 0, tt.shape[1] - 1)
    o_pos, d_pos = trips["origin_pos_m"].to_numpy(), trips["dest_pos_m"].to_numpy()
    out = np.full(len(trips), np.nan)
    for i, rt in enumerate(trips["route_edges"].to_list()):
        if rt is None:
            continue
        r = np.array([ids.get(s, -1) for s in rt.split()])
        if (r < 0).any():
            continue
        t = tt[r, col[i]].copy()
        if r.size == 1:
            t[0] *= max(d_pos[i] - o_pos[i], 0.0) / max(length[r[0]], 1e-9)
        else:
            t[0] *= max(length[r[0]] - o_pos[i], 0.0) / max(length[r[0]], 1e-9)
            t[-1] *= min(d_pos[i], length[r[-1]]) / max(length[r[-1]], 1e-9)
        out[i] = t.sum()
    return out


def speed_errors(sc: Scenario, em: EdgeMap, pace_at: dict[float, np.ndarray],
                 trav_w: dict[int, np.ndarray], net, *, min_traversals: float) -> dict:
    """Our live speed at each 5-min interval's end vs SUMO's space-mean speed, on SUMO edges
    whose our-edges saw at least ``min_traversals`` (weight sum, on the best-covered one)."""
    sp_ = pl.read_csv(sc.root / "edge_speeds_truth.csv.gz",
                      columns=["interval_begin_t", "interval_end_t", "edge_id", "mean_speed_mps"])
    ei = np.array([em.index.get(s, -1) for s in sp_["edge_id"].to_list()])
    t_end = sp_["interval_end_t"].to_numpy().astype(np.float64)
    t_beg = sp_["interval_begin_t"].to_numpy().astype(np.float64)
    v_true = sp_["mean_speed_mps"].to_numpy()
    ours, ff, n_tr = (np.full(len(ei), np.nan) for _ in range(3))
    ff_pace = 1.0 / net.edge_freeflow_mps
    for r in np.flatnonzero((ei >= 0) & (v_true > 0)):
        i = ei[r]
        a, b = em.first[i], em.first[i + 1]
        if a == b or t_end[r] not in pace_at:
            continue
        e, c = em.edge[a:b], em.cover_m[a:b]
        pace = pace_at[t_end[r]]
        ours[r] = c.sum() / (c * pace[e]).sum()
        ff[r] = c.sum() / (c * ff_pace[e]).sum()
        w = trav_w.get(int(t_beg[r]))
        n_tr[r] = w[e[np.argmax(c)]] if w is not None else 0.0
    sel = np.isfinite(ours) & (n_tr >= min_traversals)
    peak = (t_beg >= sc.peak_s[0]) & (t_beg < sc.peak_s[1])
    res = {"speed_min_traversals": min_traversals, "speed_rows": int(sel.sum()),
           "peak_speed_rows": int((sel & peak).sum())}
    res.update(_errs("speed_", ours, v_true, sel, peak))
    res.update(_errs("speed_freeflow_", ff, v_true, sel, peak))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenario", default=str(ROOT.parent / "shared/data/scenario_kbh"))
    ap.add_argument("--tick-s", type=float, default=10.0)
    ap.add_argument("--min-traversals", type=float, default=3.0,
                    help="speed error only on (edge, interval) pairs with this many traversals")
    ap.add_argument("--decay-tau-s", type=float, default=None)
    ap.add_argument("--prior-weight", type=float, default=None)
    ap.add_argument("--gate-sigma", type=float, default=None)
    ap.add_argument("--no-router", action="store_true", help="skip routing between endpoints")
    ap.add_argument("--no-append", action="store_true")
    a = ap.parse_args()
    t_start = time.perf_counter()
    sc = Scenario.open(a.scenario)
    d, t0 = sc.root, sc.t0_s
    net = load_osm(d / "network.osm.pbf")
    index, route_distances = build_spatial_index(net), build_route_distances(net)
    probes = pl.read_parquet(d / "probes.parquet")
    trips = pl.read_csv(d / "trips_truth.csv").filter(
        (pl.col("teleported") == 0) & (pl.col("duration_s") >= 120)).sort("depart_t")
    trips = trips.join(pl.read_csv(d / "trips_routes.csv.gz"), on="vehicle_id", how="left")
    em = map_sumo_edges(net, d / "edges.csv.gz")
    routes = map_true_routes(net, em, trips["route_edges"].fill_null("").to_list(), trips)
    depart = trips["depart_t"].to_numpy()
    router = None if a.no_router else _make_router(net, index)
    ff_paths = trip_paths(net, index, trips) if router is None else None
    olat, olon = trips["origin_lat"].to_numpy(), trips["origin_lon"].to_numpy()
    dlat, dlon = trips["dest_lat"].to_numpy(), trips["dest_lon"].to_numpy()
    t_setup = time.perf_counter() - t_start

    over = {k: v for k, v in (("decay_tau_s", a.decay_tau_s), ("prior_weight", a.prior_weight),
                              ("gate_sigma", a.gate_sigma)) if v is not None}
    cfg = EstimatorConfig(**over)
    est = SpeedEstimator(net, cfg)
    m, ex = OnlineMatcher(net, index, route_distances, MatcherConfig()), TraversalExtractor(net)
    last, vcfg = VehicleLastSeen(), ProbeValidationConfig()
    eta_router, eta_true = np.full(len(trips), np.nan), np.full(len(trips), np.nan)
    t_end = float(max(probes["t"].max(), depart.max())) + a.tick_s
    probes = probes.with_columns(((pl.col("t") - t0) // a.tick_s).cast(pl.Int64).alias("_k"),
                                 pl.int_range(pl.len()).alias("_gid"))
    g_vid, g_t = probes["vehicle_id"].to_numpy(), probes["t"].to_numpy()
    groups = {k[0]: g for k, g in probes.group_by("_k")}
    rows_all, edges_all = [], []
    interval_s = sc.interval_s
    pace_at: dict[float, np.ndarray] = {}
    trav_w: dict[int, np.ndarray] = {}
    t_route = 0.0

    def fold(tr, now: float) -> None:
        if not len(tr):
            return
        est.apply(TraversalBatch(tr.edge, tr.t_enter_s, tr.t_exit_s, tr.pace_s_per_m, tr.weight),
                  t_s=now)
        b = (t0 + ((tr.t_exit_s - t0) // interval_s) * interval_s).astype(np.int64)
        for key in np.unique(b):
            w = trav_w.setdefault(int(key), np.zeros(net.n_edges))
            s = b == key
            np.add.at(w, tr.edge[s], tr.weight[s])

    n_ticks = int((t_end - t0) // a.tick_s) + 1
    for k in range(n_ticks):
        now0 = t0 + k * a.tick_s
        # Departures in [now0, now0 + tick): ETA from the estimate as of now0 (no look-ahead).
        sel = np.flatnonzero((depart >= now0) & (depart < now0 + a.tick_s))
        if sel.size:
            _, tt = est.travel_times(now0)
            eta_true[sel] = routes.eta_s(tt, sel)
            tr0 = time.perf_counter()
            if router is not None:
                router.customize(tt, f"v{est.version}@{now0:.0f}")
                for i in sel:
                    try:
                        eta_router[i] = router.route((olat[i], olon[i]), (dlat[i], dlon[i])).duration_s
                    except Exception:  # noqa: BLE001 - no road near / no route: left NaN
                        pass
            else:
                eta_router[sel] = [tt[ff_paths[i]].sum() if ff_paths[i].size else np.nan
                                   for i in sel]
            t_route += time.perf_counter() - tr0
        kb = (now0 - t0) // interval_s
        if k > 0 and kb > (now0 - a.tick_s - t0) // interval_s:
            # The estimate at the first tick at or after each interval's end.
            pace_at[t0 + kb * interval_s] = est.current_pace(now0)
        now = now0 + a.tick_s
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
            fold(ex.push(o), now)
        o = m.flush_idle(now, 60.0)
        edges_all.append(o.point_edge)
        rows_all.append(o.point_row)
        fold(ex.push(o), now)

    truth = trips["duration_s"].to_numpy()
    ff_sumo = trips["free_flow_s"].to_numpy()
    ff_ours = routes.eta_s(net.edge_freeflow_time_s, np.arange(len(trips)))
    oracle = _oracle_eta(sc, trips, np.zeros(0))
    peak = (depart >= sc.peak_s[0]) & (depart < sc.peak_s[1])
    cover = float(routes.ok.mean())
    use_true = cover >= 0.95
    main_sel = routes.ok & np.isfinite(eta_true) if use_true else np.isfinite(eta_router)
    eta = eta_true if use_true else eta_router
    res: dict = {"trips": int(main_sel.sum()), "trips_all": len(trips)}
    res.update(_errs("eta_", eta, truth, main_sel, peak))
    res.update(_errs("freeflow_", ff_sumo, truth, main_sel, peak))
    res["eta_route"] = "true SUMO route mapped to our edges" if use_true else \
        "our router between snapped endpoints (true-route mapping covers too few trips)"
    res["true_route_coverage"] = cover
    res.update(_errs("ours_freeflow_", ff_ours, truth, main_sel, peak))
    res.update(_errs("oracle_", oracle, truth, main_sel, peak))
    rsel = np.isfinite(eta_router)
    res["router_trips"] = int(rsel.sum())
    res["router"] = "graph.router.Router on live times" if router is not None else \
        "scipy free-flow path, live times summed"
    res.update(_errs("router_eta_", eta_router, truth, rsel, peak))
    res.update(_errs("router_freeflow_", ff_sumo, truth, rsel, peak))
    res.update(speed_errors(sc, em, pace_at, trav_w, net, min_traversals=a.min_traversals))
    res["sumo_edges_mapped"] = float(em.mapped.mean())
    res["estimator_config"] = {k: getattr(cfg, k) for k in ("decay_tau_s", "prior_weight",
                                                             "gate_sigma", "gate_min_weight")}
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
    res["setup_s"] = round(t_setup, 1)
    res["routing_s"] = round(t_route, 1)
    res["runtime_s"] = round(time.perf_counter() - t_start, 1)
    report(a, sc, res)
    print(json.dumps(res))


def report(a: argparse.Namespace, sc: Scenario, res: dict) -> None:
    """Print the table and (unless ``--no-append``) append it to BENCHMARKS.md."""
    f = lambda k: f"{res[k]:.3f}"  # noqa: E731
    lines = [f"## Accuracy on {sc.root.name} (true routes, speeds, oracle)\n",
             f"`.venv/bin/python benchmarks/accuracy.py --scenario {sc.root} --tick-s {a.tick_s:g}"
             f" --min-traversals {a.min_traversals:g}"
             + "".join(f" --{k.replace('_', '-')} {v:g}" for k, v in (
                 ("decay_tau_s", a.decay_tau_s), ("prior_weight", a.prior_weight),
                 ("gate_sigma", a.gate_sigma)) if v is not None)
             + (" --no-router" if a.no_router else "") + "` — "
             f"{utc_now()}, {machine_description()} (at the end). Estimator {res['estimator_config']}.\n",
             f"ETA on {res['trips']} of {res['trips_all']} held-out trips; route: "
             f"{res['eta_route']} (faithful for {res['true_route_coverage']:.1%} of trips: every "
             "SUMO edge mapped or bridged, length within 10%). Peak = manifest's peak departure "
             "window.\n",
             "| trip ETA error | MdAPE all | MdAPE peak | MAPE all | MAPE peak |",
             "|---|---:|---:|---:|---:|"]
    rows = [("ours, live, true route", "eta_"),
            ("scenario free-flow (`free_flow_s`)", "freeflow_"),
            ("ours free-flow (our speeds), true route", "ours_freeflow_"),
            ("oracle: true 5-min edge times, true route", "oracle_"),
            (f"ours, live, {res['router']} ({res['router_trips']} trips)", "router_eta_"),
            ("scenario free-flow on those trips", "router_freeflow_")]
    for name, p in rows:
        lines.append(f"| {name} | {f(p + 'mdape')} | {f('peak_' + p + 'mdape')} | "
                     f"{f(p + 'mape')} | {f('peak_' + p + 'mape')} |")
    lines += ["",
              f"Speed error, our live speed at each 5-min interval's end vs SUMO's space-mean "
              f"speed, on (edge, interval) pairs with >= {res['speed_min_traversals']:g} "
              f"traversals (weight) that interval: {res['speed_rows']} pairs, "
              f"{res['peak_speed_rows']} in the peak.\n",
              "| speed error | MdAPE all | MdAPE peak | MAPE all | MAPE peak |",
              "|---|---:|---:|---:|---:|"]
    for name, p in (("ours, live", "speed_"), ("our free-flow speeds", "speed_freeflow_")):
        lines.append(f"| {name} | {f(p + 'mdape')} | {f('peak_' + p + 'mdape')} | "
                     f"{f(p + 'mape')} | {f('peak_' + p + 'mape')} |")
    lines.append(f"\nPeak ETA MdAPE ours / free-flow: "
                 f"{res['peak_eta_mdape'] / res['peak_freeflow_mdape']:.2f} (target <= 0.5); "
                 f"oracle / free-flow: {res['peak_oracle_mdape'] / res['peak_freeflow_mdape']:.2f}. "
                 f"Match accuracy (way+direction) {res['match_accuracy']:.3f}, way only "
                 f"{res['match_way_accuracy']:.3f}. SUMO edges mapped {res['sumo_edges_mapped']:.1%}. "
                 f"Runtime {res['runtime_s']} s (setup {res['setup_s']} s, routing "
                 f"{res['routing_s']} s).\n")
    print("\n".join(lines))
    print(f"# reference: oracle peak MdAPE {res['peak_oracle_mdape']:.3f} = "
          f"{res['peak_oracle_mdape'] / res['peak_freeflow_mdape']:.2f} x free-flow's")
    if not a.no_append:
        append_section("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
