"""Time graph.osm.load_osm on the shared OSM extracts and the Helsinki sample.

For each file: the median and the slowest of N full imports (``load_osm``, including
``build_network``), next to the time pyosmium alone needs to scan the same file the same way
(node locations cached, ways and relations handed to Python, no work done on them): the
floor for any pyosmium-based loader. Prints a Markdown table and appends it to BENCHMARKS.md.

    .venv/bin/python benchmarks/osm_import.py [--runs 3] [--no-append]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import osmium

from graph.osm import load_osm_with_stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import append_section, machine_description, utc_now  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "osm"
FILES = [
    SHARED / "kbh.osm.pbf",
    SHARED / "liechtenstein-latest.osm.pbf",
    ROOT / "data" / "samples" / "helsinki.osm.pbf",
]
LIECHTENSTEIN_BUDGET_S = 5.0  # issue 2: import must take <= 5 s on the 2-core machine


def scan_only_s(path: Path) -> float:
    """Seconds for pyosmium to iterate the file as load_osm does, doing nothing per object."""
    t0 = time.perf_counter()
    processor = (
        osmium.FileProcessor(str(path))
        .with_locations()
        .with_filter(osmium.filter.EntityFilter(osmium.osm.WAY | osmium.osm.RELATION))
        .with_filter(osmium.filter.KeyFilter("highway", "type"))
    )
    for _ in processor:
        pass
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-append", action="store_true", help="print only")
    args = parser.parse_args(argv)

    rows = []
    for path in FILES:
        if not path.exists():
            print(f"skipping {path}: not present", file=sys.stderr)
            continue
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            net, stats = load_osm_with_stats(path)
            times.append(time.perf_counter() - t0)
        scan = statistics.median(scan_only_s(path) for _ in range(args.runs))
        rows.append(
            f"| `{path.name}` | {path.stat().st_size / 1e6:.1f} "
            f"| {net.n_nodes:,} | {net.n_edges:,} "
            f"| {net.turn_kind.size:,} | {statistics.median(times):.3f} | {max(times):.3f} "
            f"| {scan:.3f} |"
        )
        if (
            path.name.startswith("liechtenstein")
            and statistics.median(times) > LIECHTENSTEIN_BUDGET_S
        ):
            print(
                f"WARNING: {path.name} import over the {LIECHTENSTEIN_BUDGET_S} s budget",
                file=sys.stderr,
            )

    date = utc_now()
    table = "\n".join(
        [
            f"## OSM import (`graph.osm.load_osm`), {date}",
            "",
            f"Command: `.venv/bin/python benchmarks/osm_import.py --runs {args.runs}`; "
            f"machine: {machine_description()}. Median and slowest of {args.runs} full imports "
            "(read + split + `build_network`); *pyosmium scan* is the median time pyosmium "
            "alone takes to hand the same ways and relations to Python (the floor). "
            f"Budget: Liechtenstein <= {LIECHTENSTEIN_BUDGET_S:.0f} s.",
            "",
            "| file | MB | nodes | edges | turn restrictions "
            "| median s | max s | pyosmium scan s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    print(table)
    if not args.no_append:
        append_section(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
