"""Cost per road edge at country scale (issue 10): import, prepare, time to ready, memory.

    python benchmarks/scale.py --k 1          # DIMACS New York as is (730k directed edges)
    python benchmarks/scale.py --k 2          # 2x2 tiling by ../shared/tools/tile_network.py

For K > 1 the input is generated into the work directory (default a temporary one; never
commit it). Steps, each timed:

1. ``traffic network import`` of the DIMACS files into a compiled ``.net``;
2. ``traffic network prepare`` (CCH order + spatial index beside it);
3. components in a fresh process, one at a time, as resident-memory growth (anonymous
   memory, so C++ allocations count): the mapped network and spatial index (their bytes),
   the CCH contraction from the saved order, one customized metric, the estimator, the
   matcher (an ingest core before and after simulated probes), the empty time-of-week
   profile;
4. ``traffic serve --port 0`` started as a subprocess (Ray, the defaults): seconds until
   ``/readyz`` answers 200; then simulated probes are posted and a route across the tiles
   asked for, and after a settling pause the PSS of every process of the server's tree
   (``/proc/PID/smaps_rollup``; Ray's GCS, raylet, agents and actors included) is summed,
   per role.

Prints a Markdown table and appends it to BENCHMARKS.md (``--no-append`` to skip). Timings
on the shared 2-core machine are noisy (other engineers' jobs run beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED = ROOT.parent / "shared"
NY_GR = SHARED / "data" / "graphs" / "USA-road-d.NY.gr.gz"
NY_CO = SHARED / "data" / "graphs" / "USA-road-d.NY.co.gz"
TILER = SHARED / "tools" / "tile_network.py"
#: Nodes of one New York tile (tile t holds nodes t * NY_NODES ... in tile_network.py's output).
NY_NODES = 264_346


def traffic_cmd() -> list[str]:
    """The ``traffic`` console script beside this interpreter, or ``python -m cli``."""
    script = Path(sys.executable).with_name("traffic")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


def _timed(cmd: list[str], **kw: Any) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, **kw)
    return time.perf_counter() - t0


def make_input(k: int, work: Path) -> tuple[Path, Path, float]:
    """DIMACS ``.gr.gz``/``.co.gz`` for K (New York itself for K=1) and generation seconds."""
    if k == 1:
        return NY_GR, NY_CO, 0.0
    prefix = work / f"k{k}"
    gr, co = Path(f"{prefix}.gr.gz"), Path(f"{prefix}.co.gz")
    if gr.exists() and co.exists():
        return gr, co, float("nan")
    return gr, co, _timed([sys.executable, str(TILER), "--k", str(k), "-o", str(prefix)],
                          stdout=subprocess.DEVNULL)


def walk_probes(net: Any, *, n_vehicles: int, n_steps: int, t0_s: float, seed: int,
                step_s: float = 5.0) -> Any:
    """Probes of vehicles driving random walks (no immediate U-turn) from random nodes, one
    fix per node passed every ``step_s``, with 3 m of GPS noise: cheap at any network size
    (``traffic.simulate`` routes its vehicles, which takes minutes and GBs from K=2 on)."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    node = rng.integers(0, net.n_nodes, n_vehicles)
    prev = np.full(n_vehicles, -1)
    rows: list[tuple[np.ndarray, ...]] = []
    for step in range(n_steps):
        rows.append((np.arange(n_vehicles), np.full(n_vehicles, t0_s + step * step_s),
                     net.node_lat[node] + rng.normal(0, 3 / 111_000, n_vehicles),
                     net.node_lon[node] + rng.normal(0, 4 / 111_000, n_vehicles)))
        first, deg = net.out_first[node], np.diff(net.out_first)[node]
        pick = first + rng.integers(0, np.maximum(deg, 1))
        nxt = np.where(deg > 0, net.edge_dst[net.out_edge[np.minimum(pick, net.n_edges - 1)]], node)
        back = (nxt == prev) & (deg > 1)
        alt = first + (pick - first + 1) % np.maximum(deg, 1)
        nxt = np.where(back, net.edge_dst[net.out_edge[np.minimum(alt, net.n_edges - 1)]], nxt)
        prev, node = node, nxt
    vid, t, lat, lon = (np.concatenate(c) for c in zip(*rows))
    return pl.DataFrame({"vehicle_id": [f"v{i}" for i in vid], "t": t, "lat": lat, "lon": lon})


