"""The ciphertext parsers fuzzed in-process, the contract every decrypt keeps, and seed inputs.

Shared by ``tests/fuzz/test_fuzz.py`` (hypothesis) and ``tests/fuzz/atheris_parsers.py``
(atheris). A target's ``check(text)`` runs one parser, or the AES provider's whole ``decrypt``,
on any string and returns a short label of what happened. It raises (and so fails the fuzzer)
when the contract breaks:

* nothing but :class:`crypto.DecryptionError` escapes, always with a reason for the audit log,
  and with the generic message unless it is a :class:`crypto.MalformedCiphertext`: a fact of the
  value's shape, never raised once a key was used (CBC, GCM, an unwrapped key) and the same
  answer for every identity, so that it cannot be an oracle;
* an authenticated value (m1, a1, e1, and a Kamus raw value under a KMS key) opens only if it is
  exactly one of the values made here or committed under ``tests/vectors`` (or, against a KMS
  double, made by that KMS), for its own identity, to its own plaintext: a mutation never opens,
  nor does another spelling of the same bytes, nor a value made for another identity;
* Kamus's unauthenticated values may open (CBC is malleable), but only to UTF-8 where Kamus's
  reader requires it, only with legacy reading on, and only in a provider that reads that format;
* a pure parser that accepts a string gives back parts that re-encode to exactly that string.

Only what never crosses a network runs here: ``classify``, the strict base64 decoders, the e1
envelope (``parse`` and ``open_sealed``), Kamus's legacy parsers and CBC, and the AES provider,
which never awaits, so it runs without an event loop at full speed. The cloud providers are
fuzzed only through their real SDKs against the KMS doubles (moto, the Cloud KMS and Key Vault
doubles) in ``tests/fuzz/test_fuzz.py``, with the same contract (:func:`decrypt_check`) and these
seeds.
"""

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from crypto import (
    AESKeyManager,
    CiphertextFormat,
    DecryptionError,
    MalformedCiphertext,
    classify,
    envelope,
    legacy,
    m1,
)
from crypto.encoding import b64_decode, b64url_decode, b64url_encode
from crypto.errors import Refused
from crypto.formats import PREFIX
from crypto.sealing import MAX_GENERATION
from tests.support.vectors import A1 as A1_VECTORS
from tests.support.vectors import E1 as E1_VECTORS
from tests.support.vectors import LEGACY as LEGACY_VECTORS
from tests.support.vectors import M1 as M1_VECTORS
from tests.support.vectors import RECIPIENTS as RECIPIENTS_VECTORS

T = TypeVar("T")

IDENTITY = "fuzz-ns:fuzz-sa"
GENERIC_MESSAGE = "the ciphertext could not be decrypted for this service account"
MALFORMED_PREFIX = "this is not a Kamus ciphertext: "
# A well-formed m1 value with no stanza for a key held here (crypto.sealing.NotSealedHere).
NOT_SEALED_PREFIX = "this value was not sealed for this Kamus: "
# Another identity to ask: a shape fact must not depend on who asks.
OTHER_IDENTITY = "fuzz-other:someone-else"
KMS_NAMES = ("aws", "gcp", "azure")
KEY_VERSION = re.compile(r"[A-Za-z0-9-]{0,64}")

A1 = CiphertextFormat.AES_GCM_V1
M1 = CiphertextFormat.SEALED_V1
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


def seal_m1(stanza: m1.Stanza, data_key: bytes, sa_id: str, plaintext: bytes) -> str:
    """m1 with one stanza, as the page has it, with a nonce from a label (HPKE stanzas cannot be
    made deterministic: the committed vectors stand in for them)."""
    okm = HKDF(hashes.SHA256(), 96, salt=None, info=b"kamus/m1/keys").derive(data_key)
    k_enc, k_mac, commitment = okm[:32], okm[32:64], okm[64:]
    ns, sa = sa_id.split(":", 1)
    tag = hashlib.sha256(f"kamus-id\x00{ns}\x00{sa}".encode()).hexdigest()[:8]
    header = {"c": b64url_encode(commitment), "id": tag, "s": [stanza.to_json()]}
    header_text = b64url_encode(json.dumps(header, separators=(",", ":")).encode())
    mac = hmac.new(k_mac, f"kamus$m1${header_text}".encode(), "sha256").digest()

    def lv(text: str) -> bytes:
        return len(text.encode()).to_bytes(2, "big") + text.encode()

    nonce = _digest(f"m1 {stanza.kind} {plaintext!r}")[:12]
    aad = b"kamus/m1\x00" + lv(ns) + lv(sa) + commitment
    sealed = AESGCM(k_enc).encrypt(nonce, plaintext, aad)
    return f"kamus$m1${header_text}${b64url_encode(mac)}${b64url_encode(nonce + sealed)}"


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
for _v in M1_VECTORS["vectors"]:
    _seed(_v["ciphertext"], _v["sa_id"], base64.b64decode(_v["plaintext_b64"]))
