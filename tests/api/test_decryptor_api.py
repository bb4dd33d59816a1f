"""The decryptor's HTTP contract, against the Kubernetes API double through the real client."""

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from crypto.aes import key_id
from decryptor.app import create_app
from tests.k8s_double import Faults, KubeApiDouble
from tests.support.apps import bearer
from tests.support.settings import SettingsFactory, aes_encrypt, audit_events, kamus_aes_value

DECRYPT = "/api/v1/decrypt"


@pytest.mark.parametrize("path", ["/api/v1/decrypt", "/decrypt"])
def test_round_trip_as_the_right_service_account(
    decryptor_client: TestClient, kube_api: KubeApiDouble, aes_key: str, path: str
) -> None:
    ciphertext = aes_encrypt(aes_key, "s3cr3t ✓", "team-a:app")
    token = kube_api.issue_token("team-a", "app")
    response = decryptor_client.post(path, json={"data": ciphertext}, headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.text == "s3cr3t ✓"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert [r.username for r in kube_api.reviews] == ["system:serviceaccount:team-a:app"]


def test_bearer_scheme_is_case_insensitive(
    decryptor_client: TestClient, kube_api: KubeApiDouble, aes_key: str
) -> None:
    headers = {"Authorization": "bearer " + kube_api.issue_token("team-a", "app")}
    body = {"data": aes_encrypt(aes_key, "x", "team-a:app")}
    assert decryptor_client.post(DECRYPT, json=body, headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("other_namespace", "other_sa"), [("team-a", "other"), ("team-b", "app"), ("team-b", "other")]
)
def test_other_identities_cannot_decrypt(
    decryptor_client: TestClient,
    kube_api: KubeApiDouble,
    aes_key: str,
    other_namespace: str,
    other_sa: str,
) -> None:
    ciphertext = aes_encrypt(aes_key, "s3cr3t", "team-a:app")
    token = kube_api.issue_token(other_namespace, other_sa)
    response = decryptor_client.post(DECRYPT, json={"data": ciphertext}, headers=bearer(token))
    assert response.status_code == 400
    assert f"as {other_namespace}:{other_sa}" in response.json()["detail"]
    assert "s3cr3t" not in response.text


@pytest.mark.parametrize(
    "data",
    [
        "",
        "garbage",
        "kamus$a1$AAAAAAAA$AAAA",
        "kamus$zz$whatever",
        "env$abc$def",
        "AAAA:BBBB",
        "a:b:c",
        "\u0000\uffff",
    ],
)
def test_undecryptable_data_is_400_never_500(
    decryptor_client: TestClient, kube_api: KubeApiDouble, data: str
) -> None:
    token = kube_api.issue_token("team-a", "app")
    response = decryptor_client.post(DECRYPT, json={"data": data}, headers=bearer(token))
    assert response.status_code == 400
    # None of these has a shape any format has: said so, before any key is used (the one
    # message for what a key decides: tests/e2e/test_malformed_ciphertexts.py).
    assert response.json()["detail"].startswith("this is not a Kamus ciphertext: ")


def test_lone_surrogate_data_is_400(decryptor_client: TestClient, kube_api: KubeApiDouble) -> None:
    headers = {**bearer(kube_api.issue_token("team-a", "app")), "content-type": "application/json"}
    for content in [b'{"data": "\\ud800"}', b'{"data": "kamus$a1$\\udfff$x"}']:
        response = decryptor_client.post(DECRYPT, content=content, headers=headers)
        assert response.status_code == 400


def test_kamus_legacy_values_open_for_any_service_account_without_derivation(
    decryptor_client: TestClient, kube_api: KubeApiDouble, aes_key: str
) -> None:
    # Kamus's default: the master key itself, so any service account could read any value.
    legacy = kamus_aes_value(aes_key, "from kamus")
    for ns, sa in [("team-a", "app"), ("team-b", "other")]:
        response = decryptor_client.post(
            DECRYPT, json={"data": legacy}, headers=bearer(kube_api.issue_token(ns, sa))
        )
        assert response.text == "from kamus"
    metrics = decryptor_client.get("/metrics").text
    assert (
        'kamus_legacy_decryptions_total{format="legacy-aes-cbc",provider="AESKey"} 2.0' in metrics
    )


def test_legacy_values_refused_when_switched_off(
    make_settings: SettingsFactory, kubeconfig: Path, kube_api: KubeApiDouble, aes_key: str
) -> None:
    settings = make_settings(KeyManagement__AES__AllowLegacyCiphertexts="false")
    with TestClient(create_app(settings)) as client:
        response = client.post(
            DECRYPT,
            json={"data": kamus_aes_value(aes_key, "old")},
            headers=bearer(kube_api.issue_token("team-a", "app")),
        )
        assert response.status_code == 400


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer    "},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Token abc"},
    ],
)
def test_missing_token_is_401(
    decryptor_client: TestClient, kube_api: KubeApiDouble, headers: dict[str, str]
) -> None:
    response = decryptor_client.post(DECRYPT, json={"data": "x"}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in response.json()["detail"]
    assert kube_api.reviews == []  # nothing to review


def _expired(double: KubeApiDouble) -> str:
    return double.issue_token("team-a", "app", expires_in=-60)


def _not_yet_valid(double: KubeApiDouble) -> str:
    import time

    return double.issue_token("team-a", "app", not_before=time.time() + 600)


def _wrong_issuer(double: KubeApiDouble) -> str:
    return double.issue_token("team-a", "app", issuer="https://evil.example")


def _wrong_audience(double: KubeApiDouble) -> str:
    return double.issue_token("team-a", "app", audiences=["vault"])


def _forged(double: KubeApiDouble) -> str:
    return double.forge_token("team-a", "app")


def _garbage(double: KubeApiDouble) -> str:
    return "not-a-jwt"


@pytest.mark.parametrize(
    "make_token", [_expired, _not_yet_valid, _wrong_issuer, _wrong_audience, _forged, _garbage]
)
def test_tokens_kubernetes_rejects_are_401(
    decryptor_client: TestClient, kube_api: KubeApiDouble, aes_key: str, make_token: object
) -> None:
    assert callable(make_token)
    token = make_token(kube_api)
    body = {"data": aes_encrypt(aes_key, "s3cr3t", "team-a:app")}
    response = decryptor_client.post(DECRYPT, json=body, headers=bearer(token))
    assert response.status_code == 401
    assert "not accepted by Kubernetes" in response.json()["detail"]
    assert len(kube_api.reviews) == 1
    assert kube_api.reviews[0].authenticated is False


def test_token_of_a_deleted_service_account_is_401(
    decryptor_client: TestClient, kube_api: KubeApiDouble, aes_key: str
) -> None:
    token = kube_api.issue_token("team-a", "app")
    kube_api.deleted_service_accounts.add(("team-a", "app"))
    body = {"data": aes_encrypt(aes_key, "s3cr3t", "team-a:app")}
    assert decryptor_client.post(DECRYPT, json=body, headers=bearer(token)).status_code == 401


def test_a_user_that_is_not_a_service_account_is_403(
    decryptor_client: TestClient, kube_api: KubeApiDouble, aes_key: str
) -> None:
    token = kube_api.issue_user_token("jane@example.com")
    body = {"data": aes_encrypt(aes_key, "s3cr3t", "team-a:app")}
    response = decryptor_client.post(DECRYPT, json=body, headers=bearer(token))
    assert response.status_code == 403
    assert "only Kubernetes service accounts" in response.json()["detail"]


def test_a_user_named_like_a_service_account_with_extra_parts_is_403(
    decryptor_client: TestClient, kube_api: KubeApiDouble
) -> None:
    token = kube_api.issue_user_token("system:serviceaccount:team-a:app:extra")
    response = decryptor_client.post(DECRYPT, json={"data": "x"}, headers=bearer(token))
    assert response.status_code == 403


def test_default_service_account_is_403(
    decryptor_client: TestClient, kube_api: KubeApiDouble, aes_key: str
) -> None:
    body = {"data": aes_encrypt(aes_key, "s3cr3t", "team-a:default")}
    token = kube_api.issue_token("team-a", "default")
    response = decryptor_client.post(DECRYPT, json=body, headers=bearer(token))
    assert response.status_code == 403
    assert "'default' service account" in response.json()["detail"]


def test_default_service_account_may_decrypt_when_allowed(
    make_settings: SettingsFactory, kubeconfig: Path, kube_api: KubeApiDouble, aes_key: str
) -> None:
    settings = make_settings(Decryptor__DenyDefaultServiceAccount="false")
    with TestClient(create_app(settings)) as client:
        body = {"data": aes_encrypt(aes_key, "s3cr3t", "team-a:default")}
        token = kube_api.issue_token("team-a", "default")
        response = client.post(DECRYPT, json=body, headers=bearer(token))
        assert response.status_code == 200
        assert response.text == "s3cr3t"


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"{}", "data: is required"), (b"{bad", "not valid JSON"), (b'{"data": 5}', "data: must be")],
)
def test_bad_bodies_are_400(
    decryptor_client: TestClient, kube_api: KubeApiDouble, content: bytes, expected: str
) -> None:
    response = decryptor_client.post(
        DECRYPT,
        content=content,
        headers={
            **bearer(kube_api.issue_token("team-a", "app")),
            "content-type": "application/json",
        },
    )
    assert response.status_code == 400
    assert expected in response.json()["detail"]


