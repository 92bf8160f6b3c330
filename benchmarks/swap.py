"""Hot network swap under route load (issue 10 item 5): memory peak, failed routes, latency.

    python benchmarks/swap.py --k 2            # develop on a 2x2 tiling (2.9M edges)
    python benchmarks/swap.py --k 4            # the issue's check (11.7M edges)

Inputs are generated into the work directory (default a temporary one; never commit them):
``tile_network.py --k K`` (version A) and ``tile_network.py --k K --links 41`` (version B:
another stitching of the same tiles), each imported into a compiled ``.net``; A is prepared
(``traffic network prepare``), B is not (its upload job prepares it, as a user's would).
Artifacts of any version other than A's are removed from A's artifact directory first, so
the job always does its full work.

1. ``traffic serve --network A.net --port 0`` (Ray, the defaults, ``--max-upload-gb`` raised
   to fit B); ``/readyz`` 200; steady PSS: the median of the sum over the server's process
   tree (Ray's processes included, ``/proc/PID/smaps_rollup``) over a few seconds.
2. A sampler sums PSS over the process tree every 0.5 s (the tree is walked again for each
   sample: the import child and new actors appear during the swap), per process and, for
   processes above 100 MiB, by what backs it (anonymous, object store, network file,
   artifacts, code; ``_scale_checks.pss_kinds``).
3. Route load: ``GET /v1/route`` between random node pairs of the first tile (the same
   nodes in both versions) at ``--rate`` requests/s, open loop from a separate process
   (latency counted from when a request was due), for the whole swap and ``--after-s``
   after it. Any answer other than 200, or a connection error, is a failure.
4. ``PUT /v1/network`` with B.net as the raw body (``application/octet-stream``); the job
   is polled until it ends; the route answers after it must carry B's ``network_version``.
5. Steady PSS again once the old network is gone (after ``--settle-s``).

Prints a Markdown table and appends it to BENCHMARKS.md (``--no-append`` to skip); the raw
samples go to ``WORK/swap-kK.json``. Timings on the shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from scale import (  # benchmarks/ is on sys.path (above)
    _SERVING,
    NY_NODES,
    TILER,
    _ready,
    _stop,
    _timed,
    make_input,
    process_tree,
    pss_bytes,
    role_of,
    traffic_cmd,
)

#: Processes above this PSS are split by backing in each sample (smaps is slower to read).
KINDS_ABOVE_B = 100 * 2**20
TERMINAL = ("done", "failed")


# -- inputs ---------------------------------------------------------------------------------
def make_inputs(k: int, links: int, work: Path, *, reuse: bool) -> dict[str, Any]:
    """Both compiled networks (A: default stitching, prepared; B: ``--links``), timed."""
    out: dict[str, Any] = {}
    a_net, b_net = work / f"k{k}.net", work / f"k{k}-l{links}.net"
    if not (reuse and a_net.exists()):
        gr, co, out["gen_a_s"] = make_input(k, work)
        out["import_a_s"] = _timed(traffic_cmd() + ["network", "import", str(gr), "--co", str(co),
                                                    "-o", str(a_net)], stdout=subprocess.DEVNULL)
    if not (reuse and b_net.exists()):
        prefix = work / f"k{k}-l{links}"
        out["gen_b_s"] = _timed([sys.executable, str(TILER), "--k", str(k), "--links", str(links),
                                 "-o", str(prefix)], stdout=subprocess.DEVNULL)
        out["import_b_s"] = _timed(traffic_cmd() + [
            "network", "import", f"{prefix}.gr.gz", "--co", f"{prefix}.co.gz", "-o", str(b_net)],
            stdout=subprocess.DEVNULL)
    out["prepare_a_s"] = _timed(traffic_cmd() + ["network", "prepare", str(a_net)],
                                stdout=subprocess.DEVNULL)
    out["a_net"], out["b_net"] = str(a_net), str(b_net)
    return out


def drop_other_versions(prepared: Path, version: str) -> list[str]:
    """Remove artifacts of versions other than ``version`` from ``prepared`` (an earlier
    run's upload job leaves B's there, and the next job would then skip preparing B)."""
    gone = []
    for p in prepared.iterdir():
        if version not in p.name:
            p.unlink()
            gone.append(p.name)
    return gone


def route_paths(net: Any, *, n: int, seed: int) -> list[str]:
    """``/v1/route`` paths between random node pairs of the first tile."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, min(NY_NODES, net.n_nodes), size=(n, 2))
    lat, lon = net.node_lat, net.node_lon
    return [f"/v1/route?from={lat[a]:.6f},{lon[a]:.6f}&to={lat[b]:.6f},{lon[b]:.6f}"
            for a, b in pairs.tolist()]


