"""The ASGI layers every service has: one that records each request (its audit line and its
metrics, from one capture of the status), and the request body limit."""

import time
from typing import Any

from fastapi import Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kamus.server.logs import audit
from kamus.server.metrics import Metrics
from kamus.server.web.problems import ApiError

_AUDIT_SCOPE_KEY = "kamus.audit"


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


class RecordingMiddleware:
    """Writes exactly one audit line per request to an audited route, whatever its outcome, and
    counts and times every request by route template (bounded cardinality)."""

    def __init__(
        self, app: ASGIApp, *, service: str, paths: frozenset[str], metrics: Metrics
    ) -> None:
        self.app = app
        self.service = service
        self.paths = paths
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()
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
            seconds = time.perf_counter() - start
            self.metrics.observe_request(route or "unmatched", scope["method"], status, seconds)


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
