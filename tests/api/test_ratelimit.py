"""The encryptor's per-client rate limit: 429 with Retry-After, per address, proxies trusted only
when named, counted in values (a batch costs its items), with the buckets on a test clock."""

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from encryptor.app import create_app
from kamus.server.addresses import client_key
from kamus.server.errors import ConfigurationError
from kamus.server.ratelimit import TokenBuckets, parse_limits
from kamus.server.web.problems import PROBLEM_MEDIA_TYPE
from tests.support.settings import SettingsFactory, audit_events

V1 = {"data": "s3cr3t", "service-account": "app", "namespace": "team-a"}
V2 = {"namespace": "team-a", "serviceAccount": "app", "items": {"a": "s3cr3t"}}

Encryptor = Callable[..., TestClient]


@pytest.fixture
def encryptor(make_settings: SettingsFactory) -> Encryptor:
    def build(peer: str = "192.0.2.10", **env: str) -> TestClient:
        return TestClient(create_app(make_settings(**env)), client=(peer, 40000))

    return build


def test_over_the_limit_is_429_with_retry_after(
    encryptor: Encryptor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="kamus.audit")
    with encryptor(Encryptor__RateLimit="3/minute") as client:
        assert [client.post("/api/v1/encrypt", json=V1).status_code for _ in range(3)] == [200] * 3
        refused = client.post("/api/v1/encrypt", json=V1)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "Encryptor__RateLimit" in refused.json()["detail"]
        batch = client.post("/api/v2/encrypt", json=V2)  # the same client, the same budget
        assert batch.status_code == 429
        assert batch.headers["content-type"] == PROBLEM_MEDIA_TYPE
        assert batch.json()["type"] == "urn:kamus:problem:rate-limited"
        assert "kamus_rate_limited_total 2.0" in client.get("/metrics").text
        # Health and metrics are never limited: probes must not fail under load.
        assert client.get("/healthz").status_code == 200
    refusals = [e for e in audit_events(caplog) if e.get("status") == 429]
    assert len(refusals) == 2
    assert refusals[0]["client"] == "192.0.2.10"


def test_a_refused_request_uses_none_of_the_budget(encryptor: Encryptor) -> None:
    with encryptor(Encryptor__RateLimit="2/second;3/minute") as client:
        statuses = [client.post("/api/v1/encrypt", json=V1).status_code for _ in range(6)]
    # Without the check-first, the refused third request would still spend the minute's budget.
    assert statuses[:2] == [200, 200]
    assert 429 in statuses[2:]
    assert statuses.count(200) <= 3


def test_each_client_address_has_its_own_budget(encryptor: Encryptor) -> None:
    settings = {"Encryptor__RateLimit": "1/minute"}
    with (
        encryptor("192.0.2.10", **settings) as first,
        encryptor("192.0.2.11", **settings) as second,
    ):
        assert first.post("/api/v1/encrypt", json=V1).status_code == 200
        assert second.post("/api/v1/encrypt", json=V1).status_code == 200


def forwarded_for(ingress: TestClient) -> Callable[[str], int]:
    """An encrypt through the trusted ``ingress`` for the client its header names: the status."""

    def via(forwarded: str) -> int:
        headers = {"X-Forwarded-For": forwarded}
        status: int = ingress.post("/api/v1/encrypt", json=V1, headers=headers).status_code
        return status

    return via


def test_behind_a_trusted_proxy_the_forwarded_client_counts(encryptor: Encryptor) -> None:
    env = {"Encryptor__RateLimit": "1/minute", "Encryptor__TrustedProxies": "10.0.0.0/8"}
    with encryptor("10.1.2.3", **env) as ingress:
        via = forwarded_for(ingress)
        assert via("198.51.100.1") == 200
        assert via("198.51.100.2") == 200  # another client through the same ingress
        assert via("198.51.100.1") == 429
        # A client cannot pick a fresh address: only the right-most untrusted hop counts.
        assert via("203.0.113.99, 198.51.100.1") == 429
        assert via("198.51.100.2, 10.9.9.9") == 429  # inner proxies are skipped


