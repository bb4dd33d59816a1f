"""What the encryptor and the decryptor apps share: errors, limits, health, metrics and audit."""

from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Lifespan, Message, Receive, Scope, Send

from crypto.errors import KeyManagerUnavailable
from kamus import __version__
from kamus.server.docs_ui import add_docs
from kamus.server.logs import audit
from kamus.server.metrics import Metrics, MetricsMiddleware
from kamus.server.settings import Settings

_AUDIT_SCOPE_KEY = "kamus.audit"

# -- errors ----------------------------------------------------------------------------------
#
# The v2 APIs answer errors as RFC 9457 problem details, each kind with a stable `type` (listed
# in docs/errors.md) that clients can branch on. The v1 APIs keep the bodies Kamus clients know.

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:kamus:problem:"
_PROBLEM_PATH_PREFIXES = ("/api/v2/",)

# kind -> title; the title is the same for every problem of a kind (RFC 9457 3.1.3).
PROBLEMS = {
    "invalid-request": "The request is invalid",
    "missing-token": "No service account token",
    "token-rejected": "Kubernetes did not accept the token",
    "not-a-service-account": "The caller is not a service account",
    "default-service-account": "The default service account is not allowed",
    "not-allowed-to-encrypt": "The caller may not encrypt for this namespace",
    "no-key": "The service account has no key",
    "undecryptable": "The data cannot be decrypted",
    "too-many-items": "Too many items",
    "body-too-large": "The request body is too large",
    "rate-limited": "Too many requests",
    "kubernetes-unavailable": "The Kubernetes API is unavailable",
    "busy": "The service is busy",
    "key-manager-unavailable": "The key manager is unavailable",
    "starting": "The service is starting",
    "not-found": "Not found",
    "method-not-allowed": "Method not allowed",
    "error": "Error",
}
_KIND_BY_STATUS = {
    400: "invalid-request",
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
    429: "rate-limited",
}


