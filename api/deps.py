"""FastAPI dependencies: the services and settings a handler needs, taken from ``app.state``.

``create_app(services, settings)`` stores both on the app; tests pass in-process services
(no Ray) and may still swap either through ``app.dependency_overrides``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from api.settings import Settings


# ``async def``: FastAPI runs a plain ``def`` dependency in its threadpool, a thread hand-over
# per dependency per request for what is an attribute read.
async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings


async def get_services(request: Request) -> Any:
    """The service facade (``workers.services.ServiceBase``: local or Ray pipeline)."""
    return request.app.state.services


async def get_metrics(request: Request) -> Any:
    """The app's metrics registry (``api.metrics.Metrics``)."""
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServicesDep = Annotated[Any, Depends(get_services)]
MetricsDep = Annotated[Any, Depends(get_metrics)]
