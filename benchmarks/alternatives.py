"""Alternative routes (graph.alternatives) on DIMACS NY and Liechtenstein OSM.

    .venv/bin/python benchmarks/alternatives.py [--pairs 1000] [--no-append]

Random node pairs (reachable ones), live-like weights (free-flow x U(0.8, 2.0), seed 7),
``alternatives=3`` on the router's own query thread path (graph.navigation.plan_route, from
node positions). Reports the share of queries with >= 1 admissible alternative, the mean
count and p50/p99 of the whole request (fastest route + alternatives) and of the fastest
route alone. Admissibility is proven by the algorithm itself (exact in ms weights); the
Liechtenstein test (tests/test_navigation.py) checks it with the reference Dijkstra.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graph.errors import NoRouteError
from graph.navigation import plan_route
from graph.router import Router

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import append_section, machine_description, utc_now

DATA = ROOT.parent / "shared" / "data"


def _run(name: str, net, pairs: int, cache: str) -> str:
    r = Router(net, cache_dir=cache)
    rng = np.random.default_rng(7)
    r.customize(net.edge_freeflow_time_s * rng.uniform(0.8, 2.0, net.n_edges), "1")
    rng = np.random.default_rng(2024)
    counts, t_all, t_main = [], [], []
    while len(counts) < pairs:
        s, t = rng.integers(0, net.n_nodes, 2)
        pts = [(net.node_lat[s], net.node_lon[s]), (net.node_lat[t], net.node_lon[t])]
        try:
            t0 = time.perf_counter()
            plan_route(r, pts, max_snap_m=200.0)
            t1 = time.perf_counter()
            plan = plan_route(r, pts, max_snap_m=200.0, alternatives=3)
            t2 = time.perf_counter()
        except NoRouteError:
            continue
        t_main.append(t1 - t0)
        t_all.append(t2 - t1)
        counts.append(len(plan.alternatives))
    r.close()
    c = np.asarray(counts)
    a, m = np.asarray(t_all) * 1e3, np.asarray(t_main) * 1e3
    return (f"| {name} | {net.n_edges:,} | {pairs} | {(c >= 1).mean():.3f} | {c.mean():.2f} | "
            f"{np.percentile(a, 50):.1f} | {np.percentile(a, 99):.1f} | "
            f"{np.percentile(m, 50):.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    from graph.dimacs import load_dimacs
    from graph.io import load_network

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        ny = load_dimacs(DATA / "graphs" / "USA-road-t.NY.gr.gz", DATA / "graphs" / "USA-road-d.NY.co.gz")
        rows.append(_run("DIMACS NY", ny, args.pairs, cache))
        li = load_network(DATA / "osm" / "liechtenstein-latest.osm.pbf")
        rows.append(_run("Liechtenstein OSM (turn-expanded)", li, args.pairs, cache))
    text = "\n".join([
        f"Measured {utc_now()} on {machine_description()}; alternatives=3, random node pairs.",
        "",
        ("| network | edges | queries | share with >= 1 alternative | mean count | "
         "p50 ms (route + alternatives) | p99 ms | p50 ms (route only) |"),
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    print(text)
    if not args.no_append:
        append_section("## Alternative routes (graph.alternatives, issue 11 item 4)\n\n" + text)


if __name__ == "__main__":
    main()
