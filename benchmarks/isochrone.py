"""Isochrone latency on DIMACS New York (graph.isochrone, as ``GET /v1/isochrone`` runs it in
the router). Appends a table to BENCHMARKS.md.

Origins are random edges; the travel times are free-flow times scaled by a random factor
per edge (1-2x), as live weights would be. Timed: one request = the bounded search, the
stretches, the samples and the polygons (the network's EdgeGeometry is built once, as the
router keeps it).

    .venv/bin/python benchmarks/isochrone.py [--requests 100] [--minutes 15]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import append_section, machine_description, utc_now  # noqa: E402

from graph.io import load_network  # noqa: E402
from graph.isochrone import EdgeGeometry, isochrones  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graph", default=str(ROOT.parent / "shared/data/graphs/USA-road-d.NY.gr.gz"))
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--minutes", default="15", help="comma-separated contours")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    net = load_network(args.graph)
    rng = np.random.default_rng(0)
    tt = (np.asarray(net.edge_length_m) / np.asarray(net.edge_freeflow_mps)
          * rng.uniform(1.0, 2.0, net.n_edges))
    t0 = time.perf_counter()
    geometry = EdgeGeometry(net)
    geom_s = time.perf_counter() - t0
    minutes = [float(m) for m in args.minutes.split(",")]
    rows = []
    for reverse in (False, True):
        lat, area = [], []
        isochrones(net, tt, np.array([0]), np.array([0.0]), minutes, geometry=geometry)  # jit
        for _ in range(args.requests):
            e = int(rng.integers(net.n_edges))
            t0 = time.perf_counter()
            cs = isochrones(net, tt, np.array([e]), np.array([0.0]), minutes,
                            reverse=reverse, geometry=geometry)
            lat.append(time.perf_counter() - t0)
            area.append(cs[-1].area_km2)
        ms = np.asarray(lat) * 1e3
        rows.append(f"| {'reverse' if reverse else 'forward'} | {args.minutes} | "
                    f"{np.median(ms):.1f} | {np.percentile(ms, 99):.1f} | "
                    f"{np.median(area):.1f} |")
    text = "\n".join([
        f"## Isochrones on {Path(args.graph).name} ({net.n_edges:,} edges)",
        "",
        f"`.venv/bin/python benchmarks/isochrone.py --requests {args.requests} "
        f"--minutes {args.minutes}` — {utc_now()} — {machine_description()}",
        "",
        f"{args.requests} random origins per direction; free-flow times x U(1, 2) per edge; "
        f"60-m cells. EdgeGeometry (once per network, kept by the router): {geom_s * 1e3:.0f} ms. "
        "Target: p50 <= 200 ms for 15 minutes.",
        "",
        "| direction | minutes | p50 ms | p99 ms | median area km² (largest contour) |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ])
    print(text)
    if not args.no_append:
        append_section(text)


if __name__ == "__main__":
    main()
