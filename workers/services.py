"""What the API calls: the service facade over the pipeline, and its in-process variant.

:class:`ServiceBase` holds what every deployment shares: the serving network, the clock,
route/table over the newest router, probe partitioning and accounting, and network upload
jobs (import in the background, prepare, swap; a bad file leaves the serving network).
:class:`LocalServices` runs every stage as plain objects in this process (API tests, a
single-process server); :class:`workers.pipeline.RayPipeline` runs them as Ray actors.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from graph.errors import NetworkError
from graph.network import RoadNetwork
from workers.estimator import EstimatorCore, EstimatorServiceConfig, Publication
from workers.ingest import IngestConfig, IngestCore, partition_of
from workers.router import RouterCore

logger = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """Ingest queues are full; the batch was not taken. ``retry_after_s`` says when to retry."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(RuntimeError):
    """The service has no routable network or weights yet."""


class UnknownJob(LookupError):
    """No network job has this id."""


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """How the pipeline runs; built once by the entry point (``traffic serve``).

    Attributes
    ----------
    clock
        ``"wall"`` (live) or ``"event"`` (replay: time is the newest probe's ``t``).
    n_ingest
        Number of ingest partitions (actors).
    refresh_s
        Estimator publication interval (s of the clock).
    tick_s
        Wall seconds between housekeeping passes (idle flush, publication).
    max_inflight_per_partition
        Ingest calls a partition may have queued before the API answers 503.
    max_fold_inflight
        Traversal batches an ingest actor may have in flight to the estimator.
    router_replicas
        Router actors (Ray); 0 keeps one router in the API process.
    use_gpu
        ``"auto"``: the estimator takes a GPU when CuPy and a device are present.
    cache_dir
        Where prepared routing indexes and matcher tables are cached by network version.
    data_dir
        Where uploads and state are written (``None``: the system temporary directory).
    """

    clock: Literal["wall", "event"] = "wall"
    n_ingest: int = 1
    refresh_s: float = 1.0
    tick_s: float = 0.2
    max_inflight_per_partition: int = 4
    max_fold_inflight: int = 8
    router_replicas: int = 0
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    cache_dir: str | None = None
    data_dir: str | None = None
    ingest: IngestConfig = field(default_factory=IngestConfig)
    estimator: Any = None
    retry_after_s: float = 1.0
    #: Congestion snapshot period (event s) into ``<data_dir>/snapshots``; ``None``: off.
    snapshot_every_s: float | None = 60.0
    #: Snapshot retention (event s); ``None`` keeps every snapshot.
    snapshot_retention_s: float | None = 7 * 86400.0
    #: ``workers.durability.DurabilityConfig``: probe log + checkpoints; ``None``: off.
    durability: Any = None
    #: Wall seconds a network upload may take to import and prepare (a child process,
    #: killed past it; the job fails with code ``timeout`` and the serving network stays).
    upload_timeout_s: float = 300.0
    #: Save the learned time-of-week profile into ``<data_dir>/profiles`` every this many
    #: event seconds (and at shutdown); ``None``: only at shutdown.
    profile_save_every_s: float | None = 300.0

    def estimator_service(self) -> EstimatorServiceConfig:
        """The estimator stage's configuration derived from this one."""
        from workers.congestion import snapshot_dir

        snap_dir = snapshot_dir(self.data_dir)
        return EstimatorServiceConfig(refresh_s=self.refresh_s, clock=self.clock,
                                      estimator=self.estimator,
                                      snapshot_dir=None if snap_dir is None else str(snap_dir),
                                      snapshot_every_s=self.snapshot_every_s,
                                      snapshot_retention_s=self.snapshot_retention_s,
                                      profile_path=profile_path(self.data_dir),
                                      profile_save_every_s=self.profile_save_every_s)

    def ingest_config(self) -> IngestConfig:
        """The ingest stage's configuration (with this pipeline's cache directory)."""
        if self.ingest.cache_dir is None and self.cache_dir is not None:
            return replace(self.ingest, cache_dir=str(Path(self.cache_dir)))
        return self.ingest


def profile_path(data_dir: str | Path | None) -> str | None:
    """Where the service keeps its learned time-of-week profile (``None`` without a data dir)."""
    return None if data_dir is None else str(Path(data_dir) / "profiles" / "profile.npz")


