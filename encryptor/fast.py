"""``POST /api/v1/encrypt`` without the framework, for the request the encryptor mostly serves.

FastAPI's routing, dependency solving, validation plumbing and middleware were most of an
encrypt request's time, where the AES encryption itself is a few µs (docs/performance.md). This
layer, outside all of FastAPI's (``KamusApp.outer_middleware``), answers a well-formed JSON
encrypt request itself: it parses and validates the body with the same model, then runs the same
rate limit and the same handler as the route, and renders its errors (429, 400 for ``default``,
503) with the same function, and an unexpected exception as FastAPI's error layer does. It writes
the same audit line and the same metrics as the middleware stack.

Anything else (another route or method, a body over the limit, a body that is not a valid JSON
encrypt request, a client that disconnects) goes to the app with the body replayed as received,
so every other answer keeps exactly one source. tests/api/test_fast_encrypt.py sends the same
requests through both and compares the answers, audit lines and metrics.

Installed only where encrypting is cheap enough for the framework to matter: with caller
authentication off (a TokenReview costs milliseconds).
"""

import time
from collections.abc import Awaitable, Callable, Iterable

from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from encryptor.models import EncryptRequest
from kamus.server.metrics import Metrics
from kamus.server.web.middleware import audit_request
from kamus.server.web.problems import http_error_response

Handler = Callable[[Request, EncryptRequest], Awaitable[str]]


def _is_json(content_type: bytes | None) -> bool:
    """Whether FastAPI would parse this body as JSON (a subset: anything unusual is left to it)."""
    if content_type is None:
        return True  # the app is built with strict_content_type=False
    return content_type.split(b";", 1)[0].strip().lower() == b"application/json"


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` for the app: the messages already read, then the rest from the client."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


class FastEncrypt:
    def __init__(
        self,
        app: ASGIApp,
        *,
        paths: Iterable[str],
        handler: Handler,
        service: str,
        metrics: Metrics,
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.handler = handler
        self.service = service
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in self.paths
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        messages: list[Message] = []
        body = await self._read_body(scope, receive, messages)
        parsed = self._parse(scope, body) if body is not None else None
        if parsed is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        await self._answer(scope, receive, send, parsed, start)

    async def _read_body(self, scope: Scope, receive: Receive, read: list[Message]) -> bytes | None:
        """The whole body, or None where the app should answer (over the limit, disconnect)."""
        for name, value in scope["headers"]:
            if name == b"content-length" and (
                not value.isdigit() or int(value) > self.max_body_bytes
            ):
                return None
        chunks = []
        size = 0
        while True:
            message = await receive()
            read.append(message)
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _parse(self, scope: Scope, body: bytes) -> EncryptRequest | None:
        content_type = next((v for k, v in scope["headers"] if k == b"content-type"), None)
        if not body or not _is_json(content_type):
            return None
        try:
            # FastAPI parses with json.loads, then validates: pydantic-core's parser does both in
            # one pass, 2 µs sooner. Where the two parsers differ (a byte-order mark, UTF-16,
            # nesting past 200 levels) it fails, and the app answers; the differential test
            # compares the answers.
            return EncryptRequest.model_validate_json(body)
        except Exception:  # the app renders every kind of bad body
            return None

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, body: EncryptRequest, start: float
    ) -> None:
        status = 500  # what the audit line and the metrics say if the handler raises
        try:
            request = Request(scope, receive)
            try:
                response: Response = PlainTextResponse(await self.handler(request, body))
            except HTTPException as exc:
                response = http_error_response(request, exc)
            except Exception:
                # What FastAPI's ServerErrorMiddleware answers (debug off), before the exception
                # goes on to uvicorn, which logs it: this layer runs outside FastAPI's.
                await PlainTextResponse("Internal Server Error", 500)(scope, receive, send)
                raise
            status = response.status_code
            await response(scope, receive, send)
        finally:
            path = scope["path"]
            self.metrics.observe_request(path, "POST", status, time.perf_counter() - start)
            audit_request(self.service, path, scope, status)
