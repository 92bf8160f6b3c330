"""Durability costs: WAL appends with fsync, replay, checkpoints and pseudonyms.

Appends batches of 1,000 and 10,000 probes to a fresh ``ProbeLog`` (fsync on and off, one
thread and four threads sharing fsyncs), replays the log, saves and loads a checkpoint of
a 1M-edge state, and pseudonymises 10,000-id batches. Prints a Markdown table and appends
it to BENCHMARKS.md.

    .venv/bin/python benchmarks/wal.py [--seconds 4] [--dir /path/on/the/data/disk] [--no-append]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl

from traffic.checkpoints import CheckpointStore
from traffic.privacy import Pseudonymizer, key_from_text
from traffic.wal import LogPosition, ProbeLog

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import append_section, machine_description, utc_now  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_batch(rng: np.random.Generator, n: int, n_vehicles: int) -> pl.DataFrame:
    vid = rng.integers(0, n_vehicles, n)
    return pl.DataFrame({
        "vehicle_id": pl.Series([f"{v:016x}" for v in vid], dtype=pl.Utf8),
        "t": 1.7e9 + np.sort(rng.uniform(0, 60, n)),
        "lat": rng.uniform(55.6, 55.7, n),
        "lon": rng.uniform(12.5, 12.6, n),
        "speed_mps": rng.uniform(0, 30, n),
        "heading_deg": rng.uniform(0, 360, n),
        "accuracy_m": rng.uniform(2, 15, n),
    })


def bench_appends(root: Path, batch: pl.DataFrame, *, fsync: bool, threads: int,
                  seconds: float) -> dict:
    """Append for ``seconds`` from ``threads`` threads; return rates and latency percentiles."""
    path = Path(tempfile.mkdtemp(dir=root))
    log = ProbeLog(path, fsync=fsync)
    lat_s: list[list[float]] = [[] for _ in range(threads)]
    stop = time.perf_counter() + seconds

    def work(i: int) -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            log.append(batch)
            lat_s[i].append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    wall_s = time.perf_counter() - t0
    log.close()
    lat = np.concatenate([np.asarray(x) for x in lat_s]) * 1e3
    n = lat.size
    out = {"appends_s": n / wall_s, "probes_s": n * batch.height / wall_s,
           "p50_ms": float(np.median(lat)), "p99_ms": float(np.percentile(lat, 99)),
           "fsyncs_per_append": log.n_fsyncs / n, "path": path,
           "bytes_per_probe": sum(p.stat().st_size for p in path.glob("wal-*")) / (n * batch.height)}
    return out


def bench_replay(path: Path) -> tuple[float, int]:
    log = ProbeLog(path, fsync=False)
    t0 = time.perf_counter()
    rows = sum(df.height for _, df in log.read_from(LogPosition.start()))
    dt = time.perf_counter() - t0
    log.close()
    return rows / dt, rows


def bench_checkpoint(root: Path, n_edges: int = 1_000_000) -> tuple[float, float, float]:
    rng = np.random.default_rng(0)
    state = {k: rng.random(n_edges) for k in ("mu", "m2", "w", "t_last", "prior")}
    state["edge_key"] = np.arange(n_edges, dtype=np.int64)
    state["version"] = 7
    store = CheckpointStore(Path(tempfile.mkdtemp(dir=root)))
    save_s, load_s = [], []
    for i in range(3):
        t0 = time.perf_counter()
        store.save(state, log_position=LogPosition(i + 1, i + 1))
        save_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        store.load_latest()
        load_s.append(time.perf_counter() - t0)
    mb = sum(v.nbytes for v in state.values() if isinstance(v, np.ndarray)) / 2**20
    return float(np.median(save_s)), float(np.median(load_s)), mb


def bench_pseudonyms(n_unique: int, *, warm: bool, reps: int = 7) -> tuple[float, float]:
    ids = pl.Series("vehicle_id", [f"vehicle-{i % n_unique:08d}" for i in range(10_000)])
    times = []
    for r in range(reps):
        # Cold: a fresh instance per batch, so every unique id is hashed.
        p = Pseudonymizer(key_from_text("benchmark-key-text-0123456789")) if (r == 0 or not warm) else p
        if warm and r == 0:
            p.pseudonymize(ids)
        t0 = time.perf_counter()
        p.pseudonymize(ids)
        times.append(time.perf_counter() - t0)
    t = np.asarray(times)
    return 10_000 / float(np.median(t)), 10_000 / float(np.percentile(t, 99))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per append configuration")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--no-append", action="store_true", help="print only")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="walbench-", dir=args.dir))
    rng = np.random.default_rng(42)
    lines = [
        "| batch (probes) | fsync | threads | appends/s | probes/s | p50 ms | p99 ms | fsyncs/append | bytes/probe |",
        "|---:|:---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    replay_src = None
    try:
        for n in (1_000, 10_000):
            batch = make_batch(rng, n, 2_000)
            for fsync, threads in ((True, 1), (True, 4), (False, 1)):
                r = bench_appends(root, batch, fsync=fsync, threads=threads, seconds=args.seconds)
                lines.append(
                    f"| {n:,} | {'on' if fsync else 'off'} | {threads} | {r['appends_s']:,.0f} | "
                    f"{r['probes_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                    f"{r['fsyncs_per_append']:.2f} | {r['bytes_per_probe']:.1f} |")
                print(lines[-1], flush=True)
                if n == 10_000 and fsync and threads == 1:
                    replay_src = r["path"]
        replay_rate, replay_rows = bench_replay(replay_src)
        save_s, load_s, mb = bench_checkpoint(root)
        pseudo = [(label, *bench_pseudonyms(u, warm=w)) for label, u, w in (
            ("10,000 unique ids, cold (all hashed)", 10_000, False),
            ("10,000 unique ids, warm cache", 10_000, True),
            ("500 unique ids, cold", 500, False),
        )]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    extra = [
        "",
        "| other | median | |",
        "|:---|---:|:---|",
        f"| replay (read_from start) | {replay_rate:,.0f} probes/s | {replay_rows:,} probes |",
        f"| checkpoint save ({mb:.0f} MiB state, SHA-256, fsync) | {save_s * 1e3:,.0f} ms | |",
        f"| checkpoint load + verify | {load_s * 1e3:,.0f} ms | |",
    ]
    for label, med, p99 in pseudo:
        extra.append(f"| pseudonymize 10,000-row batch, {label} | {med:,.0f} ids/s | p99 {p99:,.0f} ids/s |")
    print("\n".join(extra))
    date = utc_now()
    fs = subprocess.run(["df", "-T", str(args.dir or tempfile.gettempdir())], capture_output=True,
                        text=True).stdout.splitlines()[-1].split()[1]
    table = "\n".join([
        f"## WAL, checkpoints, pseudonyms: `.venv/bin/python benchmarks/wal.py --seconds {args.seconds:g}`",
        "",
        f"{date}; {machine_description()}; filesystem {fs} (temp dir). Appends for {args.seconds:g} s per row; "
        "latency is per `append()` call (encode + write + fsync).",
        "",
        *lines,
        *extra,
        "",
    ])
    if not args.no_append:
        append_section(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