@pytest.fixture
def fast_timeout_client(make_settings: SettingsFactory, kubeconfig: Path) -> Iterator[TestClient]:
    settings = make_settings(Kubernetes__RequestTimeoutSeconds="0.5", Server__RetryAfterSeconds="7")
    with TestClient(create_app(settings)) as client:
        yield client


def _assert_unavailable(client: TestClient, token: str, aes_key: str) -> None:
    body = {"data": aes_encrypt(aes_key, "s3cr3t", "team-a:app")}
    response = client.post(DECRYPT, json=body, headers=bearer(token))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert "Kubernetes API is unavailable" in response.json()["detail"]


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_apiserver_errors_are_503_with_retry_after(
    fast_timeout_client: TestClient, kube_api: KubeApiDouble, aes_key: str, status: int
) -> None:
    token = kube_api.issue_token("team-a", "app")
    kube_api.faults = Faults(fail_status=status)
    _assert_unavailable(fast_timeout_client, token, aes_key)


@pytest.mark.slow
def test_slow_apiserver_is_503_not_a_hang(
    fast_timeout_client: TestClient, kube_api: KubeApiDouble, aes_key: str
) -> None:
    token = kube_api.issue_token("team-a", "app")
    kube_api.faults = Faults(delay_seconds=2)
    _assert_unavailable(fast_timeout_client, token, aes_key)


