"""``GET /v1/route`` over HTTP against the no-op endpoint, in one run. Appends to BENCHMARKS.md.

Starts ``traffic serve --clock event`` (Ray pipeline, router in the API process), posts the
first part of the SUMO scenario's probes so live weights are published, then:

1. throughput, closed loop, with ``wrk`` (a separate C process; Debian's ``wrk``) over keep-alive
   connections: ``GET /v1/noop``, then ``GET /v1/route`` between random origin/destination
   pairs (uniform in the network's bbox, snapped to the nearest road vertex; pairs the server
   cannot route are dropped before timing), then the no-op again;
2. latency at half the measured route throughput, open loop (``benchmarks/_loadgen.py get``
   in separate processes; each request's latency counts from when it was due).

    .venv/bin/python benchmarks/route_http.py [--duration-s 10] [--conns 16] [--pairs 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loadgen import post_bodies  # noqa: E402
from _report import append_section, machine_description, utc_now  # noqa: E402
from ingest import ROOT, fresh_data_dir, start_server, stop_server  # noqa: E402

PY = sys.executable

_WRK_LUA = """
local paths = {}
for line in io.lines("%s") do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
"""


def od_paths(net: Any, n: int, *, seed: int = 0) -> list[str]:
    """``n`` route paths between random bbox points snapped to the nearest road vertex."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    min_lon, min_lat, max_lon, max_lat = net.bbox
    k = np.cos(np.radians((min_lat + max_lat) / 2))
    tree = cKDTree(np.column_stack([net.geom_lat, net.geom_lon * k]))
    lat = rng.uniform(min_lat, max_lat, 2 * n)
    lon = rng.uniform(min_lon, max_lon, 2 * n)
    _, idx = tree.query(np.column_stack([lat, lon * k]))
    plat, plon = net.geom_lat[idx], net.geom_lon[idx]
    return [f"/v1/route?from={plat[2 * i]:.6f},{plon[2 * i]:.6f}"
            f"&to={plat[2 * i + 1]:.6f},{plon[2 * i + 1]:.6f}" for i in range(n)]


def routable(url: str, paths: list[str]) -> list[str]:
    """The paths the server answers with 200 (also warms the router)."""
    keep = []
    for p in paths:
        try:
            with urllib.request.urlopen(url + p, timeout=10) as r:
                if r.status == 200:
                    keep.append(p)
        except urllib.error.HTTPError:
            continue
    return keep


def wrk(url: str, path_file: Path, *, conns: int, threads: int, duration_s: float,
        tmp: Path) -> dict[str, float]:
    """Run wrk over the paths in ``path_file``; requests/s, latency p50/p99 (ms), errors."""
    lua = tmp / f"paths_{path_file.stem}.lua"
    lua.write_text(_WRK_LUA % path_file)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{duration_s:g}s",
                          "--latency", "-s", str(lua), url], capture_output=True, text=True,
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m is None:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "p50_ms": pct("50"), "p99_ms": pct("99"),
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errs.group(0) if errs else ""}


