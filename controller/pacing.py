"""How fast the controller calls the apiserver, and how long it waits before trying again.

Apart from the controller so that both are plain, timed objects, testable without a cluster;
the informers and the reconciler share one :class:`TokenBucket`.
"""

import asyncio
import random
import time
from collections.abc import Awaitable, Callable


class TokenBucket:
    """Client-side QPS/burst limit, so a resync of thousands of objects cannot flood the
    apiserver (and so users are not stuck behind a hard-coded QPS 5, as with sealed-secrets)."""

    def __init__(self, qps: float, burst: int) -> None:
        self._rate = qps
        self._capacity = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def take(self) -> None:
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            if self._tokens < 1:
                await self.sleep((1 - self._tokens) / self._rate)
                self._stamp = time.monotonic()
                self._tokens = 1
            self._tokens -= 1


class Backoff:
    """Jittered exponential backoff, reset after a success."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self._first, self._cap, self._next = first, cap, first
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def reset(self) -> None:
        self._next = self._first

    async def wait(self) -> None:
        await self.sleep(random.uniform(0.5, 1.0) * self._next)  # noqa: S311 - jitter
        self._next = min(self._next * 2, self._cap)
