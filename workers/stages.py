"""How the service calls its stages: a method call in this process, or a Ray actor handle.

The stages are the plain cores of ``workers/`` (:class:`workers.ingest.IngestCore` per
vehicle partition, one :class:`workers.estimator.EstimatorCore`, optional
:class:`workers.router.RouterCore` replicas). :class:`workers.services.Services` drives them
through one of two runners with the same small interface:

- ``start_*`` builds the stages and returns their handles;
- ``call(handle, method, *args)`` starts a call and returns a future, ``get(futures)``
  waits for results (re-raising what the call raised), ``done(future)`` polls;
- ``share(value)`` makes a large read-only value cheap to pass to many calls;
- ``is_restart(exc)`` tells a stage that died or is restarting from a bug in it.

:class:`LocalStages` runs each call at once, under one lock (the cores are not
thread-safe; the lock gives them an actor's one-call-at-a-time). :class:`RayStages` applies
``ray.remote`` to the same classes. Ingest replies carry their traversal batches; the
service folds them into the estimator through a :class:`FoldQueue`, in the order of its
calls, with a bound on the folds in flight. Ingest replies also carry the probe trips they
closed (``IngestReply.trips``); the service keeps the newest for its next publication
(``workers.publication.TripBuffer``), which the routers learn their optimism from.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from graph.network import RoadNetwork
from traffic._xp import gpu_available
from workers.estimator import EstimatorCore, EstimatorServiceConfig
from workers.ingest import IngestConfig, IngestCore
from workers.router import DEFAULT_ROUTE_BIAS, RouterCore

logger = logging.getLogger(__name__)


class StageRestarted(RuntimeError):
    """A stage restarted and is being restored; the call can be retried later."""


class Done:
    """A finished local call: its value, or the exception it raised."""

    __slots__ = ("value", "error")

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error


class LocalStages:
    """Every stage a plain object in this process; one call at a time (see the module doc)."""

    kind = "local"
    #: Publications run on the caller after each ingest call (there is no actor to wait on).
    inline_publish = True

    def __init__(self) -> None:
        self.lock = threading.RLock()

    def start_estimator(self, net: RoadNetwork, config: EstimatorServiceConfig, *,
                        prior: Any, use_gpu: str) -> tuple[EstimatorCore, bool]:
        """The estimator core (NumPy here; the GPU belongs to the Ray estimator actor)."""
        return EstimatorCore(net, config, prior=prior), False

    def start_estimator_shards(self, views: Sequence[Any], configs: Sequence[Any], *,
                               priors: Sequence[Any], use_gpu: str
                               ) -> tuple[list[EstimatorCore], bool]:
        """One estimator core per shard (``workers.shards``), NumPy."""
        return [EstimatorCore(v, c, prior=p)
                for v, c, p in zip(views, configs, priors, strict=True)], False

    def start_ingest(self, net: RoadNetwork, config: IngestConfig, n: int) -> list[IngestCore]:
        """``n`` ingest cores sharing one spatial index and route-distance oracle."""
        first = IngestCore(net, config, partition=0)
        return [first] + [
            IngestCore(net, config, index=first.matcher.index, routes=first.matcher.routes,
                       partition=p) for p in range(1, n)]

    def start_routers(self, net: RoadNetwork, n: int, *, cache_dir: str | None,
                      first_node: int = 1, route_bias: Any = DEFAULT_ROUTE_BIAS) -> list[Any]:
        """None: replicas are a Ray feature; in process the service keeps one router (so a
        configuration asking for replicas runs unchanged, on one)."""
        return []

    def swap_network(self, handles: Sequence[IngestCore], net: RoadNetwork) -> list[Any]:
        """Move every ingest core to ``net``; returns their replies (held points decided
        on the old network), in partition order."""
        with self.lock:
            first = handles[0]
            replies = [first.swap_network(net)]
            for core in handles[1:]:
                replies.append(core.swap_network(net, index=first.matcher.index,
                                                 routes=first.matcher.routes))
        return replies

    def call(self, handle: Any, method: str, *args: Any, **kwargs: Any) -> Done:
        """Run ``handle.method(*args, **kwargs)`` now, under the stages' lock."""
        with self.lock:
            try:
                return Done(getattr(handle, method)(*args, **kwargs))
            except Exception as exc:  # re-raised by get(), as Ray re-raises a task's error
                return Done(error=exc)

    @staticmethod
    def get(futures: Any, timeout: float | None = None) -> Any:
        """The result(s) of :meth:`call`; re-raises what a call raised."""
        if isinstance(futures, list):
            return [LocalStages.get(f) for f in futures]
        if futures.error is not None:
            raise futures.error
        return futures.value

    @staticmethod
    def done(future: Any) -> bool:
        """Whether a call finished (always: local calls run at once)."""
        return True

    @staticmethod
    def share(value: Any) -> Any:
        """The value itself: in process there is nothing to copy."""
        return value

    @staticmethod
    def router_weights(value: Any) -> Any:
        """What a router's ``update`` takes for a shared travel-time vector."""
        return value

    @staticmethod
    def is_restart(exc: BaseException) -> bool:
        """Local stages do not restart: only :class:`StageRestarted` says so."""
        return isinstance(exc, StageRestarted)

    @staticmethod
    def restart(handle: Any, error: BaseException) -> None:
        """A stage in this process cannot restart: its error goes to the caller."""
        raise error

    def placement(self, handles: Sequence[Any]) -> list[str]:
        """Every stage runs in this process."""
        return ["local"] * len(handles)

    def close(self, handles: Sequence[Any]) -> None:
        """Nothing to stop."""


