"""Snapshot store query times over one day of history: the sample city and the NY graph size.

Writes a day of synthetic snapshots (values shaped like the estimator's: most edges at the
prior with no observations, a share observed with a rush-hour dip) under a temporary
directory, then times ``at()``, ``edge_history()`` for one edge over the day and
``aggregate_ratio()`` over a bbox for the day at 15-minute intervals. Prints a table and
appends it to BENCHMARKS.md.

    .venv/bin/python benchmarks/snapshots.py [--ny-every-s 300] [--no-append]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graph.network import RoadNetwork  # noqa: E402
from traffic.snapshots import SnapshotStore, edge_bboxes, keys_in_bbox  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import append_section, machine_description, utc_now  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DAY_T0 = 1767225600.0  # 2026-01-01T00:00:00Z
NY_EDGES = 733_846


def synth_frame(keys: np.ndarray, freeflow: np.ndarray, t_s: float, rng: np.random.Generator,
                *, observed_share: float = 0.2) -> pl.DataFrame:
    """One snapshot: ``observed_share`` of edges observed, slower around 08:00 and 17:00."""
    m = keys.size
    hour = (t_s - DAY_T0) / 3600.0
    dip = 0.45 * (np.exp(-((hour - 8) / 1.2) ** 2) + np.exp(-((hour - 17) / 1.5) ** 2))
    seen = rng.random(m) < observed_share
    ratio = np.ones(m)
    ratio[seen] = np.clip(1.0 - dip + rng.normal(0, 0.15, int(seen.sum())), 0.05, 1.5)
    conf = np.where(seen, rng.random(m), 0.0)
    last = np.where(seen, t_s - rng.random(m) * 60, np.nan)
    return pl.DataFrame({
        "key": keys, "speed_mps": ratio * freeflow, "freeflow_mps": freeflow, "ratio": ratio,
        "confidence": conf, "observations": np.where(seen, rng.integers(1, 30, m), 0),
        "last_update_t": pl.Series(last).fill_nan(None),
    })


def build_day(store: SnapshotStore, keys: np.ndarray, freeflow: np.ndarray, every_s: float,
              version: str) -> tuple[int, float]:
    """Write a day of snapshots every ``every_s``; return (count, seconds spent writing)."""
    rng = np.random.default_rng(42)
    order = np.argsort(keys)
    keys, freeflow = keys[order], freeflow[order]
    times = DAY_T0 + np.arange(0, 86400, every_s)
    spent = 0.0
    for t in times:
        frame = synth_frame(keys, freeflow, float(t), rng)
        t0 = time.perf_counter()
        store.write(frame, t_s=float(t), network_version=version)
        spent += time.perf_counter() - t0
    return times.size, spent


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median and p99 wall time (ms) of ``fn()`` over ``repeats`` runs, plus its last result."""
    out, ts = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append((time.perf_counter() - t0) * 1000)
    return float(np.median(ts)), float(np.percentile(ts, 99)), out


def dir_size_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.parquet"))


