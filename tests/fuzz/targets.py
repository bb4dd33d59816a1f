"""The ciphertext parsers under fuzz, the contract each keeps, and seed inputs of every format.

Shared by ``tests/test_fuzz.py`` (hypothesis) and ``tests/fuzz/atheris_parsers.py`` (atheris). A
target's ``check(text)`` runs one parser, or one provider's whole ``decrypt``, on any string and
returns a short label of what happened. It raises (and so fails the fuzzer) when the contract
breaks:

* nothing but :class:`crypto.DecryptionError` escapes, always with the generic message and a
  reason for the audit log;
* an authenticated value (a1, e1) opens only if it is exactly one of the values made here or
  committed under ``tests/vectors``, for its own identity, to its own plaintext: a mutation never
  opens, nor does another spelling of the same bytes;
* Kamus's unauthenticated values may open (CBC is malleable), but only to UTF-8 where Kamus's
  reader requires it, only with legacy reading on, and only in a provider that reads that format;
* a pure parser that accepts a string gives back parts that re-encode to exactly that string.

The providers run synchronously, so that the same checks serve hypothesis and atheris at full
speed: the AES provider never awaits, and the cloud providers are built with in-process stand-ins
for their SDK clients, called through :class:`InlineCalls`. The stand-ins answer as each KMS
does: they unwrap the blobs they made, for the key and binding (encryption context, AAD, key
version) they were made with, and reject anything else with the KMS's own error. A blob that
starts with ``echo:`` unwraps to the bytes that follow, so a fuzzer also controls what "the KMS"
hands back (data keys of any size, foreign identity digests, non-base64 key text).
"""

import base64
import hashlib
import json
import re
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import botocore.session
import google_crc32c
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.keys.crypto import (
    CryptographyClient,
    EncryptionAlgorithm,
    KeyWrapAlgorithm,
)
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from google.api_core import exceptions as gexc

from crypto import AESKeyManager, CiphertextFormat, DecryptionError, classify, envelope, legacy
from crypto.aws import CONTEXT_KEY, AwsKmsKeyManager, classify_aws_error
from crypto.azure import AzureKeyVaultKeyManager, classify_azure_error
from crypto.encoding import b64_decode, b64url_decode, b64url_encode
from crypto.errors import KeyManagerUnavailable
from crypto.formats import PREFIX
from crypto.gcp import GoogleKmsKeyManager, classify_gcp_error
from crypto.keyid import kamus_key_id
from crypto.kms import BlockingCalls, Classifier, Failure, KmsError

T = TypeVar("T")

IDENTITY = "fuzz-ns:fuzz-sa"
GENERIC_MESSAGE = "the ciphertext could not be decrypted for this service account"
VECTORS = Path(__file__).resolve().parent.parent / "vectors"
ECHO = b"echo:"
KMS_NAMES = ("aws", "gcp", "azure")
KEY_VERSION = re.compile(r"[A-Za-z0-9-]{0,64}")

A1 = CiphertextFormat.AES_GCM_V1
E1 = CiphertextFormat.ENVELOPE_V1
LEGACY_CBC = CiphertextFormat.LEGACY_AES_CBC
LEGACY_ENVELOPE = CiphertextFormat.LEGACY_ENVELOPE
LEGACY_RAW = CiphertextFormat.LEGACY_RAW
UNKNOWN = CiphertextFormat.UNKNOWN


def _digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


KEY_A = _digest("fuzz master key A")
KEY_B = _digest("fuzz master key B")[:24]
KEY_C = _digest("fuzz master key C")[:16]
KAMUS_TEST_KEY = base64.b64decode("tWG4dk8ARsETnFL3jCf1xtMVe05imlx9vimER7iky2s=")


def drive(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (no real I/O) to its end, without an event loop."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise AssertionError("the coroutine suspended: it awaited real I/O")


# --- the formats, written from docs/ciphertext-format.md (deterministic: nonces from labels) -----


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _hkdf(master: bytes, length: int, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), length, salt=None, info=info).derive(master)


