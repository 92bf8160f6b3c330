"""Soak: `traffic serve` under steady probe ingest and route queries for N minutes.

Starts `traffic serve --no-ray --clock event` on the kbh scenario network with the probe
log and checkpoints on, then, for ``--minutes``:

* posts the scenario's probes (CSV batches of whole event seconds, ~4 posts/s) from one client at
  ``--probes-per-s`` (the scenario is replayed in laps with shifted times, the same fleet of
  vehicles, so it never runs out and nothing is a duplicate);
* asks ``/v1/route`` between random network nodes at ``--routes-per-s`` (open loop);
* samples every second the server's resident memory (VmRSS) and thread count, and every 5 s
  ``/v1/status`` (freshness p99: probe accepted -> published, s).

Reports errors (non-2xx answers other than 503 back-pressure, which is retried), resident
memory growth after the warm-up (the first 25% of the run), the worst sampled freshness p99,
and the counts identity accepted == applied + pending + unmatched at the end. ``--append``
adds the table to BENCHMARKS.md.

Memory growth compares two windows of 1-s samples: the median RSS over the first window
after the warm-up and over the last window of the run (each a fifth of the measured part, at
most 60 s). A checkpoint lifts RSS for a second or two while it encodes the state; a single
sample that lands in one would make the growth figure a coin toss, while the window medians
follow the level the process holds, which a leak moves and a transient does not. The peak
(the largest sample after warm-up) is reported beside it.

    .venv/bin/python benchmarks/soak.py --minutes 10 --append
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "scenario_kbh"


def _serving_url(proc: subprocess.Popen, log_path: Path) -> str:
    """The URL `traffic serve --port 0` prints once it listens (it picks the port itself)."""
    while True:
        found = re.search(rb"serving on (http://\S+)", log_path.read_bytes())
        if found:
            return found.group(1).decode()
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
        time.sleep(0.1)


def _rss_mib_threads(pid: int) -> tuple[float, int]:
    """Resident memory (MiB) and thread count of process ``pid`` (Linux /proc)."""
    rss, threads = float("nan"), -1
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024.0
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


def memory_growth(samples: list[tuple[float, float]], *, start_s: float) -> dict[str, float]:
    """Growth of resident memory between the first and last window after ``start_s``.

    ``samples`` are ``(seconds since start, RSS MiB)``. Each window is a fifth of the
    samples after ``start_s`` (at most 60 of them at one a second); the figure is the ratio
    of the window medians minus one. Also returns both medians and the peak after ``start_s``.
    """
    after = [rss for t, rss in samples if t >= start_s] or [rss for _, rss in samples]
    w = max(1, min(60, len(after) // 5))
    first, last = float(np.median(after[:w])), float(np.median(after[-w:]))
    return {"rss_warm_mib": first, "rss_end_mib": last, "rss_growth": last / first - 1.0,
            "rss_peak_mib": float(max(after))}


def _laps(probes: pl.DataFrame) -> Any:
    """Yield 1 event-second batches forever (lap k: t shifted by k spans; the same fleet)."""
    t0, t1 = float(probes["t"].min()), float(probes["t"].max())
    span = t1 - t0 + 60.0
    sec = (probes["t"] - t0).floor().cast(pl.Int64)
    groups = probes.with_columns(sec.alias("_s")).partition_by("_s", as_dict=True, maintain_order=True)
    keys = sorted(groups)
    lap = 0
    while True:
        for k in keys:
            b = groups[k].drop("_s")
            yield b.with_columns(pl.col("t") + lap * span)
        lap += 1


def run_soak(*, minutes: float, probes_per_s: float, routes_per_s: float,
             data_dir: Path | None = None, warmup_frac: float = 0.25,
             checkpoint_every_s: float = 300.0, checkpoint_min_gap_s: float = 60.0,
             extra_env: dict[str, str] | None = None, verbose: bool = False) -> dict[str, Any]:
    """Run the soak; returns the figures (see the module docstring).

    ``checkpoint_every_s`` is event time; ``checkpoint_min_gap_s`` the wall-time floor
    between checkpoints (``traffic serve --checkpoint-min-gap``; 0: event time only).
    ``extra_env`` is added to the server's environment (allocator experiments).
    """
    from graph.io import load_network

    net_path = SHARED / "network.osm.pbf"
    probes = pl.read_parquet(SHARED / "probes.parquet").sort("t")
    net = load_network(net_path)
    tmp = tempfile.TemporaryDirectory() if data_dir is None else None
    data_dir = Path(tmp.name) if tmp is not None else data_dir
    log = open(data_dir / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--network", str(net_path), "--no-ray",
         "--clock", "event", "--data-dir", str(data_dir / "run"), "--port", "0",
         "--checkpoint-every", f"{checkpoint_every_s:g}",
         "--checkpoint-min-gap", f"{checkpoint_min_gap_s:g}",
         "--snapshot-every", "0", "--refresh-s", "1"],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "TRAFFIC_PSEUDONYM_KEY": "soak-benchmark-key-0001", **(extra_env or {})})
    try:
        base = _serving_url(proc, data_dir / "serve.log")
        client = httpx.Client(base_url=base, timeout=30)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see {data_dir / 'serve.log'}")
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        stop = threading.Event()
        errors: list[str] = []
        counters = {"posted": 0, "accepted": 0, "retried_503": 0, "routes": 0}
        route_lat: list[float] = []
        per_event_s = probes.height / (float(probes["t"].max()) - float(probes["t"].min()))
        speed = probes_per_s / per_event_s  # event s per wall s

        def post_loop() -> None:
            c = httpx.Client(base_url=base, timeout=30)
            start = time.perf_counter()
            # Event seconds per POST: about 4 posts/s, under the API's 10,000-probe batch bound.
            k = max(1, min(round(speed / 4), int(4000 / max(per_event_s, 1.0))))
            it = _laps(probes)
            for i in range(10**12):
                if stop.is_set():
                    break
                b = pl.concat([next(it) for _ in range(k)])
                due = start + i * k / speed
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                body = b.write_csv().encode()
                while not stop.is_set():
                    r = c.post("/v1/probes", content=body, headers={"content-type": "text/csv"})
                    if r.status_code == 503:
                        counters["retried_503"] += 1
                        time.sleep(float(r.headers.get("retry-after", "1")))
                        continue
                    if r.status_code != 202:
                        errors.append(f"POST {r.status_code}: {r.text[:200]}")
                    else:
                        counters["posted"] += b.height
                        counters["accepted"] += r.json()["accepted"]
                    break
            c.close()

        def route_loop() -> None:
            c = httpx.Client(base_url=base, timeout=30)
            rng = np.random.default_rng(0)
            start = time.perf_counter()
            i = 0
            while not stop.is_set():
                due = start + i / routes_per_s
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                a, b = rng.integers(0, net.n_nodes, size=2)
                t0 = time.perf_counter()
                r = c.get("/v1/route", params={
                    "from": f"{net.node_lat[a]:.6f},{net.node_lon[a]:.6f}",
                    "to": f"{net.node_lat[b]:.6f},{net.node_lon[b]:.6f}"})
                route_lat.append(time.perf_counter() - t0)
                if r.status_code >= 500:
                    errors.append(f"GET route {r.status_code}: {r.text[:200]}")
                counters["routes"] += 1
                i += 1
            c.close()

        threads = [threading.Thread(target=post_loop, daemon=True),
                   threading.Thread(target=route_loop, daemon=True)]
        t_start = time.time()
        for t in threads:
            t.start()
        samples = []  # (s, RSS MiB, freshness p99 s or None, threads), one a second
        try:
            while time.time() - t_start < minutes * 60:
                time.sleep(1.0)
                rss, n_threads = _rss_mib_threads(proc.pid)
                fresh = None
                if len(samples) % 5 == 4:
                    st = client.get("/v1/status").json()
                    fresh = st["workers"]["estimator"].get("freshness_p99_s")
                samples.append((time.time() - t_start, rss, fresh, n_threads))
                if verbose and fresh is not None:
                    print(f"{samples[-1][0]:6.0f} s  RSS {rss:7.1f} MiB  threads {n_threads}  "
                          f"freshness p99 {fresh}  checkpoints "
                          f"{st['workers']['estimator'].get('durability', {}).get('checkpoints_saved')}",
                          flush=True)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        final_st = client.get("/v1/status").json()
        final = final_st["probes"]
        final_ck = final_st["workers"]["estimator"].get("durability", {}).get("checkpoints_saved")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
        client.close()
        log.close()
        warmup_s = warmup_frac * minutes * 60
        warm = [s for s in samples if s[0] >= warmup_s] or samples
        fresh = [s[2] for s in warm if s[2] is not None]
        out = {
            "minutes": minutes, "probes_per_s_target": probes_per_s,
            "probes_per_s": counters["posted"] / (minutes * 60), "routes_per_s": counters["routes"] / (minutes * 60),
            "errors": len(errors), "error_examples": errors[:3], "retried_503": counters["retried_503"],
            **memory_growth([(t, rss) for t, rss, _, _ in samples], start_s=warmup_s),
            "threads_warm": warm[0][3], "threads_end": samples[-1][3],
            "freshness_p99_max_s": max(fresh) if fresh else None,
            "route_p50_ms": 1e3 * float(np.percentile(route_lat, 50)) if route_lat else None,
            "route_p99_ms": 1e3 * float(np.percentile(route_lat, 99)) if route_lat else None,
            "accepted": final["accepted"], "client_accepted": counters["accepted"],
            "identity_holds": final["accepted"] == final["applied"] + final["pending"] + final["unmatched"]
            or None,
            "sigterm_exit": rc,
            "checkpoints": final_ck, "checkpoint_min_gap_s": checkpoint_min_gap_s,
            "rss_samples": [(round(t), round(rss, 1)) for t, rss, _, _ in samples],
        }
    except BaseException:
        if proc.poll() is None:  # never leave a server behind
            proc.kill()
            proc.wait()
        raise
    if tmp is not None:
        tmp.cleanup()
    return out


def _table(r: dict[str, Any]) -> str:
    rows = [
        ("duration", f"{r['minutes']:g} min"),
        ("probe ingest (target / achieved)", f"{r['probes_per_s_target']:,.0f} / {r['probes_per_s']:,.0f} probes/s"),
        ("route queries", f"{r['routes_per_s']:.1f}/s, p50 {r['route_p50_ms']:.1f} ms, p99 {r['route_p99_ms']:.1f} ms"),
        ("errors (non-2xx other than 503)", f"{r['errors']}"),
        ("503 back-pressure retries", f"{r['retried_503']}"),
        ("RSS after warm-up -> end (window medians)", f"{r['rss_warm_mib']:.0f} -> {r['rss_end_mib']:.0f} MiB ({100 * r['rss_growth']:+.1f}%)"),
        ("RSS peak after warm-up", f"{r['rss_peak_mib']:.0f} MiB"),
        ("server threads after warm-up -> end", f"{r['threads_warm']} -> {r['threads_end']}"),
        ("freshness p99, worst 5-s sample after warm-up", f"{r['freshness_p99_max_s']:.2f} s"),
        ("accepted (server / client 202s)", f"{r['accepted']:,} / {r['client_accepted']:,}"),
        ("SIGTERM exit status", f"{r['sigterm_exit']}"),
    ]
    return "| figure | value |\n|:---|---:|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--probes-per-s", type=float, default=1000.0,
                    help="probe ingest rate (about half the measured maximum)")
    ap.add_argument("--routes-per-s", type=float, default=20.0)
    ap.add_argument("--checkpoint-min-gap", type=float, default=60.0,
                    help="wall seconds between checkpoints at least (traffic serve "
                         "--checkpoint-min-gap; 0: every 300 event s, the old cadence)")
    ap.add_argument("--verbose", action="store_true", help="print every 5-s sample")
    ap.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from _report import append_section, machine_description, utc_now

    r = run_soak(minutes=args.minutes, probes_per_s=args.probes_per_s, routes_per_s=args.routes_per_s,
                 checkpoint_min_gap_s=args.checkpoint_min_gap, verbose=args.verbose)
    table = _table(r)
    print(table)
    if r["error_examples"]:
        print("errors:", r["error_examples"])
    if args.append:
        head = (f"## Soak: `.venv/bin/python benchmarks/soak.py --minutes {args.minutes:g} "
                f"--probes-per-s {args.probes_per_s:g} --routes-per-s {args.routes_per_s:g} "
                f"--checkpoint-min-gap {args.checkpoint_min_gap:g}`\n\n"
                f"{utc_now()}; {machine_description()}. `traffic serve --no-ray --clock event` "
                "on scenario_kbh with the probe log (fsync) and checkpoints every 300 event s "
                f"but at least {args.checkpoint_min_gap:g} wall s apart ({r['checkpoints']} taken); "
                "one posting client (CSV batches of whole event seconds, ~4 posts/s), open-loop "
                "route queries; load generators on the same 2 cores. RSS samples (s, MiB): "
                f"{r['rss_samples'][::30]}.\n\n")
        append_section(head + table)


if __name__ == "__main__":
    main()