# -- memory of processes ------------------------------------------------------------------
def process_tree(root: int) -> list[int]:
    """``root`` and every descendant (from /proc/*/stat parent ids)."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def pss_bytes(pid: int) -> int | None:
    """Proportional set size of ``pid`` (bytes), from /proc/PID/smaps_rollup."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def role_of(pid: int, server_pid: int) -> str:
    """Which part of the service a process is: API, an actor class, or Ray itself."""
    if pid == server_pid:
        return "API process"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    for actor in ("IngestCore", "EstimatorCore", "RouterCore"):
        if f"ray::{actor}" in cmd:
            return f"actor {actor}"
    return "Ray system"


def pss_by_role(server_pid: int) -> dict[str, int]:
    """Sum of PSS per role over the server's process tree."""
    out: dict[str, int] = {}
    for pid in process_tree(server_pid):
        pss = pss_bytes(pid)
        if pss:
            role = role_of(pid, server_pid)
            out[role] = out.get(role, 0) + pss
    return out


def _anon_rss() -> int:
    """Anonymous resident bytes of this process (mapped files excluded)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


# -- components in one process ------------------------------------------------------------
def measure_components(net_path: str, artifacts: str) -> dict[str, float]:
    """Bytes per component, built one after the other in this (fresh) process."""
    import gc

    import numpy as np

    from traffic.native_memory import tune_malloc

    tune_malloc()
    from graph.artifacts import cch_index_for, spatial_index_for
    from graph.cch import customize
    from graph.io import load_network
    from traffic.profiles import ProfileConfig, TimeOfWeekProfile
    from workers.estimator import EstimatorCore
    from workers.ingest import IngestConfig, IngestCore

    out: dict[str, float] = {}
    keep: list[Any] = []

    def grew(name: str, build: Any) -> Any:
        gc.collect()
        before = _anon_rss()
        t0 = time.perf_counter()
        value = build()
        out[f"{name}_s"] = time.perf_counter() - t0
        gc.collect()
        out[name] = _anon_rss() - before
        keep.append(value)
        return value

    net = grew("network_anon", lambda: load_network(net_path, mmap=True))
    out["network"] = sum(a.nbytes for a in net.arrays().values())
    spatial = grew("spatial_anon", lambda: spatial_index_for(net, artifacts))
    out["spatial"] = spatial.nbytes
    index = grew("cch", lambda: cch_index_for(net, artifacts))
    metric = grew("metric", lambda: customize(index, net.edge_freeflow_time_s, "m1"))
    from _scale_checks import query_latency

    out.update(query_latency(metric, net.n_nodes))
    grew("estimator", lambda: EstimatorCore(net))
    grew("profile", lambda: TimeOfWeekProfile.for_network(net, ProfileConfig()))
    core = grew("matcher", lambda: IngestCore(net, IngestConfig(cache_dir=artifacts)))
    probes = walk_probes(net, n_vehicles=1000, n_steps=30, t0_s=1_767_225_600.0, seed=1)
    gc.collect()
    before = _anon_rss()
    n = 0
    t0 = time.perf_counter()
    for _, batch in probes.sort("t").group_by((probes["t"] // 10).alias("w"), maintain_order=True):
        core.ingest(batch, now_s=float(batch["t"].max()))
        n += batch.height
    out["matcher_probes"] = n
    out["matcher_probes_s"] = time.perf_counter() - t0
    gc.collect()
    out["matcher_after_probes"] = _anon_rss() - before
    out["n_edges"] = net.n_edges
    del np
    return out


# -- serving --------------------------------------------------------------------------------
_SERVING = re.compile(rb"serving on (http://\S+)")


def _start(net_path: Path, run_dir: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """``traffic serve`` on ``net_path`` with ``run_dir`` as data dir: (process, base url)."""
    start = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(traffic_cmd() + ["serve", "--network", str(net_path), "--port", "0",
                                                 "--data-dir", str(run_dir),
                                                 "--checkpoint-every", "1m"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    while True:
        found = _SERVING.search(log_path.read_bytes()[start:])
        if found and proc.poll() is None:
            return proc, found.group(1).decode()
        if proc.poll() is not None:
            raise RuntimeError(f"traffic serve exited {proc.returncode}: see {log_path}")
        time.sleep(0.05)


def _ready(client: Any) -> None:
    import httpx

    while True:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> float:
    """SIGINT (a clean stop: the final checkpoint) and the seconds until it exits."""
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return time.perf_counter() - t0


def _settled(client: Any, accepted: int, timeout_s: float = 120.0) -> dict[str, Any]:
    """The status once every accepted probe is applied, pending or unmatched and a
    publication newer than that has reached the router (or ``timeout_s`` passed)."""
    deadline = time.time() + timeout_s
    st = client.get("/v1/status").json()
    while time.time() < deadline:
        p = st["probes"]
        done = p["applied"] + p["pending"] + p["unmatched"] >= accepted and \
            st["queues"]["fold_inflight"] == 0
        if done and (st["workers"]["router"].get("updated_wall_s") or 0) > time.time() - 5:
            break
        time.sleep(1.0)
        st = client.get("/v1/status").json()
    return st


def serve_and_measure(net_path: Path, work: Path, *, settle_s: float, k: int,
                      load_vehicles: int, load_steps: int) -> dict[str, Any]:
    """Start ``traffic serve``, time /readyz, load it with simulated probes, run the serving
    checks, sum PSS per role; then stop it and time the restart from its checkpoint."""
    import shutil

    import httpx
    import numpy as np
    from _scale_checks import (
        closure_latency,
        congestion_latency,
        cpu_seconds,
        probe_load,
        pss_kinds,
    )

    from graph.io import load_network

    run_dir = work / f"run-k{k}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh start, nothing to recover
    log_path = work / f"serve-k{k}.log"
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    proc, url = _start(net_path, run_dir, log_path)
    try:
        client = httpx.Client(base_url=url, timeout=120)
        _ready(client)
        out["ready_s"] = time.perf_counter() - t0
        out["pss_ready"] = pss_by_role(proc.pid)
        net = load_network(net_path, mmap=True)
        tiles = max(net.n_nodes // NY_NODES, 1)
        a, b = 1000, (tiles - 1) * NY_NODES + 200_000
        across = {"from": f"{net.node_lat[a]:.6f},{net.node_lon[a]:.6f}",
                  "to": f"{net.node_lat[b]:.6f},{net.node_lon[b]:.6f}"}
        t1 = time.perf_counter()
        r = client.get("/v1/route", params=across)
        out["route_ms"] = (time.perf_counter() - t1) * 1000
        out["route_status"] = r.status_code
        out["route_km"] = r.json().get("distance_m", float("nan")) / 1000 if r.status_code == 200 else None
        # Load: vehicles on random drives over the whole network, up to now.
        probes = walk_probes(net, n_vehicles=load_vehicles, n_steps=load_steps,
                             t0_s=time.time() - 5.0 * load_steps, seed=2)
        tree = process_tree(proc.pid)
        cpu0 = {pid: cpu_seconds(pid) for pid in tree}
        load = probe_load(url, probes, work)
        cpu = {}
        for pid in tree:
            role = role_of(pid, proc.pid)
            cpu[role] = cpu.get(role, 0.0) + cpu_seconds(pid) - cpu0[pid]
        load["cpu_s_by_role"] = cpu
        out["load"] = load
        out["probes_posted"], out["probes_accepted"] = load["posted"], load["accepted"]
        st = _settled(client, load["accepted"])
        if not st["workers"]["estimator"].get("durability", {}).get("checkpoints_saved"):
            # A checkpoint is taken by the first batch after a minute boundary.
            time.sleep(61.0 - time.time() % 60.0)
            tail = walk_probes(net, n_vehicles=100, n_steps=2, t0_s=time.time() - 10.0, seed=3)
            client.post("/v1/probes", json={"probes": tail.to_dicts()})
            time.sleep(5.0)
            st = client.get("/v1/status").json()
        out["status"] = {"probes": st["probes"], "estimator": {
            key: st["workers"]["estimator"].get(key) for key in (
                "freshness_p50_s", "freshness_p99_s", "durability", "publications_full",
                "publications_delta", "last_publication", "coverage_edges")},
            "router": st["workers"]["router"]}
        # Congestion for 10 km x 10 km boxes around nodes of the first tile.
        rng = np.random.default_rng(4)
        boxes = []
        for node in rng.integers(0, min(NY_NODES, net.n_nodes), 10).tolist():
            lat, lon = float(net.node_lat[node]), float(net.node_lon[node])
            dlat, dlon = 5000 / 111_320, 5000 / (111_320 * np.cos(np.radians(lat)))
            boxes.append((lon - dlon, lat - dlat, lon + dlon, lat + dlat))
        out["congestion"] = congestion_latency(client, boxes)
        # Closures on a route within the first tile (about 10-20 km).
        c, d = 2000, 150_000
        inner = {"from": f"{net.node_lat[c]:.6f},{net.node_lon[c]:.6f}",
                 "to": f"{net.node_lat[d]:.6f},{net.node_lon[d]:.6f}"}
        out["closures"] = closure_latency(client, inner, cycles=5)
        del net
        # Steady state: PSS sampled every 2 s over the settle window (full publications,
        # snapshots and checkpoints come and go each minute); the median sample is reported,
        # the largest beside it.
        samples = []
        end = time.time() + settle_s
        while True:
            samples.append(pss_by_role(proc.pid))
            if time.time() >= end:
                break
            time.sleep(2.0)
        totals = [sum(x.values()) for x in samples]
        out["pss"] = samples[int(np.argsort(totals)[len(totals) // 2])]
        out["pss_max_total"] = max(totals)
        out["pss_samples"] = len(samples)
        out["settle_s"] = settle_s
        out["pss_kinds"] = {str(pid): {"role": role_of(pid, proc.pid), **pss_kinds(pid)}
                            for pid in process_tree(proc.pid)}
        out["processes"] = len(process_tree(proc.pid))
        out["accepted_before_stop"] = st["probes"]["accepted"]
    finally:
        out["stop_s"] = _stop(proc)
    # Recovery: the same data dir, from the final checkpoint (and the log after it).
    t0 = time.perf_counter()
    proc, url = _start(net_path, run_dir, log_path)
    try:
        client = httpx.Client(base_url=url, timeout=120)
        _ready(client)
        out["recovery_ready_s"] = time.perf_counter() - t0
        st = client.get("/v1/status").json()
        out["recovered"] = {"accepted": st["probes"]["accepted"], "applied": st["probes"]["applied"],
                            "replayed_batches": st["workers"]["estimator"].get(
                                "durability", {}).get("replayed_batches")}
    finally:
        _stop(proc)
    ckpts = sorted((run_dir / "checkpoints").glob("*"), key=lambda p: p.stat().st_mtime)
    out["checkpoint_files_b"] = [p.stat().st_size for p in ckpts if p.is_file()]
    return out


def _fmt_b(x: float) -> str:
    return f"{x / 2**20:,.0f} MiB"


def report(k: int, r: dict[str, Any], command: str) -> str:
    """The Markdown section for one run."""
    from _report import machine_description, utc_now

    c, s = r["components"], r["serve"]
    m = c["n_edges"]
    total = sum(s["pss"].values())
    rows = [
        ("input generation (tile_network.py)", f"{r['gen_s']:.1f} s", ""),
        ("`traffic network import`", f"{r['import_s']:.1f} s", f"compiled file {_fmt_b(r['net_file_b'])}"),
        ("`traffic network prepare` (CCH order + spatial index)", f"{r['prepare_s']:.1f} s",
         f"artifacts {_fmt_b(r['artifacts_b'])}"),
        ("`traffic serve` to /readyz 200 (prepared)", f"{s['ready_s']:.1f} s", ""),
    ]
    lines = [f"### scale K={k}: {m:,} directed edges", "",
             f"`{command}`, {utc_now()}, {machine_description()}", "",
             "| step | time | size |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c_} |" for a, b, c_ in rows]
    lines += ["", ("Components, built one by one in one process (anonymous resident growth; "
                   "mapped files count their bytes):"), "",
              "| component | bytes | B per edge | build/load time |", "|---|---|---|---|"]
    comp = [
        ("network (mapped file)", c["network"], f"{c['network_anon_s']:.2f} s"),
        ("spatial index (mapped file)", c["spatial"], f"{c['spatial_anon_s']:.2f} s"),
        ("CCH contraction from saved order (per router process)", c["cch"], f"{c['cch_s']:.2f} s"),
        ("one customized metric (a router holds live + spare + profiles)", c["metric"],
         f"{c['metric_s']:.2f} s"),
        ("estimator core", c["estimator"], f"{c['estimator_s']:.2f} s"),
        ("time-of-week profile (empty, sparse)", c["profile"], f"{c['profile_s']:.2f} s"),
        ("matcher: ingest core at start", c["matcher"], f"{c['matcher_s']:.2f} s"),
        (f"matcher: growth after {c['matcher_probes']:,.0f} probes (random drives)", c["matcher_after_probes"],
         f"{c['matcher_probes_s']:.1f} s"),
    ]
    lines += [f"| {a} | {_fmt_b(b)} | {b / m:.0f} | {t} |" for a, b, t in comp]
    lines += ["", (f"`traffic serve` after {s['probes_accepted']:,} of {s['probes_posted']:,} probes "
                   f"accepted and a route across the tiles (HTTP {s['route_status']}, "
                   f"{s['route_ms']:.0f} ms, {s['route_km'] or float('nan'):.0f} km), "
                   f"PSS summed over {s['processes']} processes:"), "",
              "| process role | PSS at ready | PSS steady | B per edge (steady) |", "|---|---|---|---|"]
    for role in sorted(s["pss"], key=lambda x: -s["pss"][x]):
        lines.append(f"| {role} | {_fmt_b(s['pss_ready'].get(role, 0))} | {_fmt_b(s['pss'][role])} "
                     f"| {s['pss'][role] / m:.0f} |")
    lines.append(f"| **all processes** | {_fmt_b(sum(s['pss_ready'].values()))} | **{_fmt_b(total)}** "
                 f"| **{total / m:.0f}** |")
    if "pss_max_total" in s:
        lines += ["", (f"Steady = the median of {s['pss_samples']} samples of the summed PSS, every "
                       f"2 s over {s.get('settle_s', 0):.0f} s after the checks; the largest sample "
                       f"was {_fmt_b(s['pss_max_total'])} ({s['pss_max_total'] / m:.0f} B per edge).")]
    ray_fixed = s["pss"].get("Ray system", 0)
    lines += ["", (f"Without Ray's own processes (fixed cost, not per edge): "
                   f"{(total - ray_fixed) / m:.0f} B per edge. Target at K=6: at most 500 B per "
                   "edge in total. Snapshots are written to disk (not resident); the API's share "
                   "is inside its process row."), ""]
    lines += _kinds_table(s, m) + _checks_table(c, s)
    return "\n".join(lines)


def _kinds_table(s: dict[str, Any], m: int) -> list[str]:
    """Steady PSS by role and by what backs it (B per edge)."""
    kinds = ("anon", "object store", "network file", "artifacts", "code and other files")
    by_role: dict[str, dict[str, int]] = {}
    for entry in s.get("pss_kinds", {}).values():
        row = by_role.setdefault(entry["role"], {})
        for kind in kinds:
            row[kind] = row.get(kind, 0) + int(entry.get(kind, 0))
    if not by_role:
        return []
    lines = ["Steady PSS by what backs it, B per edge (`/proc/PID/smaps`; the object store is "
             "Ray's shared memory, the files are mapped read-only and shared):", "",
             "| process role | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for role, row in sorted(by_role.items(), key=lambda x: -sum(x[1].values())):
        lines.append(f"| {role} | " + " | ".join(f"{row[kind] / m:.0f}" for kind in kinds) + " |")
    tot = {kind: sum(row[kind] for row in by_role.values()) for kind in kinds}
    lines.append("| **all** | " + " | ".join(f"**{tot[kind] / m:.0f}**" for kind in kinds) + " |")
    return lines + [""]


def _checks_table(c: dict[str, Any], s: dict[str, Any]) -> list[str]:
    """Routing, load, freshness, checkpoint, congestion and closure figures with targets."""
    import numpy as np

    if "load" not in s:
        return []
    ld, st = s["load"], s["status"]
    est, router = st["estimator"], st["router"]
    dur = est.get("durability") or {}
    cl = s["closures"]

    def fin(xs: list[float]) -> str:
        a = np.asarray(xs, dtype=float)
        return f"p50 {np.median(a):.2f} s, max {a.max():.2f} s ({len(a)} rounds)"

    def sec(x: Any) -> str:
        return "n/a" if x is None else f"{x:.2f} s"

    ck = s.get("checkpoint_files_b") or []
    rows = [
        ("CCH node-to-node query (path included), in process",
         f"p50 {c['query_p50_ms']:.2f} ms, p99 {c['query_p99_ms']:.2f} ms ({c['queries']}; "
         f"distance only p50 {c.get('dist_p50_ms', float('nan')):.3f} ms, "
         f"p99 {c.get('dist_p99_ms', float('nan')):.3f} ms; median path "
         f"{c.get('path_arcs_p50', float('nan')):,.0f} arcs)", "p50 <= 1 ms"),
        ("full customization of one metric, one core", f"{c['metric_s']:.2f} s", "<= 6 s"),
        (f"probe load: {ld['posted']:,} probes of random drives, 2 loader processes",
         f"{ld['rate_per_s']:,.0f} accepted/s over {ld['seconds']:.1f} s ({ld['accepted']:,} "
         f"accepted; POST p50 {ld['post_p50_ms']:.0f} ms, p99 {ld['post_p99_ms']:.0f} ms)",
         ">= 10,000 /s"),
        ("CPU during the load, by process (s; the machine has 2 cores)",
         ", ".join(f"{role} {sec_:.0f}" for role, sec_ in sorted(
             ld.get("cpu_s_by_role", {}).items(), key=lambda x: -x[1])), ""),
        ("freshness accepted -> published", f"p50 {sec(est.get('freshness_p50_s'))}, "
         f"p99 {sec(est.get('freshness_p99_s'))}", "p99 <= 5 s"),
        ("freshness published -> serving in the router",
         f"p50 {sec(router.get('serving_lag_p50_s'))}, p99 {sec(router.get('serving_lag_p99_s'))}",
         "p99 <= 10 s"),
        ("checkpoint (live, stream paused while the stages hand over state)",
         f"{sec(dur.get('last_checkpoint_took_s'))}, "
         f"{(dur.get('last_checkpoint_bytes') or 0) / 2**20:,.0f} MiB", ""),
        ("clean stop (final checkpoint)", f"{s['stop_s']:.1f} s; newest checkpoint file "
         f"{(ck[-1] if ck else 0) / 2**20:,.0f} MiB", ""),
        ("restart on the same data dir to /readyz (recovery)",
         f"{s['recovery_ready_s']:.1f} s; accepted {s['recovered']['accepted']:,} of "
         f"{s['accepted_before_stop']:,} before the stop, applied {s['recovered']['applied']:,}, "
         f"{s['recovered']['replayed_batches']} log batches replayed", ""),
        ("`GET /v1/congestion`, 10 km x 10 km boxes",
         f"p50 {s['congestion']['congestion_p50_ms']:.0f} ms, p99 "
         f"{s['congestion']['congestion_p99_ms']:.0f} ms "
         f"({s['congestion']['congestion_edges_p50']:.0f} edges each, median)", ""),
        ("closure in effect on routes (POST -> first route around it)", fin(cl["closure_s"]),
         "<= 10 s"),
        ("closure removed (DELETE -> first route back on it)", fin(cl["reopen_s"]), "<= 10 s"),
    ]
    lines = ["Serving checks (same server, same run):", "", "| check | measured | target |",
             "|---|---|---|"]
    lines += [f"| {a} | {b} | {t} |" for a, b, t in rows]
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=1, help="K x K tiles of New York (1: New York as is)")
    ap.add_argument("--work-dir", default=None, help="where inputs and outputs go (default: temporary)")
    ap.add_argument("--settle-s", type=float, default=60.0,
                    help="window of the steady PSS samples (every 2 s; the median is reported)")
    ap.add_argument("--load-vehicles", type=int, default=20_000,
                    help="simulated vehicles of the probe load (random drives)")
    ap.add_argument("--load-steps", type=int, default=30, help="fixes per vehicle, 5 s apart")
    ap.add_argument("--skip-prepare", action="store_true",
                    help="reuse the work dir's compiled network and artifacts")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to BENCHMARKS.md")
    ap.add_argument("--components", nargs=2, metavar=("NET", "ARTIFACTS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.components:
        print(json.dumps(measure_components(*args.components)))
        return
    if not TILER.exists() or not NY_GR.exists():
        sys.exit(f"needs {TILER} and {NY_GR} (../shared beside the checkout)")
    tmp = tempfile.TemporaryDirectory(prefix="scale-") if args.work_dir is None else None
    work = Path(tmp.name if tmp is not None else args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    r: dict[str, Any] = {}
    net_path = work / f"k{args.k}.net"
    prepared = Path(f"{net_path}.prepared")
    saved = work / f"scale-k{args.k}.json"
    if args.skip_prepare and net_path.exists() and prepared.exists() and saved.exists():
        r = {key: v for key, v in json.loads(saved.read_text()).items()
             if key in ("gen_s", "import_s", "net_file_b", "prepare_s", "artifacts_b")}
    else:
        gr, co, r["gen_s"] = make_input(args.k, work)
        r["import_s"] = _timed(traffic_cmd() + ["network", "import", str(gr), "--co", str(co),
                                                "-o", str(net_path)], stdout=subprocess.DEVNULL)
        r["net_file_b"] = net_path.stat().st_size
        r["prepare_s"] = _timed(traffic_cmd() + ["network", "prepare", str(net_path), "--force"],
                                stdout=subprocess.DEVNULL)
        r["artifacts_b"] = sum(p.stat().st_size for p in prepared.iterdir())
        saved.write_text(json.dumps(r))
    comp = subprocess.run([sys.executable, __file__, "--components", str(net_path), str(prepared)],
                          check=True, capture_output=True, text=True, cwd=ROOT)
    r["components"] = json.loads(comp.stdout.strip().splitlines()[-1])
    r["serve"] = serve_and_measure(net_path, work, settle_s=args.settle_s, k=args.k,
                                   load_vehicles=args.load_vehicles, load_steps=args.load_steps)
    text = report(args.k, r, f"python benchmarks/scale.py --k {args.k}")
    print(text)
    (work / f"scale-k{args.k}.json").write_text(json.dumps(r, indent=1, default=str))
    if not args.no_append:
        from _report import append_section

        append_section(text)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
