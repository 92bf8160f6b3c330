"""Routing benchmark on DIMACS NY: our CCH (RoutingKit) against networkx, scipy and our reference.

    .venv/bin/python benchmarks/routing.py [--pairs 1000] [--peer-pairs 30] [--no-append]
    .venv/bin/python benchmarks/routing.py --verify [--verify-pairs 1000]

Pinned to one core. Prints a table (medians and p99s, peers side by side) and appends it to
BENCHMARKS.md. ``--verify`` checks CCH durations and paths against the exact Dijkstra reference
on NY and on Liechtenstein (OSM, turn restrictions honoured) for three random travel-time
vectors, re-customizing between them: 1000 random pairs each, drawn as 100 random sources x
10 random targets so one full reference search serves ten pairs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graph.cch import QueryCache, customize, customize_partial, prepare_cch  # noqa: E402
from graph.dijkstra import dijkstra  # noqa: E402
from graph.network import banned_turns  # noqa: E402
from graph.router import Router  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import append_section, machine_description, utc_now  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
NY_GR = DATA / "graphs" / "USA-road-t.NY.gr.gz"
NY_CO = DATA / "graphs" / "USA-road-d.NY.co.gz"
LI_PBF = DATA / "osm" / "liechtenstein-latest.osm.pbf"


def _pct(ts: list[float]) -> tuple[float, float]:
    a = np.asarray(ts) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _load_ny():
    from graph.dimacs import load_dimacs

    return load_dimacs(NY_GR, NY_CO)


def bench(args: argparse.Namespace) -> str:
    rows: list[tuple[str, str, str, str]] = []
    net = _load_ny()
    rng = np.random.default_rng(2024)
    pairs = rng.integers(0, net.n_nodes, (args.pairs, 2))

    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        index = prepare_cch(net, cache_dir=cache)
        prep_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cached = prepare_cch(net, cache_dir=cache)
        cached_s = time.perf_counter() - t0
    rows.append(("prepare (inertial order + contraction)", f"{prep_s * 1e3:.0f}", "", "<= 15000"))
    rows.append(("prepare, order cached on disk", f"{cached_s * 1e3:.0f}", "", "(cached)"))
    del cached

    runs = [_measure(net, index, pairs, np.random.default_rng(2025 + k)) for k in range(args.runs)]
    rows += _median_rows([r[0] for r in runs])
    _, w, durs, q50 = runs[-1]
    peer = pairs[: args.peer_pairs]
    rows += _peers(net, w, peer, durs, q50)
    return _format(rows, args)


def _measure(net, index, pairs, rng):
    """One run of the timed measurements: rows, the last weights, durations, query p50."""
    rows: list[tuple[str, str, str, str]] = []
    cust, conv, rkc = [], [], []
    metric = None
    for k in range(6):
        w = net.edge_freeflow_time_s * rng.uniform(0.5, 2.0, net.n_edges)
        t0 = time.perf_counter()
        metric = customize(index, w, f"v{k}")
        cust.append(time.perf_counter() - t0)
        conv.append(metric.convert_s)
        rkc.append(metric.customize_s)
    c50 = float(np.median(cust[1:]) * 1e3)
    rows.append(("customize (fresh vector: float s -> ms weights + RoutingKit)", f"{c50:.1f}",
                 f"{max(cust[1:]) * 1e3:.1f}",
                 f"<= 100; of which conversion {np.median(conv[1:]) * 1e3:.1f}, "
                 f"RoutingKit {np.median(rkc[1:]) * 1e3:.1f}"))
    assert metric is not None
    w = metric.travel_time_s
    for n_changed in (100, 1000):
        part = customize(index, w, "p0")
        ts = []
        for k in range(3):
            pw = part.travel_time_s.copy()
            pw[rng.choice(net.n_edges, n_changed, replace=False)] *= 1.5
            t0 = time.perf_counter()
            part = customize_partial(part, pw, f"p{k + 1}")
            ts.append(time.perf_counter() - t0)
        rows.append((f"customize_partial, {n_changed} changed edges (in place)",
                     f"{np.median(ts) * 1e3:.1f}", f"{max(ts) * 1e3:.1f}", "single-owner metric"))
        del part

    queries = QueryCache()
    ts, durs = [], {}
    for s, t in pairs.tolist():
        t0 = time.perf_counter()
        res = metric.route_nodes(s, t, queries=queries)
        ts.append(time.perf_counter() - t0)
        durs[(s, t)] = None if res is None else res.duration_s
    q50, q99 = _pct(ts)
    rows.append(("CCH query, node to node (duration + edge path)", f"{q50:.3f}", f"{q99:.3f}",
                 "p50 <= 0.15, p99 <= 0.5"))

    router = Router(net, index=index)
    router.customize(w, "bench")
    ts = []
    for s, t in pairs.tolist():
        t0 = time.perf_counter()
        try:
            router.route_nodes(s, t)
        except LookupError:
            pass
        ts.append(time.perf_counter() - t0)
    n50, n99 = _pct(ts)
    rows.append(("Router.route_nodes (hand-off to query thread + geometry)", f"{n50:.3f}", f"{n99:.3f}",
                 "same search, through the Router"))
    jitter = rng.normal(0, 0.0001, (len(pairs), 4))
    ts = []
    for i, (s, t) in enumerate(pairs.tolist()):
        a = (net.node_lat[s] + jitter[i, 0], net.node_lon[s] + jitter[i, 1])
        b = (net.node_lat[t] + jitter[i, 2], net.node_lon[t] + jitter[i, 3])
        t0 = time.perf_counter()
        try:
            router.route(a, b)
        except LookupError:
            pass
        ts.append(time.perf_counter() - t0)
    r50, r99 = _pct(ts)
    rows.append(("route() lat/lon: snap + CCH + geometry", f"{r50:.3f}", f"{r99:.3f}", "p50 <= 0.5"))

    pts = np.column_stack([net.node_lat, net.node_lon])[rng.integers(0, net.n_nodes, 200)]
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        router.table(pts[:100], pts[100:])
        ts.append(time.perf_counter() - t0)
    rows.append(("table 100 x 100 (snap + one-to-many)", f"{np.median(ts) * 1e3:.1f}",
                 f"{max(ts) * 1e3:.1f}", "<= 50"))
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        router.table(pts[:150], pts[150:])
        ts.append(time.perf_counter() - t0)
    rows.append(("table 150 x 50 (snap + many-to-one)", f"{np.median(ts) * 1e3:.1f}",
                 f"{max(ts) * 1e3:.1f}", ""))
    rows += _during_customization(net, router, pairs, rng)
    router.close()
    return rows, w, durs, q50



def _median_rows(runs: list[list[tuple[str, str, str, str]]]) -> list[tuple[str, str, str, str]]:
    """Per row, the median over runs of each numeric cell (notes from the median run's p50)."""
    out = []
    for cells in zip(*runs):
        label = cells[0][0]
        p50s = [float(c[1]) for c in cells]
        mid = int(np.argsort(p50s)[len(p50s) // 2])
        row = []
        for col in (1, 2):
            vals = [c[col] for c in cells]
            if all(v for v in vals):
                digits = len(vals[0].split(".")[1]) if "." in vals[0] else 0
                row.append(f"{np.median([float(v) for v in vals]):.{digits}f}")
            else:
                row.append("")
        note = cells[mid][3]
        if len(cells) > 1:
            note += f" (median of {len(cells)} runs; p50s {', '.join(c[1] for c in cells)})"
        out.append((label, row[0], row[1], note))
    return out


def _during_customization(net, router, pairs, rng):
    """Query latency in another thread while customizations run, and memory over 50 of them.

    RoutingKit holds the GIL while it customizes, so a query that arrives meanwhile waits.
    """
    import threading

    ts: list[float] = []
    stop = threading.Event()

    def load() -> None:
        for s, t in itertools.cycle(pairs[:200].tolist()):
            if stop.is_set():
                return
            t0 = time.perf_counter()
            try:
                router.route_nodes(s, t)
            except LookupError:
                pass
            ts.append(time.perf_counter() - t0)

    rss0 = _rss_mb()
    th = threading.Thread(target=load)
    th.start()
    base = net.edge_freeflow_time_s
    t0 = time.perf_counter()
    for k in range(50):
        router.customize(base * rng.uniform(0.5, 2.0, net.n_edges), f"m{k}")
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    time.sleep(1.0)  # idle query threads drop replaced metrics within 0.5 s
    rss1 = _rss_mb()
    q50, q99 = _pct(ts)
    return [
        ("route_nodes in a thread during 50 back-to-back customizations", f"{q50:.3f}", f"{q99:.3f}",
         f"max {max(ts) * 1e3:.1f}: RoutingKit customizes holding the GIL; {len(ts)} queries"),
        ("50 customizations under that query load (each)", f"{wall / 50 * 1e3:.1f}", "",
         f"RSS {rss0:.0f} -> {rss1:.0f} MB after all 50"),
    ]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peers(net, w, peer, durs, q50):
    import networkx as nx
    import scipy.sparse as sp
    from scipy.sparse.csgraph import dijkstra as sp_dijkstra

    rows = []
    G = nx.DiGraph()
    G.add_weighted_edges_from(zip(net.edge_src.tolist(), net.edge_dst.tolist(), w.tolist()))
    ts, worst = [], 0.0
    for s, t in peer.tolist():
        t0 = time.perf_counter()
        try:
            d = nx.bidirectional_dijkstra(G, s, t)[0]
        except nx.NetworkXNoPath:
            d = None
        ts.append(time.perf_counter() - t0)
        if d is not None and durs[(s, t)] is not None:
            worst = max(worst, abs(d - durs[(s, t)]))
    n50, n99 = _pct(ts)
    rows.append((f"networkx bidirectional_dijkstra ({len(peer)} pairs)", f"{n50:.1f}", f"{n99:.1f}",
                 f"CCH speedup {n50 / q50:.0f}x (>= 500x); max |diff| {worst * 1e3:.2f} ms"))
    A = sp.csr_matrix((w, (net.edge_src, net.edge_dst)), shape=(net.n_nodes, net.n_nodes))
    ts = []
    for s, _ in peer.tolist():
        t0 = time.perf_counter()
        sp_dijkstra(A, indices=s)
        ts.append(time.perf_counter() - t0)
    a50, a99 = _pct(ts)
    rows.append((f"scipy csgraph.dijkstra one-to-all ({len(peer)} sources)", f"{a50:.1f}", f"{a99:.1f}",
                 f"{a50 / q50:.0f}x slower than CCH"))
    ts = []
    for s, t in peer.tolist():
        t0 = time.perf_counter()
        dijkstra(net, w, s, t)
        ts.append(time.perf_counter() - t0)
    d50, d99 = _pct(ts)
    rows.append((f"our exact reference graph.dijkstra, to target ({len(peer)} pairs)", f"{d50:.1f}",
                 f"{d99:.1f}", f"{d50 / q50:.0f}x slower than CCH"))
    return rows


def verify(args: argparse.Namespace) -> str:
    from graph.io import load_network

    lines = []
    for name, loader in (("DIMACS NY", _load_ny), ("Liechtenstein OSM", lambda: load_network(LI_PBF))):
        net = loader()
        bt = banned_turns(net)
        index = prepare_cch(net)
        rng = np.random.default_rng(7)
        n_src = max(args.verify_pairs // 10, 1)
        worst, checked, unreachable, t0 = 0.0, 0, 0, time.perf_counter()
        for k in range(3):
            w = net.edge_freeflow_time_s * rng.uniform(0.3, 3.0, net.n_edges)
            metric = customize(index, w, f"v{k}")
            for s in rng.integers(0, net.n_nodes, n_src).tolist():
                ref = dijkstra(net, w, s, banned_turns=bt if bt[0].size else None)
                for t in rng.integers(0, net.n_nodes, 10).tolist():
                    res = metric.route_nodes(s, t)
                    if res is None:
                        if np.isfinite(ref.dist_s[t]):
                            raise SystemExit(f"{name}: {s}->{t} reachable in the reference, not in CCH")
                        unreachable += 1
                        continue
                    e = res.edges
                    ref_e = ref.path_edges(t)
                    tol = 0.5e-3 * (len(e) + len(ref_e)) + 1e-9
                    diff = res.duration_s - ref.dist_s[t]
                    if not (-1e-9 <= diff <= tol):
                        raise SystemExit(f"{name}: {s}->{t} CCH {res.duration_s} vs ref {ref.dist_s[t]}")
                    if e.size and not (np.all(net.edge_dst[e[:-1]] == net.edge_src[e[1:]])
                                       and net.edge_src[e[0]] == s and net.edge_dst[e[-1]] == t
                                       and abs(w[e].sum() - res.duration_s) <= 1e-9):
                        raise SystemExit(f"{name}: {s}->{t} invalid CCH path")
                    worst = max(worst, abs(diff))
                    checked += 1
        lines.append(
            f"| {name} | {net.n_nodes} nodes, {net.n_edges} edges, {bt[0].size} banned turns"
            f"{' (turn-expanded)' if index.graph.turn_expanded else ''} | 3 x {n_src * 10} | "
            f"{checked} equal, {unreachable} unreachable in both | {worst * 1e3:.3f} ms | "
            f"{time.perf_counter() - t0:.0f} s |"
        )
        print(lines[-1], flush=True)
    head = ("| network | size | vectors x pairs | result | max abs(CCH - reference) | time |\n"
            "|---|---|---|---|---|---|")
    body = "\n".join([head, *lines])
    return (f"Tolerance: CCH duration (exact float sum along its path) >= reference and within "
            f"0.5 ms per edge of both paths (ms-rounded weights); paths connect and sum to the "
            f"duration.\n\n{body}")


def _format(rows, args) -> str:
    w = max(len(r[0]) for r in rows)
    head = f"| {'measure':<{w}} | p50 / median (ms) | p99 / max (ms) | target / note |"
    sep = f"|{'-' * (w + 2)}|---|---|---|"
    body = "\n".join(f"| {a:<{w}} | {b} | {c} | {d} |" for a, b, c, d in rows)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"DIMACS NY, {args.pairs} random node pairs, one core; load average at the end "
            f"{load} (1, 5, 15 min).\n\n{head}\n{sep}\n{body}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--peer-pairs", type=int, default=30)
    p.add_argument("--runs", type=int, default=3, help="repeat the CCH measurements; medians")
    p.add_argument("--verify", action="store_true", help="check CCH against the reference instead")
    p.add_argument("--verify-pairs", type=int, default=1000)
    p.add_argument("--no-append", action="store_true", help="do not append to BENCHMARKS.md")
    args = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    text = verify(args) if args.verify else bench(args)
    print(text)
    if not args.no_append:
        date = utc_now()
        cmd = "python benchmarks/routing.py" + (" --verify" if args.verify else "")
        machine = machine_description(note="benchmark pinned to one")
        section = f"## Routing{' correctness' if args.verify else ''}: `{cmd}`\n\n{date}; {machine}\n\n{text}\n"
        append_section(section)


if __name__ == "__main__":
    main()
