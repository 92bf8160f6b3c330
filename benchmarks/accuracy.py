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
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra

from graph.osm import load_osm
from graph.spatial import build_spatial_index, nearest_edges
from graph.route_distances import build_route_distances
from traffic.accumulation import AccumulationConfig
from traffic.estimator import EstimatorConfig, SpeedEstimator, TraversalBatch, decayed_weight
from traffic.eta_range import Z90, RangeConfig, edge_uncertainty
from traffic.forecast import ForecastConfig, PaceTrend, eta_along
from traffic.matching import MatcherConfig, OnlineMatcher
from traffic.probe_trips import ProbeTripCollector, compact_trips
from traffic.route_bias import (
    RouteBiasConfig,
    RouteBiasLearner,
    correction_strength,
    trip_etas,
)
from traffic.probes import ProbeValidationConfig, VehicleLastSeen, validate_probes
from traffic.traversals import TraversalExtractor
from workers.ingest import IngestConfig

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


def _signed(prefix: str, pred: np.ndarray, true: np.ndarray, sel: np.ndarray,
            peak: np.ndarray) -> dict[str, float]:
    """``{prefix}signed_median_error`` and ``peak_...``: median of (pred - true) / true."""
    ok = sel & np.isfinite(pred)
    out = {}
    for tag, m in (("", ok), ("peak_", ok & peak)):
        e = (pred[m] - true[m]) / true[m]
        out[f"{tag}{prefix}signed_median_error"] = float(np.median(e)) if e.size else float("nan")
    return out


#: Trip-length buckets (true duration, s) of the issue's tables.
LENGTH_BUCKETS = ((0, 300, "<5 min"), (300, 600, "5-10 min"), (600, 1200, "10-20 min"),
                  (1200, np.inf, ">20 min"))


def _by_length(preds: dict[str, np.ndarray], true: np.ndarray, sel: np.ndarray,
               peak: np.ndarray) -> dict:
    """Per trip-length bucket (all trips and peak): trips, MdAPE and signed median error."""
    out: dict = {}
    for lo, hi, name in LENGTH_BUCKETS:
        b = sel & (true >= lo) & (true < hi)
        row: dict = {"trips": int(b.sum()), "peak_trips": int((b & peak).sum())}
        for key, p in preds.items():
            for tag, mm in (("", b), ("peak_", b & peak)):
                ok = mm & np.isfinite(p)
                r = (p[ok] - true[ok]) / true[ok]
                row[f"{tag}{key}_mdape"] = float(np.median(np.abs(r))) if r.size else float("nan")
                row[f"{tag}{key}_signed"] = float(np.median(r)) if r.size else float("nan")
        out[name] = row
    return out


def range_sigma(eta: np.ndarray, ind: np.ndarray, err: np.ndarray, h: np.ndarray,
                chg: np.ndarray, rc: RangeConfig) -> np.ndarray:
    """Log-sd per trip from its range components (traffic.eta_range.route_sigma, vectorized:
    ``ind`` = sum (spread*tt)^2, ``err`` = sum tt*error_rel, ``h`` = sum tt*h / 3600,
    ``chg`` = sum tt*|log(forecast/live)|)."""
    e = rc.error_scale * err + rc.horizon_rel_per_h * h + rc.trend_scale * chg
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(rc.spread_scale * ind + e * e + (rc.floor_rel * eta) ** 2) / eta


