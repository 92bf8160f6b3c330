"""What the API calls: the service facade over the pipeline's stages.

:class:`Services` is the one facade: the serving network, the clock, probe ingest (queue
bounds, the probe log, partitioning, accounting), publication to the routers, route and
table queries, congestion queries, status, network swaps and housekeeping. It drives its
stages through a runner (:mod:`workers.stages`): :class:`LocalServices` runs them as plain
objects in this process (tests, a single-process server), :class:`workers.pipeline.RayPipeline`
as Ray actors. The two differ only in the runner. Checkpoints and recovery are in
:mod:`workers.checkpointing`, written once over the stages' ``state_dict`` interface.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from graph.network import RoadNetwork
from workers.config import PipelineConfig, load_profile, profile_path
from workers.estimator import Publication
from workers.ingest import partition_of
from workers.network_jobs import NetworkJob, NetworkJobs, UnknownJob
from workers.router import RouterCore
from workers.stages import LocalStages
from workers.status import merge_status

__all__ = ["Services", "LocalServices", "PipelineConfig", "Overloaded", "NotReady",
           "UnknownJob", "NetworkJob", "load_profile", "profile_path"]

logger = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """Ingest queues are full; the batch was not taken. ``retry_after_s`` says when to retry."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(RuntimeError):
    """The service has no routable network or weights yet."""


