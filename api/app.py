"""The FastAPI application factory: ``create_app(services, settings)``; no app at import time.

``services`` is the facade over the pipeline (``workers.services.LocalServices`` in process,
``workers.pipeline.RayPipeline`` on Ray); the app only translates HTTP to calls on it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import register_error_handlers
from api.limits import LimitsMiddleware
from api.metrics import Metrics
from api.osrm import router as osrm_router
from api.routes import match, network, probes, routing, status
from api.security import AuthMiddleware, warn_if_open
from api.settings import Settings
from api.strict import StrictQueryMiddleware
from graph.query_threads import CallerQueries
from workers.services import NotReady


class _MetricsMiddleware:
    """Times every HTTP request and counts it by matched route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        code = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")
            self.metrics.observe(name, scope["method"], code, time.perf_counter() - t0)


def create_app(services: Any, settings: Settings | None = None, *,
               close_services: bool = False) -> FastAPI:
    """Build the app over ``services``.

    Parameters
    ----------
    services
        The service facade; started (its housekeeping thread) when the app starts.
    settings
        HTTP limits and behaviour.
    close_services
        Close ``services`` when the app shuts down (the server owns them); tests that
        share services across apps leave it off.
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warn_if_open(settings.api_keys)
        services.start()
        # RoutingKit query objects of the loop thread (GET /v1/route searches there): made,
        # used and, at shutdown, dropped on this thread.
        app.state.route_queries = CallerQueries()
        try:
            yield
        finally:
            app.state.route_queries.close()
        if close_services:
            services.close()

    app = FastAPI(title=settings.title, version="0.1.0", lifespan=lifespan,
                  description="Live traffic: probes in, speeds, routes and ETAs out.")
    app.state.services = services
    app.state.settings = settings
    app.state.metrics = Metrics(services.status)
    register_error_handlers(app)

    @app.exception_handler(NotReady)
    async def _not_ready(request: Any, exc: NotReady) -> Any:
        from fastapi.responses import JSONResponse

        return JSONResponse({"code": "not_ready", "message": str(exc), "details": None},
                            status_code=503, headers={"Retry-After": "1"})

    for module in (routing, probes, network, status, match):
        app.include_router(module.router)
    _include_congestion_and_map(app)
    app.include_router(osrm_router)  # OSRM v5 compatible facade beside /v1 (api/osrm)

    @app.get("/v1/noop", include_in_schema=False)
    def noop() -> dict[str, bool]:
        """Does nothing: the baseline the route benchmark compares against."""
        return {"ok": True}

    # Outermost last: metrics see every answer; keys are checked before limits count a
    # caller's rate, and both answer before the body is read.
    # Unknown query parameters on /v1 are 422s before any handler (api/strict.py; unknown
    # body fields: the body models forbid them).
    app.add_middleware(StrictQueryMiddleware, schema=app.openapi)
    app.add_middleware(LimitsMiddleware, limits=settings.limits())
    app.add_middleware(AuthMiddleware, keys=settings.api_keys,
                       protect_reads=settings.protect_reads)
    app.add_middleware(_MetricsMiddleware, metrics=app.state.metrics)
    return app


def _include_congestion_and_map(app: FastAPI) -> None:
    """Analysts' routes: ``/v1/congestion*`` and the live map page at ``/``."""
    from api.routes import closures, congestion, isochrone, map as map_page, speeds

    app.include_router(closures.router)
    app.include_router(speeds.router)
    app.include_router(isochrone.router)
    app.include_router(congestion.router)
    app.include_router(map_page.router)
