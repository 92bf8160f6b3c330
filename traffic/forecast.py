"""Short-term forecasts of edge travel times (0-60 min ahead) and time-dependent ETAs.

The model works on the log of traversal paces (s/m), ``x = log pace``:

* **Trend** (:class:`PaceTrend`). Each traversal the estimator folds is also folded here,
  at its mid time: per edge, an exponentially weighted least-squares line of ``x`` against
  time (time constant ``edge_tau_s``), kept as five centred sums, so an update costs
  O(batch) and touches only the traversed edges. The same regression pooled over all edges
  (the sums of the edges' centred moments, kept exactly as edges change) gives a
  network-wide slope, shrunk towards 0 by ``pool_prior_s2`` while little evidence spans time.
  An edge's slope is its own regression shrunk to the pooled slope::

      s_e = (Ctx_e + shrink_s^2 * s_pool) / (Ctt_e + shrink_s^2)

  Traversals, not the published pace, feed the trend: the published pace decays towards
  the prior between traversals and the gate holds back a jam's first traversals, and both
  flatten the slope (measured: the pooled slope of published paces was a quarter of the
  network's speed decline on scenario_kbh).
* **Forecast** for an edge reached ``h`` seconds after the estimate's time, whose evidence
  trails that time by ``lag_e = clip(t - t_mean_e, 0, lag_s)``::

      log(tt_e(h) / tt_e(live)) = clip(gain * (s_pool * D(h + lag_e) + (s_e - s_pool) * D_loc(h + lag_e)),
                                       -max_log_change, max_log_change)

  where the slopes are the measured ones times the trend's *persistence* ``m``
  (:mod:`traffic.accumulation`: about 1 while the number of probe vehicles on the road grows
  as it did, towards 0 when it stops growing, negative when it falls, so the trend fades and
  reverses at a rush hour's turn within minutes instead of a quarter of an hour);
  ``gain`` = ``config.gain`` (times, with ``adapt_gain``, a learned *skill*: the change each
  new traversal shows from its edge's mean regressed on the change the pooled trend
  predicted for it); and
  ``D(u) = damping_s * (1 - exp(-u / damping_s))`` (the trend's effect saturates) and
  ``D_loc`` the same over ``local_tau_s`` (an edge's deviation from the pool may fade
  sooner; off by default). With ``correct_lag`` off the lag only shifts the horizon. A
  falling trend stops at ``min(live, free-flow)``. A flat trend (all slopes 0) gives the
  live estimate exactly. Where a time-of-week profile has data the forecast fades to it
  linearly over ``profile_blend_s`` (Valhalla's ``1 - min(h / 3600, 1)`` live share).
* **Time-dependent ETA** (:func:`eta_along`): walk the route; each edge's travel time is its
  forecast at the moment the vehicle reaches it. Solved by a few fixed-point passes over
  the route's arrays (arrival offsets from the cumulative sum of the previous pass), which
  converge because a travel time changes slowly with its arrival time.

What a router answers with (per-edge slopes, lags and range inputs, and the compact form
full publications carry) is in :mod:`traffic.eta_model`.

State per edge: ``w``, ``x_mean``, ``ctt``, ``ctx`` float32 and ``t_mean``, ``t_last``
float64: 32 B; the vehicle count's lines are a few scalars. :class:`PaceTrend` checkpoints
it with ``state_dict``/``load_state_dict`` (versioned, matched by stable edge key as the
estimator's checkpoint is).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from traffic.accumulation import AccumulationConfig, VehicleAccumulation
from traffic.errors import EstimatorConfigError, EstimatorStateError
from traffic.profiles import index_of_keys


@dataclass(frozen=True, slots=True)
class ForecastConfig:
    """Parameters of the trend forecast (module docstring). Chosen on scenario_kbh and
    checked on scenario_li (BENCHMARKS.md, "ETA forecast, ranges and router bias").

    Attributes
    ----------
    edge_tau_s
        Time constant of an edge's decayed trend sums (s).
    shrink_s
        Pseudo-duration (s) of pooled slope in an edge's slope: an edge needs this much
        of its own observed increments to count as much as the pool.
    lag_s
        How far the live estimate trails the present (s); the forecast at horizon 0 is the
        live estimate moved ``lag_s`` along the trend when ``correct_lag``.
    correct_lag
        Apply the lag correction at horizon 0 (else the forecast at ``h = 0`` is the live
        estimate and the lag only shifts the damping).
    damping_s
        Horizon over which the pooled trend's effect saturates (s).
    local_tau_s
        Horizon over which an edge's own deviation from the pooled trend fades (s).
    pool_prior_s2
        Pseudo time variance (weight x s^2) of a flat trend in the pooled slope: while
        little evidence spans time (the first minutes) the pooled slope stays near 0.
    gain
        Multiplier of the slope (1: plain extrapolation); with ``adapt_gain`` it multiplies
        the learned skill (:meth:`PaceTrend.gain`). Above 1 because the slope of completed
        traversals trails the present (their mid times lag it, the 900 s regression
        flattens a rise that steepens).
    adapt_gain
        Learn online how much of the change the pooled trend predicts new traversals show,
        and scale the slopes by it. Off by default: the persistence
        (:mod:`traffic.accumulation`) sees a rush hour's turn sooner, because the count of
        probe vehicles stops growing when the queues do, while the skill waits for
        traversals that complete minutes later (scenario_kbh after the peak: MdAPE 0.163
        with persistence, 0.185 with the skill, live 0.169; scenario_li 0.079, 0.096 and
        0.080).
    skill_prior
        Pseudo-evidence (weight x (log change)^2) for a skill of 1.
    skill_tau_s
        Time constant (s) of the skill's decayed sums. Shorter than ``edge_tau_s`` so the
        trend fades within minutes once its predictions stop coming true: at a rush's
        turning point the slopes (over ``edge_tau_s``) still point up for a quarter of an
        hour (scenario_kbh after the peak: MdAPE 0.218 with 900 s, 0.185 with 150 s, the
        peak unchanged).
    max_gain
        Upper bound of the learned skill.
    max_log_change
        Bound on ``|log(forecast / live)|``.
    profile_blend_s
        Horizon over which the forecast fades to the profile, where the profile has data.
    """

    edge_tau_s: float = 900.0
    shrink_s: float = 200.0
    lag_s: float = 120.0
    correct_lag: bool = True
    damping_s: float = 2400.0
    local_tau_s: float = 1e9
    pool_prior_s2: float = 1e7
    gain: float = 1.75
    adapt_gain: bool = False
    skill_prior: float = 0.05
    skill_tau_s: float = 150.0
    max_gain: float = 3.0
    max_log_change: float = 1.0
    profile_blend_s: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("edge_tau_s", "shrink_s", "damping_s", "local_tau_s",
                     "profile_blend_s", "skill_tau_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise EstimatorConfigError(f"`{name}` must be finite and > 0; got {v!r}")
        for name in ("lag_s", "gain", "max_log_change", "pool_prior_s2", "skill_prior",
                     "max_gain"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise EstimatorConfigError(f"`{name}` must be finite and >= 0; got {v!r}")


def damped_horizon_s(h_s: Any, damping_s: float) -> Any:
    """``D(h) = damping_s * (1 - exp(-h / damping_s))`` for ``h >= 0`` (0 below)."""
    h = np.maximum(np.asarray(h_s, dtype=np.float64), 0.0)
    return damping_s * -np.expm1(-h / damping_s)


def forecast_log_change(slope_per_s: Any, horizon_s: Any, config: ForecastConfig, *,
                        lag_s: Any = None, pool_slope_per_s: float | None = None) -> np.ndarray:
    """``log(tt(h) / tt_live)`` for edges of slope ``slope_per_s`` reached ``horizon_s`` after
    the estimate's time, whose evidence trails that time by ``lag_s`` (default
    ``config.lag_s``; broadcast). Zero where the slopes are zero.

    The pooled slope persists (damped over ``damping_s``); an edge's own deviation from it
    fades over ``local_tau_s`` (a queue's growth is local and short-lived). Without
    ``pool_slope_per_s`` the whole slope is treated as persistent.
    """
    c = config
    h = np.maximum(np.asarray(horizon_s, dtype=np.float64), 0.0)
    lag = c.lag_s if lag_s is None else np.asarray(lag_s, dtype=np.float64)
    s = np.asarray(slope_per_s, dtype=np.float64)
    pool = s if pool_slope_per_s is None else float(pool_slope_per_s)
    lo = 0.0 if c.correct_lag else lag
    eff = damped_horizon_s(h + lag, c.damping_s) - damped_horizon_s(lo, c.damping_s)
    loc = damped_horizon_s(h + lag, c.local_tau_s) - damped_horizon_s(lo, c.local_tau_s)
    out = c.gain * (pool * eff + (s - pool) * loc)
    return np.clip(out, -c.max_log_change, c.max_log_change)


def forecast_travel_times(live_tt_s: Any, slope_per_s: Any, horizon_s: Any,
                          config: ForecastConfig, *, lag_s: Any = None,
                          pool_slope_per_s: float | None = None, floor_tt_s: Any = None,
                          profile_tt_s: Any = None) -> np.ndarray:
    """Travel time (s) of each edge reached ``horizon_s`` after the estimate's time.

    ``floor_tt_s`` (the free-flow time): a falling trend does not take an edge below
    ``min(live, floor)``; traffic clears, it does not get faster than free flow.
    ``profile_tt_s`` (NaN where the profile has no data): the forecast fades linearly to it
    over ``config.profile_blend_s``. Returns a new float64 array (broadcast shape).
    """
    live = np.asarray(live_tt_s, dtype=np.float64)
    out = live * np.exp(forecast_log_change(slope_per_s, horizon_s, config, lag_s=lag_s,
                                            pool_slope_per_s=pool_slope_per_s))
    if floor_tt_s is not None:
        out = np.maximum(out, np.minimum(live, np.asarray(floor_tt_s, dtype=np.float64)))
    if profile_tt_s is not None:
        prof = np.asarray(profile_tt_s, dtype=np.float64)
        share = np.minimum(np.maximum(np.asarray(horizon_s, np.float64), 0.0)
                           / config.profile_blend_s, 1.0)
        out = np.where(np.isfinite(prof), (1.0 - share) * out + share * prof, out)
    return out


def eta_along(live_tt_s: np.ndarray, slope_per_s: np.ndarray, config: ForecastConfig, *,
              depart_in_s: float = 0.0, share: np.ndarray | None = None,
              lag_s: np.ndarray | None = None, pool_slope_per_s: float | None = None,
              floor_tt_s: np.ndarray | None = None, profile_tt_s: np.ndarray | None = None,
              passes: int = 3) -> tuple[float, np.ndarray]:
    """Time-dependent ETA along a route: each edge at its forecast for its arrival time.

    Parameters
    ----------
    live_tt_s, slope_per_s
        Per route edge, in driving order: live travel time (s, whole edge) and trend slope.
    depart_in_s
        Departure after the estimate's time (s, >= 0).
    share
        Driven share of each edge (partial first and last edges); default all 1.
    lag_s
        Per edge, how far its evidence trails the estimate's time (default ``config.lag_s``).
    pool_slope_per_s
        The network-wide slope (:meth:`PaceTrend.pool_slope`), see
        :func:`forecast_log_change`.
    floor_tt_s
        Per edge free-flow time (whole edge), see :func:`forecast_travel_times`.
    profile_tt_s
        Optional profile travel times (NaN: no data), see :func:`forecast_travel_times`.
    passes
        Fixed-point passes (3 reach ~1e-4 relative on 1-hour trips).

    Returns
    -------
    ``(duration_s, tt_s)``: the ETA and each edge's driven travel time (summing to it).

    Examples
    --------
    >>> cfg = ForecastConfig()
    >>> eta_along(np.array([60.0, 30.0]), np.zeros(2), cfg)[0]   # flat trend: live
    90.0
    """
    live = np.asarray(live_tt_s, dtype=np.float64)
    sh = None if share is None else np.asarray(share, dtype=np.float64)
    tt = live if sh is None else live * sh
    if profile_tt_s is not None:
        for _ in range(max(int(passes), 1)):
            arrive = np.cumsum(tt) - tt + depart_in_s
            f = forecast_travel_times(live, slope_per_s, arrive, config, lag_s=lag_s,
                                      pool_slope_per_s=pool_slope_per_s,
                                      floor_tt_s=floor_tt_s, profile_tt_s=profile_tt_s)
            tt = f if sh is None else sh * f
        return float(tt.sum()), tt
    # The same arithmetic as forecast_travel_times, inlined: a route answer's budget is 0.1 ms.
    c = config
    s = np.asarray(slope_per_s, dtype=np.float64)
    pool = s if pool_slope_per_s is None else float(pool_slope_per_s)
    lag = c.lag_s if lag_s is None else np.asarray(lag_s, dtype=np.float64)
    g_pool = c.gain * pool
    g_loc = c.gain * (s - pool)
    off_d = 0.0 if c.correct_lag else damped_horizon_s(lag, c.damping_s)
    off_l = 0.0 if c.correct_lag else damped_horizon_s(lag, c.local_tau_s)
    floor = None if floor_tt_s is None else np.minimum(live, np.asarray(floor_tt_s, np.float64))
    # A local horizon of 1e8 s or more does not fade within a day: D_loc(u) = u (to 1e-5).
    no_fade = c.local_tau_s >= 1e8
    for _ in range(max(int(passes), 1)):
        u = np.cumsum(tt) - tt + (depart_in_s + lag)  # arrival offset + lag (>= 0)
        ch = g_pool * (c.damping_s * -np.expm1(u * (-1.0 / c.damping_s)) - off_d)
        if no_fade:
            ch += g_loc * (u - lag if not c.correct_lag else u)
        else:
            ch += g_loc * (c.local_tau_s * -np.expm1(u * (-1.0 / c.local_tau_s)) - off_l)
        f = live * np.exp(np.clip(ch, -c.max_log_change, c.max_log_change))
        if floor is not None:
            f = np.maximum(f, floor)
        tt = f if sh is None else sh * f
    return float(tt.sum()), tt


class PaceTrend:
    """Per-edge and pooled trend of log traversal pace; see the module docstring.

    Per edge, an exponentially weighted least-squares line of ``x = log pace`` against the
    traversals' mid times, in the centred form (weight ``W``, mean time ``t_mean``, mean
    ``x_mean``, ``Ctt = sum w (t - t_mean)^2``, ``Ctx = sum w (t - t_mean)(x - x_mean)``),
    decayed with ``edge_tau_s`` from ``t_last``. Batches merge by Chan's pairwise formulas, so
    one batch or many give the same sums. The pooled sums ``sum_e Ctt_e`` and ``sum_e Ctx_e``
    decay at the same rate and are kept exactly by adding each touched edge's change.

    Parameters
    ----------
    edge_key
        int64 stable key per edge (for checkpoints across network versions).
    config
        Model parameters.
    accumulation
        Parameters of the probe-vehicle count behind the persistence
        (:mod:`traffic.accumulation`); defaults when ``None``.
    """

    STATE_VERSION = 3
    _ARRAYS = ("w", "t_mean", "x_mean", "ctt", "ctx", "t_last")

    def __init__(self, edge_key: np.ndarray, config: ForecastConfig | None = None, *,
                 accumulation: AccumulationConfig | None = None) -> None:
        self.edge_key = np.asarray(edge_key, dtype=np.int64)
        self.config = config or ForecastConfig()
        #: Probe vehicles on the road: the trend's persistence (traffic.accumulation).
        self.vehicles = VehicleAccumulation(accumulation)
        m = self.edge_key.shape[0]
        self.w = np.zeros(m, dtype=np.float32)
        self.t_mean = np.zeros(m, dtype=np.float64)
        self.x_mean = np.zeros(m, dtype=np.float32)
        self.ctt = np.zeros(m, dtype=np.float32)
        self.ctx = np.zeros(m, dtype=np.float32)
        self.t_last = np.full(m, -np.inf, dtype=np.float64)
        self.pool_tt = 0.0
        self.pool_tx = 0.0
        self.pool_t = -math.inf
        # Skill: decayed regression of each new traversal's change from its edge's mean on
        # the change the trend predicted for it (sum w*pred*real, sum w*pred^2).
        self.skill_xy = 0.0
        self.skill_xx = 0.0

    @property
    def n_edges(self) -> int:
        """Number of edges."""
        return int(self.edge_key.shape[0])

    def _decay(self, t_s: float, edges: Any = slice(None)) -> np.ndarray:
        age = t_s - self.t_last[edges]
        ok = np.isfinite(age)
        return np.where(ok, np.exp(-np.maximum(np.where(ok, age, 0.0), 0.0)
                                   / self.config.edge_tau_s), 0.0)

    def update(self, edge: np.ndarray, t_obs_s: np.ndarray, pace_s_per_m: np.ndarray,
               weight: np.ndarray, t_s: float) -> None:
        """Fold traversals (edge, observation time, pace s/m, weight) at clock ``t_s``.

        O(batch): only the touched edges' sums change. Each traversal's weight is decayed
        from its own time, as the estimator does.
        """
        e = np.asarray(edge, dtype=np.int64)
        if e.size == 0:
            return
        c = self.config
        tt = np.asarray(t_obs_s, dtype=np.float64)
        x = np.log(np.asarray(pace_s_per_m, dtype=np.float64))
        wt = np.asarray(weight, dtype=np.float64) * np.exp(
            np.minimum(tt - t_s, 0.0) / c.edge_tau_s)
        u, idx = np.unique(e, return_inverse=True)
        # What the trend said about these traversals before seeing them (O(batch)).
        has = (self.w[u] > 0)[idx]
        if has.any():
            pred = (self.pool_slope() * (tt - self.t_mean[u][idx]))[has]
            real = (x - self.x_mean[u][idx])[has]
            ws = wt[has]
            if math.isfinite(self.pool_t) and t_s > self.pool_t:
                g = math.exp(-(t_s - self.pool_t) / c.skill_tau_s)
                self.skill_xy *= g
                self.skill_xx *= g
            self.skill_xy += float(np.sum(ws * pred * real))
            self.skill_xx += float(np.sum(ws * pred * pred))
        wb = np.bincount(idx, weights=wt)
        tb = np.bincount(idx, weights=wt * tt) / wb
        xb = np.bincount(idx, weights=wt * x) / wb
        dtb = tt - tb[idx]
        cttb = np.bincount(idx, weights=wt * dtb * dtb)
        ctxb = np.bincount(idx, weights=wt * dtb * (x - xb[idx]))
        d = self._decay(t_s, u)
        w0 = self.w[u] * d
        ctt0, ctx0 = self.ctt[u] * d, self.ctx[u] * d
        w1 = w0 + wb
        dt = tb - self.t_mean[u]
        dx = xb - self.x_mean[u]
        f = w0 * wb / w1
        ctt1 = ctt0 + cttb + f * dt * dt
        ctx1 = ctx0 + ctxb + f * dt * dx
        # The pooled sums: decay globally, then add the touched edges' changes.
        if math.isfinite(self.pool_t) and t_s > self.pool_t:
            g = math.exp(-(t_s - self.pool_t) / c.edge_tau_s)
            self.pool_tt *= g
            self.pool_tx *= g
        self.pool_t = max(self.pool_t, t_s)
        self.pool_tt += float((ctt1 - ctt0).sum())
        self.pool_tx += float((ctx1 - ctx0).sum())
        self.t_mean[u] = self.t_mean[u] + wb / w1 * dt
        self.x_mean[u] = (self.x_mean[u] + wb / w1 * dx).astype(np.float32)
        self.w[u], self.ctt[u], self.ctx[u] = w1, ctt1, ctx1
        self.t_last[u] = np.maximum(self.t_last[u], t_s)

    def gain(self) -> float:
        """Multiplier of the slopes in forecasts: ``config.gain``, times (``adapt_gain``) the
        learned skill ``(Sxy + k) / (Sxx + k)`` in ``[0, max_gain]``: how much of the change
        the trend predicted for new traversals they showed (``k = skill_prior``: 1 at first).
        """
        c = self.config
        if not c.adapt_gain:
            return c.gain
        k = c.skill_prior
        return c.gain * min(max((self.skill_xy + k) / (self.skill_xx + k), 0.0), c.max_gain)

    def observe_vehicles(self, source: int, t_s: float, vehicles: int) -> None:
        """Source ``source`` (an ingest partition) follows ``vehicles`` probe vehicles at event
        time ``t_s``; see :class:`traffic.accumulation.VehicleAccumulation`."""
        self.vehicles.observe(source, t_s, vehicles)

    def persistence(self) -> float:
        """The factor forecast slopes are the measured ones times (1 without vehicle
        counts); see :mod:`traffic.accumulation`."""
        return self.vehicles.persistence()

    def forecast_slopes(self, at_t_s: float, edges: np.ndarray | None = None) -> np.ndarray:
        """The slopes forecasts extrapolate: :meth:`slopes` times :meth:`persistence`."""
        return self.persistence() * self.slopes(at_t_s, edges)

    def forecast_pool_slope(self) -> float:
        """The pooled slope forecasts extrapolate: :meth:`pool_slope` times
        :meth:`persistence`."""
        return self.persistence() * self.pool_slope()

    def pool_slope(self) -> float:
        """Network-wide slope of log pace (1/s): the pooled within-edge regression, shrunk to
        0 by ``pool_prior_s2``."""
        return self.pool_tx / (self.pool_tt + self.config.pool_prior_s2)

    def slopes(self, at_t_s: float, edges: np.ndarray | None = None) -> np.ndarray:
        """Slope (1/s) of ``edges`` (default all): the edge's regression shrunk to the pool's
        by ``shrink_s**2`` of pseudo time variance."""
        c = self.config
        sl = slice(None) if edges is None else np.asarray(edges, dtype=np.int64)
        d = self._decay(at_t_s, sl)
        k = c.shrink_s * c.shrink_s
        return (self.ctx[sl] * d + k * self.pool_slope()) / (self.ctt[sl] * d + k)

    def lags(self, at_t_s: float, edges: np.ndarray | None = None) -> np.ndarray:
        """How far (s) each edge's evidence trails ``at_t_s``: ``at_t_s - t_mean`` within
        ``[0, lag_s]`` (``lag_s`` where the edge has no evidence)."""
        sl = slice(None) if edges is None else np.asarray(edges, dtype=np.int64)
        lag = np.where(self.w[sl] > 0, at_t_s - self.t_mean[sl], self.config.lag_s)
        return np.clip(lag, 0.0, self.config.lag_s)

    def evidence_edges(self) -> np.ndarray:
        """Ids (ascending) of the edges the trend has seen: every other edge's slope is the
        pooled slope and its lag ``config.lag_s``."""
        return np.flatnonzero((self.w != 0) | np.isfinite(self.t_last))

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint (host arrays, copies) of the edges with evidence (``edge_key`` names
        them; every other edge is empty). Version 2: ``version``, ``edge_key``, ``w``,
        ``t_mean``, ``x_mean``, ``ctt``, ``ctx``, ``t_last``, ``pool_tt``, ``pool_tx``,
        ``pool_t``, ``skill_xy``, ``skill_xx``, ``config`` and the vehicle count's state
        under ``vehicles.`` (:meth:`traffic.accumulation.VehicleAccumulation.state_dict`).
        Version 1 had no skill, versions 1 and 2 no vehicle count; they load without."""
        # Only the edges with evidence: the loader matches rows by key and starts every
        # other edge empty, so a checkpoint costs what the probes touched.
        keep = self.evidence_edges()
        out: dict[str, Any] = {k: getattr(self, k)[keep] for k in self._ARRAYS}
        out.update(version=self.STATE_VERSION, edge_key=self.edge_key[keep],
                   pool_tt=self.pool_tt, pool_tx=self.pool_tx, pool_t=self.pool_t,
                   skill_xy=self.skill_xy, skill_xx=self.skill_xx, config=asdict(self.config))
        out.update({f"vehicles.{k}": v for k, v in self.vehicles.state_dict().items()})
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output, matching edges by key (others start empty).

        Raises
        ------
        EstimatorStateError
            On another version or arrays of the wrong length.
        """
        if state.get("version") not in (1, 2, self.STATE_VERSION):
            raise EstimatorStateError(f"trend state has version {state.get('version')!r}; "
                                      f"this code reads {self.STATE_VERSION}")
        keys = np.asarray(state["edge_key"], dtype=np.int64)
        for k in self._ARRAYS:
            if np.shape(state[k]) != keys.shape:
                raise EstimatorStateError(f"trend array `{k}` has shape {np.shape(state[k])}; "
                                          f"expected {keys.shape}")
        same = keys.shape == self.edge_key.shape and bool(np.array_equal(keys, self.edge_key))
        src = np.arange(keys.size) if same else index_of_keys(keys, self.edge_key)
        found = src >= 0
        fresh = PaceTrend(self.edge_key, self.config)
        for k in self._ARRAYS:
            arr = getattr(fresh, k)
            arr[found] = np.asarray(state[k])[src[found]]
            setattr(self, k, arr)
        self.pool_tt, self.pool_tx = float(state["pool_tt"]), float(state["pool_tx"])
        self.pool_t = float(state["pool_t"])
        self.skill_xy = float(state.get("skill_xy", 0.0))
        self.skill_xx = float(state.get("skill_xx", 0.0))
        veh = {k[len("vehicles."):]: v for k, v in state.items() if k.startswith("vehicles.")}
        self.vehicles = VehicleAccumulation(self.vehicles.config)
        if veh:
            self.vehicles.load_state_dict(veh)
