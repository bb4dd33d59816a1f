"""Unit tests for ``crypto/``: the a1 format, Kamus's legacy AES format, key ids and parsing.

Wherever a test needs the expected bytes, they come from an implementation written here from the
spec (``docs/ciphertext-format.md``) with pyca/cryptography primitives, never from ``crypto/``
itself, so a test cannot pass merely because the code agrees with itself.
"""

import base64
import hashlib
import os
import re
import string

import pytest
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from crypto import (
    AESKeyManager,
    CiphertextFormat,
    DecryptionError,
    MalformedCiphertext,
    classify,
    kamus_key_id,
    key_id,
)
from crypto.encoding import b64_decode, b64url_decode, b64url_encode
from crypto.formats import PREFIX
from tests.support.aio import run

KAMUS_TEST_KEY = base64.b64decode("tWG4dk8ARsETnFL3jCf1xtMVe05imlx9vimER7iky2s=")
KAMUS_VECTOR = "C4gChhspnTa5yVqYmSitrg==:tr0Ke6OGUaUa8KZgMJg14g=="
KAMUS_DERIVED_VECTOR = "VnZkifeNdxI7NWMbjr/MZg==:qskLf4Z57DC9HBTe6+IEkA=="

# Fixed master keys: tests are deterministic except for the nonces the code draws.
KEY_A = hashlib.sha256(b"kamus-py test key A").digest()
KEY_B = hashlib.sha256(b"kamus-py test key B").digest()
KEY_C = hashlib.sha256(b"kamus-py test key C").digest()
FIXED_IV = bytes(range(16))

GENERIC_MESSAGE = "the ciphertext could not be decrypted for this service account"
B64URL_ALPHABET = string.ascii_letters + string.digits + "-_"
B64_ALPHABET = string.ascii_letters + string.digits + "+/"
KID_RE = re.compile(r"[A-Za-z0-9_-]{8}")


# --- independent implementations, written from the spec -----------------------------------------


def spec_kamus_key_id(sa_id: str) -> str:
    raw = base64.urlsafe_b64encode(hashlib.sha256(sa_id.encode("utf-8")).digest())
    return raw.decode("ascii").rstrip("=").replace("_", "-")


def spec_kid(master: bytes) -> str:
    raw = HKDF(hashes.SHA256(), 6, salt=None, info=b"kamus/key-id").derive(master)
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def spec_value_key(master: bytes, sa_id: str) -> bytes:
    info = b"kamus/a1/aes-256-gcm\x00" + sa_id.encode("utf-8")
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(master)


def spec_seal_a1(master: bytes, sa_id: str, plaintext: bytes, nonce: bytes) -> str:
    header = f"kamus$a1${spec_kid(master)}$"
    sealed = AESGCM(spec_value_key(master, sa_id)).encrypt(
        nonce, plaintext, header.encode() + sa_id.encode("utf-8")
    )
    return header + base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")


def spec_open_a1(master: bytes, sa_id: str, ciphertext: str) -> bytes:
    prefix, version, kid, body = ciphertext.split("$")
    assert (prefix, version, kid) == ("kamus", "a1", spec_kid(master))
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    aad = f"kamus$a1${kid}$".encode() + sa_id.encode("utf-8")
    return AESGCM(spec_value_key(master, sa_id)).decrypt(raw[:12], raw[12:], aad)


def legacy_encrypt(
    master: bytes, plaintext: bytes, *, derive_for: str | None = None, iv: bytes = FIXED_IV
) -> str:
    """Kamus's AES provider: ``b64(iv):b64(AES-CBC-PKCS7)``, optionally HKDF-expand-derived."""
    key = master
    if derive_for is not None:
        key = HKDFExpand(hashes.SHA256(), 32, derive_for.encode("utf-8")).derive(master)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = enc.update(padded) + enc.finalize()
    return base64.b64encode(iv).decode() + ":" + base64.b64encode(body).decode()


def legacy_encrypt_raw(master: bytes, padded: bytes, iv: bytes = FIXED_IV) -> str:
    """CBC without adding padding: lets a test choose what the decryptor finds."""
    enc = Cipher(algorithms.AES(master), modes.CBC(iv)).encryptor()
    body = enc.update(padded) + enc.finalize()
    return base64.b64encode(iv).decode() + ":" + base64.b64encode(body).decode()


def reason_of(manager: AESKeyManager, ciphertext: str, sa_id: str) -> DecryptionError:
    with pytest.raises(DecryptionError) as info:
        run(manager.decrypt(ciphertext, sa_id))
    return info.value


# --- Kamus regression vectors -------------------------------------------------------------------


@pytest.mark.parametrize("sa_id", ["sa", "other", "ns:sa", ""])
async def test_kamus_regression_vector_without_derivation(sa_id: str) -> None:
    manager = AESKeyManager(KAMUS_TEST_KEY)
    assert await manager.decrypt(KAMUS_VECTOR, sa_id) == b"hello"


