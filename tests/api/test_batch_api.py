"""The v2 batch APIs: many values in one request, one TokenReview, answers per name."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from crypto import AESKeyManager
from crypto.errors import KeyManagerUnavailable
from crypto.lifecycle import Opened
from decryptor.app import create_app as create_decryptor
from encryptor.app import create_app as create_encryptor
from tests.k8s_double import KubeApiDouble
from tests.support.apps import bearer
from tests.support.settings import SettingsFactory, audit_events


@pytest.fixture
def encryptor(make_settings: SettingsFactory) -> Iterator[TestClient]:
    with TestClient(create_encryptor(make_settings(Server__MaxBatchItems="3"))) as client:
        yield client


@pytest.fixture
def decryptor(make_settings: SettingsFactory, kubeconfig: Path) -> Iterator[TestClient]:
    with TestClient(create_decryptor(make_settings(Server__MaxBatchItems="3"))) as client:
        yield client


def seal(encryptor: TestClient, items: dict[str, str], sa: str = "app") -> dict[str, str]:
    body = {"namespace": "team-a", "serviceAccount": sa, "items": items}
    response = encryptor.post("/api/v2/encrypt", json=body)
    assert response.status_code == 200, response.text
    return {name: item["data"] for name, item in response.json()["items"].items()}


def test_batch_round_trip_with_one_tokenreview(
    encryptor: TestClient, decryptor: TestClient, kube_api: KubeApiDouble
) -> None:
    sealed = seal(encryptor, {"user": "admin", "password": 'p"w$\n✓', "empty": ""})
    assert all(v.startswith("kamus$m1$") for v in sealed.values())
    # One data key and one HPKE wrap for the request: the values share header and MAC.
    assert len({v.rsplit("$", 1)[0] for v in sealed.values()}) == 1
    assert len({v.rsplit("$", 1)[1] for v in sealed.values()}) == 3
    response = decryptor.post(
        "/api/v2/decrypt",
        json={"items": sealed},
        headers=bearer(kube_api.issue_token("team-a", "app")),
    )
    assert response.status_code == 200
    assert response.json() == {
        "items": {"user": {"data": "admin"}, "password": {"data": 'p"w$\n✓'}, "empty": {"data": ""}}
    }
    assert len(kube_api.reviews) == 1


def test_each_item_fails_or_succeeds_on_its_own(
    encryptor: TestClient, decryptor: TestClient, kube_api: KubeApiDouble
) -> None:
    mine = seal(encryptor, {"ok": "fine"})["ok"]
    theirs = seal(encryptor, {"x": "not yours"}, sa="web")["x"]
    response = decryptor.post(
        "/api/v2/decrypt",
        json={"items": {"ok": mine, "theirs": theirs, "junk": "junk"}},
        headers=bearer(kube_api.issue_token("team-a", "app")),
    )
    items = response.json()["items"]
    assert items["ok"] == {"data": "fine"}
    # A value made for another identity and one that is no ciphertext at all are told apart.
    assert items["theirs"]["error"].startswith("the data cannot be decrypted as team-a:app")
    assert items["junk"]["error"].startswith("this is not a Kamus ciphertext: ")
    for name in ("theirs", "junk"):
        assert "data" not in items[name]
    assert "not yours" not in response.text


def test_batch_decrypt_needs_a_token_before_anything_else(
    decryptor: TestClient, kube_api: KubeApiDouble
) -> None:
    assert decryptor.post("/api/v2/decrypt", json={"items": {"a": "b"}}).status_code == 401
    # Even a malformed body is refused as unauthenticated first: nothing is revealed.
    assert decryptor.post("/api/v2/decrypt", json={"items": 5}).status_code == 401
    user = kube_api.issue_user_token("jane")
    response = decryptor.post("/api/v2/decrypt", json={"items": {"a": "b"}}, headers=bearer(user))
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("items", "status", "message"),
    [
        ({}, 400, "items: send at least one item"),
        ({"a": 1}, 400, "items.a: must be a string"),
        ({str(i): "x" for i in range(4)}, 413, "at most 3 per request (Server__MaxBatchItems)"),
    ],
)
def test_batch_limits_and_validation(
    encryptor: TestClient,
    decryptor: TestClient,
    kube_api: KubeApiDouble,
    items: dict[str, object],
    status: int,
    message: str,
) -> None:
    token = kube_api.issue_token("team-a", "app")
    for client, body in [
        (decryptor, {"items": items}),
        (encryptor, {"namespace": "team-a", "serviceAccount": "app", "items": items}),
    ]:
        response = client.post(
            f"/api/v2/{'decrypt' if client is decryptor else 'encrypt'}",
            json=body,
            headers=bearer(token),
        )
        assert response.status_code == status
        assert message in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"namespace": "team-a", "serviceAccount": "default", "items": {"a": "x"}}, "'default'"),
        ({"namespace": "Team", "serviceAccount": "app", "items": {"a": "x"}}, "namespace: must"),
        ({"namespace": "team-a", "items": {"a": "x"}}, "serviceAccount: is required"),
    ],
)
def test_batch_encrypt_checks_the_identity_first(
    encryptor: TestClient, body: dict[str, object], message: str
) -> None:
    response = encryptor.post("/api/v2/encrypt", json=body)
    assert response.status_code == 400
    assert message in response.json()["detail"]


class DownKeyManager(AESKeyManager):
    """The in-process crypto layer reporting an outage (no network is involved here)."""

    async def open(self, ciphertext: str, sa_id: str) -> Opened:
        raise KeyManagerUnavailable("injected")


def test_a_kms_outage_fails_the_whole_batch_as_503(
    make_settings: SettingsFactory, kubeconfig: Path, kube_api: KubeApiDouble
) -> None:
    keys = DownKeyManager(b"k" * 32)
    ciphertext = asyncio.run(AESKeyManager(b"k" * 32).encrypt(b"v", "team-a:app"))
    with TestClient(create_decryptor(make_settings(), key_manager=keys)) as client:
        response = client.post(
            "/api/v2/decrypt",
            json={"items": {"a": ciphertext, "b": ciphertext}},
            headers=bearer(kube_api.issue_token("team-a", "app")),
        )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"


def test_one_audit_line_per_batch(
    encryptor: TestClient,
    decryptor: TestClient,
    kube_api: KubeApiDouble,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="kamus.audit")
    sealed = seal(encryptor, {"a": "s3cr3t", "b": "s3cr3t-2"})
    decryptor.post(
        "/api/v2/decrypt",
        json={"items": {**sealed, "c": "junk"}},
        headers=bearer(kube_api.issue_token("team-a", "app")),
    )
    events = audit_events(caplog)
    assert [(e["service"], e["items"]) for e in events] == [("encryptor", 2), ("decryptor", 3)]
    assert events[1]["failed"] == 1
    assert "s3cr3t" not in caplog.text
