"""The TokenReview cache: a pod's N decrypts cost the apiserver one TokenReview, not N, and
nothing but an acceptance is remembered, for no longer than the token itself is valid."""

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kamus.server.kube import create_api_client
from kamus.server.kubeauth.cache import (
    CachingAuthenticator,
    Lookup,
    TtlCache,
    cache_key,
    token_expiry,
)
from kamus.server.kubeauth.reviews import (
    AuthUnavailable,
    NotAuthenticated,
    TokenReviewAuthenticator,
)
from kamus.server.settings import KubernetesSettings
from tests.k8s_double import Faults, KubeApiDouble
from tests.support.leaks import register
from tests.support.settings import SettingsFactory

USER = "system:serviceaccount:team-a:app"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


MakeReviews = Callable[..., Awaitable[TokenReviewAuthenticator]]


@pytest.fixture
async def reviews(kube_api: KubeApiDouble, kubeconfig: Path) -> AsyncIterator[MakeReviews]:
    """Makes real TokenReview authenticators against the double, closed after the test."""
    made: list[TokenReviewAuthenticator] = []

    async def make(**options: float) -> TokenReviewAuthenticator:
        client = await create_api_client(KubernetesSettings())
        made.append(TokenReviewAuthenticator(client, **options))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for authenticator in made:
        await authenticator.close()


async def caching(
    reviews: MakeReviews,
    *,
    ttl: float = 10.0,
    max_entries: int = 100,
    clock: FakeClock | None = None,
    **options: float,
) -> tuple[CachingAuthenticator, Counter[Lookup]]:
    lookups: Counter[Lookup] = Counter()
    cache = CachingAuthenticator(
        await reviews(**options),
        ttl_seconds=ttl,
        max_entries=max_entries,
        observe=lambda result: lookups.update([result]),
        clock=clock or time.monotonic,
    )
    return cache, lookups


async def test_a_token_is_reviewed_once_while_cached(
    kube_api: KubeApiDouble, reviews: MakeReviews
) -> None:
    cache, lookups = await caching(reviews)
    token = kube_api.issue_token("team-a", "app")
    for _ in range(20):
        assert (await cache.authenticate(token)).username == USER
    assert len(kube_api.reviews) == 1
    assert lookups == {"miss": 1, "hit": 19}


async def test_concurrent_requests_with_one_token_share_one_review(
    kube_api: KubeApiDouble, reviews: MakeReviews
) -> None:
    cache, lookups = await caching(reviews)
    kube_api.faults = Faults(delay_seconds=0.2)  # all 20 arrive while the first is in flight
    token = kube_api.issue_token("team-a", "app")
    identities = await asyncio.gather(*(cache.authenticate(token) for _ in range(20)))
    assert {i.username for i in identities} == {USER}
    assert len(kube_api.reviews) == 1
    assert lookups == {"miss": 1, "coalesced": 19}


async def test_a_rejection_is_shared_by_concurrent_callers_but_never_cached(
    kube_api: KubeApiDouble, reviews: MakeReviews
) -> None:
    cache, _ = await caching(reviews)
    kube_api.faults = Faults(delay_seconds=0.2)
    forged = kube_api.forge_token("team-a", "app")
    results = await asyncio.gather(
        *(cache.authenticate(forged) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, NotAuthenticated) for r in results)
    assert len(kube_api.reviews) == 1
    kube_api.faults = Faults()
    with pytest.raises(NotAuthenticated):
        await cache.authenticate(forged)
    assert len(kube_api.reviews) == 2  # asked again: rejections are not remembered
    assert len(cache) == 0


async def test_an_outage_is_not_cached(kube_api: KubeApiDouble, reviews: MakeReviews) -> None:
    cache, _ = await caching(reviews)
    token = kube_api.issue_token("team-a", "app")
    kube_api.faults = Faults(fail_status=500)
    with pytest.raises(AuthUnavailable):
        await cache.authenticate(token)
    kube_api.faults = Faults()
    assert (await cache.authenticate(token)).username == USER


