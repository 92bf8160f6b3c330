"""Route, table and congestion queries of the service facade.

:class:`Queries` is a part of :class:`workers.services.Services` (a mixin): it answers on the
in-process router or on a router replica (retried on another when one dies), picks the
time-of-week profile's weights for departures beyond the profile horizon, and passes
congestion questions to :mod:`workers.congestion`. It reads the facade's ``router``,
``router_actors``, ``stages``, ``net``, ``prior`` and ``_congestion``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import polars as pl

from workers.router import RouterCore


class NotReady(RuntimeError):
    """The service has no routable network or weights yet."""


class Queries:
    """Query methods of :class:`workers.services.Services` (see the module docstring)."""

    # -- queries ------------------------------------------------------------------------
    def ready(self) -> bool:
        """Whether the service can answer route queries."""
        return self._ready and (self.router is not None or bool(self.router_actors))

    def inline_router(self) -> RouterCore | None:
        """The in-process router when live-weight routes may run on the caller's thread
        (``route`` with no departure is exactly ``router.route`` then); ``None`` when the
        routers are replicas elsewhere or none is loaded."""
        return self.router if self._ready else None

    def route(
        self, from_latlon: tuple[float, float], to_latlon: tuple[float, float], *,
        depart_at_s: float | None = None, max_snap_m: float = 200.0,
        profile_horizon_s: float = 900.0, steps: bool = False,
        exclude: tuple[str, ...] | list[str] = (), avoid: dict[str, Any] | None = None,
        **nav: Any,
    ) -> dict[str, Any]:
        """Route and ETA; live weights unless ``depart_at_s`` is beyond the horizon and a
        time-of-week profile exists (then ``basis`` is ``profile``). ``steps`` adds ``legs``
        with turn-by-turn steps (built by the router replica, :mod:`graph.steps`).
        ``exclude`` (tag classes) and ``avoid`` (GeoJSON polygon) close edges for this route
        only (:mod:`graph.avoid`, in the replica). ``nav``: ``via`` (points between),
        ``bearing``/``bearing_range``, ``alternatives``, ``annotations``, ``geometry_format``
        (:mod:`graph.navigation`, in the replica; only the ones given are passed)."""
        profile = self._profile_for(depart_at_s, profile_horizon_s)
        extra: dict[str, Any] = {"steps": True} if steps else {}
        extra.update(nav)
        if exclude:
            extra["exclude"] = tuple(exclude)
        if avoid is not None:
            extra["avoid"] = avoid
        if profile is None and depart_at_s is not None:
            extra["depart_at_s"] = depart_at_s  # the forecast ETA departs then (issue 14)
        return self._on_router("route", from_latlon, to_latlon, max_snap_m=max_snap_m,
                               profile=profile, **extra)

    def table(self, sources: list[tuple[float, float]],
              destinations: list[tuple[float, float]], *, max_snap_m: float = 200.0,
              depart_at_s: float | None = None,
              profile_horizon_s: float = 900.0,
              exclude: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
        """Duration matrix over the live weights, or the profile's as :meth:`route` decides;
        ``exclude`` as in :meth:`route`."""
        profile = self._profile_for(depart_at_s, profile_horizon_s)
        extra = {"exclude": tuple(exclude)} if exclude else {}
        return self._on_router("table", sources, destinations, max_snap_m=max_snap_m,
                               profile=profile, **extra)

    def _on_router(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run a query on the in-process router, or on the next replica; a replica that dies
        under it is skipped and the query retried on the others (queries are read-only)."""
        router = self.router
        if router is not None:
            return getattr(router, method)(*args, **kwargs)
        actors = self.router_actors
        if not actors:
            raise NotReady("the service is still loading its network")
        attempts = max(2, len(actors) + 1)
        for attempt in range(attempts):
            replica = actors[next(self._rr) % len(actors)]
            try:
                return self.stages.get(self.stages.call(replica, method, *args, **kwargs))
            except Exception as exc:
                if not self.stages.is_restart(exc) or attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def _profile_for(self, depart_at_s: float | None,
                     horizon_s: float) -> tuple[Any, np.ndarray] | None:
        """``(key, travel_time_s)`` of the learned profile for a departure beyond the horizon
        where its bin has data, else ``None``. The key names the network, the bin and the
        bin's revision, so a router re-customizes only after the profile learned more."""
        if depart_at_s is None or self.prior is None or depart_at_s - self.now_s() <= horizon_s:
            return None
        rev = self.estimator_call("profile_revision", depart_at_s)
        if rev is None:
            return None
        key = (self.net.version, int(rev[1]), int(rev[0]))
        cache = self._profile_tt
        tt = cache.get(key)
        if tt is None:
            tt = self.estimator_call("profile_travel_times", depart_at_s)
            if tt is None:
                return None
            while len(cache) >= 4:
                cache.pop(next(iter(cache)))
            cache[key] = tt
        return key, tt

    def isochrone(self, from_latlon: tuple[float, float], minutes: list[float], *,
                  reverse: bool = False, depart_at_s: float | None = None,
                  max_snap_m: float = 200.0, profile_horizon_s: float = 900.0) -> dict[str, Any]:
        """Reachable areas within each of ``minutes`` (GeoJSON), on the weights
        :meth:`route` would use for ``depart_at_s``."""
        profile = self._profile_for(depart_at_s, profile_horizon_s)
        extra = {"depart_at_s": depart_at_s} if profile is None and depart_at_s is not None else {}
        return self._on_router("isochrone", from_latlon, minutes, reverse=reverse,
                               max_snap_m=max_snap_m, profile=profile, **extra)

    def match(self, t: np.ndarray, lat: np.ndarray, lon: np.ndarray, *,
              speed_mps: np.ndarray | None = None, heading_deg: np.ndarray | None = None,
              accuracy_m: np.ndarray | None = None) -> tuple[Any, Any]:
        """Match one recorded trace offline (:class:`traffic.matching.OfflineMatcher`, full
        look-ahead); returns ``(TraceMatch, matcher)`` (the matcher gives geometry and keys).

        Runs here, in the facade's process, never in an ingest stage: it needs the network,
        a spatial index (the in-process router's, else the prepared one mapped from
        ``cache_dir``) and its own route-distance cache, none of them the ingest matchers'
        (so it cannot change what they match, nor wait on them), nor a router replica (route
        queries keep their latency). One matcher per network version, one trace at a time
        (its cache is not thread-safe). Feeds nothing to the estimator.
        """
        with self._match_lock():
            m = self._offline_matcher()
            return m.match(t, lat, lon, speed_mps=speed_mps, heading_deg=heading_deg,
                           accuracy_m=accuracy_m), m

    def nearest(self, lat: np.ndarray, lon: np.ndarray, *, number: int = 1,
                max_snap_m: float = 200.0) -> list[list[dict[str, Any]]]:
        """Per point, up to ``number`` nearest road positions (nearest first) within
        ``max_snap_m``: snapped ``lat``/``lon``, ``distance_m``, ``edge_key``, ``name``,
        ``osm_way_id`` and the OSM ids of the edge's end nodes (``nodes``); on the spatial
        index :meth:`match` uses."""
        from graph.spatial import candidates

        with self._match_lock():
            m = self._offline_matcher()
        net = m.net
        pi, ei, d, off = candidates(m.index, np.asarray(lat, np.float64),
                                    np.asarray(lon, np.float64), radius_m=max_snap_m, k=number)
        plat, plon = m.points_at(ei, off) if ei.size else (np.zeros(0), np.zeros(0))
        out: list[list[dict[str, Any]]] = [[] for _ in range(np.size(lat))]
        for i, e, dist, la, lo in zip(pi.tolist(), ei.tolist(), d.tolist(), plat.tolist(),
                                      plon.tolist()):
            out[i].append({"lat": la, "lon": lo, "distance_m": dist,
                           "edge_key": int(net.edge_key[e]), "name": net.edge_name_str(e),
                           "osm_way_id": int(net.edge_osm_way[e]),
                           "nodes": [int(net.node_osm_id[net.edge_src[e]]),
                                     int(net.node_osm_id[net.edge_dst[e]])]})
        return out

    def _match_lock(self) -> Any:
        import threading

        return self.__dict__.setdefault("_match_lock_", threading.Lock())

    def _offline_matcher(self) -> Any:
        """The facade's :class:`~traffic.matching.OfflineMatcher` for the serving network
        (made on first use and after a swap; call under :meth:`_match_lock`)."""
        from graph.route_distances import build_route_distances
        from traffic.matching import OfflineMatcher

        net = self.net
        m = self.__dict__.get("_offline_matcher_")
        if m is None or m.network_version != net.version:
            m = self._offline_matcher_ = OfflineMatcher(net, self.spatial_index(),
                                                        build_route_distances(net))
        return m

    def spatial_index(self) -> Any:
        """The serving network's spatial index in this process: the in-process router's,
        else the prepared one mapped from ``cache_dir`` (built there when absent)."""
        net = self.net
        index = getattr(getattr(self.router, "router", None), "spatial", None)
        if index is None or index.network_version != net.version:
            held = self.__dict__.get("_spatial_")
            if held is None or held.network_version != net.version:
                from graph.artifacts import spatial_index_for

                held = self._spatial_ = spatial_index_for(net, self.config.cache_dir)
            index = held
        return index

    def network_info(self) -> dict[str, Any]:
        """The serving network's identity and size."""
        net = self.net
        return {"version": net.version, "name": net.name, "n_nodes": net.n_nodes,
                "n_edges": net.n_edges, "bbox": net.bbox, "loaded_at": self.loaded_at}

    # -- congestion (analysts; see workers/congestion.py) --------------------------------
    def live_snapshot(self, edges: np.ndarray | None = None) -> tuple[float | None, pl.DataFrame]:
        """``(event time, per-edge table)`` of the estimator's live state (only the rows of
        the edge ids ``edges`` when given)."""
        if edges is None:
            return self.estimator_call("live_snapshot", timeout=30)
        return self.estimator_call("live_snapshot", np.asarray(edges, dtype=np.int64),
                                   timeout=30)

    def congestion(self, bbox: tuple[float, float, float, float], *, at_s: float | None = None,
                   road_class: list[str] | None = None, min_ratio: float | None = None,
                   max_ratio: float | None = None) -> Any:
        """Per-edge congestion in ``bbox``, live or at a snapshot (``CongestionAnswer``).

        While closures or slowdowns are in force, a live answer also has ``closed`` (bool)
        and ``override_factor`` (the travel time multiplier of a slowdown; null otherwise)
        per edge: the estimate stays what was learned, the override is shown beside it.
        """
        answer = self._congestion.congestion(self.net, bbox, live=self.live_snapshot,
                                             at_s=at_s, road_class=road_class,
                                             min_ratio=min_ratio, max_ratio=max_ratio,
                                             spatial=self.spatial_index())
        edges, factors = self.override_factors()
        if at_s is not None or edges.size == 0:
            return answer
        over = pl.DataFrame({"key": np.asarray(self.net.edge_key)[edges],
                             "_f": factors}).with_columns(pl.col("key").cast(
                                 answer.frame.schema["key"]))
        frame = answer.frame.join(over, on="key", how="left").with_columns(
            pl.col("_f").is_infinite().fill_null(False).alias("closed"),
            pl.when(pl.col("_f").is_finite()).then(pl.col("_f")).otherwise(None)
            .alias("override_factor")).drop("_f")
        return replace(answer, frame=frame)

    def edge_history(self, key: int, t_from: float | None = None,
                     t_to: float | None = None) -> pl.DataFrame:
        """One edge's stored snapshots over time (default: the last 6 h)."""
        return self._congestion.edge_history(key, t_from, t_to, now_s=self.now_s(),
                                             net=self.net)

    def aggregate(self, bbox: tuple[float, float, float, float], t_from: float | None = None,
                  t_to: float | None = None, *, interval_s: float = 300.0,
                  road_class: list[str] | None = None) -> pl.DataFrame:
        """Mean congestion ratio over ``bbox`` per interval of snapshot time."""
        return self._congestion.aggregate(self.net, bbox, t_from, t_to, interval_s=interval_s,
                                          now_s=self.now_s(), road_class=road_class,
                                          spatial=self.spatial_index())

    def snapshot_times(self, t_from: float | None = None, t_to: float | None = None) -> np.ndarray:
        """Stored snapshot times (unix s, ascending)."""
        return self._congestion.snapshot_times(t_from, t_to)
