"""End-to-end ingest through the real server: ``POST /v1/probes`` -> validate -> match -> fold
-> publish, at 1 and 2 ingest actors. Appends a table to BENCHMARKS.md.

Starts ``traffic serve --clock event`` (Ray pipeline) as a subprocess, then load generator
processes (``benchmarks/_loadgen.py post``) that POST the SUMO scenario's probes as batched
JSON in event-time order, one connection each; each connection carries a fixed share of the
vehicles, so every vehicle's points arrive in order. Bodies are encoded before the clock
starts. The run ends when ``/v1/status`` has settled: nothing in flight,
``applied + unmatched + pending == accepted`` (= what the clients were told), and the
published weights cover the estimator's watermark (within one refresh interval).

Reported: end-to-end probes/s (accepted probes / (settled - first send)), the HTTP intake
rate, freshness p50/p99 (probe accepted -> first publication after its fold, as the
estimator worker records it; the server keeps the newest 4,096 samples, so this is the
tail of the run), and the stage breakdown in seconds per 1,000 probes (wall time inside each stage): parse (in the
API process, from ``Server-Timing``), validate, match and traversals (ingest actors,
``stage_s``), fold (estimator ``fold_s``).

    .venv/bin/python benchmarks/ingest.py [--ingest 1 2] [--batch 2000] [--conns 4] [--loops 2]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, append_section, machine_description, utc_now  # noqa: E402

PY = sys.executable


def _get(url: str, timeout_s: float = 30.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return json.loads(r.read())


def load_stream(scenario: Path, *, loops: int) -> pl.DataFrame:
    """The scenario's probes in event-time order, repeated ``loops`` times.

    Each repeat is shifted past the previous one's end (plus 10 minutes, so every vehicle
    is idle-flushed in between) and its vehicles get a ``~k`` suffix: new traces, same roads.
    """
    df = pl.read_parquet(scenario / "probes.parquet").sort("t", maintain_order=True)
    span = float(df["t"].max() - df["t"].min()) + 600.0  # type: ignore[operator]
    parts = [df.with_columns(pl.col("t") + k * span,
                             (pl.col("vehicle_id") + f"~{k}") if k else pl.col("vehicle_id"))
             for k in range(loops)]
    return pl.concat(parts)


def encode_bodies(df: pl.DataFrame, *, conns: int, batch: int) -> list[list[bytes]]:
    """Split by vehicle over ``conns`` connections, then into ``batch``-probe JSON bodies."""
    from workers.ingest import partition_of

    conn = partition_of(df["vehicle_id"], conns)
    out = []
    for c in range(conns):
        part = df.filter(pl.Series(conn == c))
        out.append([b'{"probes":' + part.slice(i, batch).write_json().encode() + b"}"
                    for i in range(0, part.height, batch)])
    return out


def start_server(network: Path, *, port: int, n_ingest: int, data_dir: Path,
                 log: Path, extra: list[str] | None = None) -> subprocess.Popen:
    cmd = [str(Path(PY).parent / "traffic"), "serve", "--network", str(network),
           "--clock", "event", "--ingest", str(n_ingest), "--port", str(port),
           "--data-dir", str(data_dir), *(extra or [])]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}); see {log}")
        try:
            if _get(url + "/readyz", 2).get("status") == "ready":
                return proc
        except OSError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise TimeoutError(f"server not ready in 180 s; see {log}")


def fresh_data_dir(root: Path, name: str) -> Path:
    """An empty server data directory under ``root`` (no logged probes or checkpoints to
    recover), sharing ``root/cache`` (prepared routing and matcher tables) across runs."""
    import shutil

    run = root / name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    (root / "cache").mkdir(parents=True, exist_ok=True)
    (run / "cache").symlink_to((root / "cache").resolve(), target_is_directory=True)
    return run


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def tree_cpu_s(root_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of ``root_pid`` and its descendants, by process name.

    Read from ``/proc`` (Linux); Ray's raylet, GCS and actor workers are descendants of the
    server process, and actor workers are named ``ray::<Class>``.
    """
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, str, float]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            raw = (d / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        f = raw[raw.rindex(")") + 2:].split()
        procs[int(d.name)] = (int(f[1]), name, (int(f[11]) + int(f[12])) / tick)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[str, float] = {}
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        if pid in procs:
            _, name, cpu = procs[pid]
            key = "api" if pid == root_pid else next(
                (k for k in _CPU_KEYS[1:3] if name.startswith(k[:15])), "ray (other)")
            out[key] = out.get(key, 0.0) + cpu
        todo += children.get(pid, [])
    return out


def settled(st: dict[str, Any], accepted: int, refresh_s: float) -> bool:
    p, q = st["probes"], st["queues"]
    est = st["workers"]["estimator"]
    if any(q.values()) or p["accepted"] != accepted:
        return False
    if p["applied"] + p["unmatched"] + p["pending"] != p["accepted"]:
        return False
    wt, wm = st["weights_t"], est["watermark_t"]
    return wm is None or (wt is not None and wt >= wm - refresh_s)


def run_once(args: argparse.Namespace, n_ingest: int, body_files: list[Path], n_probes: int,
             tmp: Path) -> dict[str, Any]:
    port = args.port + n_ingest
    url = f"http://127.0.0.1:{port}"
    proc = start_server(Path(args.network), port=port, n_ingest=n_ingest,
                        data_dir=fresh_data_dir(Path(args.data_dir), f"run{n_ingest}"),
                        log=Path(args.data_dir) / f"server{n_ingest}.log",
                        extra=args.serve_args.split())
    try:
        st0 = _get(url + "/v1/status")
        load_before = os.getloadavg()[0]
        cpu0 = tree_cpu_s(proc.pid)
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        start_at = time.time() + 1.0
        outs = [tmp / f"out{n_ingest}_{c}.json" for c in range(len(body_files))]
        gens = [subprocess.Popen([PY, str(ROOT / "benchmarks/_loadgen.py"), "post", "--url", url,
                                  "--bodies", str(f), "--out", str(o), "--start-at", str(start_at)])
                for f, o in zip(body_files, outs, strict=True)]
        polls = []
        while any(g.poll() is None for g in gens):
            time.sleep(0.5)
            st = _get(url + "/v1/status")
            polls.append((time.time(), st["probes"]["accepted"],
                          st["workers"]["estimator"]["freshness_p99_s"]))
        if any(g.returncode for g in gens):
            raise RuntimeError("a load generator failed")
        t_posted = time.time()
        rows = [r for o in outs for r in json.loads(o.read_text())]
        accepted = sum(r["accepted"] for r in rows)
        deadline = time.time() + 120
        while True:
            st = _get(url + "/v1/status")
            if settled(st, st0["probes"]["accepted"] + accepted, args.refresh_s):
                t_settled = time.time()
                break
            if time.time() > deadline:
                raise TimeoutError(f"status did not settle: {st['probes']} {st['queues']}")
            time.sleep(0.05)
        load_after = os.getloadavg()[0]
        cpu1 = tree_cpu_s(proc.pid)
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        stop_server(proc)
    t_first = min(r["t_send"] for r in rows)
    est = st["workers"]["estimator"]
    stage = {"validate": 0.0, "match": 0.0, "traversals": 0.0}
    for part in st["workers"]["ingest"]:
        for k in stage:
            stage[k] += float(part["stage_s"].get(k, 0.0))
    stage = {"parse": sum(r["timing"].get("parse", 0.0) for r in rows), **stage,
             "fold": float(est["fold_s"])}
    req_s = np.array([r["t_done"] - r["t_send"] for r in rows])
    fresh_polled = [f for _, _, f in polls if f is not None]
    return {
        "n_ingest": n_ingest, "probes": n_probes, "accepted": accepted,
        "rejected": sum(r["rejected"] for r in rows), "requests": len(rows),
        "retries_503": sum(r["retries"] for r in rows),
        "e2e_per_s": accepted / (t_settled - t_first),
        "intake_per_s": accepted / (max(r["t_done"] for r in rows) - t_first),
        "settle_s": t_settled - t_posted,
        "fresh_p50_s": est["freshness_p50_s"], "fresh_p99_s": est["freshness_p99_s"],
        "fresh_p99_max_polled_s": max(fresh_polled) if fresh_polled else None,
        "req_p50_ms": float(np.percentile(req_s, 50) * 1e3),
        "req_p99_ms": float(np.percentile(req_s, 99) * 1e3),
        "stage_s": stage, "applied": st["probes"]["applied"],
        "unmatched": st["probes"]["unmatched"], "pending": st["probes"]["pending"],
        "polled_p99_s": [(round(t - t_first, 1), f) for t, _, f in polls],
        "load": (load_before, load_after),
        "cpu_s": {**{k: v - cpu0.get(k, 0.0) for k, v in cpu1.items()},
                  "loadgen": (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)},
    }


def _fmt_table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| ingest actors | probes accepted | end-to-end probes/s | HTTP intake probes/s "
             "| freshness p50 / p99 (s) | p99 max while running (s) | request p50 / p99 (ms) "
             "| 503 retries | settle after last POST (s) |",
             "|---:|---:|---:|---:|---|---:|---|---:|---:|"]
    for r in results:
        fm = r["fresh_p99_max_polled_s"]
        lines.append(
            f"| {r['n_ingest']} | {r['accepted']:,} | {r['e2e_per_s']:,.0f} | "
            f"{r['intake_per_s']:,.0f} | {r['fresh_p50_s']:.2f} / {r['fresh_p99_s']:.2f} | "
            f"{'-' if fm is None else f'{fm:.2f}'} | {r['req_p50_ms']:.0f} / {r['req_p99_ms']:.0f} | "
            f"{r['retries_503']} | {r['settle_s']:.2f} |")
    lines += ["", "Stage breakdown, seconds spent inside each stage per 1,000 accepted probes (wall time "
              "measured in the stage, so it includes waiting for a core; share of the stages' "
              "sum); validate/match/traversals summed over ingest actors:", "",
              "| ingest actors | parse (API) | validate | match | traversals | fold | "
              "stages' sum -> rate if run serially |", "|---:|---|---|---|---|---|---|"]
    for r in results:
        s = r["stage_s"]
        tot = sum(s.values())
        k = 1000.0 / max(r["accepted"], 1)
        cells = " | ".join(f"{v * k * 1e3:.1f} ms ({v / tot:.0%})" for v in s.values())
        lines.append(f"| {r['n_ingest']} | {cells} | {tot * k * 1e3:.1f} ms -> "
                     f"{r['accepted'] / tot:,.0f} probes/s |")
    lines += ["", "CPU seconds per 1,000 accepted probes by process (from /proc; the machine has 2 "
              "cores, so 2,000 ms of CPU per second is all there is):", "",
              "| ingest actors | " + " | ".join(_CPU_KEYS) + " | total -> rate if 2 cores did "
              "only this |", "|---:|" + "---:|" * (len(_CPU_KEYS) + 1)]
    for r in results:
        k = 1e6 / max(r["accepted"], 1)
        c = r["cpu_s"]
        other = sum(v for n, v in c.items() if n not in _CPU_KEYS[:-1])
        vals = [c.get(n, 0.0) for n in _CPU_KEYS[:-1]] + [other]
        tot = sum(vals)
        lines.append(f"| {r['n_ingest']} | " + " | ".join(f"{v * k:.1f}" for v in vals)
                     + f" | {tot * k:.1f} -> {2 * r['accepted'] / max(tot, 1e-9):,.0f} probes/s |")
    return lines


