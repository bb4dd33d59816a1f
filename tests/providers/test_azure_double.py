"""The Key Vault double, seen through the real azure-keyvault-keys and azure-identity clients only:
if these pass, code tested against the double talks to Key Vault the way the SDK does."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.identity import (
    CredentialUnavailableError,
    DefaultAzureCredential,
    ManagedIdentityCredential,
)
from azure.keyvault.keys import KeyClient, KeyVaultKey
from azure.keyvault.keys.crypto import CryptographyClient, EncryptionAlgorithm, KeyWrapAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from tests.kms_doubles.azure import KeyVaultDouble, throttled
from tests.support.servers import Faults

SCOPE = "https://vault.azure.net/.default"


@pytest.fixture(scope="module")
def double() -> Iterator[KeyVaultDouble]:
    vault = KeyVaultDouble().start()
    yield vault
    vault.stop()


@pytest.fixture
def vault(double: KeyVaultDouble) -> KeyVaultDouble:
    double.reset()
    if not double.running:
        double.start_again()
    return double


def key_client(vault: KeyVaultDouble, credential: TokenCredential, **kwargs: Any) -> KeyClient:
    return KeyClient(
        vault.url,
        credential,
        verify_challenge_resource=False,
        connection_verify=str(vault.ca_file),
        **kwargs,
    )


def crypto_client(vault: KeyVaultDouble, key: KeyVaultKey | str) -> CryptographyClient:
    return CryptographyClient(
        key,
        vault.credential(),
        verify_challenge_resource=False,
        connection_verify=str(vault.ca_file),
    )


def rsa_numbers(key: KeyVaultKey) -> tuple[int, int]:
    """(n, e) as the SDK parsed them (JsonWebKey sets its fields dynamically, unseen by mypy)."""
    jwk = key.key
    return int.from_bytes(jwk.n, "big"), int.from_bytes(jwk.e, "big")  # type: ignore[attr-defined]


def test_create_and_get_rsa_keys(vault: KeyVaultDouble) -> None:
    with key_client(vault, vault.credential()) as client:
        created = client.create_rsa_key(
            "kamus-ns-app", size=3072, tags={"namespace": "ns"}, key_operations=["wrapKey"]
        )
        hsm = client.create_rsa_key("kamus-hsm", hardware_protected=True)
        latest = client.get_key("kamus-ns-app")
        pinned = client.get_key("kamus-ns-app", created.properties.version)

    assert created.id == f"{vault.url}/keys/kamus-ns-app/{vault.versions('kamus-ns-app')[0]}"
    assert len(created.properties.version or "") == 32
    assert created.key_type == "RSA"
    assert created.key_operations == ["wrapKey"]
    assert created.properties.tags == {"namespace": "ns"}
    assert created.properties.enabled is True
    assert created.properties.created_on is not None
    assert hsm.key_type == "RSA-HSM"
    assert latest.id == pinned.id == created.id
    numbers = vault.public_key("kamus-ns-app").public_numbers()
    assert rsa_numbers(latest) == (numbers.n, 65537)
    assert numbers.n.bit_length() == 3072
    assert vault.requests == [
        "POST /keys/kamus-ns-app/create",
        "POST /keys/kamus-hsm/create",
        "GET /keys/kamus-ns-app/",
        f"GET /keys/kamus-ns-app/{created.properties.version}",
    ]


def test_every_create_is_a_new_version(vault: KeyVaultDouble) -> None:
    first = vault.create_key("rotating")
    with key_client(vault, vault.credential()) as client:
        second = client.create_rsa_key("rotating")
        latest = client.get_key("rotating")
        old = client.get_key("rotating", first.rsplit("/", 1)[1])

    assert vault.versions("rotating") == [first.rsplit("/", 1)[1], second.properties.version]
    assert latest.id == second.id
    assert old.id == first
    assert rsa_numbers(old) != rsa_numbers(latest)
    assert (
        rsa_numbers(old)[0]
        == vault.public_key("rotating", old.properties.version).public_numbers().n
    )


def test_missing_key_is_not_found(vault: KeyVaultDouble) -> None:
    vault.create_key("exists")
    with key_client(vault, vault.credential()) as client:
        with pytest.raises(ResourceNotFoundError) as missing:
            client.get_key("nope")
        with pytest.raises(ResourceNotFoundError) as missing_version:
            client.get_key("exists", "0" * 32)

    assert missing.value.status_code == 404
    assert missing.value.error is not None
    assert missing.value.error.code == "KeyNotFound"
    assert missing_version.value.status_code == 404


@pytest.mark.parametrize(
    "algorithm", [EncryptionAlgorithm.rsa_oaep, EncryptionAlgorithm.rsa_oaep_256]
)
def test_encrypt_locally_decrypt_remotely(
    vault: KeyVaultDouble, algorithm: EncryptionAlgorithm
) -> None:
    with key_client(vault, vault.credential()) as client:
        key = client.create_rsa_key("data-key")
    vault.requests.clear()

    with crypto_client(vault, key) as crypto:
        encrypted = crypto.encrypt(algorithm, b"a secret")
        decrypted = crypto.decrypt(algorithm, encrypted.ciphertext)

    assert decrypted.plaintext == b"a secret"
    assert decrypted.key_id == key.id
    # The SDK encrypts with the public key it already holds: only decrypt reaches the vault.
    assert vault.requests == [f"POST /keys/data-key/{key.properties.version}/decrypt"]


def test_wrap_and_unwrap_round_trip(vault: KeyVaultDouble) -> None:
    with key_client(vault, vault.credential()) as client:
        key = client.create_rsa_key("kek")
    vault.requests.clear()
    data_key = os.urandom(32)

    with crypto_client(vault, key) as crypto:
        wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, data_key)
        unwrapped = crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key)

    assert unwrapped.key == data_key
    assert wrapped.encrypted_key != data_key
    assert vault.requests == [f"POST /keys/kek/{key.properties.version}/unwrapkey"]


def test_remote_encrypt_when_the_key_forbids_local_encryption(vault: KeyVaultDouble) -> None:
    with key_client(vault, vault.credential()) as client:
        key = client.create_rsa_key("no-local", key_operations=["decrypt"])
    vault.requests.clear()

    with crypto_client(vault, key) as crypto:
        encrypted = crypto.encrypt(EncryptionAlgorithm.rsa_oaep_256, b"remote")
        decrypted = crypto.decrypt(EncryptionAlgorithm.rsa_oaep_256, encrypted.ciphertext)

    assert decrypted.plaintext == b"remote"
    assert vault.requests == [
        f"POST /keys/no-local/{key.properties.version}/encrypt",
        f"POST /keys/no-local/{key.properties.version}/decrypt",
    ]


def test_client_from_a_key_id_gets_the_key_before_each_first_operation(
    vault: KeyVaultDouble,
) -> None:
    kid = vault.create_key("legacy")
    old_version = vault.versions("legacy")[0]
    vault.create_key("legacy")  # the old version must still decrypt what it encrypted
    # Built independently of the SDK, as a ciphertext from an older Kamus would be.
    public_key = vault.public_key("legacy", old_version)
    sha1 = hashes.SHA1()  # noqa: S303 - Key Vault's RSA-OAEP is defined with SHA-1
    ciphertext = public_key.encrypt(b"legacy secret", padding.OAEP(padding.MGF1(sha1), sha1, None))
    wrapped = public_key.encrypt(b"k" * 32, padding.OAEP(padding.MGF1(sha1), sha1, None))

    with crypto_client(vault, kid) as crypto:
        decrypted = crypto.decrypt(EncryptionAlgorithm.rsa_oaep, ciphertext)
        again = crypto.decrypt(EncryptionAlgorithm.rsa_oaep, ciphertext)
    decrypt_calls = list(vault.requests)
    vault.requests.clear()
    with crypto_client(vault, kid) as crypto:
        unwrapped = crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep, wrapped)

    assert decrypted.plaintext == again.plaintext == b"legacy secret"
    assert unwrapped.key == b"k" * 32
    path = f"/keys/legacy/{old_version}"
    assert decrypt_calls == [f"GET {path}", f"POST {path}/decrypt", f"POST {path}/decrypt"]
    assert vault.requests == [f"GET {path}", f"POST {path}/unwrapkey"]


def test_client_from_an_unversioned_key_id_uses_the_latest(vault: KeyVaultDouble) -> None:
    vault.create_key("floating")
    latest = vault.create_key("floating").rsplit("/", 1)[1]
    sha256 = hashes.SHA256()
    ciphertext = vault.public_key("floating").encrypt(
        b"newest", padding.OAEP(padding.MGF1(sha256), sha256, None)
    )

    with crypto_client(vault, f"{vault.url}/keys/floating") as crypto:
        decrypted = crypto.decrypt(EncryptionAlgorithm.rsa_oaep_256, ciphertext)

    assert decrypted.plaintext == b"newest"
    assert decrypted.key_id == f"{vault.url}/keys/floating/{latest}"
    assert vault.requests == ["GET /keys/floating/", f"POST /keys/floating/{latest}/decrypt"]


def test_bad_ciphertext_is_a_bad_parameter(vault: KeyVaultDouble) -> None:
    with key_client(vault, vault.credential()) as client:
        key = client.create_rsa_key("strict")

    with crypto_client(vault, key) as crypto, pytest.raises(HttpResponseError) as failed:
        crypto.decrypt(EncryptionAlgorithm.rsa_oaep_256, b"\x01" * 256)

    assert failed.value.status_code == 400
    assert failed.value.error is not None
    assert failed.value.error.code == "BadParameter"


def test_challenge_then_success_with_the_challenge_tenant() -> None:
    # A fresh origin: the SDK caches challenges per origin for the whole process.
    vault = KeyVaultDouble().start()
    credential = vault.credential()
    try:
        with key_client(vault, credential) as client:
            key = client.create_rsa_key("after-challenge")
    finally:
        vault.stop()

    # The SDK only learns the tenant from the double's WWW-Authenticate challenge.
    assert credential.calls == [((SCOPE,), vault.tenant_id)]
    assert key.name == "after-challenge"
    assert vault.requests == ["POST /keys/after-challenge/create"]


class ForeignCredential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("issued-by-someone-else", 2**31)


def test_tokens_the_double_did_not_issue_are_rejected(vault: KeyVaultDouble) -> None:
    vault.create_key("guarded")
    with (
        key_client(vault, ForeignCredential()) as client,
        pytest.raises(ClientAuthenticationError) as rejected,
    ):
        client.get_key("guarded")

    assert rejected.value.status_code == 401
    assert vault.requests == []


@pytest.fixture
def managed_identity_env(vault: KeyVaultDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("AZURE_", "IDENTITY_", "MSI_", "IMDS_")):
            monkeypatch.delenv(name)
    for name, value in vault.env().items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("managed_identity_env")
def test_default_azure_credential_uses_the_managed_identity(vault: KeyVaultDouble) -> None:
    vault.faults = Faults(fail_status=503)  # the identity endpoint is not the vault
    with DefaultAzureCredential() as credential:
        token = credential.get_token(SCOPE)
        vault.faults = Faults()
        # No connection_verify: REQUESTS_CA_BUNDLE from env() is enough.
        with KeyClient(vault.url, credential, verify_challenge_resource=False) as client:
            key = client.create_rsa_key("via-msi")

    assert token.token
    assert key.id.startswith(f"{vault.url}/keys/via-msi/")
    assert vault.requests == ["POST /keys/via-msi/create"]


@pytest.mark.usefixtures("managed_identity_env")
def test_managed_identity_needs_the_identity_header(
    vault: KeyVaultDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-secret")
    with ManagedIdentityCredential() as credential, pytest.raises(CredentialUnavailableError) as e:
        credential.get_token(SCOPE)

    assert "401" in str(e.value)


def test_server_errors_surface_after_the_retries(vault: KeyVaultDouble) -> None:
    vault.create_key("flaky")
    vault.faults = Faults(fail_status=500)
    with (
        key_client(vault, vault.credential(), retry_total=1) as client,
        pytest.raises(HttpResponseError) as failed,
    ):
        client.get_key("flaky")

    assert failed.value.status_code == 500
    assert failed.value.error is not None
    assert failed.value.error.code == "InternalServerError"
    assert vault.requests == ["GET /keys/flaky/", "GET /keys/flaky/"]


def test_throttling_is_retried(vault: KeyVaultDouble) -> None:
    kid = vault.create_key("busy")
    vault.faults = throttled(remaining=1)
    with key_client(vault, vault.credential(), retry_total=1) as client:
        key = client.get_key("busy")

    assert key.id == kid
    assert vault.requests == ["GET /keys/busy/"] * 2


def test_stopped_vault_is_unreachable_until_started_again(vault: KeyVaultDouble) -> None:
    kid = vault.create_key("durable")
    with key_client(vault, vault.credential(), retry_total=0) as client:
        vault.stop()
        assert not vault.running
        with pytest.raises(ServiceRequestError):
            client.get_key("durable")
        vault.start_again()
        key = client.get_key("durable")

    assert vault.running
    assert key.id == kid
    assert vault.requests == ["GET /keys/durable/"]


def test_reset_forgets_keys_requests_and_faults(vault: KeyVaultDouble) -> None:
    vault.create_key("gone")
    vault.faults = Faults(fail_status=500)
    vault.requests.append("GET /keys/gone/")

    vault.reset()

    assert vault.versions("gone") == []
    assert vault.requests == []
    assert vault.faults == Faults()
    with key_client(vault, vault.credential()) as client, pytest.raises(ResourceNotFoundError):
        client.get_key("gone")


def test_without_keys_get_permission_every_operation_is_remote(vault: KeyVaultDouble) -> None:
    vault.create_key("no-get")
    vault.create_key("no-get")
    sha1 = hashes.SHA1()  # noqa: S303 - Key Vault's RSA-OAEP is defined with SHA-1
    for_latest = vault.public_key("no-get").encrypt(
        b"to the latest", padding.OAEP(padding.MGF1(sha1), sha1, None)
    )
    vault.faults = Faults(fail_status=403, remaining=1)

    with crypto_client(vault, f"{vault.url}/keys/no-get") as crypto:
        encrypted = crypto.encrypt(EncryptionAlgorithm.rsa_oaep, b"remote only")
        decrypted = crypto.decrypt(EncryptionAlgorithm.rsa_oaep, encrypted.ciphertext)
        latest = crypto.decrypt(EncryptionAlgorithm.rsa_oaep, for_latest)

    assert decrypted.plaintext == b"remote only"
    assert latest.plaintext == b"to the latest"
    # The SDK reports its own key id, not the kid the vault answered with.
    assert encrypted.key_id == f"{vault.url}/keys/no-get"
    # After a 403 on the key the SDK never asks again, and sends an empty version for "latest".
    assert vault.requests == [
        "GET /keys/no-get/",
        "POST /keys/no-get//encrypt",
        "POST /keys/no-get//decrypt",
        "POST /keys/no-get//decrypt",
    ]
