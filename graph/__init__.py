"""Road networks and routing: the model, loaders, spatial index and routing engines."""

from graph.errors import (
    NetworkError,
    NetworkFileNotFoundError,
    NetworkFormatError,
    NoCandidateError,
    NoDrivableRoadError,
    NoRouteError,
)
from graph.io import load_compiled, load_network, save_network
from graph.network import (
    DEFAULT_SPEED_KPH,
    EARTH_RADIUS_M,
    ROAD_CLASSES,
    TURN_NO,
    TURN_ONLY,
    RoadNetwork,
    banned_turns,
    build_network,
    haversine_m,
)

__all__ = [
    "DEFAULT_SPEED_KPH",
    "EARTH_RADIUS_M",
    "ROAD_CLASSES",
    "TURN_NO",
    "TURN_ONLY",
    "NetworkError",
    "NetworkFileNotFoundError",
    "NetworkFormatError",
    "NoCandidateError",
    "NoDrivableRoadError",
    "NoRouteError",
    "RoadNetwork",
    "banned_turns",
    "build_network",
    "haversine_m",
    "load_compiled",
    "load_network",
    "save_network",
]
