"""Slots for calls to the Kubernetes API, shared fairly between client addresses.

With one queue for everyone, a client that sends a thousand requests with unknown tokens puts a
thousand TokenReviews ahead of the next pod, which then waits past its deadline. Here a call
for a client first takes one of that client's ``per_client`` slots, and only then one of the
``total``: one address holds at most ``per_client`` of the shared slots, and its further calls
wait in its own queue, behind its own calls, never in front of anyone else's.

A client's entry exists only while it has a call waiting or in flight, so the state is bounded
by the calls in progress, not by how many addresses ever called.

The service's own calls (its readiness check, Kamus's isAlive) have a slot of their own, outside
``total``: a flood that takes every shared slot must not also make the replica look down, or
keep it from finding out that the apiserver answers again.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


class NoSlot(Exception):
    """No slot came free within the deadline: this replica is busy, not the apiserver down."""

    def __init__(self, *, own_queue: bool) -> None:
        super().__init__("the client's own queue" if own_queue else "the shared queue")
        # True: the client's own share was taken (it sends too much at once); False: every
        # shared slot was (this replica is busy with everyone's calls).
        self.own_queue = own_queue


@dataclass
class _Client:
    slots: asyncio.Semaphore
    users: int = field(default=0)  # calls waiting or in flight


class FairShare:
    def __init__(self, total: int, per_client: int, *, wait_seconds: float) -> None:
        self.total = total
        self.per_client = min(per_client, total)
        self.wait_seconds = wait_seconds
        self._shared = asyncio.Semaphore(total)
        self._own = asyncio.Semaphore(1)
        self._clients: dict[str, _Client] = {}

    def __len__(self) -> int:
        """Clients with a call waiting or in flight."""
        return len(self._clients)

    @asynccontextmanager
    async def slot(self, client: str | None) -> AsyncIterator[None]:
        """Hold a slot for ``client`` (``None``: the service's own calls, which take the slot
        kept for them); :class:`NoSlot` if none is free within ``wait_seconds``."""
        if client is None:
            try:
                async with asyncio.timeout(self.wait_seconds):
                    await self._own.acquire()
            except TimeoutError:
                raise NoSlot(own_queue=False) from None
            try:
                yield
            finally:
                self._own.release()
            return
        entry = self._clients.get(client)
        if entry is None:
            entry = self._clients[client] = _Client(asyncio.Semaphore(self.per_client))
        entry.users += 1
        try:
            await self._acquire(entry)
            try:
                yield
            finally:
                self._shared.release()
                entry.slots.release()
        finally:
            entry.users -= 1
            if entry.users == 0:  # nobody holds or waits on its semaphore: a new one is equal
                del self._clients[client]

    async def _acquire(self, entry: _Client) -> None:
        own_queue = True
        try:
            async with asyncio.timeout(self.wait_seconds):
                await entry.slots.acquire()
                own_queue = False
                try:
                    await self._shared.acquire()
                except BaseException:
                    entry.slots.release()
                    raise
        except TimeoutError:
            raise NoSlot(own_queue=own_queue) from None
