"""Map-matching throughput on a scenario's probes: matching alone, and validation + matching +
traversal extraction, replayed in event-time ticks. Appends a table to BENCHMARKS.md.

Each run builds its own route distances (graph.route_distances: bounded searches on demand,
cached), so every rate includes filling that cache from cold.

    .venv/bin/python benchmarks/matching.py [--scenario DIR] [--tick-s 10] [--repeat 3] [--note TEXT]
    .venv/bin/python benchmarks/matching.py --dimacs ../shared/data/graphs/USA-road-d.NY.gr.gz \
        [--sim-vehicles 2000] [--sim-duration-s 600] [--probes-cache FILE.parquet]

With ``--dimacs`` the network is a DIMACS graph and the probes come from traffic/simulate.py
(simulation time is reported apart; ``--probes-cache`` keeps them for the next run). For a
graph tiled by ../shared/tools/tile_network.py add ``--tile-base ../shared/data/graphs/USA-road-d.NY.gr.gz``:
the probes are simulated on that base graph and car i is copied into tile i mod K*K
(traffic/simulate.py routes with one-to-all Dijkstra, which at K=6 would hold ~29 GB per chunk).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from graph.osm import load_osm
from graph.spatial import build_spatial_index
from graph.route_distances import RouteDistances, build_route_distances
from traffic.matching import MatcherConfig, OnlineMatcher
from traffic.traversals import TraversalExtractor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import append_section, machine_description, utc_now  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _ticks(df: pl.DataFrame, tick_s: float) -> list[pl.DataFrame]:
    df = df.with_columns(((pl.col("t") - pl.col("t").min()) // tick_s).alias("_tick"))
    return [g.drop("_tick").sort(["vehicle_id", "t"])
            for _, g in df.sort("_tick").group_by("_tick", maintain_order=True)]


def run(net, index, batches, *, validate: bool) -> tuple[float, int, int, RouteDistances]:
    from traffic.probes import ProbeValidationConfig, VehicleLastSeen, validate_probes

    t0 = time.perf_counter()
    routes = build_route_distances(net)
    m, ex = OnlineMatcher(net, index, routes, MatcherConfig()), TraversalExtractor(net)
    last, vcfg, n_tr = VehicleLastSeen(), ProbeValidationConfig(), 0
    bbox = net.bbox  # once, as workers/ingest.py does: the property scans all geometry
    for b in batches:
        if validate:
            b = validate_probes(b, config=vcfg, now_s=float(b["t"].max()), bbox=bbox,
                                last_seen=last).accepted
        o = m.push(b["vehicle_id"].to_numpy(), b["t"].to_numpy(), b["lat"].to_numpy(),
                   b["lon"].to_numpy(), speed_mps=b["speed_mps"].to_numpy(),
                   heading_deg=b["heading_deg"].to_numpy())
        if validate:
            n_tr += len(ex.push(o))
    o = m.flush()
    n_tr += len(ex.push(o)) if validate else 0
    return time.perf_counter() - t0, sum(len(b) for b in batches), n_tr, routes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenario", default=str(ROOT.parent / "shared/data/scenario_kbh"))
    ap.add_argument("--tick-s", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--note", default="", help="a line added under the table (e.g. a baseline run)")
    ap.add_argument("--dimacs", default=None, help="a DIMACS .gr[.gz] network; probes simulated")
    ap.add_argument("--sim-vehicles", type=int, default=2000)
    ap.add_argument("--sim-duration-s", type=float, default=600.0)
    ap.add_argument("--probes-cache", default=None,
                    help="with --dimacs: parquet of the simulated probes, read if present, else written")
    ap.add_argument("--tile-base", default=None,
                    help="with --dimacs on a tile_network.py graph: simulate on this base DIMACS "
                         "graph and copy car i into tile i mod K*K")
    a = ap.parse_args()
    t0 = time.perf_counter()
    sim_note = ""
    if a.dimacs:
        from graph.dimacs import find_coordinates, load_dimacs

        net = load_dimacs(a.dimacs, find_coordinates(a.dimacs))
        label = Path(a.dimacs).name.split(".gr")[0]
    else:
        d = Path(a.scenario)
        net = load_osm(d / "network.osm.pbf")
        label = d.name
    index = build_spatial_index(net)
    t1 = time.perf_counter()
    warm = build_route_distances(net)  # load (or compile) the numba kernels
    warm.lookup([0], [0])
    warm.path_edges(net.edge_src, [0], [0])
    t2 = time.perf_counter()
    tb0 = time.perf_counter()
    build_route_distances(net)
    t_build = time.perf_counter() - tb0
    if not a.dimacs:
        probes = pl.read_parquet(d / "probes.parquet")
    elif a.probes_cache and Path(a.probes_cache).exists():
        probes = pl.read_parquet(a.probes_cache)
        tiled = f" on {Path(a.tile_base).name}, cars copied into the tiles" if a.tile_base else ""
        sim_note = f" Probes: {a.probes_cache} (traffic/simulate.py{tiled}, earlier run)."
    else:
        from traffic.simulate import SimConfig, simulate_probes

        ts = time.perf_counter()
        base = load_dimacs(a.tile_base, find_coordinates(a.tile_base)) if a.tile_base else net
        probes = pl.concat(list(simulate_probes(base, SimConfig(
            n_vehicles=a.sim_vehicles, duration_s=a.sim_duration_s))))
        sim_note = (f" Probes simulated by traffic/simulate.py ({a.sim_vehicles} cars, "
                    f"{a.sim_duration_s:g} s, one every 5 s) in {time.perf_counter() - ts:.0f} s")
        if a.tile_base:  # tile i = row i // K, column i % K; offsets from the tiles' first nodes
            n, k = base.n_nodes, round((net.n_nodes / base.n_nodes) ** 0.5)
            assert k * k * n == net.n_nodes, "--tile-base: the network is not K*K copies of it"
            dlon = float(net.node_lon[n] - net.node_lon[0]) if k > 1 else 0.0
            dlat = float(net.node_lat[k * n] - net.node_lat[0]) if k > 1 else 0.0
            tile = (pl.col("vehicle_id").rank("dense") - 1) % (k * k)
            probes = probes.with_columns(pl.col("lon") + (tile % k) * dlon,
                                         pl.col("lat") + (tile // k) * dlat)
            sim_note += f" on {Path(a.tile_base).name}, car i copied into tile i mod {k * k}"
        sim_note += "."
        if a.probes_cache:
            probes.write_parquet(a.probes_cache)
    batches = _ticks(probes, a.tick_s)
    rows = []
    for name, validate in (("matching only", False), ("validate+match+traversals", True)):
        rates = []
        for _ in range(a.repeat):
            secs, n, n_tr, routes = run(net, index, batches, validate=validate)
            rates.append(n / secs)
        rows.append((name, n, np.median(rates), np.min(rates), n_tr))
    st = routes.stats
    lines = [
        f"## Map matching throughput ({label})\n",
        f"`.venv/bin/python benchmarks/matching.py"
        + (f" --dimacs {a.dimacs} --sim-vehicles {a.sim_vehicles} --sim-duration-s "
           f"{a.sim_duration_s:g}" if a.dimacs else "")
        + (f" --tile-base {a.tile_base}" if a.tile_base else "")
        + (f" --probes-cache {a.probes_cache}" if a.dimacs and a.probes_cache else "")
        + f" --tick-s {a.tick_s:g} --repeat {a.repeat}` — "
        f"{utc_now()}, {machine_description(note='one used')} "
        "(other work may be running on the machine, so rates are lower bounds).\n",
        f"Network {net.n_nodes} nodes / {net.n_edges} edges; spatial index {t1 - t0:.2f} s with load, "
        f"{index.nbytes / 1e6:.1f} MB; "
        f"route distances on demand (bound {routes.bound_m:g} m; built in {t_build * 1e6:.0f} us, "
        f"kernels loaded in {t2 - t1:.2f} s): "
        f"per run {st['searches']} searches settling {st['reached']} nodes for "
        f"{st['lookups']} pair lookups, cache at the end {routes.cached_entries} entries, "
        f"{routes.nbytes / 1e6:.1f} MB.{sim_note}\n",
        "| pipeline | probes | median probes/s | worst probes/s | traversals |",
        "|---|---:|---:|---:|---:|",
        *[f"| {r[0]} | {r[1]} | {r[2]:,.0f} | {r[3]:,.0f} | {r[4]} |" for r in rows],
        *([f"\n{a.note}"] if a.note else []),
    ]
    print("\n".join(lines))
    if not a.no_append:
        append_section("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
