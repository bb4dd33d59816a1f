"""uvicorn's httptools protocol, with the limits that keep slow or greedy clients from holding
every connection slot.

uvicorn closes idle kept-alive connections (``timeout_keep_alive``) and answers 503 past
``limit_concurrency`` (``Server__MaxConnections``), but gives a client all the time it wants to
send a request, and counts every connection, its own health probes' too, against that one limit.
A few hundred connections trickling a byte at a time (slowloris) would hold every slot, and the
kubelet, its liveness probe refused, would restart the replica. Here:

- a request whose headers are not complete within ``Server__HeaderTimeoutSeconds`` of its first
  byte (or of the connection, for the first request) has its connection closed;
- a request whose body is not complete within ``Server__BodyTimeoutSeconds`` of its headers is
  answered 408 (or, if its answer has begun, has its connection closed);
- a client address with ``Server__MaxConnectionsPerClient`` connections open has any further
  one answered 503, and such a connection does not count against ``Server__MaxConnections``.
  In the encryptor, ``Encryptor__TrustedProxies`` are exempt (behind an ingress every client
  shares its address), and an IPv6 client is counted by its /64;
- ``GET /healthz``, ``/readyz`` and ``/api/v1/isAlive`` are never refused for either limit, so
  that a flood cannot make the probes fail (the kubelet probes from the node's address, which
  traffic through a node's SNAT shares).

A refusal is logged at most once per ``_LOG_EVERY_SECONDS`` and kind, with the number of
refusals since, so that a flood cannot flood the log too.

The counts are per process, as ``Server__MaxConnections`` is. The size of a body is bounded
separately (``Server__MaxRequestBodyBytes``), and the time to answer by each dependency's
deadline. ``kamus serve`` names these classes by import string, so that uvicorn's worker
processes load them.
"""

import asyncio
import collections
import functools
import logging
import time

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kamus.server.addresses import Network, client_key, is_in, parse_networks
from kamus.server.settings import ServerSettings, Settings

log = logging.getLogger("kamus.server.http")

# What the kubelet probes (deploy/helm), exactly: a query string or an encoding is no probe.
_PROBES = frozenset({b"/healthz", b"/readyz", b"/api/v1/isAlive"})
_PROBE_METHODS = frozenset({b"GET", b"HEAD"})

# Open connections per client address, for all the connections of this process.
_open: collections.Counter[str] = collections.Counter()

_LOG_EVERY_SECONDS = 10.0
# Per kind of refusal: when it was last logged, and how many were not logged since.
_last_logged: dict[str, float] = {}
_unlogged: collections.Counter[str] = collections.Counter()


def _log_refusal(kind: str, message: str, *args: object) -> None:
    now = time.monotonic()
    if now - _last_logged.get(kind, float("-inf")) < _LOG_EVERY_SECONDS:
        _unlogged[kind] += 1
        return
    _last_logged[kind] = now
    more = _unlogged.pop(kind, 0)
    suffix = f" ({more} more since the last such line)" if more else ""
    log.warning(message + suffix, *args)


@functools.cache
def server_settings() -> ServerSettings:
    # Read once per process (a worker reads its own environment, as the apps do).
    return Settings().server


@functools.cache
def trusted_proxies() -> tuple[Network, ...]:
    return tuple(parse_networks(Settings().encryptor.trusted_proxies))


