"""TLS serving that follows certificate rotation.

cert-manager renews a certificate into its Secret, and the kubelet swaps the mounted files; a
process that read them once at start serves the old certificate until it expires. uvicorn builds
its ``SSLContext`` through :class:`TlsReloader` (its ``ssl_context_factory`` hook, in each worker
process), which then watches the files from the event loop and loads a changed pair into the same
context: new connections get the new certificate, open ones carry on, nothing restarts.

A pair that does not load (the certificate written, its key not yet) is logged and tried again on
the next change; until then the previous certificate is served. A changed client CA bundle is
added to the trusted CAs: a CA that was dropped stays trusted until the process restarts.
"""

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, int] | None, ...]


def _stamp(paths: list[Path]) -> Stamp:
    """What changes when a file is replaced (stat follows the kubelet's ..data symlinks)."""
    stamps: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            info = path.stat()
        except OSError:
            stamps.append(None)
        else:
            stamps.append((info.st_ino, info.st_mtime_ns, info.st_size))
    return tuple(stamps)


@dataclass(frozen=True)
class TlsReloader:
    """uvicorn's ``ssl_context_factory``: picklable, so it reaches spawned workers."""

    certfile: Path
    keyfile: Path
    client_ca_file: Path | None = None
    interval_seconds: float = 10.0

    @property
    def paths(self) -> list[Path]:
        return [p for p in (self.certfile, self.keyfile, self.client_ca_file) if p is not None]

    def __call__(self, config: object, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        context = default()
        if self.interval_seconds <= 0:
            return context
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.warning("TLS certificate reloading is off: no event loop to watch the files from")
            return context
        # The task is referenced by the loop's task set until the loop ends (asyncio.run then
        # cancels it); the attribute keeps it from being collected early.
        context.kamus_reload_task = loop.create_task(self.watch(context))  # type: ignore[attr-defined]
        return context

    async def watch(self, context: ssl.SSLContext) -> None:
        seen = _stamp(self.paths)
        while True:
            await asyncio.sleep(self.interval_seconds)
            now = _stamp(self.paths)
            if now == seen:
                continue
            try:
                self.load(context)
            except (OSError, ssl.SSLError, ValueError) as exc:
                # No path or OpenSSL text in the message: just what to check.
                log.warning(
                    "the TLS certificate files changed but do not load (%s); still serving "
                    "the previous certificate",
                    type(exc).__name__,
                )
            else:
                log.info("reloaded the TLS certificate from Server__TlsCertFile")
            seen = now

    def load(self, context: ssl.SSLContext) -> None:
        cert, key = os.fspath(self.certfile), os.fspath(self.keyfile)
        # Tried on a scratch context first: a certificate that OpenSSL loads into the live
        # context with a key that does not match it leaves that context with no key at all,
        # and every handshake would fail.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
        context.load_cert_chain(cert, key)
        if self.client_ca_file is not None:
            context.load_verify_locations(os.fspath(self.client_ca_file))
