"""Benchmark the speed estimator update against a plain scatter-add of the same data.

NumPy (default): batches of 1 M and 100 k traversals into 1 M segments, ``fold_traversals``
(numba kernel and NumPy array code) vs one
``np.bincount`` of the same edges and paces, interleaved so both see the same machine load;
then scaling rows: 1 k traversals into 50 k, 5 M and 26.4 M segments (a fold must cost
O(batch), so these should not grow with the network).
``--xp cupy`` (GPU): 10 M traversals into 10 M segments vs ``cupyx.scatter_add``; then the
K=6 network size (``--m-gpu``, 26.4 M segments): the device memory per segment (state and
the kernels' persistent sums, from CuPy's pool), folds of 10 k to 10 M traversals, and one
copy of the state arrays as the peer of an O(segments) pass. Timed with CUDA events after a
warm-up. Prints a table of medians and p99s and appends it to BENCHMARKS.md (unless
``--no-append``; ``--output`` may name several files).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from traffic import _kernels
from traffic.estimator import EstimatorConfig, EstimatorState, fold_traversals

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import append_section, machine_description, utc_now  # noqa: E402

T0 = 1_700_000_000.0


def _inputs(xp, rng, n: int, m: int, dtype):
    """Traversals around each segment's pace 0.1 s/m (lognormal noise, 5% 8x outliers)."""
    edge = xp.asarray(rng.integers(0, m, n).astype(np.int32))
    pace_h = 0.1 * rng.lognormal(0.0, 0.2, n)
    pace_h[rng.random(n) < 0.05] *= 8
    pace = xp.asarray(pace_h.astype(dtype))
    weight = xp.asarray(rng.uniform(0.2, 1.0, n).astype(dtype))
    t_obs = xp.asarray(T0 + rng.uniform(0, 60, n))
    return edge, pace, weight, t_obs


def _state(xp, m: int, dtype) -> EstimatorState:
    state = EstimatorState.initial(xp.full(m, 0.1, dtype=dtype), xp=xp, dtype=dtype)
    state.c[...] = 4.0  # evidence everywhere, so the gate is live
    state.var[...] = 4e-4  # sd 0.02 s/m, as the lognormal noise
    state.last_t_s[...] = T0 - 30
    return state


def _stats(samples_s: list[float]) -> tuple[float, float]:
    a = np.asarray(samples_s) * 1e3
    return float(np.median(a)), float(np.percentile(a, 99))


def bench_numpy(n: int, m: int, repeats: int) -> list[tuple[str, float, float, str]]:
    """The numba kernel, the NumPy array code (``use_kernels=False``) and a bincount peer,
    interleaved per repeat; wall-clock medians/p99s, CPU-time medians in the note (the
    machine is shared: CPU time leaves out waiting for a core)."""
    rng = np.random.default_rng(0)
    config = EstimatorConfig()
    edge, pace, weight, t_obs = _inputs(np, rng, n, m, np.float64)
    has_numba = _kernels.cpu_kernels() is not None
    paths = {"numba kernel": True, "NumPy array code": False} if has_numba else {
        "NumPy array code": False}
    states = {name: _state(np, m, np.float64) for name in paths}
    for name, kern in paths.items():  # warm-up (and numba load/compile)
        fold_traversals(states[name], edge, pace, weight, t_obs_s=t_obs, config=config,
                        use_kernels=kern)
    wall = {name: [] for name in [*paths, "np.bincount peer"]}
    cpu = {name: [] for name in wall}
    for k in range(repeats):
        for name, kern in paths.items():
            t, c = time.perf_counter(), time.process_time()
            fold_traversals(states[name], edge, pace, weight, t_obs_s=t_obs + 60 * (k + 1),
                            config=config, use_kernels=kern)
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        np.bincount(edge, weights=pace, minlength=m)
        wall["np.bincount peer"].append(time.perf_counter() - t)
        cpu["np.bincount peer"].append(time.process_time() - c)
    rows = []
    for name, s in wall.items():
        med, p99 = _stats(s)
        cpu_med = _stats(cpu[name])[0]
        label = name if name.startswith("np.") else f"fold_traversals, {name}"
        rows.append((f"{label}: {n:,} into {m:,} (float64)", med, p99,
                     f"{n / (med / 1e3) / 1e6:.1f} M traversals/s (CPU time {cpu_med:.1f} ms: "
                     f"{n / (cpu_med / 1e3) / 1e6:.1f} M/s)"))
    return rows


