"""The AWS KMS provider against moto's KMS server, through boto3 and the endpoint override."""

import asyncio
import base64
import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from fastapi.testclient import TestClient

from crypto import DecryptionError
from crypto.aws import AwsKmsKeyManager
from crypto.errors import KeyManagerUnavailable
from kamus.server.errors import ConfigurationError
from kamus.server.metrics import Metrics
from kamus.server.providers import build_key_manager
from tests.kms_doubles.aws import THROTTLED, AwsKmsDouble, failing
from tests.support.aio import run
from tests.support.kms import AWS, FAST
from tests.support.servers import Faults
from tests.support.settings import SettingsFactory
from tests.support.values import kms_fields


def expected_alias(sa_id: str, prefix: str = "") -> str:
    """Kamus's alias, computed here independently of crypto/."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(sa_id.encode()).digest()).decode()
    key_id = digest.rstrip("=").replace("_", "-")
    return f"alias/{prefix + '-' if prefix else ''}kamus/{key_id}"


def build(make_settings: SettingsFactory, **env: str) -> AwsKmsKeyManager:
    return observed(make_settings, None, **env)


def observed(
    make_settings: SettingsFactory, metrics: Metrics | None, **env: str
) -> AwsKmsKeyManager:
    manager = build_key_manager(make_settings(**{**AWS, **env}), observer=metrics)
    assert isinstance(manager, AwsKmsKeyManager)
    return manager


def aliases(kms: AwsKmsDouble) -> dict[str, str]:
    return {
        a["AliasName"]: a["TargetKeyId"]
        for a in kms.client().list_aliases()["Aliases"]
        if "kamus/" in a["AliasName"]  # moto also lists AWS-managed aliases
    }


def key_states(kms: AwsKmsDouble) -> list[str]:
    client = kms.client()
    return sorted(
        client.describe_key(KeyId=k["KeyId"])["KeyMetadata"]["KeyState"]
        for k in client.list_keys()["Keys"]
    )


def test_round_trip_creates_the_kamus_alias_once(
    aws_kms: AwsKmsDouble, make_settings: SettingsFactory
) -> None:
    metrics = Metrics()
    manager = observed(make_settings, metrics)
    first = run(manager.encrypt(b"s3cr3t", "team-a:app"))
    second = run(manager.encrypt(b"other", "team-a:app"))
    target = aliases(aws_kms)[expected_alias("team-a:app")]
    assert first.startswith("kamus$m1$")
    assert (kms_fields(first).kms, kms_fields(first).key_version) == ("aws", target)
    assert run(manager.decrypt(first, "team-a:app")) == b"s3cr3t"
    assert run(manager.decrypt(second, "team-a:app")) == b"other"
    assert key_states(aws_kms) == ["Enabled"]
    tags = aws_kms.client().list_resource_tags(KeyId=target)["Tags"]
    assert {t["TagKey"]: t["TagValue"] for t in tags} == {
        "kamus:namespace": "team-a",
        "kamus:service-account": "app",
    }
    registry = metrics.registry
    assert registry.get_sample_value("kamus_kms_keys_created_total", {"provider": "aws"}) == 1
    calls = {"provider": "aws", "operation": "GenerateDataKey", "outcome": "success"}
    assert registry.get_sample_value("kamus_kms_calls_total", calls) == 2


def test_one_kms_call_per_encrypt_and_per_decrypt(
    aws_kms: AwsKmsDouble, make_settings: SettingsFactory
) -> None:
    manager = build(make_settings)
    run(manager.encrypt(b"warm-up", "team-a:app"))  # creates the key
    aws_kms.requests.clear()
    ciphertext = run(manager.encrypt(os.urandom(3 * 1024 * 1024), "team-a:app"))  # no size limit
    run(manager.decrypt(ciphertext, "team-a:app"))
    assert aws_kms.requests == ["TrentService.GenerateDataKey", "TrentService.Decrypt"]


def test_the_encryption_context_binds_the_identity_inside_kms(
    aws_kms: AwsKmsDouble, make_settings: SettingsFactory
) -> None:
    manager = build(make_settings)
    ciphertext = run(manager.encrypt(b"s3cr3t", "team-a:app"))
    wrapped = kms_fields(ciphertext).wrapped
    client = aws_kms.client()
    alias = expected_alias("team-a:app")
    opened = client.decrypt(
        CiphertextBlob=wrapped,
        KeyId=alias,
        EncryptionContext={"kamus:service-account": "team-a:app"},
    )
    assert len(opened["Plaintext"]) == 32
    with pytest.raises(client.exceptions.InvalidCiphertextException):
        client.decrypt(CiphertextBlob=wrapped, KeyId=alias)


def kamus_aws_ciphertext(kms: AwsKmsDouble, alias: str, plaintext: str) -> str:
    """What Kamus's AwsKeyManagement wrote, built with boto3 and pyca only."""
    response = kms.client().generate_data_key(KeyId=alias, KeySpec="AES_256")
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext.encode()) + padder.finalize()
    encryptor = Cipher(algorithms.AES(response["Plaintext"]), modes.CBC(iv)).encryptor()
    body = encryptor.update(padded) + encryptor.finalize()
    blob = base64.b64encode(response["CiphertextBlob"]).decode()
    return f"env${blob}${base64.b64encode(iv).decode()}:{base64.b64encode(body).decode()}"


