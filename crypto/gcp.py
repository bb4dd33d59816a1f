"""Google Cloud KMS (``KeyManagement__Provider=GoogleKms``): one crypto key per service account.

The key is ``<key ring>/cryptoKeys/<Kamus key id>``, so keys Kamus created are used as they are.
New values are ``m1`` (or ``e1``) envelopes: the data key is made here and wrapped by one
``Encrypt`` call with the identity as additional authenticated data, which Cloud KMS checks again
on ``Decrypt``. Every call carries CRC32C checksums both ways, as Google recommends, so corruption
in transit is caught.
"""

import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import google_crc32c
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exc
from google.cloud import kms

from crypto import envelope
from crypto.cloud import CloudKeyManager, Wrapped, WrappedSeed
from crypto.datakeys import OFF, CacheLimits
from crypto.encoding import b64_decode
from crypto.errors import KeyManagerUnavailable, MalformedCiphertext
from crypto.formats import CiphertextFormat
from crypto.keyid import kamus_key_id
from crypto.kms import (
    BlockingCalls,
    Failure,
    KeyLocks,
    KmsError,
    answered,
    ensure_key,
    found,
    owner,
    refused,
)
from crypto.lifecycle import KeyPolicy
from crypto.sealing import Schedule

log = logging.getLogger(__name__)

KMS = "gcp"
# What Google's own retry repeats. Not throttling (TooManyRequests, and its gRPC subclass
# ResourceExhausted): BlockingCalls retries that, and counts each one.
RETRYABLE = (gexc.ServiceUnavailable, gexc.InternalServerError)
SYMMETRIC = kms.CryptoKeyVersion.CryptoKeyVersionAlgorithm.GOOGLE_SYMMETRIC_ENCRYPTION
# A crypto key named explicitly as an m1 recipient: its full resource name. Not a version's
# (``.../cryptoKeyVersions/<n>``): Cloud KMS decrypts with a CryptoKey, finding the version in
# the ciphertext; nor a bare version number, which is what the stanza of a service account's
# own key names.
KEY_NAME = re.compile(
    r"projects/[a-z0-9][a-z0-9.:-]{0,62}/locations/[a-z0-9-]{1,63}"
    r"/keyRings/[A-Za-z0-9_-]{1,63}/cryptoKeys/[A-Za-z0-9_-]{1,63}"
)


def _rpc_status(exc: Exception) -> str | None:
    """The google.rpc status name of an API error: gRPC raises its own class for each, while REST
    raises by HTTP status (FAILED_PRECONDITION is a plain 400) and names it in the body."""
    if isinstance(exc, gexc.FailedPrecondition):
        return "FAILED_PRECONDITION"
    response = getattr(exc, "response", None)
    try:
        status = response.json()["error"]["status"]  # type: ignore[union-attr]
    except Exception:  # no response, or not Google's error document: no status to read
        return None
    return status if isinstance(status, str) else None


def classify_gcp_error(exc: Exception, operation: str) -> KmsError | None:
    name = type(exc).__name__
    if isinstance(exc, gexc.NotFound):
        return KmsError(Failure.NOT_FOUND, name)
    if isinstance(exc, gexc.Conflict):  # AlreadyExists over gRPC, plain 409 over REST
        return KmsError(Failure.CONFLICT, name)
    if _rpc_status(exc) == "FAILED_PRECONDITION":  # the key version is not ENABLED
        return KmsError(Failure.DISABLED, name)
    if isinstance(exc, gexc.BadRequest) and operation == "Decrypt":
        return KmsError(Failure.REJECTED, name)
    if isinstance(exc, gexc.TooManyRequests):  # HTTP 429, RESOURCE_EXHAUSTED
        return KmsError(Failure.THROTTLED, f"{name} (HTTP {exc.code})")
    if isinstance(exc, gexc.GoogleAPICallError):
        return KmsError(Failure.UNAVAILABLE, f"{name} (HTTP {exc.code})")
    if isinstance(exc, gexc.RetryError | auth_exc.GoogleAuthError | OSError):
        return KmsError(Failure.UNAVAILABLE, name)
    if type(exc).__module__.startswith(("requests", "urllib3")):  # the REST transport's errors
        return KmsError(Failure.UNAVAILABLE, name)
    return None


MAX_CIPHERTEXT = 65536  # Cloud KMS's limit on Decrypt's ciphertext


