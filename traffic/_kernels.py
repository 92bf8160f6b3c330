"""Hand-written CUDA kernels of the speed estimator, compiled lazily, behind validating wrappers.

Two kernels implement one estimator update on the GPU (the NumPy twin is in
:mod:`traffic.estimator`, ``_fold_sums_xp`` and ``_apply_sums_xp``):

``traffic_fold_pace`` (RawKernel, one thread per traversal)
    gathers the segment's state, decays its evidence weight to the update time, gates the
    traversal against the current estimate and atomically adds ``w``, ``w * dev`` and
    ``w * dev**2`` (``dev`` = pace minus the segment's evidence mean), the gated weight and
    a count into per-segment sums.
``traffic_apply_pace`` (ElementwiseKernel, one thread per segment)
    blends those sums into the state in place.

On the CPU, :func:`cpu_fold_apply` runs the same update as one fused numba kernel
(:mod:`traffic._cpu_kernels`, loaded by :func:`cpu_kernels`; ``None`` without numba).

CuPy is imported only when a wrapper is first called; kernels are built once per process
(module-level lazily filled cache keyed by name, never rebuilt per call). Wrappers check
dtype (``float32``/``int32``/``float64`` as documented), C-contiguity and lengths before
launching, because CuPy does not; they raise :class:`traffic.errors.KernelInputError`.
Launches are asynchronous: nothing here synchronizes the device.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import numpy as np

from traffic.errors import KernelInputError

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
    float* __restrict__ sum_gated, int* __restrict__ count)
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
    }
}
"""

_APPLY_IN = ("float32 sum_w, float32 sum_dev, float32 sum_dev2, float32 sum_gated, "
             "int32 n_obs, float64 t, float32 inv_tau, float32 log_erosion")
_APPLY_OUT = "float32 mu, float32 c, float32 var, float64 last, int32 count"
_APPLY_BODY = r"""
count += n_obs;
if (sum_w > 0.f || sum_gated > 0.f) {
    const float c_dec = traffic_decay(c, t, last, inv_tau) * expf(sum_gated * log_erosion);
    const float c_new = c_dec + sum_w;
    const float delta = sum_dev / c_new;
    mu = mu + delta;
    const float v = (c_dec * var + sum_dev2) / c_new - delta * delta;
    var = v > 0.f ? v : 0.f;
    c = c_new;
    last = t;
}
"""


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
def fold_kernel() -> Any:
    """The compiled ``traffic_fold_pace`` RawKernel (built on first use, then cached)."""
    cp = _cupy()
    return cp.RawKernel(_FOLD_SOURCE, "traffic_fold_pace")


@functools.cache
def apply_kernel() -> Any:
    """The ``traffic_apply_pace`` ElementwiseKernel (built on first use, then cached)."""
    cp = _cupy()
    return cp.ElementwiseKernel(_APPLY_IN, _APPLY_OUT, _APPLY_BODY, "traffic_apply_pace",
                                preamble=_PREAMBLE)


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
    last: Any, t_s: float, params: dict[str, float], out: tuple[Any, Any, Any, Any],
) -> None:
    """Launch ``traffic_fold_pace``: add gated, decayed traversal sums into ``out`` (in place).

    Parameters
    ----------
    edge, pace, weight, t_obs
        Per traversal: ``int32`` segment ids in ``0..m-1`` (not range-checked here: the caller
        validates), ``float32`` pace (s/m), ``float32`` weight, ``float64`` observation time.
    mu, c, var, prior, last
        Per segment ``float32`` state (evidence mean pace, evidence weight, variance, prior
        pace) and ``float64`` last update time.
    t_s
        Update time (unix s).
    params
        ``inv_tau, prior_weight, gate_sigma, gate_min_weight, outlier_weight, min_rel,
        min_pace, max_pace`` (others ignored).
    out
        ``(sum_w, sum_dev, sum_dev2, sum_gated, count)``: ``float32[m]`` x 4 and ``int32[m]``,
        zeroed by the caller.

    Does not synchronize the device.
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
    if n == 0:
        return
    block = 256
    grid = min((n + block - 1) // block, 65535 * 8)
    f32 = np.float32
    fold_kernel()(
        (grid,), (block,),
        (edge, pace, weight, t_obs, np.int64(n), mu, c, var, prior, last, np.float64(t_s),
         f32(params["inv_tau"]), f32(params["prior_weight"]), f32(params["gate_sigma"]),
         f32(params["gate_min_weight"]), f32(params["outlier_weight"]), f32(params["min_rel"]),
         f32(params["min_pace"]), f32(params["max_pace"]), *out),
    )


def apply_pace(
    sums: tuple[Any, ...], *, mu: Any, c: Any, var: Any, last: Any, count: Any,
    t_s: float, inv_tau: float, log_erosion: float,
) -> None:
    """Launch ``traffic_apply_pace``: blend per-segment sums into the state in place.

    ``sums`` is ``(sum_w, sum_dev, sum_dev2, sum_gated, n_obs)`` as filled by
    :func:`fold_pace`;
    ``mu, c, var`` are ``float32[m]``, ``last`` ``float64[m]``, ``count`` ``int32[m]``.
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
    if m == 0:
        return
    apply_kernel()(*sums, np.float64(t_s), np.float32(inv_tau), np.float32(log_erosion),
                   mu, c, var, last, count)


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
    from traffic.errors import TraversalBatchError

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
        raise TraversalBatchError(
            f"`edge` must be within 0..{m - 1}; got {int(edge[bad])} at index {bad}")
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
