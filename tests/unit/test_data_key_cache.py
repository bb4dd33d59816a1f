"""The data-key cache alone (crypto/datakeys.py): what it files, for whom, for how long, and
that concurrent misses share one unwrap. The providers' use of it, against the KMS doubles, is in
tests/providers/test_data_key_cache.py."""

import asyncio
import os
from collections import Counter

import pytest

from crypto import AESKeyManager
from crypto.datakeys import CacheLimits, DataKeyCache, EntryKey
from crypto.errors import DecryptionError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lookups:
    def __init__(self) -> None:
        self.results: Counter[str] = Counter()

    def data_key_cache(self, result: str) -> None:
        self.results[result] += 1


class Kms:
    """Counts unwraps; each answers a new object, so a test can tell a cached one."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay

    async def unwrap(self) -> object:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return object()


def key(wrapped: bytes = b"wrapped", sa_id: str = "team-a:app", version: str = "v1") -> EntryKey:
    return EntryKey.of("aws", "kamus-m1", version, wrapped, sa_id)


def cache(limits: CacheLimits | None = None) -> tuple[DataKeyCache[object], Clock, Lookups]:
    clock, lookups = Clock(), Lookups()
    return DataKeyCache(limits or CacheLimits(), lookups, clock), clock, lookups


def test_a_hit_makes_no_unwrap() -> None:
    async def scenario() -> None:
        keys, _, lookups = cache()
        kms = Kms()
        first = await keys.get(key(), kms.unwrap)
        assert await keys.get(key(), kms.unwrap) is first
        assert kms.calls == 1
        assert lookups.results == {"miss": 1, "hit": 1}

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "other",
    [
        key(sa_id="team-b:app"),  # another identity presenting the same wrapped key
        key(sa_id="team-a:app2"),
        key(wrapped=b"wrapped2"),
        key(version="v2"),
        EntryKey.of("gcp", "kamus-m1", "v1", b"wrapped", "team-a:app"),
        EntryKey.of("aws", "kamus-e1", "v1", b"wrapped", "team-a:app"),
    ],
    ids=["identity", "service-account", "wrapped-key", "key-version", "provider", "format"],
)
def test_each_field_of_the_key_keeps_entries_apart(other: EntryKey) -> None:
    async def scenario() -> None:
        keys, _, _ = cache()
        kms = Kms()
        first = await keys.get(key(), kms.unwrap)
        assert await keys.get(other, kms.unwrap) is not first
        assert kms.calls == 2

    asyncio.run(scenario())


def test_fields_cannot_slide_into_each_other() -> None:
    # "team-a:ap" + "p..." must not hash like "team-a:app" + "...": fields are length-prefixed.
    assert (
        EntryKey.of("aws", "f", "v", b"ab", "c").digest
        != EntryKey.of("aws", "f", "v", b"a", "bc").digest
    )


def test_entries_expire_after_max_age() -> None:
    async def scenario() -> None:
        keys, clock, _ = cache(CacheLimits(max_age_seconds=300))
        kms = Kms()
        first = await keys.get(key(), kms.unwrap)
        clock.now += 299.9
        assert await keys.get(key(), kms.unwrap) is first
        clock.now += 0.1
        assert await keys.get(key(), kms.unwrap) is not first
        assert kms.calls == 2

    asyncio.run(scenario())


def test_an_entry_serves_at_most_max_uses() -> None:
    async def scenario() -> None:
        keys, _, _ = cache(CacheLimits(max_uses=3))
        kms = Kms()
        first = await keys.get(key(), kms.unwrap)  # use 1: the miss that filed it
        assert await keys.get(key(), kms.unwrap) is first  # 2
        assert await keys.get(key(), kms.unwrap) is first  # 3, and gone
        assert len(keys) == 0
        assert await keys.get(key(), kms.unwrap) is not first
        assert kms.calls == 2

    asyncio.run(scenario())


def test_the_least_recently_used_entry_goes_first() -> None:
    async def scenario() -> None:
        keys, _, _ = cache(CacheLimits(capacity=2))
        kms = Kms()
        a = await keys.get(key(b"a"), kms.unwrap)
        await keys.get(key(b"b"), kms.unwrap)
        assert await keys.get(key(b"a"), kms.unwrap) is a  # a is now the most recent
        await keys.get(key(b"c"), kms.unwrap)  # evicts b
        assert len(keys) == 2
        assert await keys.get(key(b"a"), kms.unwrap) is a
        calls = kms.calls
        await keys.get(key(b"b"), kms.unwrap)
        assert kms.calls == calls + 1

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "limits",
    [CacheLimits(capacity=0), CacheLimits(max_age_seconds=0), CacheLimits(max_uses=0)],
    ids=["capacity", "max-age", "max-uses"],
)
def test_any_limit_at_zero_turns_the_cache_off(limits: CacheLimits) -> None:
    async def scenario() -> None:
        keys, _, lookups = cache(limits)
        kms = Kms()
        await keys.get(key(), kms.unwrap)
        await keys.get(key(), kms.unwrap)
        assert kms.calls == 2
        assert len(keys) == 0
        assert not lookups.results  # an off cache reports no lookups at all

    asyncio.run(scenario())


def test_fifty_concurrent_misses_share_one_unwrap() -> None:
    async def scenario() -> None:
        keys, _, lookups = cache()
        kms = Kms(delay=0.05)
        got = await asyncio.gather(*(keys.get(key(), kms.unwrap) for _ in range(50)))
        assert kms.calls == 1
        assert len({id(g) for g in got}) == 1
        assert lookups.results == {"miss": 1, "coalesced": 49}

    asyncio.run(scenario())


def test_a_failed_unwrap_is_shared_and_not_filed() -> None:
    async def scenario() -> None:
        keys, _, _ = cache()
        calls = 0

        async def refused() -> object:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.02)
            raise DecryptionError("the KMS refused it")

        results = await asyncio.gather(
            *(keys.get(key(), refused) for _ in range(5)), return_exceptions=True
        )
        assert calls == 1
        assert all(isinstance(r, DecryptionError) for r in results)
        assert len(keys) == 0
        kms = Kms()
        await keys.get(key(), kms.unwrap)  # the next request asks the KMS again
        assert kms.calls == 1

    asyncio.run(scenario())


def test_a_caller_that_goes_away_does_not_cancel_the_shared_unwrap() -> None:
    async def scenario() -> None:
        keys, _, _ = cache()
        kms = Kms(delay=0.1)
        first = asyncio.ensure_future(keys.get(key(), kms.unwrap))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(keys.get(key(), kms.unwrap))
        await asyncio.sleep(0.01)
        first.cancel()  # its client hung up
        value = await second
        assert kms.calls == 1
        assert await keys.get(key(), kms.unwrap) is value

    asyncio.run(scenario())


def test_forget_drops_only_the_entries_of_that_identity_s_key_version() -> None:
    async def scenario() -> None:
        keys, _, _ = cache()
        kms = Kms()
        await keys.get(key(b"a", version="v1"), kms.unwrap)
        await keys.get(key(b"b", version="v1"), kms.unwrap)
        kept = await keys.get(key(b"c", version="v2"), kms.unwrap)
        # Cloud KMS numbers each key's versions from 1: another identity's "v1" is another key.
        theirs = await keys.get(key(b"a", sa_id="team-b:app", version="v1"), kms.unwrap)
        assert keys.forget("team-a:app", "v1") == 2
        assert await keys.get(key(b"c", version="v2"), kms.unwrap) is kept
        assert await keys.get(key(b"a", sa_id="team-b:app", version="v1"), kms.unwrap) is theirs
        await keys.get(key(b"a", version="v1"), kms.unwrap)
        assert kms.calls == 5

    asyncio.run(scenario())


def test_an_unwrap_in_flight_when_the_cache_is_cleared_files_nothing() -> None:
    async def scenario() -> None:
        keys, _, _ = cache()
        kms = Kms(delay=0.05)
        pending = asyncio.ensure_future(keys.get(key(), kms.unwrap))
        await asyncio.sleep(0.01)
        keys.clear()  # the key was disabled while the KMS was answering
        await pending
        assert len(keys) == 0

    asyncio.run(scenario())


def test_the_aes_provider_unwraps_a_sealed_value_once_per_identity() -> None:
    """An m1 value sealed to this Kamus's own keys: its stanza's X25519 agreement is made once,
    then the cached key opens it; another identity presenting it still fails."""
    lookups = Lookups()
    master = os.urandom(32)
    manager = AESKeyManager(master, cache=CacheLimits(), observer=lookups)
    value, _ = manager.sealing.seal(b"s3cret", "team-a:app")  # as an encryptor seals it

    async def scenario() -> None:
        for _ in range(3):
            assert await manager.decrypt(value, "team-a:app") == b"s3cret"
        with pytest.raises(DecryptionError):
            await manager.decrypt(value, "team-b:app")

    asyncio.run(scenario())
    assert lookups.results == {"miss": 1, "hit": 2}  # team-b is refused before any lookup
    assert len(manager.data_keys) == 1
