"""The encryptor's public key bundle: GET /api/v2/keys, sealing with only the bundle, the
anchor a renewed bundle must come from, and the legacy output format."""

import asyncio
import base64
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from crypto import AESKeyManager, bundle
from crypto.errors import DecryptionError
from crypto.sealing import Schedule
from encryptor.app import create_app
from kamus.server import sealing
from kamus.server.errors import ConfigurationError
from kamus.server.sealing import RELOAD_CHECK_SECONDS, BundleSource, SealingKeyManager
from kamus.server.settings import Settings
from tests.support.kms import AWS
from tests.support.settings import SettingsFactory

BODY = {"data": "s3cret", "service-account": "app", "namespace": "team-a"}
Bundled = Callable[..., Settings]


def export(*masters: bytes) -> str:
    return bundle.from_masters(list(masters), now=datetime.now(UTC), schedule=Schedule())


@pytest.fixture
def bundled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Bundled:
    """Settings with only a bundle file: no key of any kind in the environment."""

    def build(text: str | None, **env: str) -> Settings:
        path = tmp_path / "keys.json"
        if text is not None:
            path.write_text(text)
        monkeypatch.setenv("Encryptor__SealingKeysFile", str(path))
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return Settings()

    return build


def opens(master: bytes, ciphertext: str) -> bytes:
    return asyncio.run(AESKeyManager(master).decrypt(ciphertext, "team-a:app"))


def test_the_bundle_is_served_cacheable_with_an_etag(encryptor_client: TestClient) -> None:
    response = encryptor_client.get("/api/v2/keys")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "public, max-age=300"
    loaded = bundle.load(response.text)
    assert {k.state for k in loaded.keys} == {"active", "next", "decrypt-only"}
    again = encryptor_client.get(
        "/api/v2/keys", headers={"If-None-Match": response.headers["etag"]}
    )
    assert again.status_code == 304
    assert again.content == b""


def test_an_encryptor_with_only_the_bundle_seals_what_the_master_key_opens(
    bundled: Bundled,
) -> None:
    master = os.urandom(32)
    with TestClient(create_app(bundled(export(master)))) as client:
        assert client.get("/readyz").status_code == 200
        sealed = client.post("/api/v1/encrypt", json=BODY)
        assert sealed.status_code == 200
        assert opens(master, sealed.text) == b"s3cret"
        batch = client.post(
            "/api/v2/encrypt",
            json={"namespace": "team-a", "serviceAccount": "app", "items": {"a": "1", "b": "2"}},
        )
        values = [item["data"] for item in batch.json()["items"].values()]
        assert [opens(master, v) for v in values] == [b"1", b"2"]


def test_without_a_valid_bundle_it_is_not_ready_and_answers_503(bundled: Bundled) -> None:
    with TestClient(create_app(bundled("{ not a bundle"))) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["unavailable"] == ["key-manager"]
        refused = client.post("/api/v1/encrypt", json=BODY)
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
        assert client.get("/api/v2/keys").status_code == 503


