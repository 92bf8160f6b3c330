"""The routing stage: a router replica over the newest published travel times.

:class:`RouterCore` owns a :class:`graph.router.Router`. :meth:`RouterCore.apply_publication`
takes the estimator's publications (``workers.estimator.Publication``): a full vector, or a
delta that applies only on the publication it was computed from; :meth:`RouterCore.update`
takes a bare vector. The router updates its idle metric and swaps it in atomically, so a query
running meanwhile finishes on the previous weights and never waits for a customization.
``workers/pipeline.py`` runs replicas as threaded Ray actors or in the API process.

A replica that missed a publication (restarted, or calls that overtook each other on a
threaded actor) cannot apply the next delta. So the facade hands every replica the chain
(:class:`PublicationChain`): the last full publication and every delta since, newest last, as
Ray object refs that a replica fetches only when it needs them; it catches up from there.

**The router's optimism.** A router picks the path whose estimate is lowest, so among paths
whose estimates err it prefers those that err low: its ETAs are biased low. Each replica
learns that bias online (:mod:`workers.router_bias`, over
:class:`traffic.route_bias.RouteBiasLearner`) from the completed
probe trips a publication carries (``Publication.trips``, collected by the ingest stages):
once the publication's weights serve, for each trip the ETA of the router's route between
the trip's junctions and that of the edges the probe drove between them, both forecast from
now (live sums without a forecast model), :mod:`traffic.route_bias`. The correction fades
with the forecast's persistence (``traffic.route_bias.correction_strength``).
Forecast answers (``basis`` ``forecast``: plain routes, navigation routes and each
alternative, and so the OSRM facade) multiply every per-edge forecast time by one factor
``exp(log_correction(forecast ETA))``, reported as ``eta_correction``, so all their
durations still sum one vector. Not corrected: answers on the static live or profile
weights, tables (one many-to-many search on one metric, documented as differing from a
route's ETA already) and isochrones (a reach on the per-edge forecast, no chosen route: its
contours stay the uncorrected forecast's; a route's ``eta_correction`` says by how much its
ETA exceeds that). The learner is the replica's only state beyond the weights
(:meth:`RouterCore.state_dict`): a network swap carries it to the new replicas; checkpoints
do not hold routers, so a restarted replica relearns it within about ``tau_s`` (30 min).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np

from graph.network import RoadNetwork
from traffic.route_bias import RouteBiasConfig
from workers.publication import PublicationChain  # noqa: F401  (its old home)
from workers.router_bias import RouterBias
from workers.router_overrides import RouterOverrides

#: The learner's settings a replica gets unless told otherwise (``PipelineConfig`` sets them).
DEFAULT_ROUTE_BIAS = RouteBiasConfig()


class RouterCore(RouterOverrides):
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
    route_bias
        How the router learns its optimism from completed probe trips (module docstring);
        ``None``: not learned, forecast answers get ``eta_correction`` 1.
    """

    #: Trips learned from per publication taken (each one route query; the newest kept).
    ROUTE_BIAS_MAX_TRIPS = 64
    #: A departure at least this far ahead (s) is routed on the forecast metric at its
    #: departure time (:meth:`_forecast_metric`); nearer ones on the live metric.
    FORECAST_ROUTE_AHEAD_S = 300.0
    #: Forecast metrics are made per this many seconds of departure horizon (and per full
    #: publication's model), and kept with the profile metrics (``profile_cache``).
    FORECAST_ROUTE_STEP_S = 300.0
    #: Networks with more edges route later departures on the live metric: a forecast metric
    #: is a full customization (5 s at K=6, 26 M edges) and 28 B per edge while cached, which
    #: the country-scale memory budget does not hold (New York, 730 k edges: ~0.1 s).
    FORECAST_ROUTE_MAX_EDGES = 5_000_000
    #: Version of :meth:`state_dict`'s contents.
    STATE_VERSION = 1

    def __init__(
        self,
        net: RoadNetwork,
        *,
        index: Any = None,
        cache_dir: str | None = None,
        profile_cache: int = 4,
        route_bias: RouteBiasConfig | None = DEFAULT_ROUTE_BIAS,
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
        self._geometry: Any = None  # graph.isochrone.EdgeGeometry, built on first use
        # Operator overrides (set_overrides) and the published times they apply on.
        self._base: np.ndarray | None = None
        self._ov_edges = np.zeros(0, dtype=np.int64)
        self._ov_factor = np.zeros(0)
        self._ov_revision = -1
        # Speed-feed blend (set_feed): routed = published * keep + add on the fed edges.
        self._fb_edges = np.zeros(0, dtype=np.int64)
        self._fb_keep = np.zeros(0)
        self._fb_add = np.zeros(0)
        self._fb_revision = -1
        self._key: tuple[int, float] | None = None  # the publication held (None: free-flow)
        #: The forecast and range model of the newest full publication taken (None: none).
        self._eta: Any = None
        #: How publications were taken: full, delta, caught_up (from the chain), stale
        #: (a delta not on our weights and no chain to catch up from), ignored (not newer).
        self.applied = {"full": 0, "delta": 0, "caught_up": 0, "stale": 0, "ignored": 0}
        #: Seconds from each taken publication's ``published_wall_s`` to its weights serving
        #: here (published -> serving freshness; the newest 1,024).
        self._serving_lag_s: deque[float] = deque(maxlen=1024)
        #: The learned optimism (workers.router_bias).
        self.bias = RouterBias(route_bias, max_trips=self.ROUTE_BIAS_MAX_TRIPS)

    @property
    def route_bias(self) -> Any:
        """The replica's ``traffic.route_bias.RouteBiasLearner`` (``None``: off)."""
        return self.bias.learner

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
            self._customize(tt, str(int(version)))
            self._took(int(version), weights_t, t0)
        return True

    def apply_publication(self, pubs: Any) -> str:
        """Take a publication; returns how: ``full``, ``delta``, ``caught_up``, ``stale``,
        ``ignored``.

        ``pubs`` is a ``Publication`` or a chain ``[full, delta, ..., newest]`` of them or of
        Ray object refs to them (:class:`PublicationChain`). The newest is taken when it is
        newer than the held weights (by ``(version, weights_t)``): a full one as is, a delta
        when it applies on exactly the held publication. Otherwise the replica catches up
        along the chain: the deltas after the publication it holds, merged into one update,
        or the full vector with every delta applied. A delta that cannot be placed is
        refused (``stale``): the weights stay as they were, exact for their version.
        """
        chain = list(pubs) if isinstance(pubs, (list, tuple)) else [pubs]
        newest = _resolve_pub(chain[-1])
        if newest.travel_time_s.shape[0] != self.net.n_edges and newest.full:
            raise ValueError(f"a full publication must hold one value per edge "
                             f"({self.net.n_edges}); got {newest.travel_time_s.shape}")
        t0 = time.perf_counter()
        taken: list[Any] = []  # the publications whose trips are learned from
        with self._lock:
            held = self._key
            if self._key is not None and newest.key <= self._key:
                how = "ignored"
            elif newest.full:
                self._customize(newest.travel_time_s, str(newest.version))
                how, taken = "full", [newest]
            elif self._key is not None and newest.base_key == self._key:
                self._update_edges(newest.edges, newest.travel_time_s, str(newest.version))
                how, taken = "delta", [newest]
            else:
                pubs = [_resolve_pub(r) for r in chain[:-1]] + [newest]
                how = self._catch_up(pubs)
                taken = [p for p in pubs if held is None or p.key > held]
            self.applied[how] += 1
            if how not in ("ignored", "stale"):
                self._took(newest.version, newest.weights_t, t0)
                if newest.published_wall_s > 0:
                    self._serving_lag_s.append(max(time.time() - newest.published_wall_s, 0.0))
                self._key = newest.key
                first = newest if newest.full else _resolve_pub(chain[0]) \
                    if how == "caught_up" else None
                if first is not None and first.full:
                    self._eta = self._with_freeflow(getattr(first, "eta", None))
        if how not in ("ignored", "stale"):
            self._learn_route_bias(taken, newest)
        return how

    def _learn_route_bias(self, pubs: list[Any], newest: Any) -> None:
        """Learn the router's optimism from the trips ``pubs`` carry, on the weights just
        taken: forecast ETAs departing now where the replica has a forecast model (those
        the correction multiplies), else live sums
        (:meth:`workers.router_bias.RouterBias.learn`)."""
        from traffic.route_bias import live_path_eta

        tt = self._travel_times(None)
        model = self._eta
        if tt is None:
            path_eta = None
        elif model is not None and model.n_edges == tt.shape[0]:
            def path_eta(edges: np.ndarray) -> float:
                e = np.asarray(edges, dtype=np.int64)
                return model.drive(e, tt[e])[0]
        else:
            path_eta = live_path_eta(tt)
        self.bias.learn(pubs, newest, network_version=self.net.version, path_eta_s=path_eta,
                        route_edges=lambda a, b: self.router.route_nodes(a, b).edge_ids)

    def eta_correction(self, duration_s: float) -> float:
        """The factor a forecast ETA of ``duration_s`` (s) is corrected by
        (:meth:`workers.router_bias.RouterBias.correction`), as strong as the forecast
        model's persistence allows (``traffic.route_bias.correction_strength``)."""
        from traffic.route_bias import correction_strength

        model = self._eta
        strength = 1.0 if model is None else correction_strength(model.persistence)
        return self.bias.correction(duration_s, strength)

    def state_dict(self) -> dict[str, Any]:
        """The replica's state beyond its weights (those come back with the next
        publication). Version 1: ``version``; ``route_bias.*``
        (``traffic.route_bias.RouteBiasLearner.state_dict``; absent when the learner is
        off). Checkpoints do not hold it (see the module docstring); a network swap hands it
        to the new replicas."""
        from workers.state import prefixed

        out: dict[str, Any] = {"version": self.STATE_VERSION}
        out.update(prefixed("route_bias", self.bias.state_dict()))
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (the learner's part is ignored when this
        replica's learner is off). ``ValueError`` naming both versions on another version."""
        from workers.state import unprefixed

        if state.get("version") != self.STATE_VERSION:
            raise ValueError(f"router state version {state.get('version')!r}; this code reads "
                             f"{self.STATE_VERSION}")
        self.bias.load_state_dict(unprefixed("route_bias", state))

    def _with_freeflow(self, eta: Any) -> Any:
        """The dense ETA model with this network's free-flow times (float32, computed once
        per router and shared by every model it takes): a ``CompactEtaModel`` (what full
        publications carry) is expanded, a dense one without free-flow times gets them."""
        from traffic.eta_model import with_freeflow

        if eta is None:
            return None
        ff = self.__dict__.get("_freeflow32")
        if ff is None:
            ff = self._freeflow32 = np.asarray(self.net.edge_freeflow_time_s, dtype=np.float32)
        return with_freeflow(eta, ff)

    def _catch_up(self, pubs: list[Any]) -> str:
        """Reach ``pubs[-1]`` along a chain ``[full, delta, ...]``; ``stale`` if it is broken."""
        if not pubs[0].full or any(b.base_key != a.key for a, b in zip(pubs, pubs[1:])):
            return "stale"
        held = [i for i, p in enumerate(pubs) if p.key == self._key]
        newest = pubs[-1]
        if held:  # we hold one of them: the deltas after it, merged (later values win)
            after = pubs[held[-1] + 1:]
            edges = np.concatenate([p.edges for p in after])
            vals = np.concatenate([p.travel_time_s for p in after])
            last = len(edges) - 1 - np.unique(edges[::-1], return_index=True)[1]
            self._update_edges(edges[last], vals[last], str(newest.version))
        else:
            vec = pubs[0].apply_to(None)
            for p in pubs[1:]:
                vec[p.edges] = p.travel_time_s
            self._customize(vec, str(newest.version))
        return "caught_up"

    def _took(self, version: int, weights_t: float | None, t0: float) -> None:
        self.weights_version, self.weights_t = int(version), weights_t
        self._key = (int(version), -np.inf if weights_t is None else float(weights_t))
        self.updated_wall_s = time.time()
        self.customize_s = time.perf_counter() - t0

    def route(
        self,
        from_latlon: tuple[float, float],
        to_latlon: tuple[float, float],
        *,
        max_snap_m: float = 200.0,
        profile: tuple[Any, np.ndarray] | None = None,
        on_caller: bool = False, caller_queries: Any = None, steps: bool = False,
        exclude: tuple[str, ...] | list[str] = (), avoid: dict[str, Any] | None = None,
        depart_at_s: float | None = None, **nav: Any,
    ) -> dict[str, Any]:
        """Route between two points; the JSON-ready answer with versions and ``basis``.

        On live weights with a forecast model (:meth:`apply_publication` keeps the newest
        full publication's), every route answer gets the time-dependent ETA: each edge at
        its forecast for when it is reached, departing at ``depart_at_s`` (default now; up
        to the model's ``profile_blend_s`` ahead), ``duration_p10_s``/``duration_p90_s`` and
        ``basis`` ``forecast`` (:class:`traffic.eta_model.EtaModel`). One vector of forecast
        per-edge driven times then gives every duration of the answer: the route's, its
        legs' (a via leg departs when the previous one arrives), steps' and annotations';
        each alternative is forecast on its own from the departure. So the same trip has the
        same ``duration_s`` plain, with steps, annotations, alternatives, an exclusion that
        does not change its path, and over the OSRM facade. Forecast answers are corrected
        for the router's learned optimism (module docstring): every per-edge time times
        ``eta_correction`` (1 until trips were learned from).

        With ``profile=(key, travel_time_s)`` the route uses those (time-of-week) travel
        times, customized once per ``key`` and cached. ``on_caller``/``caller_queries``: run
        the search on the calling thread (see :meth:`graph.router.Router.route`). With
        ``steps`` the answer has ``legs`` with turn-by-turn steps (:mod:`graph.steps`), built
        here in the replica, which holds the network's names. ``exclude`` (tag classes) and
        ``avoid`` (a GeoJSON Polygon or MultiPolygon) close edges for this request only
        (:mod:`graph.avoid`; the search then runs on the calling thread).
        """
        basis, key = self._profile_key(profile)
        # A later departure is routed on the forecast metric at its departure time.
        search = self._forecast_metric(depart_at_s) if basis == "live" else key
        if steps or nav:
            # Navigation options (via, bearing, alternatives, annotations, geometry_format):
            # graph.navigation, on the query threads; with closed edges on an avoid overlay.
            out = self._navigate([tuple(from_latlon), *nav.pop("via", ()), tuple(to_latlon)],
                                 key, max_snap_m=max_snap_m, steps=steps, exclude=exclude,
                                 avoid=avoid, depart_at_s=depart_at_s, search_key=search,
                                 **nav)
            for r in (out, *out.get("alternatives", ())):
                r["weights_t"] = self.weights_t if basis == "live" else None
                r.setdefault("basis", basis)
            return out
        if exclude or avoid is not None:
            res = self.avoid_router().route(tuple(from_latlon), tuple(to_latlon),
                                            exclude=exclude, avoid=avoid,
                                            max_snap_m=max_snap_m, profile=search)
        else:
            res = self.router.route(tuple(from_latlon), tuple(to_latlon), max_snap_m=max_snap_m,
                                    profile=search, on_caller=on_caller,
                                    caller_queries=caller_queries)
        out = dict(res.to_json())
        out["weights_t"] = self.weights_t if basis == "live" else None
        out["basis"] = basis
        if basis == "live":
            if search is not None:  # found on the forecast metric made from these weights
                out["weights_version"] = self.router.weights_version
            self._forecast(out, res, depart_at_s)
        return out

    def _forecast_metric(self, depart_at_s: float | None) -> Any:
        """The router profile key of the forecast metric a departure at ``depart_at_s`` is
        routed on, or ``None`` (route on the live metric): departures at least
        :attr:`FORECAST_ROUTE_AHEAD_S` ahead, within the forecast model's horizon, on networks
        of at most :attr:`FORECAST_ROUTE_MAX_EDGES` edges.

        The metric is every edge's forecast travel time at the departure horizon rounded to
        :attr:`FORECAST_ROUTE_STEP_S` (:meth:`traffic.eta_model.EtaModel.travel_times_at`,
        from the live times when first asked), customized once per (full publication's
        model, horizon step, closures' and feeds' revisions) and kept with the profile
        metrics; the ETA along the route found is still the time-dependent one (each edge at
        its arrival time)."""
        on = self._forecast_on(depart_at_s)
        if on is None or on[2] < self.FORECAST_ROUTE_AHEAD_S \
                or self.net.n_edges > self.FORECAST_ROUTE_MAX_EDGES:
            return None
        model, live, depart_in = on
        step = self.FORECAST_ROUTE_STEP_S
        horizon = round(depart_in / step) * step
        # Closures and feeds in force are in the live times: a new revision, a new metric.
        key = ("forecast", self.net.version, float(model.t_s), horizon, self._ov_revision,
               self._fb_revision)
        if not self.router.has_profile(key):
            tt = model.travel_times_at(live, horizon)
            self._profile_key((key, tt))
        return key

    def _forecast_on(self, depart_at_s: float | None) -> tuple[Any, np.ndarray, float] | None:
        """``(model, live travel_time_s, depart_in_s)`` when live answers use the forecast:
        a model for this network and a departure within its ``profile_blend_s`` (beyond that
        hour the live weights answer, as before); else ``None``."""
        model, tt = self._eta, self._travel_times(None)
        if model is None or tt is None or model.n_edges != tt.shape[0]:
            return None
        now = self.weights_t if self.weights_t is not None else model.t_s
        depart_in = 0.0 if depart_at_s is None else max(float(depart_at_s) - now, 0.0)
        if depart_in > model.forecast.profile_blend_s:
            return None
        return model, tt, depart_in

    def _forecast(self, out: dict[str, Any], res: Any, depart_at_s: float | None) -> None:
        """Put the forecast ETA and its range into a route's answer ``out`` (in place; the
        route of ``Router.route`` or ``AvoidRouter.route``); nothing without a model.

        The partial first and last edges count with their driven shares
        (:func:`graph.navigation.route_edge_shares`), as :func:`graph.navigation.forecast_legs`
        counts them, so a route with steps or other options gets the same figures. The
        figures are then corrected by :meth:`eta_correction` of the forecast ETA (reported
        as ``eta_correction``). O(route edges)."""
        on = self._forecast_on(depart_at_s)
        edges = res.edge_ids
        if on is None or edges.size == 0:
            return
        from graph.navigation import route_edge_shares

        model, tt, depart_in = on
        live = tt[edges]
        if not np.isfinite(live.sum()):
            return
        d, lo, hi, _ = model.route_eta(edges, live, depart_in_s=depart_in,
                                       share=route_edge_shares(self.router, res))
        f = self.eta_correction(d)
        out["duration_s"], out["duration_p10_s"], out["duration_p90_s"] = d * f, lo * f, hi * f
        out["eta_correction"] = f
        out["basis"] = "forecast"

    def _navigate(self, points: list[tuple[float, float]], key: Any, *, max_snap_m: float,
                  steps: bool, bearing: float | None = None, bearing_range: float | None = None,
                  alternatives: int = 0, annotations: bool = False,
                  geometry_format: str = "geojson", exclude: tuple[str, ...] | list[str] = (),
                  avoid: dict[str, Any] | None = None,
                  depart_at_s: float | None = None, search_key: Any = None) -> dict[str, Any]:
        """A route through ``points`` with legs, summaries and the asked-for extras
        (:func:`graph.navigation.plan_route` and :func:`graph.navigation.plan_answer`); with
        ``exclude``/``avoid`` on an avoid overlay (:meth:`graph.avoid.AvoidRouter.plan`).
        ``search_key``: the metric the paths are searched on (default ``key``; a later
        departure's forecast metric, :meth:`_forecast_metric`).

        On the live weights with a forecast model (:meth:`_forecast_on`) the legs are
        driven on the forecast (:func:`graph.navigation.forecast_legs`), and so is each
        alternative, from the departure: the route and each alternative get ``basis``
        ``forecast`` and ``duration_p10_s``/``duration_p90_s``, each corrected by the
        :meth:`eta_correction` of its own forecast ETA (every per-edge time scaled by it,
        :func:`graph.navigation.scale_legs`: legs, steps and annotations sum to it)."""
        from graph.navigation import (
            DEFAULT_BEARING_RANGE_DEG,
            Plan,
            forecast_legs,
            plan_answer,
            plan_route,
            scale_legs,
        )

        options = {"bearing_deg": bearing, "alternatives": alternatives,
                   "bearing_range_deg": DEFAULT_BEARING_RANGE_DEG if bearing_range is None
                   else bearing_range}
        search = key if search_key is None else search_key
        if exclude or avoid is not None:
            plan = self.avoid_router().plan(points, exclude=exclude, avoid=avoid,
                                            max_snap_m=max_snap_m, profile=search, **options)
        else:
            plan = plan_route(self.router, points, max_snap_m=max_snap_m, profile=search,
                              **options)
        tt = self._travel_times(key)
        on = self._forecast_on(depart_at_s) if key is None else None
        ranges: list[tuple[float, float, float, float]] = []

        def corrected(legs: list[Any], rng: tuple[float, float, float]) -> list[Any]:
            f = self.eta_correction(rng[0])
            ranges.append((rng[0] * f, rng[1] * f, rng[2] * f, f))
            return scale_legs(legs, f)

        if on is not None:
            model, live, depart_in = on
            legs = corrected(*forecast_legs(plan.legs, model, live, depart_in_s=depart_in))
            alts = []
            for lg in plan.alternatives:
                (alt,) = corrected(*forecast_legs([lg], model, live, depart_in_s=depart_in))
                alts.append(alt)
            plan = Plan(legs, alts, plan.weights_version)
        out = plan_answer(self.net, plan, steps=steps, annotations=annotations,
                          geometry_format=geometry_format, travel_time_s=tt,
                          observed=plan.weights_version != "freeflow")
        for r, (d, lo, hi, f) in zip((out, *out["alternatives"]), ranges):
            # The total as a plain route answers it (the legs' sum, to float rounding).
            r["duration_s"], r["duration_p10_s"], r["duration_p90_s"] = d, lo, hi
            r["eta_correction"] = f
            r["basis"] = "forecast"
            if search is not key:  # found on the forecast metric made from the live weights
                r["weights_version"] = self.router.weights_version
        if not alternatives:
            out.pop("alternatives")
        return out

    def avoid_router(self) -> Any:
        """The :class:`graph.avoid.AvoidRouter` over this replica's router (made on first use)."""
        avoid = self.__dict__.get("_avoid")
        if avoid is None:
            from graph.avoid import AvoidRouter

            with self._lock:
                avoid = self.__dict__.get("_avoid")
                if avoid is None:
                    avoid = self._avoid = AvoidRouter(self.router)
        return avoid

    def _travel_times(self, key: Any) -> np.ndarray | None:
        """The travel times (s per edge) of the metric routes on ``key`` use (None: live),
        to split a route's duration over its steps. Read without a lease: a swap in between
        only shifts the split (step durations still sum to the route's duration)."""
        try:
            return self.router.travel_times(key)
        except (AttributeError, KeyError):
            return None

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
        exclude: tuple[str, ...] | list[str] = (),
    ) -> dict[str, Any]:
        """Duration matrix (s; ``None`` where unreachable) between two point lists.

        ``profile`` as in :meth:`route`; ``basis`` says which weights answered: ``live`` or
        ``profile``, never ``forecast``. A table stays on the static weights even where
        routes get the forecast: its cells come from one many-to-many search over one metric,
        and a time-dependent cell would need a search (or a route) per cell. So a cell may
        differ from the ``duration_s`` of a route between the same points by the forecast's
        change (``basis`` says which). ``exclude`` as in :meth:`route`.
        """
        basis, key = self._profile_key(profile)
        on = self.avoid_router().table if exclude else self.router.table
        kw = {"exclude": exclude} if exclude else {}
        mat = on(np.asarray(sources, dtype=np.float64).reshape(-1, 2),
                 np.asarray(destinations, dtype=np.float64).reshape(-1, 2),
                 max_snap_m=max_snap_m, profile=key, **kw)
        cells = mat.astype(object)
        cells[~np.isfinite(mat)] = None
        rows = cells.tolist()
        return {"durations_s": rows, "network_version": self.net.version,
                "weights_version": self.router.weights_version,
                "weights_t": self.weights_t if basis == "live" else None, "basis": basis}

    def isochrone(self, from_latlon: tuple[float, float], minutes: list[float], *,
                  reverse: bool = False, max_snap_m: float = 200.0,
                  profile: tuple[Any, np.ndarray] | None = None,
                  depart_at_s: float | None = None) -> dict[str, Any]:
        """Reachable areas from (``reverse``: to) a point within each of ``minutes``, on the
        live weights or ``profile``'s: a GeoJSON FeatureCollection, one (Multi)Polygon per
        contour with ``minutes`` and ``area_km2`` (see :mod:`graph.isochrone`).

        On the live weights with a forecast model (as :meth:`route`) a forward isochrone is
        on the forecast, departing at ``depart_at_s`` (default now): each edge at its
        forecast for when it is reached, the per-edge times route ETAs sum, so a point
        inside the ``c``-minute contour is one a route reaches within ``c`` minutes
        (``basis`` ``forecast``). A ``reverse`` one stays on the live weights (``basis``
        ``live``): it fixes the arrival, not the departure, and a departure-time search
        would need one search per start point (:mod:`graph.isochrone`)."""
        import shapely

        from graph.errors import NoCandidateError
        from graph.isochrone import EdgeGeometry, isochrones
        from graph.spatial import candidates

        basis, key = self._profile_key(profile)
        tt = self._travel_times(key)
        if tt is None:
            tt = np.asarray(self.net.edge_length_m) / np.asarray(self.net.edge_freeflow_mps)
        lat, lon = float(from_latlon[0]), float(from_latlon[1])
        _, edge, dist, off = candidates(self.router.spatial, np.array([lat]), np.array([lon]),
                                        radius_m=max_snap_m, k=8)
        if edge.size == 0:
            raise NoCandidateError(f"no drivable road within {max_snap_m:g} m of `from` "
                                   f"(lat={lat:.6f}, lon={lon:.6f})")
        near = dist <= dist[0] + 1.0  # the nearest road, both directions where two-way
        if self._geometry is None:
            self._geometry = EdgeGeometry(self.net)
        on = self._forecast_on(depart_at_s) if key is None and not reverse else None
        fc: dict[str, Any] = {}
        if on is not None:
            tt, basis = on[1], "forecast"
            fc = {"forecast": on[0], "depart_in_s": on[2]}
        contours = isochrones(self.net, tt, edge[near], off[near], minutes, reverse=reverse,
                              geometry=self._geometry, **fc)
        return {"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": shapely.geometry.mapping(c.polygon),
             "properties": {"minutes": c.minutes, "area_km2": round(c.area_km2, 4)}}
            for c in contours],
            "network_version": self.net.version, "weights_version": self.weights_version,
            "weights_t": self.weights_t if basis != "profile" else None, "basis": basis,
            "reverse": bool(reverse)}

    def stats(self) -> dict[str, Any]:
        """Versions, the last customization's cost and how publications were taken."""
        return {"weights_version": self.router.weights_version, "weights_t": self.weights_t,
                "network_version": self.net.version, "customize_s": self.customize_s,
                "updated_wall_s": self.updated_wall_s,
                "publications": dict(self.applied),
                "last_update": dict(getattr(self.router, "last_update", {})),
                "metric_fallbacks": int(getattr(self.router, "fallbacks", 0)),
                "route_bias": self.bias.stats(),
                **_percentiles("serving_lag", self._serving_lag_s)}


def _percentiles(name: str, values: Any) -> dict[str, float | None]:
    """``{name}_p50_s`` and ``{name}_p99_s`` of ``values`` (None when there are none)."""
    a = np.asarray(values, dtype=np.float64)
    return {f"{name}_p50_s": float(np.percentile(a, 50)) if a.size else None,
            f"{name}_p99_s": float(np.percentile(a, 99)) if a.size else None}


def _resolve_pub(item: Any) -> Any:
    """A publication, fetched from Ray's object store when ``item`` is a ref to one."""
    if hasattr(item, "travel_time_s"):
        return item
    import ray

    return ray.get(item)


def _resolve(travel_time_s: Any) -> np.ndarray:
    if isinstance(travel_time_s, list) and len(travel_time_s) == 1 and not isinstance(
            travel_time_s[0], (int, float)):
        import ray

        travel_time_s = ray.get(travel_time_s[0])
    return np.asarray(travel_time_s, dtype=np.float64)
