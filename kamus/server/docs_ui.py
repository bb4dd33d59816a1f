"""Swagger UI at ``/docs``, served from this package under a strict Content-Security-Policy.

The services often run in clusters with no way out to the internet, where FastAPI's page, which
loads Swagger UI from a CDN, is blank. Swagger UI's JS and CSS come from the
fastapi-offline package, which ships swagger-ui-dist's files; only their folder is looked up here,
nothing is imported or read until a browser asks, so a service that nobody browses pays nothing.
"""

import html
from importlib.util import find_spec
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

DOCS_PATH = "/docs"

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",  # swagger-ui.css draws its icons as data: images
        "connect-src 'self'",  # the OpenAPI document, and "Try it out"
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    )
)
DOCS_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}

_JS = "text/javascript; charset=utf-8"


def _swagger_ui_dist() -> Path:
    spec = find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the fastapi-offline package (Swagger UI's files) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


_DIST = _swagger_ui_dist()
# name under /docs/ -> (file, media type); nothing else is served, so no path reaches the disk.
_ASSETS = {
    "swagger-ui-bundle.js": (_DIST / "swagger-ui-bundle.js", _JS),
    "swagger-ui.css": (_DIST / "swagger-ui.css", "text/css; charset=utf-8"),
    "favicon.png": (_DIST / "favicon.png", "image/png"),
    "swagger-init.js": (Path(__file__).parent / "static" / "swagger-init.js", _JS),
}


def _page(title: str) -> str:
    # Relative references, so that the page also works behind a path prefix (root_path).
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)} - Swagger UI</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/favicon.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/swagger-init.js"></script>
</body>
</html>
"""


def add_docs(app: FastAPI) -> None:
    """Serve Swagger UI at ``/docs`` for ``app`` (built with ``docs_url=None``)."""
    page = _page(app.title)

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(page, headers=DOCS_HEADERS)

    @app.get(DOCS_PATH + "/{name}", include_in_schema=False)
    async def swagger_ui_asset(name: str) -> FileResponse:
        if name not in _ASSETS:
            raise HTTPException(404, "Not Found")
        path, media_type = _ASSETS[name]
        return FileResponse(path, media_type=media_type, headers=DOCS_HEADERS)
