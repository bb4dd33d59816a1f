"""Azure Key Vault (``KeyManagement__Provider=AzureKeyVault``): one RSA key per service account.

The key is named by the Kamus key id, so keys Kamus created are used as they are. New values are
``e1`` envelopes whose data key is wrapped with RSA-OAEP-256 by the key's public half, locally,
so encrypting costs no Key Vault call once the key is known. Key Vault's OAEP takes
no label, so the identity rides inside the wrapped blob instead: ``data key || SHA-256(sa_id)``,
checked after every unwrap. Unwrapping is one remote call.

A key named explicitly as an ``m1`` recipient (its URL) is wrapped the same way, and its wrapped
form records the key version that wrapped it (:meth:`AzureKeyVaultKeyManager.wrap_with_key`).
"""

import hashlib
import hmac
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline import PipelineResponse
from azure.core.pipeline.policies import RetryPolicy
from azure.keyvault.keys import KeyClient, KeyType, KeyVaultKey
from azure.keyvault.keys.crypto import CryptographyClient, EncryptionAlgorithm, KeyWrapAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from crypto import envelope
from crypto.cloud import CloudKeyManager, Wrapped, WrappedSeed
from crypto.datakeys import OFF, CacheLimits
from crypto.encoding import b64_decode
from crypto.errors import (
    DecryptionError,
    KeyManagerUnavailable,
    MalformedCiphertext,
)
from crypto.formats import CiphertextFormat
from crypto.keyid import kamus_key_id
from crypto.kms import (
    PROBE_NAME,
    BlockingCalls,
    Failure,
    KeyLocks,
    KmsError,
    answered,
    ensure_key,
    found,
    owner,
    refused,
    retry_after_seconds,
)
from crypto.legacy import cbc_decrypt, parse_legacy_envelope
from crypto.lifecycle import KeyPolicy
from crypto.sealing import Schedule

log = logging.getLogger(__name__)

KMS = "azure"
WRAP = KeyWrapAlgorithm.rsa_oaep_256
KEY_REFRESH_SECONDS = 300.0  # pick up a rotated key version within five minutes
MAX_CACHED_VERSIONS = 256
MAX_CACHED_VAULTS = 64  # Key Vault clients of vaults other than this Kamus's own
# A key named explicitly as an m1 recipient: a Key Vault (or Managed HSM) key URL, with or without
# a version. Any https host: private endpoints and sovereign clouds have vault hosts of their own.
KEY_URL = re.compile(
    r"(?P<vault>https://[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(?::[0-9]{1,5})?)"
    r"/keys/(?P<name>[A-Za-z0-9-]{1,127})(?:/(?P<version>[A-Za-z0-9]{1,64}))?"
)
_VERSION = re.compile(rb"[A-Za-z0-9]{1,64}")


def classify_azure_error(exc: Exception, operation: str) -> KmsError | None:
    name = type(exc).__name__
    if isinstance(exc, ResourceNotFoundError):
        return KmsError(Failure.NOT_FOUND, name)
    if isinstance(exc, ClientAuthenticationError):  # our identity: a misconfiguration
        return KmsError(Failure.UNAVAILABLE, name)
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        if status == 400 and operation in ("UnwrapKey", "Decrypt"):
            return KmsError(Failure.REJECTED, f"{name} (HTTP 400)")
        if status == 403 and "disabled" in str(exc.message or "").lower():
            # Key Vault's "Operation unwrapKey is not allowed on a disabled key." (403
            # Forbidden, like a missing permission, which names no key state).
            return KmsError(Failure.DISABLED, f"{name} (HTTP 403, key disabled)")
        if status == 429:  # Key Vault says how long to wait, in seconds
            # Typed as a protocol without headers; every transport's response has them.
            headers = getattr(exc.response, "headers", None) or {}
            retry_after = retry_after_seconds(headers.get("Retry-After"))
            return KmsError(Failure.THROTTLED, f"{name} (HTTP 429)", retry_after)
        return KmsError(Failure.UNAVAILABLE, f"{name} (HTTP {status})")
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return KmsError(Failure.UNAVAILABLE, name)
    if isinstance(exc, ValueError) and "challenge resource" in str(exc):
        return KmsError(
            Failure.UNAVAILABLE,
            "the vault's challenge names another resource; for a custom vault URL set "
            "KeyManagement__KeyVault__VerifyChallengeResource=false",
        )
    return None


