"""A small HTTP load generator for the service benchmarks, run in its own processes.

Two modes, each one process with keep-alive connections (``http.client``; no third-party
client, so the client's own cost stays small and visible):

``post``
    POST pre-encoded JSON bodies in order on one connection (closed loop). A 503/429 is
    retried with the same body after ``Retry-After`` (capped at ``--max-backoff-s``), so
    nothing is skipped. Writes one line per request: send time, answer time, status,
    ``accepted`` and the server's ``Server-Timing`` stages.
``get``
    GET paths at a fixed total rate over ``--conns`` threads (open loop): request ``i`` is
    due at ``start + i / rate``, and its latency is measured from when it was *due*, so a
    slow answer that delays later requests counts against them too (no coordinated
    omission). Writes latencies (s) and statuses.

    python benchmarks/_loadgen.py post --url http://127.0.0.1:8000 --bodies B.pkl --out R.json
    python benchmarks/_loadgen.py get --url ... --paths P.json --rate 500 --duration-s 10 \
        --conns 8 --out R.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import pickle
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def _connect(url: str, timeout_s: float = 60.0) -> http.client.HTTPConnection:
    u = urlsplit(url)
    return http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=timeout_s)


def _server_timing(header: str | None) -> dict[str, float]:
    """``parse;dur=1.2, ingest;dur=30`` -> ``{"parse": 0.0012, "ingest": 0.030}`` (s)."""
    out: dict[str, float] = {}
    for item in (header or "").split(","):
        name, _, rest = item.strip().partition(";")
        if rest.startswith("dur="):
            try:
                out[name] = float(rest[4:]) / 1000.0
            except ValueError:
                continue
    return out


def post_bodies(url: str, bodies: list[bytes], *, max_backoff_s: float = 0.25,
                start_at: float | None = None) -> list[dict[str, Any]]:
    """POST every body to ``/v1/probes`` in order; retry 429/503 with the same body."""
    conn = _connect(url)
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
    rows: list[dict[str, Any]] = []
    headers = {"content-type": "application/json", "connection": "keep-alive"}
    for body in bodies:
        retries = 0
        while True:
            t_send = time.time()
            conn.request("POST", "/v1/probes", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            t_done = time.time()
            if resp.status in (429, 503):
                retries += 1
                wait = float(resp.getheader("retry-after") or 1.0)
                time.sleep(min(max(wait, 0.01), max_backoff_s))
                continue
            ack = json.loads(data) if resp.status == 202 else {}
            rows.append({"t_send": t_send, "t_done": t_done, "status": resp.status,
                         "accepted": int(ack.get("accepted", 0)),
                         "rejected": len(ack.get("rejected", [])), "retries": retries,
                         "timing": _server_timing(resp.getheader("server-timing"))})
            break
    conn.close()
    return rows


def get_open_loop(url: str, paths: list[str], *, rate_per_s: float, duration_s: float,
                  conns: int) -> dict[str, Any]:
    """GET ``paths`` round robin at ``rate_per_s`` in total over ``conns`` threads."""
    n_total = max(1, int(rate_per_s * duration_s))
    start = time.perf_counter() + 0.2
    lat: list[list[float]] = [[] for _ in range(conns)]
    codes: list[dict[int, int]] = [{} for _ in range(conns)]

    def worker(k: int) -> None:
        conn = _connect(url)
        for i in range(k, n_total, conns):
            due = start + i / rate_per_s
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                conn.request("GET", paths[i % len(paths)])
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = _connect(url)
                status = 0
            lat[k].append(time.perf_counter() - due)
            codes[k][status] = codes[k].get(status, 0) + 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - start
    merged: dict[int, int] = {}
    for c in codes:
        for s, n in c.items():
            merged[s] = merged.get(s, 0) + n
    return {"latency_s": [x for part in lat for x in part], "codes": merged,
            "elapsed_s": elapsed, "n": n_total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("post")
    p.add_argument("--url", required=True)
    p.add_argument("--bodies", required=True, help="pickle of a list of bytes")
    p.add_argument("--out", required=True)
    p.add_argument("--start-at", type=float, default=None, help="unix time to begin at")
    p.add_argument("--max-backoff-s", type=float, default=0.25)
    g = sub.add_parser("get")
    g.add_argument("--url", required=True)
    g.add_argument("--paths", required=True, help="JSON list of request paths")
    g.add_argument("--rate", type=float, required=True, help="requests per second in total")
    g.add_argument("--duration-s", type=float, default=10.0)
    g.add_argument("--conns", type=int, default=8)
    g.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.mode == "post":
        bodies = pickle.loads(Path(a.bodies).read_bytes())
        rows = post_bodies(a.url, bodies, max_backoff_s=a.max_backoff_s, start_at=a.start_at)
        Path(a.out).write_text(json.dumps(rows))
    else:
        paths = json.loads(Path(a.paths).read_text())
        res = get_open_loop(a.url, paths, rate_per_s=a.rate, duration_s=a.duration_s,
                            conns=a.conns)
        Path(a.out).write_text(json.dumps(res))


if __name__ == "__main__":
    main()