def test_an_ipv6_client_is_counted_by_its_64_and_a_mapped_ipv4_as_itself(
    encryptor: Encryptor,
) -> None:
    """One IPv6 host usually holds a whole /64: counted per address, it would have 2^64 fresh
    budgets, each admitting a whole batch at once."""
    env = {"Encryptor__RateLimit": "1/minute", "Encryptor__TrustedProxies": "10.0.0.0/8"}
    with encryptor("10.1.2.3", **env) as ingress:
        via = forwarded_for(ingress)
        assert via("2001:db8:1:2::1") == 200
        assert via("2001:db8:1:2:ffff::99") == 429  # the same /64
        assert via("2001:db8:1:3::1") == 200  # another /64
        assert via("198.51.100.7") == 200
        assert via("::ffff:198.51.100.7") == 429  # the same IPv4 client


def test_client_keys() -> None:
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("2001:db8::1") == "2001:db8::/64"
    assert client_key("testclient") == "testclient"


def test_the_header_of_an_untrusted_peer_is_ignored(encryptor: Encryptor) -> None:
    env = {"Encryptor__RateLimit": "1/minute", "Encryptor__TrustedProxies": "10.0.0.0/8"}
    with encryptor("192.0.2.10", **env) as client:
        spoof = [
            client.post("/api/v1/encrypt", json=V1, headers={"X-Forwarded-For": f"198.51.100.{i}"})
            for i in range(2)
        ]
    assert [r.status_code for r in spoof] == [200, 429]


