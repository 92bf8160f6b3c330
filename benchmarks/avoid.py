"""Per-request avoids on DIMACS New York (issue 11 item 5): polygon avoid and exclude latency.

    .venv/bin/python benchmarks/avoid.py [--routes 300] [--no-append]

Everything goes through ``RouterCore.route`` (what a router replica answers, JSON included),
on live weights (free-flow times times a random factor per edge):

1. ``avoid``: for random node pairs, the fastest route is computed, a square of about 1 km^2
   (+-500 m) is centred at a random point of its geometry (middle 80 %), and the route is
   asked again with that square as a GeoJSON ``avoid`` (parse, polygon edges, the pooled
   metric's partial re-customization, the search, the answer). Pairs whose end lies in the
   square are skipped. Once with the live weights fixed, once with a live delta of 0.1 % of
   the edges applied after every 10 requests (the pooled metrics then also catch up with it).
2. ``exclude``: DIMACS has no road classes, so the edges with free-flow speed >= 22 m/s (the
   fastest few per cent, the graph's expressways) are labelled ``motorway`` in a copy of the
   network (same version, same CCH). Costs of ``exclude=motorway`` routes: the first
   (a new metric), repeated ones on the same weights (cached), the first after a live delta
   of 0.1 % of the edges (partial), the first after a whole new vector (full).

A shared 2-core machine: other work runs beside it; compare rows of one run only.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import append_section, machine_description, utc_now  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "graphs"
CACHE = Path("/tmp/traffic-bench-cache")
HALF_M = 500.0


def _pct(xs: list[float]) -> str:
    a = np.asarray(xs) * 1e3
    return f"{np.percentile(a, 50):.1f} / {np.percentile(a, 99):.1f}"


def _square(lat: float, lon: float) -> dict:
    dlat = HALF_M / 110_574.0
    dlon = HALF_M / (111_320.0 * np.cos(np.radians(lat)))
    ring = [[lon - dlon, lat - dlat], [lon + dlon, lat - dlat], [lon + dlon, lat + dlat],
            [lon - dlon, lat + dlat], [lon - dlon, lat - dlat]]
    return {"type": "Polygon", "coordinates": [ring]}


def bench_avoid(core, net, rng, n_routes: int, *, delta_every: int = 0) -> dict:
    from graph.errors import NoCandidateError, NoRouteError

    times, closed_s, sync_s, n_edges, modes = [], [], [], [], {}
    plain_s = []
    no_route = skipped = 0
    base_tt = np.array(core.router._metric.travel_time_s)
    version = 1000
    while len(times) + no_route < n_routes:
        u, v = rng.integers(net.n_nodes, size=2)
        a = (float(net.node_lat[u]), float(net.node_lon[u]))
        b = (float(net.node_lat[v]), float(net.node_lon[v]))
        try:
            t0 = time.perf_counter()
            plain = core.route(a, b)
            plain_s.append(time.perf_counter() - t0)
        except (NoRouteError, NoCandidateError):
            continue
        coords = plain["geometry"]["coordinates"]
        if len(coords) < 5:
            continue
        k = int(rng.integers(len(coords) // 10, len(coords) - len(coords) // 10))
        poly = _square(coords[k][1], coords[k][0])
        ring = np.asarray(poly["coordinates"][0])
        if any(ring[:, 0].min() <= p[1] <= ring[:, 0].max() and
               ring[:, 1].min() <= p[0] <= ring[:, 1].max() for p in (a, b)):
            skipped += 1
            continue
        if delta_every and (len(times) + no_route) % delta_every == 0:
            edges = rng.choice(net.n_edges, net.n_edges // 1000, replace=False)
            version += 1
            core.router.update_edges(edges, base_tt[edges] * rng.uniform(0.8, 1.5, edges.size),
                                     str(version))
        t0 = time.perf_counter()
        try:
            core.route(a, b, avoid=poly)
        except NoRouteError:
            no_route += 1
            continue
        finally:
            dt = time.perf_counter() - t0
        times.append(dt)
        last = core.avoid_router().last
        closed_s.append(last["closed_s"])
        sync_s.append(last["sync_s"])
        n_edges.append(last["area_edges"])
        modes[last["mode"]] = modes.get(last["mode"], 0) + 1
    return {"times": times, "closed": closed_s, "sync": sync_s, "edges": n_edges,
            "modes": modes, "no_route": no_route, "skipped": skipped, "plain": plain_s}


def bench_exclude(net, index, rng, n: int = 30) -> list[tuple[str, str]]:
    from graph.errors import NoCandidateError, NoRouteError
    from graph.network import ROAD_CLASS_INDEX
    from workers.router import RouterCore

    fast = net.edge_freeflow_mps >= 22.0
    rc = np.where(fast, ROAD_CLASS_INDEX["motorway"], net.edge_road_class).astype(np.int8)
    net2 = dataclasses.replace(net, edge_road_class=rc)
    core = RouterCore(net2, index=index)
    tt = net.edge_freeflow_time_s * rng.uniform(1.0, 2.0, net.n_edges)
    core.update(1, 0.0, tt)
    pairs = []
    while len(pairs) < n:
        u, v = rng.integers(net.n_nodes, size=2)
        a = (float(net.node_lat[u]), float(net.node_lon[u]))
        b = (float(net.node_lat[v]), float(net.node_lon[v]))
        try:
            core.route(a, b, exclude=("motorway",))
            pairs.append((a, b))
        except (NoRouteError, NoCandidateError):
            continue
    # The loop above customized the class metric (the first request); measure a fresh one.
    core2 = RouterCore(net2, index=index)
    core2.update(1, 0.0, tt)
    t0 = time.perf_counter()
    core2.route(*pairs[0], exclude=("motorway",))
    first = time.perf_counter() - t0
    cached, plain, after_delta, after_full = [], [], [], []
    for a, b in pairs:
        t0 = time.perf_counter()
        core2.route(a, b)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        core2.route(a, b, exclude=("motorway",))
        cached.append(time.perf_counter() - t0)
    for i in range(min(n, 10)):
        edges = rng.choice(net.n_edges, net.n_edges // 1000, replace=False)
        core2.router.update_edges(edges, tt[edges] * rng.uniform(0.8, 1.5, edges.size), f"d{i}")
        t0 = time.perf_counter()
        core2.route(*pairs[i], exclude=("motorway",))
        after_delta.append(time.perf_counter() - t0)
        assert core2.avoid_router().last["mode"] == "partial"
    for i in range(5):
        core2.router.customize(tt * rng.uniform(0.9, 1.1, net.n_edges), f"f{i}")
        t0 = time.perf_counter()
        core2.route(*pairs[i], exclude=("motorway",))
        after_full.append(time.perf_counter() - t0)
    core.router.close()
    core2.router.close()
    share = fast.mean() * 100
    return [
        (f"exclude=motorway, first request (new metric; {fast.sum()} edges = {share:.1f} % closed)",
         f"{first * 1e3:.1f}"),
        ("exclude=motorway, same weights version (cached metric), p50 / p99", _pct(cached)),
        ("plain route on the same pairs, p50 / p99", _pct(plain)),
        ("exclude=motorway, first after a live delta of 0.1 % of edges (partial), p50 / p99",
         _pct(after_delta)),
        ("exclude=motorway, first after a whole new live vector (full reset), p50 / p99",
         _pct(after_full)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--routes", type=int, default=300)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    from graph.dimacs import load_dimacs
    from workers.router import RouterCore

    net = load_dimacs(DATA / "USA-road-t.NY.gr.gz", DATA / "USA-road-d.NY.co.gz")
    core = RouterCore(net, cache_dir=str(CACHE))
    rng = np.random.default_rng(7)
    core.update(1, 0.0, net.edge_freeflow_time_s * rng.uniform(1.0, 2.0, net.n_edges))
    fixed = bench_avoid(core, net, rng, args.routes)
    moving = bench_avoid(core, net, rng, args.routes // 2, delta_every=10)
    pool = core.avoid_router()
    rows = [
        (f"avoid ~1 km^2 on the fastest route, weights fixed ({len(fixed['times'])} routes), "
         f"p50 / p99", _pct(fixed["times"])),
        ("  of which polygon edges (parse, grid rows, shapely intersects)", _pct(fixed["closed"])),
        ("  of which pooled metric update (weights copy, diff, partial update)",
         _pct(fixed["sync"])),
        ("  plain route on the same pairs (inline path), p50 / p99", _pct(fixed["plain"])),
        (f"avoid, a live delta of 0.1 % of edges every 10 routes ({len(moving['times'])} "
         f"routes), p50 / p99", _pct(moving["times"])),
        ("  of which pooled metric update", _pct(moving["sync"])),
    ]
    rows += bench_exclude(net, core.index, rng)
    core.router.close()
    e = np.asarray(fixed["edges"])
    head = (f"DIMACS NY (730,100 edges), in process (RouterCore.route: the replica's work, "
            f"JSON included, no HTTP); closed edges per polygon p50 {np.median(e):.0f}, "
            f"max {e.max()}; update modes (fixed weights) {fixed['modes']}, (moving) "
            f"{moving['modes']}; no route {fixed['no_route']} + {moving['no_route']}; pairs "
            f"skipped with an end in the square {fixed['skipped'] + moving['skipped']}; pool "
            f"{pool._n_slots} metric(s)")
    lines = ["| measure | ms |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    text = "\n".join([head, "", *lines])
    print(text)
    if not args.no_append:
        append_section(
            f"## Per-request avoids (issue 11 item 5)\n\n`.venv/bin/python benchmarks/avoid.py "
            f"--routes {args.routes}`, {utc_now()}, {machine_description()}. Shared machine, "
            f"other engineers' jobs running: noisy.\n\n{text}\n")


if __name__ == "__main__":
    main()
