"""The Azure Key Vault provider against the Key Vault double, through azure-keyvault-keys and
azure-identity's DefaultAzureCredential (App Service managed identity)."""

import base64
import hashlib
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from crypto import DecryptionError
from crypto.azure import AzureKeyVaultKeyManager
from crypto.encoding import b64url_encode
from crypto.errors import KeyManagerUnavailable
from kamus.server.errors import ConfigurationError
from kamus.server.metrics import Metrics
from kamus.server.providers import build_key_manager
from tests.kms_doubles.azure import KeyVaultDouble, throttled
from tests.support.aio import run
from tests.support.servers import Faults
from tests.support.settings import SettingsFactory
from tests.support.values import kms_fields

FAST = {"KeyManagement__TimeoutSeconds": "10", "KeyManagement__MaxRetries": "1"}
# For outage tests, whose value was decrypted before: the data-key cache would answer it.
UNCACHED = {**FAST, "KeyManagement__DataKeyCache__Capacity": "0"}


def key_name(sa_id: str) -> str:
    """Kamus's key name, computed here independently of crypto/."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(sa_id.encode()).digest()).decode()
    return digest.rstrip("=").replace("_", "-")


def observed(
    vault: KeyVaultDouble, make_settings: SettingsFactory, metrics: Metrics | None, **env: str
) -> AzureKeyVaultKeyManager:
    settings = make_settings(
        **{
            "KeyManagement__Provider": "AzureKeyVault",
            "KeyManagement__KeyVault__Url": vault.url,
            # The double is https://127.0.0.1:port, which the challenge's resource cannot match.
            "KeyManagement__KeyVault__VerifyChallengeResource": "false",
            **env,
        }
    )
    manager = build_key_manager(settings, observer=metrics)
    assert isinstance(manager, AzureKeyVaultKeyManager)
    return manager


def build(
    vault: KeyVaultDouble, make_settings: SettingsFactory, **env: str
) -> AzureKeyVaultKeyManager:
    return observed(vault, make_settings, None, **env)


def test_round_trip_creates_the_key(
    azure_kv: KeyVaultDouble, make_settings: SettingsFactory
) -> None:
    metrics = Metrics()
    manager = observed(azure_kv, make_settings, metrics, KeyManagement__KeyVault__KeyLength="3072")
    ciphertext = run(manager.encrypt(b"s3cr3t", "team-a:app"))
    [version] = azure_kv.versions(key_name("team-a:app"))
    assert ciphertext.startswith("kamus$m1$")
    assert (kms_fields(ciphertext).kms, kms_fields(ciphertext).key_version) == ("azure", version)
    assert run(manager.decrypt(ciphertext, "team-a:app")) == b"s3cr3t"
    assert azure_kv.public_key(key_name("team-a:app")).key_size == 3072
    sample = metrics.registry.get_sample_value
    assert sample("kamus_kms_keys_created_total", {"provider": "azure"}) == 1


def test_hsm_keys_when_configured(azure_kv: KeyVaultDouble, make_settings: SettingsFactory) -> None:
    manager = build(azure_kv, make_settings, KeyManagement__KeyVault__KeyType="RSA-HSM")
    run(manager.encrypt(b"v", "team-a:app"))
    assert any(r.startswith("POST /keys/") and r.endswith("/create") for r in azure_kv.requests)
    assert azure_kv.key_type(key_name("team-a:app")) == "RSA-HSM"


def test_encrypt_is_local_and_decrypt_one_call(
    azure_kv: KeyVaultDouble, make_settings: SettingsFactory
) -> None:
    manager = build(azure_kv, make_settings)
    first = run(manager.encrypt(b"warm-up", "team-a:app"))
    run(manager.decrypt(first, "team-a:app"))  # fetches the key version once
    azure_kv.requests.clear()
    ciphertext = run(manager.encrypt(os.urandom(2 * 1024 * 1024), "team-a:app"))
    assert azure_kv.requests == []  # wrapped locally with the public key
    run(manager.decrypt(ciphertext, "team-a:app"))
    [version] = azure_kv.versions(key_name("team-a:app"))
    assert azure_kv.requests == [f"POST /keys/{key_name('team-a:app')}/{version}/unwrapkey"]


def test_the_wrapped_key_carries_the_identity(
    azure_kv: KeyVaultDouble, make_settings: SettingsFactory
) -> None:
    """Even under the right key, a data key wrapped for another identity is refused."""
    manager = build(azure_kv, make_settings)
    run(manager.encrypt(b"x", "team-a:app"))
    name = key_name("team-a:app")
    [version] = azure_kv.versions(name)
    data_key = os.urandom(32)
    blob = data_key + hashlib.sha256(b"team-a:web").digest()
    oaep = rsa_padding.OAEP(rsa_padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    wrapped = azure_kv.public_key(name, version).encrypt(blob, oaep)
    forged = f"kamus$e1$azure${version}${b64url_encode(wrapped)}${b64url_encode(os.urandom(40))}"
    with pytest.raises(DecryptionError) as info:
        run(manager.decrypt(forged, "team-a:app"))
    assert info.value.reason == "the wrapped data key is bound to another identity"


def kamus_oaep(vault: KeyVaultDouble, name: str, data: bytes) -> str:
    oaep = rsa_padding.OAEP(rsa_padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)  # noqa: S303
    return base64.b64encode(vault.public_key(name).encrypt(data, oaep)).decode()


def kamus_envelope(vault: KeyVaultDouble, name: str, plaintext: str) -> str:
    """Kamus's EnvelopeEncryptionDecorator: the base64 *text* of an AES key, RSA-OAEP wrapped."""
    data_key, iv = os.urandom(32), os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext.encode()) + padder.finalize()
    encryptor = Cipher(algorithms.AES(data_key), modes.CBC(iv)).encryptor()
    body = encryptor.update(padded) + encryptor.finalize()
    wrapped = kamus_oaep(vault, name, base64.b64encode(data_key))
    return f"env${wrapped}${base64.b64encode(iv).decode()}:{base64.b64encode(body).decode()}"


