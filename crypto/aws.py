"""AWS KMS (``KeyManagement__Provider=AwsKms``): one customer master key per service account.

The key is found by Kamus's alias ``alias/[<prefix>-]kamus/<key id>``, so keys Kamus created are
used as they are. New values are ``m1`` (or ``e1``) envelopes: ``GenerateDataKey`` returns the data
key and its wrapped form in one call, with the identity as the encryption context, which KMS
enforces on ``Decrypt`` and CloudTrail records.
"""

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from crypto.cloud import CloudKeyManager, Wrapped, WrappedSeed
from crypto.datakeys import OFF, CacheLimits
from crypto.encoding import b64_decode
from crypto.errors import DecryptionError, KeyManagerUnavailable, MalformedCiphertext
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

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient
else:
    KMSClient = Any

log = logging.getLogger(__name__)

KMS = "aws"
CONTEXT_KEY = "kamus:service-account"
# Errors that mean "this ciphertext is not for this key or identity", never an outage.
MAX_CIPHERTEXT_BLOB = 6144  # the KMS API's limit on Decrypt's CiphertextBlob
_REJECTED = {"InvalidCiphertextException", "IncorrectKeyException", "InvalidKeyUsageException"}
# Over a request rate or quota: retried with backoff (crypto/kms.py), never an outage. KMS itself
# answers ThrottlingException (HTTP 400); the others are AWS's generic names for the same.
_THROTTLED = {"ThrottlingException", "LimitExceededException", "RequestLimitExceeded"}
# The key is disabled, pending deletion, or (for an external key store) unusable.
_DISABLED = {"DisabledException", "KMSInvalidStateException", "KeyUnavailableException"}
# A KMS key named explicitly as an m1 recipient: its key ARN (a key id, or a multi-Region key's
# mrk- id) or an alias ARN, in the aws, aws-us-gov and aws-cn partitions. Never a bare key id:
# that is what the stanza of a service account's own key names.
KEY_ARN = re.compile(
    r"arn:aws(?:-us-gov|-cn)?:kms:(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}):[0-9]{12}:"
    r"(?:key/(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})"
    r"|alias/[A-Za-z0-9/_-]{1,250})"
)


def leave_throttling_to_kamus(response: Any = None, **_: Any) -> bool | None:
    """botocore's ``needs-retry`` hook: False (no retry) for a throttled answer, so that the
    backoff in crypto/kms.py sees, counts and paces each one within the call's deadline; None
    leaves every other answer to botocore's own retry policy (5xx, connection errors)."""
    if response is None:
        return None
    error = response[1].get("Error", {}) if isinstance(response[1], dict) else {}
    status = getattr(response[0], "status_code", None)
    if error.get("Code") in _THROTTLED or status == 429:
        return False
    return None


class IncorrectKey(DecryptionError):
    """KMS says the blob may be under another key than the one the alias names now."""


def classify_aws_error(exc: Exception, operation: str) -> KmsError | None:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NotFoundException":
            return KmsError(Failure.NOT_FOUND, code)
        if code == "AlreadyExistsException":
            return KmsError(Failure.CONFLICT, code)
        if code in _DISABLED:
            return KmsError(Failure.DISABLED, code)
        if code in _REJECTED or (operation == "Decrypt" and code == "AccessDeniedException"):
            # On Decrypt, AccessDenied is also what a blob of a key we may not use gets (a
            # foreign or forged value): the caller's problem, answered 400. An IAM mistake on our
            # side shows up in the audit reason, and on encrypt as a 503.
            return KmsError(Failure.REJECTED, code)
        metadata = exc.response.get("ResponseMetadata", {})
        status = metadata.get("HTTPStatusCode")
        reason = f"{code or 'error'} (HTTP {status})"
        if code in _THROTTLED or status == 429:
            retry_after = retry_after_seconds(metadata.get("HTTPHeaders", {}).get("retry-after"))
            return KmsError(Failure.THROTTLED, reason, retry_after)
        return KmsError(Failure.UNAVAILABLE, reason)
    if isinstance(exc, BotoCoreError):
        return KmsError(Failure.UNAVAILABLE, type(exc).__name__)
    return None


