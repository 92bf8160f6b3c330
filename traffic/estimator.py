"""The speed estimator: per-segment pace state folded from traversals in event time.

Model (DESIGN.md, "The estimator model"). State is kept in the *pace* domain (s/m). Each
segment ``e`` holds an evidence mean pace ``mu_e``, an evidence weight ``c_e`` (how many
full traversals' worth of evidence, decayed), the weighted variance ``var_e`` of that
evidence (its dispersion), its last update time ``last_e`` and a prior pace ``prior_e``
(time-of-week profile, else free-flow). The published estimate at time ``t`` is the blend

    c_e(t) = c_e * exp(-(t - last_e) / T)
    pace_e(t) = (w0 * prior_e + c_e(t) * mu_e) / (w0 + c_e(t))

with ``w0`` = ``prior_weight`` (a pseudo-observation) and ``T`` = ``decay_tau_s``: with no
new traversals the evidence fades and the estimate returns to the prior.

One update with a batch at time ``t`` (the clock is event time: ``max(state clock, batch's
latest observation)``, never the wall clock):

1. each traversal ``i`` gets weight ``w_i * exp(-(t - t_i)/T)`` (its own age at ``t``), and
   its pace is clipped to the configured speed bounds;
2. *gate*: on a segment whose decayed evidence weight is at least ``gate_min_weight``, a
   traversal whose pace differs from ``pace_e(t)`` by more than ``gate_sigma * sd_e`` keeps
   only ``outlier_weight`` of its weight, where ``sd_e = max(sqrt(var_e), min_dispersion_rel
   * pace_e(t))``. On segments with less evidence the gate is open: a jam can be 5-10x the
   free-flow pace and must not be rejected against a prior. Each gated traversal also
   *erodes* the segment's evidence: ``c_e(t)`` is multiplied by ``gate_erosion ** G`` (``G``
   the summed weight of its gated traversals), so a lone outlier hardly moves the estimate,
   while a lasting change (an incident) drops ``c_e`` below ``gate_min_weight`` after a few
   traversals (about ``log2(c_e / gate_min_weight) + 1`` at the default 0.5) and the gate
   opens to the new regime;
3. per-segment sums ``W = sum w``, ``S1 = sum w * (p - mu_e)``, ``S2 = sum w * (p - mu_e)^2``
   (and ``G``) by a scatter-add (``np.bincount`` on the CPU; the ``traffic_fold_pace`` kernel with
   ``atomicAdd`` on the GPU);
4. blend, for segments with ``W > 0``: ``c' = c_e(t) * gate_erosion**G + W``, ``mu' = mu + S1 / c'``,
   ``var' = (c_old * var + S2) / c' - (S1 / c')^2`` (``c_old`` the eroded ``c_e(t)``) (the exact weighted mean and variance
   of old and new evidence), ``last' = t``.

Because each traversal is decayed from its own time, folding a stream in one batch or in
many gives the same ``mu, c, var`` up to rounding whenever no traversal is gated; with the
gate, outliers are judged against the estimate before their batch, so batching can change
which traversals count as outliers (and nothing else).

Confidence at time ``t`` is ``a * 1 / (1 + (se / (cv_ref * pace))^2)`` with
``a = c(t) / (c(t) + w0)`` (share of evidence in the blend) and ``se^2 = max(var,
(min_dispersion_rel * pace)^2) / c(t)`` (squared standard error of the evidence mean):
0 with no evidence, towards 1 with much consistent, recent evidence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy

from graph.network import RoadNetwork
from traffic import _kernels
from traffic._xp import is_cupy, to_host
from traffic.errors import EstimatorConfigError, EstimatorStateError, TraversalBatchError
from traffic.profiles import TimeOfWeekProfile, index_of_keys
from traffic.traversals import Traversals

if TYPE_CHECKING:
    import polars


@dataclass(frozen=True, slots=True)
class EstimatorConfig:
    """Parameters of the estimator model (see the module docstring for the formulas).

    Attributes
    ----------
    decay_tau_s
        Time constant ``T`` of the evidence decay (s).
    prior_weight
        ``w0``: weight of the prior as a pseudo-observation, in full traversals. 0.3 by default:
        on the SUMO Copenhagen scenario 1.0 gave a peak ETA MdAPE of 0.259, 0.3 gave 0.243 and
        0.1 gave 0.239 (benchmarks/accuracy.py); 0.3 keeps most of the gain without letting a
        single traversal swing a segment with no other evidence.
    gate_sigma
        Outlier gate half-width in standard deviations.
    gate_min_weight
        Decayed evidence weight a segment needs before its gate closes on outliers.
    outlier_weight
        Fraction of its weight a gated traversal keeps (0 drops it).
    gate_erosion
        Factor in ``(0, 1]`` applied to a segment's evidence weight per unit of gated
        traversal weight (1 disables erosion).
    min_dispersion_rel
        Floor of the gate's and the confidence's standard deviation, relative to the pace.
    min_speed_mps, max_speed_mps
        Traversal speeds are clipped to this range (pace to ``1/max .. 1/min`` s/m).
    confidence_cv_ref
        Relative standard error at which confidence is halved (besides the evidence share).
    """

    decay_tau_s: float = 600.0
    prior_weight: float = 0.3
    gate_sigma: float = 3.0
    gate_min_weight: float = 3.0
    outlier_weight: float = 0.05
    gate_erosion: float = 0.5
    min_dispersion_rel: float = 0.15
    min_speed_mps: float = 1.0
    max_speed_mps: float = 60.0
    confidence_cv_ref: float = 0.25

    def __post_init__(self) -> None:
        positive = ("decay_tau_s", "prior_weight", "gate_sigma", "min_speed_mps",
                    "max_speed_mps", "confidence_cv_ref")
        for name in positive:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise EstimatorConfigError(f"`{name}` must be finite and > 0; got {value!r}")
        for name in ("gate_min_weight", "min_dispersion_rel"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise EstimatorConfigError(f"`{name}` must be finite and >= 0; got {value!r}")
        if not 0 <= self.outlier_weight <= 1:
            raise EstimatorConfigError(
                f"`outlier_weight` must be within [0, 1]; got {self.outlier_weight!r}")
        if not 0 < self.gate_erosion <= 1:
            raise EstimatorConfigError(
                f"`gate_erosion` must be within (0, 1]; got {self.gate_erosion!r}")
        if self.min_speed_mps >= self.max_speed_mps:
            raise EstimatorConfigError(
                f"`min_speed_mps` ({self.min_speed_mps}) must be below `max_speed_mps` "
                f"({self.max_speed_mps})")

    @property
    def min_pace_s_per_m(self) -> float:
        """Smallest pace a traversal may have (s/m), from ``max_speed_mps``."""
        return 1.0 / self.max_speed_mps

    @property
    def max_pace_s_per_m(self) -> float:
        """Largest pace a traversal may have (s/m), from ``min_speed_mps``."""
        return 1.0 / self.min_speed_mps

    def kernel_params(self) -> dict[str, float]:
        """Scalars the fold kernel and its twin take."""
        return dict(
            inv_tau=1.0 / self.decay_tau_s, prior_weight=self.prior_weight,
            gate_sigma=self.gate_sigma, gate_min_weight=self.gate_min_weight,
            outlier_weight=self.outlier_weight, min_rel=self.min_dispersion_rel,
            log_erosion=math.log(self.gate_erosion),
            min_pace=self.min_pace_s_per_m, max_pace=self.max_pace_s_per_m,
        )


#: The old name of :class:`traffic.traversals.Traversals` (one type since issue 13): kept so
#: callers and pickles that name ``traffic.estimator.TraversalBatch`` still work.
TraversalBatch = Traversals


@dataclass(slots=True)
class EstimatorState:
    """Per-segment estimator state as ``xp`` arrays (length ``m``) plus the event clock.

    ``mu, c, var, prior`` share one float dtype (float64 on NumPy by default, float32 on
    CuPy); ``last_t_s`` is float64 (unix seconds need it); ``count`` is int32 (traversals
    folded, gated ones excluded). ``t_s`` is the event clock (latest update time).
    ``extra`` holds scratch owned by this state (the CPU kernel's bucketing buffers), not
    part of a checkpoint.
    """

    mu: Any
    c: Any
    var: Any
    prior: Any
    last_t_s: Any
    count: Any
    t_s: float = -math.inf
    version: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_edges(self) -> int:
        """Number of segments."""
        return int(self.mu.shape[0])

    def subset(self, edges: Any) -> EstimatorState:
        """The state of ``edges`` only (copies; ``edges`` an index array of this state's
        module), with the same clock and version: the per-edge formulas on it give each
        entry exactly as on the whole state, at O(len(edges))."""
        return EstimatorState(mu=self.mu[edges], c=self.c[edges], var=self.var[edges],
                              prior=self.prior[edges], last_t_s=self.last_t_s[edges],
                              count=self.count[edges], t_s=self.t_s, version=self.version)

    @classmethod
    def initial(cls, prior_pace_s_per_m: Any, *, xp: ModuleType = numpy,
                dtype: Any = None) -> EstimatorState:
        """State with no evidence: every segment at its prior pace."""
        dtype = dtype or (xp.float32 if is_cupy(xp) else xp.float64)
        prior = xp.ascontiguousarray(xp.asarray(prior_pace_s_per_m), dtype=dtype)
        m = prior.shape[0]
        return cls(mu=prior.copy(), c=xp.zeros(m, dtype=dtype), var=xp.zeros(m, dtype=dtype),
                   prior=prior, last_t_s=xp.full(m, -xp.inf, dtype=xp.float64),
                   count=xp.zeros(m, dtype=xp.int32))


def _module_of(a: Any) -> ModuleType:
    if type(a).__module__.split(".")[0] == "cupy":
        from traffic._xp import cupy_or_none

        cp = cupy_or_none()
        if cp is not None:
            return cp
    return numpy


def fold_traversals(
    state: EstimatorState, edge: Any, pace_s_per_m: Any, weight: Any, t_s: float | None = None,
    *, t_obs_s: Any = None, config: EstimatorConfig, xp: ModuleType | None = None,
    use_kernels: bool = True,
) -> EstimatorState:
    """Fold one batch of traversals into ``state`` in place (and return it).

    Parameters
    ----------
    state
        Estimator state; its arrays are updated in place, ``t_s`` and ``version`` advance.
    edge, pace_s_per_m, weight
        Per traversal: dense edge id, observed pace (s/m), weight in ``(0, 1]``; validated
        by the caller (see :meth:`traffic.traversals.Traversals.validate`) except for the
        edge range, which is checked here on every path before anything is written
        (:class:`TraversalBatchError` naming the edge, its index and ``0..m-1``).
    t_s
        Update time (unix s). The clock becomes ``max(state.t_s, t_s, max(t_obs_s))``, so
        it never goes back and late data is merely older.
    t_obs_s
        Per traversal observation time (the exit time); each traversal is decayed from it.
        ``None``: all observed at the update time.
    config
        Model parameters.
    xp
        ``numpy`` or ``cupy``; default: the module of ``state.mu``.
    use_kernels
        Use the fused kernels: on CuPy the CUDA kernels (float32 state), on NumPy the numba
        kernel where numba can be imported (:func:`traffic._kernels.cpu_fold_apply`); else,
        or with ``False``, the array code shared by NumPy and CuPy (the reference twin).

    Notes
    -----
    Every path costs O(batch), never O(segments): a segment's decay is applied lazily from
    its ``last_t_s`` when a traversal touches it, and nothing the size of the network is
    allocated, zeroed or swept per batch (full passes are left to publication:
    :func:`current_pace`, :meth:`SpeedEstimator.travel_times`, snapshots, and to the prior's
    refresh once per time-of-week bin).

    Array code: for a small batch (``4 n < m``) the touched segments are found with
    ``unique`` (O(n log n)) and the sums reduced onto them with ``bincount`` over the
    compact index; for a large one (``4 n >= m``, where O(m) is O(n)) the per-segment terms
    are computed densely. The numba kernel buckets the traversals by segment window (a
    counting sort, or a stable sort when there are more windows than traversals), then folds
    and blends window by window while its state is in cache, in float64 arithmetic; its
    buffers live in ``state.extra``.

    On CuPy the state stays in device memory: ``mu, c, var, prior`` float32 (16 B),
    ``last_t_s`` float64 (8 B) and ``count`` int32 (4 B) are 28 B per segment, plus the
    kernels' persistent sums (``W, S1, S2, G`` float32, ``n_obs, hits`` int32: 24 B), 52 B
    per segment in all: 1.37 GB (1.28 GiB) for the 26.4 M segments of the K=6 network. A
    batch adds about 28 B per traversal (its arrays and ``first``), freed to CuPy's pool. The
    fold is
    O(n): ``traffic_fold_pace`` is one thread per traversal and ``traffic_apply_pace`` one
    per traversal too (acting on each touched segment once) unless ``4 n >= m``. It
    synchronizes the device only to range-check the edge ids (one small read back) and to
    read ``max(t_obs_s)`` when ``t_s`` is not given.
    """
    xp = xp or _module_of(state.mu)
    dtype = state.mu.dtype
    edge = xp.ascontiguousarray(xp.asarray(edge), dtype=xp.int32)
    pace = xp.ascontiguousarray(xp.asarray(pace_s_per_m), dtype=dtype)
    weight = xp.ascontiguousarray(xp.asarray(weight), dtype=dtype)
    n = int(edge.shape[0])
    if pace.shape != (n,) or weight.shape != (n,):
        raise TraversalBatchError(
            f"`pace_s_per_m` and `weight` must have the length of `edge` ({n}); "
            f"got {pace.shape} and {weight.shape}")
    t_obs = None if t_obs_s is None else xp.ascontiguousarray(xp.asarray(t_obs_s), xp.float64)
    if t_obs is not None and t_obs.shape != (n,):
        raise TraversalBatchError(f"`t_obs_s` must have length {n}; got {t_obs.shape}")
    clock = state.t_s
    if t_s is not None:
        clock = max(clock, float(t_s))
    elif t_obs is not None and n:
        clock = max(clock, float(t_obs.max()))
    if not math.isfinite(clock):
        raise TraversalBatchError("an update time is needed: pass `t_s` or `t_obs_s`")
    params = config.kernel_params()
    if is_cupy(xp) and use_kernels and dtype == xp.float32:
        m = state.n_edges
        sums = _gpu_sums(xp, state)
        t_arr = t_obs if t_obs is not None else xp.full(n, clock, dtype=xp.float64)
        # Sparse (O(n) threads, touched segments only) unless the batch is large next to the
        # network, where one coalesced pass over the segments is O(n) too and faster.
        first = None if 4 * n >= m else xp.empty(n, dtype=xp.int32)
        _kernels.fold_pace(edge, pace, weight, t_arr, mu=state.mu, c=state.c, var=state.var,
                           prior=state.prior, last=state.last_t_s, t_s=clock, params=params,
                           out=sums, first=first)
        state.extra[_GPU_SUMS_DIRTY] = True  # until the apply kernel has zeroed them again
        _kernels.apply_pace(sums, mu=state.mu, c=state.c, var=state.var, last=state.last_t_s,
                            count=state.count, t_s=clock, inv_tau=params["inv_tau"],
                            log_erosion=params["log_erosion"], first=first)
        state.extra[_GPU_SUMS_DIRTY] = False
    elif xp is numpy and use_kernels and _kernels.cpu_kernels() is not None:
        _kernels.cpu_fold_apply(edge, pace, weight, t_obs, mu=state.mu, c=state.c,
                                var=state.var, prior=state.prior, last=state.last_t_s,
                                count=state.count, scratch=state.extra, t_s=clock,
                                params=params)
    else:
        _kernels.check_edge_range(edge, state.n_edges)
        sums = _fold_sums_xp(xp, state, edge, pace, weight, t_obs, clock, params)
        _apply_sums_xp(xp, state, sums, clock, params)
    state.t_s = clock
    state.version += 1
    return state


_GPU_SUMS = "gpu_fold_sums"
_GPU_SUMS_DIRTY = "gpu_fold_sums_dirty"


def _gpu_sums(xp: ModuleType, state: EstimatorState) -> tuple[Any, ...]:
    """The CUDA kernels' per-segment sums ``(W, S1, S2, G, n_obs, hits)``, kept in
    ``state.extra`` between updates and zero there (the apply kernel re-zeroes what the fold
    wrote): allocated once per state (24 B per segment), never per batch. Zeroed again in
    full only when a fold was interrupted between its two launches."""
    m = state.n_edges
    sums = state.extra.get(_GPU_SUMS)
    if sums is None or sums[0].shape[0] != m:
        sums = state.extra[_GPU_SUMS] = (
            *(xp.zeros(m, dtype=xp.float32) for _ in range(4)),
            xp.zeros(m, dtype=xp.int32), xp.zeros(m, dtype=xp.int32))
        state.extra[_GPU_SUMS_DIRTY] = False
    elif state.extra.get(_GPU_SUMS_DIRTY):
        for a in sums:
            a.fill(0)
        state.extra[_GPU_SUMS_DIRTY] = False
    return sums


def _segment_terms(
    xp: ModuleType, state: EstimatorState, idx: Any, t_s: float, params: dict[str, float],
) -> tuple[Any, Any, Any]:
    """Decayed weight, current estimate and gate half-width (inf = open) of segments ``idx``.

    ``idx=None`` computes them for every segment.
    """
    dtype = state.mu.dtype

    def pick(a: Any) -> Any:
        return a if idx is None else xp.take(a, idx)

    mu, c, last = pick(state.mu), pick(state.c), pick(state.last_t_s)
    c_dec = c * xp.exp(xp.minimum(last - t_s, 0.0) * params["inv_tau"]).astype(dtype, copy=False)
    w0 = dtype.type(params["prior_weight"])
    p_hat = (w0 * pick(state.prior) + c_dec * mu) / (w0 + c_dec)
    sd = xp.sqrt(xp.maximum(pick(state.var), (dtype.type(params["min_rel"]) * p_hat) ** 2))
    half = xp.where(c_dec >= params["gate_min_weight"], dtype.type(params["gate_sigma"]) * sd,
                    dtype.type(xp.inf))
    return c_dec, p_hat, half


def _fold_sums_xp(
    xp: ModuleType, state: EstimatorState, edge: Any, pace: Any, weight: Any, t_obs: Any,
    t_s: float, params: dict[str, float],
) -> tuple[Any, ...]:
    """Array-code twin of ``traffic_fold_pace``: sums ``(W, S1, S2, G, count, c_dec, seg)``.

    Small batch (``4 n < m``): O(n log n), nothing of length ``m``. The touched segments
    ``seg`` (sorted, unique) are found with ``unique``, their terms computed once each, and
    the sums reduced onto them (``bincount`` over the compact index, in the traversals'
    order); the sums are ``seg``-long and ``c_dec`` is ``None``.
    Large batch (``4 n >= m``, so O(m) is O(n)): the per-segment terms are computed densely
    once and gathered (three float gathers instead of five, one of them float64), the sums
    are ``m``-long, the decayed weights are handed to the apply step and ``seg`` is ``None``.
    """
    m = state.n_edges
    n = int(edge.shape[0])
    dtype = state.mu.dtype
    if xp is numpy:
        # bincount and take convert int32 indices to intp on every call: convert once.
        edge = edge.astype(numpy.intp)
    dense = 4 * n >= m
    if dense:
        seg = None
        idx, size = edge, m
        c_all, p_all, half_all = _segment_terms(xp, state, None, t_s, params)
        p_hat, half = xp.take(p_all, edge), xp.take(half_all, edge)
    else:
        c_all = None
        seg, idx = xp.unique(edge, return_inverse=True)
        idx = idx.reshape(-1)
        size = int(seg.shape[0])
        _, p_seg, half_seg = _segment_terms(xp, state, seg, t_s, params)
        p_hat, half = xp.take(p_seg, idx), xp.take(half_seg, idx)
    mu_e = xp.take(state.mu, edge)
    p = xp.clip(pace, dtype.type(params["min_pace"]), dtype.type(params["max_pace"]))
    dev = p - mu_e
    gated = xp.abs(p - p_hat) > half
    w = weight
    if t_obs is not None:
        w = w * xp.exp(xp.minimum(t_obs - t_s, 0.0) * params["inv_tau"]).astype(dtype, copy=False)
    gi = xp.flatnonzero(gated)
    if gi.shape[0]:
        sum_g = xp.bincount(xp.take(idx, gi), weights=xp.take(w, gi), minlength=size)
        w = w.copy() if w is weight else w
        w[gi] *= dtype.type(params["outlier_weight"])
        count = (xp.bincount(idx, minlength=size)
                 - xp.bincount(xp.take(idx, gi), minlength=size))
    else:
        sum_g = None
        count = xp.bincount(idx, minlength=size)
    wdev = w * dev
    sum_w = xp.bincount(idx, weights=w, minlength=size)
    sum_dev = xp.bincount(idx, weights=wdev, minlength=size)
    sum_dev2 = xp.bincount(idx, weights=wdev * dev, minlength=size)
    return sum_w, sum_dev, sum_dev2, sum_g, count.astype(xp.int32, copy=False), c_all, seg


def _apply_sums_xp(
    xp: ModuleType, state: EstimatorState, sums: tuple[Any, ...], t_s: float,
    params: dict[str, float],
) -> None:
    """Array-code twin of ``traffic_apply_pace``: blend the sums into the state in place.

    Works on the touched segments ``seg`` only (compact sums) when the batch is small,
    densely otherwise (see :func:`_fold_sums_xp`).
    """
    sum_w, sum_dev, sum_dev2, sum_g, count, c_all, seg = sums
    dtype = state.mu.dtype
    touched = sum_w > 0 if sum_g is None else (sum_w > 0) | (sum_g > 0)
    if seg is not None:
        state.count[seg] += count  # seg is unique: no repeated index
        local = xp.flatnonzero(touched)
        if local.shape[0] == 0:
            return
        hit = xp.take(seg, local)
        c_dec = xp.take(state.c, hit) * xp.exp(
            xp.minimum(xp.take(state.last_t_s, hit) - t_s, 0.0) * params["inv_tau"])
        if sum_g is not None:
            c_dec *= xp.exp(xp.take(sum_g, local) * params["log_erosion"])
        c_new = c_dec + xp.take(sum_w, local)
        delta = xp.take(sum_dev, local) / c_new
        var = (c_dec * xp.take(state.var, hit) + xp.take(sum_dev2, local)) / c_new - delta**2
        state.mu[hit] += delta.astype(dtype, copy=False)
        state.var[hit] = xp.maximum(var, 0)
        state.c[hit] = c_new
        state.last_t_s[hit] = t_s
        return
    state.count += count
    c_dec = c_all if sum_g is None else c_all * xp.exp(sum_g * params["log_erosion"])
    c_new = c_dec + sum_w
    with numpy.errstate(divide="ignore", invalid="ignore"):
        delta = xp.where(touched, sum_dev / c_new, 0.0)
        var = xp.maximum((c_dec * state.var + sum_dev2) / c_new - delta**2, 0.0)
    state.mu += delta.astype(dtype, copy=False)
    xp.copyto(state.var, var.astype(dtype, copy=False), where=touched)
    xp.copyto(state.c, c_new.astype(dtype, copy=False), where=touched)
    xp.copyto(state.last_t_s, t_s, where=touched)


def decayed_weight(state: EstimatorState, at_t_s: float | None = None, *,
                   config: EstimatorConfig) -> Any:
    """Evidence weight of every segment decayed to ``at_t_s`` (default: the state clock)."""
    xp = _module_of(state.mu)
    t = state.t_s if at_t_s is None else float(at_t_s)
    if not math.isfinite(t):
        return xp.zeros_like(state.c)
    age = xp.maximum(t - state.last_t_s, 0.0)
    return state.c * xp.exp(-age / config.decay_tau_s).astype(state.c.dtype)


def current_pace(state: EstimatorState, at_t_s: float | None = None, *,
                 config: EstimatorConfig) -> Any:
    """Published pace (s/m) of every segment at ``at_t_s``: prior and evidence blended."""
    c = decayed_weight(state, at_t_s, config=config)
    w0 = config.prior_weight
    xp = _module_of(state.mu)
    pace = (w0 * state.prior + c * state.mu) / (w0 + c)
    return xp.clip(pace, config.min_pace_s_per_m, config.max_pace_s_per_m)


def confidence(state: EstimatorState, at_t_s: float | None = None, *,
               config: EstimatorConfig) -> Any:
    """Confidence in ``[0, 1]`` of every segment's estimate (formula in the module docstring)."""
    xp = _module_of(state.mu)
    c = decayed_weight(state, at_t_s, config=config)
    pace = current_pace(state, at_t_s, config=config)
    share = c / (c + config.prior_weight)
    sd2 = xp.maximum(state.var, (config.min_dispersion_rel * pace) ** 2)
    with numpy.errstate(divide="ignore", invalid="ignore"):
        se2 = xp.where(c > 0, sd2 / xp.where(c > 0, c, 1), xp.inf)
    rel = se2 / (config.confidence_cv_ref * pace) ** 2
    return xp.where(c > 0, share / (1 + rel), 0).astype(state.c.dtype)


def travel_times(state: EstimatorState, net: RoadNetwork, at_t_s: float | None = None, *,
                 config: EstimatorConfig) -> tuple[int, numpy.ndarray]:
    """Return ``(version, travel_time_s)``: length x current pace per edge, on the host.

    Copies from the device (and synchronizes) on CuPy.
    """
    pace = to_host(current_pace(state, at_t_s, config=config)).astype(numpy.float64)
    return state.version, net.edge_length_m * pace


_STATE_ARRAYS = ("mu", "c", "var", "last_t_s", "count")


class SpeedEstimator:
    """Owns an :class:`EstimatorState` for one network: apply batches, publish, checkpoint.

    Parameters
    ----------
    net
        The road network (lengths, free-flow speeds, stable edge keys).
    config
        Model parameters.
    xp
        ``numpy`` (default) or ``cupy``.
    prior
        ``None`` (free-flow pace), an array of prior paces (s/m, NaN = free-flow), or a
        :class:`traffic.profiles.TimeOfWeekProfile` (its bin at the event time, refreshed
        when the bin changes; free-flow where it has no data).
    dtype
        State float dtype; default float64 on NumPy, float32 on CuPy (the kernels' type).
    """

    def __init__(self, net: RoadNetwork, config: EstimatorConfig | None = None, *,
                 xp: ModuleType = numpy, prior: Any = None, dtype: Any = None) -> None:
        self.net = net
        self.config = config or EstimatorConfig()
        self.xp = xp
        self._profile: TimeOfWeekProfile | None = None
        self._static_prior: numpy.ndarray | None = None
        self._prior_bin: int | None = None
        self._freeflow_pace = 1.0 / net.edge_freeflow_mps
        if isinstance(prior, TimeOfWeekProfile):
            same = numpy.array_equal(prior.edge_key, net.edge_key)
            self._profile = prior if same else prior.remap_to(net.edge_key)
        elif prior is not None:
            arr = numpy.asarray(prior, dtype=numpy.float64)
            if arr.shape != (net.n_edges,):
                raise EstimatorConfigError(
                    f"`prior` must have one pace per edge ({net.n_edges}); got {arr.shape}")
            self._static_prior = numpy.where(numpy.isfinite(arr) & (arr > 0), arr,
                                             self._freeflow_pace)
        self.state = EstimatorState.initial(self._prior_at(None), xp=xp, dtype=dtype)

    @property
    def version(self) -> int:
        """Number of updates applied (the travel-time vector's version)."""
        return self.state.version

    @property
    def t_s(self) -> float:
        """The event clock (unix s) of the latest update; ``-inf`` before any."""
        return self.state.t_s

    def _prior_at(self, t_s: float | None) -> numpy.ndarray:
        if self._profile is not None and t_s is not None and math.isfinite(t_s):
            pace = self._profile.prior_pace(t_s)
            return numpy.where(numpy.isfinite(pace), pace, self._freeflow_pace)
        if self._static_prior is not None:
            return self._static_prior
        return self._freeflow_pace

    def _refresh_prior(self, t_s: float) -> None:
        if self._profile is None:
            return
        b = self._profile.bin_of(t_s)
        if b != self._prior_bin:
            host = self._prior_at(t_s)
            self.state.prior[...] = self.xp.asarray(host, dtype=self.state.prior.dtype)
            self._prior_bin = b

    def apply(self, batch: Traversals, *, t_s: float | None = None,
              validate: bool = True) -> int:
        """Fold a batch (validated unless ``validate=False``); return the new version."""
        if validate:
            batch.validate(self.net.n_edges)
        clock = self.state.t_s
        if len(batch):
            clock = max(clock, float(batch.t_exit_s.max()))
        if t_s is not None:
            clock = max(clock, float(t_s))
        if not math.isfinite(clock):
            # An empty first batch with no time: nothing to fold, but it is still an update.
            self.state.version += 1
            return self.state.version
        self._refresh_prior(clock)
        fold_traversals(self.state, batch.edge, batch.pace_s_per_m, batch.weight, clock,
                        t_obs_s=batch.t_exit_s, config=self.config, xp=self.xp)
        return self.state.version

    def current_pace(self, at_t_s: float | None = None) -> numpy.ndarray:
        """Published pace (s/m) per edge on the host."""
        return to_host(current_pace(self.state, at_t_s, config=self.config))

    def travel_times(self, at_t_s: float | None = None) -> tuple[int, numpy.ndarray]:
        """``(version, travel_time_s float64[m])`` at ``at_t_s`` (default: the event clock)."""
        return travel_times(self.state, self.net, at_t_s, config=self.config)

    def speeds_mps(self, at_t_s: float | None = None) -> numpy.ndarray:
        """Published speed (m/s) per edge on the host."""
        return 1.0 / self.current_pace(at_t_s).astype(numpy.float64)

    def confidence(self, at_t_s: float | None = None) -> numpy.ndarray:
        """Confidence in ``[0, 1]`` per edge on the host."""
        return to_host(confidence(self.state, at_t_s, config=self.config))

    def evidence_edges(self) -> numpy.ndarray:
        """Ids (ascending) of the edges with any evidence weight: the only ones whose
        confidence can be above 0. One comparison per edge, no exponentials."""
        return numpy.flatnonzero(to_host(self.state.c) > 0)

    def pace_and_confidence_of(self, edges: numpy.ndarray, at_t_s: float | None = None,
                               ) -> tuple[numpy.ndarray, numpy.ndarray]:
        """``(pace s/m float64, confidence)`` of ``edges`` at ``at_t_s``, by the same
        arithmetic as :meth:`travel_times` / :meth:`confidence` over every edge (each
        entry equal to theirs), at O(len(edges)): pace is travel time / length, as there."""
        ids = numpy.asarray(edges, dtype=numpy.int64)
        at = self.xp.asarray(ids)
        sub = self.state.subset(at)
        length = numpy.asarray(self.net.edge_length_m[ids])
        tt = length * to_host(current_pace(sub, at_t_s, config=self.config)).astype(numpy.float64)
        with numpy.errstate(divide="ignore", invalid="ignore"):
            pace = tt / numpy.asarray(length, dtype=numpy.float64)
        return pace, to_host(confidence(sub, at_t_s, config=self.config))

    def stored_edges(self) -> numpy.ndarray:
        """Ids of the edges a stored snapshot must hold: any evidence, a clock, or a prior
        that makes the speed other than free-flow. Every other edge reads free-flow speed,
        ratio 1, confidence 0, no observations and no update (what
        :func:`traffic.snapshots.fill_absent` puts back). O(edges) over the state, with no
        table built for the edges left out."""
        host = {k: to_host(getattr(self.state, k)) for k in ("count", "c", "last_t_s", "prior")}
        free = numpy.asarray(self._freeflow_pace, dtype=host["prior"].dtype)
        cfg = self.config
        clipped = numpy.clip(free, cfg.min_pace_s_per_m, cfg.max_pace_s_per_m) != free
        return numpy.flatnonzero((host["count"] != 0) | (host["c"] != 0)
                                 | numpy.isfinite(host["last_t_s"]) | (host["prior"] != free)
                                 | clipped)

    def snapshot(self, at_t_s: float | None = None, edges: Any = None) -> polars.DataFrame:
        """Per-edge table: ``edge, edge_key, speed_mps, freeflow_mps, ratio, confidence,
        observations, last_update_t`` (``last_update_t`` null where never updated).

        ``edges`` (edge ids) restricts it to those rows, in that order, at O(len(edges))
        cost: a bbox query reads its few thousand edges, not the whole network's state.
        Raises ``ValueError`` naming an id out of range.
        """
        import polars as pl

        if edges is None:
            state, ids = self.state, numpy.arange(self.net.n_edges, dtype=numpy.int32)
            freeflow = numpy.asarray(self.net.edge_freeflow_mps, dtype=numpy.float64)
            keys = numpy.asarray(self.net.edge_key)
        else:
            ids = numpy.asarray(edges, dtype=numpy.int64).reshape(-1)
            bad = (ids < 0) | (ids >= self.net.n_edges)
            if bad.any():
                raise ValueError(f"edge id {int(ids[numpy.argmax(bad)])} is out of range "
                                 f"[0, {self.net.n_edges})")
            at = self.xp.asarray(ids)
            state = self.state.subset(at)
            freeflow = self.net.freeflow_mps_at(ids)
            keys = numpy.asarray(self.net.edge_key[ids])
            ids = ids.astype(numpy.int32)
        speed = 1.0 / to_host(current_pace(state, at_t_s, config=self.config)).astype(numpy.float64)
        # A copy: polars may wrap NumPy memory without copying, and later folds update the
        # state in place; a snapshot handed out must not change.
        last = to_host(state.last_t_s).copy()
        return pl.DataFrame({
            "edge": ids,
            "edge_key": keys,
            "speed_mps": speed,
            "freeflow_mps": freeflow,
            "ratio": speed / freeflow,
            "confidence": to_host(confidence(state, at_t_s, config=self.config)).astype(numpy.float64),
            "observations": to_host(state.count).astype(numpy.int64),
            "last_update_t": pl.Series(last).replace(-numpy.inf, None),
        })

    def state_dict(self, *, sparse: bool = True) -> dict[str, Any]:
        """Checkpoint as host NumPy arrays plus version, event clock and network keys.

        ``sparse`` (the default) keeps only the rows of edges whose state differs from a
        fresh one (any evidence, a clock, or a prior other than the static one): the
        checkpoint then costs what the probes touched, not the network (at K=6, 26M edges,
        a dense one is 2.4 GB and pauses the stream for 15 s). Its ``edge_key`` lists those
        rows' keys, with ``sparse`` and the ``network_version`` they belong to; every other
        edge is restored fresh, at the static prior. ``sparse=False`` writes one row per
        edge (the format every earlier version wrote; both load).
        """
        host = {k: to_host(getattr(self.state, k)) for k in (*_STATE_ARRAYS, "prior")}
        keys = numpy.asarray(self.net.edge_key)
        if sparse:
            base = numpy.asarray(self._prior_at(None), dtype=host["prior"].dtype)
            keep = numpy.flatnonzero(
                (host["count"] != 0) | (host["c"] != 0) | numpy.isfinite(host["last_t_s"])
                | (host["var"] != 0) | (host["mu"] != host["prior"]) | (host["prior"] != base))
            out: dict[str, Any] = {k: v[keep] for k, v in host.items()}
            out["edge_key"] = keys[keep]
            out["sparse"] = True
            out["network_version"] = self.net.version
            out["n_edges"] = numpy.int64(self.net.n_edges)
        else:
            out = {k: v.copy() for k, v in host.items()}
            out["edge_key"] = keys.copy()
        out["t_s"] = numpy.float64(self.state.t_s)
        out["version"] = numpy.int64(self.state.version)
        out["config"] = asdict(self.config)
        # The prior in force: with a profile it is cached per time-of-week bin from the
        # profile as it stood when the bin began, so a restore must not recompute it.
        out["prior_bin"] = numpy.int64(-1 if self._prior_bin is None else self._prior_bin)
        return out

    def load_state_dict(self, state: dict[str, Any], *, strict: bool = True) -> None:
        """Restore a checkpoint, matching segments by stable edge key.

        With ``strict`` the checkpoint must be of exactly this network (a dense one: its
        keys; a sparse one: its ``network_version``); otherwise edges absent from it start
        at the prior and its extra edges are ignored. A sparse checkpoint's absent edges
        start fresh in any case (that is what they were).

        Raises
        ------
        EstimatorStateError
            When arrays are missing or of the wrong length, or (strict) the keys differ.
        """
        missing = [k for k in (*_STATE_ARRAYS, "edge_key", "t_s", "version") if k not in state]
        if missing:
            raise EstimatorStateError(f"checkpoint lacks {missing}")
        keys = numpy.asarray(state["edge_key"], dtype=numpy.int64)
        for k in _STATE_ARRAYS:
            if numpy.shape(state[k]) != keys.shape:
                raise EstimatorStateError(
                    f"checkpoint array `{k}` has shape {numpy.shape(state[k])}; "
                    f"expected {keys.shape} (one per edge key)")
        if bool(state.get("sparse", False)):
            theirs = str(state.get("network_version"))
            if strict and theirs != self.net.version:
                raise EstimatorStateError(
                    f"checkpoint is of network {theirs}, not this network's "
                    f"{self.net.version}; load with strict=False (or use remap_to) to map by key")
            self._install(state, index_of_keys(keys, self.net.edge_key), sparse=True)
            return
        same = keys.shape == self.net.edge_key.shape and bool(
            numpy.array_equal(keys, self.net.edge_key))
        if strict and not same:
            raise EstimatorStateError(
                f"checkpoint covers {keys.size} edges whose keys differ from this network's "
                f"{self.net.n_edges}; load with strict=False (or use remap_to) to map by key")
        src = numpy.arange(keys.size) if same else index_of_keys(keys, self.net.edge_key)
        self._install(state, src)

    def _install(self, host: dict[str, Any], src: numpy.ndarray, *, sparse: bool = False) -> None:
        """Set state arrays from host arrays, taking ``host[k][src]`` where ``src >= 0``.

        ``sparse``: the rows absent from ``host`` were fresh at the static prior when it was
        saved, and the saved prior bin holds (nothing is recomputed from the profile)."""
        fresh = EstimatorState.initial(self._prior_at(None), xp=numpy,
                                       dtype=numpy.dtype(self.state.mu.dtype.name))
        found = src >= 0
        for k in _STATE_ARRAYS:
            arr = getattr(fresh, k)
            arr[found] = numpy.asarray(host[k])[src[found]]
            setattr(self.state, k, self.xp.asarray(arr))
        self.state.t_s = float(host["t_s"])
        self.state.version = int(host["version"])
        if sparse and "prior" in host:
            prior = fresh.prior.copy()
            prior[found] = numpy.asarray(host["prior"])[src[found]]
            self.state.prior = self.xp.asarray(prior)
            b = int(host.get("prior_bin", -1))
            self._prior_bin = b if b >= 0 else None
            if self._prior_bin is None and math.isfinite(self.state.t_s):
                self._refresh_prior(self.state.t_s)
            return
        self.state.prior = self.xp.asarray(fresh.prior)
        self._prior_bin = None
        if math.isfinite(self.state.t_s):
            self._refresh_prior(self.state.t_s)
        if self._profile is not None and int(host.get("prior_bin", -1)) >= 0:
            prior = to_host(self.state.prior).copy()
            prior[found] = numpy.asarray(host["prior"])[src[found]]
            self.state.prior = self.xp.asarray(prior)
            self._prior_bin = int(host["prior_bin"])

    def remap_to(self, new_net: RoadNetwork) -> SpeedEstimator:
        """A new estimator on ``new_net`` keeping the state of edges whose key is in both.

        New edges start at the prior; the version and event clock carry over.
        """
        other = SpeedEstimator(new_net, self.config, xp=self.xp,
                               prior=self._profile if self._profile is not None else None,
                               dtype=self.state.mu.dtype)
        old = self.state_dict()
        other._install(old, index_of_keys(old["edge_key"], new_net.edge_key))
        return other