def _plain_response(status: bytes, message: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    body = message.encode()
    lines = [b"HTTP/1.1 " + status]
    lines += [name + b": " + value for name, value in headers]
    lines += [
        b"content-type: text/plain; charset=utf-8",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def _over_client_cap(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer on a connection over ``Server__MaxConnectionsPerClient``."""
    settings = server_settings()
    message = (
        "too many connections from this address (Server__MaxConnectionsPerClient is "
        f"{settings.max_connections_per_client}): close idle ones, or retry later"
    )
    body = message.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(settings.retry_after_seconds).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class SlowClientProtocol(HttpToolsProtocol):
    """For every service; see the module's docstring."""

    _header_deadline: asyncio.TimerHandle | None = None
    _body_deadline: asyncio.TimerHandle | None = None
    _counted_as: str | None = None
    _over_cap = False

    def _exempt(self, address: str) -> bool:
        return False

    def _client_key(self, address: str) -> str:
        return address

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline = self.loop.call_later(
            server_settings().header_timeout_seconds, self._headers_too_slow
        )
        address = self.client[0] if self.client else None
        if address is None or self._exempt(address):
            return
        key = self._counted_as = self._client_key(address)
        _open[key] += 1
        if _open[key] > server_settings().max_connections_per_client:
            self._over_cap = True
            # Refused anyway: it must not take one of Server__MaxConnections' slots from others.
            self.connections.discard(self)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(
                server_settings().header_timeout_seconds, self._headers_too_slow
            )

    def on_headers_complete(self) -> None:
        self._cancel_header_deadline()
        probe = self.url in _PROBES and self.parser.get_method() in _PROBE_METHODS
        refused = self._over_cap and not probe
        # uvicorn decides its 503 in on_headers_complete, from this attribute. A connection over
        # the per-client cap gets that cap's own 503, which says what to do.
        exempt = probe or refused
        self.limit_concurrency = None if exempt else self.config.limit_concurrency
        if refused:
            _log_refusal(
                "per-client",
                "refused a request from %s: over Server__MaxConnectionsPerClient (%d) "
                "connections are open from that address",
                self._counted_as,
                server_settings().max_connections_per_client,
            )
            self.app = _over_client_cap
        try:
            super().on_headers_complete()
        finally:
            self.app = self.config.loaded_app
        self._cancel_body_deadline()
        self._body_deadline = self.loop.call_later(
            server_settings().body_timeout_seconds, self._body_too_slow
        )

    def on_message_complete(self) -> None:
        self._cancel_body_deadline()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        self._cancel_body_deadline()
        if self._counted_as is not None:
            _open[self._counted_as] -= 1
            if not _open[self._counted_as]:
                del _open[self._counted_as]
            self._counted_as = None
        super().connection_lost(exc)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _cancel_body_deadline(self) -> None:
        if self._body_deadline is not None:
            self._body_deadline.cancel()
            self._body_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _body_too_slow(self) -> None:
        self._body_deadline = None
        if self.transport.is_closing():
            return
        seconds = server_settings().body_timeout_seconds
        if self.pipeline or self.flow.read_paused:
            # uvicorn stopped reading, not the client: a pipelined request waits for the one
            # before it to be answered, or the app has not taken the body it was given yet.
            self._body_deadline = self.loop.call_later(seconds, self._body_too_slow)
            return
        _log_refusal(
            "body-timeout",
            "closed a connection from %s: a request body was not complete within %gs "
            "(Server__BodyTimeoutSeconds)",
            self.client[0] if self.client else "unknown",
            seconds,
        )
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:  # else no answer can replace it
            # What connection_lost would do, a tick early: the app, waiting for the rest of the
            # body, is told the client left, and nothing it sends is written after the 408.
            cycle.disconnected = True
            cycle.message_event.set()
            message = (
                f"the request body did not arrive within {seconds:g}s of its headers "
                "(Server__BodyTimeoutSeconds): send the whole body without pausing"
            )
            self.transport.write(
                _plain_response(b"408 Request Timeout", message, self.server_state.default_headers)
            )
        self.transport.close()


class EncryptorProtocol(SlowClientProtocol):
    """The encryptor's: its ``Encryptor__TrustedProxies`` are exempt from the per-client cap, and
    its public clients are counted as the rate limit counts them."""

    def _exempt(self, address: str) -> bool:
        return is_in(address, trusted_proxies())

    def _client_key(self, address: str) -> str:
        return client_key(address)
