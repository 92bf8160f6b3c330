"""The forecast and range model a router answers ETAs with, and its compact travelling form.

:class:`EtaModel` holds, per edge, what :func:`traffic.forecast.eta_along` and
:mod:`traffic.eta_range` need (trend slope and lag, relative spread and error, free-flow
time); the estimator builds it at the full-publication cadence from its
:class:`traffic.forecast.PaceTrend` and its own arrays. Full publications carry the
:class:`CompactEtaModel` (the edges with evidence only) and each router expands it once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from traffic.forecast import ForecastConfig, PaceTrend, eta_along


@dataclass(frozen=True, slots=True, eq=False)
class EtaModel:
    """What a router replica needs for forecast ETAs and ranges: per edge (float32, host)
    the trend slope (the forecast's: persistence included, :meth:`PaceTrend.forecast_slopes`)
    and lag, the relative spread and error (:mod:`traffic.eta_range`) and the free-flow time,
    plus the pooled slope and the estimate's event time ``t_s``.

    Built by :func:`build_eta_model` at the full-publication cadence (O(edges)); 20 B per
    edge in each replica. :meth:`route_eta` costs O(route edges).
    """

    t_s: float
    slope_per_s: np.ndarray
    lag_s: np.ndarray
    pool_slope_per_s: float
    spread_rel: np.ndarray
    error_rel: np.ndarray
    freeflow_tt_s: np.ndarray | None
    forecast: ForecastConfig
    ranges: Any  # traffic.eta_range.RangeConfig
    #: The trend's persistence the slopes carry (traffic.accumulation); the router-bias
    #: correction fades with it (traffic.route_bias.correction_strength).
    persistence: float = 1.0

    @property
    def n_edges(self) -> int:
        """Number of edges."""
        return int(self.slope_per_s.shape[0])

    def travel_times_at(self, live_tt_s: np.ndarray, horizon_s: float) -> np.ndarray:
        """Every edge's forecast travel time (s, float64) ``horizon_s`` after ``t_s`` from the
        live times ``live_tt_s`` (one per edge): the metric a later departure is routed on.
        O(edges)."""
        from traffic.forecast import forecast_travel_times

        live = np.asarray(live_tt_s, dtype=np.float64)
        if live.shape != (self.n_edges,):
            raise ValueError(f"live travel times must hold one value per edge "
                             f"({self.n_edges}); got {live.shape}")
        return forecast_travel_times(live, self.slope_per_s, max(float(horizon_s), 0.0),
                                     self.forecast, lag_s=self.lag_s,
                                     pool_slope_per_s=self.pool_slope_per_s,
                                     floor_tt_s=self.freeflow_tt_s)

    def drive(self, edges: np.ndarray, live_tt_s: np.ndarray, *, depart_in_s: float = 0.0,
              share: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """``(duration_s, tt_s)``: the forecast ETA of ``edges`` in driving order with their
        live whole-edge times ``live_tt_s`` (and driven ``share``), departing
        ``depart_in_s`` after ``t_s``, and each edge's forecast driven time
        (:func:`traffic.forecast.eta_along`; :meth:`route_eta` without the range).
        O(route edges)."""
        e = np.asarray(edges, dtype=np.int64)
        if e.size == 0:
            return 0.0, np.zeros(0)
        return eta_along(np.asarray(live_tt_s, dtype=np.float64), self.slope_per_s[e],
                         self.forecast, depart_in_s=max(float(depart_in_s), 0.0), share=share,
                         lag_s=self.lag_s[e], pool_slope_per_s=self.pool_slope_per_s,
                         floor_tt_s=self.freeflow_tt_s[e])

    def route_eta(self, edges: np.ndarray, live_tt_s: np.ndarray, *,
                  depart_in_s: float = 0.0, share: np.ndarray | None = None,
                  ) -> tuple[float, float, float, np.ndarray]:
        """``(duration_s, p10_s, p90_s, tt_s)`` of a route: its ``edges`` in driving order
        with their live whole-edge times ``live_tt_s`` (and driven ``share``), departing
        ``depart_in_s`` after ``t_s``; ``tt_s`` the forecast driven time per edge.
        ``p10 <= duration <= p90``."""
        from traffic.eta_range import duration_range, route_sigma

        e = np.asarray(edges, dtype=np.int64)
        if e.size == 0:
            return 0.0, 0.0, 0.0, np.zeros(0)
        live = np.asarray(live_tt_s, dtype=np.float64)
        sh = np.ones(e.size) if share is None else np.asarray(share, dtype=np.float64)
        dep = max(float(depart_in_s), 0.0)
        d, tt = self.drive(e, live, depart_in_s=dep, share=sh)
        arrive = np.cumsum(tt) - tt + dep
        sigma = route_sigma(tt, self.spread_rel[e], self.error_rel[e], arrive, self.ranges,
                            live_tt_s=live * sh)
        lo, hi = duration_range(d, sigma)
        return d, lo, hi, tt


def build_eta_model(trend: PaceTrend, pace_s_per_m: np.ndarray, var: np.ndarray,
                    evidence: np.ndarray, freeflow_tt_s: np.ndarray | None, t_s: float, *,
                    prior_weight: float, ranges: Any = None) -> EtaModel:
    """The :class:`EtaModel` at ``t_s`` from the trend and the estimator's arrays over every
    edge (host): published pace, dispersion ``var`` and decayed evidence weight, with the
    free-flow times ``freeflow_tt_s`` (or ``None``; :func:`with_freeflow`). O(edges): the
    compact model (:func:`build_compact_eta_model`) of all edges, expanded."""
    every = np.arange(trend.n_edges, dtype=np.int64)
    return build_compact_eta_model(trend, every, pace_s_per_m, var, evidence, t_s,
                                   prior_weight=prior_weight, ranges=ranges
                                   ).expand(freeflow_tt_s)


@dataclass(frozen=True, slots=True, eq=False)
class CompactEtaModel:
    """An :class:`EtaModel` as it travels: the per-edge arrays (float32) of ``edges`` only,
    the edges with evidence in the estimator or the trend; every other edge has the pooled
    slope, the lag ``forecast.lag_s`` and the no-evidence spread and error (``default_*``).

    What a full publication carries, so its size follows the probes, not the network (a
    dense model was 16 B per edge in every copy in Ray's object store); a router expands it
    once (:meth:`expand`) into the dense model its routes read.
    """

    t_s: float
    n_edges: int
    edges: np.ndarray  # int64, ascending
    slope_per_s: np.ndarray
    lag_s: np.ndarray
    spread_rel: np.ndarray
    error_rel: np.ndarray
    pool_slope_per_s: float
    default_spread_rel: float
    default_error_rel: float
    forecast: ForecastConfig
    ranges: Any
    persistence: float = 1.0

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays."""
        return int(sum(a.nbytes for a in (self.edges, self.slope_per_s, self.lag_s,
                                           self.spread_rel, self.error_rel)))

    def expand(self, freeflow_tt_s: np.ndarray | None = None) -> EtaModel:
        """The dense :class:`EtaModel` (float32 arrays of ``n_edges``) with free-flow times
        ``freeflow_tt_s`` (s per edge, or ``None``). O(edges)."""
        f32 = np.float32

        def full(value: float, part: np.ndarray) -> np.ndarray:
            out = np.full(self.n_edges, value, dtype=f32)
            out[self.edges] = part
            return out

        ff = None if freeflow_tt_s is None else np.asarray(freeflow_tt_s, dtype=f32)
        if ff is not None and ff.shape != (self.n_edges,):
            raise ValueError(f"free-flow times must hold one value per edge ({self.n_edges}); "
                             f"got {ff.shape}")
        return EtaModel(t_s=self.t_s,
                        slope_per_s=full(self.pool_slope_per_s, self.slope_per_s),
                        lag_s=full(self.forecast.lag_s, self.lag_s),
                        pool_slope_per_s=self.pool_slope_per_s,
                        spread_rel=full(self.default_spread_rel, self.spread_rel),
                        error_rel=full(self.default_error_rel, self.error_rel),
                        freeflow_tt_s=ff, forecast=self.forecast, ranges=self.ranges,
                        persistence=self.persistence)


def build_compact_eta_model(trend: PaceTrend, edges: np.ndarray, pace_s_per_m: np.ndarray,
                            var: np.ndarray, evidence: np.ndarray, t_s: float, *,
                            prior_weight: float, ranges: Any = None) -> CompactEtaModel:
    """The :class:`CompactEtaModel` at ``t_s``: ``edges`` (ascending ids, which must hold
    every edge with evidence in the estimator or in ``trend``) and, per listed edge, the
    estimator's published pace, dispersion ``var`` and decayed evidence weight.
    O(len(edges)); expanded it equals :func:`build_eta_model`'s model."""
    from traffic.eta_range import RangeConfig, edge_uncertainty

    rc = ranges or RangeConfig()
    e = np.asarray(edges, dtype=np.int64)
    spread, err = edge_uncertainty(pace_s_per_m, var, evidence, prior_weight=prior_weight,
                                   config=rc)
    d_spread, d_err = edge_uncertainty(np.ones(1), np.zeros(1), np.zeros(1),
                                       prior_weight=prior_weight, config=rc)
    f32 = np.float32
    return CompactEtaModel(t_s=float(t_s), n_edges=trend.n_edges, edges=e,
                           slope_per_s=trend.forecast_slopes(t_s, e).astype(f32),
                           lag_s=trend.lags(t_s, e).astype(f32),
                           spread_rel=spread.astype(f32), error_rel=err.astype(f32),
                           pool_slope_per_s=trend.forecast_pool_slope(),
                           default_spread_rel=float(d_spread[0]),
                           default_error_rel=float(d_err[0]),
                           forecast=replace(trend.config, gain=trend.gain()), ranges=rc,
                           persistence=trend.persistence())


def with_freeflow(model: EtaModel | CompactEtaModel | None,
                  freeflow_tt_s: np.ndarray) -> EtaModel | None:
    """``model`` with its free-flow times (s per edge, float32) set when it came without; a
    :class:`CompactEtaModel` is expanded with them."""
    if isinstance(model, CompactEtaModel):
        return model.expand(freeflow_tt_s)
    if model is None or model.freeflow_tt_s is not None:
        return model
    return replace(model, freeflow_tt_s=np.asarray(freeflow_tt_s, dtype=np.float32))