for _v in [
    *LEGACY_VECTORS["vectors"],
    *A1_VECTORS["negative"],
    *E1_VECTORS["negative"],
    *M1_VECTORS["negative"],
]:
    _seed(_v["ciphertext"])
for _v in LEGACY_VECTORS["negative"]:
    _seed(_v["ciphertext"])


def _respelled(text: str) -> str | None:
    """``text`` with its last field's base64url spelled canonically (no padding, the url-safe
    alphabet, no unused bits set), or None when it already is or does not decode at all."""
    head, _, body = text.rpartition("$")
    body = body.rstrip("=").replace("+", "-").replace("/", "_")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except ValueError:  # binascii.Error is one
        return None
    respelled = f"{head}${b64url_encode(raw)}"
    return None if respelled == text else respelled


# Some negative vectors only misspell a value that was made (padding, the standard alphabet,
# unused bits set). A fuzzer that respells one has found that made value, which must open: it is
# added to VALID (never to the seeds) when it opens with the vector's own key and identity.
for _v in A1_VECTORS["negative"]:
    if (_value := _respelled(_v["ciphertext"])) is not None:
        _keys = [base64.b64decode(k) for k in [_v["key"], *_v["previous_keys"]]]
        try:
            _opened = drive(AESKeyManager(_keys[0], _keys[1:]).decrypt(_value, _v["sa_id"]))
        except DecryptionError:
            continue  # broken in another way too: not a made value
        VALID[(_value, _v["sa_id"])] = _opened
for _v in E1_VECTORS["negative"]:
    if (_value := _respelled(_v["ciphertext"])) is not None:
        try:
            _sealed = envelope.parse(_value, _v["kms"])
            _data_key = base64.b64decode(_v["data_key"])
            _opened = envelope.open_sealed(_sealed, _data_key, _v["sa_id"])
        except DecryptionError:
            continue  # broken in another way too: not a made value
        VALID[(_value, _v["sa_id"])] = _opened


AES_KEYS = _unique(
    [KEY_A, KEY_B, KEY_C, KAMUS_TEST_KEY]
    + [
        base64.b64decode(k)
        for v in [*A1_VECTORS["vectors"], *LEGACY_VECTORS["vectors"], *M1_VECTORS["vectors"]]
        for k in [v["key"], *v["previous_keys"]]
    ]
)
AES_IDENTITIES = _unique(
    [IDENTITY]
    + [
        v["sa_id"]
        for v in [*A1_VECTORS["vectors"], *LEGACY_VECTORS["vectors"], *M1_VECTORS["vectors"]]
    ]
)


# e1 values with made-up wrapped keys: the envelope target opens them with their data keys; to a
# cloud provider they are well-formed values whose wrapped key its KMS never made.
DATA_KEYS = {kms: _digest(f"fuzz {kms} data key") for kms in KMS_NAMES}
WRAPPED = {kms: f"fuzz {kms} wrapped data key".encode() for kms in KMS_NAMES}
LEGACY_DATA_KEY = _digest("fuzz legacy data key")
M1_MADE: dict[str, bytes] = {}  # m1 values under DATA_KEYS -> their plaintexts
AZURE_VERSION = "0123456789abcdef0123456789abcdef"
KEY_VERSIONS = {"aws": "1234abcd-12ab-34cd-56ef-1234567890ab", "gcp": "3", "azure": AZURE_VERSION}

for _kms in KMS_NAMES:
    for _plaintext in PLAINTEXTS:
        _seed(
            seal_e1(_kms, KEY_VERSIONS[_kms], WRAPPED[_kms], DATA_KEYS[_kms], IDENTITY, _plaintext),
            IDENTITY,
            _plaintext,
        )
    # m1 with one KMS stanza whose wrapped key no KMS made: the m1 target opens them with their
    # data keys; to a provider they are well formed and open nowhere.
    for _plaintext in PLAINTEXTS:
        _stanza = m1.Stanza(_kms, KEY_VERSIONS[_kms], WRAPPED[_kms])
        _value = seal_m1(_stanza, DATA_KEYS[_kms], IDENTITY, _plaintext)
        M1_MADE[_value] = _plaintext
        _seed(_value)

