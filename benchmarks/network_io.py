"""Time network I/O: DIMACS NY import, compiled save/load (NY, Liechtenstein), GeoJSON.

Each operation runs N times (default 5) and is reported as min / median / max seconds (with
five runs a p99 says nothing). Peers run in the same process, side by side: for the
compiled load, *read floor* is ``numpy.load`` of the same arrays from a plain ``.npz`` (no
header, no checks) and *content hash* is what ``load_compiled(verify=True)`` adds.
Prints a Markdown table and appends it to BENCHMARKS.md.

    .venv/bin/python benchmarks/network_io.py [--runs 5] [--no-append]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from graph.dimacs import find_coordinates, load_dimacs
from graph.geojson import export_geojson, load_geojson
from graph.io import load_compiled, save_network
from graph.network import content_version

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import append_section, machine_description, utc_now  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
NY_GR = SHARED / "graphs" / "USA-road-t.NY.gr.gz"
LI_PBF = SHARED / "osm" / "liechtenstein-latest.osm.pbf"
COMPILED_NY_BUDGET_S = 0.3  # issue 2: the compiled NY network loads in <= 0.3 s


def timed(fn: Callable[[], object], runs: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def row(what: str, size: str, times: list[float], note: str = "") -> str:
    return (f"| {what} | {size} | {min(times):.3f} | {statistics.median(times):.3f} "
            f"| {max(times):.3f} | {note} |")


def bench_network(label: str, net, runs: int, tmp: Path) -> list[str]:
    rows = []
    size = f"{net.n_nodes:,} nodes, {net.n_edges:,} edges"
    path = tmp / f"{label}.net"
    t_save, _ = timed(lambda: save_network(net, path), runs)
    mb = path.stat().st_size / 1e6
    rows.append(row(f"{label}: compiled save (fsync, rename)", size, t_save, f"{mb:.1f} MB"))
    t_load, back = timed(lambda: load_compiled(path), runs)
    assert back.version == net.version
    budget = ""
    if label == "NY":
        ok = statistics.median(t_load) <= COMPILED_NY_BUDGET_S
        budget = f"budget {COMPILED_NY_BUDGET_S} s: {'met' if ok else 'MISSED'}"
    rows.append(row(f"{label}: compiled load", size, t_load, budget))
    plain = tmp / f"{label}.npz"
    np.savez(plain, **net.arrays())

    def read_floor():
        with np.load(plain) as z:
            return {k: z[k] for k in z.files}

    t_floor, _ = timed(read_floor, runs)
    rows.append(row(f"{label}: read floor (numpy.load .npz)", size, t_floor, "peer"))
    arrays = net.arrays()
    t_hash, _ = timed(lambda: content_version(arrays), runs)
    rows.append(row(f"{label}: content hash alone", size, t_hash, "what verify=True adds"))
    t_verify, _ = timed(lambda: load_compiled(path, verify=True), runs)
    rows.append(row(f"{label}: compiled load, verify=True", size, t_verify, "hash recomputed"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-append", action="store_true", help="print only")
    args = parser.parse_args(argv)
    runs = args.runs
    rows: list[str] = []

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if NY_GR.exists():
            co = find_coordinates(NY_GR)
            t_dimacs, ny = timed(lambda: load_dimacs(NY_GR, co), runs)
            size = f"{ny.n_nodes:,} nodes, {ny.n_edges:,} edges"
            rows.append(row("NY: DIMACS import (.gr.gz + .co.gz)", size, t_dimacs,
                            "733,846 arcs parsed"))
            rows += bench_network("NY", ny, runs, tmp)
            del ny
        else:
            print(f"skipping NY: {NY_GR} not present", file=sys.stderr)
        if LI_PBF.exists():
            from graph.osm import load_osm

            li = load_osm(LI_PBF)
            rows += bench_network("Liechtenstein", li, runs, tmp)
            size = f"{li.n_nodes:,} nodes, {li.n_edges:,} edges"
            gj = tmp / "li.geojson"
            t_exp, _ = timed(lambda: export_geojson(li, gj), runs)
            rows.append(row("Liechtenstein: GeoJSON export", size, t_exp,
                            f"{gj.stat().st_size / 1e6:.1f} MB"))
            t_imp, back = timed(lambda: load_geojson(gj), runs)
            same = "same version" if back.version == li.version else "VERSION DIFFERS"
            rows.append(row("Liechtenstein: GeoJSON import", size, t_imp, same))
        else:
            print(f"skipping Liechtenstein: {LI_PBF} not present", file=sys.stderr)

    date = utc_now()
    table = "\n".join([
        f"## Network I/O (`graph.dimacs`, `graph.io`, `graph.geojson`), {date}",
        "",
        f"Command: `.venv/bin/python benchmarks/network_io.py --runs {runs}`; "
        f"machine: {machine_description()}. Seconds over {runs} runs (min / median / max; no p99 "
        "for so few runs). Files in a temporary directory (page cache warm after the "
        "first run).",
        "",
        "| operation | network | min s | median s | max s | note |",
        "|---|---|---:|---:|---:|---|",
        *rows,
        "",
    ])
    print(table)
    if not args.no_append:
        append_section(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