# -- route load (its own process) -----------------------------------------------------------
def route_load(url: str, paths: list[str], *, rate_per_s: float, conns: int, stop_file: Path,
               max_s: float) -> list[list[Any]]:
    """GET ``paths`` round robin at ``rate_per_s`` over ``conns`` threads until ``stop_file``
    exists. Rows ``[due unix s, latency s, status (0: connection error), network_version]``;
    the latency counts from when the request was due (open loop)."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    start_pc, start_wall = time.perf_counter() + 0.2, time.time() + 0.2
    rows: list[list[list[Any]]] = [[] for _ in range(conns)]
    stop = threading.Event()

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=60)

    def worker(k: int) -> None:
        conn = connect()
        i = k
        while not stop.is_set():
            due = start_pc + i / rate_per_s
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            version = None
            try:
                conn.request("GET", paths[i % len(paths)])
                resp = conn.getresponse()
                body = resp.read()
                status = resp.status
                if status == 200:
                    version = json.loads(body).get("network_version")
            except (OSError, http.client.HTTPException, ValueError):
                conn.close()
                conn = connect()
                status = 0
            rows[k].append([start_wall + (due - start_pc), time.perf_counter() - due, status,
                            version])
            i += conns
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(conns)]
    for th in threads:
        th.start()
    deadline = time.time() + max_s
    while not stop_file.exists() and time.time() < deadline:
        time.sleep(0.1)
    stop.set()
    for th in threads:
        th.join(timeout=90)
    return sorted((r for part in rows for r in part), key=lambda r: r[0])


# -- memory samples -------------------------------------------------------------------------
def _role(pid: int, server_pid: int) -> str:
    role = role_of(pid, server_pid)
    if role == "Ray system":
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return "gone"
        if b"multiprocessing" in cmd and b"spawn" in cmd:
            return "network import child"
    return role


class Sampler(threading.Thread):
    """Every ``every_s``: PSS of each process of the server's tree (walked again each time),
    and, for processes above :data:`KINDS_ABOVE_B`, PSS by backing."""

    def __init__(self, server_pid: int, every_s: float = 0.5) -> None:
        super().__init__(name="pss-sampler", daemon=True)
        self.server_pid, self.every_s = server_pid, every_s
        self.samples: list[dict[str, Any]] = []
        self.roles: dict[str, str] = {}  # pid (as a string, like the samples' keys) -> role
        self._stop_event = threading.Event()

    def sample(self) -> dict[str, Any]:
        from _scale_checks import pss_kinds

        t = time.time()
        procs: dict[str, int] = {}
        kinds: dict[str, dict[str, int]] = {}
        for pid in process_tree(self.server_pid):
            pss = pss_bytes(pid)
            if not pss:
                continue
            if str(pid) not in self.roles:
                self.roles[str(pid)] = _role(pid, self.server_pid)
            procs[str(pid)] = pss
            if pss > KINDS_ABOVE_B:
                kinds[str(pid)] = pss_kinds(pid)
        return {"t": t, "took_s": time.time() - t, "total": sum(procs.values()), "pss": procs,
                "kinds": kinds}

    def run(self) -> None:
        while not self._stop_event.is_set():
            t0 = time.perf_counter()
            self.samples.append(self.sample())
            self._stop_event.wait(max(0.0, self.every_s - (time.perf_counter() - t0)))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def steady_pss(server_pid: int, seconds: float) -> dict[str, Any]:
    """Median total PSS over ``seconds`` of 0.5 s samples, and the sample nearest it."""
    import numpy as np

    s = Sampler(server_pid)
    samples = []
    end = time.time() + seconds
    while time.time() < end:
        samples.append(s.sample())
        time.sleep(0.5)
    totals = np.array([x["total"] for x in samples])
    mid = samples[int(np.argmin(np.abs(totals - np.median(totals))))]
    return {"median": float(np.median(totals)), "min": int(totals.min()),
            "max": int(totals.max()), "sample": mid, "roles": dict(s.roles)}


# -- the run --------------------------------------------------------------------------------
def _serve(net_path: Path, run_dir: Path, log_path: Path, extra: list[str]) -> tuple[Any, str]:
    """``traffic serve`` on ``net_path`` (extra arguments appended): (process, base url)."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(traffic_cmd() + ["serve", "--network", str(net_path), "--port", "0",
                                                 "--data-dir", str(run_dir), *extra],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    while True:
        found = _SERVING.search(log_path.read_bytes())
        if found and proc.poll() is None:
            return proc, found.group(1).decode()
        if proc.poll() is not None:
            raise RuntimeError(f"traffic serve exited {proc.returncode}: see {log_path}")
        time.sleep(0.05)