class AwsKmsKeyManager(CloudKeyManager):
    kind = KMS
    display_name = "AWS KMS"
    legacy_reads = "legacy Kamus env$ values"
    key_name_example = (
        "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab, or "
        "arn:aws:kms:eu-west-1:111122223333:alias/<name>"
    )

    def __init__(
        self,
        client: KMSClient,
        calls: BlockingCalls,
        *,
        cmk_prefix: str = "",
        automatic_rotation: bool = False,
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
        self._prefix = f"{cmk_prefix}-" if cmk_prefix else ""
        self._rotation = automatic_rotation
        self._create_keys = create_keys
        self._locks = KeyLocks()

    def alias(self, sa_id: str) -> str:
        return f"alias/{self._prefix}kamus/{kamus_key_id(sa_id)}"

    async def new_data_key(self, sa_id: str) -> Wrapped:
        alias = self.alias(sa_id)
        response = await found(lambda: self._generate_data_key(alias, sa_id))
        if response is None:
            await ensure_key(
                self._locks,
                alias,
                allowed=self._create_keys,
                look=lambda: self._calls(
                    "DescribeKey", lambda: self._client.describe_key(KeyId=alias)
                ),
                create=lambda: self._create_key(alias, sa_id),
            )
            response = await self._generate_data_key(alias, sa_id)
        return Wrapped(
            response["Plaintext"], response["KeyId"].rsplit("/", 1)[-1], response["CiphertextBlob"]
        )

    async def _generate_data_key(self, alias: str, sa_id: str) -> Any:
        return await self._calls(
            "GenerateDataKey",
            lambda: self._client.generate_data_key(
                KeyId=alias, KeySpec="AES_256", EncryptionContext={CONTEXT_KEY: sa_id}
            ),
        )

    async def _create_key(self, alias: str, sa_id: str) -> None:
        """The CMK and its alias; when replicas race, the alias goes to one key only."""
        namespace, name = owner(sa_id)
        created = await self._calls(
            "CreateKey",
            lambda: self._client.create_key(
                Description=f"Kamus key for service account {sa_id}",
                KeyUsage="ENCRYPT_DECRYPT",
                KeySpec="SYMMETRIC_DEFAULT",
                Tags=[
                    {"TagKey": "kamus:namespace", "TagValue": namespace},
                    {"TagKey": "kamus:service-account", "TagValue": name},
                ],
            ),
        )
        key_id = created["KeyMetadata"]["KeyId"]
        try:
            if self._rotation:
                await self._calls(
                    "EnableKeyRotation", lambda: self._client.enable_key_rotation(KeyId=key_id)
                )
            await self._calls(
                "CreateAlias",
                lambda: self._client.create_alias(AliasName=alias, TargetKeyId=key_id),
            )
        except Exception as exc:
            # Another replica's key won the alias (a conflict), or we failed half-way (an
            # error, a timeout): either way our key must not linger unused.
            await self._discard(key_id)
            if isinstance(exc, KmsError) and exc.failure is Failure.CONFLICT:
                return
            raise
        self._calls.key_created()

    async def _discard(self, key_id: str) -> None:
        try:
            await self._calls(
                "ScheduleKeyDeletion",
                lambda: self._client.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7),
            )
            log.info("scheduled the unused key %s for deletion", key_id)
        except Exception:
            log.warning("could not schedule the unused key %s for deletion", key_id, exc_info=True)

    async def check(self) -> None:
        # A blob that is no ciphertext: KMS answers InvalidCiphertextException without looking
        # up a key, so no permission beyond kms:Decrypt is involved.
        await answered(
            self._calls, "Decrypt", lambda: self._client.decrypt(CiphertextBlob=PROBE_NAME.encode())
        )

    def check_wrapped(self, key_version: str, wrapped: bytes) -> None:
        if not 1 <= len(wrapped) <= MAX_CIPHERTEXT_BLOB:
            # KMS would refuse it with a ValidationException, which reads as an outage.
            raise MalformedCiphertext(
                "the wrapped key is not a KMS ciphertext blob (wrong size)",
                f"its AWS KMS ciphertext blob is empty or over the {MAX_CIPHERTEXT_BLOB} bytes "
                "AWS KMS allows",
            )

    async def unwrap_data_key(self, key_version: str, wrapped: bytes, sa_id: str) -> bytes:
        context = {CONTEXT_KEY: sa_id}
        try:
            return await self._unwrap(wrapped, sa_id, context)
        except IncorrectKey:
            # The alias may have moved to a new key since (a manual rotation): the value's own
            # key opens it, decrypt-only, until it is rewrapped. The encryption context still
            # binds it to the identity. IAM must allow that key by ARN (docs/rotation.md).
            return await self._unwrap(wrapped, sa_id, context, key_version)

    async def current_key_version(self, sa_id: str) -> str:
        alias = self.alias(sa_id)
        response = await self._calls("DescribeKey", lambda: self._client.describe_key(KeyId=alias))
        key_id: str = response["KeyMetadata"]["KeyId"]
        return key_id

    async def wrap_again(
        self, key_version: str, wrapped: bytes, data_key: bytes, sa_id: str
    ) -> Wrapped:
        """ReEncrypt: KMS unwraps and wraps again inside itself, so the data key is never sent
        back to it (we hold it only to check the value and MAC its new header); the identity's
        context must hold on both sides."""
        context = {CONTEXT_KEY: sa_id}
        response = await self._calls(
            "ReEncrypt",
            lambda: self._client.re_encrypt(
                CiphertextBlob=wrapped,
                SourceKeyId=key_version,
                SourceEncryptionContext=context,
                DestinationKeyId=self.alias(sa_id),
                DestinationEncryptionContext=context,
            ),
        )
        return Wrapped(data_key, response["KeyId"].rsplit("/", 1)[-1], response["CiphertextBlob"])

    def is_key_name(self, name: str) -> bool:
        return KEY_ARN.fullmatch(name) is not None

    async def wrap_with_key(self, key_name: str, secret: bytes, sa_id: str) -> bytes:
        """``Encrypt`` under the key ``key_name`` names, with the identity's encryption context:
        KMS then requires the same context on ``Decrypt``, as for the service account's key."""
        self._check_named(key_name)
        response = await self._calls(
            "Encrypt",
            lambda: self._client.encrypt(
                KeyId=key_name, Plaintext=secret, EncryptionContext={CONTEXT_KEY: sa_id}
            ),
        )
        blob: bytes = response["CiphertextBlob"]
        return blob

    async def unwrap_with_key(self, key_name: str, wrapped: bytes, sa_id: str) -> bytes:
        """``Decrypt`` pinned to ``key_name`` (KMS refuses a blob of any other key), with the
        identity's encryption context."""
        self._check_named(key_name)
        return await self._unwrap(wrapped, sa_id, {CONTEXT_KEY: sa_id}, key_name)

    def _check_named(self, key_name: str) -> None:
        """A KMS key is used in its own Region: one named in another than this client's would
        only come back as "not found" (a value that does not open), so say what is wrong."""
        match = KEY_ARN.fullmatch(key_name)
        if match is None:
            raise KeyManagerUnavailable(
                f"{key_name[:200]!r} is not a full AWS KMS key name ({self.key_name_example})"
            )
        region = self._client.meta.region_name
        if region and match["region"] != region:
            raise KeyManagerUnavailable(
                f"the KMS key {key_name} is in {match['region']}, and this Kamus's AWS KMS "
                f"client in {region}: name a key (or multi-Region replica) in {region}"
            )

    async def open_legacy(self, ciphertext: str, sa_id: str, fmt: CiphertextFormat) -> bytes:
        if fmt is not CiphertextFormat.LEGACY_ENVELOPE:
            raise self.unreadable(ciphertext)
        wrapped, iv, body = parse_legacy_envelope(ciphertext)
        # Kamus wrapped with GenerateDataKey and no encryption context.
        return cbc_decrypt(await self._unwrap(b64_decode(wrapped), sa_id, {}), iv, body)

    async def _unwrap(
        self, blob: bytes, sa_id: str, context: dict[str, str], key_id: str = ""
    ) -> bytes:
        self.check_wrapped("", blob)
        # The alias pins the service account's own key, as Kamus did (and IAM policies may
        # require it: kms:RequestAlias).
        key = key_id or self.alias(sa_id)
        try:
            response = await self._calls(
                "Decrypt",
                lambda: self._client.decrypt(
                    CiphertextBlob=blob, KeyId=key, EncryptionContext=context
                ),
            )
        except KmsError as exc:
            # AWS's answer for a blob of another key than KeyId names. Not AccessDenied: a
            # forged or foreign value would then cost a second call.
            if exc.reason.endswith("IncorrectKeyException") and not key_id:
                raise IncorrectKey(exc.reason) from None
            raise refused(exc) from None
        data_key: bytes = response["Plaintext"]
        return data_key

    def close(self) -> None:
        self._calls.close()