async def test_an_entry_expires_after_the_ttl(
    kube_api: KubeApiDouble, reviews: MakeReviews
) -> None:
    clock = FakeClock()
    cache, lookups = await caching(reviews, ttl=10, clock=clock)
    token = kube_api.issue_token("team-a", "app")
    await cache.authenticate(token)
    clock.now += 9.9
    await cache.authenticate(token)
    assert len(kube_api.reviews) == 1
    clock.now += 0.2
    await cache.authenticate(token)
    assert len(kube_api.reviews) == 2
    assert lookups == {"miss": 2, "hit": 1}


async def test_an_entry_never_outlives_the_token(
    kube_api: KubeApiDouble, reviews: MakeReviews
) -> None:
    clock = FakeClock()
    cache, _ = await caching(reviews, ttl=600, clock=clock)
    token = kube_api.issue_token("team-a", "app", expires_in=5)
    await cache.authenticate(token)
    clock.now += 3
    await cache.authenticate(token)
    assert len(kube_api.reviews) == 1
    clock.now += 3  # past the token's exp, well inside the TTL: Kubernetes is asked again
    await cache.authenticate(token)
    assert len(kube_api.reviews) == 2


async def test_the_cache_is_bounded_and_drops_the_least_recently_used(
    kube_api: KubeApiDouble, reviews: MakeReviews
) -> None:
    cache, _ = await caching(reviews, max_entries=2)
    a, b, c = (kube_api.issue_token("team-a", name) for name in ("a", "b", "c"))
    await cache.authenticate(a)
    await cache.authenticate(b)
    await cache.authenticate(a)  # a is now the most recently used
    await cache.authenticate(c)  # so b goes
    assert len(cache) == 2
    assert len(kube_api.reviews) == 3
    await cache.authenticate(a)
    assert len(kube_api.reviews) == 3
    await cache.authenticate(b)
    assert len(kube_api.reviews) == 4


async def test_a_caller_that_gives_up_does_not_cancel_the_others(
    kube_api: KubeApiDouble, reviews: MakeReviews
) -> None:
    cache, _ = await caching(reviews)
    kube_api.faults = Faults(delay_seconds=0.3)
    token = kube_api.issue_token("team-a", "app")
    first = asyncio.create_task(cache.authenticate(token))
    second = asyncio.create_task(cache.authenticate(token))
    await asyncio.sleep(0.1)
    first.cancel()
    assert (await second).username == USER
    assert first.cancelled()
    assert len(kube_api.reviews) == 1


async def test_unknown_tokens_cannot_flood_the_apiserver(
    kube_api: KubeApiDouble, reviews: MakeReviews
) -> None:
    """Each unique bad token misses the cache; Kubernetes__MaxConcurrentRequests bounds how
    many of their TokenReviews are outstanding at once."""
    cache, _ = await caching(reviews, max_concurrency=2, timeout_seconds=10)
    kube_api.faults = Faults(delay_seconds=0.3)
    before = kube_api.received
    flood = asyncio.gather(
        *(cache.authenticate(kube_api.forge_token("team-a", f"sa-{i}")) for i in range(8)),
        return_exceptions=True,
    )
    peak = 0
    while not flood.done():
        peak = max(peak, kube_api.received - before - len(kube_api.reviews))
        await asyncio.sleep(0.01)
    assert all(isinstance(r, NotAuthenticated) for r in await flood)
    assert len(kube_api.reviews) == 8
    assert 1 <= peak <= 2


async def test_a_token_does_not_wait_behind_another_addresss_queue(
    kube_api: KubeApiDouble, reviews: MakeReviews
) -> None:
    """Someone who holds a pod's token too (say, stolen) and floods from another address: the
    pod's own request must not join the review queued behind that flood."""
    cache, lookups = await caching(
        reviews, max_concurrency=4, max_concurrency_per_client=1, timeout_seconds=30
    )
    kube_api.faults = Faults(delay_seconds=0.6)
    token = kube_api.issue_token("team-a", "app")
    secret = secrets.token_urlsafe(24)
    register(secret)
    queued = [f"unknown-{n}-{secret}" for n in range(3)] + [token]
    flood = [asyncio.create_task(cache.authenticate(t, client="10.0.0.66")) for t in queued]
    await asyncio.sleep(0.1)  # the flood's review of the token is queued behind three others
    start = time.monotonic()
    identity = await cache.authenticate(token, client="10.0.0.7")
    waited = time.monotonic() - start
    assert identity.username == USER
    # Its own review: 0.6 s at the apiserver, where joining the flood's would take 2.4 s.
    assert waited < 1.8
    assert not flood[-1].done()
    assert lookups == {"miss": 5}
    results = await asyncio.gather(*flood, return_exceptions=True)
    assert results[-1] == identity