def _poll(client: Any, path: str, tries: int = 5) -> dict[str, Any]:
    """``GET path`` as JSON, retried on a connection error: the server closes keep-alive
    connections it found idle, and while a swap step holds the GIL (a CCH contraction) its
    event loop can close one just as the next poll goes out on it."""
    import httpx

    for attempt in range(tries):
        try:
            return client.get(path).json()
        except httpx.TransportError:
            if attempt == tries - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def swap_under_load(a_net: Path, b_net: Path, work: Path, *, k: int, rate_per_s: float,
                    conns: int, steady_s: float, settle_s: float, after_s: float,
                    upload_timeout_s: float) -> dict[str, Any]:
    """Serve A, load it with routes, PUT B, measure; returns the raw figures."""
    import httpx

    from graph.io import load_network

    net_a = load_network(a_net, mmap=True)
    version_a = net_a.version
    paths = route_paths(net_a, n=2000, seed=5)
    del net_a
    dropped = drop_other_versions(Path(f"{a_net}.prepared"), version_a)
    run_dir = work / f"swap-run-k{k}"
    shutil.rmtree(run_dir, ignore_errors=True)
    log_path = work / f"swap-serve-k{k}.log"
    log_path.unlink(missing_ok=True)
    upload_gb = max(1.0, 1.25 * b_net.stat().st_size / 1e9)
    out: dict[str, Any] = {"version_a": version_a, "dropped_artifacts": dropped,
                           "b_file_b": b_net.stat().st_size, "upload_gb": upload_gb,
                           "rate_per_s": rate_per_s}
    t0 = time.perf_counter()
    proc, url = _serve(a_net, run_dir, log_path,
                       ["--max-upload-gb", f"{upload_gb:.2f}",
                        "--upload-timeout", f"{upload_timeout_s:g}"])
    load = None
    sampler = Sampler(proc.pid)
    try:
        client = httpx.Client(base_url=url, timeout=600)
        _ready(client)
        out["ready_s"] = time.perf_counter() - t0
        out["first_route_status"] = client.get(paths[0]).status_code
        time.sleep(settle_s)
        out["before"] = steady_pss(proc.pid, steady_s)
        # Route load in its own process, the sampler here.
        paths_file, stop_file, load_out = (work / "swap-paths.json", work / "swap-load.stop",
                                           work / "swap-load.json")
        paths_file.write_text(json.dumps(paths))
        stop_file.unlink(missing_ok=True)
        load = subprocess.Popen([sys.executable, __file__, "--route-load", url, str(paths_file),
                                 str(rate_per_s), str(conns), str(stop_file), str(load_out)],
                                cwd=ROOT)
        sampler.start()
        time.sleep(3.0)  # load and samples before the upload
        stages: list[tuple[float, str]] = []
        out["put_start"] = time.time()
        with open(b_net, "rb") as body:
            r = client.put("/v1/network", content=body,
                           headers={"content-type": "application/octet-stream"})
        out["put_end"] = time.time()
        out["put_status"] = r.status_code
        if r.status_code != 202:
            raise RuntimeError(f"PUT /v1/network answered {r.status_code}: {r.text[:500]}")
        job = r.json()
        while job["state"] not in TERMINAL:
            stage = f"{job['state']}:{job.get('stage')}"
            if not stages or stages[-1][1] != stage:
                stages.append((time.time(), stage))
            time.sleep(0.5)
            job = _poll(client, f"/v1/network/jobs/{job['id']}")
        out["job_end"] = time.time()
        stages.append((out["job_end"], job["state"]))
        out["job"], out["stages"] = job, stages
        time.sleep(after_s)
        stop_file.touch()
        load.wait(timeout=120)
        sampler.stop()
        out["load"] = json.loads(load_out.read_text())
        time.sleep(settle_s)
        out["after"] = steady_pss(proc.pid, steady_s)
        out["network_after"] = client.get("/v1/network").json()
    finally:
        if load is not None and load.poll() is None:
            load.kill()
        if sampler.is_alive():
            sampler.stop()
        out["samples"], out["roles"] = sampler.samples, sampler.roles
        out["stop_s"] = _stop(proc)
        (work / f"swap-k{k}.json").write_text(json.dumps(out, default=str))  # kept on failure
    return out