async def test_kamus_regression_vector_with_derivation() -> None:
    manager = AESKeyManager(KAMUS_TEST_KEY, legacy_key_derivation=True)
    assert await manager.decrypt(KAMUS_DERIVED_VECTOR, "sa") == b"hello"


@pytest.mark.parametrize("sa_id", ["other", "ns:sa", "sa ", "SA", ""])
async def test_kamus_derived_vector_is_bound_to_its_service_account(sa_id: str) -> None:
    manager = AESKeyManager(KAMUS_TEST_KEY, legacy_key_derivation=True)
    with pytest.raises(DecryptionError):
        await manager.decrypt(KAMUS_DERIVED_VECTOR, sa_id)


async def test_kamus_vectors_need_the_matching_derivation_setting() -> None:
    with pytest.raises(DecryptionError):
        await AESKeyManager(KAMUS_TEST_KEY).decrypt(KAMUS_DERIVED_VECTOR, "sa")
    with pytest.raises(DecryptionError):
        await AESKeyManager(KAMUS_TEST_KEY, legacy_key_derivation=True).decrypt(KAMUS_VECTOR, "sa")


async def test_independent_legacy_implementation_reproduces_kamus_vectors() -> None:
    """Our test-side CBC encoder is Kamus's format: same IV and key give Kamus's exact strings."""
    iv = base64.b64decode(KAMUS_VECTOR.split(":")[0])
    assert legacy_encrypt(KAMUS_TEST_KEY, b"hello", iv=iv) == KAMUS_VECTOR
    iv = base64.b64decode(KAMUS_DERIVED_VECTOR.split(":")[0])
    derived = legacy_encrypt(KAMUS_TEST_KEY, b"hello", derive_for="sa", iv=iv)
    assert derived == KAMUS_DERIVED_VECTOR


# --- legacy values made by the independent implementation ---------------------------------------

LEGACY_PLAINTEXTS = [
    b"",
    b"x",
    b"fifteen bytes!!",
    b"sixteen bytes!!!",
    b"seventeen bytes!!",
    b"a" * 32,
    "pässwörd 🔐 סוד".encode(),
    b'{"user":"admin","password":"s3cr3t"}' * 20,
]


@pytest.mark.parametrize("derive", [False, True])
@pytest.mark.parametrize("plaintext", LEGACY_PLAINTEXTS)
async def test_legacy_round_trip(plaintext: bytes, derive: bool) -> None:
    sa_id = "payments:billing"
    ciphertext = legacy_encrypt(
        KEY_A, plaintext, derive_for=sa_id if derive else None, iv=os.urandom(16)
    )
    assert classify(ciphertext) is CiphertextFormat.LEGACY_AES_CBC
    manager = AESKeyManager(KEY_A, legacy_key_derivation=derive)
    assert await manager.decrypt(ciphertext, sa_id) == plaintext


@pytest.mark.parametrize("size", [16, 24, 32])
async def test_legacy_with_aes_128_and_192_master_keys(size: int) -> None:
    master = KEY_B[:size]
    ciphertext = legacy_encrypt(master, b"short key")
    assert await AESKeyManager(master).decrypt(ciphertext, "a:b") == b"short key"


@pytest.mark.parametrize("derive", [False, True])
async def test_legacy_under_a_previous_key_opens(derive: bool) -> None:
    sa_id = "prod:web"
    ciphertext = legacy_encrypt(
        KEY_A, b"made before rotation", derive_for=sa_id if derive else None
    )
    rotated = AESKeyManager(KEY_B, [KEY_C, KEY_A], legacy_key_derivation=derive)
    assert await rotated.decrypt(ciphertext, sa_id) == b"made before rotation"
    without_old_key = AESKeyManager(KEY_B, [KEY_C], legacy_key_derivation=derive)
    with pytest.raises(DecryptionError) as info:
        await without_old_key.decrypt(ciphertext, sa_id)
    assert "any configured key" in info.value.reason


async def test_legacy_refused_when_switched_off() -> None:
    ciphertext = legacy_encrypt(KEY_A, b"old")
    manager = AESKeyManager(KEY_A, allow_legacy=False)
    with pytest.raises(DecryptionError) as info:
        await manager.decrypt(ciphertext, "a:b")
    assert "switched off" in info.value.reason
    with pytest.raises(DecryptionError):
        await AESKeyManager(KAMUS_TEST_KEY, allow_legacy=False).decrypt(KAMUS_VECTOR, "sa")
    # The switch only concerns legacy values: a1 keeps working.
    fresh = await manager.encrypt(b"new", "a:b")
    assert await manager.decrypt(fresh, "a:b") == b"new"


async def test_legacy_with_derivation_is_bound_to_the_service_account() -> None:
    ciphertext = legacy_encrypt(KEY_A, b"team secret value", derive_for="team:api")
    manager = AESKeyManager(KEY_A, legacy_key_derivation=True)
    assert await manager.decrypt(ciphertext, "team:api") == b"team secret value"
    for other in ("team:web", "other:api", "team:api ", "api"):
        with pytest.raises(DecryptionError):
            await manager.decrypt(ciphertext, other)


