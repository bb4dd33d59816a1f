"""Test servers on 127.0.0.1: an ASGI app under uvicorn in a thread, stoppable and restartable on
the same port (stopping it is how a test makes a dependency unreachable)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp


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
class Faults:
    """What a double does wrong, set by the test: answer late, or answer with an error."""

    delay_seconds: float = 0.0
    fail_status: int | None = None
    fail_body: Any = None
    fail_headers: dict[str, str] | None = None
    remaining: int | None = None  # fail only this many requests, then recover
    when: Callable[[Request], bool] | None = None  # fail only the requests this selects

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
        if faults.delay_seconds:
            await asyncio.sleep(faults.delay_seconds)
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
