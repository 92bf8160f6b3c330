"""The Ray pipeline: ingest actors per vehicle partition -> one estimator actor -> routers.

Actors are the plain cores of ``workers/`` with ``ray.remote`` applied here, at the
construction site. The network goes through the object store once (``ray.put``); each
publication's travel-time vector is put once and router replicas pull that ref. Ingest
actors hand traversal batches straight to the estimator through a :class:`FoldSink` that
bounds its in-flight calls with ``ray.wait``; the facade bounds in-flight ingest calls per
partition and answers :class:`workers.services.Overloaded` (HTTP 503) when they are full,
before taking anything.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from typing import Any

import polars as pl
import ray

from graph.network import RoadNetwork
from traffic.native_memory import malloc_env
from workers.estimator import EstimatorCore, Publication
from workers.ingest import IngestCore
from workers.router import RouterCore
from workers.services import Overloaded, PipelineConfig, ServiceBase

#: Actor processes start with the allocator settings of traffic.native_memory (glibc reads
#: them at process start, restarts included).
_ACTOR_ENV = {"env_vars": malloc_env()}

logger = logging.getLogger(__name__)


class FoldSink:
    """An ingest actor's link to the estimator actor, with bounded in-flight folds.

    A fold that raises in the estimator (a fault there, not bad input: batches were
    validated and matched before) leaves the estimator's state short of that batch. The
    sink then restarts the estimator actor (``ray.kill`` with restart), which the pipeline
    detects by its boot token and answers as it answers any estimator restart: the newest
    checkpoint is loaded and the probe log replayed after it (:meth:`RayPipeline._check_estimator`),
    so the batch is folded again and no checkpoint is taken from the damaged state. Errors
    are logged and counted (``fold_errors`` in the partition's stats) when they are seen:
    on every send, stats call and drain.
    """

    def __init__(self, estimator: Any, *, max_inflight: int) -> None:
        self.estimator = estimator
        self.max_inflight = max(1, int(max_inflight))
        self._refs: list[Any] = []
        self.fold_errors = 0
        self.last_fold_error: str | None = None

    def send(self, batch: Any, n_matched: int, accepted_wall_s: float) -> None:
        """Fold ``batch`` remotely; blocks while ``max_inflight`` folds are outstanding."""
        self._refs.append(self.estimator.fold.remote(batch, n_matched,
                                                     accepted_wall_s=accepted_wall_s))
        self._reap(0)
        if len(self._refs) > self.max_inflight:
            self._reap(len(self._refs) - self.max_inflight)

    def outstanding(self) -> int:
        """Folds sent and not yet done."""
        self._reap(0)
        return len(self._refs)

    def drain(self) -> None:
        """Wait for every outstanding fold."""
        self._reap(len(self._refs))

    def _reap(self, wait_for: int) -> None:
        """Collect finished folds, blocking until at least ``wait_for`` have finished."""
        if not self._refs:
            return
        if wait_for:
            done, self._refs = ray.wait(self._refs, num_returns=wait_for)
        else:
            done, self._refs = ray.wait(self._refs, num_returns=len(self._refs), timeout=0)
        failed = False
        for ref in done:
            try:
                ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                pass  # the estimator died or is restarting: the pipeline restores it
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, (ray.exceptions.RayActorError,
                                          ray.exceptions.ActorUnavailableError)):
                    continue
                self.fold_errors += 1
                self.last_fold_error = f"{type(exc.cause).__name__}: {exc.cause}"[:500]
                logger.error("a fold failed in the estimator (%s); restarting it so that it "
                             "is restored from the checkpoint and the log", self.last_fold_error)
                failed = True
        if failed:
            ray.kill(self.estimator, no_restart=False)


def gpu_available() -> bool:
    """Whether CuPy imports and sees a CUDA device here."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CuPy missing, or CUDA runtime/driver unusable
        return False


class RayPipeline(ServiceBase):
    """The service facade over Ray actors (see the module docstring).

    Parameters
    ----------
    net
        The road network to serve.
    config
        Pipeline settings (partitions, refresh, queue bounds, replicas).
    ray_address
        An existing cluster to join (``None``: start or reuse a local Ray).
    prior
        A ``traffic.profiles.TimeOfWeekProfile`` for the estimator and future departures.
    """

    def __init__(self, net: RoadNetwork, config: PipelineConfig | None = None, *,
                 ray_address: str | None = None, prior: Any = None) -> None:
        config = config or PipelineConfig()
        super().__init__(net, config, prior=prior)
        if not ray.is_initialized():
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
        self._cv = threading.Condition()
        self._inflight = [0] * config.n_ingest
        self._swapping = False
        self._tick_refs: dict[int, Any] = {}
        # One tick at a time: the housekeeping thread and a caller's tick would otherwise both
        # see a restarted estimator and restore it twice, or publish out of order.
        self._tick_lock = threading.Lock()
        self._rr = itertools.count()
        net_ref = ray.put(net)
        # Held for the pipeline's life: restarted actors re-read their arguments from it.
        self._net_ref = net_ref
        self.estimator = self._start_estimator(net_ref)
        self.ingest_actors = self._start_ingest(net_ref)
        self.router_actors: list[Any] = []
        if config.router_replicas > 0:
            self.router_actors = self._start_routers(net_ref)
            self.router = None
        else:
            self.router = RouterCore(net, cache_dir=config.cache_dir)
        ray.get([a.stats.remote() for a in self.ingest_actors])
        self._boot: str | None = None
        if self.durability is not None:
            self._recover()
        self._publish(ray.get(self.estimator.publish.remote()), wait=True)
        self._ready = True

    # -- construction -------------------------------------------------------------------
    def _start_estimator(self, net_ref: Any) -> Any:
        want = self.config.use_gpu
        on_gpu = want == "yes" or (want == "auto" and gpu_available()
                                   and ray.cluster_resources().get("GPU", 0) >= 1)
        actor = ray.remote(EstimatorCore).options(
            num_gpus=1 if on_gpu else 0, num_cpus=0, max_restarts=-1, name=None,
            runtime_env=_ACTOR_ENV)
        self.estimator_on_gpu = on_gpu
        return actor.remote(net_ref, self.config.estimator_service(),
                            xp="cupy" if on_gpu else "numpy", prior=self.prior)

    @staticmethod
    def _spread(i: int) -> Any:
        """Place the i-th replica on the i-th alive node, round robin.

        Ray's ``SPREAD`` only spreads by resource use, and these actors reserve no CPU (they
        share the machine with the API), so placement is explicit. The affinity is hard:
        Ray 2.60 ignored the soft variant for zero-CPU actors in our two-node test; the
        catch is that a replica whose node dies is not restarted elsewhere.
        """
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
        return NodeAffinitySchedulingStrategy(node_id=nodes[i % len(nodes)], soft=False)

    def _start_ingest(self, net_ref: Any) -> list[Any]:
        actor = ray.remote(IngestCore)
        icfg = self.config.ingest_config()
        return [actor.options(num_cpus=0, max_restarts=-1, scheduling_strategy=self._spread(p),
                              runtime_env=_ACTOR_ENV)
                .remote(net_ref, icfg, partition=p,
                        sink=FoldSink(self.estimator, max_inflight=self.config.max_fold_inflight))
                for p in range(self.config.n_ingest)]

    def _start_routers(self, net_ref: Any) -> list[Any]:
        actor = ray.remote(RouterCore)
        return [actor.options(num_cpus=0, max_restarts=-1, max_concurrency=8,
                              scheduling_strategy=self._spread(i + 1), runtime_env=_ACTOR_ENV)
                .remote(net_ref, cache_dir=self.config.cache_dir)
                for i in range(self.config.router_replicas)]

    def placement(self) -> dict[str, list[str]]:
        """Node id of every actor, by role (to check that a cluster spreads them)."""
        def node_of(actors: list[Any]) -> list[str]:
            return ray.get([a.__ray_call__.remote(
                lambda self: ray.get_runtime_context().get_node_id()) for a in actors])

        return {"ingest": node_of(self.ingest_actors), "estimator": node_of([self.estimator]),
                "router": node_of(self.router_actors)}

    # -- publication --------------------------------------------------------------------
    def _publish(self, pub: Publication | None, *, wait: bool = False) -> None:
        if pub is None or pub.network_version != self.net.version:
            return
        if self.router is not None:
            self.router.update(pub.version, pub.weights_t, pub.travel_time_s)
        if self.router_actors:
            ref = ray.put(pub.travel_time_s)
            refs = [r.update.remote(pub.version, pub.weights_t, [ref]) for r in self.router_actors]
            self._last_pub = pub
            if wait:
                ray.get(refs)

    def tick(self) -> None:
        with self._tick_lock:
            if self.durability is not None:
                self._check_estimator()
            now = self.now_s()
            for p, actor in enumerate(self.ingest_actors):
                prev = self._tick_refs.get(p)
                if prev is not None:
                    done, _ = ray.wait([prev], timeout=0)
                    if not done:
                        continue
                if self._inflight[p] == 0:
                    self._tick_refs[p] = actor.tick.remote(now)
            self._publish(ray.get(self.estimator.maybe_publish.remote()))

    # -- ingest -------------------------------------------------------------------------
    def ingest(self, probes: pl.DataFrame) -> tuple[int, list[tuple[int, str]]]:
        accepted_wall = time.time()
        self._refuse_if_draining()
        order = self.durability.order_lock if self.durability is not None else contextlib.nullcontext()
        with order:  # log append and hand-off in one order, so partitions see log order
            now = self.now_s(self._batch_max_t(probes))
            if self.durability is not None and self.durability.checkpoint_due(now):
                try:
                    self._checkpoint(now)
                except ray.exceptions.RayError as exc:  # a worker is restarting: nothing taken
                    raise Overloaded(f"a worker is restarting ({exc.__class__.__name__}); retry",
                                     retry_after_s=self.config.retry_after_s) from exc
            parts = self._split(probes)
            with self._cv:
                while self._swapping:
                    self._cv.wait()
                full = [p for p, _, _ in parts
                        if self._inflight[p] >= self.config.max_inflight_per_partition]
                if full:
                    raise Overloaded(f"ingest partition(s) {full} are at their queue bound "
                                     f"({self.config.max_inflight_per_partition} batches); retry",
                                     retry_after_s=self.config.retry_after_s)
                for p, _, _ in parts:
                    self._inflight[p] += 1
            try:
                if self.durability is not None and probes.height:
                    probes = self._log_batch(probes, now)  # fsync'd before any matcher sees it
                    # Partitions by pseudonym: the same vehicles stay together, but a group's
                    # partition number can change, so move the in-flight counts with them
                    # (else _release skews them and a checkpoint waits forever).
                    new_parts = self._split(probes)
                    with self._cv:
                        for p, _, _ in parts:
                            self._inflight[p] -= 1
                        for p, _, _ in new_parts:
                            self._inflight[p] += 1
                        self._cv.notify_all()
                    parts = new_parts
                refs = [self.ingest_actors[p].ingest.remote(part, now_s=now,
                                                            accepted_wall_s=accepted_wall)
                        for p, part, _ in parts]
            except BaseException:
                self._release(parts)
                raise
        try:
            try:
                replies = ray.get(refs)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError,
                    ray.exceptions.ActorUnavailableError) as exc:
                if isinstance(exc, ray.exceptions.RayTaskError) and not isinstance(
                        exc.cause, (ray.exceptions.RayActorError,
                                    ray.exceptions.ActorUnavailableError)):
                    raise  # a bug in the worker, not a restart
                # Logged already (when durable): the restore after the restart replays it.
                raise Overloaded(f"an ingest worker is restarting ({exc.__class__.__name__}); retry",
                                 retry_after_s=self.config.retry_after_s) from exc
        finally:
            self._release(parts)
        accepted, rejected = 0, []
        for (_, _, rows), reply in zip(parts, replies, strict=True):
            accepted += reply.accepted
            rejected += [(int(rows[r]), why) for r, why in reply.rejected]
        rejected.sort()
        self._note_accepted(probes, rejected)
        return accepted, rejected

    def _release(self, parts: list[tuple[int, Any, Any]]) -> None:
        with self._cv:
            for p, _, _ in parts:
                self._inflight[p] -= 1
            self._cv.notify_all()

    # -- durability (workers/durability.py) ---------------------------------------------
    def checkpoint_now(self) -> None:
        with self.durability.order_lock:
            self._checkpoint(None)

    def _checkpoint(self, now: float | None) -> None:
        """Quiet point: wait for in-flight batches, flush, drain folds, save (order lock held)."""
        from workers.durability import estimator_state_if_booted, ingest_state, prefixed

        with self._cv:
            while sum(self._inflight):
                self._cv.wait()
        ray.get([a.flush.remote() for a in self.ingest_actors])
        ray.get([a.drain.remote() for a in self.ingest_actors])
        est = ray.get(self.estimator.__ray_call__.remote(estimator_state_if_booted, self._boot))
        if est is None:
            raise ray.exceptions.RayError("the estimator restarted; no checkpoint until it is "
                                          "restored")
        if now is not None:
            self.durability.note_checkpoint(now)
        parts = ray.get([a.__ray_call__.remote(ingest_state) for a in self.ingest_actors])
        state = prefixed("estimator", est)
        for p, part in enumerate(parts):
            state.update(prefixed(f"ingest{p}", part))
        state["facade.watermark_t"] = self._watermark
        try:
            self.durability.save(state, event_time_s=est["watermark_t"])
        except OSError:  # keep serving; the log keeps everything since the last checkpoint
            logger.exception("checkpoint failed")

    def _recover(self) -> None:
        """Load the newest good checkpoint into the actors, then replay the log tail."""
        from workers.durability import load_estimator_state, load_ingest_state, unprefixed

        rec = self.durability.recover()
        if rec.state is not None:
            ray.get(self.estimator.__ray_call__.remote(
                load_estimator_state, unprefixed("estimator", rec.state)))
            parts = [unprefixed(f"ingest{p}", rec.state) for p in range(len(self.ingest_actors))]
            if not all(parts):
                raise RuntimeError("checkpoint lacks an ingest partition's state; restart with "
                                   "the same --ingest count")
            ray.get([a.__ray_call__.remote(load_ingest_state, part)
                     for a, part in zip(self.ingest_actors, parts, strict=True)])
            self._watermark = rec.state.get("facade.watermark_t")
        self._mark_boot()  # from here on the estimator's state is whole again
        n, refs = 0, []
        for _pos, logged in rec.tail:
            probes, now = self.durability.split_logged(logged)
            if self.durability.checkpoint_due(now, self.durability.logged_wall_s(logged),
                                              replay=True):
                ray.get(refs)
                refs = []
                self._checkpoint(now)
            refs += [self.ingest_actors[p].ingest.remote(part, now_s=now)
                     for p, part, _ in self._split(probes)]
            n += 1
            if len(refs) > 64:
                ray.get(refs[:32])
                refs = refs[32:]
        ray.get(refs)
        ray.get([a.drain.remote() for a in self.ingest_actors])
        marks = [s["watermark_t"] for s in ray.get([a.stats.remote() for a in self.ingest_actors])]
        marks = [m for m in marks if m is not None]
        if marks:
            self._watermark = max([*marks, *([self._watermark] if self._watermark else [])])
        self.durability.replayed_batches = n
        logger.info("replayed %d logged batches", n)

    def _mark_boot(self) -> None:
        from workers.durability import mark_boot

        self._boot = f"{time.time_ns()}"
        ray.get(self.estimator.__ray_call__.remote(mark_boot, self._boot))

    def _check_estimator(self) -> None:
        """If the estimator actor restarted (fresh state), rebuild everything from the
        checkpoint and the log; routers keep the last published weights meanwhile."""
        from workers.durability import boot_of, reset_ingest

        if ray.get(self.estimator.__ray_call__.remote(boot_of), timeout=30) == self._boot:
            return
        logger.warning("the estimator restarted; restoring from the checkpoint and replaying")
        with self.durability.order_lock:
            with self._cv:
                while sum(self._inflight):
                    self._cv.wait()
            ray.get([a.__ray_call__.remote(reset_ingest, None) for a in self.ingest_actors])
            self._recover()
            self.estimator_restores = getattr(self, "estimator_restores", 0) + 1
        self._publish(ray.get(self.estimator.publish.remote()))

    # -- queries ------------------------------------------------------------------------
    def route(self, from_latlon: tuple[float, float], to_latlon: tuple[float, float], *,
              depart_at_s: float | None = None, max_snap_m: float = 200.0,
              profile_horizon_s: float = 900.0) -> dict[str, Any]:
        if not self.router_actors:
            return super().route(from_latlon, to_latlon, depart_at_s=depart_at_s,
                                 max_snap_m=max_snap_m, profile_horizon_s=profile_horizon_s)
        profile = None
        if depart_at_s is not None and self.prior is not None \
                and depart_at_s - self.now_s() > profile_horizon_s:
            profile = self._profile_weights(depart_at_s)
        return self._on_router(lambda a: a.route.remote(from_latlon, to_latlon,
                                                        max_snap_m=max_snap_m, profile=profile))

    def table(self, sources: list[tuple[float, float]], destinations: list[tuple[float, float]],
              *, max_snap_m: float = 200.0, depart_at_s: float | None = None,
              profile_horizon_s: float = 900.0) -> dict[str, Any]:
        if not self.router_actors:
            return super().table(sources, destinations, max_snap_m=max_snap_m,
                                 depart_at_s=depart_at_s, profile_horizon_s=profile_horizon_s)
        profile = self._profile_for(depart_at_s, profile_horizon_s)
        return self._on_router(lambda a: a.table.remote(sources, destinations,
                                                        max_snap_m=max_snap_m, profile=profile))

    def _on_router(self, call: Any) -> Any:
        """Run a query on the next replica; a replica that dies under it is skipped and the
        query retried on the others (queries are read-only, so a retry is safe)."""
        attempts = max(2, len(self.router_actors) + 1)
        for attempt in range(attempts):
            try:
                return ray.get(call(self._next_router()))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                if attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def live_snapshot(self) -> tuple[float | None, pl.DataFrame]:
        return ray.get(self.estimator.live_snapshot.remote(), timeout=30)

    def _next_router(self) -> Any:
        actors = self.router_actors
        return actors[next(self._rr) % len(actors)]

    def ready(self) -> bool:
        return self._ready

    # -- status -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        parts = ray.get([a.stats.remote() for a in self.ingest_actors], timeout=30)
        est = ray.get(self.estimator.stats.remote(), timeout=30)
        router = (self.router.stats() if self.router is not None
                  else ray.get(self.router_actors[0].stats.remote(), timeout=30))
        merged = self._merge_status(parts, est)
        if self.durability is not None:
            est = {**est, "durability": self.durability.stats()}
        return {
            "clock": self.config.clock,
            "watermark_t": merged["watermark_t"],
            "weights_version": str(router["weights_version"]),
            "weights_t": router["weights_t"],
            "network_version": self.net.version,
            "probes": merged["probes"],
            "queues": {"ingest_inflight": int(sum(self._inflight)),
                       "fold_inflight": int(merged["fold_inflight"])},
            "coverage": {"edges_observed": est["coverage_edges"]},
            "workers": {"mode": "ray", "ingest": parts, "estimator": est, "router": router,
                        "router_replicas": len(self.router_actors),
                        "estimator_on_gpu": self.estimator_on_gpu},
        }

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

    def flush(self) -> None:
        ray.get([a.flush.remote() for a in self.ingest_actors])
        ray.get([a.drain.remote() for a in self.ingest_actors])
        self._publish(ray.get(self.estimator.publish.remote()), wait=True)

    # -- network swap -------------------------------------------------------------------
    def _prepare(self, net: RoadNetwork) -> Any:
        if self.router_actors:
            net_ref = ray.put(net)
            actors = self._start_routers(net_ref)
            ray.get([a.stats.remote() for a in actors])
            return actors
        return RouterCore(net, cache_dir=self.config.cache_dir)

    def _swap(self, net: RoadNetwork, prepared: Any) -> int:
        with self._cv:
            self._swapping = True
            while sum(self._inflight):
                self._cv.wait()
        try:
            net_ref = self._net_ref = ray.put(net)
            ray.get([a.swap_network.remote(net_ref) for a in self.ingest_actors])
            carried = ray.get(self.estimator.remap_to.remote(net_ref))
            pub = ray.get(self.estimator.publish.remote())
            if isinstance(prepared, list):
                ref = ray.put(pub.travel_time_s)
                ray.get([r.update.remote(pub.version, pub.weights_t, [ref]) for r in prepared])
                # The old replicas finish their queued queries, then go when their handles do.
                self.router_actors = prepared
            else:
                prepared.update(pub.version, pub.weights_t, pub.travel_time_s)
                self.router = prepared
            self.net, self.loaded_at = net, time.time()
        finally:
            with self._cv:
                self._swapping = False
                self._cv.notify_all()
        return int(carried)

    def close(self) -> None:
        super().close()
        for a in [*self.ingest_actors, self.estimator, *self.router_actors]:
            try:
                ray.kill(a)
            except Exception:  # already gone
                pass
