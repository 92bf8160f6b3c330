"""The Ray pipeline: ingest actors per vehicle partition -> one estimator actor -> routers.

:class:`RayPipeline` is :class:`workers.services.Services` with
:class:`workers.stages.RayStages`: the same facade, checkpoints and recovery as the
in-process service; the stages are the same plain cores with ``ray.remote`` applied at the
construction site. The network goes through the object store once; each publication's
travel-time vector is put once and router replicas pull that ref. Ingest replies carry
their traversal batches, which the facade hands to the estimator actor in log order
(:class:`workers.stages.FoldQueue`, bounded in flight); the facade bounds in-flight ingest calls per partition and
answers :class:`workers.services.Overloaded` (HTTP 503) when they are full, before taking
anything.
"""

from __future__ import annotations

from typing import Any

from graph.network import RoadNetwork
from workers.config import PipelineConfig
from workers.services import Services
from workers.stages import RayStages, gpu_available

__all__ = ["RayPipeline", "gpu_available"]


class RayPipeline(Services):
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
        super().__init__(net, config or PipelineConfig(), stages=RayStages(ray_address),
                         prior=prior)