class FoldQueue:
    """The service's link to the estimator: folds traversal batches in the order given,
    with a bound on those in flight.

    The service hands every ingest reply's batch here in the order of its calls, so the
    estimator folds the partitions' batches in one deterministic order whatever the runner
    (a fold's decay and outlier gate depend on what was folded before it). Thread-safe.

    A fold that raises in the estimator (a fault there, not bad input: batches were
    validated and matched before) leaves the estimator's state short of that batch. The
    queue then restarts the estimator (``stages.restart``: a Ray actor restarts; in process
    the error is raised to the caller), which the service detects by its boot token and
    answers as it answers any estimator restart: the newest checkpoint is loaded and the
    probe log replayed after it (:func:`workers.checkpointing.restore_if_restarted`), so the
    batch is folded again and no checkpoint is taken from the damaged state. Errors are
    logged and counted (``fold_errors``).
    """

    def __init__(self, stages: Any, estimator: Any, *, max_inflight: int,
                 shards: Any = None) -> None:
        self.stages, self.estimator, self.shards = stages, estimator, shards
        # With estimator shards (``workers.shards.ShardedEstimator``) every batch is one fold
        # per shard, each of the batch's part for that shard, sent in the same order.
        n = 1 if shards is None else len(shards.handles)
        self.max_inflight = max(1, int(max_inflight)) * n
        self._lock = threading.Lock()
        self._refs: list[Any] = []
        self.fold_errors = 0
        self.last_fold_error: str | None = None

    def send(self, batch: Any, n_matched: int, accepted_wall_s: float | None, *,
             vehicles: tuple[int, float, int] | None = None) -> None:
        """Fold ``batch`` (``n_matched`` probes become applied) with the partition's vehicle
        count ``vehicles`` (``workers.ingest.IngestReply.vehicles``); blocks while
        ``max_inflight`` folds are outstanding. Nothing to fold: no call (a count alone is
        not sent; the partition's next fold brings a newer one)."""
        if batch is None and not n_matched:
            return
        wall = time.time() if accepted_wall_s is None else accepted_wall_s
        with self._lock:  # the call order is the fold order
            if self.shards is None:
                self._refs.append((self.estimator, self.stages.call(
                    self.estimator, "fold", batch, n_matched, accepted_wall_s=wall,
                    vehicles=vehicles)))
            else:
                for handle, args, kwargs in self.shards.fold_calls(batch, n_matched, wall,
                                                                   vehicles):
                    self._refs.append((handle, self.stages.call(handle, "fold", *args,
                                                                **kwargs)))
        self._reap(0)
        excess = len(self._refs) - self.max_inflight
        if excess > 0:
            self._reap(excess)

    def outstanding(self) -> int:
        """Folds sent and not yet done."""
        self._reap(0)
        return len(self._refs)

    def drain(self) -> None:
        """Wait for every outstanding fold."""
        self._reap(len(self._refs))

    def forget(self) -> None:
        """Drop the folds in flight to an estimator that died (the replay redoes them)."""
        with self._lock:
            self._refs = []

    def _reap(self, wait_for: int) -> None:
        """Collect finished folds, oldest first, waiting for at least ``wait_for``.

        Holds the lock throughout, so a :meth:`drain` never returns while another thread
        is still collecting folds it took off the list.
        """
        failed = None
        with self._lock:
            n = 0
            while n < len(self._refs) and (n < wait_for or self.stages.done(self._refs[n][1])):
                n += 1
            done, self._refs = self._refs[:n], self._refs[n:]
            failed = self._collect(done)
        if failed is not None:
            self.stages.restart(failed[0], failed[1])

    def _collect(self, done: list[Any]) -> tuple[Any, BaseException] | None:
        """Wait for ``done``'s folds; count and return the last error that is not a restart
        (with the stage that raised it)."""
        failed = None
        for handle, ref in done:
            try:
                self.stages.get(ref)
            except Exception as exc:
                if self.stages.is_restart(exc):
                    continue  # the estimator died or is restarting: the service restores it
                self.fold_errors += 1
                self.last_fold_error = f"{type(exc).__name__}: {exc}"[:500]
                logger.error("a fold failed in the estimator (%s); restarting it so that it "
                             "is restored from the checkpoint and the log", self.last_fold_error)
                failed = (handle, exc)
        return failed


