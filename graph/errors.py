"""Exceptions raised by the road-network side; each names the input and what is wrong."""

from __future__ import annotations


class NetworkError(Exception):
    """Base class for road-network errors a user can act on."""


class NetworkFileNotFoundError(NetworkError, FileNotFoundError):
    """The network file does not exist or cannot be read."""


class NetworkFormatError(NetworkError, ValueError):
    """The input is not a valid network (wrong format, truncated, out-of-range values)."""


class NoDrivableRoadError(NetworkError, ValueError):
    """The input parsed, but holds no road a car may drive on."""


class NoCandidateError(NetworkError, LookupError):
    """No road lies within the snapping distance of a point."""


class NoRouteError(NetworkError, LookupError):
    """The destination cannot be reached from the origin."""