class ThrottlingNotRetried(RetryPolicy[Any, Any]):
    """azure-core's retry policy, except for 429: BlockingCalls retries throttling, counting each
    answer and honouring its Retry-After asleep on the event loop, where azure-core would sleep
    it out in a worker thread that holds one of the KMS concurrency slots."""

    def is_retry(self, settings: dict[str, Any], response: PipelineResponse[Any, Any]) -> bool:
        if response.http_response.status_code == 429:
            return False
        return bool(super().is_retry(settings, response))


def client_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """A Key Vault client's keyword arguments: ``options`` (azure-core's ``retry_*`` ones
    included) and a retry policy of the client's own, since a policy object is linked into one
    client's pipeline and cannot be shared."""
    return {**options, "retry_policy": ThrottlingNotRetried(**options)}


MAX_RSA_CIPHERTEXT = 512  # bytes, for the largest Key Vault RSA key (4096 bits)


def _check_rsa_size(wrapped: bytes) -> None:
    """An RSA ciphertext is as long as the key: not worth sending a forged value's bulk."""
    if not 1 <= len(wrapped) <= MAX_RSA_CIPHERTEXT:
        raise MalformedCiphertext(
            "the wrapped value is not an RSA ciphertext (wrong size)",
            f"its RSA ciphertext is empty or over the {MAX_RSA_CIPHERTEXT} bytes of a 4096-bit key",
        )


@dataclass(frozen=True)
class NamedKey:
    """A key URL's parts: the vault (``https://host[:port]``), the key, and its version ("" for
    the latest)."""

    vault: str
    name: str
    version: str

    @classmethod
    def parse(cls, url: str) -> "NamedKey | None":
        match = KEY_URL.fullmatch(url)
        if match is None:
            return None
        return cls(_vault_id(match["vault"]), match["name"], match["version"] or "")


def _vault_id(url: str) -> str:
    """A vault URL as the caches file it: no trailing slash, lowercase (hosts are)."""
    return url.rstrip("/").lower()


def _pack_named(version: str, rsa_ciphertext: bytes) -> bytes:
    """A named key's wrapped form: ``len(version) (1 byte) || version (ASCII) || RSA-OAEP``."""
    raw = version.encode("ascii")
    return bytes([len(raw)]) + raw + rsa_ciphertext


def _unpack_named(wrapped: bytes) -> tuple[str, bytes]:
    """The key version and RSA ciphertext of :func:`_pack_named`'s form, size-checked."""
    size = wrapped[0] if wrapped else 0
    version = wrapped[1 : 1 + size]
    if len(version) != size or not _VERSION.fullmatch(version):
        raise MalformedCiphertext(
            "the wrapped key names no valid Key Vault key version",
            "its wrapped key names no valid Key Vault key version",
        )
    ciphertext = wrapped[1 + size :]
    _check_rsa_size(ciphertext)
    return version.decode("ascii"), ciphertext


def _identity_digest(sa_id: str) -> bytes:
    return hashlib.sha256(sa_id.encode("utf-8")).digest()


def _bound_data_key(blob: bytes, sa_id: str) -> bytes:
    """The data key of an unwrapped blob, whose digest must be ``sa_id``'s."""
    data_key, digest = blob[: envelope.DATA_KEY_SIZE], blob[envelope.DATA_KEY_SIZE :]
    if not hmac.compare_digest(digest, _identity_digest(sa_id)):
        raise DecryptionError("the wrapped data key is bound to another identity")
    return data_key


def _wrapped(key: KeyVaultKey, data_key: bytes, sa_id: str) -> Wrapped:
    """The data key, with the identity's digest, wrapped under ``key``'s public half."""
    wrapped = _wrap_locally(key, data_key + _identity_digest(sa_id))
    return Wrapped(data_key, key.properties.version or "", wrapped)


def _wrap_locally(key: KeyVaultKey, blob: bytes) -> bytes:
    """RSA-OAEP-256 with the key's public half, as Key Vault's ``wrapKey`` would do.

    Done here rather than by the SDK, whose local wrap falls back to a remote call, unbounded
    and off the books, whenever it declines (an expired key, say)."""
    props = key.properties
    now = datetime.now(UTC)
    if (
        props.enabled is False
        or (props.expires_on is not None and props.expires_on <= now)
        or (props.not_before is not None and props.not_before > now)
    ):
        raise KeyManagerUnavailable(
            f"azure key {key.name} version {props.version} is disabled, expired or not yet valid"
        )
    jwk = key.key
    numbers = rsa.RSAPublicNumbers(
        int.from_bytes(jwk.e, "big"),  # type: ignore[attr-defined]
        int.from_bytes(jwk.n, "big"),  # type: ignore[attr-defined]
    )
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    return numbers.public_key().encrypt(blob, oaep)


