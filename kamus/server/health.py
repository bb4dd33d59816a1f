"""Readiness that follows the dependencies: the Kubernetes API and the key manager.

Real calls report their outcome: a dependency that failed (down, past its deadline, answering
5xx, or the Kubernetes API answering 429) makes ``/readyz`` answer 503, so that Kubernetes stops
sending this replica requests it would only answer with 503 itself. A KMS that throttles does not:
it answers, and another replica would meet the same quota. While a dependency is down, each
``/readyz`` (at most once a second) asks it again with a cheap call, since no request comes to
find out that it is back; the first success, probe or real call, makes the replica ready again.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from fastapi.responses import JSONResponse
from prometheus_client import Gauge

from crypto import KeyManager, classify
from crypto.base import DocumentSealer, KeyLifecycle, RecipientEditor
from crypto.errors import KeyManagerBusy, KeyManagerUnavailable
from crypto.lifecycle import Opened, Rewrapped, State
from crypto.recipients import Recipient
from kamus.server.metrics import Metrics

T = TypeVar("T")

log = logging.getLogger(__name__)


class Dependency:
    """One dependency's state: up until a call fails, then down until a call succeeds."""

    def __init__(
        self,
        name: str,
        probe: Callable[[], Awaitable[bool]],
        up_gauge: Gauge,
        *,
        probe_interval_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._probe = probe
        self._gauge = up_gauge.labels(name)
        self._gauge.set(1)
        self._interval = probe_interval_seconds
        self._clock = clock
        self._down_since: float | None = None
        self._last_probe = float("-inf")

    @property
    def up(self) -> bool:
        return self._down_since is None

    def failed(self, reason: str) -> None:
        if self._down_since is None:
            self._down_since = self._clock()
            self._gauge.set(0)
            log.warning(
                "%s is unavailable (%s): not ready until it answers again", self.name, reason
            )

    def succeeded(self) -> None:
        if self._down_since is not None:
            log.info("%s answers again after %.1fs", self.name, self._clock() - self._down_since)
            self._down_since = None
            self._gauge.set(1)

    async def ready(self) -> bool:
        if self.up:
            return True
        now = self._clock()
        if now - self._last_probe >= self._interval:
            self._last_probe = now
            if await self._probe():
                self.succeeded()
        return self.up


class WatchedKeyManager:
    """A :class:`KeyManager` whose calls report to the key manager's :class:`Dependency`.

    Only :class:`KeyManagerUnavailable` counts as down: a value that does not decrypt, or a key
    that does not exist, is an answer from a working KMS. A KMS throttling calls, or all of this
    process's call slots taken (:class:`KeyManagerBusy`), is not an outage either: one noisy
    caller must not take the replica out of service, so it counts neither way."""

    def __init__(self, inner: KeyManager, metrics: Metrics) -> None:
        self._inner = inner
        self.dependency = Dependency("key-manager", self._reachable, metrics.dependency_up)

    @property
    def inner(self) -> KeyManager:
        return self._inner

    async def _reachable(self) -> bool:
        try:
            await self._inner.check()
        except KeyManagerUnavailable:
            return False
        return True

    async def _watch(self, call: Awaitable[T]) -> T:
        try:
            result = await call
        except KeyManagerBusy:
            raise
        except KeyManagerUnavailable as exc:
            self.dependency.failed(exc.reason)
            raise
        except Exception:
            self.dependency.succeeded()
            raise
        self.dependency.succeeded()
        return result

    async def encrypt(self, plaintext: bytes, sa_id: str) -> str:
        return await self._watch(self._inner.encrypt(plaintext, sa_id))

    async def encrypt_many(
        self, plaintexts: Sequence[bytes], sa_id: str, concurrency: int
    ) -> list[str]:
        """Values for one identity: under one data key where the provider can, else one by one,
        at most ``concurrency`` at a time."""
        if isinstance(self._inner, DocumentSealer):
            return await self._watch(self._inner.encrypt_many(plaintexts, sa_id))
        slots = asyncio.Semaphore(concurrency)

        async def each(plaintext: bytes) -> str:
            async with slots:
                return await self.encrypt(plaintext, sa_id)

        return list(await asyncio.gather(*(each(p) for p in plaintexts)))

    async def decrypt(self, ciphertext: str, sa_id: str) -> bytes:
        return await self._watch(self._inner.decrypt(ciphertext, sa_id))

    async def open(self, ciphertext: str, sa_id: str) -> Opened:
        if isinstance(self._inner, KeyLifecycle):
            return await self._watch(self._inner.open(ciphertext, sa_id))
        plaintext = await self._watch(self._inner.decrypt(ciphertext, sa_id))
        return Opened(plaintext, "", State.ACTIVE, classify(ciphertext))

    async def rewrap(
        self, ciphertext: str, sa_id: str, *, upgrade_legacy: bool, check_only: bool
    ) -> Rewrapped:
        if not isinstance(self._inner, KeyLifecycle):
            raise TypeError(f"{type(self._inner).__name__} cannot rewrap")
        return await self._watch(
            self._inner.rewrap(
                ciphertext, sa_id, upgrade_legacy=upgrade_legacy, check_only=check_only
            )
        )

    async def change_recipients(
        self,
        ciphertext: str,
        sa_id: str,
        *,
        add: Sequence[Recipient],
        remove: Sequence[str],
        check_only: bool,
    ) -> Rewrapped:
        if not isinstance(self._inner, RecipientEditor):
            raise TypeError(f"{type(self._inner).__name__} cannot change recipients")
        return await self._watch(
            self._inner.change_recipients(
                ciphertext, sa_id, add=add, remove=remove, check_only=check_only
            )
        )

    def kms_recipient(self, spec: str) -> Recipient | None:
        """``aws:<ARN>`` (or gcp, azure) as a recipient wrapped by this provider, or ``None``
        when this decryptor's provider is another."""
        from crypto.cloud import CloudKeyManager

        kind, _, name = spec.partition(":")
        if isinstance(self._inner, CloudKeyManager) and self._inner.kind == kind:
            return self._inner.recipient(name)
        return None

    async def check(self) -> None:
        await self._watch(self._inner.check())


async def readiness(*dependencies: Dependency) -> JSONResponse:
    """``/readyz``: 200, or 503 naming what is down (the reasons are in the log)."""
    down = [d.name for d in dependencies if not await d.ready()]
    if down:
        return JSONResponse({"status": "unavailable", "unavailable": down}, status_code=503)
    return JSONResponse({"status": "ready"})
