"""What the encryptor and the decryptor apps share: errors, limits, health, metrics and audit."""

from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AfterValidator, BaseModel, ConfigDict
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Lifespan, Message, Receive, Scope, Send

from crypto.errors import KeyManagerUnavailable
from kamus import __version__
from kamus.logs import audit
from kamus.metrics import Metrics, MetricsMiddleware
from kamus.settings import Settings

_AUDIT_SCOPE_KEY = "kamus.audit"


# The v2 batch APIs: values by name, answered per name (Vault's batch_input semantics).
def _not_empty(items: dict[str, str]) -> dict[str, str]:
    if not items:
        raise ValueError("send at least one item")
    return items


BatchItems = Annotated[dict[str, str], AfterValidator(_not_empty)]


def key_manager_unavailable(
    request: Request, exc: KeyManagerUnavailable, settings: Settings
) -> HTTPException:
    """The 503 for a KMS outage: the reason goes to the audit log, never to the caller."""
    annotate(request, reason=exc.reason)
    return HTTPException(
        503,
        "the key manager is unavailable; retry later",
        headers={"Retry-After": str(settings.server.retry_after_seconds)},
    )


def check_batch_size(request: Request, items: dict[str, str], settings: Settings) -> None:
    limit = settings.server.max_batch_items
    if len(items) > limit:
        annotate(request, reason=f"{len(items)} items, over the limit")
        raise HTTPException(
            413, f"items: at most {limit} per request (Server__MaxBatchItems); split the batch"
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
        fields: dict[str, Any] = {}
        scope[_AUDIT_SCOPE_KEY] = fields

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
                client = scope.get("client")
                audit(
                    f"{self.service} request",
                    service=self.service,
                    route=route,
                    source_ip=client[0] if client else None,
                    status=status,
                    outcome=_outcome(status),
                    **fields,
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
            raise HTTPException(
                413,
                f"the request body is over the {self.max_bytes}-byte limit "
                "(Server__MaxRequestBodyBytes); send a smaller secret",
            )

        await self.app(scope, limited_receive, send)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message = describe_validation_errors(exc.errors())
    annotate(request, reason=message)
    return JSONResponse({"detail": message}, status_code=400)


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
) -> FastAPI:
    app = FastAPI(
        lifespan=lifespan,
        title=title,
        description=description,
        version=__version__,
        # Kamus clients may omit Content-Type; the body is always JSON here.
        strict_content_type=False,
    )
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.server.max_request_body_bytes)
    app.add_middleware(AuditMiddleware, service=service, paths=frozenset(audited_paths))
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    if plain_healthz:

        @app.get("/healthz", tags=["health"], summary="The process is up")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def prometheus_metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