class AzureKeyVaultKeyManager(CloudKeyManager):
    kind = KMS
    display_name = "Azure Key Vault"
    legacy_reads = "legacy Kamus base64 and env$ values"
    key_name_example = "https://<vault>.vault.azure.net/keys/<name>, optionally /<version>"

    def __init__(
        self,
        keys: KeyClient,
        credential: TokenCredential,
        calls: BlockingCalls,
        *,
        client_options: dict[str, Any] | None = None,
        hardware_protected: bool = False,
        key_size: int = 2048,
        create_keys: bool = True,
        allow_legacy: bool = True,
        sealed_output: bool = True,
        wrapped_seeds: Sequence[WrappedSeed] = (),
        policy: KeyPolicy | None = None,
        schedule: Schedule | None = None,
        cache: CacheLimits = OFF,
        recipient_keys: Sequence[str] = (),
    ) -> None:
        super().__init__(
            sealed_output=sealed_output,
            allow_legacy=allow_legacy,
            wrapped_seeds=wrapped_seeds,
            policy=policy,
            schedule=schedule,
            cache=cache,
            observer=calls.observer,
            recipient_keys=recipient_keys,
        )
        self._keys = keys
        self._credential = credential
        self._calls = calls
        self._client_options = client_options or {}
        self._hsm = hardware_protected
        self._key_size = key_size
        self._create_keys = create_keys
        self._locks = KeyLocks()
        self._looking_up_version = KeyLocks()
        self._latest: dict[str, tuple[float, KeyVaultKey]] = {}
        # (vault, key name, version) -> its client; the vault is the one of the key's URL.
        self._versions: OrderedDict[tuple[str, str, str], CryptographyClient] = OrderedDict()
        self._vault = _vault_id(keys.vault_url)
        self._vaults: OrderedDict[str, KeyClient] = OrderedDict()
        # The vaults a named key may be in when the SDK does not check a vault's challenge
        # (KeyManagement__KeyVault__VerifyChallengeResource=false): then any other host would be
        # sent this identity's Key Vault token.
        self._trusted_vaults = {self._vault} | {
            named.vault for key in recipient_keys if (named := NamedKey.parse(key)) is not None
        }

    def close(self) -> None:
        """Close its Key Vault clients' connections and its worker threads. A service keeps one
        manager for its life; tests make many, whose TLS sockets must not be left to the
        garbage collector."""
        for client in [*self._versions.values(), *self._vaults.values(), self._keys]:
            client.close()
        self._versions.clear()
        self._vaults.clear()
        self._calls.close()

    async def new_data_key(self, sa_id: str) -> Wrapped:
        name = kamus_key_id(sa_id)
        key = await found(lambda: self._latest_key(name))
        if key is None:
            # Creating an existing name adds a version in Key Vault: look again first.
            key = await ensure_key(
                self._locks,
                name,
                allowed=self._create_keys,
                look=lambda: self._get_key(name),
                create=lambda: self._create_key(name, sa_id),
            )
            self._latest[name] = (time.monotonic(), key)
        return _wrapped(key, envelope.new_data_key(), sa_id)

    async def current_key_version(self, sa_id: str) -> str:
        return (await self._latest_key(kamus_key_id(sa_id))).properties.version or ""

    async def wrap_again(
        self, key_version: str, wrapped: bytes, data_key: bytes, sa_id: str
    ) -> Wrapped:
        return _wrapped(await self._latest_key(kamus_key_id(sa_id)), data_key, sa_id)

    async def _latest_key(self, name: str) -> KeyVaultKey:
        cached = self._latest.get(name)
        if cached and time.monotonic() - cached[0] < KEY_REFRESH_SECONDS:
            return cached[1]
        key = await self._get_key(name)
        self._latest[name] = (time.monotonic(), key)
        return key

    async def _get_key(self, name: str) -> KeyVaultKey:
        key: KeyVaultKey = await self._calls("GetKey", lambda: self._keys.get_key(name))
        return key

    async def _create_key(self, name: str, sa_id: str) -> KeyVaultKey:
        namespace, service_account = owner(sa_id)
        key: KeyVaultKey = await self._calls(
            "CreateKey",
            lambda: self._keys.create_rsa_key(
                name,
                size=self._key_size,
                hardware_protected=self._hsm,
                tags={"kamus-namespace": namespace, "kamus-service-account": service_account},
            ),
        )
        self._calls.key_created()
        return key

    async def check(self) -> None:
        # A key that does not exist: 404 with keys/read, which decrypting needs too.
        await answered(self._calls, "GetKey", lambda: self._keys.get_key(PROBE_NAME))

    def check_wrapped(self, key_version: str, wrapped: bytes) -> None:
        named = NamedKey.parse(key_version)
        if named is not None:  # a key named explicitly: its URL, and the version in the blob
            version, _ = _unpack_named(wrapped)
            if named.version and version != named.version:
                raise MalformedCiphertext(
                    "the wrapped key names another version than its key URL",
                    "its wrapped key names another Key Vault key version than its key URL",
                )
            return
        if not key_version:
            raise MalformedCiphertext(
                "the value names no Key Vault key version",
                "the value names no Key Vault key version",
            )
        _check_rsa_size(wrapped)

    async def unwrap_data_key(self, key_version: str, wrapped: bytes, sa_id: str) -> bytes:
        self.check_wrapped(key_version, wrapped)
        blob = await self._remote("UnwrapKey", kamus_key_id(sa_id), key_version, wrapped)
        return _bound_data_key(blob, sa_id)

    def is_key_name(self, name: str) -> bool:
        return NamedKey.parse(name) is not None

    async def wrap_with_key(self, key_name: str, secret: bytes, sa_id: str) -> bytes:
        """``secret`` wrapped as the service account's own keys wrap a data key (RSA-OAEP-256 by
        the key's public half, locally, of ``secret || SHA-256(sa_id)``), under the version the
        URL names or else the key's latest (read at most every five minutes).

        The wrapped form records that version, since unwrapping needs it and the stanza's key
        id stays the URL as given: ``len(version) (1 byte) || version (ASCII) || RSA-OAEP
        ciphertext``, for versioned URLs too (one layout; it must then match the URL's). So an
        unversioned URL follows the key's rotation, and its older values keep opening as long
        as their version is enabled."""
        named = self._parse_named(key_name)
        key = await self._named_key(key_name, named)
        if key.key_type not in (KeyType.rsa, KeyType.rsa_hsm):
            raise KeyManagerUnavailable(
                f"azure key {key_name} is a {key.key_type} key; a recipient must be an RSA key"
            )
        version = key.properties.version or ""
        if not _VERSION.fullmatch(version.encode("ascii", "replace")) or (
            named.version and version != named.version
        ):
            raise KeyManagerUnavailable(f"azure key {key_name}: Key Vault answered another key")
        return _pack_named(version, _wrap_locally(key, secret + _identity_digest(sa_id)))

    async def unwrap_with_key(self, key_name: str, wrapped: bytes, sa_id: str) -> bytes:
        """``UnwrapKey`` with the version the wrapped form records, then the identity's digest
        checked, as for the service account's own keys."""
        named = self._parse_named(key_name)
        self.check_wrapped(key_name, wrapped)
        version, ciphertext = _unpack_named(wrapped)
        blob = await self._remote("UnwrapKey", named.name, version, ciphertext, named.vault)
        return _bound_data_key(blob, sa_id)

    def _parse_named(self, key_name: str) -> NamedKey:
        named = NamedKey.parse(key_name)
        if named is None:
            raise KeyManagerUnavailable(
                f"{key_name[:200]!r} is not a full Key Vault key URL ({self.key_name_example})"
            )
        if (
            self._client_options.get("verify_challenge_resource") is False
            and named.vault not in self._trusted_vaults
        ):
            raise KeyManagerUnavailable(
                f"azure key {key_name} is in another vault than this Kamus's, and the vault's "
                "challenge is not verified (VerifyChallengeResource=false), so this identity's "
                "token would go to it: list the key in KeyManagement__RecipientKeys"
            )
        return named

    async def _named_key(self, key_name: str, named: NamedKey) -> KeyVaultKey:
        """The key a URL names (its version, else its latest), read at most every five minutes."""
        cached = self._latest.get(key_name)
        if cached and time.monotonic() - cached[0] < KEY_REFRESH_SECONDS:
            return cached[1]
        keys = self._vault_client(named.vault)
        key: KeyVaultKey = await self._calls(
            "GetKey", lambda: keys.get_key(named.name, named.version or None)
        )
        self._latest[key_name] = (time.monotonic(), key)
        return key

    def _vault_client(self, vault: str) -> KeyClient:
        """The key client of ``vault``: this Kamus's own, or one made (and kept) for another."""
        if not vault or vault == self._vault:
            return self._keys
        client = self._vaults.get(vault)
        if client is None:
            client = KeyClient(vault, self._credential, **client_kwargs(self._client_options))
            self._vaults[vault] = client
            if len(self._vaults) > MAX_CACHED_VAULTS:
                self._vaults.popitem(last=False)
        self._vaults.move_to_end(vault)
        return client

    async def open_legacy(self, ciphertext: str, sa_id: str, fmt: CiphertextFormat) -> bytes:
        name = kamus_key_id(sa_id)
        cbc: tuple[bytes, bytes] | None = None  # the iv and body of a legacy envelope
        if fmt is CiphertextFormat.LEGACY_RAW:
            wrapped = b64_decode(ciphertext)
        elif fmt is CiphertextFormat.LEGACY_ENVELOPE:
            # Large values: the RSA-OAEP-wrapped *base64 text* of an AES-CBC key.
            wrapped_text, iv, body = parse_legacy_envelope(ciphertext)
            wrapped, cbc = b64_decode(wrapped_text), (iv, body)
        else:
            raise self.unreadable(ciphertext)
        _check_rsa_size(wrapped)
        # Kamus used RSA-OAEP with the key's latest version.
        try:
            version = (await self._latest_key(name)).properties.version
        except KmsError as exc:
            raise DecryptionError(exc.reason) from None
        plaintext = await self._remote("Decrypt", name, version or "", wrapped)
        if cbc is None:
            return plaintext
        try:
            data_key = b64_decode(plaintext.decode("ascii"))
        except (UnicodeDecodeError, DecryptionError):
            # What the key gave back, not the value's shape: the one error, or an oracle.
            raise DecryptionError("legacy envelope key is not base64") from None
        return cbc_decrypt(data_key, *cbc)

    async def _remote(
        self, operation: str, name: str, version: str, data: bytes, vault: str = ""
    ) -> bytes:
        try:
            client = await self._version_client(name, version, vault)
            if operation == "UnwrapKey":
                result = await self._calls(operation, lambda: client.unwrap_key(WRAP, data).key)
            else:
                result = await self._calls(
                    operation, lambda: client.decrypt(EncryptionAlgorithm.rsa_oaep, data).plaintext
                )
        except KmsError as exc:
            raise refused(exc) from None
        plaintext: bytes = result
        return plaintext

    async def _version_client(self, name: str, version: str, vault: str = "") -> CryptographyClient:
        """The client of a key version in ``vault`` (by default this Kamus's own)."""
        vault = vault or self._vault
        cache_key = (vault, name, version)
        cached = self._versions.get(cache_key)
        if cached is not None:
            self._versions.move_to_end(cache_key)
            return cached
        # One GetKey for the requests that miss together (a rollout's pods): the others wait.
        async with self._looking_up_version(f"{vault}/keys/{name}/{version}"):
            cached = self._versions.get(cache_key)
            if cached is not None:
                return cached
            keys = self._vault_client(vault)
            key = await self._calls("GetKey", lambda: keys.get_key(name, version))
            return self._client_for(key, vault)

    def _client_for(self, key: KeyVaultKey, vault: str) -> CryptographyClient:
        """The cached client of a key version. Built from the key itself, it never fetches it
        again, so each remote operation is exactly one Key Vault call."""
        cache_key = (vault, key.name or "", key.properties.version or "")
        client = self._versions.get(cache_key)
        if client is None:
            client = CryptographyClient(
                key, self._credential, **client_kwargs(self._client_options)
            )
            self._versions[cache_key] = client
            if len(self._versions) > MAX_CACHED_VERSIONS:
                self._versions.popitem(last=False)
        self._versions.move_to_end(cache_key)
        return client