def range_report(eta: np.ndarray, ind: np.ndarray, err: np.ndarray, h: np.ndarray,
                 chg: np.ndarray, true: np.ndarray, sel: np.ndarray, peak: np.ndarray,
                 rc: RangeConfig) -> dict:
    """Coverage of [p10, p90] overall, peak, per length bucket and per width tercile; median
    relative width ((p90 - p10) / ETA)."""
    sig = range_sigma(eta, ind, err, h, chg, rc)
    p10, p90 = eta * np.exp(-Z90 * sig), eta * np.exp(Z90 * sig)
    ok = sel & np.isfinite(sig) & np.isfinite(eta)
    inside = (true >= p10) & (true <= p90)
    width = (p90 - p10) / eta
    if not ok.any():
        return {"interval_trips": 0}
    out: dict = {"interval_trips": int(ok.sum()),
                 "interval_coverage": float(inside[ok].mean()),
                 "peak_interval_coverage": float(inside[ok & peak].mean()),
                 "interval_median_rel_width": float(np.median(width[ok])),
                 "peak_interval_median_rel_width": float(np.median(width[ok & peak])),
                 "interval_below_p10": float((true[ok] < p10[ok]).mean()),
                 "interval_above_p90": float((true[ok] > p90[ok]).mean())}
    out["interval_coverage_by_length"] = {
        name: float(inside[ok & (true >= lo) & (true < hi)].mean())
        for lo, hi, name in LENGTH_BUCKETS}
    q = np.quantile(width[ok], [1 / 3, 2 / 3])
    terc = np.digitize(width, q)
    out["interval_coverage_by_width_tercile"] = [float(inside[ok & (terc == j)].mean())
                                                 for j in range(3)]
    return out


def learn_route_bias(router, bias: RouteBiasLearner, done: list, est: SpeedEstimator, net,
                     now: float, path_eta) -> None:
    """Fold completed probe trips into the router-bias learner as the product's routers do
    (``traffic.probe_trips.compact_trips``, ``traffic.route_bias.trip_etas``): on the
    weights of ``now``, the forecast ETA (``path_eta(edges, tt)``, departing now) along the
    driven edges between the trip's first and last junction vs along the router's route
    between those junctions (probe data only)."""
    _, tt = est.travel_times(now)
    router.customize(tt, f"v{est.version}@{now:.0f}")
    trips = compact_trips([p.edge for p in done], net, max_trips=len(done))
    r_eta, d_eta = trip_etas(trips, lambda a, b: router.route_nodes(a, b).edge_ids,
                             lambda e: path_eta(np.asarray(e, dtype=np.int64), tt))
    bias.observe(now, r_eta, d_eta)