def _crc(data: bytes) -> int:
    return int(google_crc32c.value(data))


class GoogleKmsKeyManager(CloudKeyManager):
    kind = KMS
    display_name = "Google Cloud KMS"
    legacy_reads = "legacy Kamus base64 values"
    key_name_example = "projects/<project>/locations/<location>/keyRings/<ring>/cryptoKeys/<key>"

    def __init__(
        self,
        client: kms.KeyManagementServiceClient,
        calls: BlockingCalls,
        *,
        project: str,
        location: str,
        key_ring: str,
        protection_level: str = "SOFTWARE",
        rotation_period: timedelta | None = None,
        attempt_timeout: float = 5.0,
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
        self._client = client
        self._calls = calls
        self._location = f"projects/{project}/locations/{location}"
        self._key_ring = client.key_ring_path(project, location, key_ring)
        self._key_ring_id = key_ring
        self._protection = getattr(kms.ProtectionLevel, protection_level)
        self._rotation = rotation_period
        self._create_keys = create_keys
        self._locks = KeyLocks()
        # Google's retry: exponential backoff with jitter, on 5xx, inside the deadline the
        # BlockingCalls runner enforces (which retries throttling itself).
        self._options: dict[str, Any] = {
            "retry": Retry(
                predicate=lambda e: isinstance(e, RETRYABLE),
                initial=0.1,
                maximum=2.0,
                timeout=calls.timeout_seconds * 0.9,
            ),
            "timeout": attempt_timeout,
        }

    def key_name(self, sa_id: str) -> str:
        return f"{self._key_ring}/cryptoKeys/{kamus_key_id(sa_id)}"

    async def new_data_key(self, sa_id: str) -> Wrapped:
        name = self.key_name(sa_id)
        data_key = envelope.new_data_key()
        wrapped = await found(lambda: self._wrap(name, data_key, sa_id))
        if wrapped is None:
            await ensure_key(
                self._locks,
                name,
                allowed=self._create_keys,
                # Creating an existing name fails with a conflict: no need to look first.
                look=None,
                create=lambda: self._create_key(name, sa_id),
            )
            wrapped = await self._wrap(name, data_key, sa_id)
        return Wrapped(data_key, wrapped.name.rsplit("/", 1)[-1], wrapped.ciphertext)

    async def _wrap(self, name: str, data_key: bytes, sa_id: str) -> Any:
        aad = sa_id.encode("utf-8")
        request = {
            "name": name,
            "plaintext": data_key,
            "additional_authenticated_data": aad,
            "plaintext_crc32c": _crc(data_key),
            "additional_authenticated_data_crc32c": _crc(aad),
        }
        response = await self._calls(
            "Encrypt", lambda: self._client.encrypt(request=request, **self._options)
        )
        if not (
            response.verified_plaintext_crc32c
            and response.verified_additional_authenticated_data_crc32c
            and response.ciphertext_crc32c == _crc(response.ciphertext)
        ):
            raise KeyManagerUnavailable("gcp Encrypt: CRC32C integrity check failed")
        return response

    async def _create_key(self, name: str, sa_id: str) -> None:
        namespace, service_account = owner(sa_id)
        key: dict[str, Any] = {
            "purpose": kms.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT,
            "version_template": {
                "protection_level": self._protection,
                "algorithm": SYMMETRIC,
            },
            # Label values allow lowercase letters, digits, '-' and '_' only.
            "labels": {
                "managed-by": "kamus",
                "kamus-namespace": namespace,
                "kamus-service-account": service_account.replace(".", "_")[:63],
            },
        }
        if self._rotation is not None:
            key["rotation_period"] = self._rotation
            key["next_rotation_time"] = datetime.now(UTC) + self._rotation
        request = {
            "parent": self._key_ring,
            "crypto_key_id": name.rsplit("/", 1)[-1],
            "crypto_key": key,
        }

        def create() -> Any:
            return self._client.create_crypto_key(request=request, **self._options)

        try:
            try:
                await self._calls("CreateCryptoKey", create)
            except KmsError as missing_ring:
                if missing_ring.failure is not Failure.NOT_FOUND:
                    raise
                await self._create_key_ring()
                await self._calls("CreateCryptoKey", create)
        except KmsError as exists:
            if exists.failure is not Failure.CONFLICT:
                raise
            return  # another request or replica created it: the same key, by name
        self._calls.key_created()

    async def _create_key_ring(self) -> None:
        request = {"parent": self._location, "key_ring_id": self._key_ring_id}
        try:
            await self._calls(
                "CreateKeyRing",
                lambda: self._client.create_key_ring(request=request, **self._options),
            )
        except KmsError as exc:
            if exc.failure is not Failure.CONFLICT:
                raise

    async def check(self) -> None:
        # locations.get: in both roles/cloudkms.cryptoKeyEncrypter and ...Decrypter, so the
        # encryptor and the decryptor can each ask it with their own narrow grant.
        request = {"name": self._location}
        await answered(
            self._calls,
            "GetLocation",
            lambda: self._client.get_location(request=request, **self._options),
        )

    def check_wrapped(self, key_version: str, wrapped: bytes) -> None:
        if not 1 <= len(wrapped) <= MAX_CIPHERTEXT:
            # Cloud KMS would refuse it; not worth sending a forged value's megabytes.
            raise MalformedCiphertext(
                "the wrapped value is not a Cloud KMS ciphertext (wrong size)",
                f"its Cloud KMS ciphertext is empty or over the {MAX_CIPHERTEXT} bytes Cloud KMS "
                "allows",
            )

    async def unwrap_data_key(self, key_version: str, wrapped: bytes, sa_id: str) -> bytes:
        return await self._unwrap(wrapped, sa_id, sa_id.encode("utf-8"))

    async def current_key_version(self, sa_id: str) -> str:
        request = {"name": self.key_name(sa_id)}
        key = await self._calls(
            "GetCryptoKey", lambda: self._client.get_crypto_key(request=request, **self._options)
        )
        version: str = key.primary.name.rsplit("/", 1)[-1]
        return version

    async def wrap_again(
        self, key_version: str, wrapped: bytes, data_key: bytes, sa_id: str
    ) -> Wrapped:
        response = await self._wrap(self.key_name(sa_id), data_key, sa_id)
        return Wrapped(data_key, response.name.rsplit("/", 1)[-1], response.ciphertext)

    def is_key_name(self, name: str) -> bool:
        return KEY_NAME.fullmatch(name) is not None

    async def wrap_with_key(self, key_name: str, secret: bytes, sa_id: str) -> bytes:
        """``Encrypt`` with the crypto key ``key_name`` (its primary version), the identity as
        additional authenticated data, CRC32C-checked both ways."""
        self._check_named(key_name)
        ciphertext: bytes = (await self._wrap(key_name, secret, sa_id)).ciphertext
        return ciphertext

    async def unwrap_with_key(self, key_name: str, wrapped: bytes, sa_id: str) -> bytes:
        self._check_named(key_name)
        return await self._unwrap(wrapped, sa_id, sa_id.encode("utf-8"), key_name)

    def _check_named(self, key_name: str) -> None:
        if not self.is_key_name(key_name):
            raise KeyManagerUnavailable(
                f"{key_name[:200]!r} is not a full Cloud KMS crypto key name "
                f"({self.key_name_example})"
            )

    async def open_legacy(self, ciphertext: str, sa_id: str, fmt: CiphertextFormat) -> bytes:
        if fmt is not CiphertextFormat.LEGACY_RAW:
            raise self.unreadable(ciphertext)
        # Kamus encrypted the UTF-8 value itself under the key, without AAD.
        return await self._unwrap(b64_decode(ciphertext), sa_id, b"")

    async def _unwrap(self, blob: bytes, sa_id: str, aad: bytes, name: str = "") -> bytes:
        """Decrypt with the crypto key ``name``, by default the service account's own."""
        self.check_wrapped("", blob)
        request = {
            "name": name or self.key_name(sa_id),
            "ciphertext": blob,
            "additional_authenticated_data": aad,
            "ciphertext_crc32c": _crc(blob),
            "additional_authenticated_data_crc32c": _crc(aad),
        }
        try:
            response = await self._calls(
                "Decrypt", lambda: self._client.decrypt(request=request, **self._options)
            )
        except KmsError as exc:
            raise refused(exc) from None
        if response.plaintext_crc32c != _crc(response.plaintext):
            raise KeyManagerUnavailable("gcp Decrypt: CRC32C integrity check failed")
        plaintext: bytes = response.plaintext
        return plaintext
