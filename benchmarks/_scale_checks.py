"""The serving checks of ``benchmarks/scale.py`` (issue 10 items 3-4, issue 11's closures at
K=6), each against a running ``traffic serve`` over HTTP:

* :func:`pss_kinds`: a process's PSS split by what backs it (anonymous memory, Ray's object
  store, the mapped network, the mapped artifacts, code), from ``/proc/PID/smaps``;
* :func:`probe_load`: simulated vehicles over the whole network POSTed as fast as the server
  takes them from ``conns`` loader processes; accepted probes per second, and the freshness
  the server reports under that load;
* :func:`congestion_latency`: ``GET /v1/congestion`` for 10 km x 10 km boxes;
* :func:`closure_latency`: ``POST``/``DELETE /v1/closures`` to the first route that shows it;
* :func:`query_latency`: node-to-node CCH queries on one metric, in process.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def pss_kinds(pid: int) -> dict[str, int]:
    """PSS of ``pid`` (bytes) by backing: ``anon`` (heap, stacks, anonymous maps),
    ``object store`` (Ray's shared memory: ``/dev/shm``, memfd), ``network file`` (``*.net``),
    ``artifacts`` (files under ``*.prepared``), ``code and other files``."""
    out: dict[str, int] = {}
    kind = "anon"
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        head = line.split(maxsplit=5)
        if not head:
            continue
        if not head[0].endswith(":"):  # a mapping's header: address perms offset dev inode path
            path = head[5] if len(head) > 5 else ""
            if not path or path.startswith("[") and path != "[vdso]":
                kind = "anon"
            elif path.startswith("/dev/shm") or "memfd:" in path or "plasma" in path:
                kind = "object store"
            elif path.endswith(".net"):
                kind = "network file"
            elif ".prepared" in path:
                kind = "artifacts"
            else:
                kind = "code and other files"
        elif head[0] == "Pss:":
            out[kind] = out.get(kind, 0) + int(head[1]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0 when it is gone)."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def query_latency(metric: Any, n_nodes: int, *, n: int = 1000, seed: int = 7) -> dict[str, float]:
    """Node-to-node queries (path included) on ``metric`` between random nodes, reusing one
    query object as the router's query threads do: p50/p99 ms. Also the same pairs as
    distance-only searches on RoutingKit's query object (``dist_*``): the rest is unpacking
    the path into a Python list, which grows with the path's arcs (``path_arcs_p50``)."""
    from graph.cch import QueryCache

    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, n_nodes, size=(n, 2))
    queries = QueryCache()
    metric.route_nodes(0, min(1, n_nodes - 1), queries=queries)  # builds the query object
    ms, dist_ms, arcs = [], [], []
    # On a turn-expanded graph RoutingKit's nodes are edges: no plain node-to-node search.
    q = None if metric.index.graph.turn_expanded else queries.query(metric)
    for s, t in pairs.tolist():
        t0 = time.perf_counter()
        res = metric.route_nodes(s, t, queries=queries)
        ms.append((time.perf_counter() - t0) * 1000)
        arcs.append(0 if res is None else res.edges.size)
        if q is None:
            continue
        t0 = time.perf_counter()
        found = q.run(s, t)
        _ = found.distance
        dist_ms.append((time.perf_counter() - t0) * 1000)
        del found  # the binding wants a result dropped before the next run
    queries.clear()
    return {"query_p50_ms": float(np.percentile(ms, 50)),
            "query_p99_ms": float(np.percentile(ms, 99)), "queries": n,
            "dist_p50_ms": float(np.percentile(dist_ms, 50)) if dist_ms else float("nan"),
            "dist_p99_ms": float(np.percentile(dist_ms, 99)) if dist_ms else float("nan"),
            "path_arcs_p50": float(np.percentile(arcs, 50))}


