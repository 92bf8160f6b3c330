"""Kept for old imports: the builders of the matcher's route distances under their old names.

The whole-network upper-bounded origin-destination table (FMM's UBODT) that lived here is
gone: its build was superlinear in the network (New York's 730k edges took 264 s and 2.25 GB).
Map matching now uses :class:`graph.route_distances.RouteDistances`, bounded searches run on
demand and cached. ``build_ubodt`` and ``load_or_build_ubodt`` return one at once; nothing is
precomputed and nothing is written. New code calls
:func:`graph.route_distances.build_route_distances`.
"""

from __future__ import annotations

from pathlib import Path

from graph.network import RoadNetwork
from graph.route_distances import DEFAULT_BOUND_M, RouteDistances, build_route_distances

__all__ = ["DEFAULT_BOUND_M", "UBODT", "build_ubodt", "load_or_build_ubodt"]

#: The older name of the object the matcher asks for road distances.
UBODT = RouteDistances


def build_ubodt(net: RoadNetwork, *, bound_m: float = DEFAULT_BOUND_M,
                chunk: int | None = None) -> RouteDistances:
    """Same as :func:`graph.route_distances.build_route_distances` (``chunk`` is ignored)."""
    return build_route_distances(net, bound_m=bound_m)


def load_or_build_ubodt(net: RoadNetwork, cache_dir: str | Path, *,
                        bound_m: float = DEFAULT_BOUND_M) -> RouteDistances:
    """Same as :func:`build_route_distances`: there is nothing to load or save any more, so
    ``cache_dir`` is not read or written."""
    return build_route_distances(net, bound_m=bound_m)