async def test_legacy_without_derivation_is_not_bound_to_the_service_account() -> None:
    """Kamus's default: one key for everyone. Documented weakness, kept for compatibility."""
    ciphertext = legacy_encrypt(KEY_A, b"shared")
    manager = AESKeyManager(KEY_A)
    assert await manager.decrypt(ciphertext, "a:x") == b"shared"
    assert await manager.decrypt(ciphertext, "b:y") == b"shared"


async def test_legacy_wrong_key_fails() -> None:
    ciphertext = legacy_encrypt(KEY_A, b"a value long enough to span a few CBC blocks")
    with pytest.raises(DecryptionError):
        await AESKeyManager(KEY_B).decrypt(ciphertext, "a:b")


async def test_legacy_bad_padding_under_the_right_key_fails() -> None:
    ciphertext = legacy_encrypt_raw(KEY_A, b"fifteen bytes!!\x00")
    with pytest.raises(DecryptionError):
        await AESKeyManager(KEY_A).decrypt(ciphertext, "a:b")


async def test_legacy_plaintext_must_be_utf8() -> None:
    """Kamus only encrypted .NET strings (always valid UTF-8); anything else is a wrong key."""
    ciphertext = legacy_encrypt(KEY_A, b"\xff\xfe not utf-8")
    with pytest.raises(DecryptionError):
        await AESKeyManager(KEY_A).decrypt(ciphertext, "a:b")


IV_B64 = base64.b64encode(FIXED_IV).decode()
BLOCK_B64 = base64.b64encode(bytes(16)).decode()


@pytest.mark.parametrize(
    "ciphertext",
    [
        f"{IV_B64}:{BLOCK_B64}:{BLOCK_B64}",  # three fields
        f":{BLOCK_B64}",  # empty iv
        f"{IV_B64}:",  # empty body
        f"{base64.b64encode(bytes(8)).decode()}:{BLOCK_B64}",  # 8-byte iv
        f"{IV_B64}:{base64.b64encode(bytes(15)).decode()}",  # body not a block multiple
        f"{IV_B64}:{base64.b64encode(bytes(17)).decode()}",
        f"{IV_B64.rstrip('=')}:{BLOCK_B64}",  # unpadded base64
        f"{IV_B64}:{BLOCK_B64} ",  # stray whitespace
        f" {IV_B64}:{BLOCK_B64}",
        f"{IV_B64}:{BLOCK_B64}\n",
        f"{IV_B64}:{BLOCK_B64.replace('A', '-')}",  # url-safe alphabet
        f"{IV_B64}:{BLOCK_B64[:-3]}Q==",  # non-canonical: unused bits set
        "not base64!:also not",
        "é:é",
        ":",
    ],
)
async def test_malformed_legacy_ciphertexts_fail(ciphertext: str) -> None:
    assert classify(ciphertext) is CiphertextFormat.LEGACY_AES_CBC
    with pytest.raises(DecryptionError):
        await AESKeyManager(KEY_A).decrypt(ciphertext, "a:b")


# --- Kamus key ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sa_id", ["default:default", "kube-system:external-dns", "a:b", "", "ns:ünïcødé"]
)
def test_kamus_key_id_matches_independent_computation(sa_id: str) -> None:
    kid = kamus_key_id(sa_id)
    assert kid == spec_kamus_key_id(sa_id)
    assert len(kid) == 43
    assert re.fullmatch(r"[A-Za-z0-9-]{43}", kid)


def test_kamus_key_id_replaces_underscore() -> None:
    for i in range(1000):
        sa_id = f"ns-{i}:app"
        raw = base64.urlsafe_b64encode(hashlib.sha256(sa_id.encode()).digest()).decode()
        if "_" in raw:
            break
    else:
        pytest.fail("no input with '_' in its base64url digest found")
    kid = kamus_key_id(sa_id)
    assert "_" not in kid
    assert kid == raw.rstrip("=").replace("_", "-")
    assert kid != raw.rstrip("=")


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=80))
def test_kamus_key_id_property(sa_id: str) -> None:
    kid = kamus_key_id(sa_id)
    assert kid == spec_kamus_key_id(sa_id)
    assert re.fullmatch(r"[A-Za-z0-9-]{43}", kid)


# --- a1: the format we write --------------------------------------------------------------------

A1_PLAINTEXTS = [
    b"",
    b"hello",
    bytes(range(256)),
    "pässwörd 🔐 סוד 密码".encode(),
    b"\x00" * 17,
]


@pytest.mark.parametrize("plaintext", A1_PLAINTEXTS)
async def test_a1_round_trip(plaintext: bytes) -> None:
    manager = AESKeyManager(KEY_A)
    ciphertext = await manager.encrypt(plaintext, "a:x")
    assert await manager.decrypt(ciphertext, "a:x") == plaintext
    # The spec in docs/ciphertext-format.md opens it too.
    assert spec_open_a1(KEY_A, "a:x", ciphertext) == plaintext


