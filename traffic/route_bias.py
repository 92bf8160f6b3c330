"""The router's optimism, learned online from completed probe trips and corrected.

A router picks the path with the lowest *estimated* time, so its ETA is biased low: among
paths whose estimates err, it prefers those that err low, and drivers often take another
path. From each completed probe trip (:mod:`traffic.probe_trips`) we compare, on the same
weights at the moment it completes, the estimate along the route the probe actually drove
with the estimate along the router's route between the same two junctions:
``r = log(driven_eta / router_eta) >= 0``. Its decayed mean per bucket of router ETA
(under 5, 5-10, 10-20, over 20 min) is the correction: ``corrected = router_eta *
exp(r_bucket)``. Nothing is taken from a scenario's truth files.

The estimates are the ones the correction multiplies: the forecast ETA (each edge at its
forecast for when it is reached) where the router has a forecast model, else the live sum.
On the forecast the gap is wider than on the live times, because the router picked its path
on the live times and the forecast moves the edges apart (scenario_kbh, peak, router ETA
10-20 min: median ``log(true route / router's route)`` 0.19 on the forecast, 0.11 live; the
router's signed median error after correction -0.033 learned on the forecast, -0.063
learned live).

State: per bucket a decayed weight and a decayed sum (time constant ``tau_s``), versioned
``state_dict``/``load_state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from graph.errors import NoRouteError
from traffic.errors import EstimatorConfigError, EstimatorStateError


def correction_strength(persistence: float) -> float:
    """How much of the learned correction applies: the forecast's persistence
    (:mod:`traffic.accumulation`) clipped to [0, 1]. The gap between driven and routed
    paths is learned from trips that took minutes to complete, under the congestion they
    drove through; once the probe-vehicle count stops growing the queues that made the
    router's choices look cheap drain, and that learned gap overstates the next route's
    (scenario_kbh after the peak: router MdAPE 0.205 with the whole correction, 0.177 with
    it faded, 0.187 on live times; scenario_li 0.111, 0.078 and 0.080)."""
    return min(max(float(persistence), 0.0), 1.0) if math.isfinite(persistence) else 1.0


#: Upper bounds (s) of the router-ETA buckets; the last bucket is open.
BUCKET_EDGES_S = (300.0, 600.0, 1200.0)


@dataclass(frozen=True, slots=True)
class RouteBiasConfig:
    """``tau_s``: decay of the evidence (s); ``prior_weight``: pseudo-trips per bucket at
    the correction of the bucket below (the first: ratio 1); ``max_log``: bound on one
    trip's ``|r|``; ``min_eta_s``: shorter trips are not used."""

    tau_s: float = 1800.0
    prior_weight: float = 5.0
    max_log: float = 1.0
    min_eta_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("tau_s", "prior_weight", "max_log", "min_eta_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0) or (name == "tau_s" and v == 0):
                raise EstimatorConfigError(f"`{name}` must be finite and >= 0; got {v!r}")


def bucket_of(eta_s: Any) -> np.ndarray:
    """Bucket index 0..3 of each ETA (s)."""
    return np.searchsorted(np.asarray(BUCKET_EDGES_S), np.asarray(eta_s, dtype=np.float64),
                           side="right")


class RouteBiasLearner:
    """Decayed mean of ``log(driven / router)`` per router-ETA bucket."""

    STATE_VERSION = 1

    def __init__(self, config: RouteBiasConfig | None = None) -> None:
        self.config = config or RouteBiasConfig()
        n = len(BUCKET_EDGES_S) + 1
        self.w = np.zeros(n)
        self.s = np.zeros(n)
        self.t_s = -math.inf
        self.trips = 0

    def _decay_to(self, t_s: float) -> None:
        if math.isfinite(self.t_s) and t_s > self.t_s:
            d = math.exp(-(t_s - self.t_s) / self.config.tau_s)
            self.w *= d
            self.s *= d
        self.t_s = max(self.t_s, t_s)

    def observe(self, t_s: float, router_eta_s: Any, driven_eta_s: Any) -> None:
        """Fold completed trips seen at ``t_s``: router and driven-route estimates (s)."""
        r = np.asarray(router_eta_s, dtype=np.float64)
        d = np.asarray(driven_eta_s, dtype=np.float64)
        ok = np.isfinite(r) & np.isfinite(d) & (r >= self.config.min_eta_s) & (d > 0)
        self._decay_to(t_s)
        if not ok.any():
            return
        lr = np.clip(np.log(d[ok] / r[ok]), -self.config.max_log, self.config.max_log)
        b = bucket_of(r[ok])
        n = self.w.size
        self.w += np.bincount(b, minlength=n)
        self.s += np.bincount(b, weights=lr, minlength=n)
        self.trips += int(ok.sum())

    def log_correction(self, router_eta_s: Any) -> np.ndarray:
        """``r_bucket`` for each router ETA (:meth:`log_corrections`)."""
        return self.log_corrections()[bucket_of(router_eta_s)]

    def log_corrections(self) -> np.ndarray:
        """``r_bucket`` of every bucket, in :data:`BUCKET_EDGES_S` order (a new array).

        Each bucket's mean is shrunk by ``prior_weight`` pseudo-trips towards the bucket
        below it (the first towards 0): the optimism grows with the trip's length, and
        probe traces are shorter than many asked trips, so a bucket without evidence takes
        its shorter neighbour's correction rather than none (scenario_kbh: no probe trace
        had a router ETA over 20 min)."""
        out = np.zeros(self.w.size)
        below = 0.0
        for b in range(self.w.size):
            below = out[b] = (self.s[b] + self.config.prior_weight * below) / (
                self.w[b] + self.config.prior_weight)
        return out

    def correct(self, router_eta_s: Any, *, strength: float = 1.0) -> np.ndarray:
        """Corrected router ETAs (s): times ``exp(strength * r_bucket)`` (``strength``: the
        forecast's persistence clipped to [0, 1], :func:`correction_strength`)."""
        r = np.asarray(router_eta_s, dtype=np.float64)
        return r * np.exp(float(strength) * self.log_correction(r))

    def state_dict(self) -> dict[str, Any]:
        """Version 1: ``version``, ``w``, ``s`` (per bucket), ``t_s``, ``trips``."""
        return {"version": self.STATE_VERSION, "w": self.w.copy(), "s": self.s.copy(),
                "t_s": self.t_s, "trips": self.trips}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (``EstimatorStateError`` on another version)."""
        if state.get("version") != self.STATE_VERSION:
            raise EstimatorStateError(f"route bias state has version {state.get('version')!r}; "
                                      f"this code reads {self.STATE_VERSION}")
        w, s = np.asarray(state["w"], float), np.asarray(state["s"], float)
        if w.shape != self.w.shape or s.shape != self.s.shape:
            raise EstimatorStateError(f"route bias state has {w.shape} buckets; expected "
                                      f"{self.w.shape}")
        self.w, self.s = w.copy(), s.copy()
        self.t_s, self.trips = float(state["t_s"]), int(state["trips"])


#: Names of the buckets, in :data:`BUCKET_EDGES_S` order (status reports).
BUCKET_NAMES = ("under_5_min", "5_to_10_min", "10_to_20_min", "over_20_min")


def live_path_eta(travel_time_s: np.ndarray) -> Callable[[np.ndarray], float]:
    """The ETA (s) of a path of whole edges on the live ``travel_time_s``: their sum."""
    tt = np.asarray(travel_time_s, dtype=np.float64)
    return lambda edges: float(tt[np.asarray(edges, dtype=np.int64)].sum())


def trip_etas(trips: Any, route_edges: Callable[[int, int], np.ndarray],
              path_eta_s: Callable[[np.ndarray], float]) -> tuple[np.ndarray, np.ndarray]:
    """``(router_eta_s, driven_eta_s)`` of each trip of ``trips``
    (:class:`traffic.probe_trips.RouteTrips`): ``path_eta_s`` (the ETA of a path of whole
    edges, e.g. :func:`live_path_eta` or a forecast) of the router's route between the
    trip's junctions, ``route_edges(src_node, dst_node)`` (NaN where it raises
    ``NoRouteError`` or ``ValueError``), and of the edges the probe drove between them. One
    route query per trip plus O(trip edges)."""
    k = len(trips)
    if k == 0:
        return np.zeros(0), np.zeros(0)
    driven = np.array([path_eta_s(trips.mid_edges(i)) for i in range(k)], dtype=np.float64)
    router = np.full(k, np.nan)
    for i, (a, b) in enumerate(zip(trips.src_node.tolist(), trips.dst_node.tolist(),
                                   strict=True)):
        try:
            router[i] = float(path_eta_s(route_edges(a, b)))
        except (NoRouteError, ValueError):  # unreachable (or not a node): not learned from
            continue
    return router, driven