class ApiError(HTTPException):
    """An HTTP error of a known kind (a key of :data:`PROBLEMS`)."""

    def __init__(
        self, status: int, kind: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        assert kind in PROBLEMS, kind
        super().__init__(status, detail, dict(headers) if headers else None)
        self.kind = kind


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(
        description=f"The kind of error, a stable URI: {PROBLEM_TYPE_PREFIX}<kind>, see "
        "docs/errors.md.",
        examples=[f"{PROBLEM_TYPE_PREFIX}token-rejected"],
    )
    title: str = Field(description="A summary of the kind of error.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong with this request, and how to fix it.")


def problem_responses(descriptions: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a v2 route: each error status as problem details."""
    return {
        status: {
            "description": description,
            "model": Problem,  # puts Problem in the components, for the $ref
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status, description in descriptions.items()
    }


def _wants_problem(request: Request) -> bool:
    return request.url.path.startswith(_PROBLEM_PATH_PREFIXES)


def error_response(
    request: Request, status: int, detail: str, kind: str | None, headers: Mapping[str, str] | None
) -> JSONResponse:
    if not _wants_problem(request):
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)
    kind = kind or _KIND_BY_STATUS.get(status, "error")
    problem = Problem(
        type=PROBLEM_TYPE_PREFIX + kind, title=PROBLEMS[kind], status=status, detail=detail
    )
    return JSONResponse(
        problem.model_dump(), status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE
    )


def http_error_response(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """The answer to an HTTP error raised by a handler (an :class:`ApiError` or Starlette's)."""
    return error_response(
        request, exc.status_code, str(exc.detail), getattr(exc, "kind", None), exc.headers
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return http_error_response(request, exc)


# The v2 batch APIs: values by name, answered per name (Vault's batch_input semantics).
def _valid_items(items: dict[str, str]) -> dict[str, str]:
    if not items:
        raise ValueError("send at least one item")
    for name in items:
        # JSON can escape lone surrogates (\ud800) that no UTF-8 text holds: such names would
        # come back mangled, two of them under one name.
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("item names must be UTF-8 text (no lone surrogates)") from None
    return items


BatchItems = Annotated[dict[str, str], AfterValidator(_valid_items)]


class Readiness(BaseModel):
    status: str = Field(description="ready, starting or unavailable", examples=["ready"])
    unavailable: list[str] | None = Field(
        None, description="What does not answer: kubernetes, key-manager."
    )


READINESS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "Ready."},
    503: {"model": Readiness, "description": "Starting, or a dependency does not answer."},
}


def key_manager_unavailable(
    request: Request, exc: KeyManagerUnavailable, settings: Settings
) -> HTTPException:
    """The 503 for a KMS outage: the reason goes to the audit log, never to the caller."""
    annotate(request, reason=exc.reason)
    return ApiError(
        503,
        "key-manager-unavailable",
        "the key manager is unavailable; retry later",
        headers={"Retry-After": str(settings.server.retry_after_seconds)},
    )


def check_batch_size(request: Request, items: dict[str, str], settings: Settings) -> None:
    limit = settings.server.max_batch_items
    if len(items) > limit:
        annotate(request, reason=f"{len(items)} items, over the limit")
        raise ApiError(
            413,
            "too-many-items",
            f"items: at most {limit} per request (Server__MaxBatchItems); split the batch",
        )


class BatchItem(BaseModel):
    """One answer: the value, or why this one failed (the others still succeed)."""

    model_config = ConfigDict(extra="forbid")
    data: str | None = None
    error: str | None = None


class BatchResponse(BaseModel):
    items: dict[str, BatchItem]


_FRIENDLY = {
    "missing": "is required",
    "string_type": "must be a string",
}


def describe_validation_errors(errors: Iterable[Any]) -> str:
    """A 400 message naming each bad field, without ever echoing the submitted value."""
    problems = []
    for error in errors:
        loc = [str(part) for part in error["loc"] if part != "body"]
        if error["type"] == "json_invalid":
            return "the request body is not valid JSON"
        if not loc:
            return "the request body must be a JSON object (send Content-Type: application/json)"
        message = _FRIENDLY.get(error["type"], str(error["msg"]).removeprefix("Value error, "))
        problems.append(f"{'.'.join(loc)}: {message}")
    return "; ".join(problems)


def annotate(request: Request, **fields: Any) -> None:
    """Add fields to this request's audit line (identities and reasons only, never data)."""
    request.scope.setdefault(_AUDIT_SCOPE_KEY, {}).update(fields)


def _outcome(status: int) -> str:
    if status < 400:
        return "success"
    if status in (401, 403):
        return "denied"
    if status == 503:
        return "unavailable"
    return "rejected" if status < 500 else "error"


class AuditMiddleware:
    """Writes exactly one audit line per request to an audited route, whatever its outcome."""

    def __init__(self, app: ASGIApp, service: str, paths: frozenset[str]) -> None:
        self.app = app
        self.service = service
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        scope[_AUDIT_SCOPE_KEY] = {}

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route in self.paths:
                audit_request(self.service, route, scope, status)


def audit_request(service: str, route: str, scope: Scope, status: int) -> None:
    """The audit line of one answered request, with the fields :func:`annotate` added."""
    client = scope.get("client")
    audit(
        f"{service} request",
        service=service,
        route=route,
        source_ip=client[0] if client else None,
        status=status,
        outcome=_outcome(status),
        **scope.get(_AUDIT_SCOPE_KEY, {}),
    )


class BodyLimitMiddleware:
    """413, with a message naming the limit, for a declared or a streamed body over it.

    The check runs when the handler first reads the body, not on arrival: by then the route is
    matched, so the 413 is counted and audited under its route.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        too_large = declared.isdigit() and int(declared) > self.max_bytes
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if not too_large:
                message = await receive()
                received += len(message.get("body", b""))
                if received <= self.max_bytes:
                    return message
            # An HTTPException passes through FastAPI's body parsing to its exception handler.
            raise ApiError(
                413,
                "body-too-large",
                f"the request body is over the {self.max_bytes}-byte limit "
                "(Server__MaxRequestBodyBytes); send a smaller secret",
            )

        await self.app(scope, limited_receive, send)


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
    app.add_middleware(AuditMiddleware, service=service, paths=frozenset(audited_paths))
    app.add_middleware(MetricsMiddleware, metrics=metrics)

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
