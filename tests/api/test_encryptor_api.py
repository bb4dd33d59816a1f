"""The public encryptor's HTTP contract: Kamus's v1 API, exactly, plus validation and limits."""

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from crypto import AESKeyManager
from encryptor.app import create_app
from tests.support.settings import SettingsFactory, audit_events

GOOD = {"data": "s3cr3t", "service-account": "app", "namespace": "team-a"}


class RecordingKeyManager:
    """Records what reaches the crypto layer (in-process: nothing here crosses a network)."""

    def __init__(self, inner: AESKeyManager) -> None:
        self.inner = inner
        self.calls: list[str] = []

    async def encrypt(self, plaintext: bytes, sa_id: str) -> str:
        self.calls.append(sa_id)
        return await self.inner.encrypt(plaintext, sa_id)

    async def decrypt(self, ciphertext: str, sa_id: str) -> bytes:
        return await self.inner.decrypt(ciphertext, sa_id)

    async def check(self) -> None:
        await self.inner.check()


@pytest.fixture
def recorded(make_settings: SettingsFactory) -> Iterator[tuple[TestClient, RecordingKeyManager]]:
    keys = RecordingKeyManager(AESKeyManager(b"k" * 32))
    with TestClient(create_app(make_settings(), key_manager=keys)) as client:
        yield client, keys


@pytest.mark.parametrize("path", ["/api/v1/encrypt", "/encrypt"])
def test_encrypt_returns_text_ciphertext_bound_to_the_identity(
    recorded: tuple[TestClient, RecordingKeyManager], path: str
) -> None:
    client, keys = recorded
    response = client.post(path, json=GOOD)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text.startswith("kamus$a1$")
    assert "s3cr3t" not in response.text
    assert keys.calls == ["team-a:app"]


def test_unicode_and_empty_values_encrypt(encryptor_client: TestClient) -> None:
    for data in ["", "ünïcødé ✓ 秘密", "line1\nline2"]:
        response = encryptor_client.post("/api/v1/encrypt", json={**GOOD, "data": data})
        assert response.status_code == 200, response.text


def test_lone_surrogates_are_400_not_500(encryptor_client: TestClient) -> None:
    content = b'{"data": "\\ud800", "service-account": "app", "namespace": "team-a"}'
    response = encryptor_client.post(
        "/api/v1/encrypt", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["detail"].startswith("data: must be text")


@pytest.mark.parametrize("field", ["data", "service-account", "namespace"])
def test_missing_field_is_400_naming_it(encryptor_client: TestClient, field: str) -> None:
    body = {k: v for k, v in GOOD.items() if k != field}
    response = encryptor_client.post("/api/v1/encrypt", json=body)
    assert response.status_code == 400
    assert response.json()["detail"] == f"{field}: is required"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/api/v1/encrypt",
            {"data": "x", "service_account": "app", "namespace": "a"},
            "service-account",
        ),
        (
            "/api/v2/encrypt",
            {"items": {"k": "x"}, "service_account": "app", "namespace": "a"},
            "serviceAccount",
        ),
    ],
)
def test_the_python_spelling_of_the_service_account_is_a_missing_field(
    encryptor_client: TestClient, path: str, body: dict[str, object], field: str
) -> None:
    """Kamus required "service-account" and refused "service_account" as missing: so do we,
    rather than accept a spelling no Kamus client sends and no document names."""
    response = encryptor_client.post(path, json=body)
    assert response.status_code == 400
    assert response.json()["detail"] == f"{field}: is required"


@pytest.mark.parametrize("field", ["data", "service-account", "namespace"])
@pytest.mark.parametrize("value", [1, None, ["x"], {"a": "b"}, True])
def test_wrong_type_is_400_naming_the_field(
    encryptor_client: TestClient, field: str, value: object
) -> None:
    response = encryptor_client.post("/api/v1/encrypt", json={**GOOD, field: value})
    assert response.status_code == 400
    assert response.json()["detail"].startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("namespace", "Team-A"),
        ("namespace", "team_a"),
        ("namespace", "-team"),
        ("namespace", "team."),
        ("namespace", "a" * 64),
        ("namespace", ""),
        ("namespace", "team.a"),  # a namespace is a label: no dots
        ("service-account", "App"),
        ("service-account", "app:x"),
        ("service-account", ".app"),
        ("service-account", "a" * 254),
        ("service-account", ""),
        ("service-account", "app/../x"),
    ],
)
def test_names_follow_kubernetes_rules(
    recorded: tuple[TestClient, RecordingKeyManager], field: str, value: str
) -> None:
    client, keys = recorded
    response = client.post("/api/v1/encrypt", json={**GOOD, field: value})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail.startswith(f"{field}: must be a Kubernetes")
    assert keys.calls == []


@pytest.mark.parametrize(
    ("namespace", "service_account"),
    [("a" * 63, "app"), ("team-a", "a" * 253), ("team-a", "app.v2-prod"), ("0", "9")],
)
def test_longest_and_dotted_valid_names_are_accepted(
    encryptor_client: TestClient, namespace: str, service_account: str
) -> None:
    body = {**GOOD, "namespace": namespace, "service-account": service_account}
    assert encryptor_client.post("/api/v1/encrypt", json=body).status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/encrypt", "/encrypt"])