def test_a_renewed_bundle_must_come_from_the_anchor_in_use(
    bundled: Bundled, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Whoever can rewrite the ConfigMap cannot make the encryptor seal to a key of theirs; a
    master key rotation, whose bundle links from the old anchor, is taken up."""
    old, new, attacker = os.urandom(32), os.urandom(32), os.urandom(32)
    keys_file = tmp_path / "keys.json"
    with TestClient(create_app(bundled(export(old)))) as client:
        assert opens(old, client.post("/api/v1/encrypt", json=BODY).text) == b"s3cret"

        keys_file.write_text(export(attacker))
        time.sleep(RELOAD_CHECK_SECONDS + 0.1)
        sealed = client.post("/api/v1/encrypt", json=BODY).text
        assert opens(old, sealed) == b"s3cret"  # still the old bundle
        assert "not by the pinned" in caplog.text

        keys_file.write_text(export(new, old))
        time.sleep(RELOAD_CHECK_SECONDS + 0.1)
        assert opens(new, client.post("/api/v1/encrypt", json=BODY).text) == b"s3cret"


def test_a_pinned_trust_anchor_refuses_a_foreign_bundle_from_the_start(bundled: Bundled) -> None:
    pin = bundle.fingerprint(bundle.anchor_from_master(os.urandom(32)).public_key())
    settings = bundled(export(os.urandom(32)), Encryptor__TrustAnchor=pin)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 503


def test_a_malformed_trust_anchor_is_a_start_up_error(bundled: Bundled) -> None:
    with pytest.raises(ConfigurationError, match=r"Encryptor__TrustAnchor: .* 64 hex digits"):
        create_app(bundled(export(os.urandom(32)), Encryptor__TrustAnchor="sha256:ab"))


def test_the_legacy_output_format_writes_a1(make_settings: SettingsFactory, aes_key: str) -> None:
    with TestClient(create_app(make_settings(Encryptor__OutputFormat="legacy"))) as client:
        sealed = client.post("/api/v1/encrypt", json=BODY).text
        assert sealed.startswith("kamus$a1$")
        assert opens(base64.b64decode(aes_key), sealed) == b"s3cret"
        assert client.get("/api/v2/keys").status_code == 200  # still served, for offline use


def test_a_kms_encryptor_without_a_bundle_file_serves_none(
    aws_kms: object, make_settings: SettingsFactory
) -> None:
    with TestClient(create_app(make_settings(**AWS))) as client:
        assert client.post("/api/v1/encrypt", json=BODY).text.startswith("kamus$m1$")
        response = client.get("/api/v2/keys")
    assert response.status_code == 404
    assert response.json()["type"].endswith("no-key-bundle")
    assert "Encryptor__SealingKeysFile" in response.json()["detail"]


def test_a_kms_encryptor_writes_e1_with_the_legacy_output_format(
    aws_kms: object, make_settings: SettingsFactory
) -> None:
    settings = make_settings(**AWS, Encryptor__OutputFormat="legacy")
    with TestClient(create_app(settings)) as client:
        assert client.post("/api/v1/encrypt", json=BODY).text.startswith("kamus$e1$aws$")


def header(value: str) -> str:
    return value.rsplit("$", 1)[0]


def test_data_key_reuse_is_off_unless_set(bundled: Bundled) -> None:
    with TestClient(create_app(bundled(export(os.urandom(32))))) as client:
        values = [client.post("/api/v1/encrypt", json=BODY).text for _ in range(2)]
    assert header(values[0]) != header(values[1])


def test_reused_data_keys_are_per_identity_window_and_bundle(tmp_path: Path) -> None:
    """Encryptor__DataKeyReuseSeconds: single values of one identity share a data key (and so
    a header) for that long, each opening alone as that identity only; another identity, the end
    of the window, too many values, or a renewed bundle make a fresh one."""
    master = os.urandom(32)
    path = tmp_path / "keys.json"
    path.write_text(export(master))
    now = [0.0]
    keys = SealingKeyManager(BundleSource(file=path), reuse_seconds=5.0, monotonic=lambda: now[0])

    def seal(sa_id: str = "team-a:app", text: bytes = b"s3cret") -> str:
        return asyncio.run(keys.encrypt(text, sa_id))

    first, second = seal(), seal(text=b"other")
    assert header(first) == header(second)
    assert first != second
    assert opens(master, first) == b"s3cret"
    assert opens(master, second) == b"other"
    with pytest.raises(DecryptionError):
        asyncio.run(AESKeyManager(master).decrypt(first, "team-b:app"))
    theirs = seal("team-b:app")
    assert header(theirs) != header(first)
    assert asyncio.run(AESKeyManager(master).decrypt(theirs, "team-b:app")) == b"s3cret"

    now[0] = 4.9
    assert header(seal()) == header(first)
    now[0] = 5.0
    renewed = seal()
    assert header(renewed) != header(first)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sealing, "MAX_REUSES", 2)
        assert header(seal()) == header(renewed)  # the second use of this key
        assert header(seal()) != header(renewed)

    another = os.urandom(32)  # a renewed bundle (as the chart's ConfigMap delivers it)
    renewed_file = tmp_path / "renewed.json"
    renewed_file.write_text(export(another))
    keys.source = BundleSource(file=renewed_file)
    assert opens(another, seal()) == b"s3cret"