async def test_a1_round_trip_one_mebibyte() -> None:
    plaintext = os.urandom(1 << 20)
    manager = AESKeyManager(KEY_A)
    ciphertext = await manager.encrypt(plaintext, "big:data")
    assert len(b64url_decode(ciphertext.split("$")[3])) == 12 + len(plaintext) + 16
    assert await manager.decrypt(ciphertext, "big:data") == plaintext


@pytest.mark.parametrize("size", [16, 24, 32])
async def test_a1_with_each_master_key_size(size: int) -> None:
    manager = AESKeyManager(KEY_C[:size])
    ciphertext = await manager.encrypt(b"any size", "a:x")
    assert await manager.decrypt(ciphertext, "a:x") == b"any size"
    assert spec_open_a1(KEY_C[:size], "a:x", ciphertext) == b"any size"


async def test_a1_layout() -> None:
    manager = AESKeyManager(KEY_A, [KEY_B])
    plaintext = b"layout check"
    ciphertext = await manager.encrypt(plaintext, "a:x")
    assert ciphertext.startswith("kamus$a1$")
    assert ciphertext.startswith(PREFIX)
    assert classify(ciphertext) is CiphertextFormat.AES_GCM_V1
    prefix, version, kid, body = ciphertext.split("$")
    assert (prefix, version) == ("kamus", "a1")
    assert KID_RE.fullmatch(kid)
    assert kid == manager.active_key_id == key_id(KEY_A) == spec_kid(KEY_A)
    assert set(body) <= set(B64URL_ALPHABET)  # unpadded base64url
    assert len(b64url_decode(body)) == 12 + len(plaintext) + 16
    # Safe in YAML, JSON, env files and URLs without quoting surprises.
    assert ciphertext.isascii()
    assert not set(ciphertext) - set(B64URL_ALPHABET + "$")


async def test_a1_spec_encoder_output_opens_with_the_real_code() -> None:
    ciphertext = spec_seal_a1(KEY_A, "ns:sa", b"written from the spec", os.urandom(12))
    assert await AESKeyManager(KEY_A).decrypt(ciphertext, "ns:sa") == b"written from the spec"


def test_key_id_shape_and_independence() -> None:
    kids = {key_id(k) for k in (KEY_A, KEY_B, KEY_C, KEY_A[:16], KEY_A[:24])}
    assert len(kids) == 5
    for k in (KEY_A, KEY_B, KEY_C):
        assert key_id(k) == spec_kid(k)
        assert KID_RE.fullmatch(key_id(k))


@pytest.mark.parametrize("reader", ["a:y", "b:x", "A:x", "a:x ", " a:x", "a:x\x00", "a", "x", ""])
async def test_a1_is_bound_to_namespace_and_service_account(reader: str) -> None:
    manager = AESKeyManager(KEY_A)
    ciphertext = await manager.encrypt(b"for a:x only", "a:x")
    with pytest.raises(DecryptionError) as info:
        await manager.decrypt(ciphertext, reader)
    assert info.value.reason == "a1 authentication failed (wrong identity or tampered)"


async def test_a1_rotation() -> None:
    old = AESKeyManager(KEY_A)
    ciphertext = await old.encrypt(b"before rotation", "a:x")

    rotated = AESKeyManager(KEY_B, [KEY_A])
    assert await rotated.decrypt(ciphertext, "a:x") == b"before rotation"
    # New values are always made under the active key, never a previous one.
    fresh = await rotated.encrypt(b"after rotation", "a:x")
    assert fresh.split("$")[2] == key_id(KEY_B) != key_id(KEY_A)
    assert await rotated.decrypt(fresh, "a:x") == b"after rotation"
    # Order of previous keys does not matter: the kid selects the key.
    assert await AESKeyManager(KEY_C, [KEY_B, KEY_A]).decrypt(ciphertext, "a:x") == (
        b"before rotation"
    )

    cut_off = AESKeyManager(KEY_B)
    with pytest.raises(DecryptionError) as info:
        await cut_off.decrypt(ciphertext, "a:x")
    assert info.value.reason == "a1 ciphertext names a key that is not configured"
    assert await cut_off.decrypt(fresh, "a:x") == b"after rotation"


async def test_a1_unknown_key_id_fails() -> None:
    manager = AESKeyManager(KEY_A)
    ciphertext = await manager.encrypt(b"v", "a:x")
    _, _, kid, body = ciphertext.split("$")
    for fake in (key_id(KEY_C), "AAAAAAAA", kid[:-1], kid + "A", "", kid.lower(), kid.upper()):
        if fake == kid:
            continue
        with pytest.raises(DecryptionError):
            await manager.decrypt(f"kamus$a1${fake}${body}", "a:x")