def seal_a1(master: bytes, sa_id: str, plaintext: bytes) -> str:
    header = f"kamus$a1${b64url_encode(_hkdf(master, 6, b'kamus/key-id'))}$"
    nonce = _digest(f"a1 {sa_id} {plaintext!r}")[:12]
    value_key = _hkdf(master, 32, b"kamus/a1/aes-256-gcm\x00" + sa_id.encode())
    sealed = AESGCM(value_key).encrypt(nonce, plaintext, (header + sa_id).encode())
    return header + b64url_encode(nonce + sealed)


def seal_e1(
    kms: str, key_version: str, wrapped: bytes, data_key: bytes, sa_id: str, plaintext: bytes
) -> str:
    header = f"kamus$e1${kms}${key_version}$"
    nonce = _digest(f"e1 {kms} {wrapped!r} {plaintext!r}")[:12]
    sealed = AESGCM(data_key).encrypt(nonce, plaintext, (header + sa_id).encode())
    return f"{header}{b64url_encode(wrapped)}${b64url_encode(nonce + sealed)}"


def cbc(key: bytes, plaintext: bytes) -> str:
    """Kamus's ``b64(iv):b64(AES-CBC-PKCS7)``."""
    iv = _digest(f"iv {key!r} {plaintext!r}")[:16]
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = encryptor.update(padder.update(plaintext) + padder.finalize()) + encryptor.finalize()
    return f"{b64(iv)}:{b64(body)}"


def derived(master: bytes, sa_id: str) -> bytes:
    """Kamus's UseKeyDeriviation: HKDF-SHA256 expand-only."""
    return HKDFExpand(hashes.SHA256(), 32, sa_id.encode()).derive(master)


# --- the committed vectors ----------------------------------------------------------------------


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


A1_VECTORS = _load("aes-a1.json")
LEGACY_VECTORS = _load("kamus-legacy-aes.json")
E1_VECTORS = _load("envelope-e1.json")


def _unique(items: Iterable[T]) -> list[T]:
    return list(dict.fromkeys(items))


# --- the seeds, and the only authenticated values that may ever open ------------------------------

VALID: dict[tuple[str, str], bytes] = {}
"""(a1 or e1 value, identity) -> its plaintext: the only authenticated values that may open."""
SEEDS: list[str] = []


def _seed(text: str, sa_id: str | None = None, plaintext: bytes | None = None) -> str:
    if sa_id is not None and plaintext is not None:
        VALID[(text, sa_id)] = plaintext
    SEEDS.append(text)
    return text


PLAINTEXTS = [b"", b"hello", "pässwörd 🔐 סוד".encode(), bytes(range(40))]

for _plaintext in PLAINTEXTS:
    for _master in (KEY_A, KEY_B, KEY_C):
        _seed(seal_a1(_master, IDENTITY, _plaintext), IDENTITY, _plaintext)
    _text = _plaintext.decode("utf-8", "replace").encode()  # Kamus encrypted strings
    _seed(cbc(KEY_A, _text))
    _seed(cbc(derived(KEY_B, IDENTITY), _text))

for _v in A1_VECTORS["vectors"]:
    _seed(_v["ciphertext"], _v["sa_id"], base64.b64decode(_v["plaintext_b64"]))
for _v in E1_VECTORS["vectors"]:
    _seed(_v["ciphertext"], _v["sa_id"], base64.b64decode(_v["plaintext_b64"]))
for _v in [*LEGACY_VECTORS["vectors"], *A1_VECTORS["negative"], *E1_VECTORS["negative"]]:
    _seed(_v["ciphertext"])
for _v in LEGACY_VECTORS["negative"]:
    _seed(_v["ciphertext"])

AES_KEYS = _unique(
    [KEY_A, KEY_B, KEY_C, KAMUS_TEST_KEY]
    + [
        base64.b64decode(k)
        for v in [*A1_VECTORS["vectors"], *LEGACY_VECTORS["vectors"]]
        for k in [v["key"], *v["previous_keys"]]
    ]
)
AES_IDENTITIES = _unique(
    [IDENTITY] + [v["sa_id"] for v in [*A1_VECTORS["vectors"], *LEGACY_VECTORS["vectors"]]]
)