def test_kamus_ciphertexts_decrypt(
    azure_kv: KeyVaultDouble, make_settings: SettingsFactory
) -> None:
    name = key_name("team-a:app")
    azure_kv.create_key(name)  # the key Kamus created
    small = kamus_oaep(azure_kv, name, "from kamus ✓".encode())
    large = kamus_envelope(azure_kv, name, "x" * 5000)
    manager = build(azure_kv, make_settings)
    assert run(manager.decrypt(small, "team-a:app")) == "from kamus ✓".encode()
    assert run(manager.decrypt(large, "team-a:app")) == b"x" * 5000
    assert run(manager.decrypt("", "team-a:app")) == b""
    with pytest.raises(DecryptionError):
        run(manager.decrypt(small, "team-b:app"))  # that identity has no key
    off = build(azure_kv, make_settings, KeyManagement__AllowLegacyCiphertexts="false")
    with pytest.raises(DecryptionError):
        run(off.decrypt(small, "team-a:app"))


@pytest.mark.parametrize(
    "attributes", [{"enabled": False}, {"expires": 1_000_000_000}], ids=["disabled", "expired"]
)
def test_a_key_that_may_not_be_used_is_a_503_with_the_reason(
    azure_kv: KeyVaultDouble, make_settings: SettingsFactory, attributes: dict[str, Any]
) -> None:
    azure_kv.create_key(key_name("team-a:app"), **attributes)
    with pytest.raises(KeyManagerUnavailable) as info:
        run(build(azure_kv, make_settings).encrypt(b"v", "team-a:app"))
    assert "disabled, expired or not yet valid" in info.value.reason


def test_a_legacy_envelope_with_a_bad_data_key_is_a_decryption_error(
    azure_kv: KeyVaultDouble, make_settings: SettingsFactory
) -> None:
    # Anyone holding the public key can wrap a 40-byte "AES key": it must be a 400, not a 500.
    name = key_name("team-a:app")
    azure_kv.create_key(name)
    wrapped = kamus_oaep(azure_kv, name, base64.b64encode(os.urandom(40)))
    body = base64.b64encode(os.urandom(32)).decode()
    crafted = f"env${wrapped}${base64.b64encode(os.urandom(16)).decode()}:{body}"
    with pytest.raises(DecryptionError) as info:
        run(build(azure_kv, make_settings).decrypt(crafted, "team-a:app"))
    assert info.value.reason == "legacy data key has the wrong size"


