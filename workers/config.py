"""How the pipeline runs: :class:`PipelineConfig`, built once by the entry point
(``traffic serve``), and where the learned time-of-week profile lives under ``--data-dir``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from graph.network import RoadNetwork
from workers.estimator import EstimatorServiceConfig
from workers.ingest import IngestConfig

logger = logging.getLogger(__name__)


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
    route_bias, route_bias_tau_s, route_bias_max_trips
        The routers' learned optimism (``workers.router``): on or off, its time constant
        (s of event time) and the probe trips an ingest reply, a publication and so one
        learning step of a router carry at most (the newest kept).
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
    #: Estimator shards (``workers.shards``): the speed state and its profile split by
    #: segment over this many stages; 1: one estimator, as before.
    estimator_shards: int = 1
    route_bias: bool = True
    route_bias_tau_s: float = 1800.0
    route_bias_max_trips: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.estimator_shards, int) or self.estimator_shards < 1:
            raise ValueError(f"`estimator_shards` must be an integer >= 1; got "
                             f"{self.estimator_shards!r}")
        if not isinstance(self.route_bias_max_trips, int) or self.route_bias_max_trips < 0:
            raise ValueError(f"`route_bias_max_trips` must be an integer >= 0; got "
                             f"{self.route_bias_max_trips!r}")
        self.route_bias_config()  # validates route_bias_tau_s

    def route_bias_config(self) -> Any:
        """The routers' ``traffic.route_bias.RouteBiasConfig`` (``None``: off)."""
        from traffic.route_bias import RouteBiasConfig

        return RouteBiasConfig(tau_s=self.route_bias_tau_s) if self.route_bias else None

    def route_trips_max(self) -> int:
        """Probe trips per ingest reply and per publication (0 with ``route_bias`` off)."""
        return self.route_bias_max_trips if self.route_bias else 0

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
        """The ingest stage's configuration (with this pipeline's cache directory and
        route-trip bound)."""
        cfg = self.ingest
        if cfg.route_trips_max != self.route_trips_max():
            cfg = replace(cfg, route_trips_max=self.route_trips_max())
        if cfg.cache_dir is None and self.cache_dir is not None:
            return replace(cfg, cache_dir=str(Path(self.cache_dir)))
        return cfg


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