_CPU_KEYS = ["api", "ray::IngestCore", "ray::EstimatorCore", "loadgen", "ray (other)"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default=str(ROOT.parent / "shared/data/scenario_kbh"))
    ap.add_argument("--network", default=None, help="default: the scenario's network.osm.pbf")
    ap.add_argument("--ingest", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=5000, help="probes per request")
    ap.add_argument("--conns", type=int, default=4, help="load generator processes")
    ap.add_argument("--loops", type=int, default=1, help="repeat the scenario (new vehicles)")
    ap.add_argument("--port", type=int, default=18100)
    ap.add_argument("--refresh-s", type=float, default=1.0)
    ap.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "traffic-bench-ingest"))
    ap.add_argument("--serve-args", default="",
                    help="extra `traffic serve` options, e.g. '--no-wal' (one string)")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    scenario = Path(args.scenario)
    args.network = args.network or str(scenario / "network.osm.pbf")
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    df = load_stream(scenario, loops=args.loops)
    bodies = encode_bodies(df, conns=args.conns, batch=args.batch)
    results = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        files = []
        for c, b in enumerate(bodies):
            f = tmp / f"bodies{c}.pkl"
            f.write_bytes(pickle.dumps(b))
            files.append(f)
        for n in args.ingest:
            r = run_once(args, n, files, df.height, tmp)
            results.append(r)
            print(json.dumps(r), flush=True)
    loads = ", ".join(f"{r['load'][0]:.1f} -> {r['load'][1]:.1f}" for r in results)
    lines = [
        "## Ingest end to end: `POST /v1/probes` -> published weights (scenario_kbh)\n",
        f"`.venv/bin/python benchmarks/ingest.py --ingest {' '.join(map(str, args.ingest))} "
        f"--batch {args.batch} --conns {args.conns} --loops {args.loops}"
        + (f" --serve-args '{args.serve_args}'" if args.serve_args else "") + "` — "
        f"{utc_now()}, {machine_description()}. Server: `traffic serve --clock event "
        f"{args.serve_args}`".replace(" `", "`") + " (Ray, router in the API process; probe log "
        f"and checkpoints on unless `--no-wal`); "
        f"{args.conns} load generator processes on the same machine, competing "
        f"with the server for the 2 cores. 1-min load average before -> after each run: "
        f"{loads}.\n",
        *_fmt_table(results),
    ]
    print("\n".join(lines))
    if not args.no_append:
        append_section("\n".join(lines).lstrip("\n") + "\n")


if __name__ == "__main__":
    main()