def test_the_key_is_a_digest_of_token_and_audiences() -> None:
    key = cache_key("token", ["kamus"])
    assert len(key) == 32
    assert b"token" not in key
    assert key == cache_key("token", ["kamus"])
    assert key != cache_key("token", [])
    assert key != cache_key("token", ["other"])
    assert cache_key("t", ["a", "b"]) == cache_key("t", ["b", "a"])


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("a.eyJleHAiOjEyM30.c", 123.0),  # {"exp":123}
        ("a.eyJleHAiOjEuNX0.c", 1.5),  # {"exp":1.5}
        ("a.eyJleHAiOnRydWV9.c", None),  # {"exp":true}
        ("a.eyJleHAiOiIxMjMifQ.c", None),  # {"exp":"123"}
        ("a.WzFd.c", None),  # [1]
        ("a.!!!.c", None),
        ("a.bm90IGpzb24.c", None),  # not json
        ("a./w.c", None),  # not UTF-8
        ("opaque-token", None),
    ],
)
def test_token_expiry_reads_only_a_well_formed_numeric_exp(
    token: str, expected: float | None
) -> None:
    assert token_expiry(token) == expected


def test_the_decryptor_reviews_a_pods_token_once_for_many_decrypts(
    kube_api: KubeApiDouble,
    make_settings: SettingsFactory,
    kubeconfig: Path,
    encryptor_client: TestClient,
) -> None:
    from decryptor.app import create_app

    ciphertext = encryptor_client.post(
        "/api/v1/encrypt", json={"data": "s3cr3t", "service-account": "app", "namespace": "team-a"}
    ).text
    token = kube_api.issue_token("team-a", "app")
    with TestClient(create_app(make_settings())) as client:
        for _ in range(5):
            answer = client.post(
                "/api/v1/decrypt",
                json={"data": ciphertext},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert answer.text == "s3cr3t"
        metrics = client.get("/metrics").text
    assert len(kube_api.reviews) == 1
    assert 'kamus_token_review_cache_total{result="hit"} 4.0' in metrics
    assert 'kamus_token_review_cache_total{result="miss"} 1.0' in metrics


def test_the_cache_can_be_turned_off(
    kube_api: KubeApiDouble,
    make_settings: SettingsFactory,
    kubeconfig: Path,
) -> None:
    from decryptor.app import create_app

    token = kube_api.issue_token("team-a", "app")
    settings = make_settings(Decryptor__TokenReviewCacheSeconds="0")
    with TestClient(create_app(settings)) as client:
        for _ in range(3):
            answer = client.post(
                "/api/v1/decrypt", json={"data": "x"}, headers={"Authorization": f"Bearer {token}"}
            )
            assert answer.status_code == 400  # authenticated; "x" is not a ciphertext
    assert len(kube_api.reviews) == 3


def test_the_ttl_cache_forgets_at_the_deadline_and_drops_the_least_recently_used() -> None:
    now = [0.0]
    cache: TtlCache[str, int] = TtlCache(max_entries=2, clock=lambda: now[0])
    cache.put("a", 1, ttl_seconds=10)
    cache.put("b", 2, ttl_seconds=5)
    cache.put("never", 3, ttl_seconds=0)  # nothing to keep
    assert cache.get("a") == 1  # now the most recently used
    cache.put("c", 3, ttl_seconds=10)  # over the bound: "b" goes, not "a"
    assert (cache.get("b"), cache.get("a"), cache.get("c"), cache.get("never")) == (
        None,
        1,
        3,
        None,
    )
    now[0] = 10.0
    assert cache.get("a") is None  # at its deadline
    assert len(cache) == 1