async def test_a1_kid_is_authenticated() -> None:
    """Relabelling a value with another configured key's kid fails: the kid is in the AAD."""
    manager = AESKeyManager(KEY_A, [KEY_B])
    ciphertext = await manager.encrypt(b"v", "a:x")
    relabelled = ciphertext.replace(key_id(KEY_A), key_id(KEY_B))
    assert relabelled != ciphertext
    with pytest.raises(DecryptionError) as info:
        await manager.decrypt(relabelled, "a:x")
    assert info.value.reason == "a1 authentication failed (wrong identity or tampered)"


async def test_a1_nonces_are_random() -> None:
    manager = AESKeyManager(KEY_A)
    values = [await manager.encrypt(b"same plaintext", "a:x") for _ in range(200)]
    assert len(set(values)) == len(values)
    nonces = {b64url_decode(v.split("$")[3])[:12] for v in values}
    assert len(nonces) == len(values)
    for v in values[:5]:
        assert await manager.decrypt(v, "a:x") == b"same plaintext"


@pytest.mark.parametrize(
    "ciphertext",
    [
        "kamus$a1$",
        "kamus$a1$$",
        "kamus$a1$$$",
        "kamus$a2$AAAAAAAA$AAAA",
        "kamus$",
        "kamus$$",
        "kamus$A1$AAAAAAAA$AAAA",
    ],
)
async def test_a1_malformed_shapes_fail(ciphertext: str) -> None:
    with pytest.raises(DecryptionError):
        await AESKeyManager(KEY_A).decrypt(ciphertext, "a:x")


async def test_a1_too_short_body_fails() -> None:
    kid = key_id(KEY_A)
    manager = AESKeyManager(KEY_A)
    for size in (0, 1, 12, 27):
        with pytest.raises(DecryptionError) as info:
            await manager.decrypt(f"kamus$a1${kid}${b64url_encode(bytes(size))}", "a:x")
        assert info.value.reason == "a1 ciphertext is too short"
    # 28 bytes is long enough to parse (nonce + tag), and then fails authentication.
    with pytest.raises(DecryptionError) as info:
        await manager.decrypt(f"kamus$a1${kid}${b64url_encode(bytes(28))}", "a:x")
    assert info.value.reason == "a1 authentication failed (wrong identity or tampered)"


async def test_a1_every_single_character_edit_fails() -> None:
    """Exhaustive over one value: each position deleted or replaced, each truncation, appends."""
    manager = AESKeyManager(KEY_A, [KEY_B])
    ciphertext = await manager.encrypt(b"", "a:x")  # 38-char body: the last char has spare bits
    edits: set[str] = set()
    for i in range(len(ciphertext)):
        edits.add(ciphertext[:i] + ciphertext[i + 1 :])
        edits.add(ciphertext[:i])
        for c in "A-_+/=$:Q\n é":
            edits.add(ciphertext[:i] + c + ciphertext[i + 1 :])
            edits.add(ciphertext[:i] + c + ciphertext[i:])
    for tail in ("A", "AA", "AAA", "AAAA", "=", "==", "$", "\n", " "):
        edits.add(ciphertext + tail)
    edits.discard(ciphertext)
    assert len(edits) > 1000
    for edited in edits:
        with pytest.raises(DecryptionError):
            await manager.decrypt(edited, "a:x")


async def test_a1_every_bit_flip_fails() -> None:
    manager = AESKeyManager(KEY_A)
    ciphertext = await manager.encrypt(b"bits", "a:x")
    header, _, body = ciphertext.rpartition("$")
    raw = b64url_decode(body)
    for i in range(len(raw)):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[i] ^= 1 << bit
            with pytest.raises(DecryptionError):
                await manager.decrypt(f"{header}${b64url_encode(bytes(flipped))}", "a:x")


@pytest.mark.parametrize("size", [0, 1, 8, 15, 17, 20, 23, 25, 31, 33, 48, 64])
def test_wrong_key_length_is_rejected(size: int) -> None:
    with pytest.raises(ValueError, match="16, 24 or 32 bytes"):
        AESKeyManager(bytes(size))
    with pytest.raises(ValueError, match="16, 24 or 32 bytes"):
        AESKeyManager(KEY_A, [KEY_B, bytes(size)])


@pytest.mark.parametrize("size", [16, 24, 32])
def test_valid_key_lengths_are_accepted(size: int) -> None:
    manager = AESKeyManager(bytes(size), [KEY_A[:size]])
    assert manager.active_key_id == key_id(bytes(size))


# --- hypothesis: mutation, identity binding, garbage --------------------------------------------

ROTATED = AESKeyManager(KEY_B, [KEY_A], legacy_key_derivation=True)
MANAGERS = {
    "legacy": AESKeyManager(KEY_A, [KEY_B]),
    "legacy-derived": AESKeyManager(KEY_A, [KEY_B], legacy_key_derivation=True),
    "no-legacy": AESKeyManager(KEY_A, [KEY_B], allow_legacy=False),
}