# -- report ---------------------------------------------------------------------------------
def summarize(r: dict[str, Any]) -> dict[str, Any]:
    """Peak, ratio, route figures and the peak's composition from the raw run."""
    import numpy as np

    s: dict[str, Any] = {}
    samples = r["samples"]
    t_put, t_end = r["put_start"], r["job_end"]
    swap = [x for x in samples if t_put <= x["t"] <= t_end + 5.0] or samples
    peak = max(swap, key=lambda x: x["total"])
    before = r["before"]["median"]
    s.update(before=before, after=r["after"]["median"], peak=peak["total"],
             peak_at_s=peak["t"] - t_put, ratio=peak["total"] / before)
    stage = "upload"
    for t, name in r["stages"]:
        if t <= peak["t"]:
            stage = name
    s["peak_stage"] = stage
    roles = {**r["before"]["roles"], **r["after"]["roles"], **r["roles"]}

    def by_role(sample: dict[str, Any]) -> dict[str, int]:
        out: dict[str, int] = {}
        for pid, b in sample["pss"].items():
            role = roles.get(pid, "?")
            out[role] = out.get(role, 0) + b
        return out

    def by_kind(sample: dict[str, Any]) -> dict[str, int]:
        out: dict[str, int] = {}
        for kinds in sample["kinds"].values():
            for kind, b in kinds.items():
                out[kind] = out.get(kind, 0) + b
        small = sample["total"] - sum(sample["pss"][p] for p in sample["kinds"])
        out["processes under 100 MiB"] = small
        return out

    s["roles_before"], s["roles_peak"] = by_role(r["before"]["sample"]), by_role(peak)
    s["roles_after"] = by_role(r["after"]["sample"])
    s["kinds_before"], s["kinds_peak"] = by_kind(r["before"]["sample"]), by_kind(peak)
    s["kinds_after"] = by_kind(r["after"]["sample"])
    s["sample_took_p99_s"] = float(np.percentile([x["took_s"] for x in samples], 99))
    s["n_samples"] = len(samples)
    rows = r["load"]
    lat = np.array([x[1] for x in rows])
    ok = np.array([x[2] == 200 for x in rows])
    during = np.array([t_put <= x[0] <= t_end for x in rows])
    s.update(sent=len(rows), failed=int((~ok).sum()),
             codes={str(c): int(sum(1 for x in rows if x[2] == c)) for c in {x[2] for x in rows}})
    if during.any():
        s["p50_ms"] = float(np.percentile(lat[during], 50) * 1000)
        s["p99_ms"] = float(np.percentile(lat[during], 99) * 1000)
        s["max_ms"] = float(lat[during].max() * 1000)
        s["during"] = int(during.sum())
    before_rows = np.array([x[0] < t_put for x in rows])
    if before_rows.any():
        s["p50_before_ms"] = float(np.percentile(lat[before_rows], 50) * 1000)
        s["p99_before_ms"] = float(np.percentile(lat[before_rows], 99) * 1000)
    version_b = r["job"].get("network_version")
    s["version_b"] = version_b
    after = [x for x in rows if x[0] > t_end + 1.0 and x[2] == 200]
    s["after_routes"] = len(after)
    s["after_on_b"] = sum(1 for x in after if x[3] == version_b)
    first_b = [x[0] for x in rows if x[3] == version_b]
    s["first_b_after_job_s"] = (min(first_b) - t_end) if first_b else None
    s["job_s"] = (r["job"]["finished_at"] or t_end) - r["job"]["submitted_at"]
    s["upload_s"] = r["put_end"] - t_put
    stage_times = r["stages"] + [(t_end, "end")]
    s["stage_s"] = {a[1]: b[0] - a[0] for a, b in itertools.pairwise(stage_times)}
    return s


