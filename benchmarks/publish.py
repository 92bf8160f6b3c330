"""Publication and customization costs at scale: full vectors against deltas (issue 10).

    .venv/bin/python benchmarks/publish.py [--k2 /tmp/k2] [--no-append]

On DIMACS New York (730k edges), and on a K=2 tiling when ``--k2 PREFIX`` names one made by
``python3 ../shared/tools/tile_network.py --k 2 -o PREFIX`` (never committed):

1. publication cost: ``EstimatorCore.publish`` of a full vector against a delta of the edges
   folded since the last publication (1k and 10k traversals per refresh), ms and bytes, and
   on NY the in-process router taking it (``RouterCore.apply_publication``);
2. re-customizing the idle metric against the changed fraction: RoutingKit's partial updater
   (in chunks of ``PARTIAL_CHUNK_ARCS``) against a full ``CCHMetric.reset``, medians of 3;
   the crossover is where they cost the same (``graph.cch.FULL_CUSTOMIZE_FRACTION``);
3. how long each way holds the GIL: the longest gap of a thread that wakes every 0.5 ms while
   another customizes;
4. route latency while customizations run: the API's fast path (a CCH search on the event-loop
   thread with its own query objects) driven open loop at a fixed rate on an asyncio loop in
   this process, while a writer thread applies updates back to back. Not over HTTP (serving NY
   over HTTP needs the whole pipeline); it measures what a customization does to the loop.

Everything runs on a shared 2-core machine; compare rows of one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import append_section, machine_description, utc_now  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "graphs"
CACHE = Path("/tmp/traffic-bench-cache")


def _ms(a) -> float:
    return float(np.median(a) * 1e3)


def publication_rows(net, label: str, router_core=None, *, refreshes: int = 5) -> list[str]:
    from traffic.estimator import TraversalBatch
    from workers.estimator import EstimatorCore, EstimatorServiceConfig

    rows = []
    rng = np.random.default_rng(1)
    for n_trav in (1_000, 10_000):
        est = EstimatorCore(net, EstimatorServiceConfig(clock="event", full_every_s=1e12))
        est.publish()
        t = 1.7e9
        full_s, delta_s, apply_full_s, apply_delta_s, delta_b = [], [], [], [], []
        for _ in range(refreshes):
            t += 1.0
            edge = rng.integers(0, net.n_edges, n_trav).astype(np.int32)
            est.fold(TraversalBatch(edge, np.full(n_trav, t - 5), np.full(n_trav, t),
                                    1.0 / rng.uniform(2, 40, n_trav), np.ones(n_trav)), n_trav)
            t0 = time.perf_counter()
            pub = est.publish(full=False)
            delta_s.append(time.perf_counter() - t0)
            delta_b.append(pub.nbytes)
            if router_core is not None:
                t0 = time.perf_counter()
                router_core.apply_publication(pub)
                apply_delta_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            full = est.publish(full=True)
            full_s.append(time.perf_counter() - t0)
            if router_core is not None:
                t0 = time.perf_counter()
                # a vector that differs from both buffers everywhere: the full-vector path
                router_core.router.customize(full.travel_time_s * (1 + 0.01 * len(apply_full_s)),
                                             f"full{len(apply_full_s)}")
                apply_full_s.append(time.perf_counter() - t0)
                router_core.apply_publication(est.publish(full=True))  # back in step
        rows.append(f"| {label} | {net.n_edges:,} | {n_trav:,} | full | {_ms(full_s):.1f} | "
                    f"{full.nbytes / 1e6:.2f} MB | "
                    f"{'' if not apply_full_s else f'{_ms(apply_full_s):.0f}'} |")
        rows.append(f"| {label} | {net.n_edges:,} | {n_trav:,} | delta | {_ms(delta_s):.2f} | "
                    f"{np.median(delta_b) / 1e3:.1f} kB | "
                    f"{'' if not apply_delta_s else f'{_ms(apply_delta_s):.1f}'} |")
    return rows


def customization_rows(net, index) -> tuple[list[str], float]:
    from graph.cch import PARTIAL_CHUNK_ARCS, customize, recustomize

    base = np.asarray(net.edge_freeflow_time_s, dtype=np.float64)
    metric = customize(index, base, "base")
    rng = np.random.default_rng(2)
    rows, curve = [], []
    for frac in (1e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 3e-2):
        k = max(1, int(frac * net.n_edges))
        res = {}
        for mode, ff, chunk in (("partial", np.inf, PARTIAL_CHUNK_ARCS), ("partial1", np.inf, 10**9),
                                ("full", 0.0, PARTIAL_CHUNK_ARCS)):
            ts = []
            for _ in range(5):
                e = rng.choice(net.n_edges, k, replace=False)
                recustomize(metric, e, base[e] * rng.uniform(1.5, 3.0, k), "x", full_fraction=ff,
                            chunk_arcs=chunk, pause=0.0)
                ts.append(metric.customize_s + metric.convert_s)
                recustomize(metric, e, base[e], "base", full_fraction=np.inf, pause=0.0)  # back
            res[mode] = _ms(ts)
        curve.append((frac, res["partial"], res["full"]))
        rows.append(f"| {frac:.2%} | {k:,} | {res['partial']:.1f} | {res['partial1']:.1f} | "
                    f"{res['full']:.1f} |")
    # crossover: first fraction where chunked partial >= full, interpolated in log space
    cross = float("nan")
    for (f0, p0, q0), (f1, p1, q1) in zip(curve, curve[1:]):
        if p0 < q0 and p1 >= q1:
            d0, d1 = np.log(p0 / q0), np.log(p1 / q1)
            cross = float(np.exp(np.log(f0) + (np.log(f1) - np.log(f0)) * (-d0) / (d1 - d0)))
            break
    return rows, cross


def gil_rows(net, index) -> list[str]:
    import routingkit_cch as rk

    from graph.cch import _weights_arg, customize, recustomize, travel_times_to_ms

    base = np.asarray(net.edge_freeflow_time_s, dtype=np.float64)
    metric = customize(index, base, "b")
    w = _weights_arg(travel_times_to_ms(base * 1.1))
    rng = np.random.default_rng(3)

    def gap(fn) -> tuple[float, float]:
        gaps = []
        th = threading.Thread(target=fn)
        t0 = last = time.perf_counter()
        th.start()
        while th.is_alive():
            time.sleep(0.0005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        return (time.perf_counter() - t0) * 1e3, max(gaps) * 1e3

    out = []
    k = int(1e-3 * net.n_edges)

    def partial(**kw):
        e = rng.choice(net.n_edges, k, replace=False)
        recustomize(metric, e, base[e] * rng.uniform(1.5, 3.0, k), "p", full_fraction=np.inf, **kw)

    cases = [("new metric (`CCHMetric(...)`, before this change)", lambda: rk.CCHMetric(index.cch, w)),
             ("full re-customization (`CCHMetric.reset`)", lambda: metric._metric.reset(w)),
             ("partial, 0.1% edges, chunked and paced (as served)", lambda: partial()),
             ("partial, 0.1% edges, one call", lambda: partial(chunk_arcs=10**9))]
    for name, fn in cases:
        res = [gap(fn) for _ in range(3)]
        out.append(f"| {name} | {np.median([r[0] for r in res]):.0f} | "
                   f"{np.median([r[1] for r in res]):.1f} | {max(r[1] for r in res):.1f} |")
    return out


def latency_rows(net, index, spatial, *, rate_hz: float, seconds: float) -> list[str]:
    from graph.cch import customize
    from graph.errors import NoRouteError
    from graph.query_threads import CallerQueries
    from graph.router import Router

    rng = np.random.default_rng(4)
    base = np.asarray(net.edge_freeflow_time_s, dtype=np.float64)
    r = Router(net, index=index, spatial=spatial)
    r.customize(base * 1.01, "warm")
    nodes = rng.integers(0, net.n_nodes, (4000, 2))
    pairs = [((float(net.node_lat[s]), float(net.node_lon[s])),
              (float(net.node_lat[t]), float(net.node_lon[t]))) for s, t in nodes]
    k_small = int(1e-3 * net.n_edges)

    def writer_for(kind: str, stop: threading.Event, counter: list[int]):
        def run():
            i = 0
            while not stop.is_set() and kind != "none":
                i += 1
                if kind == "delta 0.1% (partial)":
                    e = rng.choice(net.n_edges, k_small, replace=False)
                    r.update_edges(e, base[e] * rng.uniform(1, 3, e.size), f"d{i}")
                elif kind == "full vector (reset)":
                    r.customize(base * (1 + 0.01 * (i % 7)), f"f{i}")
                elif kind == "new metric per update (before)":
                    customize(index, base * (1 + 0.01 * (i % 7)), f"n{i}")
                counter[0] += 1
                time.sleep(0.05)
        return run

    rows = []
    for kind in ("none", "delta 0.1% (partial)", "full vector (reset)",
                 "new metric per update (before)"):
        stop, counter = threading.Event(), [0]
        th = threading.Thread(target=writer_for(kind, stop, counter))

        async def drive():
            mine = CallerQueries()
            loop = asyncio.get_running_loop()
            lat = []
            t_start = loop.time()
            n = int(rate_hz * seconds)
            for i in range(n):
                due = t_start + i / rate_hz
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                a, b = pairs[i % len(pairs)]
                try:
                    r.route(a, b, on_caller=True, caller_queries=mine)
                except NoRouteError:
                    pass
                lat.append(loop.time() - due)
            mine.close()
            return np.asarray(lat) * 1e3

        th.start()
        lat = asyncio.run(drive())
        stop.set()
        th.join()
        rows.append(f"| {kind} | {counter[0]} | {np.percentile(lat, 50):.2f} | "
                    f"{np.percentile(lat, 99):.1f} | {lat.max():.1f} |")
    rows.append(f"|  fallbacks to a new metric: {r.fallbacks} | | | | |")
    r.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k2", help="prefix of a K=2 tiling (PREFIX.gr.gz, PREFIX.co.gz)")
    ap.add_argument("--rate-hz", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()

    from graph.cch import FULL_CUSTOMIZE_FRACTION, PARTIAL_CHUNK_ARCS, prepare_cch
    from graph.dimacs import load_dimacs
    from graph.spatial import build_spatial_index
    from workers.router import RouterCore

    net = load_dimacs(DATA / "USA-road-t.NY.gr.gz", DATA / "USA-road-d.NY.co.gz")
    index = prepare_cch(net, cache_dir=CACHE)
    spatial = build_spatial_index(net)
    core = RouterCore(net, index=index)
    pub_rows = publication_rows(net, "NY", core)
    if args.k2:
        k2 = load_dimacs(Path(args.k2 + ".gr.gz"), Path(args.k2 + ".co.gz"))
        pub_rows += publication_rows(k2, "K=2", None)
        del k2
    cust_rows, cross = customization_rows(net, index)
    gil = gil_rows(net, index)
    lat = latency_rows(net, index, spatial, rate_hz=args.rate_hz, seconds=args.seconds)

    cmd = "python benchmarks/publish.py" + (f" --k2 {args.k2}" if args.k2 else "")
    text = "\n".join([
        f"## Publications: full vs delta, double-buffered customization ({cmd})",
        "",
        f"{utc_now()}; {machine_description()}. Shared machine: compare rows of this run only.",
        "",
        "Publication cost per refresh: `EstimatorCore.publish` (full: the whole vector; delta: "
        "the edges folded since the last publication), and the in-process router taking it "
        "(`RouterCore.apply_publication`; full: `Router.customize` of a changed vector). Medians of 5.",
        "",
        "| network | edges | traversals per refresh | publication | publish ms | bytes | router apply ms |",
        "|---|---|---|---|---|---|---|",
        *pub_rows,
        "",
        f"Re-customizing the idle metric on NY, medians of 5 (ms of compute; the served partial update also pauses between chunks): partial in chunks of "
        f"{PARTIAL_CHUNK_ARCS} arcs (as served), partial in one call, full `CCHMetric.reset`. "
        f"Crossover (chunked partial = full): **{cross:.2%}** of edges; "
        f"`graph.cch.FULL_CUSTOMIZE_FRACTION` = {FULL_CUSTOMIZE_FRACTION:.2%}.",
        "",
        "| changed edges | count | partial, chunked | partial, one call | full reset |",
        "|---|---|---|---|---|",
        *cust_rows,
        "",
        "GIL held while customizing NY in another thread (a thread waking every 0.5 ms; ms, 3 runs):",
        "",
        "| customization | total ms (median) | longest gap, median | longest gap, max |",
        "|---|---|---|---|",
        *gil,
        "",
        f"Route latency on the event-loop thread (the API's GET /v1/route fast path: snap + "
        f"CCH search with the loop's CallerQueries), open loop at {args.rate_hz:g}/s for "
        f"{args.seconds:g} s, latency from each request's due time, while a writer thread "
        f"updates the router back to back (50 ms apart). In process, not over HTTP.",
        "",
        "| updates running | updates done | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        *lat,
        "",
    ])
    print(text)
    if not args.no_append:
        append_section(text)


if __name__ == "__main__":
    main()
