"""The committed test vectors in ``tests/vectors/`` must keep working, forever.

A change that makes an old ciphertext unreadable (or a bad one readable) fails here. Each positive
vector is checked twice: with the real provider, and with a few lines written from
``docs/ciphertext-format.md`` alone, so the document and the code cannot drift apart.
"""

import base64
import hashlib
import hmac
import itertools
import json

import pyrage
import pytest
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives import hashes, hpke, padding
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from pyrage import x25519 as age_x25519

from crypto import (
    KAMUS_PUBLIC_DEFAULT_KEY,
    AESKeyManager,
    CiphertextFormat,
    DecryptionError,
    bundle,
    classify,
    envelope,
    m1,
)
from crypto.errors import MalformedCiphertext
from crypto.recipients import AgeIdentities, open_offline
from tests.support.vectors import A1, E1, LEGACY, M1, RECIPIENTS, Vector


def manager(v: Vector) -> AESKeyManager:
    return AESKeyManager(
        base64.b64decode(v["key"], validate=True),
        [base64.b64decode(k, validate=True) for k in v["previous_keys"]],
        legacy_key_derivation=v.get("key_derivation", False),
        allow_legacy=v.get("allow_legacy", True),
    )


def keys(v: Vector) -> list[bytes]:
    return [base64.b64decode(k) for k in [v["key"], *v["previous_keys"]]]


def ids(vectors: list[Vector]) -> list[str]:
    return [v["name"] for v in vectors]


# --- the format, as docs/ciphertext-format.md states it -----------------------------------------


def hkdf(master: bytes, length: int, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), length, salt=None, info=info).derive(master)