def load_profile(net: RoadNetwork, data_dir: str | Path | None, *,
                 timezone: str = "UTC") -> Any:
    """The stored profile of ``data_dir`` remapped to ``net``'s edges, or an empty one.

    A stored profile keeps the time zone it was learned in (its bins are local times there);
    a different ``timezone`` is logged and ignored.
    """
    from traffic.profiles import ProfileConfig, TimeOfWeekProfile

    path = profile_path(data_dir)
    if path is not None and Path(path).exists():
        profile = TimeOfWeekProfile.load(path, edge_key=net.edge_key)
        if profile.config.timezone != timezone:
            logger.warning("profile %s was learned in time zone %s; keeping it (asked for %s)",
                           path, profile.config.timezone, timezone)
        return profile
    return TimeOfWeekProfile.for_network(net, ProfileConfig(timezone=timezone))


@dataclass(slots=True)
class NetworkJob:
    """A network upload being imported; see :meth:`ServiceBase.submit_network`."""

    id: str
    path: str
    state: str = "queued"
    stage: str | None = None
    error: dict[str, Any] | None = None
    network_version: str | None = None
    previous_version: str | None = None
    edges_carried: int | None = None
    submitted_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The job as the API returns it (the upload path is internal)."""
        return {k: getattr(self, k) for k in (
            "id", "state", "stage", "error", "network_version", "previous_version",
            "edges_carried", "submitted_at", "finished_at")}


class ServiceBase:
    """Shared facade logic; subclasses provide the stages (in process or on Ray)."""

    def __init__(self, net: RoadNetwork, config: PipelineConfig, *, prior: Any = None) -> None:
        self.config = config
        self.net = net
        self.prior = prior
        self.loaded_at = time.time()
        self.router: RouterCore | None = None
        self._jobs: dict[str, NetworkJob] = {}
        self._swap_lock = threading.RLock()
        self._ready = False
        self._closed = False
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self._watermark: float | None = None
        self._profile_tt: dict[Any, np.ndarray] = {}  # profile weights by key (4 newest)
        self._congestion = _congestion_queries(config)
        self._draining = False  # set by begin_shutdown: new writes get 503
        self.durability: Any = None
        if config.durability is not None:
            from workers.durability import Durability

            self.durability = Durability(config.durability)

    # -- clock --------------------------------------------------------------------------
    def now_s(self, batch_max_t: float | None = None) -> float:
        """The service clock: wall time, or in event mode the newest probe time seen."""
        if self.config.clock == "wall":
            return time.time()
        w = self.watermark_t()
        cands = [x for x in (w, batch_max_t) if x is not None and np.isfinite(x)]
        return max(cands) if cands else time.time()

    def watermark_t(self) -> float | None:
        """Event time of the newest accepted probe (``None`` before any)."""
        return self._watermark

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

    # -- queries ------------------------------------------------------------------------
    def ready(self) -> bool:
        """Whether the service can answer route queries."""
        return self._ready and self.router is not None

    def route(
        self, from_latlon: tuple[float, float], to_latlon: tuple[float, float], *,
        depart_at_s: float | None = None, max_snap_m: float = 200.0,
        profile_horizon_s: float = 900.0,
    ) -> dict[str, Any]:
        """Route and ETA; live weights unless ``depart_at_s`` is beyond the horizon and a
        time-of-week profile exists (then ``basis`` is ``profile``)."""
        router = self._current_router()
        profile = self._profile_for(depart_at_s, profile_horizon_s)
        return router.route(from_latlon, to_latlon, max_snap_m=max_snap_m, profile=profile)

    def table(self, sources: list[tuple[float, float]],
              destinations: list[tuple[float, float]], *, max_snap_m: float = 200.0,
              depart_at_s: float | None = None,
              profile_horizon_s: float = 900.0) -> dict[str, Any]:
        """Duration matrix over the live weights, or the profile's as :meth:`route` decides."""
        profile = self._profile_for(depart_at_s, profile_horizon_s)
        return self._current_router().table(sources, destinations, max_snap_m=max_snap_m,
                                            profile=profile)

    def _profile_for(self, depart_at_s: float | None,
                     horizon_s: float) -> tuple[Any, np.ndarray] | None:
        """Profile weights for a departure beyond the horizon where the profile has data."""
        if depart_at_s is None or self.prior is None or depart_at_s - self.now_s() <= horizon_s:
            return None
        return self._profile_weights(depart_at_s)

    def _current_router(self) -> RouterCore:
        router = self.router
        if router is None:
            raise NotReady("the service is still loading its network")
        return router

    def _profile_weights(self, t_s: float) -> tuple[Any, np.ndarray] | None:
        """``(key, travel_time_s)`` of the learned profile at ``t_s``; ``None`` where its bin
        has no data. The key names the network, the bin and the bin's revision, so a router
        re-customizes only after the profile learned more about that bin."""
        rev = self._estimator_call("profile_revision", t_s)
        if rev is None:
            return None
        key = (self.net.version, int(rev[1]), int(rev[0]))
        cache = self._profile_tt
        tt = cache.get(key)
        if tt is None:
            tt = self._estimator_call("profile_travel_times", t_s)
            if tt is None:
                return None
            while len(cache) >= 4:
                cache.pop(next(iter(cache)))
            cache[key] = tt
        return key, tt

    def _estimator_call(self, name: str, *args: Any) -> Any:
        """Call an ``EstimatorCore`` method in process, or on its Ray actor."""
        core = self.estimator  # type: ignore[attr-defined]
        if isinstance(core, EstimatorCore):
            lock = getattr(self, "_lock", None)
            if lock is None:
                return getattr(core, name)(*args)
            with lock:
                return getattr(core, name)(*args)
        import ray

        return ray.get(getattr(core, name).remote(*args))

    def network_info(self) -> dict[str, Any]:
        """The serving network's identity and size."""
        net = self.net
        return {"version": net.version, "name": net.name, "n_nodes": net.n_nodes,
                "n_edges": net.n_edges, "bbox": net.bbox, "loaded_at": self.loaded_at}

    # -- congestion (analysts; see workers/congestion.py) --------------------------------
    def live_snapshot(self) -> tuple[float | None, pl.DataFrame]:
        """``(event time, per-edge table)`` of the estimator's live state."""
        return self.estimator.live_snapshot()  # type: ignore[attr-defined]

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

        Raises :class:`Overloaded` (nothing taken) when ingest queues are full.
        """
        raise NotImplementedError

    def _split(self, probes: pl.DataFrame) -> list[tuple[int, pl.DataFrame, np.ndarray]]:
        """Split a batch by partition; each part keeps its rows' positions in ``probes``."""
        n = self.config.n_ingest
        if n == 1 or probes.height == 0:
            return [(0, probes, np.arange(probes.height))]
        vid = probes["vehicle_id"].cast(pl.Utf8) if "vehicle_id" in probes.columns else None
        if vid is None:
            return [(0, probes, np.arange(probes.height))]
        part = partition_of(vid, n)
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
        """Append the batch to the probe log (fsync'd) and return it as the stages see it.

        Without durability the batch is returned unchanged. The caller holds
        ``durability.order_lock`` and has taken any due checkpoint.
        """
        if self.durability is None or probes.height == 0:
            return probes
        logged = self.durability.prepare(probes, now_s)
        self.durability.append(logged)
        return self.durability.split_logged(logged)[0]

    def begin_shutdown(self) -> None:
        """Stop taking probe batches (503), flush matchers and take a final checkpoint."""
        self._draining = True
        if self.durability is not None:
            with self.durability.order_lock:
                self.checkpoint_now()
        else:
            self.flush()
        if self.prior is not None:
            self._estimator_call("save_profile")

    def checkpoint_now(self) -> None:
        """Flush every matcher and save a checkpoint now (a quiet point)."""
        raise NotImplementedError

    @staticmethod
    def _batch_max_t(probes: pl.DataFrame) -> float | None:
        if "t" not in probes.columns or probes.height == 0:
            return None
        t = probes["t"].cast(pl.Float64, strict=False)
        t = t.filter(t.is_finite())
        return None if t.len() == 0 else float(t.max())  # type: ignore[arg-type]

    # -- status -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Accounting and freshness (see ``GET /v1/status``)."""
        raise NotImplementedError

    @staticmethod
    def _merge_status(parts: list[dict[str, Any]], est: dict[str, Any]) -> dict[str, Any]:
        rejected: dict[str, int] = {}
        unmatched: dict[str, int] = {}
        for p in parts:
            for k, v in p["rejected_by_reason"].items():
                rejected[k] = rejected.get(k, 0) + int(v)
            for k, v in p["unmatched_by_reason"].items():
                unmatched[k] = unmatched.get(k, 0) + int(v)
        matched = sum(p["matched"] for p in parts)
        probes = {
            "received": sum(p["received"] for p in parts),
            "accepted": sum(p["accepted"] for p in parts),
            "rejected": sum(rejected.values()),
            "rejected_by_reason": rejected,
            "applied": int(est["applied"]),
            "pending": sum(p["pending"] for p in parts),
            "unmatched": sum(unmatched.values()),
            "unmatched_by_reason": unmatched,
        }
        marks = [p["watermark_t"] for p in parts if p["watermark_t"] is not None]
        return {
            "watermark_t": max(marks) if marks else None,
            "probes": probes,
            "fold_inflight": matched - int(est["applied"]),
        }

    # -- network jobs -------------------------------------------------------------------
    def upload_dir(self) -> str:
        """Directory for network uploads in progress (created when missing)."""
        import tempfile

        root = Path(self.config.data_dir or tempfile.gettempdir()) / "uploads"
        root.mkdir(parents=True, exist_ok=True)
        return str(root)

    def submit_network(self, path: str | Path) -> NetworkJob:
        """Start importing ``path`` in the background; the job swaps it in when ready."""
        job = NetworkJob(id=uuid.uuid4().hex[:12], path=str(path))
        self._jobs[job.id] = job
        threading.Thread(target=self._run_job, args=(job,), name=f"network-job-{job.id}",
                         daemon=True).start()
        return job

    def job(self, job_id: str) -> NetworkJob:
        """The job with this id; raises :class:`UnknownJob`."""
        try:
            return self._jobs[job_id]
        except KeyError:
            raise UnknownJob(f"no network job with id {job_id!r}") from None

    def _run_job(self, job: NetworkJob) -> None:
        job.state, job.stage = "running", "import"
        state = "failed"
        try:
            net = import_in_child(job.path, timeout_s=self.config.upload_timeout_s,
                                  cache_dir=self.config.cache_dir)
            job.stage = "prepare"
            prepared = self._prepare(net)
            job.stage = "swap"
            with self._swap_lock:
                job.previous_version = self.net.version
                job.edges_carried = self._swap(net, prepared)
            job.network_version = net.version
            state, job.stage = "done", None
        except ImportTimeout as exc:
            job.error = {"code": "timeout", "message": str(exc),
                         "details": {"timeout_s": self.config.upload_timeout_s}}
        except (NetworkError, ValueError, OSError) as exc:
            job.error = {"code": "invalid_network", "message": str(exc), "details": None}
        except Exception as exc:  # an import bug must not kill the server; report it
            logger.exception("network job %s failed", job.id)
            job.error = {"code": "internal", "message": f"{type(exc).__name__}: {exc}",
                         "details": None}
        finally:
            # The upload is gone before the job reads as finished, so a client that sees
            # `done`/`failed` never finds the file still there.
            Path(job.path).unlink(missing_ok=True)
            job.finished_at = time.time()
            job.state = state

    def _prepare(self, net: RoadNetwork) -> Any:
        """Build what serving ``net`` needs, while the old network keeps serving."""
        return RouterCore(net, cache_dir=self.config.cache_dir)

    def _swap(self, net: RoadNetwork, prepared: Any) -> int:
        raise NotImplementedError

    # -- housekeeping -------------------------------------------------------------------
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
        """Flush idle vehicles and publish new travel times when due."""
        raise NotImplementedError

    def flush(self) -> None:
        """Decide every held probe now (end of a replay)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop background work."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        self._closed = True
        if self.durability is not None:
            self.durability.close()


class ImportTimeout(RuntimeError):
    """A network import ran past its time limit and was stopped."""


def import_in_child(path: str | Path, *, timeout_s: float,
                    cache_dir: str | None = None) -> RoadNetwork:
    """Import a network file in a fresh child process, killed after ``timeout_s`` wall s.

    The child parses ``path`` (:func:`graph.io.load_network`), prepares its routing index
    into ``cache_dir`` (when given, so the caller's preparation then reads the cache) and
    writes the network in the compiled format next to ``path``; the caller reads that back
    (:func:`graph.io.load_compiled`, a plain read). A thread cannot be stopped; a process
    can, so a hostile or huge file cannot hold the import forever.

    Raises
    ------
    ImportTimeout
        When the child did not finish within ``timeout_s`` (it is killed).
    NetworkError, ValueError, OSError
        What the import raised in the child (re-raised here with its message).
    RuntimeError
        When the child died without an answer (e.g. killed for memory).
    """
    import multiprocessing

    from graph.io import load_compiled

    src = Path(path)
    out = src.with_name(src.name + ".compiled")
    ctx = multiprocessing.get_context("spawn")  # fresh interpreter: no copied locks or threads
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_import_child, args=(str(src), str(out), cache_dir, send),
                        name="network-import", daemon=True)
    try:
        child.start()
        send.close()  # ours; the child's copy closing signals its end
        if not recv.poll(timeout_s):
            child.kill()
            raise ImportTimeout(f"{src}: the import took longer than the {timeout_s:g} s limit "
                                f"(upload timeout) and was stopped; the serving network is "
                                f"unchanged")
        try:
            kind, message = recv.recv()
        except EOFError:
            raise RuntimeError(f"{src}: the import process ended without an answer "
                               f"(exit code {child.exitcode})") from None
        if kind == "network":
            raise NetworkError(message)
        if kind == "value":
            raise ValueError(message)
        if kind == "os":
            raise OSError(message)
        if kind != "ok":
            raise RuntimeError(message)
        return load_compiled(out)
    finally:
        recv.close()
        child.join(timeout=5)
        if child.is_alive():
            child.kill()
            child.join()
        out.unlink(missing_ok=True)


def _import_child(src: str, out: str, cache_dir: str | None, send: Any) -> None:
    """In the child: load, prepare (into the cache), save compiled; report ``(kind, message)``."""
    try:
        from graph.io import load_network, save_network

        net = load_network(src)
        if cache_dir is not None:
            from graph.cch import prepare_cch

            prepare_cch(net, cache_dir=cache_dir)
        save_network(net, out)
        reply = ("ok", "")
    except NetworkError as exc:
        reply = ("network", str(exc))
    except ValueError as exc:
        reply = ("value", str(exc))
    except OSError as exc:
        reply = ("os", str(exc))
    except Exception as exc:  # reported to the job as an internal error
        reply = ("internal", f"{type(exc).__name__}: {exc}")
    send.send(reply)
    send.close()


def _congestion_queries(config: PipelineConfig) -> Any:
    from traffic.snapshots import SnapshotStore
    from workers.congestion import CongestionQueries, snapshot_dir

    directory = snapshot_dir(config.data_dir)
    return CongestionQueries(None if directory is None else SnapshotStore(
        directory, retention_s=config.snapshot_retention_s))


class LocalServices(ServiceBase):
    """Every stage as a plain object in this process; calls are serialised by one lock.

    Good for tests and a small single-process server. Ingest runs synchronously, so its
    queues are always empty when a call returns and the accounting holds exactly.
    """

    def __init__(self, net: RoadNetwork, config: PipelineConfig | None = None, *,
                 prior: Any = None) -> None:
        config = config or PipelineConfig()
        super().__init__(net, config, prior=prior)
        self._lock = threading.RLock()
        icfg = config.ingest_config()
        first = IngestCore(net, icfg, partition=0)
        self.ingest_cores = [first] + [
            IngestCore(net, icfg, index=first.matcher.index, ubodt=first.matcher.ubodt,
                       partition=p) for p in range(1, config.n_ingest)]
        self.estimator = EstimatorCore(net, config.estimator_service(), prior=prior)
        self.router = RouterCore(net, cache_dir=config.cache_dir)
        if self.durability is not None:
            self._recover()
        self._publish(self.estimator.publish())
        self._ready = True

    def ingest(self, probes: pl.DataFrame) -> tuple[int, list[tuple[int, str]]]:
        accepted_wall = time.time()
        with self._lock:
            self._refuse_if_draining()
            now = self.now_s(self._batch_max_t(probes))
            if self.durability is not None and self.durability.checkpoint_due(now):
                self._checkpoint(now)
            probes = self._log_batch(probes, now)
            accepted, rejected = self._apply(probes, now, accepted_wall)
            self._maybe_publish()
        return accepted, rejected

    def _apply(self, probes: pl.DataFrame, now: float,
               accepted_wall: float | None) -> tuple[int, list[tuple[int, str]]]:
        """Validate, match and fold one batch (live or replayed from the log)."""
        accepted, rejected = 0, []
        for p, part, rows in self._split(probes):
            reply = self.ingest_cores[p].ingest(part, now_s=now, accepted_wall_s=accepted_wall)
            accepted += reply.accepted
            rejected += [(int(rows[r]), why) for r, why in reply.rejected]
            self.estimator.fold(reply.batch, reply.n_matched, accepted_wall_s=accepted_wall)
        rejected.sort()
        self._note_accepted(probes, rejected)
        return accepted, rejected

    # -- durability (workers/durability.py) ---------------------------------------------
    def checkpoint_now(self) -> None:
        with self._lock:
            self._checkpoint(None)

    def _checkpoint(self, now: float | None) -> None:
        """Flush matchers, fold, save a checkpoint covering the log so far (caller locks)."""
        from workers.durability import estimator_state, ingest_state, prefixed

        for core in self.ingest_cores:
            reply = core.flush()
            self.estimator.fold(reply.batch, reply.n_matched)
        if now is not None:
            self.durability.note_checkpoint(now)
        state = prefixed("estimator", estimator_state(self.estimator))
        for core in self.ingest_cores:
            state.update(prefixed(f"ingest{core.partition}", ingest_state(core)))
        state["facade.watermark_t"] = self._watermark
        try:
            self.durability.save(state, event_time_s=self.estimator.watermark_t)
        except OSError:  # keep serving; the log is still there, just not compacted
            logger.exception("checkpoint failed; the probe log keeps everything since the last one")

    def _recover(self) -> None:
        """Load the newest good checkpoint, then replay the log after it."""
        from workers.durability import load_estimator_state, load_ingest_state, unprefixed

        rec = self.durability.recover()
        if rec.state is not None:
            load_estimator_state(self.estimator, unprefixed("estimator", rec.state))
            for core in self.ingest_cores:
                part = unprefixed(f"ingest{core.partition}", rec.state)
                if not part:
                    raise RuntimeError(f"checkpoint has no state for ingest partition "
                                       f"{core.partition}; restart with the same --ingest count")
                load_ingest_state(core, part)
            self._watermark = rec.state.get("facade.watermark_t")
        n = 0
        for _pos, logged in rec.tail:
            probes, now = self.durability.split_logged(logged)
            if self.durability.checkpoint_due(now, self.durability.logged_wall_s(logged),
                                              replay=True):
                self._checkpoint(now)
            self._apply(probes, now, None)
            n += 1
        self.durability.replayed_batches = n
        logger.info("replayed %d logged batches", n)

    def live_snapshot(self) -> tuple[float | None, pl.DataFrame]:
        with self._lock:  # not while a batch is being folded
            return self.estimator.live_snapshot()

    def _maybe_publish(self) -> None:
        pub = self.estimator.maybe_publish()
        if pub is not None:
            self._publish(pub)

    def _publish(self, pub: Publication) -> None:
        router = self.router
        if router is not None and pub.network_version == router.net.version:
            router.update(pub.version, pub.weights_t, pub.travel_time_s)

    def tick(self) -> None:
        with self._lock:
            now = self.now_s()
            for core in self.ingest_cores:
                reply = core.tick(now)
                self.estimator.fold(reply.batch, reply.n_matched)
            self._maybe_publish()

    def flush(self) -> None:
        with self._lock:
            for core in self.ingest_cores:
                reply = core.flush()
                self.estimator.fold(reply.batch, reply.n_matched)
            self._publish(self.estimator.publish())

    def status(self) -> dict[str, Any]:
        with self._lock:
            parts = [c.stats() for c in self.ingest_cores]
            est = self.estimator.stats()
            if self.durability is not None:
                est = {**est, "durability": self.durability.stats()}
        merged = self._merge_status(parts, est)
        router = self._current_router()
        return {
            "clock": self.config.clock,
            "watermark_t": merged["watermark_t"],
            "weights_version": router.router.weights_version,
            "weights_t": router.weights_t,
            "network_version": self.net.version,
            "probes": merged["probes"],
            "queues": {"ingest_inflight": 0, "fold_inflight": merged["fold_inflight"]},
            "coverage": {"edges_observed": est["coverage_edges"]},
            "workers": {"mode": "local", "ingest": parts, "estimator": est,
                        "router": router.stats()},
        }

    def _swap(self, net: RoadNetwork, prepared: RouterCore) -> int:
        with self._lock:
            for core in self.ingest_cores:
                reply = core.flush()
                self.estimator.fold(reply.batch, reply.n_matched)
            first = self.ingest_cores[0]
            first.swap_network(net)
            for core in self.ingest_cores[1:]:
                core.swap_network(net, index=first.matcher.index, ubodt=first.matcher.ubodt)
            carried = self.estimator.remap_to(net)
            pub = self.estimator.publish()
            prepared.update(pub.version, pub.weights_t, pub.travel_time_s)
            # The replaced router stops its query threads when its last in-flight query ends.
            self.net, self.router, self.loaded_at = net, prepared, time.time()
        return carried
