"""A cache of unwrapped data keys, so that a rollout costs one KMS call per value (or per sealed
document) and decryptor replica, not one per value per pod.

What it holds is never a plaintext value: it is a ready cipher built from a data key the KMS
unwrapped (an ``AESGCM`` object, or an ``m1`` value's verified keys), so the raw key bytes live
only as long as it takes to build it. An entry is found by a SHA-256 over the provider, the
value's format, the KMS key version, the wrapped data key **and the identity it was unwrapped
for**: another identity presenting the same wrapped key misses and asks the KMS, which refuses it
as before. Everything else (the caller's TokenReview, the identity as associated data, the
retired-key policy) still runs on every request, cached or not.

Limits, all from ``KeyManagement__DataKeyCache__*``: ``Capacity`` entries (least recently used
goes first), each for at most ``MaxAgeSeconds`` and ``MaxUses`` uses. Any of them at 0 turns the
cache off. Concurrent misses for one entry share one KMS call (single-flight).

Python gives no way to wipe memory: an evicted key's bytes stay in the heap until reused
(docs/threat-model.md, "Issue 20: the data-key cache").
"""

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


class CacheObserver(Protocol):
    def data_key_cache(self, result: str) -> None:
        """One lookup: ``hit``, ``miss`` (a KMS call was made) or ``coalesced`` (joined one in
        flight for the same entry)."""
        ...


@dataclass(frozen=True)
class CacheLimits:
    capacity: int = 1024
    max_age_seconds: float = 300.0
    max_uses: int = 10_000

    @property
    def enabled(self) -> bool:
        return self.capacity > 0 and self.max_age_seconds > 0 and self.max_uses > 0


OFF = CacheLimits(0, 0, 0)


def _field(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return len(raw).to_bytes(4, "big") + raw


@dataclass(frozen=True)
class EntryKey:
    """Where an unwrapped key is filed: ``digest`` finds it; ``kms_key`` (the identity and the
    key version: every identity has a KMS key of its own) lets an answer that the key is
    disabled or gone drop every entry it wrapped, and nobody else's."""

    digest: bytes
    kms_key: tuple[str, str]

    @classmethod
    def of(
        cls, provider: str, fmt: str, key_version: str, wrapped: bytes, sa_id: str
    ) -> "EntryKey":
        # Length-prefixed, so that no two different field lists hash alike.
        fields = b"".join(_field(f) for f in (provider, fmt, key_version, wrapped, sa_id))
        digest = hashlib.sha256(b"kamus/data-key-cache\x00" + fields).digest()
        return cls(digest, (sa_id, key_version))


class _Entry(Generic[T]):
    __slots__ = ("born", "kms_key", "uses", "value")

    def __init__(self, value: T, kms_key: tuple[str, str], born: float) -> None:
        self.value, self.kms_key, self.born, self.uses = value, kms_key, born, 0


class DataKeyCache(Generic[T]):
    def __init__(
        self,
        limits: CacheLimits = OFF,
        observer: CacheObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._observer = observer
        self._clock = clock
        self._entries: OrderedDict[bytes, _Entry[T]] = OrderedDict()
        self._in_flight: dict[bytes, asyncio.Task[T]] = {}
        # Bumped by clear() and forget(): a KMS call that was in flight when its key was
        # disabled must not file its answer afterwards.
        self._epoch = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: EntryKey, unwrap: Callable[[], Awaitable[T]]) -> T:
        """The cached cipher for ``key``, or ``unwrap()``'s, filed for the next caller. An
        ``unwrap()`` that fails files nothing, and every caller waiting on it gets its error."""
        if not self.limits.enabled:
            return await unwrap()
        entry = self._fresh(key.digest)
        if entry is not None:
            self._observe("hit")
            return self._use(key.digest, entry)
        task = self._in_flight.get(key.digest)
        if task is not None:
            self._observe("coalesced")
        else:
            self._observe("miss")
            task = asyncio.ensure_future(unwrap())
            self._in_flight[key.digest] = task
            task.add_done_callback(self._filer(key, self._epoch))
        # Shielded: a caller that goes away (its client hung up) must not cancel the KMS call
        # the others wait on.
        return await asyncio.shield(task)

    def get_now(self, key: EntryKey, unwrap: Callable[[], T]) -> T:
        """:meth:`get` for an unwrap done in the caller's thread, without awaiting (an HPKE
        decapsulation with a sealing key this process holds): nothing can run meanwhile, so
        nothing needs to share it."""
        if not self.limits.enabled:
            return unwrap()
        entry = self._fresh(key.digest)
        if entry is not None:
            self._observe("hit")
            return self._use(key.digest, entry)
        self._observe("miss")
        value = unwrap()
        self._file(key, value)
        return value

    def forget(self, sa_id: str, key_version: str) -> int:
        """Drop every entry the identity's KMS key version wrapped (the KMS said it is disabled
        or gone). Only that identity's: a caller can make the KMS refuse only their own key."""
        self._epoch += 1
        stale = [d for d, e in self._entries.items() if e.kms_key == (sa_id, key_version)]
        for digest in stale:
            del self._entries[digest]
        return len(stale)

    def clear(self) -> None:
        self._epoch += 1
        self._entries.clear()

    def _fresh(self, digest: bytes) -> _Entry[T] | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if self._clock() - entry.born >= self.limits.max_age_seconds:
            del self._entries[digest]
            return None
        return entry

    def _use(self, digest: bytes, entry: _Entry[T]) -> T:
        entry.uses += 1
        if entry.uses >= self.limits.max_uses:
            del self._entries[digest]
        else:
            self._entries.move_to_end(digest)
        return entry.value

    def _filer(self, key: EntryKey, epoch: int) -> Callable[["asyncio.Task[T]"], None]:
        def file(task: "asyncio.Task[T]") -> None:
            self._in_flight.pop(key.digest, None)
            if task.cancelled() or task.exception() is not None or epoch != self._epoch:
                return
            self._file(key, task.result())

        return file

    def _file(self, key: EntryKey, value: T) -> None:
        entry = _Entry(value, key.kms_key, self._clock())
        self._entries[key.digest] = entry
        self._use(key.digest, entry)  # the miss that made it is its first use
        while len(self._entries) > self.limits.capacity:
            self._entries.popitem(last=False)

    def _observe(self, result: str) -> None:
        if self._observer is not None:
            self._observer.data_key_cache(result)