def run_case(name: str, keys: np.ndarray, freeflow: np.ndarray, bbox_keys: np.ndarray,
             bbox_label: str, every_s: float, workdir: Path, repeats: int) -> list[dict]:
    store = SnapshotStore(workdir / name, retention_s=None)
    n, write_s = build_day(store, keys, freeflow, every_s, version="bench")
    size = dir_size_bytes(store.root)
    rng = np.random.default_rng(7)
    rows = [dict(case=name, edges=keys.size, snapshots=n, query=f"write one snapshot ({n} total)",
                 median_ms=write_s / n * 1000, p99_ms=float("nan"), result="",
                 size=f"{size / 1e6:.0f} MB on disk")]

    times = rng.uniform(DAY_T0 + every_s, DAY_T0 + 86400, repeats)
    it = iter(times)
    med, p99, (_, df) = timed(lambda: store.at(float(next(it))), repeats)
    rows.append(dict(case=name, edges=keys.size, snapshots=n, query="at(t): whole snapshot",
                     median_ms=med, p99_ms=p99, result=f"{df.height} rows", size=""))
    it = iter(times)
    med, p99, (_, df) = timed(lambda: store.at(float(next(it)), keys=bbox_keys), repeats)
    rows.append(dict(case=name, edges=keys.size, snapshots=n, query=f"at(t, keys=bbox {bbox_label})",
                     median_ms=med, p99_ms=p99, result=f"{df.height} rows", size=""))

    hist_keys = iter(rng.choice(keys, repeats))
    med, p99, df = timed(lambda: store.edge_history(int(next(hist_keys)), DAY_T0, DAY_T0 + 86400),
                         repeats)
    rows.append(dict(case=name, edges=keys.size, snapshots=n, query="edge_history(one edge, day)",
                     median_ms=med, p99_ms=p99, result=f"{df.height} rows", size=""))

    agg_repeats = max(3, repeats // 4)
    med, p99, df = timed(lambda: store.aggregate_ratio(bbox_keys, DAY_T0, DAY_T0 + 86400,
                                                       interval_s=900), agg_repeats)
    rows.append(dict(case=name, edges=keys.size, snapshots=n,
                     query=f"aggregate_ratio(bbox {bbox_label}, day, 15 min)",
                     median_ms=med, p99_ms=p99, result=f"{df.height} buckets", size=""))
    return rows


def city_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray, str, str]:
    from graph.osm import load_osm

    net: RoadNetwork = load_osm(SHARED / "osm" / "kbh.osm.pbf")
    minlon, minlat, maxlon, maxlat = net.bbox
    # The central quarter of the extract (a quarter of its width and height).
    cx, cy, w, h = (minlon + maxlon) / 2, (minlat + maxlat) / 2, (maxlon - minlon) / 8, (maxlat - minlat) / 8
    bb = keys_in_bbox(net, cx - w, cy - h, cx + w, cy + h, bboxes=edge_bboxes(net))
    return (np.asarray(net.edge_key), np.asarray(net.edge_freeflow_mps), bb,
            f"{bb.size} edges", "kbh.osm.pbf (real network)")


def ny_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray, str, str]:
    rng = np.random.default_rng(3)
    keys = np.unique(rng.integers(0, 2**62, NY_EDGES + 1000))[:NY_EDGES]
    keys = rng.permutation(keys)
    freeflow = rng.uniform(8, 30, NY_EDGES)
    # A bbox of ~1 % of the edges: keys are hashes, so any spatial box is a random key subset.
    bb = rng.choice(keys, NY_EDGES // 100, replace=False)
    return keys, freeflow, bb, f"{bb.size} edges", "synthetic keys, DIMACS NY size"


def table(rows: list[dict]) -> str:
    head = "| case | edges | snapshots/day | query | median ms | p99 ms | result |\n|---|---:|---:|---|---:|---:|---|\n"
    body = ""
    for r in rows:
        p99 = "" if np.isnan(r["p99_ms"]) else f"{r['p99_ms']:.1f}"
        body += (f"| {r['case']} | {r['edges']:,} | {r['snapshots']} | {r['query']} | {r['median_ms']:.1f} "
                 f"| {p99} | {r['result'] or r['size']} |\n")
    return head + body


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--city-every-s", type=float, default=60.0)
    ap.add_argument("--ny-every-s", type=float, default=300.0,
                    help="NY snapshot interval (1,440 NY-size files take ~30 GB and long to write)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--skip-ny", action="store_true")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a fresh dir under /tmp")
    args = ap.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="snapbench-", dir="/tmp"))
    rows: list[dict] = []
    notes = []
    try:
        keys, ff, bb, label, what = city_inputs()
        notes.append(f"city: {what}, {keys.size:,} edges, a snapshot every {args.city_every_s:g} s")
        rows += run_case("city", keys, ff, bb, label, args.city_every_s, workdir, args.repeats)
        print(table(rows))
        if not args.skip_ny:
            keys, ff, bb, label, what = ny_inputs()
            notes.append(f"NY: {what}, a snapshot every {args.ny_every_s:g} s")
            rows += run_case("NY", keys, ff, bb, label, args.ny_every_s, workdir, max(5, args.repeats // 2))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    out = table(rows)
    print(out)
    if not args.no_append:
        date = utc_now()
        section = (
            f"## Snapshot store queries, one day of history\n\n"
            f"`.venv/bin/python benchmarks/snapshots.py` — {date} — {machine_description()}\n\n"
            + "".join(f"- {n}\n" for n in notes)
            + "- synthetic values: 20 % of edges observed per snapshot (rush-hour dips), the rest at the "
              "prior; Parquet zstd, 64 Ki-row groups, rows sorted by key; OS page cache warm\n\n"
            + out
        )
        append_section(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
