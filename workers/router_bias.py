"""A router replica's learned optimism: how much its forecast ETAs fall short, and the fix.

A router picks the path with the lowest estimate, so its ETAs run early. Each publication
a replica takes may carry completed probe trips (``traffic.probe_trips.RouteTrips``: the
middle edges a probe drove between two junctions). On the live weights just taken, the
replica routes between the same junctions and compares that route's ETA with the driven
edges', both forecast from now where the replica has a forecast model (the ETAs the
correction multiplies), else live sums (:func:`traffic.route_bias.trip_etas`). A
``traffic.route_bias.RouteBiasLearner`` keeps the decayed mean log ratio per router-ETA
bucket. Forecast answers are multiplied by ``exp(strength * log_correction)`` of their own
ETA's bucket (:meth:`RouterBias.correction`).

Answers read one per-bucket array that a learning step replaces whole, so the query path
takes no lock.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from traffic.route_bias import BUCKET_EDGES_S, BUCKET_NAMES, RouteBiasConfig, RouteBiasLearner


class RouterBias:
    """The learner of one replica (``config`` ``None``: off, every correction is 1).

    ``max_trips``: trips learned from per publication taken (each one route query; the
    newest kept).
    """

    def __init__(self, config: RouteBiasConfig | None, *, max_trips: int = 64) -> None:
        self.learner = None if config is None else RouteBiasLearner(config)
        self.max_trips = int(max_trips)
        self._lock = threading.Lock()
        self._log_corr = np.zeros(len(BUCKET_EDGES_S) + 1)
        self._steps = 0
        self._learn_s = 0.0

    def learn(self, pubs: list[Any], newest: Any, *, network_version: str,
              path_eta_s: Callable[[np.ndarray], float] | None,
              route_edges: Callable[[int, int], np.ndarray]) -> None:
        """Learn from the trips ``pubs`` carry for ``network_version``, on the weights just
        taken, at ``newest``'s event time (its wall time when it has none).
        ``path_eta_s(edges)``: the replica's ETA of a path of whole edges (``None``: no
        weights, nothing learned); ``route_edges(src_node, dst_node)``: its route's edges
        between two nodes."""
        from traffic.probe_trips import concat_route_trips
        from traffic.route_bias import trip_etas

        if self.learner is None or path_eta_s is None:
            return
        parts = [p.trips for p in pubs if getattr(p, "trips", None) is not None
                 and p.trips.network_version == network_version]
        trips = concat_route_trips(parts, max_trips=self.max_trips)
        if trips is None:
            return
        t0 = time.perf_counter()
        router_eta, driven_eta = trip_etas(trips, route_edges, path_eta_s)
        t_s = newest.weights_t if newest.weights_t is not None else newest.published_wall_s
        with self._lock:
            self.learner.observe(float(t_s), router_eta, driven_eta)
            self._log_corr = self.learner.log_corrections()
            self._steps += 1
            self._learn_s = time.perf_counter() - t0

    def correction(self, duration_s: float, strength: float = 1.0) -> float:
        """The factor a forecast ETA of ``duration_s`` (s) is corrected by:
        ``exp(strength * log_correction)`` of its bucket (``strength``:
        ``traffic.route_bias.correction_strength`` of the forecast's persistence); 1 when
        nothing is learned, the learner is off or the ETA is not a positive number. O(1)."""
        if not (duration_s > 0 and math.isfinite(duration_s)):
            return 1.0
        lc = self._log_corr  # one read: a learning step replaces the array whole
        return math.exp(float(strength)
                        * float(lc[bisect.bisect_right(BUCKET_EDGES_S, duration_s)]))

    def state_dict(self) -> dict[str, Any]:
        """The learner's ``state_dict`` (empty when it is off)."""
        if self.learner is None:
            return {}
        with self._lock:
            return self.learner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (ignored when the learner is off or
        ``state`` is empty)."""
        if self.learner is None or not state:
            return
        with self._lock:
            self.learner.load_state_dict(state)
            self._log_corr = self.learner.log_corrections()

    def stats(self) -> dict[str, Any]:
        """The learner in numbers: ``enabled``, ``trips`` learned from, learning ``steps``
        (publications with trips), the last step's seconds, ``tau_s``, and per router-ETA
        bucket the ``log_correction`` and its factor ``eta_correction``."""
        if self.learner is None:
            return {"enabled": False}
        with self._lock:
            lc = self._log_corr
            return {"enabled": True, "trips": int(self.learner.trips),
                    "steps": self._steps, "last_learn_s": self._learn_s,
                    "tau_s": self.learner.config.tau_s,
                    "log_correction": {n: float(v) for n, v in zip(BUCKET_NAMES, lc)},
                    "eta_correction": {n: math.exp(float(v)) for n, v in zip(BUCKET_NAMES, lc)}}