def probe_load(url: str, probes: Any, work: Path, *, conns: int = 2,
               batch: int = 1000) -> dict[str, Any]:
    """POST ``probes`` (a polars frame: vehicle_id, t, lat, lon) over ``conns`` loader
    processes (vehicles split between them, each in time order), as fast as the server
    answers; accepted probes per wall second from the first send to the last answer."""
    from workers.ingest import partition_of

    part = partition_of(probes["vehicle_id"], conns)
    files = []
    for c in range(conns):
        mine = probes.filter(part == c).sort("t", maintain_order=True)
        bodies = [b'{"probes":' + mine.slice(i, batch).write_json().encode() + b"}"
                  for i in range(0, mine.height, batch)]
        f = work / f"load-bodies-{c}.pkl"
        f.write_bytes(pickle.dumps(bodies))
        files.append(f)
    start_at = time.time() + 1.0
    gens = [subprocess.Popen([sys.executable, str(ROOT / "benchmarks/_loadgen.py"), "post",
                              "--url", url, "--bodies", str(f), "--out", str(f) + ".json",
                              "--start-at", str(start_at)], cwd=ROOT) for f in files]
    for g in gens:
        if g.wait() != 0:
            raise RuntimeError(f"load generator exited {g.returncode}")
    rows = [r for f in files for r in json.loads(Path(str(f) + ".json").read_text())]
    accepted = sum(r["accepted"] for r in rows)
    span = max(r["t_done"] for r in rows) - min(r["t_send"] for r in rows)
    lat = [r["t_done"] - r["t_send"] for r in rows]
    return {"posted": probes.height, "accepted": accepted, "seconds": span,
            "rate_per_s": accepted / span if span > 0 else float("nan"),
            "retries": sum(r["retries"] for r in rows),
            "post_p50_ms": float(np.percentile(lat, 50)) * 1000,
            "post_p99_ms": float(np.percentile(lat, 99)) * 1000}


def congestion_latency(client: Any, boxes: list[tuple[float, float, float, float]]) -> dict[str, Any]:
    """``GET /v1/congestion?bbox=...`` (JSON) once per box: p50/p99 ms and the median
    number of edges answered."""
    ms, counts, codes = [], [], {}
    for b in boxes:
        t0 = time.perf_counter()
        r = client.get("/v1/congestion", params={"bbox": ",".join(f"{x:.6f}" for x in b)})
        ms.append((time.perf_counter() - t0) * 1000)
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
        if r.status_code == 200:
            counts.append(len(r.json().get("features", ())))
    return {"congestion_p50_ms": float(np.percentile(ms, 50)),
            "congestion_p99_ms": float(np.percentile(ms, 99)),
            "congestion_edges_p50": float(np.median(counts)) if counts else 0.0,
            "congestion_codes": codes}


def _until(client: Any, params: dict[str, str], ok: Any, timeout_s: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        r = client.get("/v1/route", params=params)
        if r.status_code == 200 and ok(r.json()["edges"]):
            return time.perf_counter() - t0
        time.sleep(0.05)
    return float("inf")


def closure_latency(client: Any, params: dict[str, str], *, cycles: int = 5,
                    timeout_s: float = 30.0) -> dict[str, Any]:
    """Seconds from the 201 of ``POST /v1/closures`` (two edges in the middle of the route
    ``params`` asks for) to the first ``GET /v1/route`` that avoids them, and from the 204 of
    its ``DELETE`` to the first that is back on them; ``inf`` where ``timeout_s`` passed."""
    base = client.get("/v1/route", params=params).json()["edges"]
    mid = base[len(base) // 2: len(base) // 2 + 2]
    close_s, open_s = [], []
    for _ in range(cycles):
        r = client.post("/v1/closures", json={"kind": "closure", "end_t": time.time() + 3600,
                                               "geometry": {"edge_keys": mid},
                                               "reason": "scale benchmark"})
        r.raise_for_status()
        close_s.append(_until(client, params, lambda e: not set(mid) & set(e), timeout_s))
        client.delete(f"/v1/closures/{r.json()['id']}").raise_for_status()
        open_s.append(_until(client, params, lambda e: set(mid) <= set(e), timeout_s))
    return {"closure_s": close_s, "reopen_s": open_s}