def bench_scaling(n: int, sizes: list[int], repeats: int) -> list[tuple[str, float, float, str]]:
    """A small batch (``n`` traversals) folded into networks of growing size: a probe batch
    must cost O(batch), so the time should not grow with the segment count."""
    rng = np.random.default_rng(1)
    config = EstimatorConfig()
    has_numba = _kernels.cpu_kernels() is not None
    paths = {"numba kernel": True, "NumPy array code": False} if has_numba else {
        "NumPy array code": False}
    rows = []
    for m in sizes:
        edge, pace, weight, t_obs = _inputs(np, rng, n, m, np.float64)
        state = _state(np, m, np.float64)
        for name, kern in paths.items():
            fold_traversals(state, edge, pace, weight, t_obs_s=t_obs, config=config,
                            use_kernels=kern)  # warm-up
            wall = []
            for k in range(repeats):
                t = time.perf_counter()
                fold_traversals(state, edge, pace, weight, t_obs_s=t_obs + 60 * (k + 1),
                                config=config, use_kernels=kern)
                wall.append(time.perf_counter() - t)
            med, p99 = _stats(wall)
            rows.append((f"fold_traversals, {name}: {n:,} into {m:,} (float64)", med, p99,
                         f"{med * 1e3 / n:.2f} us per traversal"))
        del state
    return rows


def _time_gpu(cp, fn, repeats: int) -> list[float]:
    fn()
    cp.cuda.Device().synchronize()
    out = []
    for _ in range(repeats):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        out.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
    return out


def bench_cupy(repeats: int, m_big: int) -> list[tuple[str, float, float, str]]:
    import cupy as cp
    import cupyx

    config = EstimatorConfig()
    rng = np.random.default_rng(0)
    rows = []
    n = m = 10_000_000
    edge, pace, weight, t_obs = _inputs(cp, rng, n, m, np.float32)
    state = _state(cp, m, cp.float32)
    out = cp.zeros(m, cp.float32)
    fold = _time_gpu(cp, lambda: fold_traversals(state, edge, pace, weight, T0 + 60,
                                                 t_obs_s=t_obs, config=config), repeats)
    peer = _time_gpu(cp, lambda: cupyx.scatter_add(out, edge, pace), repeats)
    for name, s in (("fold_traversals 10M into 10M (CUDA kernels)", fold),
                    ("cupyx.scatter_add peer 10M into 10M", peer)):
        med, p99 = _stats(s)
        rows.append((name, med, p99, f"{n / (med / 1e3) / 1e9:.2f} G traversals/s"))
    rows.append(("ratio fold / scatter_add", _stats(fold)[0] / _stats(peer)[0], 0.0, "target <= 2"))
    del edge, pace, weight, t_obs, state, out
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    base = pool.used_bytes()
    m = m_big
    state = _state(cp, m, cp.float32)
    state_bytes = pool.used_bytes() - base
    edge, pace, weight, t_obs = _inputs(cp, rng, 1_000, m, np.float32)
    fold_traversals(state, edge, pace, weight, T0 + 60, t_obs_s=t_obs, config=config)
    cp.cuda.Device().synchronize()
    del edge, pace, weight, t_obs
    held = pool.used_bytes() - base  # state + the kernels' persistent sums
    rows.append((f"device memory per segment at {m:,} segments", held / m, 0.0,
                 f"state {state_bytes / m:.1f} B + kernel sums {(held - state_bytes) / m:.1f} B;"
                 f" {held / 2**30:.2f} GiB in all"))
    times = {}
    for n in (10_000, 100_000, 1_000_000, 10_000_000):
        edge, pace, weight, t_obs = _inputs(cp, rng, n, m, np.float32)
        times[n] = _time_gpu(cp, lambda: fold_traversals(  # noqa: B023 (called at once)
            state, edge, pace, weight, T0 + 60, t_obs_s=t_obs, config=config), repeats)
        med, p99 = _stats(times[n])
        rows.append((f"fold {n:,} traversals into {m:,} segments", med, p99,
                     f"{n / (med / 1e3) / 1e6:.0f} M traversals/s"
                     + (" (sparse apply)" if 4 * n < m else " (dense apply)")))
        del edge, pace, weight, t_obs
    arrays = (state.mu, state.c, state.var, state.last_t_s, state.count)
    copy = _time_gpu(cp, lambda: [a.copy() for a in arrays], repeats)
    med, p99 = _stats(copy)
    rows.append((f"peer: copy of the {m:,}-segment state arrays (one O(segments) pass)", med,
                 p99, ""))
    rows.append(("ratio fold(10k) / state copy", _stats(times[10_000])[0] / med, 0.0,
                 "O(batch): far below 1"))
    rows.append(("ratio fold(1M) / state copy", _stats(times[1_000_000])[0] / med, 0.0,
                 "target <= 2"))
    return rows