# Per KMS: the data keys of our own e1 values, honest and echoed.
DATA_KEYS = {kms: _digest(f"fuzz {kms} data key") for kms in KMS_NAMES}
ECHO_DATA_KEYS = {kms: _digest(f"fuzz {kms} echoed data key") for kms in KMS_NAMES}
WRAPPED = {kms: f"fuzz {kms} wrapped data key".encode() for kms in KMS_NAMES}
LEGACY_DATA_KEY = _digest("fuzz legacy data key")
AZURE_VERSION = "0123456789abcdef0123456789abcdef"
AZURE_OLD_VERSION = "fedcba9876543210fedcba9876543210"
KEY_VERSIONS = {"aws": "1234abcd-12ab-34cd-56ef-1234567890ab", "gcp": "3", "azure": AZURE_VERSION}


def _identity_digest(sa_id: str) -> bytes:
    return hashlib.sha256(sa_id.encode()).digest()


def _wrapped_for(kms: str, data_key: bytes, sa_id: str) -> bytes:
    """What "the KMS" must unwrap to: Azure's blob also carries the identity's digest."""
    return data_key + _identity_digest(sa_id) if kms == "azure" else data_key


for _kms in KMS_NAMES:
    for _plaintext in PLAINTEXTS:
        _seed(
            seal_e1(_kms, KEY_VERSIONS[_kms], WRAPPED[_kms], DATA_KEYS[_kms], IDENTITY, _plaintext),
            IDENTITY,
            _plaintext,
        )
    _echoed = ECHO + _wrapped_for(_kms, ECHO_DATA_KEYS[_kms], IDENTITY)
    _seed(
        seal_e1(_kms, KEY_VERSIONS[_kms], _echoed, ECHO_DATA_KEYS[_kms], IDENTITY, b"echo"),
        IDENTITY,
        b"echo",
    )

_LEGACY_BODY = cbc(LEGACY_DATA_KEY, "from kamus ✓".encode())
AWS_LEGACY_BLOB = b"fuzz aws legacy blob"
GCP_RAW_BLOB = b"fuzz gcp raw blob"
AZURE_RAW_BLOB = b"fuzz azure raw blob"
AZURE_ENVELOPE_BLOB = b"fuzz azure envelope blob"
_seed(f"env${b64(AWS_LEGACY_BLOB)}${_LEGACY_BODY}")
_seed(f"env${b64(ECHO + LEGACY_DATA_KEY)}${_LEGACY_BODY}")
_seed(f"env${b64(AZURE_ENVELOPE_BLOB)}${_LEGACY_BODY}")
_seed(f"env${b64(ECHO + b64(LEGACY_DATA_KEY).encode())}${_LEGACY_BODY}")
_seed(b64(GCP_RAW_BLOB))
_seed(b64(AZURE_RAW_BLOB))
_seed(b64(ECHO + "from kamus ✓".encode()))
_seed("")

SEEDS[:] = _unique(SEEDS)

# e1 data keys the envelope target tries: ours and the vectors', plus keys of a wrong size.
E1_OPENERS: dict[str, list[tuple[bytes, str]]] = {
    kms: [
        (DATA_KEYS[kms], IDENTITY),
        (ECHO_DATA_KEYS[kms], IDENTITY),
        (bytes(16), IDENTITY),
        (bytes(33), IDENTITY),
        *[
            (base64.b64decode(v["data_key"]), v["sa_id"])
            for v in E1_VECTORS["vectors"]
            if v["kms"] == kms
        ],
    ]
    for kms in KMS_NAMES
}

# --- stand-ins for the KMSs ---------------------------------------------------------------------


