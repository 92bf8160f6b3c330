"""Fuzz the HTTP API from its OpenAPI schema: N cases per endpoint, zero 5xx, error shape.

Builds the real app over in-process services on a real network (the kbh extract from
../shared/data by default), runs schemathesis' positive and negative cases against every
operation of ``/openapi.json`` (see ``tests/fuzzing.py``), prints a Markdown table of the
statuses seen per endpoint and appends it to BENCHMARKS.md. Exits 1 on any failure.

    .venv/bin/python benchmarks/fuzz.py [--cases 1000] [--seed 0] [--network FILE] [--no-append]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import append_section, machine_description, utc_now  # noqa: E402
from fuzzing import format_table, fuzz_app  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000,
                        help="cases per endpoint (half schema-valid, half schema-violating)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--network", type=Path,
                        default=ROOT.parent / "shared" / "data" / "osm" / "kbh.osm.pbf")
    parser.add_argument("--no-append", action="store_true", help="print only")
    args = parser.parse_args(argv)

    from api.app import create_app
    from api.settings import Settings
    from graph.io import load_network
    from workers.services import LocalServices, PipelineConfig

    net = load_network(args.network)
    with tempfile.TemporaryDirectory(prefix="fuzz-") as data_dir:
        services = LocalServices(net, PipelineConfig(clock="event", data_dir=data_dir))
        app = create_app(services, Settings(clock="event"))
        t0 = time.perf_counter()
        reports = fuzz_app(app, max_examples=max(1, args.cases // 2), seed=args.seed)
        wall_s = time.perf_counter() - t0
        services.close()
    table = format_table(reports)
    total = sum(r.cases for r in reports.values())
    n5xx = sum(n for r in reports.values() for s, n in r.statuses.items() if s >= 500)
    failures = [f"{name}: {f}" for name, r in reports.items() for f in r.failures]
    summary = (f"{total:,} cases over {len(reports)} operations in {wall_s:.0f} s; "
               f"5xx: {n5xx}; failures (5xx, or a 4xx without the error shape): {len(failures)}. "
               "Operations without inputs (`/healthz`, `/v1/status`, ...) have one distinct "
               "case per seed; schemathesis stops there. Where nothing can violate the schema "
               "(`/v1/network/jobs/{job_id}`), the negative half is more positive cases.")
    print(table)
    print(summary)
    for f in failures[:20]:
        print(f[:500], file=sys.stderr)
    if not args.no_append:
        date = utc_now()
        section = "\n".join([
            f"## API fuzzing (schemathesis): `python benchmarks/fuzz.py --cases {args.cases} "
            f"--seed {args.seed}`", "",
            f"{date}; {machine_description()}; network `{args.network.name}` ({net.n_edges:,} edges), "
            "in-process services, open mode.", "", table, "", summary, ""])
        append_section(section)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