def create_kamus_key(kms: AwsKmsDouble, alias: str) -> None:
    client = kms.client()
    client.create_alias(AliasName=alias, TargetKeyId=client.create_key()["KeyMetadata"]["KeyId"])


@pytest.mark.parametrize("prefix", ["", "prod"])
def test_kamus_ciphertexts_decrypt(
    aws_kms: AwsKmsDouble, make_settings: SettingsFactory, prefix: str
) -> None:
    alias = expected_alias("team-a:app", prefix)
    create_kamus_key(aws_kms, alias)  # the key Kamus created, found by its alias
    legacy = kamus_aws_ciphertext(aws_kms, alias, "from kamus ✓")
    manager = build(make_settings, KeyManagement__AwsKms__CmkPrefix=prefix)
    assert run(manager.decrypt(legacy, "team-a:app")) == "from kamus ✓".encode()
    assert run(manager.decrypt("", "team-a:app")) == b""  # as Kamus answered
    # Kamus pinned the service account's own key: another identity cannot use the value.
    create_kamus_key(aws_kms, expected_alias("team-b:app", prefix))
    with pytest.raises(DecryptionError):
        run(manager.decrypt(legacy, "team-b:app"))
    # New values go to the same key.
    fresh = run(manager.encrypt(b"new", "team-a:app"))
    assert kms_fields(fresh).key_version == aliases(aws_kms)[alias]


def test_legacy_reading_can_be_switched_off(
    aws_kms: AwsKmsDouble, make_settings: SettingsFactory
) -> None:
    alias = expected_alias("team-a:app")
    create_kamus_key(aws_kms, alias)
    legacy = kamus_aws_ciphertext(aws_kms, alias, "old")
    manager = build(make_settings, KeyManagement__AllowLegacyCiphertexts="false")
    with pytest.raises(DecryptionError, match="reading legacy Kamus values is switched off"):
        run(manager.decrypt(legacy, "team-a:app"))


@pytest.mark.parametrize(
    "data", ["garbage", "env$AAAA$BBBB", "kamus$e1$gcp$1$AAAA$AAAA", "kamus$e1$aws$x$!!$AA"]
)
def test_malformed_values_fail_as_decryption_errors(
    aws_kms: AwsKmsDouble, make_settings: SettingsFactory, data: str
) -> None:
    with pytest.raises(DecryptionError):
        run(build(make_settings).decrypt(data, "team-a:app"))