def _machine(xp_name: str) -> str:
    """The machine line, naming the GPU (``nvidia-smi``) for a CuPy run."""
    note = ""
    if xp_name == "cupy":
        try:
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, check=False).stdout.strip()
            note = f"GPU {gpu}"
        except OSError:
            pass
    return machine_description(note=note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xp", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--n", type=int, nargs="+", default=[1_000_000, 100_000],
                        help="traversals per batch (NumPy run; one table row group each)")
    parser.add_argument("--m", type=int, default=1_000_000, help="segments (NumPy run)")
    parser.add_argument("--small-n", type=int, default=1_000,
                        help="traversals per batch of the scaling rows (NumPy run)")
    parser.add_argument("--scaling-m", type=int, nargs="*",
                        default=[50_000, 5_000_000, 26_400_000],
                        help="segment counts of the scaling rows (NumPy run; none: skip)")
    parser.add_argument("--no-append", action="store_true")
    parser.add_argument("--m-gpu", type=int, default=26_400_000,
                        help="segments of the large GPU rows (26.4 M: the K=6 network)")
    parser.add_argument("--output", nargs="+", default=["BENCHMARKS.md"],
                        help="files the section is appended to")
    args = parser.parse_args()
    if args.xp == "cupy":
        rows = bench_cupy(args.repeats, args.m_gpu)
    else:
        rows = [r for n in args.n for r in bench_numpy(n, args.m, args.repeats)]
        if args.scaling_m:
            rows += bench_scaling(args.small_n, args.scaling_m, args.repeats)
    lines = [
        f"## Estimator update (`python benchmarks/estimator.py --xp {args.xp}`)\n",
        f"{utc_now()}; {_machine(args.xp)} (at the end); {args.repeats} repeats after a warm-up.\n",
        "| what | median ms | p99 ms | note |", "|---|---:|---:|---|",
    ]
    for name, med, p99, note in rows:
        if name.startswith("ratio"):
            lines.append(f"| {name} | {med:.2f}x | | {note} |")
        elif name.startswith("device memory"):
            lines.append(f"| {name} | {med:.1f} B/segment | | {note} |")
        else:
            lines.append(f"| {name} | {med:.2f} | {p99:.2f} | {note} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_append:
        for out in args.output:
            append_section(text, path=Path(out))


if __name__ == "__main__":
    main()
