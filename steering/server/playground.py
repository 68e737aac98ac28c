"""The browser playground: ``GET /`` and ``/static/*``, files shipped in ``steering/server/static``.

Plain HTML, CSS and JavaScript with no build step and nothing fetched from
elsewhere: the page talks only to this server's API, same origin (the server
sends no CORS headers). The files themselves need no API key (they hold no
data); the page asks for the key when the API answers 401 and keeps it in
``sessionStorage`` for the tab.

A strict Content-Security-Policy says the same to the browser: scripts,
styles, images and connections come from this origin only.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def add_playground(app: FastAPI) -> None:
    """Serve the playground page at ``/`` and its assets under ``/static``."""
    if not (STATIC / "index.html").is_file():
        raise FileNotFoundError(f"{STATIC / 'index.html'} is missing: the package was installed without its static files")

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