def test_new_key_versions_are_picked_up_and_old_values_still_open(
    azure_kv: KeyVaultDouble, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("crypto.azure.KEY_REFRESH_SECONDS", 0.0)
    manager = build(azure_kv, make_settings)
    old = run(manager.encrypt(b"old", "team-a:app"))
    azure_kv.create_key(key_name("team-a:app"))  # an operator rotates the key
    new = run(manager.encrypt(b"new", "team-a:app"))
    assert kms_fields(old).key_version != kms_fields(new).key_version
    assert kms_fields(new).key_version == azure_kv.versions(key_name("team-a:app"))[-1]
    assert run(manager.decrypt(old, "team-a:app")) == b"old"
    assert run(manager.decrypt(new, "team-a:app")) == b"new"


# Throttling (429) is retried until the deadline instead: tests/providers/test_throttling.py.
@pytest.mark.parametrize("faults", [Faults(fail_status=500), Faults(fail_status=503)], ids=str)
def test_a_failing_vault_is_unavailable_then_recovers(
    azure_kv: KeyVaultDouble, make_settings: SettingsFactory, faults: Faults
) -> None:
    manager = build(azure_kv, make_settings, **UNCACHED)
    ciphertext = run(manager.encrypt(b"v", "team-a:app"))
    run(manager.decrypt(ciphertext, "team-a:app"))
    azure_kv.faults = faults
    azure_kv.requests.clear()
    with pytest.raises(KeyManagerUnavailable) as info:
        run(manager.decrypt(ciphertext, "team-a:app"))
    assert info.value.reason.startswith("azure UnwrapKey")
    assert len(azure_kv.requests) == 2  # the try and one retry
    azure_kv.faults = Faults()
    assert run(manager.decrypt(ciphertext, "team-a:app")) == b"v"


def test_brief_throttling_is_ridden_out(
    azure_kv: KeyVaultDouble, make_settings: SettingsFactory
) -> None:
    manager = build(azure_kv, make_settings, **UNCACHED)
    ciphertext = run(manager.encrypt(b"v", "team-a:app"))
    run(manager.decrypt(ciphertext, "team-a:app"))
    azure_kv.faults = throttled(remaining=1)
    assert run(manager.decrypt(ciphertext, "team-a:app")) == b"v"


@pytest.mark.slow
def test_a_slow_vault_times_out(azure_kv: KeyVaultDouble, make_settings: SettingsFactory) -> None:
    manager = build(
        azure_kv, make_settings, KeyManagement__TimeoutSeconds="1", KeyManagement__MaxRetries="0"
    )
    azure_kv.faults = Faults(delay_seconds=3)
    with pytest.raises(KeyManagerUnavailable):
        run(manager.encrypt(b"v", "team-a:app"))


def test_an_unreachable_vault_is_unavailable(
    azure_kv: KeyVaultDouble, make_settings: SettingsFactory
) -> None:
    manager = build(azure_kv, make_settings, **UNCACHED)
    ciphertext = run(manager.encrypt(b"v", "team-a:app"))
    run(manager.decrypt(ciphertext, "team-a:app"))
    azure_kv.stop()
    with pytest.raises(KeyManagerUnavailable):
        run(manager.decrypt(ciphertext, "team-a:app"))
    azure_kv.start_again()
    assert run(manager.decrypt(ciphertext, "team-a:app")) == b"v"


def test_a_custom_vault_url_needs_the_challenge_check_relaxed(
    azure_kv: KeyVaultDouble, make_settings: SettingsFactory
) -> None:
    manager = build(
        azure_kv, make_settings, KeyManagement__KeyVault__VerifyChallengeResource="true"
    )
    with pytest.raises(KeyManagerUnavailable) as info:
        run(manager.encrypt(b"v", "team-a:app"))
    assert "VerifyChallengeResource=false" in info.value.reason


def test_service_principal_settings(
    azure_kv: KeyVaultDouble, make_settings: SettingsFactory
) -> None:
    with pytest.raises(ConfigurationError, match="ActiveDirectory__TenantId"):
        build(
            azure_kv,
            make_settings,
            ActiveDirectory__ClientId="app-id",
            ActiveDirectory__ClientSecret="s3cr3t",
        )
    manager = build(azure_kv, make_settings, ActiveDirectory__TenantId="tenant")
    assert isinstance(manager, AzureKeyVaultKeyManager)
    with pytest.raises(ConfigurationError, match="KeyManagement__KeyVault__Name"):
        build_key_manager(make_settings(KeyManagement__KeyVault__Url=""))