class RayStages:
    """Every stage a Ray actor (see the module doc); joins or starts a Ray cluster.

    The network goes through the object store once (``share``); actors restart
    (``max_restarts=-1``) and re-read their arguments from it.
    """

    kind = "ray"
    #: Publications run on the service's housekeeping thread, not after each ingest call.
    inline_publish = False

    def __init__(self, ray_address: str | None = None) -> None:
        import ray

        from traffic.native_memory import malloc_env

        if not ray.is_initialized():
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
        # Actor processes start with the allocator settings of traffic.native_memory (glibc
        # reads them at process start, restarts included).
        self._env = {"env_vars": malloc_env()}

    def start_estimator(self, net: Any, config: EstimatorServiceConfig, *, prior: Any,
                        use_gpu: str) -> tuple[Any, bool]:
        """The estimator actor, on a GPU when asked or (``auto``) when one is at hand."""
        import ray

        on_gpu = use_gpu == "yes" or (use_gpu == "auto" and gpu_available()
                                      and ray.cluster_resources().get("GPU", 0) >= 1)
        actor = ray.remote(EstimatorCore).options(
            num_gpus=1 if on_gpu else 0, num_cpus=0, max_restarts=-1, runtime_env=self._env)
        return actor.remote(net, config, xp="cupy" if on_gpu else "numpy", prior=prior), on_gpu

    def start_estimator_shards(self, views: Sequence[Any], configs: Sequence[Any], *,
                               priors: Sequence[Any], use_gpu: str) -> tuple[list[Any], bool]:
        """One estimator actor per shard (``workers.shards``), shard ``s`` on the ``s``-th
        node round robin; each on a GPU when asked or (``auto``) when every shard can have
        one."""
        import ray

        n = len(views)
        on_gpu = use_gpu == "yes" or (use_gpu == "auto" and gpu_available()
                                      and ray.cluster_resources().get("GPU", 0) >= n)
        actor = ray.remote(EstimatorCore)
        handles = []
        for s, (view, cfg, prior) in enumerate(zip(views, configs, priors, strict=True)):
            opts: dict[str, Any] = {"num_gpus": 1 if on_gpu else 0, "num_cpus": 0,
                                    "max_restarts": -1, "runtime_env": self._env}
            if not on_gpu:  # GPU shards go where the GPUs are
                opts["scheduling_strategy"] = _spread(s)
            handles.append(actor.options(**opts).remote(
                ray.put(view), cfg, xp="cupy" if on_gpu else "numpy",
                prior=None if prior is None else ray.put(prior)))
        return handles, on_gpu

    def start_ingest(self, net: Any, config: IngestConfig, n: int) -> list[Any]:
        """``n`` ingest actors spread over the nodes."""
        import ray

        actor = ray.remote(IngestCore)
        return [actor.options(num_cpus=0, max_restarts=-1, scheduling_strategy=_spread(p),
                              runtime_env=self._env)
                .remote(net, config, partition=p)
                for p in range(n)]

    def start_routers(self, net: Any, n: int, *, cache_dir: str | None,
                      first_node: int = 1, route_bias: Any = DEFAULT_ROUTE_BIAS) -> list[Any]:
        """``n`` threaded router replicas, one per node round robin; ``route_bias``: their
        ``traffic.route_bias.RouteBiasConfig`` (``None``: no learned correction,
        ``workers.router``)."""
        import ray

        actor = ray.remote(RouterCore)
        return [actor.options(num_cpus=0, max_restarts=-1, max_concurrency=8,
                              scheduling_strategy=_spread(i + first_node),
                              runtime_env=self._env)
                .remote(net, cache_dir=cache_dir, route_bias=route_bias)
                for i in range(n)]

    def swap_network(self, handles: Sequence[Any], net: Any) -> list[Any]:
        """Move every ingest actor to ``net`` (a shared ref); returns their replies."""
        return self.get([self.call(a, "swap_network", net) for a in handles])

    @staticmethod
    def call(handle: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        """``handle.method.remote(*args, **kwargs)``: an object ref."""
        return getattr(handle, method).remote(*args, **kwargs)

    @staticmethod
    def get(futures: Any, timeout: float | None = None) -> Any:
        """``ray.get``."""
        import ray

        return ray.get(futures, timeout=timeout)

    @staticmethod
    def done(future: Any) -> bool:
        """Whether the call behind ``future`` finished."""
        import ray

        return bool(ray.wait([future], timeout=0)[0])

    @staticmethod
    def share(value: Any) -> Any:
        """``ray.put``: the value goes into the object store once."""
        import ray

        return ray.put(value)

    @staticmethod
    def router_weights(value: Any) -> Any:
        """A ref inside a list: Ray does not resolve it on the call, so each replica fetches
        it once from the object store (``RouterCore.update``)."""
        return [value]

    @staticmethod
    def is_restart(exc: BaseException) -> bool:
        """Whether ``exc`` says an actor died or is restarting (not a bug in it)."""
        import ray

        gone = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
        if isinstance(exc, StageRestarted):
            return True
        if isinstance(exc, ray.exceptions.RayTaskError):
            return isinstance(exc.cause, gone)
        return isinstance(exc, gone)

    @staticmethod
    def restart(handle: Any, error: BaseException) -> None:
        """Kill the actor with restart (the service restores its state)."""
        import ray

        ray.kill(handle, no_restart=False)

    def placement(self, handles: Sequence[Any]) -> list[str]:
        """Node id of every actor in ``handles``."""
        import ray

        return ray.get([a.__ray_call__.remote(
            lambda self: ray.get_runtime_context().get_node_id()) for a in handles])

    @staticmethod
    def close(handles: Sequence[Any]) -> None:
        """Kill the actors."""
        import ray

        for a in handles:
            try:
                ray.kill(a)
            except Exception:  # already gone
                pass


def _spread(i: int) -> Any:
    """Place the i-th replica on the i-th alive node, round robin.

    Ray's ``SPREAD`` only spreads by resource use, and these actors reserve no CPU (they
    share the machine with the API), so placement is explicit. The affinity is hard: Ray
    2.60 ignored the soft variant for zero-CPU actors in our two-node test; the catch is
    that a replica whose node dies is not restarted elsewhere.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
    return NodeAffinitySchedulingStrategy(node_id=nodes[i % len(nodes)], soft=False)
