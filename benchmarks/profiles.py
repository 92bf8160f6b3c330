"""Memory and learning cost of the sparse time-of-week profile at New York size.

Builds a profile over 730,000 segments, observes 10 % of them (a fixed random set, as the
confident edges of a city are) in 100 bins, and reports bytes per observed entry, the
bytes the dense layout (format 1) needed, the time of one ``observe_edges`` into a full
bin and of one dense-vector ``observe``, ``prior_pace``, ``state_dict`` and a save/load.
Prints a Markdown table; ``--append`` adds it to BENCHMARKS.md.

    .venv/bin/python benchmarks/profiles.py [--edges 730000] [--share 0.1] [--bins 100] [--append]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from traffic.profiles import TimeOfWeekProfile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import append_section, machine_description, utc_now  # noqa: E402

MONDAY_2024_UTC = 1_704_067_200.0


def _best(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--edges", type=int, default=730_000)
    ap.add_argument("--share", type=float, default=0.1)
    ap.add_argument("--bins", type=int, default=100)
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.edges
    profile = TimeOfWeekProfile(np.arange(n, dtype=np.int64))
    seen = np.sort(rng.choice(n, int(n * args.share), replace=False))
    k = seen.size
    base = rng.uniform(0.03, 0.3, k).astype(np.float32)
    t0 = time.perf_counter()
    for b in range(args.bins):
        profile.observe_edges(seen, base, np.ones(k, np.float32), MONDAY_2024_UTC + 900 * b)
    fill_s = time.perf_counter() - t0
    t = MONDAY_2024_UTC
    conf = rng.uniform(0.1, 1.0, k).astype(np.float32)
    sparse_s = _best(lambda: profile.observe_edges(seen, base * 1.1, conf, t))
    pace = np.full(n, np.nan, np.float32)
    pace[seen] = base
    conf_full = np.zeros(n, np.float32)
    conf_full[seen] = conf
    dense_s = _best(lambda: profile.observe(pace, conf_full, t))
    prior_s = _best(lambda: profile.prior_pace(t))
    state_s = _best(lambda: profile.state_dict(), 2)
    entries = profile.n_entries
    held = profile.nbytes - profile.edge_key.nbytes - profile.bin_revision.nbytes
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profile.npz"
        save_s = _best(lambda: profile.save_atomic(path), 1)
        size = path.stat().st_size
        load_s = _best(lambda: TimeOfWeekProfile.load(path), 1)
    dense_bytes = 8 * profile.config.n_bins * n
    rows = [
        ("segments / observed / bins", f"{n:,} / {k:,} / {args.bins}"),
        ("observed entries", f"{entries:,}"),
        ("bytes per observed entry", f"{held / entries:.1f}"),
        ("entries + edge keys", f"{profile.nbytes / 2**20:.1f} MiB"),
        ("dense layout (format 1)", f"{dense_bytes / 2**20:,.0f} MiB"),
        ("fill: observe_edges into 100 new bins", f"{fill_s:.2f} s"),
        (f"observe_edges, {k:,} edges into a full bin", f"{sparse_s * 1e3:.1f} ms"),
        (f"observe, dense vectors ({n:,})", f"{dense_s * 1e3:.1f} ms"),
        ("prior_pace", f"{prior_s * 1e3:.1f} ms"),
        ("state_dict", f"{state_s * 1e3:.1f} ms"),
        ("save_atomic / load (file size)",
         f"{save_s:.2f} s / {load_s:.2f} s ({size / 2**20:.1f} MiB)"),
    ]
    text = "\n".join([
        f"## Time-of-week profile, sparse ({utc_now()})", "",
        machine_description(), "",
        "| measure | value |", "|---|---|",
        *[f"| {a} | {b} |" for a, b in rows], ""])
    print(text)
    if args.append:
        append_section(text)


if __name__ == "__main__":
    main()
