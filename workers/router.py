"""The routing stage: a router replica over the newest published travel times.

:class:`RouterCore` owns a :class:`graph.router.Router`. :meth:`RouterCore.update` re-customizes
with a new travel-time vector; the router swaps the customized metric atomically, so a query
running meanwhile finishes on the previous weights and never waits for a customization.
``workers/pipeline.py`` runs replicas as threaded Ray actors or in the API process.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from graph.network import RoadNetwork


class RouterCore:
    """A routing replica: the network, its routing index, and the live and profile weights.

    Parameters
    ----------
    net
        The road network.
    index
        A prepared routing index for ``net`` (shared between replicas in one process);
        built when ``None``.
    cache_dir
        Where the router may cache its prepared index by network version.
    profile_cache
        How many profile-customized routers (one per time-of-week bin) to keep.
    """

    def __init__(
        self,
        net: RoadNetwork,
        *,
        index: Any = None,
        cache_dir: str | None = None,
        profile_cache: int = 4,
    ) -> None:
        from graph.router import Router

        self.net = net
        self._cache_dir = cache_dir
        self.router = Router(net, index=index, cache_dir=cache_dir, profile_cache=profile_cache)
        #: Publication number of the live weights (0: free-flow, before any publication).
        self.weights_version = 0
        self.weights_t: float | None = None
        self.updated_wall_s = time.time()
        self.customize_s = 0.0
        self._lock = threading.Lock()

    @property
    def index(self) -> Any:
        """The router's prepared index (to share with another replica of the same network)."""
        return getattr(self.router, "index", None)

    def update(self, version: int, weights_t: float | None, travel_time_s: Any) -> bool:
        """Customize with a newer travel-time vector; ignores versions not newer than ours.

        ``travel_time_s`` may be a NumPy array or a list holding one Ray object ref (a ref
        inside a list is not resolved by Ray on the call, so the replica fetches it here,
        once, from the object store). Returns whether the weights changed.
        """
        if int(version) <= self.weights_version and self.weights_version:
            return False
        tt = _resolve(travel_time_s)
        if tt.shape != (self.net.n_edges,):
            raise ValueError(
                f"`travel_time_s` must hold one value per edge ({self.net.n_edges}); got {tt.shape}")
        t0 = time.perf_counter()
        with self._lock:  # one customization at a time; queries do not take this lock
            if int(version) <= self.weights_version and self.weights_version:
                return False
            self.router.customize(tt, str(int(version)))
            self.weights_version, self.weights_t = int(version), weights_t
            self.updated_wall_s = time.time()
        self.customize_s = time.perf_counter() - t0
        return True

    def route(
        self,
        from_latlon: tuple[float, float],
        to_latlon: tuple[float, float],
        *,
        max_snap_m: float = 200.0,
        profile: tuple[Any, np.ndarray] | None = None,
        on_caller: bool = False, caller_queries: Any = None,
    ) -> dict[str, Any]:
        """Route between two points; the JSON-ready answer with versions and ``basis``.

        With ``profile=(key, travel_time_s)`` the route uses those (time-of-week) travel
        times, customized once per ``key`` and cached. ``on_caller``/``caller_queries``: run
        the search on the calling thread (see :meth:`graph.router.Router.route`).
        """
        basis, key = self._profile_key(profile)
        res = self.router.route(tuple(from_latlon), tuple(to_latlon), max_snap_m=max_snap_m,
                                profile=key, on_caller=on_caller, caller_queries=caller_queries)
        out = dict(res.to_json())
        out["weights_t"] = self.weights_t if basis == "live" else None
        out["basis"] = basis
        return out

    def _profile_key(self, profile: tuple[Any, np.ndarray] | None) -> tuple[str, Any]:
        """``(basis, router profile key)``; customizes the profile once per key."""
        if profile is None:
            return "live", None
        key = profile[0]
        if not self.router.has_profile(key):
            with self._lock:  # one customization at a time
                if not self.router.has_profile(key):
                    self.router.customize_profile(
                        key, np.asarray(profile[1], dtype=np.float64), f"profile:{key[-1]}")
        return "profile", key

    def table(
        self, sources: list[tuple[float, float]], destinations: list[tuple[float, float]],
        *, max_snap_m: float = 200.0, profile: tuple[Any, np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """Duration matrix (s; ``None`` where unreachable) between two point lists.

        ``profile`` as in :meth:`route`; ``basis`` says which weights answered.
        """
        basis, key = self._profile_key(profile)
        mat = self.router.table(np.asarray(sources, dtype=np.float64).reshape(-1, 2),
                                np.asarray(destinations, dtype=np.float64).reshape(-1, 2),
                                max_snap_m=max_snap_m, profile=key)
        cells = mat.astype(object)
        cells[~np.isfinite(mat)] = None
        rows = cells.tolist()
        return {"durations_s": rows, "network_version": self.net.version,
                "weights_version": self.router.weights_version,
                "weights_t": self.weights_t if basis == "live" else None, "basis": basis}

    def stats(self) -> dict[str, Any]:
        """Versions and the last customization's cost."""
        return {"weights_version": self.router.weights_version, "weights_t": self.weights_t,
                "network_version": self.net.version, "customize_s": self.customize_s,
                "updated_wall_s": self.updated_wall_s}


def _resolve(travel_time_s: Any) -> np.ndarray:
    if isinstance(travel_time_s, list) and len(travel_time_s) == 1 and not isinstance(
            travel_time_s[0], (int, float)):
        import ray

        travel_time_s = ray.get(travel_time_s[0])
    return np.asarray(travel_time_s, dtype=np.float64)
