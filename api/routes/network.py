"""``GET/PUT /v1/network`` and ``GET /v1/network/jobs/{id}``: the serving road network."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import ServicesDep, SettingsDep
from api.errors import ApiError
from api.schemas import NetworkJobOut, NetworkOut
from workers.services import UnknownJob

router = APIRouter(prefix="/v1/network", tags=["network"])


@router.get("", response_model=NetworkOut)
def get_network(services: ServicesDep) -> dict[str, Any]:
    """The serving network's version, size and extent."""
    return services.network_info()


@router.put("", status_code=202, response_model=NetworkJobOut,
            openapi_extra={"requestBody": {"content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}, "required": True}})
async def put_network(request: Request, services: ServicesDep, settings: SettingsDep) -> Any:
    """Upload a network file (``.osm.pbf``, OSM XML, GeoJSON or compiled) as the raw body.

    Answers 202 with a job: it imports the file, prepares routing and swaps it in with no
    failed query; a bad file leaves the serving network and the job says why.
    """
    fd, path = tempfile.mkstemp(prefix="upload-", suffix=".net", dir=services.upload_dir())
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise ApiError(413, "too_big",
                                   f"network upload above {settings.max_upload_bytes} bytes")
                out.write(chunk)
        if size == 0:
            raise ApiError(422, "invalid_value", "the request body (the network file) is empty")
    except BaseException:
        os.unlink(path)
        raise
    job = services.submit_network(path)
    return JSONResponse(job.to_json(), status_code=202,
                        headers={"Location": f"/v1/network/jobs/{job.id}"})


@router.get("/jobs/{job_id}", response_model=NetworkJobOut)
def get_job(job_id: str, services: ServicesDep) -> dict[str, Any]:
    """A network upload job's state."""
    try:
        return services.job(job_id).to_json()
    except UnknownJob as exc:
        raise ApiError(404, "not_found", str(exc)) from exc