def open_loop(url: str, paths: list[str], *, rate: float, duration_s: float, procs: int,
              conns: int, tmp: Path) -> dict[str, Any]:
    """Latency percentiles at ``rate`` requests/s split over ``procs`` loadgen processes."""
    pf = tmp / "paths.json"
    pf.write_text(json.dumps(paths))
    outs = [tmp / f"lat{k}.json" for k in range(procs)]
    gens = [subprocess.Popen([PY, str(ROOT / "benchmarks/_loadgen.py"), "get", "--url", url,
                              "--paths", str(pf), "--rate", str(rate / procs),
                              "--duration-s", str(duration_s), "--conns", str(conns),
                              "--out", str(o)]) for o in outs]
    for g in gens:
        g.wait()
    res = [json.loads(o.read_text()) for o in outs]
    lat = np.concatenate([np.asarray(r["latency_s"]) for r in res]) * 1e3
    codes: dict[str, int] = {}
    for r in res:
        for c, n in r["codes"].items():
            codes[c] = codes.get(c, 0) + n
    return {"rate": rate, "n": int(lat.size), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max()),
            "achieved_rps": sum(r["n"] / r["elapsed_s"] for r in res), "codes": codes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default=str(ROOT.parent / "shared/data/scenario_kbh"))
    ap.add_argument("--duration-s", type=float, default=10.0)
    ap.add_argument("--conns", type=int, default=16, help="wrk connections")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--warm-probes", type=int, default=100_000,
                    help="scenario probes posted before timing (publishes live weights)")
    ap.add_argument("--port", type=int, default=18200)
    ap.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "traffic-bench-route"))
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    from graph.io import load_network

    scenario = Path(args.scenario)
    network = scenario / "network.osm.pbf"
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    net = load_network(network)
    url = f"http://127.0.0.1:{args.port}"
    load_before = os.getloadavg()[0]
    proc = start_server(network, port=args.port, n_ingest=1,
                        data_dir=fresh_data_dir(Path(args.data_dir), "run"),
                        log=Path(args.data_dir) / "server.log")
    try:
        with tempfile.TemporaryDirectory() as td:
            tmp = Path(td)
            df = pl.read_parquet(scenario / "probes.parquet").sort("t").head(args.warm_probes)
            bodies = [b'{"probes":' + df.slice(i, 5000).write_json().encode() + b"}"
                      for i in range(0, df.height, 5000)]
            post_bodies(url, bodies)
            time.sleep(1.0)  # a tick publishes the weights
            with urllib.request.urlopen(url + "/v1/status") as r:
                st = json.loads(r.read())
            paths = routable(url, od_paths(net, args.pairs))
            route_file, noop_file = tmp / "route.txt", tmp / "noop.txt"
            route_file.write_text("\n".join(paths) + "\n")
            noop_file.write_text("/v1/noop\n")
            kw = {"conns": args.conns, "threads": args.threads, "duration_s": args.duration_s,
                  "tmp": tmp}
            noop1 = wrk(url, noop_file, **kw)
            route = wrk(url, route_file, **kw)
            noop2 = wrk(url, noop_file, **kw)
            half = open_loop(url, paths, rate=route["rps"] / 2, duration_s=args.duration_s,
                             procs=2, conns=4, tmp=tmp)
    finally:
        stop_server(proc)
    load_after = os.getloadavg()[0]
    noop_rps = (noop1["rps"] + noop2["rps"]) / 2
    ratio = route["rps"] / noop_rps
    lines = [
        "## Route over HTTP: `GET /v1/route` vs `GET /v1/noop` (scenario_kbh network)\n",
        f"`.venv/bin/python benchmarks/route_http.py --duration-s {args.duration_s:g} "
        f"--conns {args.conns} --pairs {args.pairs}` — "
        f"{utc_now()}, {machine_description()}. Server: `traffic serve --clock event` (Ray, one uvicorn "
        f"worker, router in the API process), weights version {st['weights_version']} after "
        f"{st['probes']['accepted']:,} probes. Load: wrk ({args.threads} threads, "
        f"{args.conns} keep-alive connections) and then 2 open-loop `_loadgen.py` processes, "
        f"on the same 2 cores as the server. {len(paths)} of {args.pairs} random pairs "
        f"routable. 1-min load average before -> after: {load_before:.1f} -> {load_after:.1f}.\n",
        "| measure | requests/s | p50 (ms) | p99 (ms) | non-2xx | target |",
        "|---|---:|---:|---:|---:|---|",
        f"| no-op, closed loop (wrk), before | {noop1['rps']:,.0f} | {noop1['p50_ms']:.2f} | "
        f"{noop1['p99_ms']:.2f} | {noop1['non2xx']} | |",
        f"| route, closed loop (wrk) | {route['rps']:,.0f} | {route['p50_ms']:.2f} | "
        f"{route['p99_ms']:.2f} | {route['non2xx']} | >= 50% of no-op: {ratio:.0%} |",
        f"| no-op, closed loop (wrk), after | {noop2['rps']:,.0f} | {noop2['p50_ms']:.2f} | "
        f"{noop2['p99_ms']:.2f} | {noop2['non2xx']} | |",
        f"| route, open loop at {half['rate']:,.0f}/s (half) | {half['achieved_rps']:,.0f} | "
        f"{half['p50_ms']:.2f} | {half['p99_ms']:.2f} | "
        f"{sum(n for c, n in half['codes'].items() if c != '200')} | p99 <= 20 ms |",
    ]
    print("\n".join(lines))
    if not args.no_append:
        append_section("\n".join(lines).lstrip("\n") + "\n")


if __name__ == "__main__":
    main()
