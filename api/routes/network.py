"""``GET/PUT /v1/network`` and ``GET /v1/network/jobs/{id}``: the serving road network."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import ServicesDep, SettingsDep
from api.errors import ApiError
from api.schemas import NetworkJobOut, NetworkOut
from api.uploads import save_upload
from workers.services import UnknownJob

router = APIRouter(prefix="/v1/network", tags=["network"])


@router.get("", response_model=NetworkOut)
def get_network(services: ServicesDep) -> dict[str, Any]:
    """The serving network's version, size and extent."""
    return services.network_info()


_UPLOAD_DOC = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary"}}}},
}}}


@router.put("", status_code=202, response_model=NetworkJobOut, openapi_extra=_UPLOAD_DOC)
async def put_network(request: Request, services: ServicesDep, settings: SettingsDep) -> Any:
    """Upload a network file (``.osm.pbf``, OSM XML, GeoJSON or compiled): the raw body
    (``application/octet-stream``) or the ``file`` field of a multipart form.

    Needs an API key with role ``network-admin`` (checked before the body is read). The file
    is stored under the data directory with a generated name. Answers 202 with a job: it
    imports the file, prepares routing and swaps it in with no failed query; a bad file
    leaves the serving network and the job says why.
    """
    path, _ = await save_upload(request, services.upload_dir(),
                                max_bytes=settings.max_upload_bytes)
    job = services.submit_network(path)
    return JSONResponse(job.to_json(), status_code=202,
                        headers={"Location": f"/v1/network/jobs/{job.id}"})


@router.get("/jobs/{job_id}", response_model=NetworkJobOut)
def get_job(job_id: str, services: ServicesDep) -> dict[str, Any]:
    """A network upload job's state."""
    try:
        job = services.job(job_id)
    except UnknownJob as exc:
        raise ApiError(404, "not_found", str(exc)) from exc
    out = job.to_json()
    if out.get("error") and job.path:
        # Loader messages name the file; the server's upload path is not the client's business.
        message = str(out["error"].get("message", "")).replace(str(job.path), "the uploaded file")
        out["error"] = {**out["error"], "message": message}
    return out
