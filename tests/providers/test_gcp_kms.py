"""The Google Cloud KMS provider against the Cloud KMS REST double, through the real client."""

import asyncio
import base64
import hashlib
import os
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from crypto import DecryptionError
from crypto.errors import KeyManagerUnavailable
from crypto.gcp import GoogleKmsKeyManager
from kamus.server.cloud import parse_rotation_period
from kamus.server.errors import ConfigurationError
from kamus.server.metrics import Metrics
from kamus.server.providers import build_key_manager
from tests.kms_doubles.gcp import CloudKmsDouble, error_body
from tests.support.aio import run
from tests.support.servers import Faults
from tests.support.settings import SettingsFactory
from tests.support.values import kms_fields

GCP = {"KeyManagement__Provider": "GoogleKms", "KeyManagement__GoogleKms__ProjectId": "proj"}
RING = "projects/proj/locations/global/keyRings/kamus"
FAST = {"KeyManagement__TimeoutSeconds": "3", "KeyManagement__MaxRetries": "2"}


def expected_key(sa_id: str, ring: str = RING) -> str:
    """Kamus's crypto key name, computed here independently of crypto/."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(sa_id.encode()).digest()).decode()
    return f"{ring}/cryptoKeys/{digest.rstrip('=').replace('_', '-')}"


def observed(
    make_settings: SettingsFactory, metrics: Metrics | None, **env: str
) -> GoogleKmsKeyManager:
    manager = build_key_manager(make_settings(**{**GCP, **env}), observer=metrics)
    assert isinstance(manager, GoogleKmsKeyManager)
    return manager


def build(make_settings: SettingsFactory, **env: str) -> GoogleKmsKeyManager:
    return observed(make_settings, None, **env)


def test_round_trip_creates_the_key_with_its_settings(
    gcp_kms: CloudKmsDouble, make_settings: SettingsFactory
) -> None:
    gcp_kms.allow_anonymous = False  # every call must carry the service account's credentials
    metrics = Metrics()
    manager = observed(
        make_settings,
        metrics,
        KeyManagement__GoogleKms__ProtectionLevel="hsm",
        KeyManagement__GoogleKms__RotationPeriod="90",
    )
    ciphertext = run(manager.encrypt(b"s3cr3t", "team-a:app.v2"))
    assert ciphertext.startswith("kamus$m1$")
    assert (kms_fields(ciphertext).kms, kms_fields(ciphertext).key_version) == ("gcp", "1")
    assert run(manager.decrypt(ciphertext, "team-a:app.v2")) == b"s3cr3t"
    key = gcp_kms.client().get_crypto_key(name=expected_key("team-a:app.v2"))
    assert key.purpose.name == "ENCRYPT_DECRYPT"
    assert key.version_template.protection_level.name == "HSM"
    assert key.rotation_period == timedelta(days=90)
    assert key.next_rotation_time is not None
    assert dict(key.labels) == {
        "managed-by": "kamus",
        "kamus-namespace": "team-a",
        "kamus-service-account": "app_v2",
    }
    assert (
        metrics.registry.get_sample_value("kamus_kms_keys_created_total", {"provider": "gcp"}) == 1
    )


def test_one_kms_call_per_encrypt_and_decrypt(
    gcp_kms: CloudKmsDouble, make_settings: SettingsFactory
) -> None:
    manager = build(make_settings)
    run(manager.encrypt(b"warm-up", "team-a:app"))
    gcp_kms.requests.clear()
    ciphertext = run(manager.encrypt(os.urandom(2 * 1024 * 1024), "team-a:app"))
    run(manager.decrypt(ciphertext, "team-a:app"))
    key = expected_key("team-a:app")
    assert gcp_kms.requests == [f"POST /v1/{key}:encrypt", f"POST /v1/{key}:decrypt"]


def test_kms_checks_the_identity_as_associated_data(
    gcp_kms: CloudKmsDouble, make_settings: SettingsFactory
) -> None:
    ciphertext = run(build(make_settings).encrypt(b"s3cr3t", "team-a:app"))
    wrapped = kms_fields(ciphertext).wrapped
    client = gcp_kms.client()
    name = expected_key("team-a:app")
    opened = client.decrypt(
        request={
            "name": name,
            "ciphertext": wrapped,
            "additional_authenticated_data": b"team-a:app",
        }
    )
    assert len(opened.plaintext) == 32
    from google.api_core.exceptions import BadRequest

    with pytest.raises(BadRequest):
        client.decrypt(request={"name": name, "ciphertext": wrapped})


def test_values_survive_key_rotation(
    gcp_kms: CloudKmsDouble, make_settings: SettingsFactory
) -> None:
    manager = build(make_settings)
    old = run(manager.encrypt(b"old", "team-a:app"))
    gcp_kms.rotate(expected_key("team-a:app"))
    new = run(manager.encrypt(b"new", "team-a:app"))
    assert kms_fields(new).key_version == "2"
    assert run(manager.decrypt(old, "team-a:app")) == b"old"
    assert run(manager.decrypt(new, "team-a:app")) == b"new"


def kamus_gcp_ciphertext(kms: CloudKmsDouble, sa_id: str, plaintext: str) -> str:
    """What Kamus's GoogleCloudKeyManagement wrote: the value encrypted by the key, in base64."""
    client = kms.client()
    client.create_key_ring(
        request={"parent": "projects/proj/locations/global", "key_ring_id": "kamus"}
    )
    name = expected_key(sa_id)
    client.create_crypto_key(
        request={
            "parent": RING,
            "crypto_key_id": name.rsplit("/", 1)[-1],
            "crypto_key": {"purpose": 1},
        }
    )
    response = client.encrypt(request={"name": name, "plaintext": plaintext.encode()})
    return base64.b64encode(response.ciphertext).decode()