class InlineCalls(BlockingCalls):
    """:class:`BlockingCalls` without the worker thread and the deadline.

    Each call runs in place and its errors are sorted exactly as ``BlockingCalls`` sorts them, so
    a provider's ``decrypt`` runs to its end without an event loop.
    """

    def __init__(self, provider: str, classify: Classifier) -> None:
        super().__init__(provider, timeout_seconds=10.0, max_concurrency=1, classify=classify)

    async def __call__(self, operation: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except Exception as exc:
            error = self.classify(exc, operation)
            if error is None:
                raise
            reason = f"{self.provider} {operation}: {error.reason}"
            if error.failure is Failure.UNAVAILABLE:
                raise KeyManagerUnavailable(reason) from None
            raise KmsError(error.failure, reason) from None


class StandInKms:
    """What a KMS can unwrap: (key, binding, blob) -> plaintext; ``echo:`` blobs echo."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.answers: dict[tuple[str, bytes, bytes], bytes] = {}
        self.calls = 0

    def add(self, key: str, binding: bytes, blob: bytes, plaintext: bytes) -> None:
        self.keys.add(key)
        self.answers[(key, binding, blob)] = plaintext

    def answer(
        self,
        key: str,
        binding: bytes,
        blob: bytes,
        *,
        not_found: Callable[[], Exception],
        rejected: Callable[[], Exception],
    ) -> bytes:
        self.calls += 1
        if key not in self.keys:
            raise not_found()
        found = self.answers.get((key, binding, blob))
        if found is not None:
            return found
        if blob.startswith(ECHO):
            return blob[len(ECHO) :]
        raise rejected()


_KMS_MODEL = botocore.session.get_session().get_service_model("kms")
_DECRYPT_INPUT = _KMS_MODEL.operation_model("Decrypt").input_shape
assert _DECRYPT_INPUT is not None
_BLOB = _DECRYPT_INPUT.members["CiphertextBlob"].metadata
AWS_BLOB_MIN, AWS_BLOB_MAX = int(_BLOB["min"]), int(_BLOB["max"])  # 1 and 6144
GCP_CIPHERTEXT_MAX = 65536


def aws_error(code: str, message: str) -> ClientError:
    body = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": 400},
    }
    return ClientError(cast(Any, body), "Decrypt")


class StandInAwsClient:
    """boto3's KMS client, as far as ``AwsKmsKeyManager.decrypt`` uses it."""

    def __init__(self, kms: StandInKms) -> None:
        self.kms = kms

    def decrypt(
        self,
        *,
        CiphertextBlob: bytes,
        KeyId: str,
        EncryptionContext: dict[str, str],
    ) -> dict[str, Any]:
        if not AWS_BLOB_MIN <= len(CiphertextBlob) <= AWS_BLOB_MAX:
            # AWS KMS checks its API's length constraints (botocore only checks the minimum).
            raise aws_error(
                "ValidationException",
                "1 validation error detected: Value at 'ciphertextBlob' failed to satisfy "
                f"constraint: Member must have length less than or equal to {AWS_BLOB_MAX}",
            )
        plaintext = self.kms.answer(
            KeyId,
            json.dumps(EncryptionContext, sort_keys=True).encode(),
            CiphertextBlob,
            not_found=lambda: aws_error("NotFoundException", f"Alias {KeyId} is not found."),
            rejected=lambda: aws_error("InvalidCiphertextException", ""),
        )
        return {"Plaintext": plaintext, "KeyId": "arn:aws:kms:us-east-1:123456789012:key/fuzz"}


def google_error(error: type[gexc.GoogleAPICallError], message: str) -> Exception:
    """google-api-core's exceptions, whose constructors are untyped."""
    made: Exception = cast(Any, error)(message)
    return made


def _crc(data: bytes) -> int:
    return int(google_crc32c.value(data))


class StandInGcpClient:
    """google-cloud-kms's client, as far as ``GoogleKmsKeyManager.decrypt`` uses it."""

    def __init__(self, kms: StandInKms) -> None:
        self.kms = kms

    def key_ring_path(self, project: str, location: str, key_ring: str) -> str:
        return f"projects/{project}/locations/{location}/keyRings/{key_ring}"

    def decrypt(self, request: dict[str, Any], **options: Any) -> SimpleNamespace:
        blob: bytes = request["ciphertext"]
        aad: bytes = request["additional_authenticated_data"]
        if request["ciphertext_crc32c"] != _crc(blob) or (
            request["additional_authenticated_data_crc32c"] != _crc(aad)
        ):
            raise google_error(
                gexc.BadRequest, "The checksum in field ciphertext_crc32c did not match."
            )
        if len(blob) > GCP_CIPHERTEXT_MAX:
            raise google_error(gexc.BadRequest, "The ciphertext is too large.")
        plaintext = self.kms.answer(
            request["name"],
            aad,
            blob,
            not_found=lambda: google_error(
                gexc.NotFound, f"CryptoKey {request['name']} not found."
            ),
            rejected=lambda: google_error(
                gexc.BadRequest, "Decryption failed: the ciphertext is invalid."
            ),
        )
        return SimpleNamespace(plaintext=plaintext, plaintext_crc32c=_crc(plaintext))


def azure_400() -> HttpResponseError:
    error = HttpResponseError(message="BadParameter: error occurred while decrypting the value")
    error.status_code = 400
    return error


class StandInKeyClient:
    """azure-keyvault-keys' KeyClient, as far as decrypting uses it: key name -> versions."""

    def __init__(self, kms: StandInKms) -> None:
        self.kms = kms
        self.versions: dict[str, list[str]] = {}  # the latest last

    def get_key(self, name: str, version: str | None = None) -> SimpleNamespace:
        self.kms.calls += 1
        versions = self.versions.get(name, [])
        if not versions or (version and version not in versions):
            raise ResourceNotFoundError(message=f"A key with (name/id) {name} was not found")
        return SimpleNamespace(
            name=name, properties=SimpleNamespace(version=version or versions[-1])
        )


class StandInCryptographyClient:
    def __init__(self, kms: StandInKms, name: str, version: str) -> None:
        self.kms, self.name, self.version = kms, name, version

    def _answer(self, operation: str, algorithm: object, expected: object, data: bytes) -> bytes:
        if algorithm != expected:
            raise azure_400()
        return self.kms.answer(
            self.name,
            f"{operation}/{self.version}".encode(),
            data,
            not_found=lambda: ResourceNotFoundError(message="KeyNotFound"),
            rejected=azure_400,
        )

    def unwrap_key(self, algorithm: KeyWrapAlgorithm, encrypted_key: bytes) -> SimpleNamespace:
        key = self._answer("UnwrapKey", algorithm, KeyWrapAlgorithm.rsa_oaep_256, encrypted_key)
        return SimpleNamespace(key=key)

    def decrypt(self, algorithm: EncryptionAlgorithm, ciphertext: bytes) -> SimpleNamespace:
        plaintext = self._answer("Decrypt", algorithm, EncryptionAlgorithm.rsa_oaep, ciphertext)
        return SimpleNamespace(plaintext=plaintext)


class StandInAzureKeyManager(AzureKeyVaultKeyManager):
    """The real provider; only the SDK's CryptographyClient is swapped for the stand-in."""

    def __init__(self, kms: StandInKms, keys: StandInKeyClient, *, allow_legacy: bool) -> None:
        super().__init__(
            cast(Any, keys),
            cast(Any, None),
            InlineCalls("azure", classify_azure_error),
            allow_legacy=allow_legacy,
        )
        self._stand_in = kms
        self._stand_in_keys = keys

    async def _version_client(self, name: str, version: str) -> CryptographyClient:
        # As the real one: fetch the version (a missing one is "not found"), then a client for it.
        await self._calls("GetKey", lambda: self._stand_in_keys.get_key(name, version))
        return cast(CryptographyClient, StandInCryptographyClient(self._stand_in, name, version))


E1_IDENTITIES = {
    kms: _unique([IDENTITY] + [v["sa_id"] for v in E1_VECTORS["vectors"] if v["kms"] == kms])
    for kms in KMS_NAMES
}


def _e1_vectors(kms: str) -> list[dict[str, Any]]:
    return [v for v in E1_VECTORS["vectors"] if v["kms"] == kms]


def aws_manager(
    *, allow_legacy: bool = True, calls: BlockingCalls | None = None
) -> tuple[AwsKmsKeyManager, StandInKms]:
    kms = StandInKms()
    manager = AwsKmsKeyManager(
        cast(Any, StandInAwsClient(kms)),
        calls or InlineCalls("aws", classify_aws_error),
        allow_legacy=allow_legacy,
    )

    def context(sa_id: str | None) -> bytes:
        return json.dumps({CONTEXT_KEY: sa_id} if sa_id else {}, sort_keys=True).encode()

    for sa_id in E1_IDENTITIES["aws"]:
        kms.keys.add(manager.alias(sa_id))
    kms.add(manager.alias(IDENTITY), context(IDENTITY), WRAPPED["aws"], DATA_KEYS["aws"])
    kms.add(manager.alias(IDENTITY), context(None), AWS_LEGACY_BLOB, LEGACY_DATA_KEY)
    for v in _e1_vectors("aws"):
        wrapped, data_key = base64.b64decode(v["wrapped_key_b64"]), base64.b64decode(v["data_key"])
        kms.add(manager.alias(v["sa_id"]), context(v["sa_id"]), wrapped, data_key)
    return manager, kms


def gcp_manager(*, allow_legacy: bool = True) -> tuple[GoogleKmsKeyManager, StandInKms]:
    kms = StandInKms()
    manager = GoogleKmsKeyManager(
        cast(Any, StandInGcpClient(kms)),
        InlineCalls("gcp", classify_gcp_error),
        project="fuzz",
        location="global",
        key_ring="kamus",
        allow_legacy=allow_legacy,
    )
    for sa_id in E1_IDENTITIES["gcp"]:
        kms.keys.add(manager.key_name(sa_id))
    name = manager.key_name(IDENTITY)
    kms.add(name, IDENTITY.encode(), WRAPPED["gcp"], DATA_KEYS["gcp"])
    kms.add(name, b"", GCP_RAW_BLOB, "from kamus ✓".encode())
    for v in _e1_vectors("gcp"):
        wrapped, data_key = base64.b64decode(v["wrapped_key_b64"]), base64.b64decode(v["data_key"])
        kms.add(manager.key_name(v["sa_id"]), v["sa_id"].encode(), wrapped, data_key)
    return manager, kms


def azure_manager(*, allow_legacy: bool = True) -> tuple[AzureKeyVaultKeyManager, StandInKms]:
    kms = StandInKms()
    keys = StandInKeyClient(kms)
    manager = StandInAzureKeyManager(kms, keys, allow_legacy=allow_legacy)
    name = kamus_key_id(IDENTITY)
    keys.versions[name] = [AZURE_OLD_VERSION, AZURE_VERSION]
    unwrap, decrypt = f"UnwrapKey/{AZURE_VERSION}".encode(), f"Decrypt/{AZURE_VERSION}".encode()
    kms.add(name, unwrap, WRAPPED["azure"], _wrapped_for("azure", DATA_KEYS["azure"], IDENTITY))
    kms.add(name, decrypt, AZURE_RAW_BLOB, "from kamus ✓".encode())
    kms.add(name, decrypt, AZURE_ENVELOPE_BLOB, b64(LEGACY_DATA_KEY).encode())
    for v in _e1_vectors("azure"):
        vname = kamus_key_id(v["sa_id"])
        keys.versions.setdefault(vname, []).append(v["key_version"])
        wrapped, data_key = base64.b64decode(v["wrapped_key_b64"]), base64.b64decode(v["data_key"])
        binding = f"UnwrapKey/{v['key_version']}".encode()
        kms.add(vname, binding, wrapped, _wrapped_for("azure", data_key, v["sa_id"]))
    return manager, kms


# --- the targets --------------------------------------------------------------------------------

Check = Callable[[str], str]


@dataclass(frozen=True)
class Target:
    name: str
    check: Check
    kms: StandInKms | None = None  # the cloud providers' stand-in: counts the calls that reach it


def rejected_label(error: DecryptionError) -> str:
    if str(error) != GENERIC_MESSAGE:
        raise AssertionError(f"a DecryptionError with a specific message: {error}")
    if not error.reason:
        raise AssertionError("a DecryptionError without a reason for the audit log")
    # Reasons quote the odd field (the kms name); the label keeps the kind of failure only.
    return "rejected: " + re.sub(r"'.*'|\".*\"", "…", error.reason)[:80]


def check_classify(text: str) -> str:
    fmt = classify(text)
    if not isinstance(fmt, CiphertextFormat):
        raise AssertionError(f"classify returned {fmt!r}")
    if text.startswith(PREFIX):
        ok = fmt in (A1, E1, UNKNOWN)
    elif text:
        ok = fmt.is_legacy
    else:
        ok = fmt is UNKNOWN
    if not ok:
        raise AssertionError(f"classify({text[:40]!r}) is {fmt}")
    return f"classified: {fmt}"


def check_encoding(text: str) -> str:
    """Both strict decoders, on the whole string and on each of its fields."""
    accepted = 0
    for field in _unique([text, *re.split(r"[$:]", text)]):
        try:
            if b64url_encode(b64url_decode(field)) != field:
                raise AssertionError(f"b64url_decode accepted a non-canonical {field[:40]!r}")
            accepted += 1
        except DecryptionError as error:
            rejected_label(error)
        try:
            if b64(b64_decode(field)) != field:
                raise AssertionError(f"b64_decode accepted a non-canonical {field[:40]!r}")
            accepted += 1
        except DecryptionError as error:
            rejected_label(error)
    return f"decoded {min(accepted, 3)}{'+' if accepted > 3 else ''} fields"


def _drop_wrapped_key(text: str) -> str:
    fields = text.split("$")
    return "$".join(fields[:4] + fields[5:])


E1_BODIES = {
    (_drop_wrapped_key(text), sa_id): plaintext
    for (text, sa_id), plaintext in VALID.items()
    if text.startswith("kamus$e1$")
}


def _e1_without_wrapped_key(text: str, sa_id: str) -> bytes | None:
    return E1_BODIES.get((_drop_wrapped_key(text), sa_id))


def check_envelope(text: str) -> str:
    """``envelope.parse`` for each provider name, then ``open_sealed`` with every known key."""
    label = "rejected"
    for kms in KMS_NAMES:
        try:
            sealed = envelope.parse(text, kms)
        except DecryptionError as error:
            label = rejected_label(error) if label == "rejected" else label
            continue
        label = "parsed"
        rebuilt = (
            f"{sealed.header}{b64url_encode(sealed.wrapped_key)}${b64url_encode(sealed.sealed)}"
        )
        if rebuilt != text or sealed.kms != kms or not KEY_VERSION.fullmatch(sealed.key_version):
            raise AssertionError(f"envelope.parse accepted {text[:60]!r} as {sealed!r}")
        if not sealed.wrapped_key or len(sealed.sealed) < 28:
            raise AssertionError("envelope.parse accepted a value too short")
        for data_key, sa_id in E1_OPENERS[kms]:
            try:
                plaintext = envelope.open_sealed(sealed, data_key, sa_id)
            except DecryptionError as error:
                rejected_label(error)
                continue
            # The wrapped key is not associated data (the KMS authenticates it), so with the
            # data key in hand any wrapped key opens; everything else must be as it was made.
            if _e1_without_wrapped_key(text, sa_id) != plaintext:
                raise AssertionError(f"an e1 value that was never made opened: {text[:60]!r}")
            label = "opened"
    return label


LEGACY_TRIAL_KEYS = [KEY_A, KEY_B, KEY_C, LEGACY_DATA_KEY, bytes(20), b""]


def check_legacy(text: str) -> str:
    """``parse_iv_ciphertext``, ``parse_legacy_envelope`` and ``cbc_decrypt`` with known keys."""
    label = "rejected"
    parts: list[tuple[bytes, bytes]] = []
    try:
        iv, body = legacy.parse_iv_ciphertext(text)
        if f"{b64(iv)}:{b64(body)}" != text or len(iv) != 16 or not body or len(body) % 16:
            raise AssertionError(f"parse_iv_ciphertext accepted {text[:60]!r}")
        parts.append((iv, body))
        label = "parsed iv:ct"
    except DecryptionError as error:
        label = rejected_label(error)
    try:
        wrapped, iv, body = legacy.parse_legacy_envelope(text)
        if f"env${wrapped}${b64(iv)}:{b64(body)}" != text or not wrapped:
            raise AssertionError(f"parse_legacy_envelope accepted {text[:60]!r}")
        parts.append((iv, body))
        label = "parsed env$"
    except DecryptionError as error:
        rejected_label(error)
    for iv, body in parts:
        for key in LEGACY_TRIAL_KEYS:
            try:
                legacy.cbc_decrypt(key, iv, body).decode("utf-8")
                label = "opened"
            except DecryptionError as error:
                rejected_label(error)
    return label


def manager_check(
    manager: Any,
    identities: list[str],
    opens: frozenset[CiphertextFormat],
    *,
    empty_opens: bool = False,
) -> Check:
    """A provider's whole ``decrypt``, as each identity; what may open, see the module doc."""

    def check(text: str) -> str:
        fmt = classify(text)
        labels = []
        for sa_id in identities:
            try:
                plaintext = drive(manager.decrypt(text, sa_id))
            except DecryptionError as error:
                labels.append(rejected_label(error))
                continue
            if text == "" and empty_opens:
                ok = plaintext == b""  # the KMS providers answer it as Kamus did
            elif fmt not in opens:
                ok = False
            elif fmt in (A1, E1):
                ok = VALID.get((text, sa_id)) == plaintext
            elif fmt in (LEGACY_CBC, LEGACY_ENVELOPE):
                plaintext.decode("utf-8")  # Kamus's reader accepts UTF-8 only
                ok = True
            else:
                ok = fmt is LEGACY_RAW  # returned as the KMS gives it
            if not ok:
                raise AssertionError(f"{fmt} value opened as {sa_id!r}: {text[:80]!r}")
            labels.append("opened")
        return "opened" if "opened" in labels else labels[0]

    return check


def _aes(**options: bool) -> AESKeyManager:
    return AESKeyManager(AES_KEYS[0], AES_KEYS[1:], **options)


def _cloud(
    name: str,
    built: tuple[Any, StandInKms],
    opens: frozenset[CiphertextFormat],
    *,
    legacy_on: bool,
) -> Target:
    manager, kms = built
    kms_name = name.split("-")[0]
    check = manager_check(manager, E1_IDENTITIES[kms_name], opens, empty_opens=legacy_on)
    return Target(name, check, kms)


def build_targets() -> list[Target]:
    aes_opens = frozenset({A1, LEGACY_CBC})
    e1_only = frozenset({E1})
    return [
        Target("classify", check_classify),
        Target("encoding", check_encoding),
        Target("envelope", check_envelope),
        Target("legacy", check_legacy),
        Target("aes", manager_check(_aes(), AES_IDENTITIES, aes_opens)),
        Target(
            "aes-derivation",
            manager_check(_aes(legacy_key_derivation=True), AES_IDENTITIES, aes_opens),
        ),
        Target(
            "aes-legacy-off",
            manager_check(_aes(allow_legacy=False), AES_IDENTITIES, frozenset({A1})),
        ),
        _cloud("aws", aws_manager(), frozenset({E1, LEGACY_ENVELOPE}), legacy_on=True),
        _cloud("aws-legacy-off", aws_manager(allow_legacy=False), e1_only, legacy_on=False),
        _cloud("gcp", gcp_manager(), frozenset({E1, LEGACY_RAW}), legacy_on=True),
        _cloud("gcp-legacy-off", gcp_manager(allow_legacy=False), e1_only, legacy_on=False),
        _cloud(
            "azure",
            azure_manager(),
            frozenset({E1, LEGACY_ENVELOPE, LEGACY_RAW}),
            legacy_on=True,
        ),
        _cloud("azure-legacy-off", azure_manager(allow_legacy=False), e1_only, legacy_on=False),
    ]
