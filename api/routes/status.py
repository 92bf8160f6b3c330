"""``GET /v1/status``, ``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from api.deps import MetricsDep, ServicesDep
from api.schemas import StatusOut

router = APIRouter(tags=["status"])


@router.get("/v1/status", response_model=StatusOut)
def get_status(services: ServicesDep) -> dict[str, Any]:
    """Accounting of every probe, queue depths, published versions and coverage."""
    return services.status()


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(services: ServicesDep) -> Any:
    """200 once a network is loaded and weights are published; 503 before."""
    if services.ready():
        return {"status": "ready", "network_version": services.net.version}
    return JSONResponse({"code": "not_ready", "message": "the service is still starting",
                         "details": None}, status_code=503, headers={"Retry-After": "1"})


@router.get("/metrics", include_in_schema=False)
def metrics(m: MetricsDep) -> Response:
    """Prometheus text exposition."""
    return Response(m.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
