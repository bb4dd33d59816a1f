"""The encryptor's per-client rate limit: 429 with Retry-After, per address, proxies trusted only
when named."""

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from encryptor.app import create_app
from kamus.providers import ConfigurationError
from kamus.web import PROBLEM_MEDIA_TYPE
from tests.conftest import SettingsFactory, audit_events

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


def test_behind_a_trusted_proxy_the_forwarded_client_counts(encryptor: Encryptor) -> None:
    env = {"Encryptor__RateLimit": "1/minute", "Encryptor__TrustedProxies": "10.0.0.0/8"}
    with encryptor("10.1.2.3", **env) as ingress:

        def via(forwarded: str) -> int:
            headers = {"X-Forwarded-For": forwarded}
            status: int = ingress.post("/api/v1/encrypt", json=V1, headers=headers).status_code
            return status

        assert via("198.51.100.1") == 200
        assert via("198.51.100.2") == 200  # another client through the same ingress
        assert via("198.51.100.1") == 429
        # A client cannot pick a fresh address: only the right-most untrusted hop counts.
        assert via("203.0.113.99, 198.51.100.1") == 429
        assert via("198.51.100.2, 10.9.9.9") == 429  # inner proxies are skipped


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