def test_the_limit_can_be_turned_off(encryptor: Encryptor) -> None:
    with encryptor(Encryptor__RateLimit="off") as client:
        assert {client.post("/api/v1/encrypt", json=V1).status_code for _ in range(30)} == {200}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"Encryptor__RateLimit": "lots"}, "Encryptor__RateLimit='lots' is not a rate limit"),
        ({"Encryptor__TrustedProxies": "10.0.0.0/8,ingress"}, "Encryptor__TrustedProxies"),
    ],
)
def test_bad_settings_stop_the_encryptor(
    make_settings: SettingsFactory, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        create_app(make_settings(**env))


# -- values, not requests ------------------------------------------------------------------------


def batch(size: int) -> dict[str, object]:
    return {**V2, "items": {f"k{i}": "s3cr3t" for i in range(size)}}


def test_a_batch_costs_one_unit_per_item(encryptor: Encryptor) -> None:
    with encryptor(Encryptor__RateLimit="10/minute") as client:
        assert client.post("/api/v2/encrypt", json=batch(4)).status_code == 200
        assert client.post("/api/v2/encrypt", json=batch(4)).status_code == 200
        refused = client.post("/api/v2/encrypt", json=batch(4))  # 2 values left, not 4
        assert refused.status_code == 429
        detail = refused.json()["detail"]
        assert "Encryptor__RateLimit is 10 per 1 minute" in detail
        assert "each value of a batch counts (this one has 4)" in detail
        # The 2 values missing refill in 12s (6s each); the header is whole seconds, rounded up.
        assert 10 <= int(refused.headers["retry-after"]) <= 12
        assert f"retry in {refused.headers['retry-after']}s" in detail
        # The refused batch spent nothing: the 2 values left are still there.
        assert [client.post("/api/v1/encrypt", json=V1).status_code for _ in range(3)] == [
            200,
            200,
            429,
        ]
        assert "kamus_rate_limited_total 2.0" in client.get("/metrics").text


def test_a_batch_over_the_limit_is_admitted_into_a_full_budget_then_waited_off(
    encryptor: Encryptor,
) -> None:
    with encryptor(Encryptor__RateLimit="10/minute") as client:
        assert client.post("/api/v2/encrypt", json=batch(15)).status_code == 200
        refused = client.post("/api/v1/encrypt", json=V1)
        assert refused.status_code == 429
        # 15 values at 6s each put the budget 5 values (30s) in debt, and one more takes 6s.
        assert 30 <= int(refused.headers["retry-after"]) <= 36
    with encryptor(Encryptor__RateLimit="10/minute") as client:
        assert client.post("/api/v1/encrypt", json=V1).status_code == 200
        partly_spent = client.post("/api/v2/encrypt", json=batch(15))
        # Not full: it waits until the budget is full again (6s), not forever.
        assert partly_spent.status_code == 429
        assert 1 <= int(partly_spent.headers["retry-after"]) <= 6


def test_bad_batches_are_still_limited(encryptor: Encryptor) -> None:
    """Each request pays one unit before its body is read: bodies that fail validation, and
    batches over Server__MaxBatchItems, cannot be sent without bound either."""
    with encryptor(Encryptor__RateLimit="2/minute", Server__MaxBatchItems="3") as client:
        assert client.post("/api/v2/encrypt", json={"items": {}}).status_code in (400, 422)
        assert client.post("/api/v2/encrypt", json=batch(4)).status_code == 413
        assert client.post("/api/v2/encrypt", json=batch(1)).status_code == 429


# -- the buckets, on a clock the test moves ------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def buckets(spec: str, clock: Clock, **kwargs: int) -> TokenBuckets:
    return TokenBuckets(parse_limits(spec), clock=clock, **kwargs)


def test_a_full_bucket_admits_its_capacity_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = buckets("20/second", clock)
    assert [limiter.take("a", 1) for _ in range(20)] == [None] * 20  # float sums must not drift
    refused = limiter.take("a", 1)
    assert refused is not None
    limit, wait = refused
    assert str(limit) == "20 per 1 second"
    assert wait == pytest.approx(0.05)
    clock.now += 0.5
    assert limiter.take("a", 10) is None
    assert limiter.take("a", 1) is not None


def test_a_cost_over_the_capacity_goes_into_debt_only_from_full() -> None:
    clock = Clock()
    limiter = buckets("20/second", clock)
    assert limiter.take("a", 100) is None  # full: admitted, 80 units in debt
    refused = limiter.take("a", 1)
    assert refused is not None
    assert refused[1] == pytest.approx(4.05)  # the debt, then one unit
    clock.now += 4.05
    assert limiter.take("a", 1) is None
    # Empty again (it just spent the unit it waited for): a 100 waits until it is full, not
    # until it holds 100, which it never would.
    refused = limiter.take("a", 100)
    assert refused is not None
    assert refused[1] == pytest.approx(1.0)
    clock.now += 0.99
    assert limiter.take("a", 100) is not None
    clock.now += 0.01
    assert limiter.take("a", 100) is None


def test_a_refused_request_consumes_nothing() -> None:
    clock = Clock()
    limiter = buckets("10/second", clock)
    assert limiter.take("a", 8) is None
    for _ in range(5):
        assert limiter.take("a", 5) is not None
    assert limiter.take("a", 2) is None  # the 2 left, untouched by the refusals


def test_every_limit_must_admit_and_the_longest_wait_is_named() -> None:
    clock = Clock()
    limiter = buckets("20/second;30/minute", clock)
    assert limiter.take("a", 25) is None  # both full: the second's 20 goes 5 into debt
    clock.now += 10  # the second is full again; the minute's holds 30 - 25 + 5 = 10
    assert limiter.take("a", 10) is None
    refused = limiter.take("a", 5)
    assert refused is not None
    limit, wait = refused
    assert str(limit) == "30 per 1 minute"
    assert wait == pytest.approx(10.0)  # 5 units of the minute's, 2s each


def test_a_deposit_counts_toward_the_cost_and_is_given_back_on_refusal() -> None:
    clock = Clock()
    limiter = buckets("10/second", clock)
    assert limiter.take("a", 1) is None  # the deposit, before the batch's size is known
    assert limiter.take("a", 30, paid=1) is None  # decided as from full
    assert limiter.take("b", 5) is None
    assert limiter.take("b", 1) is None
    assert limiter.take("b", 30, paid=1) is not None  # 5 of 10 left: not full
    assert limiter.take("b", 5) is None  # the deposit was given back


def test_full_buckets_are_forgotten_and_the_table_is_bounded() -> None:
    clock = Clock()
    limiter = buckets("1/second", clock, max_clients=8)
    for client in "abcdefgh":
        assert limiter.take(client, 1) is None
    assert len(limiter) == 8
    clock.now += 1  # all full again
    assert limiter.take("i", 1) is None
    assert len(limiter) == 1
    # More clients in debt than the table holds: those nearest to full are forgotten.
    assert limiter.take("deep", 5) is None
    for client in "jklmnop":
        clock.now += 0.01
        assert limiter.take(client, 1) is None
    assert len(limiter) <= 8
    assert limiter.take("deep", 1) is not None  # the deepest debt is the one kept
    assert limiter.take("i", 1) is None


@pytest.mark.parametrize("spec", ["0/second", "20/second;0/minute"])
def test_a_limit_of_zero_is_refused(make_settings: SettingsFactory, spec: str) -> None:
    with pytest.raises(ConfigurationError, match="each at least 1"):
        create_app(make_settings(Encryptor__RateLimit=spec))
