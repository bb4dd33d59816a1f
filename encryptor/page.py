"""``GET /ui``: the encrypt page, a static page served by the encryptor (docs/ui.md).

Three files from ``encryptor/ui/`` and one JSON document, nothing else: no third-party asset, font
or CDN. The page posts to this encryptor's own ``/api/v1/encrypt`` (same origin: no CORS), keeps
nothing in the browser, and is served under a Content-Security-Policy that allows only its own
script and style files and requests to its own origin, so an injected inline script never runs.
``Encryptor__Ui=false`` (chart: ``encryptor.ui.enabled``) turns it off.
"""

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from crypto.bundle import BundleError
from crypto.errors import KeyManagerUnavailable
from kamus.server.identity import DEFAULT_SERVICE_ACCOUNT_REFUSAL
from kamus.server.sealing import BundleSource

UI_PATH = "/ui"
_FILES = Path(__file__).parent / "ui"
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Nothing of the page, and no answer it gets, is kept by the browser or a proxy.
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
# name under /ui/ -> (file, media type); nothing else is served, so no path reaches the disk.
_ASSETS = {
    "ui.js": ("ui.js", "text/javascript; charset=utf-8"),
    "ui.css": ("ui.css", "text/css; charset=utf-8"),
    "favicon.svg": ("favicon.svg", "image/svg+xml"),
}


def _file(name: str, media_type: str) -> FileResponse:
    return FileResponse(_FILES / name, media_type=media_type, headers=HEADERS)


def page_info(
    source: BundleSource | None, authentication: str, max_request_bytes: int
) -> dict[str, object]:
    """What the page shows beside the form: whether callers send a token, with sealing keys the
    key new values are sealed to and the anchor that signs them, to compare with a pin, and the
    body limit, so that a file over it is refused before the browser sends it."""
    sealing: dict[str, str] | None = None
    if source is not None:
        try:
            loaded = source.current().bundle
            sealing = {
                "keyId": loaded.sealing_key(datetime.now(UTC)).kid,
                "anchor": loaded.anchor,
                "cluster": loaded.cluster,
            }
        except (KeyManagerUnavailable, BundleError):
            sealing = None
    return {
        "authentication": authentication,
        "sealing": sealing,
        "defaultServiceAccount": DEFAULT_SERVICE_ACCOUNT_REFUSAL,
        "maxRequestBytes": max_request_bytes,
    }


router = APIRouter(include_in_schema=False)


@router.get(UI_PATH)
async def index() -> FileResponse:
    return _file("index.html", "text/html; charset=utf-8")


@router.get(UI_PATH + "/info.json")
async def info(request: Request) -> JSONResponse:
    state = request.app.state.encryptor
    settings = state.settings
    body = page_info(
        state.bundle, settings.encryptor.authentication, settings.server.max_request_body_bytes
    )
    return JSONResponse(body, headers=HEADERS)


@router.get(UI_PATH + "/")
async def with_slash() -> RedirectResponse:
    # Relative, unlike the router's own slash redirect (an absolute URL from the Host header):
    # behind an ingress that serves the encryptor under a path prefix, "../ui" keeps the prefix.
    return RedirectResponse("../ui", status_code=308, headers=HEADERS)


def _asset(file_name: str, media_type: str) -> Callable[[], Awaitable[FileResponse]]:
    # A closure, not default arguments: FastAPI would read those from the query string.
    async def asset() -> FileResponse:
        return _file(file_name, media_type)

    return asset


for _name, (_file_name, _media) in _ASSETS.items():
    router.add_api_route(f"{UI_PATH}/{_name}", _asset(_file_name, _media), methods=["GET"])


def add_ui(app: FastAPI) -> None:
    app.include_router(router)