class Services:
    """The service facade (see the module docstring).

    Parameters
    ----------
    net
        The road network to serve.
    config
        Pipeline settings (partitions, refresh, queue bounds, replicas, durability).
    stages
        The runner: :class:`workers.stages.LocalStages` or :class:`workers.stages.RayStages`.
    prior
        A ``traffic.profiles.TimeOfWeekProfile`` for the estimator and future departures.
    """

    def __init__(self, net: RoadNetwork, config: PipelineConfig, *, stages: Any,
                 prior: Any = None) -> None:
        from workers.congestion import congestion_queries

        self.config, self.net, self.prior, self.stages = config, net, prior, stages
        self.loaded_at = time.time()
        self._ready = self._closed = False
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self._watermark: float | None = None
        self._profile_tt: dict[Any, np.ndarray] = {}  # profile weights by key (4 newest)
        self._congestion = congestion_queries(config)
        self._draining = False  # set by begin_shutdown: new writes get 503
        self._cv = threading.Condition()
        self._inflight = [0] * config.n_ingest
        self._swapping = False
        self._paused = False  # a quiet point: ticks wait (see quiet())
        self._tick_refs: dict[int, Any] = {}
        # One tick at a time: the housekeeping thread and a caller's tick would otherwise both
        # see a restarted estimator and restore it twice, or publish out of order.
        self._tick_lock = threading.Lock()
        self._rr = itertools.count()
        self.jobs = NetworkJobs(prepare=self._prepare, swap=self._swap,
                                current_version=lambda: self.net.version,
                                upload_timeout_s=config.upload_timeout_s,
                                cache_dir=config.cache_dir, data_dir=config.data_dir)
        self.durability: Any = None
        if config.durability is not None:
            from workers.durability import Durability

            self.durability = Durability(config.durability)
        # Held for the service's life: restarted actors re-read their arguments from it.
        self._net_ref = stages.share(net)
        self.estimator, self.estimator_on_gpu = stages.start_estimator(
            self._net_ref, config.estimator_service(), prior=prior, use_gpu=config.use_gpu)
        self.ingest_stages = stages.start_ingest(
            self._net_ref, config.ingest_config(), config.n_ingest, self.estimator,
            max_fold_inflight=config.max_fold_inflight)
        self.router_actors = stages.start_routers(self._net_ref, config.router_replicas,
                                                  cache_dir=config.cache_dir)
        self.router: RouterCore | None = (None if self.router_actors
                                          else RouterCore(net, cache_dir=config.cache_dir))
        stages.get([stages.call(a, "stats") for a in self.ingest_stages])  # all started
        self.boot: str | None = None
        self.estimator_restores = 0
        if self.durability is not None:
            from workers.checkpointing import recover

            recover(self)
        self._publish(self.estimator_call("publish"), wait=True)
        self._ready = True

    @property
    def ingest_actors(self) -> list[Any]:
        """The ingest stages' handles (cores in process, actors on Ray)."""
        return self.ingest_stages

    # -- clock --------------------------------------------------------------------------
    def now_s(self, batch_max_t: float | None = None) -> float:
        """The service clock: wall time, or in event mode the newest probe time seen."""
        if self.config.clock == "wall":
            return time.time()
        cands = [x for x in (self._watermark, batch_max_t) if x is not None and np.isfinite(x)]
        return max(cands) if cands else time.time()

    def watermark_t(self) -> float | None:
        """Event time of the newest accepted probe (``None`` before any)."""
        return self._watermark

    def set_watermark(self, watermark_t: float | None) -> None:
        """Restore the newest accepted probe time (recovery)."""
        self._watermark = watermark_t

    def _note_accepted(self, probes: pl.DataFrame, rejected: list[tuple[int, str]]) -> None:
        """Advance the watermark to the newest accepted probe of a batch."""
        if probes.height == len(rejected):
            return
        keep = np.ones(probes.height, dtype=bool)
        keep[[r for r, _ in rejected]] = False
        t = probes["t"].cast(pl.Float64, strict=False).to_numpy()[keep]
        t = t[np.isfinite(t)]
        if t.size:
            tmax = float(t.max())
            if self._watermark is None or tmax > self._watermark:
                self._watermark = tmax

    # -- stage calls --------------------------------------------------------------------
    def estimator_call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        """Call an ``EstimatorCore`` method and wait for its result."""
        return self.stages.get(self.stages.call(self.estimator, name, *args), timeout=timeout)

    def ingest_call_all(self, name: str, *args: Any) -> list[Any]:
        """Call a method on every ingest stage and wait for the results, in partition order."""
        s = self.stages
        return s.get([s.call(a, name, *args) for a in self.ingest_stages])

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """A quiet point: no ingest call and no idle-flush tick in flight, none started
        until the block ends (checkpoints and restores read the stages' state in it).

        The caller holds the durability order lock, which keeps new batches out.
        """
        with self._cv:
            while sum(self._inflight):
                self._cv.wait()
            self._paused = True
            ticks = list(self._tick_refs.values())
        try:
            for ref in ticks:
                try:
                    self.stages.get(ref)
                except Exception:  # a tick on a restarting stage: nothing to wait for
                    logger.debug("an idle-flush tick failed", exc_info=True)
            yield
        finally:
            with self._cv:
                self._paused = False

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
        profile_horizon_s: float = 900.0,
    ) -> dict[str, Any]:
        """Route and ETA; live weights unless ``depart_at_s`` is beyond the horizon and a
        time-of-week profile exists (then ``basis`` is ``profile``)."""
        profile = self._profile_for(depart_at_s, profile_horizon_s)
        return self._on_router("route", from_latlon, to_latlon, max_snap_m=max_snap_m,
                               profile=profile)

    def table(self, sources: list[tuple[float, float]],
              destinations: list[tuple[float, float]], *, max_snap_m: float = 200.0,
              depart_at_s: float | None = None,
              profile_horizon_s: float = 900.0) -> dict[str, Any]:
        """Duration matrix over the live weights, or the profile's as :meth:`route` decides."""
        profile = self._profile_for(depart_at_s, profile_horizon_s)
        return self._on_router("table", sources, destinations, max_snap_m=max_snap_m,
                               profile=profile)

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

    def network_info(self) -> dict[str, Any]:
        """The serving network's identity and size."""
        net = self.net
        return {"version": net.version, "name": net.name, "n_nodes": net.n_nodes,
                "n_edges": net.n_edges, "bbox": net.bbox, "loaded_at": self.loaded_at}

    # -- congestion (analysts; see workers/congestion.py) --------------------------------
    def live_snapshot(self) -> tuple[float | None, pl.DataFrame]:
        """``(event time, per-edge table)`` of the estimator's live state."""
        return self.estimator_call("live_snapshot", timeout=30)

    def congestion(self, bbox: tuple[float, float, float, float], *, at_s: float | None = None,
                   road_class: list[str] | None = None, min_ratio: float | None = None,
                   max_ratio: float | None = None) -> Any:
        """Per-edge congestion in ``bbox``, live or at a snapshot (``CongestionAnswer``)."""
        return self._congestion.congestion(self.net, bbox, live=self.live_snapshot, at_s=at_s,
                                           road_class=road_class, min_ratio=min_ratio,
                                           max_ratio=max_ratio)

    def edge_history(self, key: int, t_from: float | None = None,
                     t_to: float | None = None) -> pl.DataFrame:
        """One edge's stored snapshots over time (default: the last 6 h)."""
        return self._congestion.edge_history(key, t_from, t_to, now_s=self.now_s())

    def aggregate(self, bbox: tuple[float, float, float, float], t_from: float | None = None,
                  t_to: float | None = None, *, interval_s: float = 300.0,
                  road_class: list[str] | None = None) -> pl.DataFrame:
        """Mean congestion ratio over ``bbox`` per interval of snapshot time."""
        return self._congestion.aggregate(self.net, bbox, t_from, t_to, interval_s=interval_s,
                                          now_s=self.now_s(), road_class=road_class)

    def snapshot_times(self, t_from: float | None = None, t_to: float | None = None) -> np.ndarray:
        """Stored snapshot times (unix s, ascending)."""
        return self._congestion.snapshot_times(t_from, t_to)

    # -- ingest -------------------------------------------------------------------------
    def ingest(self, probes: pl.DataFrame) -> tuple[int, list[tuple[int, str]]]:
        """Validate and queue a probe batch; returns ``(accepted, [(row, reason), ...])``.

        With durability the batch is logged (fsync'd) before any stage sees it. Raises
        :class:`Overloaded` (nothing taken) when the batch's partitions are at their queue
        bound, the service is shutting down, or a worker is restarting.
        """
        from workers.checkpointing import checkpoint

        accepted_wall = time.time()
        self._refuse_if_draining()
        stages = self.stages
        order = (self.durability.order_lock if self.durability is not None
                 else contextlib.nullcontext())
        with order:  # log append and hand-off in one order, so partitions see log order
            now = self.now_s(self._batch_max_t(probes))
            if self.durability is not None and self.durability.checkpoint_due(now):
                try:
                    checkpoint(self, now)
                except Exception as exc:
                    if not stages.is_restart(exc):
                        raise
                    raise Overloaded(f"a worker is restarting ({exc.__class__.__name__}); "
                                     f"retry", retry_after_s=self.config.retry_after_s) from exc
            parts = self._reserve(self._split(probes))
            try:
                if self.durability is not None and probes.height:
                    probes = self._log_batch(probes, now)  # fsync'd before any matcher sees it
                    # Partitions by pseudonym: the same vehicles stay together, but a group's
                    # partition number can change, so move the in-flight counts with them.
                    new_parts = self._split(probes)
                    with self._cv:
                        for p, _, _ in parts:
                            self._inflight[p] -= 1
                        for p, _, _ in new_parts:
                            self._inflight[p] += 1
                        self._cv.notify_all()
                    parts = new_parts
                futures = [stages.call(self.ingest_stages[p], "ingest", part, now_s=now,
                                       accepted_wall_s=accepted_wall) for p, part, _ in parts]
            except BaseException:
                self._release(parts)
                raise
        try:
            replies = stages.get(futures)
        except Exception as exc:
            if not stages.is_restart(exc):
                raise  # a bug in the worker, not a restart
            # Logged already (when durable): the restore after the restart replays it.
            raise Overloaded(f"an ingest worker is restarting ({exc.__class__.__name__}); "
                             f"retry", retry_after_s=self.config.retry_after_s) from exc
        finally:
            self._release(parts)
        accepted, rejected = 0, []
        for (_, _, rows), reply in zip(parts, replies, strict=True):
            accepted += reply.accepted
            rejected += [(int(rows[r]), why) for r, why in reply.rejected]
        rejected.sort()
        self._note_accepted(probes, rejected)
        if stages.inline_publish:
            self._publish(self.estimator_call("maybe_publish"))
        return accepted, rejected

    def replay_batch(self, probes: pl.DataFrame, now_s: float) -> list[Any]:
        """Start one logged batch through the ingest stages (recovery); returns futures."""
        return [self.stages.call(self.ingest_stages[p], "ingest", part, now_s=now_s)
                for p, part, _ in self._split(probes)]

    def _reserve(self, parts: list[tuple[int, pl.DataFrame, np.ndarray]]) -> list[Any]:
        """Take a queue place in each part's partition, or raise :class:`Overloaded`."""
        bound = self.config.max_inflight_per_partition
        with self._cv:
            while self._swapping:
                self._cv.wait()
            full = [p for p, _, _ in parts if self._inflight[p] >= bound]
            if full:
                raise Overloaded(f"ingest partition(s) {full} are at their queue bound "
                                 f"({bound} batches); retry",
                                 retry_after_s=self.config.retry_after_s)
            for p, _, _ in parts:
                self._inflight[p] += 1
        return parts

    def _release(self, parts: list[tuple[int, Any, Any]]) -> None:
        with self._cv:
            for p, _, _ in parts:
                self._inflight[p] -= 1
            self._cv.notify_all()

    def _split(self, probes: pl.DataFrame) -> list[tuple[int, pl.DataFrame, np.ndarray]]:
        """Split a batch by partition; each part keeps its rows' positions in ``probes``."""
        n = self.config.n_ingest
        if n == 1 or probes.height == 0 or "vehicle_id" not in probes.columns:
            return [(0, probes, np.arange(probes.height))]
        part = partition_of(probes["vehicle_id"].cast(pl.Utf8), n)
        out = []
        for p in np.unique(part).tolist():
            rows = np.flatnonzero(part == p)
            out.append((int(p), probes[rows], rows))
        return out

    def _refuse_if_draining(self) -> None:
        if self._draining:
            raise Overloaded("the service is shutting down; send this batch again to its "
                             "successor", retry_after_s=self.config.retry_after_s)

    def _log_batch(self, probes: pl.DataFrame, now_s: float) -> pl.DataFrame:
        """Append the batch to the probe log (fsync'd); return it as the stages see it."""
        logged = self.durability.prepare(probes, now_s)
        self.durability.append(logged)
        return self.durability.split_logged(logged)[0]

    @staticmethod
    def _batch_max_t(probes: pl.DataFrame) -> float | None:
        if "t" not in probes.columns or probes.height == 0:
            return None
        t = probes["t"].cast(pl.Float64, strict=False)
        t = t.filter(t.is_finite())
        return None if t.len() == 0 else float(t.max())  # type: ignore[arg-type]

    def begin_shutdown(self) -> None:
        """Stop taking probe batches (503) and take a final checkpoint (or flush)."""
        self._draining = True
        if self.durability is not None:
            self.checkpoint_now()
        else:
            self.flush()
        if self.prior is not None:
            self.estimator_call("save_profile")

    def checkpoint_now(self) -> None:
        """Save a checkpoint now (matchers keep their pending points)."""
        from workers.checkpointing import checkpoint

        with self.durability.order_lock:
            checkpoint(self, None)

    # -- publication and housekeeping ---------------------------------------------------
    def _publish(self, pub: Publication | None, *, wait: bool = False) -> None:
        """Hand a publication to the routers (stale network versions are dropped)."""
        if pub is None or pub.network_version != self.net.version:
            return
        if self.router is not None:
            self.router.update(pub.version, pub.weights_t, pub.travel_time_s)
        if self.router_actors:
            s = self.stages
            weights = s.router_weights(s.share(pub.travel_time_s))
            futures = [s.call(r, "update", pub.version, pub.weights_t, weights)
                       for r in self.router_actors]
            if wait:
                s.get(futures)

    def start(self) -> None:
        """Run :meth:`tick` every ``tick_s`` wall seconds in a background thread."""
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick_loop, name="pipeline-ticker",
                                            daemon=True)
            self._ticker.start()

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.config.tick_s):
            try:
                self.tick()
            except Exception:  # keep ticking; the next pass retries
                logger.exception("pipeline tick failed")

    def tick(self) -> None:
        """Flush idle vehicles and publish new travel times when due; restore a restarted
        estimator from the checkpoint and the log."""
        from workers.checkpointing import restore_if_restarted

        with self._tick_lock:
            if self.durability is not None and restore_if_restarted(self):
                self._publish(self.estimator_call("publish"))
            now, s = self.now_s(), self.stages
            with self._cv:  # not while a quiet point reads the stages' state
                for p, stage in enumerate(self.ingest_stages):
                    prev = self._tick_refs.get(p)
                    if self._paused or (prev is not None and not s.done(prev)):
                        continue
                    if self._inflight[p] == 0:
                        self._tick_refs[p] = s.call(stage, "tick", now)
            self._publish(self.estimator_call("maybe_publish"))

    def flush(self) -> None:
        """Decide every held probe now (end of a replay) and publish."""
        self.ingest_call_all("flush")
        self.ingest_call_all("drain")
        self._publish(self.estimator_call("publish"), wait=True)

    def drain(self, *, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait until no ingest call or fold is in flight; returns the status then."""
        deadline = time.time() + timeout_s
        while True:
            st = self.status()
            if st["queues"]["ingest_inflight"] == 0 and st["queues"]["fold_inflight"] == 0:
                return st
            if time.time() > deadline:
                raise TimeoutError(f"queues did not drain in {timeout_s} s: {st['queues']}")
            time.sleep(0.05)

    # -- status -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Accounting and freshness (see ``GET /v1/status``)."""
        s = self.stages
        parts = s.get([s.call(a, "stats") for a in self.ingest_stages], timeout=30)
        est = self.estimator_call("stats", timeout=30)
        router = (self.router.stats() if self.router is not None
                  else s.get(s.call(self.router_actors[0], "stats"), timeout=30))
        if self.durability is not None:
            est = {**est, "durability": self.durability.stats()}
        return merge_status(parts, est, router, clock=self.config.clock,
                            network_version=self.net.version, mode=s.kind,
                            ingest_inflight=int(sum(self._inflight)),
                            router_replicas=len(self.router_actors),
                            estimator_on_gpu=self.estimator_on_gpu)

    def placement(self) -> dict[str, list[str]]:
        """Node id of every stage, by role (to check that a cluster spreads them)."""
        s = self.stages
        return {"ingest": s.placement(self.ingest_stages),
                "estimator": s.placement([self.estimator]),
                "router": s.placement(self.router_actors)}

    # -- network jobs and swaps ---------------------------------------------------------
    def upload_dir(self) -> str:
        """Directory for network uploads in progress."""
        return self.jobs.upload_dir()

    def submit_network(self, path: str | Path) -> NetworkJob:
        """Start importing ``path`` in the background; the job swaps it in when ready."""
        return self.jobs.submit(path)

    def job(self, job_id: str) -> NetworkJob:
        """The job with this id; raises :class:`UnknownJob`."""
        return self.jobs.get(job_id)

    def _prepare(self, net: RoadNetwork) -> Any:
        """Build the routers for ``net`` while the old network keeps serving."""
        if self.router_actors:
            actors = self.stages.start_routers(self.stages.share(net), len(self.router_actors),
                                               cache_dir=self.config.cache_dir)
            self.stages.get([self.stages.call(a, "stats") for a in actors])
            return actors
        return RouterCore(net, cache_dir=self.config.cache_dir)

    def _swap(self, net: RoadNetwork, prepared: Any) -> int:
        """Swap ``net`` in: ingest matches on it, the estimator carries state over by edge
        key, the prepared routers take the first publication; returns edges carried."""
        with self._cv:
            self._swapping = True
            while sum(self._inflight):
                self._cv.wait()
        try:
            s = self.stages
            net_ref = self._net_ref = s.share(net)
            s.swap_network(self.ingest_stages, net_ref)
            carried = self.estimator_call("remap_to", net_ref)
            pub = self.estimator_call("publish")
            if isinstance(prepared, list):
                weights = s.router_weights(s.share(pub.travel_time_s))
                s.get([s.call(r, "update", pub.version, pub.weights_t, weights)
                       for r in prepared])
                # The old replicas finish their queued queries, then go when their handles do.
                self.router_actors = prepared
            else:
                prepared.update(pub.version, pub.weights_t, pub.travel_time_s)
                # The replaced router stops its query threads when its last query ends.
                self.router = prepared
            self.net, self.loaded_at = net, time.time()
        finally:
            with self._cv:
                self._swapping = False
                self._cv.notify_all()
        return int(carried)

    def close(self) -> None:
        """Stop background work and the stages."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        self._closed = True
        if self.durability is not None:
            self.durability.close()
        self.stages.close([*self.ingest_stages, self.estimator, *self.router_actors])


class LocalServices(Services):
    """Every stage as a plain object in this process (:class:`workers.stages.LocalStages`).

    Good for tests and a small single-process server. Ingest runs synchronously, so its
    queues are empty when a call returns and the accounting holds exactly.
    """

    def __init__(self, net: RoadNetwork, config: PipelineConfig | None = None, *,
                 prior: Any = None) -> None:
        super().__init__(net, config or PipelineConfig(), stages=LocalStages(), prior=prior)