def test_two_replicas_racing_leave_one_key_and_alias(
    aws_kms: AwsKmsDouble, make_settings: SettingsFactory
) -> None:
    first, second = build(make_settings), build(make_settings)
    # Slow calls make both replicas see "no key" before either creates its alias.
    aws_kms.faults = Faults(delay_seconds=0.2)

    async def race() -> tuple[str, str]:
        return await asyncio.gather(
            first.encrypt(b"one", "team-a:app"), second.encrypt(b"two", "team-a:app")
        )

    one, two = run(race())
    aws_kms.faults = Faults()
    assert len(aliases(aws_kms)) == 1
    assert key_states(aws_kms) == ["Enabled", "PendingDeletion"]
    assert run(second.decrypt(one, "team-a:app")) == b"one"
    assert run(first.decrypt(two, "team-a:app")) == b"two"


def test_automatic_rotation_is_enabled_on_new_keys(
    aws_kms: AwsKmsDouble, make_settings: SettingsFactory
) -> None:
    manager = build(make_settings, KeyManagement__AwsKms__AutomaticKeyRotation="true")
    run(manager.encrypt(b"v", "team-a:app"))
    key_id = aliases(aws_kms)[expected_alias("team-a:app")]
    assert aws_kms.client().get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is True


# Two retries; a deadline long enough for their jittered backoff (up to 1 s, then 2 s).
def test_a_key_created_half_way_is_scheduled_for_deletion(
    aws_kms: AwsKmsDouble, make_settings: SettingsFactory
) -> None:
    manager = build(make_settings, KeyManagement__AwsKms__AutomaticKeyRotation="true")
    aws_kms.faults = failing("EnableKeyRotation", "AccessDeniedException")
    with pytest.raises(KeyManagerUnavailable) as info:
        run(manager.encrypt(b"v", "team-a:app"))
    assert "EnableKeyRotation" in info.value.reason
    assert key_states(aws_kms) == ["PendingDeletion"]
    assert aliases(aws_kms) == {}


def test_a_key_missing_right_after_creation_is_a_503_not_a_500(
    aws_kms: AwsKmsDouble, make_settings: SettingsFactory
) -> None:
    from encryptor.app import create_app

    # Every GenerateDataKey says NotFound, even after the key and its alias were created.
    aws_kms.faults = failing("GenerateDataKey", "NotFoundException")
    with TestClient(create_app(make_settings(**AWS))) as client:
        body = {"data": "x", "service-account": "app", "namespace": "team-a"}
        response = client.post("/api/v1/encrypt", json=body)
    assert response.status_code == 503
    assert len(aliases(aws_kms)) == 1


# Throttling is retried further, until the deadline: tests/providers/test_throttling.py.
@pytest.mark.parametrize(
    "faults", [Faults(fail_status=500), Faults(fail_status=503)], ids=["500", "503"]
)
def test_a_failing_kms_is_unavailable_after_retries(
    aws_kms: AwsKmsDouble, make_settings: SettingsFactory, faults: Faults
) -> None:
    manager = build(make_settings, **FAST)
    ciphertext = run(manager.encrypt(b"v", "team-a:app"))
    aws_kms.faults = faults
    aws_kms.requests.clear()
    with pytest.raises(KeyManagerUnavailable) as info:
        run(manager.decrypt(ciphertext, "team-a:app"))
    assert len(aws_kms.requests) == 3  # the first try and two retries
    assert "aws Decrypt" in info.value.reason
    aws_kms.faults = Faults()
    assert run(manager.decrypt(ciphertext, "team-a:app")) == b"v"


def test_brief_throttling_is_ridden_out_by_retries(
    aws_kms: AwsKmsDouble, make_settings: SettingsFactory
) -> None:
    manager = build(make_settings, **FAST)
    ciphertext = run(manager.encrypt(b"v", "team-a:app"))
    aws_kms.faults = Faults(
        fail_status=THROTTLED.fail_status, fail_body=THROTTLED.fail_body, remaining=2
    )
    assert run(manager.decrypt(ciphertext, "team-a:app")) == b"v"


