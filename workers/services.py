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
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from graph.network import RoadNetwork
from workers.config import PipelineConfig, load_profile, profile_path
from workers.publication import Publication, PublicationChain, TripBuffer
from workers.closure_ops import ClosureOps, UnknownClosure
from workers.feed_ops import FeedOps
from workers.intake import Intake, Overloaded
from workers.network_jobs import NetworkJob, NetworkJobs, UnknownJob
from workers.queries import NotReady, Queries
from workers.router import RouterCore
from workers.stages import FoldQueue, LocalStages
from workers.status import merge_status

__all__ = ["Services", "LocalServices", "PipelineConfig", "Overloaded", "NotReady",
           "UnknownClosure", "UnknownJob", "NetworkJob", "load_profile", "profile_path"]

logger = logging.getLogger(__name__)


class Services(Intake, Queries, ClosureOps, FeedOps):
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
        # (network version, what the routers were sent since the last full publication)
        self._pub_chain: tuple[str, PublicationChain] = (net.version, PublicationChain())
        # Probe trips the ingest replies closed since the last publication (route bias).
        self._trips = TripBuffer(config.route_trips_max())
        self._congestion = congestion_queries(config)
        self._draining = False  # set by begin_shutdown: new writes get 503
        self._cv = threading.Condition()
        self._inflight = [0] * config.n_ingest
        self._swapping = False
        self._paused = False  # a quiet point: ticks wait (see quiet())
        self._tick_refs: dict[int, Any] = {}
        self._ticks_folding = 0  # tick replies taken off _tick_refs, not yet handed on
        # Ingest calls hand their batches to the estimator in the order they took the log
        # (tickets), so the fold order is the log order: recovery replays exactly it.
        self._turn = threading.Condition()
        self._next_ticket = self._serving = 0
        # One tick at a time: the housekeeping thread and a caller's tick would otherwise both
        # see a restarted estimator and restore it twice, or publish out of order.
        self._tick_lock = threading.Lock()
        self._rr = itertools.count()
        self.jobs = NetworkJobs(prepare=self._prepare, swap=self._swap,
                                current_version=lambda: self.net.version,
                                upload_timeout_s=config.upload_timeout_s,
                                cache_dir=config.cache_dir, data_dir=config.data_dir,
                                by_path=lambda: getattr(self.net, "source", None) is not None)
        self.durability: Any = None
        self._order_lock: Any = threading.Lock()
        if config.durability is not None:
            from workers.durability import Durability

            self.durability = Durability(config.durability)
            self._order_lock = self.durability.order_lock
        # Held for the service's life: restarted actors re-read their arguments from it.
        self._net_ref = stages.share(net)
        #: With ``estimator_shards > 1``: the sharded estimator (``workers.shards``), which
        #: then also stands as ``estimator`` (its calls fan out to the shards and merge).
        self.shards: Any = None
        if config.estimator_shards > 1:
            from workers.sharded_estimator import ShardedEstimator

            self.shards, self.estimator_on_gpu = ShardedEstimator.start(
                stages, net, config.estimator_service(), n_shards=config.estimator_shards,
                prior=prior, data_dir=config.data_dir, use_gpu=config.use_gpu)
            self.estimator = self.shards
        else:
            self.estimator, self.estimator_on_gpu = stages.start_estimator(
                self._net_ref, config.estimator_service(), prior=prior, use_gpu=config.use_gpu)
        self.ingest_stages = stages.start_ingest(self._net_ref, config.ingest_config(),
                                                 config.n_ingest)
        self.folds = FoldQueue(stages, self.estimator, max_inflight=config.max_fold_inflight,
                               shards=self.shards)
        self.router_actors = stages.start_routers(self._net_ref, config.router_replicas,
                                                  cache_dir=config.cache_dir,
                                                  route_bias=config.route_bias_config())
        self.router: RouterCore | None = (None if self.router_actors else RouterCore(
            net, cache_dir=config.cache_dir, route_bias=config.route_bias_config()))
        stages.get([stages.call(a, "stats") for a in self.ingest_stages])  # all started
        self.boot: str | None = None
        self.estimator_restores = 0
        self._new_closures()
        self._new_feeds()
        overlays: dict[str, Any] = {}
        if self.durability is not None:
            from workers.checkpointing import recover

            overlays = recover(self)
            if self.shards is not None and self.shards.journal.base is None:
                # A shard restores from its part of a checkpoint and the fold journal after
                # it: take one now when there is none yet (it changes nothing computed).
                from workers.checkpointing import checkpoint

                checkpoint(self, None)
        self._publish(self.estimator_call("publish"), wait=True)
        self._load_closures(overlays.get("closures"))
        self.push_overrides(wait=True)
        self._load_feeds(overlays.get("feeds"))
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
        """Call an ``EstimatorCore`` method and wait for its result (sharded: the
        ``ShardedEstimator`` method, which fans out to the shards and merges)."""
        if self.shards is not None:
            return getattr(self.shards, name)(*args)
        return self.stages.get(self.stages.call(self.estimator, name, *args), timeout=timeout)

    def estimator_handles(self) -> list[Any]:
        """The estimator stages: the one estimator, or every shard."""
        return [self.estimator] if self.shards is None else list(self.shards.handles)

    def ingest_call_all(self, name: str, *args: Any) -> list[Any]:
        """Call a method on every ingest stage and wait for the results, in partition order."""
        s = self.stages
        return s.get([s.call(a, name, *args) for a in self.ingest_stages])

    def fold_replies(self, replies: list[Any]) -> None:
        """Hand the traversal batches of ingest replies to the estimator, in this order;
        keep their probe trips for the next publication (:meth:`_publish`)."""
        for reply in replies:
            self.folds.send(reply.batch, reply.n_matched, reply.accepted_wall_s,
                            vehicles=reply.vehicles)
            self._trips.add(reply.trips)

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """A quiet point: no ingest call or idle-flush tick in flight and every traversal
        batch folded; none started until the block ends (checkpoints and restores read the
        stages' state in it).

        The caller holds the durability order lock, which keeps new batches out.
        """
        with self._cv:
            self._paused = True
        try:
            self._collect_ticks(wait=True)
            with self._cv:
                while sum(self._inflight) or self._ticks_folding:
                    self._cv.wait()
            self.folds.drain()
            yield
        finally:
            with self._cv:
                self._paused = False

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
        """Hand a publication to the routers (stale network versions are dropped).

        Full vectors and deltas alike go out as the chain since the last full publication
        (``workers.router.PublicationChain``; on Ray, object refs a replica fetches only when
        it missed one and must catch up). A delta that does not follow the last publication
        sent (one was lost or overtaken) is replaced by a full publication.

        The probe trips received since the last publication sent (:class:`TripBuffer`) go
        with it (``Publication.trips``), for the routers' bias learning; they are kept for
        the next one when this one is not sent.
        """
        if pub is None or pub.network_version != self.net.version:
            return
        s = self.stages
        held = self._pub_chain
        if held[0] != pub.network_version:  # a new network starts a new chain
            held = self._pub_chain = (pub.network_version, PublicationChain())
        trips = self._trips.take(pub.network_version)

        def shared(p: Publication) -> Any:
            p = p if trips is None else replace(p, trips=trips)
            return s.share(p) if self.router_actors else p

        sent = held[1].add(pub, shared(pub))
        if sent is PublicationChain.BROKEN:
            pub = self.estimator_call("publish")  # a full vector
            if pub is None or pub.network_version != held[0]:
                self._trips.add(trips)
                return
            sent = held[1].add(pub, shared(pub))
        if not isinstance(sent, list):
            self._trips.add(trips)
            return  # older than what the routers were sent already
        if self.router is not None:
            self.router.apply_publication(sent)
        if self.router_actors:
            futures = [s.call(r, "apply_publication", sent) for r in self.router_actors]
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
                self._trips.clear()  # the replay's trips: the routers learned from most
                self._publish(self.estimator_call("publish"))
            self._collect_ticks(wait=False)
            now, s = self.now_s(), self.stages
            with self._cv:  # not while a quiet point reads the stages' state
                for p, stage in enumerate(self.ingest_stages):
                    if self._paused or p in self._tick_refs or self._inflight[p]:
                        continue
                    self._tick_refs[p] = s.call(stage, "tick", now)
            self._collect_ticks(wait=False)  # in process, the ticks ran already
            self._publish(self.estimator_call("maybe_publish"))
            self.push_overrides()  # closures that started or ended by the clock
            self.push_feed()  # the speed feed's blend fades with age (every refresh_s)

    def _collect_ticks(self, *, wait: bool) -> None:
        """Fold the replies of finished idle-flush ticks (of all, waiting, with ``wait``)."""
        s = self.stages
        with self._cv:
            ready = [p for p, ref in self._tick_refs.items() if wait or s.done(ref)]
            refs = [self._tick_refs.pop(p) for p in ready]
            self._ticks_folding += len(refs)  # a quiet point waits for them (see quiet())
        for p, ref in zip(ready, refs, strict=True):
            try:
                self.fold_replies([s.get(ref)])
            except Exception as exc:
                if not s.is_restart(exc):
                    raise
                logger.warning("an idle-flush tick of partition %d was lost to a restart", p)
            finally:
                with self._cv:
                    self._ticks_folding -= 1
                    self._cv.notify_all()

    def flush(self) -> None:
        """Decide every held probe now (end of a replay) and publish."""
        self.fold_replies(self.ingest_call_all("flush"))
        self.folds.drain()
        self._publish(self.estimator_call("publish"), wait=True)

    def drain(self, *, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait until no ingest call or fold is in flight; returns the status then."""
        deadline = time.time() + timeout_s
        while True:
            self._collect_ticks(wait=False)  # finished idle-flush ticks give their places back
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
        est = {**est, "fold_outstanding": self.folds.outstanding(),
               "fold_errors": self.folds.fold_errors,
               "last_fold_error": self.folds.last_fold_error}
        if self.durability is not None:
            est = {**est, "durability": self.durability.stats()}
        return merge_status(parts, est, router, clock=self.config.clock,
                            network_version=self.net.version, mode=s.kind,
                            ingest_inflight=int(sum(self._inflight)),
                            router_replicas=len(self.router_actors),
                            estimator_on_gpu=self.estimator_on_gpu,
                            sources={"speed_feed": self.feed_source()})

    def placement(self) -> dict[str, list[str]]:
        """Node id of every stage, by role (to check that a cluster spreads them)."""
        s = self.stages
        return {"ingest": s.placement(self.ingest_stages),
                "estimator": s.placement(self.estimator_handles()),
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
        bias = self.config.route_bias_config()
        if self.router_actors:
            actors = self.stages.start_routers(self.stages.share(net), len(self.router_actors),
                                               cache_dir=self.config.cache_dir, route_bias=bias)
            self.stages.get([self.stages.call(a, "stats") for a in actors])
            return actors
        return RouterCore(net, cache_dir=self.config.cache_dir, route_bias=bias)

    def _router_state(self) -> dict[str, Any] | None:
        """The serving router's state (``RouterCore.state_dict``: its learned optimism),
        or ``None`` when its replica is restarting."""
        if self.router is not None:
            return self.router.state_dict()
        s = self.stages
        try:
            return s.get(s.call(self.router_actors[0], "state_dict"), timeout=30)
        except Exception as exc:
            if not s.is_restart(exc):
                raise
            return None  # the new replicas learn it again

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
            self.fold_replies(s.swap_network(self.ingest_stages, net_ref))
            self.folds.drain()
            carried = self.estimator_call("remap_to", net if self.shards is not None
                                          else net_ref)
            pub = self.estimator_call("publish")  # a full vector: a new chain starts at it
            chain = PublicationChain()
            sent = chain.add(pub, s.share(pub) if isinstance(prepared, list) else pub)
            # The learned optimism is per ETA bucket, not per edge: it carries over as is.
            state = self._router_state()
            if isinstance(prepared, list):
                if state is not None:
                    s.get([s.call(r, "load_state_dict", state) for r in prepared])
                s.get([s.call(r, "apply_publication", sent) for r in prepared])
                # The old replicas finish their queued queries, then go when their handles do.
                self.router_actors = prepared
            else:
                if state is not None:
                    prepared.load_state_dict(state)
                prepared.apply_publication(sent)
                # The replaced router stops its query threads when its last query ends.
                self.router = prepared
            self._pub_chain = (net.version, chain)
            self.net, self.loaded_at = net, time.time()
            self.closures, self._closures_sent = self.closures.remap_to(net), None
            self.push_overrides(wait=True)
            self._swap_feeds()
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
        self.stages.close([*self.ingest_stages, *self.estimator_handles(),
                           *self.router_actors])


class LocalServices(Services):
    """Every stage as a plain object in this process (:class:`workers.stages.LocalStages`).

    Good for tests and a small single-process server. Ingest runs synchronously, so its
    queues are empty when a call returns and the accounting holds exactly.
    """

    def __init__(self, net: RoadNetwork, config: PipelineConfig | None = None, *,
                 prior: Any = None) -> None:
        super().__init__(net, config or PipelineConfig(), stages=LocalStages(), prior=prior)
