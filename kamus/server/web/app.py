"""The FastAPI skeleton of every service: error handlers, middleware, /healthz, /metrics and
/docs, and room for ASGI layers outside FastAPI's own."""

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Lifespan

from kamus import __version__
from kamus.server.docs_ui import add_docs
from kamus.server.metrics import Metrics
from kamus.server.settings import Settings
from kamus.server.web.middleware import BodyLimitMiddleware, RecordingMiddleware, annotate
from kamus.server.web.problems import (
    PROBLEM_MEDIA_TYPE,
    describe_validation_errors,
    error_response,
    http_error_response,
)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return http_error_response(request, exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message = describe_validation_errors(exc.errors())
    annotate(request, reason=message)
    return error_response(request, 400, message, "invalid-request", None)


def _tidy_openapi(app: FastAPI) -> None:
    """FastAPI documents a 422 for every body, but invalid input is a 400 here; and a problem
    response's ``model`` also adds it as application/json, which it never is."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    responses.pop("422", None)
                    for response in responses.values():
                        if PROBLEM_MEDIA_TYPE in response.get("content", {}):
                            response["content"].pop("application/json", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class KamusApp(FastAPI):
    """FastAPI, with room for ASGI layers outside all of its own.

    ``user_middleware`` runs inside FastAPI's error, telemetry and body-limit layers, a few µs a
    request; a layer in ``outer_middleware`` runs before them and answers its own errors
    (encryptor/fast.py).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outer_middleware: list[Callable[[ASGIApp], ASGIApp]] = []

    def build_middleware_stack(self) -> ASGIApp:
        app = super().build_middleware_stack()
        for wrap in reversed(self.outer_middleware):
            app = wrap(app)
        return app


def create_base_app(
    *,
    service: str,
    title: str,
    description: str,
    settings: Settings,
    metrics: Metrics,
    audited_paths: Iterable[str],
    lifespan: Lifespan[FastAPI] | None = None,
    plain_healthz: bool = True,
) -> KamusApp:
    app = KamusApp(
        lifespan=lifespan,
        title=title,
        description=description,
        version=__version__,
        # Kamus clients may omit Content-Type; the body is always JSON here.
        strict_content_type=False,
        # FastAPI's own OpenTelemetry hooks record exception messages and validation failures,
        # which can quote a request's secret, to whatever provider an operator configures; the
        # audit log and /metrics are this service's telemetry. Off, they also cost nothing per
        # request (their check read the environment three times on every request).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        # FastAPI's pages load Swagger UI and ReDoc from a CDN, and run inline scripts: /docs is
        # served from this package instead (kamus/server/docs_ui.py), ReDoc and the OAuth2 page
        # not at all.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    _tidy_openapi(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.server.max_request_body_bytes)
    app.add_middleware(
        RecordingMiddleware, service=service, paths=frozenset(audited_paths), metrics=metrics
    )

    if plain_healthz:

        @app.get("/healthz", tags=["health"], summary="The process is up")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"description": "The Prometheus text format."}},
    )
    async def prometheus_metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    add_docs(app)
    return app