# Characters that matter to the parsers, plus anything at all (lone surrogates included: a JSON
# body can carry "\ud800").
any_char = st.one_of(
    st.sampled_from(list(B64URL_ALPHABET + "+/=$:. \n\t\x00é")),
    st.characters(exclude_categories=()),
)

dns_label = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
loose_identity = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)


@st.composite
def mutations(draw: st.DrawFn, text: str) -> str:
    op = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "append", "swap"]))
    if op == "replace":
        i = draw(st.integers(0, len(text) - 1))
        c = draw(any_char.filter(lambda c: c != text[i]))
        return text[:i] + c + text[i + 1 :]
    if op == "insert":
        i = draw(st.integers(0, len(text)))
        return text[:i] + draw(st.text(any_char, min_size=1, max_size=4)) + text[i:]
    if op == "delete":
        i = draw(st.integers(0, len(text) - 1))
        j = draw(st.integers(i + 1, min(len(text), i + 8)))
        return text[:i] + text[j:]
    if op == "truncate":
        return text[: draw(st.integers(0, len(text) - 1))]
    if op == "append":
        return text + draw(st.text(any_char, min_size=1, max_size=8))
    i = draw(st.integers(0, len(text) - 2))
    j = draw(st.integers(i + 1, len(text) - 1))
    assume(text[i] != text[j])
    return text[:i] + text[j] + text[i + 1 : j] + text[i] + text[j + 1 :]


@settings(max_examples=400, deadline=None)
@given(plaintext=st.binary(max_size=64), data=st.data())
def test_any_mutation_of_a1_is_rejected(plaintext: bytes, data: st.DataObject) -> None:
    ciphertext = run(ROTATED.encrypt(plaintext, "ns:app"))
    mutated = data.draw(mutations(ciphertext), label="mutated")
    assert mutated != ciphertext
    with pytest.raises(DecryptionError):
        run(ROTATED.decrypt(mutated, "ns:app"))


@settings(max_examples=150, deadline=None)
@given(namespace=dns_label, writer=dns_label, reader=dns_label, plaintext=st.binary(max_size=32))
def test_cross_service_account_always_fails(
    namespace: str, writer: str, reader: str, plaintext: bytes
) -> None:
    assume(writer != reader)
    ciphertext = run(ROTATED.encrypt(plaintext, f"{namespace}:{writer}"))
    assert run(ROTATED.decrypt(ciphertext, f"{namespace}:{writer}")) == plaintext
    with pytest.raises(DecryptionError):
        run(ROTATED.decrypt(ciphertext, f"{namespace}:{reader}"))


@settings(max_examples=150, deadline=None)
@given(writer_ns=dns_label, reader_ns=dns_label, sa=dns_label, plaintext=st.binary(max_size=32))
def test_cross_namespace_always_fails(
    writer_ns: str, reader_ns: str, sa: str, plaintext: bytes
) -> None:
    assume(writer_ns != reader_ns)
    ciphertext = run(ROTATED.encrypt(plaintext, f"{writer_ns}:{sa}"))
    with pytest.raises(DecryptionError):
        run(ROTATED.decrypt(ciphertext, f"{reader_ns}:{sa}"))


@settings(max_examples=150, deadline=None)
@given(
    identities=st.lists(loose_identity, min_size=2, max_size=2, unique=True),
    plaintext=st.binary(max_size=32),
)
def test_any_other_identity_fails(identities: list[str], plaintext: bytes) -> None:
    writer, reader = identities
    ciphertext = run(ROTATED.encrypt(plaintext, writer))
    assert spec_open_a1(KEY_B, writer, ciphertext) == plaintext
    with pytest.raises(DecryptionError):
        run(ROTATED.decrypt(ciphertext, reader))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _blocks(min_blocks: int) -> st.SearchStrategy[bytes]:
    return st.integers(min_blocks, 4).flatmap(lambda n: st.binary(min_size=16 * n, max_size=16 * n))


garbage = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=())),
    st.text(alphabet=B64_ALPHABET + B64URL_ALPHABET + "=$:"),
    st.binary(min_size=1).map(_b64),
    # a1-shaped: a real or made-up kid, random bodies (valid base64url or not).
    st.builds(
        "kamus$a1${}${}".format,
        st.sampled_from([key_id(KEY_A), key_id(KEY_B)]) | st.text(B64URL_ALPHABET, max_size=10),
        st.text(B64URL_ALPHABET + "=+/", max_size=80),
    ),
    st.builds(
        "kamus$a1${}${}".format,
        st.sampled_from([key_id(KEY_A), key_id(KEY_B)]),
        st.binary(max_size=80).map(b64url_encode),
    ),
    st.text(any_char, max_size=20).map(lambda s: PREFIX + s),
    # Kamus-shaped: iv:ct (two or more blocks, so a random body never passes the padding and
    # UTF-8 checks by chance), env$ and iv:ct with random sizes.
    st.builds("{}:{}".format, st.binary(min_size=16, max_size=16).map(_b64), _blocks(2).map(_b64)),
    st.builds(
        "{}:{}".format,
        st.binary(max_size=20).map(_b64),
        st.binary(max_size=20).filter(lambda b: len(b) != 16).map(_b64),
    ),
    st.builds(
        "env${}${}:{}".format,
        st.binary(max_size=40).map(_b64),
        st.binary(min_size=16, max_size=16).map(_b64),
        _blocks(1).map(_b64),
    ),
)


