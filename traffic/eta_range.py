"""ETA ranges: p10 and p90 of a route's duration from per-edge uncertainty.

Two kinds of uncertainty per edge, both relative to its travel time:

* ``spread_rel``: the spread of single traversals around the edge's estimate (the
  estimator's dispersion ``var``: red or green lights, a queue that does or does not
  clear). One vehicle's luck on one edge is independent of the next edge's, so these add
  in quadrature along a route and shrink relative to a long trip.
* ``error_rel``: the error of the estimate itself (its standard error where there is
  evidence, the prior's uncertainty where there is little) plus the forecast's error, which
  grows with the time ahead at which the edge is reached and with how far the forecast moved
  the edge from its live estimate (a forecast that changes much is less sure). The edges of
  one queue, one district's jam or one rush hour err together, so this part is summed
  linearly (fully correlated) along the route.

For a route with driven travel times ``tt_k``::

    var_ind = (spread_scale * sum_k (spread_rel_k * tt_k)^2)
    err     = error_scale * sum_k tt_k * error_rel_k + horizon_rel_per_h * sum_k tt_k * h_k / 3600
              + trend_scale * sum_k tt_k * |log(tt_k / live_tt_k)|
    sigma   = sqrt(var_ind + err^2 + (floor_rel * D)^2) / D
    p10, p90 = D * exp(-z * sigma), D * exp(+z * sigma)           (z = 1.2816)

(log-normal: the upper side is wider, as delays are). ``D`` is the ETA. The scales were
calibrated on scenario_kbh's held-out trips (80% inside [p10, p90]) and checked on
scenario_li (BENCHMARKS.md, "ETA forecast, ranges and router bias").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from traffic.errors import EstimatorConfigError

#: Standard normal quantile of 0.9.
Z90 = 1.2815515655446004


@dataclass(frozen=True, slots=True)
class RangeConfig:
    """Scales of the range model (module docstring).

    Attributes
    ----------
    spread_scale
        Multiplier of the summed independent variance of single traversals.
    error_scale
        Multiplier of the correlated estimate error.
    horizon_rel_per_h
        Correlated relative error per hour ahead at which an edge is reached (0.25: with the
        persistence-scaled forecast, trips over 20 min on scenario_kbh were covered 0.712
        of the time with 0.2, 0.719 with 0.25).
    prior_rel
        Relative error of an estimate with no evidence (the prior's).
    min_spread_rel
        Floor of ``spread_rel`` (also used where an edge has no evidence).
    floor_rel
        Relative error every trip has (snapping, turns, the first and last metres).
    trend_scale
        Correlated relative error per unit of the forecast's own change ``|log(forecast /
        live)|`` of an edge: the further the forecast moves from the live estimate, the
        less sure it is.
    """

    spread_scale: float = 2.0
    error_scale: float = 0.5
    horizon_rel_per_h: float = 0.25
    prior_rel: float = 0.3
    min_spread_rel: float = 0.15
    floor_rel: float = 0.03
    trend_scale: float = 0.5

    def __post_init__(self) -> None:
        for name in ("spread_scale", "error_scale", "horizon_rel_per_h", "prior_rel",
                     "min_spread_rel", "floor_rel", "trend_scale"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise EstimatorConfigError(f"`{name}` must be finite and >= 0; got {v!r}")


def edge_uncertainty(pace_s_per_m: Any, var: Any, evidence: Any, *, prior_weight: float,
                     config: RangeConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(spread_rel, error_rel)`` per edge from the estimator's arrays.

    Parameters
    ----------
    pace_s_per_m
        Published pace (s/m).
    var
        The estimator's dispersion of traversal paces ((s/m)^2).
    evidence
        Decayed evidence weight ``c(t)`` (traversals).
    prior_weight
        The estimator's ``w0``.

    ``spread_rel = max(sqrt(var) / pace, min_spread_rel)`` (``min_spread_rel`` with no
    evidence); ``error_rel`` blends the evidence mean's standard error ``spread_rel /
    sqrt(c)`` and ``prior_rel`` by their shares of the estimate, ``c / (c + w0)`` and
    ``w0 / (c + w0)``, in quadrature.
    """
    c_all = np.asarray(evidence, dtype=np.float64)
    # An edge without evidence has spread min_spread_rel and error prior_rel (share 0;
    # sqrt(x * x) == |x| in binary floating point): computed for the others only, so a
    # network where probes touched a tenth of the edges costs a tenth.
    spread_out = np.full(c_all.shape, config.min_spread_rel, dtype=np.float64)
    err_out = np.full(c_all.shape, abs(config.prior_rel), dtype=np.float64)
    idx = np.flatnonzero(c_all > 0)
    pace = np.asarray(pace_s_per_m, dtype=np.float64)[idx]
    c = c_all[idx]
    v = np.maximum(np.asarray(var, dtype=np.float64)[idx], 0.0)
    spread = np.maximum(np.sqrt(v) / pace, config.min_spread_rel)
    share = c / (c + prior_weight)
    se = spread / np.sqrt(np.maximum(c, 1e-9))
    spread_out[idx] = spread
    err_out[idx] = np.sqrt((share * se) ** 2 + ((1.0 - share) * config.prior_rel) ** 2)
    return spread_out, err_out


def route_sigma(tt_s: np.ndarray, spread_rel: np.ndarray, error_rel: np.ndarray,
                horizon_s: np.ndarray | float, config: RangeConfig, *,
                live_tt_s: np.ndarray | None = None) -> float:
    """Log-scale standard deviation of a route's duration (module docstring).

    ``tt_s``: the driven time of each route edge (forecast); ``live_tt_s``: the same edges'
    driven time on the live estimate (default: equal, no trend term); ``horizon_s``: when
    each edge is reached after the estimate's time.
    """
    tt = np.asarray(tt_s, dtype=np.float64)
    d = float(tt.sum())
    if d <= 0:
        return 0.0
    st = spread_rel * tt
    var_ind = config.spread_scale * float(st @ st)
    # One weighted sum: error_scale * error_rel + horizon_rel_per_h * h / 3600 (+ trend).
    w = config.error_scale * np.asarray(error_rel, dtype=np.float64) \
        + (config.horizon_rel_per_h / 3600.0) * np.asarray(horizon_s, dtype=np.float64)
    if live_tt_s is not None and config.trend_scale > 0:
        live = np.maximum(np.asarray(live_tt_s, dtype=np.float64), 1e-9)
        w = w + config.trend_scale * np.abs(np.log(np.maximum(tt, 1e-9) / live))
    err = float(tt @ w) if np.ndim(w) else float(w) * d
    return math.sqrt(var_ind + err * err + (config.floor_rel * d) ** 2) / d


def duration_range(duration_s: float, sigma: float) -> tuple[float, float]:
    """``(p10, p90)`` of a log-normal duration with median ``duration_s`` and log-sd
    ``sigma``; ``p10 <= duration_s <= p90`` always."""
    s = max(float(sigma), 0.0)
    return duration_s * math.exp(-Z90 * s), duration_s * math.exp(Z90 * s)