def test_kamus_ciphertexts_decrypt(gcp_kms: CloudKmsDouble, make_settings: SettingsFactory) -> None:
    legacy = kamus_gcp_ciphertext(gcp_kms, "team-a:app", "from kamus ✓")
    manager = build(make_settings)
    assert run(manager.decrypt(legacy, "team-a:app")) == "from kamus ✓".encode()
    assert run(manager.decrypt("", "team-a:app")) == b""
    with pytest.raises(DecryptionError):
        run(manager.decrypt(legacy, "team-b:app"))  # no key for that identity
    off = build(make_settings, KeyManagement__AllowLegacyCiphertexts="false")
    with pytest.raises(DecryptionError):
        run(off.decrypt(legacy, "team-a:app"))


@pytest.mark.parametrize(
    "data", ["garbage!", "env$AAAA$BBBB:CCCC", "kamus$e1$aws$1$AAAA$AAAA", "kamus$e1$gcp$1$$AA"]
)
def test_malformed_values_fail_as_decryption_errors(
    gcp_kms: CloudKmsDouble, make_settings: SettingsFactory, data: str
) -> None:
    with pytest.raises(DecryptionError):
        run(build(make_settings).decrypt(data, "team-a:app"))


def test_concurrent_first_encrypts_and_racing_replicas_create_one_key(
    gcp_kms: CloudKmsDouble, make_settings: SettingsFactory
) -> None:
    replicas = [build(make_settings), build(make_settings)]
    gcp_kms.faults = Faults(delay_seconds=0.1)  # both replicas see "no key" first

    async def race() -> list[str]:
        return await asyncio.gather(
            *(replicas[i % 2].encrypt(b"v", "team-a:app") for i in range(6))
        )

    values = run(race())
    gcp_kms.faults = Faults()
    assert list(gcp_kms.keys) == [expected_key("team-a:app")]
    assert gcp_kms.rings == {RING}
    for value in values:
        assert run(replicas[0].decrypt(value, "team-a:app")) == b"v"


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_failing_kms_is_unavailable_after_retries_then_recovers(
    gcp_kms: CloudKmsDouble, make_settings: SettingsFactory, status: int
) -> None:
    manager = build(make_settings, **FAST)
    ciphertext = run(manager.encrypt(b"v", "team-a:app"))
    gcp_kms.faults = Faults(fail_status=status)
    gcp_kms.requests.clear()
    with pytest.raises(KeyManagerUnavailable) as info:
        run(manager.decrypt(ciphertext, "team-a:app"))
    assert info.value.reason.startswith("gcp Decrypt")
    assert len(gcp_kms.requests) > 1  # retried with backoff
    gcp_kms.faults = Faults()
    assert run(manager.decrypt(ciphertext, "team-a:app")) == b"v"


def test_brief_throttling_is_ridden_out(
    gcp_kms: CloudKmsDouble, make_settings: SettingsFactory
) -> None:
    manager = build(make_settings, **FAST)
    ciphertext = run(manager.encrypt(b"v", "team-a:app"))
    gcp_kms.faults = Faults(fail_status=429, remaining=2)
    assert run(manager.decrypt(ciphertext, "team-a:app")) == b"v"


@pytest.mark.slow
def test_a_slow_kms_times_out(gcp_kms: CloudKmsDouble, make_settings: SettingsFactory) -> None:
    manager = build(make_settings, KeyManagement__TimeoutSeconds="1", KeyManagement__MaxRetries="0")
    gcp_kms.faults = Faults(delay_seconds=3)
    with pytest.raises(KeyManagerUnavailable):
        run(manager.encrypt(b"v", "team-a:app"))


def test_an_unreachable_kms_is_unavailable(
    gcp_kms: CloudKmsDouble, make_settings: SettingsFactory
) -> None:
    manager = build(make_settings, **FAST)
    ciphertext = run(manager.encrypt(b"v", "team-a:app"))
    gcp_kms.stop()
    with pytest.raises(KeyManagerUnavailable):
        run(manager.decrypt(ciphertext, "team-a:app"))
    gcp_kms.start()
    assert run(manager.decrypt(ciphertext, "team-a:app")) == b"v"