@pytest.mark.parametrize("name", sorted(MANAGERS))
@settings(max_examples=300, deadline=None)
@given(text=garbage)
def test_garbage_only_ever_raises_decryption_error(name: str, text: str) -> None:
    manager = MANAGERS[name]
    # pytest.raises lets any other exception type through, failing the test.
    with pytest.raises(DecryptionError) as info:
        run(manager.decrypt(text, "ns:app"))
    if isinstance(info.value, MalformedCiphertext):  # told from the shape, before any key
        assert str(info.value).startswith("this is not a Kamus ciphertext: ")
    else:
        assert str(info.value) == GENERIC_MESSAGE
    assert info.value.reason


# --- the single error ---------------------------------------------------------------------------


def test_decryption_error_is_generic_and_reason_is_specific() -> None:
    manager = AESKeyManager(KEY_A, [KEY_B])
    no_legacy = AESKeyManager(KEY_A, allow_legacy=False)
    kid = key_id(KEY_A)
    valid = run(manager.encrypt(b"", "a:x"))
    body = valid.split("$")[3]
    spare_bits = body[:-1] + B64URL_ALPHABET[B64URL_ALPHABET.index(body[-1]) + 1]
    cases: list[tuple[AESKeyManager, str, str]] = [
        (manager, valid, "a:y"),  # wrong identity
        (manager, f"kamus$a1${kid}", "a:x"),  # wrong field count
        (manager, f"kamus$a1${key_id(KEY_C)}${body}", "a:x"),  # unknown kid
        (manager, f"kamus$a1${kid}$A", "a:x"),  # malformed base64url
        (manager, f"kamus$a1${kid}${spare_bits}", "a:x"),  # non-canonical base64url
        (manager, f"kamus$a1${kid}${b64url_encode(bytes(20))}", "a:x"),  # too short
        (no_legacy, KAMUS_VECTOR, "sa"),  # legacy switched off
        (manager, "a:b:c", "a:x"),  # not iv:ct
        (manager, "!!!!:AAAA", "a:x"),  # malformed base64
        (manager, "AB==:AAAA", "a:x"),  # non-canonical base64
        (manager, f"AAAA:{BLOCK_B64}", "a:x"),  # bad iv length
        (manager, KAMUS_VECTOR, "sa"),  # wrong key
        (manager, "env$abc$def:ghi", "a:x"),  # envelope: not for this provider
        (manager, "QUJD", "a:x"),  # raw KMS ciphertext: not for this provider
        (manager, "", "a:x"),  # empty
    ]
    errors = [reason_of(m, c, s) for m, c, s in cases]
    # Generic once a key was used (wrong identity, wrong key); the rest are shape facts.
    generic = [e for e in errors if not isinstance(e, MalformedCiphertext)]
    assert [str(e) for e in generic] == [GENERIC_MESSAGE] * 2
    assert (generic[0], generic[1]) == (errors[0], errors[11])
    for e in errors:
        if isinstance(e, MalformedCiphertext):
            assert str(e).startswith("this is not a Kamus ciphertext: ")
    reasons = [e.reason for e in errors]
    assert len(set(reasons)) == len(cases), reasons
    for e in errors:
        assert not isinstance(e, ValueError)  # callers catching ValueError cannot swallow it
        assert base64.b64encode(KEY_A).decode() not in e.reason
        assert "a:x" not in str(e)


def test_decryption_error_str_does_not_depend_on_reason() -> None:
    assert str(DecryptionError("x")) == str(DecryptionError("something else")) == GENERIC_MESSAGE
    assert DecryptionError("x").reason == "x"


# --- classify -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ciphertext", "expected"),
    [
        ("kamus$a1$AAAAAAAA$AAAA", CiphertextFormat.AES_GCM_V1),
        ("kamus$a1$", CiphertextFormat.AES_GCM_V1),
        ("kamus$a2$AAAAAAAA$AAAA", CiphertextFormat.UNKNOWN),
        ("kamus$", CiphertextFormat.UNKNOWN),
        ("kamus$b1:x", CiphertextFormat.UNKNOWN),
        (KAMUS_VECTOR, CiphertextFormat.LEGACY_AES_CBC),
        (KAMUS_DERIVED_VECTOR, CiphertextFormat.LEGACY_AES_CBC),
        (
            "env$d3JhcHBlZA==$AAAAAAAAAAAAAAAAAAAAAA==:AAAAAAAAAAAAAAAAAAAAAA==",
            CiphertextFormat.LEGACY_ENVELOPE,
        ),
        ("c29tZSBLTVMgY2lwaGVydGV4dA==", CiphertextFormat.LEGACY_RAW),
        ("kamus", CiphertextFormat.LEGACY_RAW),
        ("", CiphertextFormat.UNKNOWN),
    ],
)
def test_classify(ciphertext: str, expected: CiphertextFormat) -> None:
    assert classify(ciphertext) is expected


