"""uvicorn's httptools protocol, with a deadline for each request's headers.

uvicorn closes idle kept-alive connections (``timeout_keep_alive``) but gives a client all the
time it wants to send a request's headers: a few hundred connections trickling a byte at a time
(slowloris) would hold every slot of ``Server__MaxConnections``. Here a request whose headers are
not complete within ``Server__HeaderTimeoutSeconds`` of its first byte (or of the connection, for
the first request) has its connection closed. The body is bounded separately
(``Server__MaxRequestBodyBytes``), and the time to answer by each dependency's deadline.

``kamus serve`` names this class by import string, so that uvicorn's worker processes load it.
"""

import asyncio
import functools

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kamus.settings import Settings


@functools.cache
def header_timeout_seconds() -> float:
    # Read once per process (a worker reads its own environment, as the apps do).
    return Settings().server.header_timeout_seconds


class HeaderTimeoutProtocol(HttpToolsProtocol):
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_deadline = self.loop.call_later(header_timeout_seconds(), self._too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()
