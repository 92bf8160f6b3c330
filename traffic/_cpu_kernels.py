"""Fused CPU kernels of the speed estimator, compiled with numba (imported lazily).

The CPU twin of ``traffic_fold_pace`` + ``traffic_apply_pace`` in :mod:`traffic._kernels`:
one pass over the traversals (gather the segment's state, decay, gate, scatter-add the sums)
and one blend over the touched segments, instead of ~35 full-length NumPy passes. It computes
the function of ``_fold_sums_xp`` / ``_apply_sums_xp`` in :mod:`traffic.estimator` (the
reference; a parity test compares them), with all arithmetic in float64 whatever the state
dtype (float32 states are rounded on store only).

Importing this module imports numba; :func:`traffic._kernels.cpu_kernels` does that on
first use and returns ``None`` where numba is absent, so nothing else depends on it.
Compiled code is cached on disk (``cache=True``, in ``__pycache__`` beside this file or
under ``NUMBA_CACHE_DIR``): the first call in a fresh checkout compiles for a few seconds,
later processes load it in well under a second.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def first_out_of_range(edge: np.ndarray, m: int) -> int:
    """Index of the first ``edge[i]`` outside ``0..m-1``, or -1 when all are in range."""
    for i in range(edge.shape[0]):
        e = edge[i]
        if e < 0 or e >= m:
            return i
    return -1


@njit(cache=True, nogil=True, error_model="numpy")
def fold_apply(edge, pace, weight, t_obs, mu, c, var, prior, last, count, order_edge,
               order_pace, order_weight, t_s, inv_tau, prior_weight, gate_sigma,
               gate_min_weight, outlier_weight, min_rel, log_erosion, min_pace, max_pace,
               shift):  # pragma: no cover - jitted
    """Fold traversals into the state in place; return the number of touched segments.

    Random access over a state larger than the cache is what costs, so the traversals are
    first bucketed by ``edge >> shift`` (a stable counting sort into ``order_*``, buffers
    of at least ``n`` entries; the pace clipped and the weight decayed on the way) and
    each window of ``2**shift`` segments is then folded and blended while its state is in
    cache. With more than 16 windows per traversal (a small batch on a large network) a
    stable sort of the window numbers replaces the counting sort, so the cost is
    O(n log n) and nothing scales with ``m``. A window with many traversals (``4 n_b >= 2**shift``) gets
    its gate terms computed in one sequential sweep; a sparse one computes them at first
    touch. Sums of a segment accumulate in the traversals' original order. ``t_obs`` of
    length 0 means "observed at ``t_s``". Edges must be in range (the caller checks).
    """
    n = edge.shape[0]
    m = mu.shape[0]
    if n == 0 or m == 0:
        return 0
    nb = ((m - 1) >> shift) + 1
    has_t = t_obs.shape[0] == n
    # Runs of traversals per non-empty window: window number, first and end slot in order_*.
    run_b = np.empty(min(nb, n), np.int64)
    run_lo = np.empty(min(nb, n) + 1, np.int64)
    n_runs = 0
    if nb <= 16 * n:  # O(n) either way; a counting sort beats a comparison sort here
        start = np.zeros(nb + 1, np.int64)
        for i in range(n):
            start[(edge[i] >> shift) + 1] += 1
        for b in range(nb):
            start[b + 1] += start[b]
        pos = start[:nb].copy()
        for i in range(n):
            e = edge[i]
            b = e >> shift
            j = pos[b]
            pos[b] = j + 1
            order_edge[j] = e
            order_pace[j] = min(max(np.float64(pace[i]), min_pace), max_pace)
            w = np.float64(weight[i])
            if has_t:
                w *= math.exp(min(t_obs[i] - t_s, 0.0) * inv_tau)
            order_weight[j] = w
        for b in range(nb):
            if start[b + 1] > start[b]:
                run_b[n_runs] = b
                run_lo[n_runs] = start[b]
                n_runs += 1
    else:
        key = np.empty(n, np.int64)
        for i in range(n):
            key[i] = edge[i] >> shift
        perm = np.argsort(key, kind="mergesort")  # stable: a segment's sums keep input order
        for j in range(n):
            i = perm[j]
            _put(i, j, edge, pace, weight, t_obs, has_t, order_edge, order_pace, order_weight,
                 t_s, inv_tau, min_pace, max_pace)
            if j == 0 or key[i] != key[perm[j - 1]]:
                run_b[n_runs] = key[i]
                run_lo[n_runs] = j
                n_runs += 1
    run_lo[n_runs] = n
    win = min(1 << shift, m)
    acc = np.zeros((win, 4))  # W, S1, S2, G of the window's segments
    c_dec = np.empty(win)  # decayed evidence weight, estimate, gate half-width (inf: open)
    p_hat = np.empty(win)
    half = np.empty(win)
    touched = 0
    for r in range(n_runs):
        b = run_b[r]
        lo = run_lo[r]
        hi = run_lo[r + 1]
        base = b << shift
        size = min(win, m - base)
        dense = (hi - lo) * 4 >= win
        if dense:
            for k in range(size):
                _gate_terms(base + k, k, mu, c, var, prior, last, c_dec, p_hat, half, t_s,
                            inv_tau, prior_weight, gate_sigma, gate_min_weight, min_rel)
        for j in range(lo, hi):
            e = order_edge[j]
            k = e - base
            if not dense and not (acc[k, 0] > 0 or acc[k, 3] > 0):
                _gate_terms(e, k, mu, c, var, prior, last, c_dec, p_hat, half, t_s, inv_tau,
                            prior_weight, gate_sigma, gate_min_weight, min_rel)
            p = order_pace[j]
            w = order_weight[j]
            if abs(p - p_hat[k]) > half[k]:
                acc[k, 3] += w
                w *= outlier_weight
            else:
                count[e] += 1
            dev = p - np.float64(mu[e])
            wd = w * dev
            acc[k, 0] += w
            acc[k, 1] += wd
            acc[k, 2] += wd * dev
        if dense:
            for k in range(size):
                if acc[k, 0] > 0 or acc[k, 3] > 0:
                    _blend(base + k, k, mu, c, var, last, acc, c_dec, t_s, log_erosion)
                    touched += 1
        else:
            for j in range(lo, hi):
                k = order_edge[j] - base
                if acc[k, 0] > 0 or acc[k, 3] > 0:
                    _blend(base + k, k, mu, c, var, last, acc, c_dec, t_s, log_erosion)
                    touched += 1
    return touched


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _put(i, j, edge, pace, weight, t_obs, has_t, order_edge, order_pace, order_weight, t_s,
         inv_tau, min_pace, max_pace):  # pragma: no cover - jitted
    """Traversal ``i`` into slot ``j``: its edge, clipped pace and decayed weight."""
    order_edge[j] = edge[i]
    order_pace[j] = min(max(np.float64(pace[i]), min_pace), max_pace)
    w = np.float64(weight[i])
    if has_t:
        w *= math.exp(min(t_obs[i] - t_s, 0.0) * inv_tau)
    order_weight[j] = w


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _gate_terms(e, k, mu, c, var, prior, last, c_dec, p_hat, half, t_s, inv_tau, prior_weight,
                gate_sigma, gate_min_weight, min_rel):  # pragma: no cover - jitted
    """Segment ``e``'s decayed weight, estimate and gate half-width into slot ``k``."""
    cd = c[e] * math.exp(min(last[e] - t_s, 0.0) * inv_tau)
    ph = (prior_weight * prior[e] + cd * np.float64(mu[e])) / (prior_weight + cd)
    floor_sd = min_rel * ph
    c_dec[k] = cd
    p_hat[k] = ph
    if cd >= gate_min_weight:
        half[k] = gate_sigma * math.sqrt(max(np.float64(var[e]), floor_sd * floor_sd))
    else:
        half[k] = np.inf


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _blend(j, k, mu, c, var, last, acc, c_dec, t_s, log_erosion):  # pragma: no cover - jitted
    """Blend segment ``j``'s sums (slot ``k``) into its state and zero the slot."""
    sum_w, sum_dev, sum_dev2, sum_g = acc[k, 0], acc[k, 1], acc[k, 2], acc[k, 3]
    cd = c_dec[k]
    if sum_g != 0.0:
        cd *= math.exp(sum_g * log_erosion)
    c_new = cd + sum_w
    delta = sum_dev / c_new
    v = (cd * var[j] + sum_dev2) / c_new - delta * delta
    if v < 0.0:
        v = 0.0
    mu[j] += delta
    var[j] = v
    c[j] = c_new
    last[j] = t_s
    acc[k, 0] = 0.0
    acc[k, 1] = 0.0
    acc[k, 2] = 0.0
    acc[k, 3] = 0.0
