"""Closure latency over HTTP on the Ray server: from ``POST /v1/closures`` to the first
``GET /v1/route`` that goes round the closed road (and from ``DELETE`` back). Appends a table
to BENCHMARKS.md. tests/test_closures_ray.py runs a short variant with a loose bound.

Starts ``traffic serve`` (Ray, router replicas as asked) on the scenario's network, picks a
route, and repeats: close two of its middle edges, poll the route every 20 ms until it
avoids them; delete the closure, poll until the route is the original again.

    .venv/bin/python benchmarks/closures.py [--cycles 20] [--router-replicas 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
from _report import append_section, machine_description, utc_now  # noqa: E402
from common import serve_url  # noqa: E402

A, B = "55.68176,12.55832", "55.6700,12.5750"


def start(network: Path, data_dir: Path, replicas: int) -> tuple[subprocess.Popen, str, Path]:
    """``traffic serve`` with Ray on ``network``; returns the process, its URL and log."""
    log = data_dir.parent / "closures-serve.log"
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--network", str(network), "--port", "0",
             "--data-dir", str(data_dir), "--router-replicas", str(replicas),
             "--snapshot-every", "0"],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    return proc, serve_url(proc, log), log


def until(c: httpx.Client, ok, timeout_s: float) -> float:
    """Seconds until ``ok(route)`` holds for the answer of GET /v1/route (polled)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if ok(c.get("/v1/route", params={"from": A, "to": B}).json()["edges"]):
            return time.perf_counter() - t0
        time.sleep(0.02)
    raise TimeoutError(f"no effect within {timeout_s} s")


def measure(url: str, cycles: int, timeout_s: float = 10.0) -> tuple[list[float], list[float]]:
    """``(close delays, reopen delays)`` in seconds over ``cycles`` add/remove rounds."""
    close_s, open_s = [], []
    with httpx.Client(base_url=url, timeout=30) as c:
        base = c.get("/v1/route", params={"from": A, "to": B}).json()["edges"]
        mid = base[len(base) // 2: len(base) // 2 + 2]
        for _ in range(cycles):
            r = c.post("/v1/closures", json={"kind": "closure", "end_t": time.time() + 3600,
                                              "geometry": {"edge_keys": mid}})
            r.raise_for_status()
            close_s.append(until(c, lambda e: not set(mid) & set(e), timeout_s))
            c.delete(f"/v1/closures/{r.json()['id']}").raise_for_status()
            open_s.append(until(c, lambda e: e == base, timeout_s))
    return close_s, open_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--network", default=str(ROOT.parent / "shared/data/scenario_kbh/network.osm.pbf"))
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--router-replicas", type=int, default=1)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, _ = start(Path(args.network), Path(tmp) / "data", args.router_replicas)
        try:
            close_s, open_s = measure(url, args.cycles)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    rows = [f"| {name} | {len(v)} | {np.median(v) * 1e3:.0f} | {np.percentile(v, 99) * 1e3:.0f} | "
            f"{max(v) * 1e3:.0f} |" for name, v in (("closure in force", close_s),
                                                    ("removal in force", open_s))]
    text = "\n".join([
        "## Closures over HTTP on the Ray server (scenario_kbh network)",
        "",
        f"`.venv/bin/python benchmarks/closures.py --cycles {args.cycles} --router-replicas "
        f"{args.router_replicas}` — {utc_now()} — {machine_description()}",
        "",
        "From the 201/204 of POST/DELETE /v1/closures to the first GET /v1/route (polled every "
        "20 ms) that reflects it; the facade hands the overrides to the replicas before it "
        "answers, so the delay is mostly the poll. Target: within 2 s on a city.",
        "",
        "| event | n | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ])
    print(text)
    if not args.no_append:
        append_section(text)


if __name__ == "__main__":
    main()