def test_a_corrupted_answer_is_caught_by_the_checksums(
    gcp_kms: CloudKmsDouble, make_settings: SettingsFactory
) -> None:
    manager = build(make_settings)
    run(manager.encrypt(b"v", "team-a:app"))
    body: dict[str, object] = {
        "name": f"{expected_key('team-a:app')}/cryptoKeyVersions/1",
        "ciphertext": "AAAA",
    }
    body |= {"ciphertextCrc32c": "1", "verifiedPlaintextCrc32c": True}
    body |= {"verifiedAdditionalAuthenticatedDataCrc32c": True}
    gcp_kms.faults = Faults(fail_status=200, fail_body=body)
    with pytest.raises(KeyManagerUnavailable) as info:
        run(manager.encrypt(b"v", "team-a:app"))
    assert "CRC32C" in info.value.reason


@pytest.mark.parametrize(
    ("text", "period"),
    [
        ("30", timedelta(days=30)),
        ("30.00:00:00", timedelta(days=30)),
        ("1.12:30:00", timedelta(days=1, hours=12, minutes=30)),
        ("48:00", timedelta(hours=48)),
        ("2592000s", timedelta(days=30)),
    ],
)
def test_rotation_periods_in_kamus_and_protobuf_forms(text: str, period: timedelta) -> None:
    assert parse_rotation_period(text) == period


@pytest.mark.parametrize("text", ["12:00:00", "3600s", "thirty", "30d", "-1"])
def test_bad_rotation_periods_are_refused(text: str) -> None:
    with pytest.raises(ConfigurationError, match="RotationPeriod"):
        parse_rotation_period(text)


def test_credentials_come_from_the_standard_chain_or_kamus_setting(
    gcp_kms: CloudKmsDouble, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = os.environ["GOOGLE_APPLICATION_CREDENTIALS"]
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    monkeypatch.setenv("HOME", "/nonexistent")  # no gcloud application-default credentials
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # and no metadata server
    with pytest.raises(ConfigurationError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        build(make_settings)
    # Kamus's CredentialsPath; the project comes from the key file when not set.
    monkeypatch.delenv("KeyManagement__GoogleKms__ProjectId")
    manager = build_key_manager(
        make_settings(
            KeyManagement__Provider="GoogleKms", KeyManagement__GoogleKms__CredentialsPath=path
        )
    )
    assert isinstance(manager, GoogleKmsKeyManager)
    gcp_kms.allow_anonymous = False
    ciphertext = run(manager.encrypt(b"v", "team-a:app"))
    assert run(manager.decrypt(ciphertext, "team-a:app")) == b"v"
    assert any("projects/test-project/" in r for r in gcp_kms.requests)


def test_the_decryptor_answers_503_when_cloud_kms_is_down(
    gcp_kms: CloudKmsDouble,
    make_settings: SettingsFactory,
    kubeconfig: Any,
    kube_api: Any,
) -> None:
    from decryptor.app import create_app

    # No data-key cache: the value decrypted before the outage would open from it.
    settings = make_settings(**GCP, **FAST, KeyManagement__DataKeyCache__Capacity="0")
    ciphertext = run(build(make_settings).encrypt(b"s3cr3t", "team-a:app"))
    token = kube_api.issue_token("team-a", "app")
    with TestClient(create_app(settings)) as client:
        headers = {"Authorization": f"Bearer {token}"}
        ok = client.post("/api/v1/decrypt", json={"data": ciphertext}, headers=headers)
        assert ok.text == "s3cr3t"
        gcp_kms.faults = Faults(fail_status=503, fail_body=error_body(503))
        down = client.post("/api/v1/decrypt", json={"data": ciphertext}, headers=headers)
        assert down.status_code == 503
        assert down.headers["retry-after"] == "5"


def test_the_default_grpc_transport_fails_as_unavailable_not_500(
    gcp_kms: CloudKmsDouble, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gRPC (the default transport) to an endpoint where nothing listens.
    monkeypatch.setenv("KeyManagement__GoogleKms__Transport", "grpc")
    monkeypatch.setenv("KeyManagement__GoogleKms__Endpoint", "127.0.0.1:9")
    manager = build(make_settings, KeyManagement__TimeoutSeconds="2")
    with pytest.raises(KeyManagerUnavailable) as info:
        run(manager.encrypt(b"v", "team-a:app"))
    assert info.value.reason.startswith("gcp Encrypt")


def test_a_batch_reuses_pooled_connections(
    gcp_kms: CloudKmsDouble, make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """32 calls at once over the REST transport: as many pooled connections, none discarded
    (requests' default pool of 10 discarded, and logged, the rest on every batch)."""
    manager = build(make_settings, KeyManagement__MaxConcurrentCalls="32")
    ciphertext = run(manager.encrypt(b"v", "team-a:app"))

    async def batch() -> list[bytes]:
        return await asyncio.gather(*(manager.decrypt(ciphertext, "team-a:app") for _ in range(32)))

    caplog.set_level("WARNING", logger="urllib3")
    for _ in range(3):
        assert run(batch()) == [b"v"] * 32
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]