def junction_delays(trips: list, net, routes, eta: np.ndarray, sel: np.ndarray,
                    true: np.ndarray, peak: np.ndarray, *, min_n: int = 3) -> dict:
    """Per-movement delay from consecutive full traversals of the probe trips (probe data).

    For each edge ``e`` followed by ``f``, ``delay(e, f)`` = mean time on ``e`` of the
    traversals leaving to ``f`` minus the mean over all traversals of ``e`` (movements and
    edges with >= ``min_n`` traversals). Reported: the share of the traversal-time variance
    the movement explains on edges with >= 2 such movements, and, on the held-out trips'
    true routes, the summed |delay| of their movements relative to their ETA. The table is
    learned from the whole replay (in hindsight), so it bounds what a live table could do.
    """
    es, fs, ts = [], [], []
    L = net.edge_length_m
    ff_tt = net.edge_freeflow_time_s
    for p in trips:
        e = p.edge
        if e.size < 3:
            continue
        full = p.covered_m >= 0.95 * L[e]
        k = np.flatnonzero(full[:-1] & (net.edge_dst[e[:-1]] == net.edge_src[e[1:]]))
        es.append(e[k])
        fs.append(e[k + 1])
        ts.append(p.t_exit_s[k] - p.t_enter_s[k])
    if not es:
        return {"junction_movements": 0}
    e, f, t = np.concatenate(es), np.concatenate(fs), np.concatenate(ts)
    m = net.n_edges
    ne = np.bincount(e, minlength=m)
    mean_e = np.bincount(e, weights=t, minlength=m) / np.maximum(ne, 1)
    key = e * m + f
    uk, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
    mean_k = np.bincount(inv, weights=t) / cnt
    ke = uk // m
    good = (cnt >= min_n) & (ne[ke] >= min_n)
    n_good_mov = np.bincount(ke[good], minlength=m)
    multi = n_good_mov >= 2
    # Variance explained on edges with >= 2 well-observed movements.
    use = good[inv] & multi[e]
    dev_tot = ((t - mean_e[e]) ** 2)[use].sum()
    dev_within = ((t - mean_k[inv]) ** 2)[use].sum()
    delay = np.where(good, mean_k - mean_e[ke], 0.0)
    table = dict(zip(uk[good & multi[ke]].tolist(), delay[good & multi[ke]].tolist()))
    # Held-out trips: summed |delay| and signed delay of their movements vs their ETA.
    rel_abs, rel_sig = [], []
    with_delay = np.full(eta.shape, np.nan)
    for i in np.flatnonzero(sel):
        r = routes.edge[routes.first[i]:routes.first[i + 1]]
        if r.size < 2 or not np.isfinite(eta[i]):
            continue
        d = [table.get(int(a) * m + int(b), 0.0) for a, b in zip(r[:-1], r[1:])]
        rel_abs.append(np.abs(d).sum() / eta[i])
        rel_sig.append(np.sum(d) / eta[i])
        with_delay[i] = max(eta[i] + np.sum(d), 0.0)
    ok = np.isfinite(with_delay) & sel
    return {"junction_traversal_pairs": int(e.size), "junction_movements": int(good.sum()),
            "junction_edges_multi": int(multi.sum()),
            "junction_variance_explained": float(1 - dev_within / dev_tot) if dev_tot > 0 else 0.0,
            "junction_trip_abs_share": float(np.median(rel_abs)) if rel_abs else float("nan"),
            "junction_trip_signed_share": float(np.median(rel_sig)) if rel_sig else float("nan"),
            "junction_table_bytes_per_edge": 12.0 * len(table) / m,
            # ETA error with the movements' delays added (hindsight table: an upper bound).
            "junction_eta_mdape": float(np.median(np.abs(with_delay[ok] - true[ok]) / true[ok])),
            "junction_eta_mdape_without": float(np.median(np.abs(eta[ok] - true[ok]) / true[ok])),
            "peak_junction_eta_mdape": float(np.median(
                np.abs(with_delay[ok & peak] - true[ok & peak]) / true[ok & peak])),
            "peak_junction_eta_mdape_without": float(np.median(
                np.abs(eta[ok & peak] - true[ok & peak]) / true[ok & peak]))}


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
    ap.add_argument("--no-forecast", action="store_true",
                    help="baseline: the headline ETA is the live estimate summed (no trend)")
    ap.add_argument("--no-bias", action="store_true", help="no router-bias learning")
    ap.add_argument("--forecast-config", default="{}", help="JSON overrides of ForecastConfig")
    ap.add_argument("--range-config", default="{}", help="JSON overrides of RangeConfig")
    ap.add_argument("--route-bias-config", default="{}",
                    help="JSON overrides of traffic.route_bias.RouteBiasConfig")
    ap.add_argument("--accumulation-config", default="{}",
                    help="JSON overrides of traffic.accumulation.AccumulationConfig")
    ap.add_argument("--dump", default=None, help="save per-trip arrays (npz) for calibration")
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
    fcfg = ForecastConfig(**json.loads(a.forecast_config))
    rcfg = RangeConfig(**json.loads(a.range_config))
    est = SpeedEstimator(net, cfg)
    trend = PaceTrend(net.edge_key, fcfg,
                      accumulation=AccumulationConfig(**json.loads(a.accumulation_config)))
    bias = RouteBiasLearner(RouteBiasConfig(**json.loads(a.route_bias_config)))
    m, ex = OnlineMatcher(net, index, route_distances, MatcherConfig()), TraversalExtractor(net)
    collector = ProbeTripCollector()
    last, vcfg = VehicleLastSeen(), ProbeValidationConfig()
    n_trips = len(trips)
    nan = lambda: np.full(n_trips, np.nan)  # noqa: E731
    eta_router, eta_true = nan(), nan()
    # Per trip: forecast ETA on the true route and its range components; +15/+30 min asks;
    # router ETA with forecast and bias correction, and its overlap with the true route.
    eta_fc, rng_ind, rng_err, rng_h, rng_c = nan(), nan(), nan(), nan(), nan()
    fc_ahead = {15: nan(), 30: nan()}
    snap_ahead = {15: nan(), 30: nan()}
    eta_router_fc, eta_router_corr, overlap = nan(), nan(), nan()
    r_ind, r_err, r_h, r_c = nan(), nan(), nan(), nan()
    probe_trips: list = []
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
    pool_trace: list[tuple[float, float]] = []
    L = net.edge_length_m
    ff_tt = net.edge_freeflow_time_s
    r_first, r_edge, r_f0, r_f1 = routes.first, routes.edge, routes.frac0, routes.frac1

    def route_of(i: int) -> tuple[np.ndarray, np.ndarray]:
        e = r_edge[r_first[i]:r_first[i + 1]]
        share = np.ones(e.size)
        if e.size == 1:
            share[0] = max(r_f1[i] - r_f0[i], 0.0)
        elif e.size:
            share[0], share[-1] = 1.0 - r_f0[i], r_f1[i]
        return e, share

    def fold(tr, now: float) -> None:
        if not len(tr):
            return
        est.apply(TraversalBatch(tr.edge, tr.t_enter_s, tr.t_exit_s, tr.pace_s_per_m, tr.weight),
                  t_s=now)
        trend.update(tr.edge, 0.5 * (tr.t_enter_s + tr.t_exit_s), tr.pace_s_per_m, tr.weight, now)
        b = (t0 + ((tr.t_exit_s - t0) // interval_s) * interval_s).astype(np.int64)
        for key in np.unique(b):
            w = trav_w.setdefault(int(key), np.zeros(net.n_edges))
            s = b == key
            np.add.at(w, tr.edge[s], tr.weight[s])

    def forecast_view(t: float):
        """What a route's forecast reads at ``t``: slopes, lags, pooled slope, config."""
        return (trend.forecast_slopes(t), trend.lags(t), trend.forecast_pool_slope(),
                replace(fcfg, gain=trend.gain()))

    def walk(e, share, tt, slope, depart_in):
        """Forecast ETA and its per-edge driven times along edges ``e``."""
        if a.no_forecast:
            t_e = tt[e] * share
            return float(t_e.sum()), t_e
        return eta_along(tt[e], slope[0][e], slope[3], depart_in_s=depart_in, share=share,
                         lag_s=slope[1][e], pool_slope_per_s=slope[2], floor_tt_s=ff_tt[e])

    def range_parts(e, t_e, depart_in, spread, err, live_e):
        arrive = depart_in + np.concatenate(([0.0], np.cumsum(t_e)[:-1]))
        chg = np.abs(np.log(np.maximum(t_e, 1e-9) / np.maximum(live_e, 1e-9)))
        return (float(np.sum((spread[e] * t_e) ** 2)), float(np.sum(t_e * err[e])),
                float(np.sum(t_e * arrive)) / 3600.0, float(np.sum(t_e * chg)))

    n_ticks = int((t_end - t0) // a.tick_s) + 1
    for k in range(n_ticks):
        now0 = t0 + k * a.tick_s
        # Departures in [now0, now0 + tick): ETA from the estimate as of now0 (no look-ahead);
        # and asks at now0 for departures 15 and 30 min later.
        sel = np.flatnonzero((depart >= now0) & (depart < now0 + a.tick_s))
        ahead = {h: np.flatnonzero((depart >= now0 + 60 * h) & (depart < now0 + 60 * h + a.tick_s))
                 for h in (15, 30)}
        if sel.size or any(v.size for v in ahead.values()):
            _, tt = est.travel_times(now0)
            slope = forecast_view(now0)
            spread, err = edge_uncertainty(tt / L, est.state.var,
                                           decayed_weight(est.state, now0, config=cfg),
                                           prior_weight=cfg.prior_weight, config=rcfg)
            for h, rows in ahead.items():
                snap_ahead[h][rows] = routes.eta_s(tt, rows)
                for i in rows:
                    e, share = route_of(i)
                    if e.size:
                        fc_ahead[h][i] = walk(e, share, tt, slope, depart[i] - now0)[0]
        if sel.size:
            eta_true[sel] = routes.eta_s(tt, sel)
            for i in sel:
                e, share = route_of(i)
                if e.size:
                    eta_fc[i], t_e = walk(e, share, tt, slope, depart[i] - now0)
                    rng_ind[i], rng_err[i], rng_h[i], rng_c[i] = range_parts(
                        e, t_e, depart[i] - now0, spread, err, tt[e] * share)
            tr0 = time.perf_counter()
            if router is not None:
                router.customize(tt, f"v{est.version}@{now0:.0f}")
                for i in sel:
                    try:
                        rt = router.route((olat[i], olon[i]), (dlat[i], dlon[i]))
                    except Exception:  # noqa: BLE001 - no road near / no route: left NaN
                        continue
                    eta_router[i] = rt.duration_s
                    er = rt.edge_ids.astype(np.int64)
                    full = tt[er].sum()
                    fc, t_e = walk(er, np.ones(er.size), tt, slope, depart[i] - now0)
                    # Partial end edges: the forecast's ratio to the live sum, on the route's time.
                    eta_router_fc[i] = rt.duration_s * fc / full if full > 0 else rt.duration_s
                    eta_router_corr[i] = float(bias.correct(
                        np.array([eta_router_fc[i]]),
                        strength=correction_strength(trend.persistence()))[0])
                    k_ = rt.duration_s / max(full, 1e-9)
                    r_ind[i], r_err[i], r_h[i], r_c[i] = range_parts(
                        er, t_e * k_, depart[i] - now0, spread, err, tt[er] * k_)
                    e, _ = route_of(i)
                    if e.size:
                        common = np.intersect1d(er, e)
                        lt, lr = L[e].sum(), L[er].sum()
                        overlap[i] = L[common].sum() / max(lt, lr)
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
        done = []
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
            done += collector.push(o)
        o = m.flush_idle(now, 60.0)
        edges_all.append(o.point_edge)
        rows_all.append(o.point_row)
        fold(ex.push(o), now)
        done += collector.push(o)
        # The probe vehicles on the road now, as an ingest partition reports them
        # (workers.ingest.IngestCore.active_vehicles).
        trend.observe_vehicles(0, now, last.active(now, IngestConfig().idle_flush_s))
        pool_trace.append((now, trend.pool_slope(), trend.gain(), trend.persistence(),
                           trend.vehicles.total))
        if done:
            probe_trips += done
            if router is not None and not a.no_bias:
                tr0 = time.perf_counter()
                view = forecast_view(now)
                learn_route_bias(router, bias, done, est, net, now,
                                 lambda e, tt_: walk(e, np.ones(e.size), tt_, view, 0.0)[0]
                                 if e.size else 0.0)
                t_route += time.perf_counter() - tr0

    truth = trips["duration_s"].to_numpy()
    ff_sumo = trips["free_flow_s"].to_numpy()
    ff_ours = routes.eta_s(net.edge_freeflow_time_s, np.arange(len(trips)))
    oracle = _oracle_eta(sc, trips, np.zeros(0))
    peak = (depart >= sc.peak_s[0]) & (depart < sc.peak_s[1])
    cover = float(routes.ok.mean())
    use_true = cover >= 0.95
    main_sel = routes.ok & np.isfinite(eta_true) if use_true else np.isfinite(eta_router)
    eta = (eta_fc if use_true else eta_router_corr) if not a.no_forecast else \
        (eta_true if use_true else eta_router)
    res: dict = {"trips": int(main_sel.sum()), "trips_all": len(trips),
                 "eta_basis": "live" if a.no_forecast else "forecast"}
    res.update(_errs("eta_", eta, truth, main_sel, peak))
    res.update(_signed("", eta, truth, main_sel, peak))
    res.update(_errs("live_eta_", eta_true if use_true else eta_router, truth, main_sel, peak))
    res.update(_signed("live_", eta_true if use_true else eta_router, truth, main_sel, peak))
    res.update(_errs("freeflow_", ff_sumo, truth, main_sel, peak))
    # Outside the peak, before and after it (the forecast must not make those worse).
    live_eta = eta_true if use_true else eta_router
    for tag, w in (("before_peak_", depart < sc.peak_s[0]), ("after_peak_", depart >= sc.peak_s[1])):
        for name, p in (("eta_", eta), ("live_eta_", live_eta)):
            ok = main_sel & w & np.isfinite(p)
            r = (p[ok] - truth[ok]) / truth[ok]
            res[f"{tag}{name}mdape"] = float(np.median(np.abs(r)))
            res[f"{tag}{name}mape"] = float(np.mean(np.abs(r)))
            res[f"{tag}{name}signed_median_error"] = float(np.median(r))
    res["eta_route"] = "true SUMO route mapped to our edges" if use_true else \
        "our router between snapped endpoints (true-route mapping covers too few trips)"
    res["true_route_coverage"] = cover
    res.update(_errs("ours_freeflow_", ff_ours, truth, main_sel, peak))
    res.update(_errs("oracle_", oracle, truth, main_sel, peak))
    res.update(_signed("oracle_", oracle, truth, main_sel, peak))
    for h in (15, 30):
        res.update(_errs(f"forecast{h}_", fc_ahead[h], truth, main_sel, peak))
        res.update(_errs(f"snapshot{h}_", snap_ahead[h], truth, main_sel, peak))
        res.update(_signed(f"forecast{h}_", fc_ahead[h], truth, main_sel, peak))
        res.update(_signed(f"snapshot{h}_", snap_ahead[h], truth, main_sel, peak))
    router_eta = eta_router if a.no_forecast else eta_router_corr
    res["by_length"] = _by_length({"live": eta_true if use_true else eta_router, "eta": eta,
                                   "oracle": oracle,
                                   "router_live": eta_router, "router": router_eta},
                                  truth, main_sel, peak)
    rsel = np.isfinite(eta_router)
    res["router_trips"] = int(rsel.sum())
    res["router"] = "graph.router.Router on live times" if router is not None else \
        "scipy free-flow path, live times summed"
    res.update(_errs("router_live_eta_", eta_router, truth, rsel, peak))
    res.update(_signed("router_live_", eta_router, truth, rsel, peak))
    res.update(_errs("router_fc_eta_", eta_router_fc, truth, rsel, peak))
    res.update(_signed("router_fc_", eta_router_fc, truth, rsel, peak))
    res.update(_errs("router_eta_", router_eta, truth, rsel, peak))
    res.update(_signed("router_", router_eta, truth, rsel, peak))
    o90 = rsel & (overlap >= 0.9)
    res["router_overlap90_trips"] = int(o90.sum())
    res.update(_errs("router_overlap90_", router_eta, truth, o90, peak))
    res.update(_signed("router_overlap90_", router_eta, truth, o90, peak))
    res["route_bias_log_correction"] = [round(float(x), 4) for x in
                                        bias.log_correction(np.array([100, 400, 800, 1500.]))]
    res["route_bias_trips"] = bias.trips
    res.update(_errs("router_freeflow_", ff_sumo, truth, rsel, peak))
    res.update(range_report(eta, rng_ind, rng_err, rng_h, rng_c, truth, main_sel, peak, rcfg))
    res.update({f"router_{k}": v for k, v in range_report(
        router_eta, r_ind, r_err, r_h, r_c, truth, rsel, peak, rcfg).items()
        if k in ("interval_trips", "interval_coverage", "peak_interval_coverage",
                 "interval_median_rel_width")})
    res["forecast_config"] = asdict(fcfg)
    res["range_config"] = asdict(rcfg)
    res["accumulation_config"] = asdict(trend.vehicles.config)
    res["route_bias_config"] = asdict(bias.config)
    res.update(junction_delays(probe_trips, net, routes, eta, main_sel, truth, peak))
    if a.dump:
        np.savez(a.dump, eta=eta, live=eta_true, truth=truth, sel=main_sel, peak=peak,
                 ind=rng_ind, err=rng_err, h=rng_h, chg=rng_c, fc15=fc_ahead[15], fc30=fc_ahead[30],
                 snap15=snap_ahead[15], snap30=snap_ahead[30], router=eta_router,
                 router_fc=eta_router_fc, router_corr=eta_router_corr, overlap=overlap,
                 r_ind=r_ind, r_err=r_err, r_h=r_h, r_chg=r_c, depart=depart - t0,
                 pool=np.array(pool_trace) - [t0, 0, 0, 0, 0])
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
    lines = [f"## Accuracy on {sc.root.name} (true routes, forecast, ranges, router bias, speeds, "
             "oracle)\n",
             f"`.venv/bin/python benchmarks/accuracy.py --scenario {sc.root} --tick-s {a.tick_s:g}"
             f" --min-traversals {a.min_traversals:g}"
             + "".join(f" --{k.replace('_', '-')} {v:g}" for k, v in (
                 ("decay_tau_s", a.decay_tau_s), ("prior_weight", a.prior_weight),
                 ("gate_sigma", a.gate_sigma)) if v is not None)
             + (" --no-router" if a.no_router else "")
             + (" --no-forecast" if a.no_forecast else "")
             + (f" --forecast-config '{a.forecast_config}'" if a.forecast_config != "{}" else "")
             + (f" --range-config '{a.range_config}'" if a.range_config != "{}" else "")
             + "` — "
             f"{utc_now()}, {machine_description()} (at the end). Estimator {res['estimator_config']}.\n",
             f"ETA on {res['trips']} of {res['trips_all']} held-out trips; route: "
             f"{res['eta_route']} (faithful for {res['true_route_coverage']:.1%} of trips: every "
             "SUMO edge mapped or bridged, length within 10%). Peak = manifest's peak departure "
             "window.\n",
             "| trip ETA error | MdAPE all | MdAPE peak | MAPE all | MAPE peak | signed median all"
             " | signed median peak |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    g = lambda k: f"{res[k]:+.3f}" if k in res else "–"  # noqa: E731
    basis = res["eta_basis"]
    rows = [(f"ours, {basis} (the product's ETA), true route", "eta_", ""),
            ("ours, live snapshot, true route", "live_eta_", "live_"),
            ("scenario free-flow (`free_flow_s`)", "freeflow_", None),
            ("ours free-flow (our speeds), true route", "ours_freeflow_", None),
            ("oracle: true 5-min edge times, true route", "oracle_", "oracle_"),
            ("asked 15 min ahead: forecast, true route", "forecast15_", "forecast15_"),
            ("asked 15 min ahead: live snapshot, true route", "snapshot15_", "snapshot15_"),
            ("asked 30 min ahead: forecast, true route", "forecast30_", "forecast30_"),
            ("asked 30 min ahead: live snapshot, true route", "snapshot30_", "snapshot30_"),
            (f"{res['router']}, live ({res['router_trips']} trips)", "router_live_eta_",
             "router_live_"),
            ("router, forecast along its route", "router_fc_eta_", "router_fc_"),
            (f"router, {basis} + online bias correction (the product's)", "router_eta_", "router_"),
            (f"router, route overlaps the driven one >= 90% ({res['router_overlap90_trips']} "
             "trips)", "router_overlap90_", "router_overlap90_"),
            ("scenario free-flow on the router's trips", "router_freeflow_", None)]
    for name, p, sg in rows:
        if p + "mdape" not in res:
            continue
        lines.append(f"| {name} | {f(p + 'mdape')} | {f('peak_' + p + 'mdape')} | "
                     f"{f(p + 'mape')} | {f('peak_' + p + 'mape')} | "
                     + (f"{g(sg + 'signed_median_error')} | {g('peak_' + sg + 'signed_median_error')} |"
                        if sg is not None else "– | – |"))
    if "after_peak_eta_mdape" in res:
        lines += ["", "Outside the peak (MdAPE / MAPE / signed median): " + "; ".join(
            f"{tag.replace('_', ' ').strip()}: ours {res[tag + 'eta_mdape']:.3f} / "
            f"{res[tag + 'eta_mape']:.3f} / {res[tag + 'eta_signed_median_error']:+.3f}, live "
            f"{res[tag + 'live_eta_mdape']:.3f} / {res[tag + 'live_eta_mape']:.3f} / "
            f"{res[tag + 'live_eta_signed_median_error']:+.3f}"
            for tag in ("before_peak_", "after_peak_")) + "."]
    lines += ["", "Signed median error by true trip duration (all trips / peak):\n",
              "| trip length | trips | live | ours | oracle | router live | router (product) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in res["by_length"].items():
        lines.append(f"| {name} | {row['trips']} | " + " | ".join(
            f"{row[k + '_signed']:+.3f} / {row['peak_' + k + '_signed']:+.3f}"
            for k in ("live", "eta", "oracle", "router_live", "router")) + " |")
    if res.get("interval_trips"):
        bl = res["interval_coverage_by_length"]
        lines += ["", f"Ranges [p10, p90] ({res['range_config']}): coverage "
                  f"{res['interval_coverage']:.3f} all, {res['peak_interval_coverage']:.3f} peak "
                  f"(target 0.75-0.85); by length "
                  + ", ".join(f"{k} {v:.3f}" for k, v in bl.items())
                  + "; by width tercile " + ", ".join(f"{v:.3f}" for v in
                                                       res["interval_coverage_by_width_tercile"])
                  + f" (target 0.70-0.90); below p10 {res['interval_below_p10']:.3f}, above p90 "
                  f"{res['interval_above_p90']:.3f}; median relative width "
                  f"{res['interval_median_rel_width']:.3f}. Router ETAs: coverage "
                  f"{res.get('router_interval_coverage', float('nan')):.3f} all, "
                  f"{res.get('router_peak_interval_coverage', float('nan')):.3f} peak.\n"]
    lines += [f"Forecast {res['forecast_config']}. Router bias learned online from "
              f"{res['route_bias_trips']} completed probe trips; log correction by router ETA "
              f"(<5, 5-10, 10-20, >20 min) at the end: {res['route_bias_log_correction']}.\n"]
    if res.get("junction_movements"):
        lines += [f"Junction delays (probe traversals, in hindsight): "
                  f"{res['junction_traversal_pairs']} consecutive full traversals, "
                  f"{res['junction_movements']} movements with >= 3; on the "
                  f"{res['junction_edges_multi']} edges with >= 2 such movements the movement "
                  f"explains {res['junction_variance_explained']:.1%} of the traversal-time "
                  f"variance; on held-out trips the movements' |delay| sums to a median "
                  f"{res['junction_trip_abs_share']:.1%} of the ETA (signed "
                  f"{res['junction_trip_signed_share']:+.1%}); table "
                  f"{res['junction_table_bytes_per_edge']:.1f} B per edge. ETA MdAPE with the "
                  f"movements' delays added: {res['junction_eta_mdape']:.3f} all, "
                  f"{res['peak_junction_eta_mdape']:.3f} peak (without: "
                  f"{res['junction_eta_mdape_without']:.3f}, "
                  f"{res['peak_junction_eta_mdape_without']:.3f}).\n"]
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