def test_unreachable_apiserver_is_503(
    fast_timeout_client: TestClient, kube_api: KubeApiDouble, aes_key: str
) -> None:
    token = kube_api.issue_token("team-a", "app")
    kube_api.stop()
    _assert_unavailable(fast_timeout_client, token, aes_key)
    kube_api.start()
    body = {"data": aes_encrypt(aes_key, "back", "team-a:app")}
    response = fast_timeout_client.post(DECRYPT, json=body, headers=bearer(token))
    assert response.text == "back"


def test_decryptor_without_tokenreview_rights_is_503_not_401(
    fast_timeout_client: TestClient, kube_api: KubeApiDouble, aes_key: str
) -> None:
    # Our own RBAC is missing: a misconfiguration to fix, not the caller's fault.
    kube_api.reviewers.clear()
    _assert_unavailable(fast_timeout_client, kube_api.issue_token("team-a", "app"), aes_key)


def test_configured_audiences_are_sent_and_enforced(
    make_settings: SettingsFactory, kubeconfig: Path, kube_api: KubeApiDouble, aes_key: str
) -> None:
    settings = make_settings(Decryptor__Audiences="kamus, kamus-decryptor")
    with TestClient(create_app(settings)) as client:
        body = {"data": aes_encrypt(aes_key, "s3cr3t", "team-a:app")}
        good = kube_api.issue_token("team-a", "app", audiences=["kamus"])
        assert client.post(DECRYPT, json=body, headers=bearer(good)).text == "s3cr3t"
        assert kube_api.reviews[-1].audiences == ["kamus", "kamus-decryptor"]
        # A token for the apiserver (the default audience) must not be replayable here.
        apiserver_token = kube_api.issue_token("team-a", "app")
        response = client.post(DECRYPT, json=body, headers=bearer(apiserver_token))
        assert response.status_code == 401


