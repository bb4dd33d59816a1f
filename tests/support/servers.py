"""Test servers on 127.0.0.1: an ASGI app under uvicorn in a thread, stoppable and restartable on
the same port (stopping it is how a test makes a dependency unreachable)."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import trustme
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send


class ThreadedServer:
    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        lifespan: Literal["on", "off"] = "off",
    ) -> None:
        self.app = app
        self.lifespan = lifespan
        self.host = host
        self.port = port
        self.ssl_certfile: str | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            log_level="warning",
            lifespan=self.lifespan,
            ssl_certfile=self.ssl_certfile,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None


@dataclass
class Quota:
    """A KMS request quota: at most ``per_second * window_seconds`` calls admitted in any
    window of ``window_seconds`` (a sliding window: no double burst where two windows meet), the
    rest answered as the real service throttles (``status``, ``body``, and ``Retry-After`` when
    ``retry_after`` is set, as Key Vault sends it). Only the requests ``when`` selects count
    (crypto calls; not key lookups or creation); ``per_second`` None admits all and only
    counts. ``admitted`` and ``throttled`` are what the bench and tests read.

    Throttled calls take no slot, as at AWS, Google and Azure: a client retrying fast does not
    push the window further out."""

    per_second: float | None
    status: int = 429
    body: Any = None
    retry_after: bool = False
    window_seconds: float = 1.0
    when: Callable[[Request], bool] = lambda request: True
    clock: Callable[[], float] = time.monotonic
    admitted: int = 0
    throttled: int = 0

    def __post_init__(self) -> None:
        self._admitted_at: deque[float] = deque()
        # The doubles answer on their server's thread; the bench reads the counts from another.
        self._lock = threading.Lock()

    @property
    def limit(self) -> int | None:
        """Calls admitted per window, or None when unlimited."""
        if self.per_second is None:
            return None
        return max(1, int(self.per_second * self.window_seconds))

    def take(self) -> bool:
        """Whether one more call is admitted now; counts it either way."""
        with self._lock:
            now = self.clock()
            while self._admitted_at and self._admitted_at[0] <= now - self.window_seconds:
                self._admitted_at.popleft()
            limit = self.limit
            if limit is not None and len(self._admitted_at) >= limit:
                self.throttled += 1
                return False
            self._admitted_at.append(now)
            self.admitted += 1
            return True

    def admit(self, request: Request) -> bool:
        """:meth:`take` for a request ``when`` selects; any other request is always admitted."""
        return not self.when(request) or self.take()

    def seconds_until_free(self) -> float:
        """How long until the oldest call in the window leaves it (0 if there is room)."""
        with self._lock:
            limit = self.limit
            if limit is None or len(self._admitted_at) < limit:
                return 0.0
            return max(0.0, self._admitted_at[0] + self.window_seconds - self.clock())

    def refusal(self) -> Response:
        """The throttling answer, in the service's own shape."""
        headers = {}
        if self.retry_after:  # whole seconds, at least 1, as Key Vault sends them
            headers["Retry-After"] = str(max(1, math.ceil(self.seconds_until_free())))
        return Response(
            json.dumps(self.body),
            status_code=self.status,
            headers=headers,
            media_type="application/json",
        )

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "crypto_calls": self.admitted + self.throttled,
                "admitted": self.admitted,
                "throttled": self.throttled,
            }


@dataclass
class Faults:
    """What a double does wrong, set by the test: answer late, or answer with an error."""

    delay_seconds: float = 0.0
    fail_status: int | None = None
    fail_body: Any = None
    fail_headers: dict[str, str] | None = None
    remaining: int | None = None  # fail only this many requests, then recover
    when: Callable[[Request], bool] | None = None  # fail only the requests this selects
    quota: Quota | None = None  # the service's request quota: over it, its throttling answer

    def take(self, request: Request) -> bool:
        """Whether this request fails."""
        if self.fail_status is None or (self.when is not None and not self.when(request)):
            return False
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


def install_faults(
    app: FastAPI,
    get: Callable[[], Faults],
    *,
    error_body: Callable[[int], Any],
    on_request: Callable[[Request], None] = lambda request: None,
    exempt_prefix: str = "/_double/",
) -> None:
    """Middleware applying ``get()`` to every request but control calls. A failure answers
    ``fail_body``, or ``error_body(status)``: the error document the real service would send."""

    @app.middleware("http")
    async def inject_faults(request: Request, call_next: Any) -> Response:
        if request.url.path.startswith(exempt_prefix):
            response: Response = await call_next(request)
            return response
        on_request(request)
        faults = get()
        # Counted as the call arrives; answered after the delay, as a real throttling answer
        # comes back over the same network.
        over_quota = faults.quota is not None and not faults.quota.admit(request)
        if faults.delay_seconds:
            await asyncio.sleep(faults.delay_seconds)
        if over_quota and faults.quota is not None:
            return faults.quota.refusal()
        if faults.take(request):
            status = faults.fail_status or 500
            body = faults.fail_body if faults.fail_body is not None else error_body(status)
            return Response(
                json.dumps(body),
                status_code=status,
                headers=faults.fail_headers,
                media_type="application/json",
            )
        try:
            response = await call_next(request)
        except ClientDisconnect:  # the client stopped waiting for a slow answer
            return Response(status_code=499)
        return response


class Counting:
    """Counts the HTTP requests that reach the app (to prove a refused pin sent nothing), and
    keeps the Authorization headers they carried."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests = 0
        self.authorizations: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.requests += 1
            headers = dict(scope["headers"])
            if b"authorization" in headers:
                self.authorizations.append(headers[b"authorization"].decode())
        await self.app(scope, receive, send)


@dataclass
class Encryptor:
    url: str
    counter: Counting
    ca_file: Path | None = None
    der: bytes = b""


def serve(app: ASGIApp, tmp_path: Path, tls: bool) -> Iterator[Encryptor]:
    counter = Counting(app)
    server = ThreadedServer(counter)
    encryptor = Encryptor("", counter)
    if tls:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        pem = tmp_path / "server.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
        server.ssl_certfile = str(pem)
        encryptor.ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(encryptor.ca_file))
        encryptor.der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    server.start()
    encryptor.url = f"{'https' if tls else 'http'}://127.0.0.1:{server.port}"
    try:
        yield encryptor
    finally:
        server.stop()