def _gib(x: float) -> str:
    return f"{x / 2**30:.2f} GiB"


def report(k: int, r: dict[str, Any], s: dict[str, Any], command: str, n_edges: int) -> str:
    """The Markdown section."""
    from _report import machine_description, utc_now

    nan = float("nan")
    job = r["job"]
    stages = ", ".join(f"{name.split(':')[-1]} {sec:.1f} s" for name, sec in s["stage_s"].items()
                       if name.startswith("running") and not name.endswith(":None"))
    ok_target = "met" if s["ratio"] <= 1.6 else "**missed**"
    first_b = s["first_b_after_job_s"]
    rows = [
        ("steady PSS before (A serving)", _gib(s["before"]), ""),
        ("peak PSS during the swap", (f"{_gib(s['peak'])}, {s['peak_at_s']:.1f} s after the "
                                      f"PUT began (job stage `{s['peak_stage']}`)"), ""),
        ("steady PSS after (B serving)", _gib(s["after"]), ""),
        ("peak / steady before", f"**{s['ratio']:.2f}**", f"<= 1.6 ({ok_target})"),
        (f"upload (PUT body, {r['b_file_b'] / 2**20:,.0f} MiB)", f"{s['upload_s']:.1f} s", ""),
        (f"swap job, submitted to `{job['state']}`", f"{s['job_s']:.1f} s ({stages})", ""),
        ("route requests sent / failed",
         f"{s['sent']:,} / **{s['failed']}** (statuses {s['codes']})", "0 failed"),
        (f"route latency during the swap ({s.get('during', 0)} requests)",
         (f"p50 {s.get('p50_ms', nan):.0f} ms, p99 {s.get('p99_ms', nan):.0f} ms, "
          f"max {s.get('max_ms', nan):.0f} ms"), ""),
        ("route latency before the PUT",
         f"p50 {s.get('p50_before_ms', nan):.0f} ms, p99 {s.get('p99_before_ms', nan):.0f} ms", ""),
        ("routes after the job on B's version",
         (f"{s['after_on_b']} of {s['after_routes']} (first B answer "
          f"{'never' if first_b is None else f'due {first_b:+.1f} s'} from the job's end)"), "all"),
    ]
    lines = [f"### network swap K={k}: {n_edges:,} directed edges, `PUT /v1/network` under route load",
             "", f"`{command}`, {utc_now()}, {machine_description()}", "",
             (f"Served A (`tile_network.py --k {k}`, prepared), uploaded B (`--k {k} --links 41`, "
              f"compiled, {r['b_file_b'] / 1e9:.2f} GB, not prepared: the job prepares it) with "
              f"`traffic serve --max-upload-gb {r['upload_gb']:.2f}`; routes between random "
              f"nodes of the first tile at {r['rate_per_s']:g}/s open loop from another process; "
              f"PSS summed over the server's process tree (Ray's included) every 0.5 s."), "",
             "| measure | value | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines.append("")
    lines += ["PSS by process role (at the sample nearest each median, and at the peak):", "",
              "| process role | before | peak | after |", "|---|---|---|---|"]
    roles = sorted(set(s["roles_before"]) | set(s["roles_peak"]) | set(s["roles_after"]),
                   key=lambda x: -s["roles_peak"].get(x, 0))
    for role in roles:
        lines.append(f"| {role} | {_gib(s['roles_before'].get(role, 0))} | "
                     f"{_gib(s['roles_peak'].get(role, 0))} | {_gib(s['roles_after'].get(role, 0))} |")
    lines += ["", "PSS by what backs it (processes above 100 MiB split by `/proc/PID/smaps`):", "",
              "| backing | before | peak | after |", "|---|---|---|---|"]
    kinds = sorted(set(s["kinds_before"]) | set(s["kinds_peak"]) | set(s["kinds_after"]),
                   key=lambda x: -s["kinds_peak"].get(x, 0))
    for kind in kinds:
        lines.append(f"| {kind} | {_gib(s['kinds_before'].get(kind, 0))} | "
                     f"{_gib(s['kinds_peak'].get(kind, 0))} | {_gib(s['kinds_after'].get(kind, 0))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=2, help="K x K tiles of New York (>= 2)")
    ap.add_argument("--links", type=int, default=41, help="--links of the second version")
    ap.add_argument("--work-dir", default=None, help="inputs and outputs (default: temporary)")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse compiled networks already in the work dir")
    ap.add_argument("--rate", type=float, default=30.0, help="route requests per second")
    ap.add_argument("--conns", type=int, default=4, help="route load connections")
    ap.add_argument("--steady-s", type=float, default=5.0, help="seconds of steady samples")
    ap.add_argument("--settle-s", type=float, default=10.0, help="pause before steady samples")
    ap.add_argument("--after-s", type=float, default=10.0, help="route load after the job ends")
    ap.add_argument("--upload-timeout", type=float, default=1800.0,
                    help="serve --upload-timeout (s): the job imports and prepares B")
    ap.add_argument("--no-append", action="store_true", help="print only")
    ap.add_argument("--route-load", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.route_load:
        url, paths, rate, conns, stop, out = args.route_load
        rows = route_load(url, json.loads(Path(paths).read_text()), rate_per_s=float(rate),
                          conns=int(conns), stop_file=Path(stop), max_s=3600.0)
        Path(out).write_text(json.dumps(rows))
        return
    if args.k < 2:
        sys.exit("--k must be at least 2 (K=1 has no stitching to vary)")
    tmp = tempfile.TemporaryDirectory(prefix="swap-") if args.work_dir is None else None
    work = Path(tmp.name if tmp is not None else args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs(args.k, args.links, work, reuse=args.reuse)
    r = swap_under_load(Path(inputs["a_net"]), Path(inputs["b_net"]), work, k=args.k,
                        rate_per_s=args.rate, conns=args.conns, steady_s=args.steady_s,
                        settle_s=args.settle_s, after_s=args.after_s,
                        upload_timeout_s=args.upload_timeout)
    r["inputs"] = inputs
    (work / f"swap-k{args.k}.json").write_text(json.dumps(r, default=str))
    s = summarize(r)
    (work / f"swap-k{args.k}-summary.json").write_text(json.dumps(s, indent=1, default=str))
    from graph.io import load_network

    n_edges = load_network(inputs["a_net"], mmap=True).n_edges
    text = report(args.k, r, s, f"python benchmarks/swap.py --k {args.k}", n_edges)
    print(text)
    if not args.no_append:
        from _report import append_section

        append_section(text)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