# HPKE key ids of the right shape with generations no key may have (past MAX_GENERATION): a
# value names whatever it likes, and each provider must answer no stanza held, never crash.
for _generation in (MAX_GENERATION + 1, 999_999):
    _stanza = m1.Stanza("hpke-x25519", f"x25519:g{_generation}:0123456789abcdef", bytes(48))
    _value = seal_m1(_stanza, DATA_KEYS["aws"], IDENTITY, b"hello")
    M1_MADE[_value] = b"hello"  # made: the m1 target opens it with its data key
    _seed(_value)
# Values with several recipients: clusters, age stanzas, thresholds (issue 22).
for _v in [*RECIPIENTS_VECTORS["vectors"], *RECIPIENTS_VECTORS["negative"]]:
    _seed(_v["ciphertext"])

LEGACY_BLOB = b"fuzz legacy wrapped key"  # no KMS made it
_seed(f"env${b64(LEGACY_BLOB)}${cbc(LEGACY_DATA_KEY, 'from kamus ✓'.encode())}")
_seed(b64(b"fuzz raw blob"))
_seed(b64("from kamus ✓".encode()))
_seed("")

SEEDS[:] = _unique(SEEDS)

# e1 data keys the envelope target tries: ours and the vectors', plus keys of a wrong size.
E1_OPENERS: dict[str, list[tuple[bytes, str]]] = {
    kms: [
        (DATA_KEYS[kms], IDENTITY),
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

# --- the targets --------------------------------------------------------------------------------

Check = Callable[[str], str]


@dataclass(frozen=True)
class Target:
    name: str
    check: Check


def rejected_label(error: DecryptionError, *, after_key: bool = False) -> str:
    """``after_key``: raised where a key was used, where only the generic message may be."""
    if isinstance(error, MalformedCiphertext):
        if after_key:
            raise AssertionError(f"a failure after a key was used told apart: {error}")
        if not str(error).startswith((MALFORMED_PREFIX, NOT_SEALED_PREFIX)) or not error.fact:
            raise AssertionError(f"a MalformedCiphertext without its fact: {error}")
    elif isinstance(error, Refused):
        # The value and this Kamus's configuration (a threshold whose groups are not held
        # here, a recipient policy): decided from the header alone, before any key.
        if after_key:
            raise AssertionError(f"a failure after a key was used told apart: {error}")
        if not error.message:
            raise AssertionError(f"a refusal without its message: {error!r}")
    elif str(error) != GENERIC_MESSAGE:
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
        ok = fmt in (A1, E1, M1, UNKNOWN)
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
                rejected_label(error, after_key=True)
                continue
            # The wrapped key is not associated data (the KMS authenticates it), so with the
            # data key in hand any wrapped key opens; everything else must be as it was made.
            if _e1_without_wrapped_key(text, sa_id) != plaintext:
                raise AssertionError(f"an e1 value that was never made opened: {text[:60]!r}")
            label = "opened"
    return label


def check_m1(text: str) -> str:
    """``m1.parse``: what it accepts re-encodes to exactly the value, within its limits; then
    ``open_value`` with each known data key, which opens only values made here."""
    try:
        value = m1.parse(text)
    except DecryptionError as error:
        return rejected_label(error)
    rebuilt = (
        f"{m1.M1_HEADER}{value.header_text}${b64url_encode(value.mac)}$"
        f"{b64url_encode(value.payload)}"
    )
    if rebuilt != text or not 1 <= len(value.stanzas) <= m1.MAX_STANZAS:
        raise AssertionError(f"m1.parse accepted {text[:60]!r}")
    if len(value.commitment) != 32 or len(value.payload) < 28:
        raise AssertionError("m1.parse accepted a value too short")
    label = "parsed"
    for data_key in DATA_KEYS.values():
        try:
            plaintext = m1.open_value(value, data_key, IDENTITY)
        except DecryptionError as error:
            rejected_label(error, after_key=True)
            continue
        if M1_MADE.get(text) != plaintext:
            raise AssertionError(f"an m1 value that was never made opened: {text[:60]!r}")
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
                rejected_label(error, after_key=True)
    return label


MALLEABLE = frozenset({LEGACY_CBC, LEGACY_ENVELOPE})


def decrypt_check(
    decrypt: Callable[[str, str], bytes],
    valid: Mapping[tuple[str, str], bytes],
    opens: frozenset[CiphertextFormat],
    *,
    empty_opens: bool = False,
) -> Callable[[str, str], str]:
    """One provider's whole ``decrypt(text, sa_id)``, judged by the contract in the module doc.

    ``valid`` maps (value, identity) to the plaintext of every authenticated value made for the
    test; ``opens`` are the formats the provider reads as configured; ``empty_opens``: the empty
    value opens to nothing, as Kamus's KMS providers answered it (with legacy reading on).
    """
    made = {text for text, _ in valid}

    def check(text: str, sa_id: str) -> str:
        try:
            plaintext = decrypt(text, sa_id)
        except MalformedCiphertext as error:
            try:
                decrypt(text, OTHER_IDENTITY)
            except DecryptionError as other:
                if str(other) != str(error):
                    msg = f"a shape fact that depends on the identity: {error}"
                    raise AssertionError(msg) from None
            else:
                raise AssertionError(f"malformed for {sa_id}, yet it opened for another") from None
            return rejected_label(error)
        except DecryptionError as error:
            return rejected_label(error)
        fmt = classify(text)
        expected = valid.get((text, sa_id))
        if text == "":
            ok = empty_opens and plaintext == b""
        elif fmt not in opens:
            ok = False
        elif expected is not None:
            ok = plaintext == expected
        elif text in made:
            ok = False  # made for another identity
        elif fmt in MALLEABLE:
            plaintext.decode("utf-8")  # Kamus's reader accepts UTF-8 only
            ok = True
        else:
            ok = False  # authenticated: a1, e1, or a raw value under a KMS key
        if not ok:
            raise AssertionError(f"{fmt} value opened as {sa_id!r}: {text[:80]!r}")
        return "opened"

    return check


def manager_check(
    manager: AESKeyManager, identities: list[str], opens: frozenset[CiphertextFormat]
) -> Check:
    """The AES provider's ``decrypt`` as each identity in turn."""
    one = decrypt_check(lambda text, sa_id: drive(manager.decrypt(text, sa_id)), VALID, opens)

    def check(text: str) -> str:
        labels = [one(text, sa_id) for sa_id in identities]
        return "opened" if "opened" in labels else labels[0]

    return check


def rewrap_check(manager: AESKeyManager, identities: list[str]) -> Check:
    """The AES provider's ``rewrap`` as each identity, ``upgrade_legacy`` on (the widest it
    goes): it fails exactly when ``decrypt`` fails, and a value it answers opens as the same
    identity to the same plaintext, and as no other identity. A rewrap that changed either would
    be the decryption oracle the endpoint must never be."""

    def one(text: str, sa_id: str) -> str:
        try:
            result = drive(manager.rewrap(text, sa_id, upgrade_legacy=True))
        except DecryptionError as error:
            label = rejected_label(error)
            try:
                drive(manager.decrypt(text, sa_id))
            except DecryptionError:
                return label
            raise AssertionError(f"decrypts as {sa_id}, yet rewrap refused: {error}") from None
        before = drive(manager.decrypt(text, sa_id))
        assert result.ciphertext is not None
        if drive(manager.decrypt(result.ciphertext, sa_id)) != before:
            raise AssertionError(f"rewrap changed the plaintext of {text[:60]!r}")
        try:
            drive(manager.decrypt(result.ciphertext, OTHER_IDENTITY))
        except DecryptionError:
            return "opened"
        raise AssertionError(f"rewrapped for {sa_id}, it opens for another identity")

    def check(text: str) -> str:
        labels = [one(text, sa_id) for sa_id in identities]
        return "opened" if "opened" in labels else labels[0]

    return check


def _aes(*, legacy_key_derivation: bool = False, allow_legacy: bool = True) -> AESKeyManager:
    return AESKeyManager(
        AES_KEYS[0],
        AES_KEYS[1:],
        legacy_key_derivation=legacy_key_derivation,
        allow_legacy=allow_legacy,
    )


def build_targets() -> list[Target]:
    aes_opens = frozenset({M1, A1, LEGACY_CBC})
    return [
        Target("classify", check_classify),
        Target("encoding", check_encoding),
        Target("envelope", check_envelope),
        Target("m1", check_m1),
        Target("legacy", check_legacy),
        Target("aes", manager_check(_aes(), AES_IDENTITIES, aes_opens)),
        Target(
            "aes-derivation",
            manager_check(_aes(legacy_key_derivation=True), AES_IDENTITIES, aes_opens),
        ),
        Target(
            "aes-legacy-off",
            manager_check(_aes(allow_legacy=False), AES_IDENTITIES, frozenset({M1, A1})),
        ),
        # As the endpoint asks: every identity is <namespace>:<service-account> (Kamus's test
        # vectors also use a bare "sa", which no m1 value can be bound to).
        Target("aes-rewrap", rewrap_check(_aes(), [i for i in AES_IDENTITIES if ":" in i])),
    ]