def test_default_service_account_is_refused_before_any_crypto(
    recorded: tuple[TestClient, RecordingKeyManager], path: str
) -> None:
    client, keys = recorded
    response = client.post(path, json={**GOOD, "service-account": "default"})
    assert response.status_code == 400
    assert "dedicated service account" in response.json()["detail"]
    assert keys.calls == []


@pytest.mark.parametrize(
    ("content", "headers", "expected"),
    [
        (b"{not json", {"content-type": "application/json"}, "not valid JSON"),
        (b"[1, 2]", {"content-type": "application/json"}, "must be a JSON object"),
        (b'"text"', {"content-type": "application/json"}, "must be a JSON object"),
        (b"", {"content-type": "application/json"}, "must be a JSON object"),
        (
            b"data=x&namespace=y",
            {"content-type": "application/x-www-form-urlencoded"},
            "Content-Type: application/json",
        ),
    ],
)
def test_malformed_bodies_are_400_not_422(
    encryptor_client: TestClient, content: bytes, headers: dict[str, str], expected: str
) -> None:
    response = encryptor_client.post("/api/v1/encrypt", content=content, headers=headers)
    assert response.status_code == 400
    assert expected in response.json()["detail"]


def test_json_without_content_type_is_accepted(encryptor_client: TestClient) -> None:
    # Some Kamus clients send no Content-Type; Kamus accepted them.
    response = encryptor_client.post("/api/v1/encrypt", content=json.dumps(GOOD).encode())
    assert response.status_code == 200


def test_oversized_body_is_413_with_the_limit(make_settings: SettingsFactory) -> None:
    app = create_app(make_settings(Server__MaxRequestBodyBytes="1000"))
    with TestClient(app) as client:
        body = {**GOOD, "data": "x" * 1000}
        response = client.post("/api/v1/encrypt", json=body)
        assert response.status_code == 413
        assert "1000-byte limit" in response.json()["detail"]
        assert "Server__MaxRequestBodyBytes" in response.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
            yield json.dumps(body).encode()[:600]
            yield json.dumps(body).encode()[600:]

        assert client.post("/api/v1/encrypt", content=chunks()).status_code == 413
        small = client.post("/api/v1/encrypt", json={**GOOD, "data": "x" * 100})
        assert small.status_code == 200


def test_default_body_limit_is_one_mebibyte(encryptor_client: TestClient) -> None:
    near = {**GOOD, "data": "x" * (1024 * 1024 - 100)}
    assert encryptor_client.post("/api/v1/encrypt", json=near).status_code == 200
    over = {**GOOD, "data": "x" * (1024 * 1024)}
    assert encryptor_client.post("/api/v1/encrypt", json=over).status_code == 413


def test_health_endpoints(encryptor_client: TestClient) -> None:
    alive = encryptor_client.get("/api/v1/isAlive")
    assert alive.status_code == 200
    assert alive.json() is True
    assert encryptor_client.get("/healthz").json() == {"status": "ok"}
    assert encryptor_client.get("/readyz").json() == {"status": "ready"}


def test_openapi_documents_the_v1_api(encryptor_client: TestClient) -> None:
    spec = encryptor_client.get("/openapi.json").json()
    assert "/api/v1/encrypt" in spec["paths"]
    schema = spec["components"]["schemas"]["EncryptRequest"]
    assert set(schema["required"]) == {"data", "service-account", "namespace"}


def test_encryptor_serves_no_decryption(encryptor_client: TestClient) -> None:
    for path in ["/api/v1/decrypt", "/decrypt"]:
        assert encryptor_client.post(path, json={"data": "x"}).status_code == 404


def test_metrics_count_requests_and_encryptions(encryptor_client: TestClient) -> None:
    encryptor_client.post("/api/v1/encrypt", json=GOOD)
    encryptor_client.post("/api/v1/encrypt", json={**GOOD, "namespace": "Bad"})
    text = encryptor_client.get("/metrics").text
    assert 'kamus_encryptions_total{outcome="success",provider="AESKey"} 1.0' in text
    assert (
        'kamus_http_requests_total{method="POST",route="/api/v1/encrypt",status="200"} 1.0' in text
    )
    assert (
        'kamus_http_requests_total{method="POST",route="/api/v1/encrypt",status="400"} 1.0' in text
    )
    assert "kamus_http_request_duration_seconds_bucket" in text


def test_every_request_writes_one_audit_line_without_data(
    encryptor_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="kamus.audit")
    encryptor_client.post("/api/v1/encrypt", json=GOOD)
    encryptor_client.post("/encrypt", json={**GOOD, "service-account": "default"})
    encryptor_client.post("/api/v1/encrypt", content=b"{bad")
    encryptor_client.get("/healthz")
    fields = audit_events(caplog)
    assert [f["status"] for f in fields] == [200, 400, 400]
    assert [f["outcome"] for f in fields] == ["success", "rejected", "rejected"]
    assert all(f["log_type"] == "audit" and f["source_ip"] for f in fields)
    assert fields[0]["namespace"] == "team-a"
    assert fields[0]["service_account"] == "app"
    assert fields[1]["reason"] == "default service account"
    assert "s3cr3t" not in caplog.text
    assert all("s3cr3t" not in json.dumps(f) for f in fields)
