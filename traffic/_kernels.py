"""Hand-written CUDA kernels of the speed estimator, compiled lazily, behind validating wrappers.

Two kernels implement one estimator update on the GPU (the NumPy twin is in
:mod:`traffic.estimator`, ``_fold_sums_xp`` and ``_apply_sums_xp``):

``traffic_fold_pace`` (RawKernel, one thread per traversal)
    gathers the segment's state, decays its evidence weight to the update time, gates the
    traversal against the current estimate and atomically adds ``w``, ``w * dev`` and
    ``w * dev**2`` (``dev`` = pace minus the segment's evidence mean), the gated weight and
    a count into per-segment sums. With ``collect`` it also counts hits per segment and
    marks, per traversal, whether it was its segment's first (``first[i] = e``, else -1).
``traffic_apply_pace`` (RawKernel)
    blends those sums into the state in place and zeroes them again. *Sparse*: one thread
    per traversal, acting where ``first[i] >= 0`` (the touched segments, each once), so a
    batch costs O(batch) whatever the network size. *Dense*: one thread per segment
    (coalesced), for batches with ``4 n >= m``, where that is O(batch) too.

The per-segment sums are not allocated per batch: they live beside the state (zero between
updates) and the apply kernel re-zeroes what the fold wrote; see
:func:`traffic.estimator.fold_traversals` for the device memory per segment.

:data:`KERNEL_SOURCES` names every CUDA source (plain strings, importable without CuPy or
a GPU); ``tests/test_kernels_nvrtc.py`` compiles each with NVRTC for sm_80 and sm_90.

On the CPU, :func:`cpu_fold_apply` runs the same update as one fused numba kernel
(:mod:`traffic._cpu_kernels`, loaded by :func:`cpu_kernels`; ``None`` without numba).

CuPy is imported only when a wrapper is first called; kernels are built once per process
(module-level lazily filled cache keyed by name, never rebuilt per call). Wrappers check
dtype (``float32``/``int32``/``float64`` as documented), C-contiguity and lengths before
launching, because CuPy does not; they raise :class:`traffic.errors.KernelInputError`. They
also range-check edge ids before any launch (:func:`check_edge_range`, raising
:class:`traffic.errors.TraversalBatchError`): that reads the batch's smallest and largest
edge id back from the device, the one synchronization here; launches are asynchronous.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import numpy as np

from traffic.errors import KernelInputError, TraversalBatchError

_PREAMBLE = r"""
// Shared device helpers of the traffic estimator kernels.
__device__ __forceinline__ float traffic_decay(float c, double t, double last, float inv_tau) {
    double age = t - last;
    if (age < 0.0) age = 0.0;
    return c * expf(-(float)(age * (double)inv_tau));
}
__device__ __forceinline__ float traffic_clampf(float x, float lo, float hi) {
    return fminf(fmaxf(x, lo), hi);
}
"""

_FOLD_SOURCE = _PREAMBLE + r"""
extern "C" __global__ void traffic_fold_pace(
    const int* __restrict__ edge, const float* __restrict__ pace,
    const float* __restrict__ weight, const double* __restrict__ t_obs, const long long n,
    const float* __restrict__ mu, const float* __restrict__ c, const float* __restrict__ var,
    const float* __restrict__ prior, const double* __restrict__ last,
    const double t, const float inv_tau, const float prior_weight, const float gate_sigma,
    const float gate_min_weight, const float outlier_weight, const float min_rel,
    const float min_pace, const float max_pace,
    float* __restrict__ sum_w, float* __restrict__ sum_dev, float* __restrict__ sum_dev2,
    float* __restrict__ sum_gated, int* __restrict__ count,
    int* __restrict__ hits, int* __restrict__ first, const int collect)
{
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int e = edge[i];
        const float mu_e = mu[e];
        const float c_dec = traffic_decay(c[e], t, last[e], inv_tau);
        const float p_hat = (prior_weight * prior[e] + c_dec * mu_e) / (prior_weight + c_dec);
        const float p = traffic_clampf(pace[i], min_pace, max_pace);
        const float floor_sd = min_rel * p_hat;
        const float sd = sqrtf(fmaxf(var[e], floor_sd * floor_sd));
        const bool gated = (c_dec >= gate_min_weight) && (fabsf(p - p_hat) > gate_sigma * sd);
        double age = t - t_obs[i];
        if (age < 0.0) age = 0.0;
        float w = weight[i] * expf(-(float)(age * (double)inv_tau));
        if (gated) {
            atomicAdd(sum_gated + e, w);
            w *= outlier_weight;
        } else {
            atomicAdd(count + e, 1);
        }
        const float dev = p - mu_e;
        atomicAdd(sum_w + e, w);
        atomicAdd(sum_dev + e, w * dev);
        atomicAdd(sum_dev2 + e, w * dev * dev);
        if (collect) {
            first[i] = (atomicAdd(hits + e, 1) == 0) ? e : -1;
        }
    }
}
"""

_APPLY_SOURCE = _PREAMBLE + r"""
extern "C" __global__ void traffic_apply_pace(
    float* __restrict__ sum_w, float* __restrict__ sum_dev, float* __restrict__ sum_dev2,
    float* __restrict__ sum_gated, int* __restrict__ n_obs, int* __restrict__ hits,
    const int* __restrict__ first, const long long n, const int sparse,
    const double t, const float inv_tau, const float log_erosion,
    float* __restrict__ mu, float* __restrict__ c, float* __restrict__ var,
    double* __restrict__ last, int* __restrict__ count)
{
    // sparse: i runs over the batch's traversals, acting on first[i] >= 0 (each touched
    // segment once); dense: i runs over the segments.
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        int e;
        if (sparse) {
            e = first[i];
            if (e < 0) continue;
            hits[e] = 0;
        } else {
            e = (int)i;
        }
        const float sw = sum_w[e];
        const float sg = sum_gated[e];
        const int k = n_obs[e];
        if (!(sw > 0.f || sg > 0.f || k != 0)) continue;
        count[e] += k;
        if (sw > 0.f || sg > 0.f) {
            const float c_dec = traffic_decay(c[e], t, last[e], inv_tau) * expf(sg * log_erosion);
            const float c_new = c_dec + sw;
            const float delta = sum_dev[e] / c_new;
            mu[e] = mu[e] + delta;
            const float v = (c_dec * var[e] + sum_dev2[e]) / c_new - delta * delta;
            var[e] = v > 0.f ? v : 0.f;
            c[e] = c_new;
            last[e] = t;
        }
        sum_w[e] = 0.f;
        sum_dev[e] = 0.f;
        sum_dev2[e] = 0.f;
        sum_gated[e] = 0.f;
        n_obs[e] = 0;
    }
}
"""

#: Every CUDA source of the estimator, ``{kernel name: source}``: plain strings, importable
#: without CuPy or a GPU (CI compiles each with NVRTC, ``tests/test_kernels_nvrtc.py``).
KERNEL_SOURCES: dict[str, str] = {
    "traffic_fold_pace": _FOLD_SOURCE,
    "traffic_apply_pace": _APPLY_SOURCE,
}
#: NVRTC options of every kernel (CuPy adds the architecture itself).
KERNEL_OPTIONS: tuple[str, ...] = ("--std=c++17",)


@functools.cache
def _cupy() -> ModuleType:
    try:
        import cupy
    except ImportError as err:
        raise KernelInputError(
            "the GPU kernels need CuPy (pip install '.[gpu]' on a CUDA machine)") from err
    return cupy


@functools.cache
def cpu_kernels() -> ModuleType | None:
    """The numba kernel module :mod:`traffic._cpu_kernels`, or ``None`` where numba is absent.

    Imported (and numba with it) on first call, then cached; a numba that fails to import
    (absent, or built for another NumPy) counts as absent.
    """
    try:
        from traffic import _cpu_kernels
    except ImportError:
        return None
    return _cpu_kernels


@functools.cache
def raw_kernel(name: str) -> Any:
    """The compiled RawKernel ``name`` of :data:`KERNEL_SOURCES` (built once, then cached)."""
    cp = _cupy()
    return cp.RawKernel(KERNEL_SOURCES[name], name, options=KERNEL_OPTIONS)


def fold_kernel() -> Any:
    """The compiled ``traffic_fold_pace`` RawKernel (built on first use, then cached)."""
    return raw_kernel("traffic_fold_pace")


def apply_kernel() -> Any:
    """The compiled ``traffic_apply_pace`` RawKernel (built on first use, then cached)."""
    return raw_kernel("traffic_apply_pace")


def check_edge_range(edge: Any, m: int) -> None:
    """Raise :class:`traffic.errors.TraversalBatchError` unless every ``edge`` is in ``0..m-1``.

    O(n) in the batch: NumPy or CuPy ``min``/``max`` (on CuPy, one 16-byte read back from
    the device; the offending index is looked up only when there is one). The message names
    the first offending edge id, its index and the valid range.
    """
    n = int(edge.shape[0])
    if n == 0:
        return
    if type(edge).__module__.split(".")[0] == "cupy":
        lo, hi = (int(v) for v in _cupy().stack((edge.min().astype(np.int64),
                                                 edge.max().astype(np.int64))).get())
    else:
        lo, hi = int(edge.min()), int(edge.max())
    if lo >= 0 and hi < m:
        return
    bad = (edge < 0) | (edge >= m)
    i = int(bad.argmax())
    raise _edge_range_error(int(edge[i]), i, m)


def _edge_range_error(value: int, index: int, m: int) -> TraversalBatchError:
    return TraversalBatchError(
        f"`edge` must be within 0..{m - 1} (the network's segments); got {value} at index "
        f"{index}; nothing was folded")


def _check(name: str, a: Any, dtype: Any, n: int | None) -> None:
    if not hasattr(a, "dtype") or a.dtype != np.dtype(dtype):
        raise KernelInputError(
            f"`{name}` must be a {np.dtype(dtype).name} array; got {getattr(a, 'dtype', type(a))}")
    if a.ndim != 1 or not a.flags.c_contiguous:
        raise KernelInputError(f"`{name}` must be 1-D and C-contiguous; got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise KernelInputError(f"`{name}` must have length {n}; got {a.shape[0]}")


def fold_pace(
    edge: Any, pace: Any, weight: Any, t_obs: Any, *, mu: Any, c: Any, var: Any, prior: Any,
    last: Any, t_s: float, params: dict[str, float], out: tuple[Any, ...],
    first: Any = None,
) -> None:
    """Launch ``traffic_fold_pace``: add gated, decayed traversal sums into ``out`` (in place).

    Parameters
    ----------
    edge, pace, weight, t_obs
        Per traversal: ``int32`` segment ids in ``0..m-1`` (range-checked here before the
        launch: :func:`check_edge_range`), ``float32`` pace (s/m), ``float32`` weight,
        ``float64`` observation time.
    mu, c, var, prior, last
        Per segment ``float32`` state (evidence mean pace, evidence weight, variance, prior
        pace) and ``float64`` last update time.
    t_s
        Update time (unix s).
    params
        ``inv_tau, prior_weight, gate_sigma, gate_min_weight, outlier_weight, min_rel,
        min_pace, max_pace`` (others ignored).
    out
        ``(sum_w, sum_dev, sum_dev2, sum_gated, count, hits)``: ``float32[m]`` x 4 and
        ``int32[m]`` x 2, zero on entry (``hits`` is only written when ``first`` is given;
        it may be left out then).
    first
        ``int32[n]`` receiving, per traversal, its segment id when it was that segment's
        first in the batch, else -1 (for the sparse :func:`apply_pace`); ``None``: not
        collected (dense apply).

    Synchronizes only to read the batch's edge range (:func:`check_edge_range`).
    """
    n = int(edge.shape[0]) if hasattr(edge, "shape") else -1
    _check("edge", edge, np.int32, None)
    for name, a in (("pace", pace), ("weight", weight)):
        _check(name, a, np.float32, n)
    _check("t_obs", t_obs, np.float64, n)
    m = int(mu.shape[0])
    for name, a in (("mu", mu), ("c", c), ("var", var), ("prior", prior)):
        _check(name, a, np.float32, m)
    _check("last", last, np.float64, m)
    for name, a in zip(("sum_w", "sum_dev", "sum_dev2", "sum_gated"), out[:4]):
        _check(name, a, np.float32, m)
    _check("count", out[4], np.int32, m)
    if first is not None:
        if len(out) < 6:
            raise KernelInputError("`out` needs its sixth array, `hits`, when `first` is given")
        _check("hits", out[5], np.int32, m)
        _check("first", first, np.int32, n)
    if n == 0:
        return
    check_edge_range(edge, m)
    grid = _grid(n)
    f32 = np.float32
    hits = out[5] if first is not None else out[4]  # not written without `first`
    fold_kernel()(
        (grid,), (_BLOCK,),
        (edge, pace, weight, t_obs, np.int64(n), mu, c, var, prior, last, np.float64(t_s),
         f32(params["inv_tau"]), f32(params["prior_weight"]), f32(params["gate_sigma"]),
         f32(params["gate_min_weight"]), f32(params["outlier_weight"]), f32(params["min_rel"]),
         f32(params["min_pace"]), f32(params["max_pace"]), *out[:5], hits,
         first if first is not None else hits, np.int32(first is not None)),
    )


_BLOCK = 256


def _grid(n: int) -> int:
    return max(1, min((n + _BLOCK - 1) // _BLOCK, 65535 * 8))


def apply_pace(
    sums: tuple[Any, ...], *, mu: Any, c: Any, var: Any, last: Any, count: Any,
    t_s: float, inv_tau: float, log_erosion: float, first: Any = None,
) -> None:
    """Launch ``traffic_apply_pace``: blend per-segment sums into the state in place and
    zero the sums (and ``hits``) again.

    ``sums`` is ``(sum_w, sum_dev, sum_dev2, sum_gated, n_obs, hits)`` as filled by
    :func:`fold_pace` (``hits`` may be left out without ``first``); ``mu, c, var`` are
    ``float32[m]``, ``last`` ``float64[m]``, ``count`` ``int32[m]``. ``first`` (``int32[n]``
    from :func:`fold_pace`) selects the sparse form, one thread per traversal: O(n) however
    large ``m``; ``None`` the dense one, one thread per segment.
    Does not synchronize the device.
    """
    m = int(mu.shape[0])
    for name, a in zip(("sum_w", "sum_dev", "sum_dev2", "sum_gated"), sums[:4]):
        _check(name, a, np.float32, m)
    _check("n_obs", sums[4], np.int32, m)
    for name, a in (("mu", mu), ("c", c), ("var", var)):
        _check(name, a, np.float32, m)
    _check("last", last, np.float64, m)
    _check("count", count, np.int32, m)
    if first is not None:
        if len(sums) < 6:
            raise KernelInputError("`sums` needs its sixth array, `hits`, when `first` is given")
        _check("hits", sums[5], np.int32, m)
        _check("first", first, np.int32, None)
    n = m if first is None else int(first.shape[0])
    if n == 0:
        return
    hits = sums[5] if first is not None else sums[4]  # not written without `first`
    apply_kernel()(
        (_grid(n),), (_BLOCK,),
        (*sums[:5], hits, first if first is not None else hits, np.int64(n),
         np.int32(first is not None), np.float64(t_s), np.float32(inv_tau),
         np.float32(log_erosion), mu, c, var, last, count))


_SCRATCH = "cpu_fold_buffers"
# Segments per cache window of the CPU kernel (2**12: ~300 KB of state and sums, inside L2).
CPU_WINDOW_SHIFT = 12


def cpu_fold_apply(
    edge: np.ndarray, pace: np.ndarray, weight: np.ndarray, t_obs: np.ndarray | None, *,
    mu: np.ndarray, c: np.ndarray, var: np.ndarray, prior: np.ndarray, last: np.ndarray,
    count: np.ndarray, scratch: dict[str, Any], t_s: float, params: dict[str, float],
) -> int:
    """Fold traversals into a host state in place with the fused numba kernel.

    Parameters
    ----------
    edge, pace, weight, t_obs
        Per traversal: ``int32`` segment ids, pace (s/m) and weight in the state's float
        dtype, ``float64`` observation times (``None``: observed at ``t_s``).
    mu, c, var, prior, last, count
        Per segment state: ``float32`` or ``float64`` (one dtype), ``float64`` last update
        time, ``int32`` count; updated in place.
    scratch
        A dict owned by the state (``EstimatorState.extra``): keeps the kernel's n-long
        bucketing buffers between calls (grown when a batch is larger).
    t_s
        Update time (unix s).
    params
        :meth:`traffic.estimator.EstimatorConfig.kernel_params`.

    Returns
    -------
    int
        Number of segments the batch touched.

    Raises
    ------
    KernelInputError
        When numba is absent, or an array has the wrong dtype, layout or length.
    traffic.errors.TraversalBatchError
        When an edge id is outside ``0..m-1`` (checked before anything is written).
    """
    kernels = cpu_kernels()
    if kernels is None:
        raise KernelInputError("the fused CPU kernel needs numba (pip install numba)")
    n = int(edge.shape[0]) if hasattr(edge, "shape") else -1
    m = int(mu.shape[0]) if hasattr(mu, "shape") else -1
    fdt = getattr(mu, "dtype", None)
    if fdt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise KernelInputError(f"`mu` must be a float32 or float64 array; got {fdt}")
    _check("edge", edge, np.int32, None)
    for name, a in (("pace", pace), ("weight", weight)):
        _check(name, a, fdt, n)
    if t_obs is not None:
        _check("t_obs", t_obs, np.float64, n)
    for name, a in (("c", c), ("var", var), ("prior", prior)):
        _check(name, a, fdt, m)
    _check("last", last, np.float64, m)
    _check("count", count, np.int32, m)
    bad = int(kernels.first_out_of_range(edge, m))
    if bad >= 0:
        raise _edge_range_error(int(edge[bad]), bad, m)
    buf = scratch.get(_SCRATCH)
    if buf is None or buf[0].shape[0] < n:
        # Reused between calls: fresh n-long buffers would page-fault on every update.
        buf = scratch[_SCRATCH] = (np.empty(n, np.int32), np.empty(n), np.empty(n))
    t_arr = np.empty(0, dtype=np.float64) if t_obs is None else t_obs
    p = params
    return int(kernels.fold_apply(
        edge, pace, weight, t_arr, mu, c, var, prior, last, count, *buf,
        float(t_s), float(p["inv_tau"]), float(p["prior_weight"]), float(p["gate_sigma"]),
        float(p["gate_min_weight"]), float(p["outlier_weight"]), float(p["min_rel"]),
        float(p["log_erosion"]), float(p["min_pace"]), float(p["max_pace"]), CPU_WINDOW_SHIFT))
