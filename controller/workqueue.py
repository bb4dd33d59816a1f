"""The work queue between the informers and the reconcile workers.

A key waits in it at most once, however many events name it meanwhile: a burst of changes to
one KamusSecret (or a resync on top of a watch event) is reconciled once, from a fresh read.
Apart from the controller because it knows only keys.
"""

import asyncio
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self) -> None:
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._pending: set[K] = set()

    def add(self, key: K) -> None:
        if key not in self._pending:
            self._pending.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.add, key)

    async def get(self) -> K:
        """The next key; from now on, an event that names it queues it again."""
        key = await self._queue.get()
        self._pending.discard(key)
        return key