def test_is_legacy() -> None:
    assert {f for f in CiphertextFormat if f.is_legacy} == {
        CiphertextFormat.LEGACY_AES_CBC,
        CiphertextFormat.LEGACY_ENVELOPE,
        CiphertextFormat.LEGACY_RAW,
    }


async def test_classify_what_we_write() -> None:
    value = await AESKeyManager(KEY_A).encrypt(b"x", "a:b")
    assert classify(value) is CiphertextFormat.AES_GCM_V1


kamus_shaped = st.one_of(
    st.binary(min_size=1).map(lambda b: (_b64(b), CiphertextFormat.LEGACY_RAW)),
    st.builds(
        lambda iv, ct: (f"{_b64(iv)}:{_b64(ct)}", CiphertextFormat.LEGACY_AES_CBC),
        st.binary(),
        st.binary(),
    ),
    st.builds(
        lambda key, iv, ct: (f"env${key}${_b64(iv)}:{_b64(ct)}", CiphertextFormat.LEGACY_ENVELOPE),
        # The wrapped key is whatever the KMS provider wrote: base64, or an iv:ct AES value.
        st.binary().map(_b64)
        | st.builds("{}:{}".format, st.binary().map(_b64), st.binary().map(_b64)),
        st.binary(),
        st.binary(),
    ),
)


@given(kamus_shaped)
def test_no_kamus_format_starts_with_our_prefix(case: tuple[str, CiphertextFormat]) -> None:
    text, expected = case
    assert not text.startswith("kamus$")
    assert classify(text) is expected
    assert classify(text).is_legacy


def test_prefix_cannot_be_base64() -> None:
    assert "$" not in B64_ALPHABET + B64URL_ALPHABET + "="
    assert PREFIX == "kamus$"


# --- strict base64 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "raw"),
    [("", b""), ("AA", b"\x00"), ("-w", b"\xfb"), ("_w", b"\xff"), ("AAAA", bytes(3))],
)
def test_b64url_decode_accepts_canonical(text: str, raw: bytes) -> None:
    assert b64url_decode(text) == raw
    assert b64url_encode(raw) == text


@pytest.mark.parametrize(
    "text",
    [
        "A",
        "AA==",
        "AA=",
        "AB",
        "AAB",
        "AAAAB",
        "AA AA",
        " AA",
        "AA\n",
        "+w",
        "/w",
        "é",
        "AA=A",
        "\x00",
        "A\ud800",
    ],
)
def test_b64url_decode_rejects_non_canonical(text: str) -> None:
    with pytest.raises(DecryptionError):
        b64url_decode(text)


@pytest.mark.parametrize(
    ("text", "raw"),
    [("", b""), ("AA==", b"\x00"), ("+w==", b"\xfb"), ("/w==", b"\xff"), ("AAAA", bytes(3))],
)
def test_b64_decode_accepts_canonical(text: str, raw: bytes) -> None:
    assert b64_decode(text) == raw


@pytest.mark.parametrize(
    "text",
    [
        "AA",
        "AA=",
        "A===",
        "AB==",
        "AAB=",
        "-w==",
        "_w==",
        " AA==",
        "AA==\n",
        "AA==AA==",
        "é",
        "A\ud800==",
    ],
)
def test_b64_decode_rejects_non_canonical(text: str) -> None:
    with pytest.raises(DecryptionError):
        b64_decode(text)


def test_non_canonical_reasons_differ_from_malformed() -> None:
    with pytest.raises(DecryptionError) as malformed:
        b64url_decode("A")
    with pytest.raises(DecryptionError) as non_canonical:
        b64url_decode("AB")
    assert malformed.value.reason == "malformed base64url"
    assert non_canonical.value.reason == "non-canonical base64url"


@given(st.binary())
def test_b64url_round_trip(raw: bytes) -> None:
    text = b64url_encode(raw)
    assert "=" not in text
    assert b64url_decode(text) == raw


@given(
    st.text(alphabet=st.characters(exclude_categories=()), max_size=12)
    | st.text(B64URL_ALPHABET + B64_ALPHABET + "=", max_size=12)
)
def test_b64url_decode_accepts_exactly_one_spelling(text: str) -> None:
    try:
        raw = b64url_decode(text)
    except DecryptionError:
        return
    assert b64url_encode(raw) == text


@given(
    st.text(alphabet=st.characters(exclude_categories=()), max_size=12)
    | st.text(B64URL_ALPHABET + B64_ALPHABET + "=", max_size=12)
)
def test_b64_decode_accepts_exactly_one_spelling(text: str) -> None:
    try:
        raw = b64_decode(text)
    except DecryptionError:
        return
    assert base64.b64encode(raw).decode() == text
