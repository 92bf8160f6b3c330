"""``/v1/closures``: operators close roads or slow them down for a time window.

``POST`` (role ``operator`` or ``network-admin``) takes ``{geometry, kind, factor?, start_t?,
end_t, reason?, direction?}`` and answers 201 with the closure and its ``id``; it is in force
on routes, tables and ETAs before the answer. ``GET`` lists the closures not yet ended (any
reader). ``DELETE /v1/closures/{id}`` (same roles) answers 204. Times are unix seconds on
the service's clock (wall, or event time under ``--clock event``). See
:mod:`traffic.closures` for how a geometry selects road segments.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ServicesDep
from api.errors import ApiError
from traffic.closures import ClosureError
from workers.services import UnknownClosure

router = APIRouter(prefix="/v1/closures", tags=["closures"])


class ClosureIn(BaseModel):
    """A closure or slowdown to put in force."""

    model_config = ConfigDict(extra="forbid")

    geometry: dict[str, Any] = Field(description="GeoJSON LineString (roads along it, within "
                                                 "20 m) or Polygon (roads inside it), or "
                                                 "`{edge_keys: [...]}`")
    kind: Literal["closure", "slowdown"]
    factor: float | None = Field(None, description="slowdown: travel time multiplier (> 1)")
    start_t: float | None = Field(None, description="unix s on the service clock; "
                                                    "default now")
    end_t: float = Field(description="unix s on the service clock; it ends by itself then")
    reason: str = ""
    direction: Literal["both", "forward"] = Field(
        "both", description="LineString only: `forward` closes the line's direction only")


@router.post("", status_code=201)
def post_closure(body: ClosureIn, services: ServicesDep) -> dict[str, Any]:
    """Put a closure or slowdown in force; answers it with its ``id``."""
    raw = body.model_dump(exclude_none=True)
    try:
        return services.add_closure(raw)
    except ClosureError as exc:
        raise ApiError(422, "invalid_value", str(exc)) from None


@router.get("")
def get_closures(services: ServicesDep) -> dict[str, Any]:
    """Closures not yet ended, with the number of road segments each covers."""
    return {"closures": services.list_closures()}


@router.delete("/{closure_id}", status_code=204)
def delete_closure(closure_id: str, services: ServicesDep) -> Response:
    """End a closure now."""
    try:
        services.remove_closure(closure_id)
    except UnknownClosure as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return Response(status_code=204)
