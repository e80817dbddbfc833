"""GET /: the browser playground, a static page and its script, served by the app.

The files live in server/playground/ (no build step, nothing fetched from elsewhere).
They hold no data and no secret, so the guard lets them through without the API key;
the page asks for the key and sends it with each API call it makes.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

PLAYGROUND_DIR = Path(__file__).resolve().parent.parent / "playground"
#: Where the page's script and stylesheet are served (the guard's open prefix).
ASSETS_PATH = "/playground"

router = APIRouter(tags=["playground"])


@router.get("/", include_in_schema=False)
async def playground_page() -> FileResponse:
    return FileResponse(PLAYGROUND_DIR / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache"})


def assets() -> StaticFiles:
    """The page's script and stylesheet, mounted at ASSETS_PATH."""
    return StaticFiles(directory=PLAYGROUND_DIR)