def test_is_alive_checks_tokenreview_permission_and_caches_it(
    make_settings: SettingsFactory, kubeconfig: Path, kube_api: KubeApiDouble
) -> None:
    with TestClient(create_app(make_settings())) as client:
        alive = client.get("/api/v1/isAlive")
        assert alive.status_code == 200
        assert alive.json() is True
        kube_api.stop()  # cached: no apiserver call within the cache window
        assert client.get("/api/v1/isAlive").json() is True
    settings = make_settings(Decryptor__AccessReviewCacheSeconds="0")
    kube_api.start()
    kube_api.reviewers.clear()
    with TestClient(create_app(settings)) as client:
        denied = client.get("/api/v1/isAlive")
        assert denied.status_code == 503
        assert denied.json() is False
        kube_api.stop()
        assert client.get("/api/v1/isAlive").status_code == 503


def test_health_readiness_and_openapi(decryptor_client: TestClient) -> None:
    assert decryptor_client.get("/healthz").json() == {"status": "ok"}
    assert decryptor_client.get("/readyz").json() == {"status": "ready"}
    spec = decryptor_client.get("/openapi.json").json()
    assert "/api/v1/decrypt" in spec["paths"]
    assert "ServiceAccountToken" in spec["components"]["securitySchemes"]


def test_decryption_metrics_by_format_and_outcome(
    decryptor_client: TestClient, kube_api: KubeApiDouble, aes_key: str
) -> None:
    token = kube_api.issue_token("team-a", "app")
    decryptor_client.post(
        DECRYPT, json={"data": aes_encrypt(aes_key, "x", "team-a:app")}, headers=bearer(token)
    )
    decryptor_client.post(DECRYPT, json={"data": "junk"}, headers=bearer(token))
    decryptor_client.post(DECRYPT, json={"data": "junk"})
    text = decryptor_client.get("/metrics").text
    kid = key_id(base64.b64decode(aes_key))
    assert (
        f'kamus_decryptions_total{{format="kamus-a1",key_id="{kid}",outcome="success",'
        'provider="AESKey"} 1.0' in text
    )
    assert (
        'kamus_decryptions_total{format="legacy-raw",key_id="",outcome="failure",'
        'provider="AESKey"} 1.0' in text
    )
    assert 'kamus_token_reviews_total{outcome="authenticated"} 2.0' in text
    assert 'kamus_token_reviews_total{outcome="missing"} 1.0' in text


def test_audit_lines_carry_identity_and_outcome_never_token_or_data(
    decryptor_client: TestClient,
    kube_api: KubeApiDouble,
    aes_key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO")
    token = kube_api.issue_token("team-a", "app")
    ciphertext = aes_encrypt(aes_key, "s3cr3t", "team-a:app")
    decryptor_client.post(DECRYPT, json={"data": ciphertext}, headers=bearer(token))
    decryptor_client.post(DECRYPT, json={"data": ciphertext}, headers=bearer("bad"))
    other = kube_api.issue_token("team-b", "app")
    decryptor_client.post(DECRYPT, json={"data": ciphertext}, headers=bearer(other))
    fields = audit_events(caplog)
    assert [(f["status"], f["outcome"]) for f in fields] == [
        (200, "success"),
        (401, "denied"),
        (400, "rejected"),
    ]
    assert fields[0]["namespace"] == "team-a"
    assert fields[0]["service_account"] == "app"
    assert fields[0]["user"] == "system:serviceaccount:team-a:app"
    assert fields[0]["format"] == "kamus-a1"
    assert fields[2]["namespace"] == "team-b"
    assert "authentication failed" in str(fields[2]["reason"])
    dumped = caplog.text + json.dumps(fields)
    for secret in ["s3cr3t", token, other, ciphertext, aes_key]:
        assert secret not in dumped
