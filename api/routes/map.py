"""``GET /``: the live congestion map page, and its script and style sheet under ``/map/``.

The page is plain HTML, CSS and JavaScript of our own in ``api/static/`` (no third-party
library, no tiles, no CDN): it draws the network's roads on a canvas from
``GET /v1/congestion`` (roads closed or slowed by operators drawn dashed over their colour,
listed from ``GET /v1/closures``) and asks ``/v1/congestion/history``, ``/v1/route`` (with
``alternatives`` and ``steps``: the routes drawn and listed, the chosen one's steps in the
panel) and ``/v1/isochrone`` (contours filled under the roads) on clicks.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.errors import ApiError

router = APIRouter(tags=["map"])

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_ASSETS = {"map.js": "text/javascript; charset=utf-8", "map.css": "text/css; charset=utf-8"}


@router.get("/", include_in_schema=False)
def map_page() -> FileResponse:
    """The live map page."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})


@router.get("/map/{asset}", include_in_schema=False)
def map_asset(asset: str) -> FileResponse:
    """The page's script or style sheet (only the files named in ``_ASSETS``)."""
    media = _ASSETS.get(asset)
    if media is None:
        raise ApiError(404, "not_found", f"no map asset named {asset!r}")
    return FileResponse(STATIC_DIR / asset, media_type=media, headers={"Cache-Control": "no-cache"})