@pytest.mark.slow
def test_a_slow_kms_times_out(aws_kms: AwsKmsDouble, make_settings: SettingsFactory) -> None:
    manager = build(make_settings, KeyManagement__TimeoutSeconds="1")
    aws_kms.faults = Faults(delay_seconds=3)
    with pytest.raises(KeyManagerUnavailable) as info:
        run(manager.encrypt(b"v", "team-a:app"))
    assert info.value.reason.startswith("aws GenerateDataKey")


def test_an_unreachable_kms_is_unavailable_then_recovers(
    aws_kms: AwsKmsDouble, make_settings: SettingsFactory
) -> None:
    manager = build(make_settings, **FAST)
    ciphertext = run(manager.encrypt(b"v", "team-a:app"))
    aws_kms.stop()
    with pytest.raises(KeyManagerUnavailable):
        run(manager.decrypt(ciphertext, "team-a:app"))
    aws_kms.start_again()
    assert run(manager.decrypt(ciphertext, "team-a:app")) == b"v"


def test_the_encryptor_maps_kms_failures_to_clear_answers(
    aws_kms: AwsKmsDouble, make_settings: SettingsFactory
) -> None:
    from encryptor.app import create_app

    body = {"data": "s3cr3t", "service-account": "app", "namespace": "team-a"}
    settings = make_settings(**AWS, **FAST, KeyManagement__CreateKeys="false")
    with TestClient(create_app(settings)) as client:
        missing = client.post("/api/v1/encrypt", json=body)
        assert missing.status_code == 400
        assert "KeyManagement__CreateKeys=false" in missing.json()["detail"]
        create_kamus_key(aws_kms, expected_alias("team-a:app"))
        assert client.post("/api/v1/encrypt", json=body).status_code == 200
        aws_kms.faults = Faults(fail_status=500)
        down = client.post("/api/v1/encrypt", json=body)
        assert down.status_code == 503
        assert down.headers["retry-after"] == "5"
        assert down.json()["detail"] == "the key manager is unavailable; retry later"
        metrics = client.get("/metrics").text
        assert 'kamus_kms_calls_total{operation="GenerateDataKey",outcome="success",' in metrics


def test_default_service_account_never_creates_a_key(
    aws_kms: AwsKmsDouble, make_settings: SettingsFactory
) -> None:
    from encryptor.app import create_app

    with TestClient(create_app(make_settings(**AWS))) as client:
        for body in [
            {"data": "x", "service-account": "default", "namespace": "team-a"},
            {"data": "x", "service-account": "Bad_Name", "namespace": "team-a"},
        ]:
            assert client.post("/api/v1/encrypt", json=body).status_code == 400
    assert aws_kms.requests == []


def test_settings_need_a_region_and_both_or_no_static_credentials(
    aws_kms: AwsKmsDouble, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_REGION")
    with pytest.raises(ConfigurationError, match="KeyManagement__AwsKms__Region"):
        build_key_manager(make_settings(KeyManagement__Provider="AwsKms"))
    with pytest.raises(ConfigurationError, match="set both"):
        build(make_settings, KeyManagement__AwsKms__Key="AKIA123")


def test_static_credentials_from_kamus_settings_are_used(
    aws_kms: AwsKmsDouble,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    (tmp_path / "secret").write_text("from-a-mounted-secret\n")
    manager = build(
        make_settings,
        KeyManagement__AwsKms__Key="AKIAEXAMPLE",
        KeyManagement__AwsKms__SecretFile=str(tmp_path / "secret"),
    )
    ciphertext = run(manager.encrypt(b"v", "team-a:app"))
    assert run(manager.decrypt(ciphertext, "team-a:app")) == b"v"