def b64url_nopad(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def doc_open_a1(masters: list[bytes], sa_id: str, ciphertext: str) -> bytes:
    prefix, version, kid, body = ciphertext.split("$")
    assert (prefix, version) == ("kamus", "a1")
    (master,) = [m for m in masters if b64url_nopad(hkdf(m, 6, b"kamus/key-id")) == kid]
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    assert b64url_nopad(raw) == body
    nonce, sealed = raw[:12], raw[12:]
    value_key = hkdf(master, 32, b"kamus/a1/aes-256-gcm\x00" + sa_id.encode())
    aad = f"kamus$a1${kid}${sa_id}".encode()
    return AESGCM(value_key).decrypt(nonce, sealed, aad)


def doc_open_legacy(master: bytes, derivation: bool, sa_id: str, ciphertext: str) -> bytes:
    iv_b64, body_b64 = ciphertext.split(":")
    key = HKDFExpand(hashes.SHA256(), 32, sa_id.encode()).derive(master) if derivation else master
    dec = Cipher(algorithms.AES(key), modes.CBC(base64.b64decode(iv_b64))).decryptor()
    padded = dec.update(base64.b64decode(body_b64)) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def unb64url(text: str) -> bytes:
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    assert b64url_nopad(raw) == text
    return raw


def u16(text: str) -> bytes:
    return len(text.encode()).to_bytes(2, "big") + text.encode()


def doc_hpke_unwrap(masters: list[bytes], ns: str, sa: str, stanza: dict[str, str]) -> bytes | None:
    """An X25519 HPKE stanza's wrapped key, if one of ``masters`` derives its sealing key."""
    suite, generation, _ = stanza["kid"].split(":")
    for master in masters:
        label = f"kamus/sealing/x25519/{suite}/{generation[1:]}".encode()
        seed = HKDF(hashes.SHA256(), 32, salt=b"kamus-sealing", info=label).derive(master)
        private = x25519.X25519PrivateKey.from_private_bytes(seed)
        public = private.public_key().public_bytes_raw()
        if stanza["kid"].endswith(hashlib.sha256(public).hexdigest()[:16]):
            info = b"kamus/m1/hpke-x25519\x00" + u16(ns) + u16(sa) + u16(stanza["kid"])
            hpke_suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
            return hpke_suite.decrypt(unb64url(stanza["w"]), private, info=info)
    return None


def doc_age_unwrap(identities: list[str], ns: str, sa: str, stanza: dict[str, str]) -> bytes | None:
    """An age stanza's wrapped key, if one of ``identities`` is its recipient; the identity
    inside must be the one the value is opened as."""
    for text in identities:
        identity = age_x25519.Identity.from_str(text)
        if str(identity.to_public()) != stanza["kid"]:
            continue
        inner: bytes = pyrage.decrypt(unb64url(stanza["w"]), [identity])
        label = b"kamus/m1/age\x00"
        assert inner.startswith(label + u16(ns) + u16(sa))
        return inner[len(label + u16(ns) + u16(sa)) :]
    return None


def doc_open_m1(
    masters: list[bytes], sa_id: str, ciphertext: str, identities: list[str] | None = None
) -> bytes:
    """m1, from docs/ciphertext-format.md alone: X25519 HPKE stanzas (pyca's HPKE, as RFC 9180),
    age stanzas (pyrage, as C2SP age.md), and a threshold's shares (pycryptodome's Shamir, each
    16-byte half at the group's number)."""
    prefix, version, header_text, mac_text, payload_text = ciphertext.split("$")
    assert (prefix, version) == ("kamus", "m1")
    ns, sa = sa_id.split(":", 1)
    header = json.loads(unb64url(header_text))
    tag = hashlib.sha256(b"kamus-id\x00" + ns.encode() + b"\x00" + sa.encode()).hexdigest()[:8]
    assert header["id"] == tag
    opened: dict[int, bytes] = {}  # by group; 0 without a threshold
    for stanza in header["s"]:
        if stanza["k"] == "hpke-x25519":
            key = doc_hpke_unwrap(masters, ns, sa, stanza)
        elif stanza["k"] == "age":
            key = doc_age_unwrap(identities or [], ns, sa, stanza)
        else:
            continue
        if key is not None:
            opened[int(stanza.get("g", "0"))] = key
    threshold = header.get("t", 1)
    assert len(opened) >= threshold, "no stanza for these keys"
    if threshold == 1:
        data_key = next(iter(opened.values()))
    else:
        shares = list(opened.items())[:threshold]
        data_key = b"".join(
            Shamir.combine([(group, share[i : i + 16]) for group, share in shares]) for i in (0, 16)
        )
    okm = HKDF(hashes.SHA256(), 96, salt=None, info=b"kamus/m1/keys").derive(data_key)
    k_enc, k_mac, commitment = okm[:32], okm[32:64], okm[64:]
    assert hmac.compare_digest(commitment, unb64url(header["c"]))
    mac = hmac.new(k_mac, f"kamus$m1${header_text}".encode(), "sha256").digest()
    assert hmac.compare_digest(mac, unb64url(mac_text))
    payload = unb64url(payload_text)
    aad = b"kamus/m1\x00" + u16(ns) + u16(sa) + commitment
    return AESGCM(k_enc).decrypt(payload[:12], payload[12:], aad)


# --- m1 -----------------------------------------------------------------------------------------


def test_m1_vector_file_is_complete() -> None:
    vectors, negative = M1["vectors"], M1["negative"]
    assert len(vectors) >= 10
    assert len(negative) >= 14
    assert {v["kid"].split(":")[0] for v in vectors} == {"x25519", "mlkem768x25519"}
    assert len(set(ids(vectors))) == len(vectors)
    assert len(set(ids(negative))) == len(negative)


@pytest.mark.parametrize("v", M1["vectors"], ids=ids(M1["vectors"]))
async def test_m1_vector(v: Vector) -> None:
    plaintext = base64.b64decode(v["plaintext_b64"], validate=True)
    assert classify(v["ciphertext"]) is CiphertextFormat.SEALED_V1
    assert await manager(v).decrypt(v["ciphertext"], v["sa_id"]) == plaintext
    if v["kid"].startswith("x25519:"):
        assert doc_open_m1(keys(v), v["sa_id"], v["ciphertext"]) == plaintext


@pytest.mark.parametrize("v", M1["negative"], ids=ids(M1["negative"]))
async def test_m1_negative_vector(v: Vector) -> None:
    with pytest.raises(DecryptionError):
        await manager(v).decrypt(v["ciphertext"], v["sa_id"])


def test_the_committed_bundle_verifies_from_both_anchors() -> None:
    loaded = bundle.load(M1["bundle"], trust_anchor=M1["anchor"])
    assert bundle.load(M1["bundle"], trust_anchor=M1["previous_anchor"]).via == (
        M1["previous_anchor"],
    )
    vector_kids = {v["kid"] for v in M1["vectors"]}
    assert {k.kid for k in loaded.keys if k.state == "active"} <= vector_kids
    (master,) = [base64.b64decode(M1["vectors"][0]["key"])]
    assert M1["anchor"] == bundle.fingerprint(bundle.anchor_from_master(master).public_key())


# --- m1 with several recipients (issue 22) ---------------------------------------------------


def masters_of(v: Vector) -> list[bytes]:
    return [base64.b64decode(m, validate=True) for m in v["masters"]]


def age_holder(identities: list[str]) -> AgeIdentities:
    return AgeIdentities("\n".join(identities), "vectors")


def recover(v: Vector, identities: list[str]) -> bytes:
    """``kamus recover``'s way: the age stanzas alone, no cluster."""
    value = m1.parse(v["ciphertext"])
    opened = open_offline(value, age_holder(identities))
    assert opened.sa_id == v["sa_id"]
    return m1.open_value(value, opened.data_key, opened.sa_id)


def test_recipients_vector_file_is_complete() -> None:
    vectors, negative = RECIPIENTS["vectors"], RECIPIENTS["negative"]
    kinds = {
        stanza["k"]
        for v in vectors
        for stanza in json.loads(unb64url(v["ciphertext"].split("$")[2]))["s"]
    }
    assert kinds == {"hpke-x25519", "age"}
    assert {v["threshold"] for v in vectors} == {1, 2}
    assert len(negative) >= 5
    assert len(set(ids(vectors + negative))) == len(vectors) + len(negative)


@pytest.mark.parametrize("v", RECIPIENTS["vectors"], ids=ids(RECIPIENTS["vectors"]))
async def test_recipients_vector(v: Vector) -> None:
    plaintext = base64.b64decode(v["plaintext_b64"], validate=True)
    masters, identities, t = masters_of(v), v["age_identities"], v["threshold"]
    if t == 1:  # any one recipient opens it, alone
        for master in masters:
            assert await AESKeyManager(master).decrypt(v["ciphertext"], v["sa_id"]) == plaintext
            assert doc_open_m1([master], v["sa_id"], v["ciphertext"]) == plaintext
        for identity in identities:
            assert recover(v, [identity]) == plaintext
            assert doc_open_m1([], v["sa_id"], v["ciphertext"], [identity]) == plaintext
        return
    for chosen in itertools.combinations(masters, t):  # a keyring holding t clusters' keys
        first, *rest = chosen
        assert await AESKeyManager(first, rest).decrypt(v["ciphertext"], v["sa_id"]) == plaintext
        assert doc_open_m1(list(chosen), v["sa_id"], v["ciphertext"]) == plaintext
    for held in itertools.combinations(identities, t):
        assert recover(v, list(held)) == plaintext
        assert doc_open_m1([], v["sa_id"], v["ciphertext"], list(held)) == plaintext


@pytest.mark.parametrize("v", RECIPIENTS["negative"], ids=ids(RECIPIENTS["negative"]))
async def test_recipients_negative_vector(v: Vector) -> None:
    masters = masters_of(v)
    if masters:
        with pytest.raises((DecryptionError, MalformedCiphertext)):
            await AESKeyManager(masters[0], masters[1:]).decrypt(v["ciphertext"], v["sa_id"])
    if v["age_identities"]:
        with pytest.raises((DecryptionError, MalformedCiphertext)):
            recover(v, v["age_identities"])


# --- a1 -----------------------------------------------------------------------------------------


def test_a1_vector_file_is_complete() -> None:
    vectors, negative = A1["vectors"], A1["negative"]
    assert len(vectors) >= 6
    assert len(negative) >= 10
    plaintexts = [base64.b64decode(v["plaintext_b64"]) for v in vectors]
    assert b"" in plaintexts
    assert any(not p.isascii() and p.decode("utf-8", "ignore").encode() == p for p in plaintexts)
    assert any(v["previous_keys"] for v in vectors)  # a rotated key
    assert len(set(ids(vectors))) == len(vectors)
    assert len(set(ids(negative))) == len(negative)


@pytest.mark.parametrize("v", A1["vectors"], ids=ids(A1["vectors"]))
async def test_a1_vector(v: Vector) -> None:
    plaintext = base64.b64decode(v["plaintext_b64"], validate=True)
    assert classify(v["ciphertext"]) is CiphertextFormat.AES_GCM_V1
    assert v["ciphertext"].split("$")[2] == v["kid"]
    assert await manager(v).decrypt(v["ciphertext"], v["sa_id"]) == plaintext
    assert doc_open_a1(keys(v), v["sa_id"], v["ciphertext"]) == plaintext


@pytest.mark.parametrize("v", A1["negative"], ids=ids(A1["negative"]))
async def test_a1_negative_vector(v: Vector) -> None:
    with pytest.raises(DecryptionError):
        await manager(v).decrypt(v["ciphertext"], v["sa_id"])


# --- Kamus legacy AES ---------------------------------------------------------------------------


def test_legacy_vector_file_is_complete() -> None:
    vectors, negative = LEGACY["vectors"], LEGACY["negative"]
    assert len(vectors) >= 6
    assert len(negative) >= 6
    ciphertexts = {v["ciphertext"] for v in vectors}
    # The two regression vectors from Kamus's own unit tests.
    assert "C4gChhspnTa5yVqYmSitrg==:tr0Ke6OGUaUa8KZgMJg14g==" in ciphertexts
    assert "VnZkifeNdxI7NWMbjr/MZg==:qskLf4Z57DC9HBTe6+IEkA==" in ciphertexts
    assert {v["key_derivation"] for v in vectors} == {False, True}
    assert any(v["previous_keys"] for v in vectors)


@pytest.mark.parametrize("v", LEGACY["vectors"], ids=ids(LEGACY["vectors"]))
async def test_legacy_vector(v: Vector) -> None:
    plaintext = base64.b64decode(v["plaintext_b64"], validate=True)
    assert classify(v["ciphertext"]) is CiphertextFormat.LEGACY_AES_CBC
    assert await manager(v).decrypt(v["ciphertext"], v["sa_id"]) == plaintext
    # The key that made it is one of the configured keys; the document's recipe opens it.
    opened = []
    for master in keys(v):
        try:
            opened.append(doc_open_legacy(master, v["key_derivation"], v["sa_id"], v["ciphertext"]))
        except ValueError:
            continue
    assert plaintext in opened


@pytest.mark.parametrize("v", LEGACY["negative"], ids=ids(LEGACY["negative"]))
async def test_legacy_negative_vector(v: Vector) -> None:
    with pytest.raises(DecryptionError):
        await manager(v).decrypt(v["ciphertext"], v["sa_id"])


def test_vectors_do_not_use_kamus_public_default_key() -> None:
    every = [*A1["vectors"], *A1["negative"], *LEGACY["vectors"], *LEGACY["negative"]]
    for v in every:
        assert KAMUS_PUBLIC_DEFAULT_KEY not in [v["key"], *v["previous_keys"]]


# --- e1, the envelope layer of the KMS providers ------------------------------------------------


def doc_open_e1(data_key: bytes, kms: str, sa_id: str, ciphertext: str) -> bytes:
    prefix, version, kms_name, key_version, wrapped, body = ciphertext.split("$")
    assert (prefix, version, kms_name) == ("kamus", "e1", kms)
    assert wrapped
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    assert b64url_nopad(raw) == body
    nonce, sealed = raw[:12], raw[12:]
    aad = f"kamus$e1${kms}${key_version}${sa_id}".encode()
    return AESGCM(data_key).decrypt(nonce, sealed, aad)


def test_e1_vector_file_is_complete() -> None:
    vectors, negative = E1["vectors"], E1["negative"]
    assert {v["kms"] for v in vectors} == {"aws", "gcp", "azure"}
    plaintexts = [base64.b64decode(v["plaintext_b64"]) for v in vectors]
    assert b"" in plaintexts
    assert any(not p.isascii() and p.decode("utf-8", "ignore").encode() == p for p in plaintexts)
    assert any(len(p) >= 1024 for p in plaintexts)
    assert len(negative) >= 10
    assert len(set(ids(vectors))) == len(vectors)
    assert len(set(ids(negative))) == len(negative)


@pytest.mark.parametrize("v", E1["vectors"], ids=ids(E1["vectors"]))
def test_e1_vector(v: Vector) -> None:
    plaintext = base64.b64decode(v["plaintext_b64"], validate=True)
    data_key = base64.b64decode(v["data_key"], validate=True)
    assert classify(v["ciphertext"]) is CiphertextFormat.ENVELOPE_V1
    sealed = envelope.parse(v["ciphertext"], v["kms"])
    assert sealed.kms == v["kms"]
    assert sealed.key_version == v["key_version"]
    assert sealed.wrapped_key == base64.b64decode(v["wrapped_key_b64"], validate=True)
    assert envelope.open_sealed(sealed, data_key, v["sa_id"]) == plaintext
    assert doc_open_e1(data_key, v["kms"], v["sa_id"], v["ciphertext"]) == plaintext


@pytest.mark.parametrize("v", E1["negative"], ids=ids(E1["negative"]))
def test_e1_negative_vector(v: Vector) -> None:
    data_key = base64.b64decode(v["data_key"], validate=True)
    with pytest.raises(DecryptionError):
        envelope.open_sealed(envelope.parse(v["ciphertext"], v["kms"]), data_key, v["sa_id"])


@pytest.mark.parametrize("v", E1["vectors"], ids=ids(E1["vectors"]))
def test_e1_vector_reseals_to_the_documented_layout(v: Vector) -> None:
    """seal's output has the documented shape and length, and opens like the vector."""
    plaintext = base64.b64decode(v["plaintext_b64"])
    data_key = base64.b64decode(v["data_key"])
    wrapped = base64.b64decode(v["wrapped_key_b64"])
    fresh = envelope.seal(
        data_key, plaintext, v["sa_id"], kms=v["kms"], key_version=v["key_version"], wrapped=wrapped
    )
    header = f"kamus$e1${v['kms']}${v['key_version']}${b64url_nopad(wrapped)}$"
    assert fresh.startswith(header)
    assert len(fresh) == len(v["ciphertext"])  # same length; a fresh nonce makes it differ
    assert fresh != v["ciphertext"]
    assert doc_open_e1(data_key, v["kms"], v["sa_id"], fresh) == plaintext
