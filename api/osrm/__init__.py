"""An OSRM HTTP API v5 compatible facade beside ``/v1`` (``/route``, ``/table``, ``/nearest``,
``/match``), answering on the same services, weights and roles. See :mod:`api.osrm.routes`."""

from api.osrm.routes import router

__all__ = ["router"]
