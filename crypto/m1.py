"""Format ``m1``: a data key wrapped for one or more recipients (byte layout in
docs/ciphertext-format.md)::

    kamus$m1$<base64url(header)>$<base64url(mac)>$<base64url(nonce || AES-256-GCM ct || tag)>

* ``K``, a random 256-bit data key, per value or per sealed document. HKDF-SHA256 expands it into
  the payload key, the header MAC key and a 32-byte *commitment*.
* The header is JSON: the commitment, a short identity tag and the recipient *stanzas*, each
  wrapping ``K`` for one key (HPKE to a cluster's sealing key; other kinds later, without a new
  format). A stanza names its key, so a decryptor opens the one it holds: a lookup, never trial
  decryption.
* The MAC (HMAC-SHA256 under a key derived from ``K``) covers the header text, every stanza
  included: adding, removing or altering a stanza needs ``K``. The payload's associated data holds
  the identity and the commitment but not the stanzas, so rewrapping never touches the payload.
* Key-committing: the commitment and the MAC pin ``K``; a stanza that unwraps to any other key
  fails before the payload is opened, so every recipient reads the same plaintext or nothing.
* Any one stanza opens a value by default. With a threshold ``t`` (header field ``t``), ``K`` is
  split with Shamir's scheme into one share per recipient *group* (stanza field ``g``), and shares
  of ``t`` groups are needed: the commitment still pins ``K``, so a forged share fails the same
  way.

Nothing here knows how a stanza is wrapped or unwrapped: :mod:`crypto.sealing` does HPKE.
"""

import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.encoding import b64url_decode, b64url_encode
from crypto.errors import DecryptionError, MalformedCiphertext
from crypto.formats import PREFIX

M1_HEADER = PREFIX + "m1$"
DATA_KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
MAC_SIZE = 32
MAX_HEADER_BYTES = 64 * 1024  # a post-quantum stanza is about 1.2 KB
MAX_STANZAS = 32
MAX_GROUPS = 32
_KIND = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_KID = re.compile(r"[\x21-\x7e]{1,512}")  # printable ASCII: HPKE kids, KMS ARNs, Key Vault URLs
# An age X25519 recipient as age-keygen prints it: bech32 is case-insensitive, so any other
# spelling would name the same key and slip past a policy or a removal that names this one.
_AGE_KID = re.compile(r"age1[02-9ac-hj-np-z]{58}")
_TAG = re.compile(r"[0-9a-f]{8}")
_FIELDS = {"c", "id", "s", "xk", "t"}
_GROUP = re.compile(r"[1-9][0-9]?")


def split_identity(sa_id: str) -> tuple[str, str]:
    namespace, sep, service_account = sa_id.partition(":")
    if not sep:
        raise ValueError("an identity is '<namespace>:<service-account>'")
    return namespace, service_account


def _lv(text: str) -> bytes:
    """A length-prefixed UTF-8 string, so that no two identities encode alike."""
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("a name is at most 65535 bytes")
    return len(raw).to_bytes(2, "big") + raw


def encoded_identity(sa_id: str) -> bytes:
    namespace, service_account = split_identity(sa_id)
    return _lv(namespace) + _lv(service_account)


def identity_tag(sa_id: str) -> str:
    """8 hex digits naming the identity, so a tool can tell "made for another identity" before
    any network call. Not a secret: the identity sits beside the value in its manifest."""
    namespace, service_account = split_identity(sa_id)
    digest = hashlib.sha256(b"kamus-id\x00" + f"{namespace}\x00{service_account}".encode())
    return digest.hexdigest()[:8]


@dataclass(frozen=True)
class Stanza:
    """``K`` wrapped for one key. ``extra`` keeps fields of kinds this version does not know,
    so a value passes through a rewrap with its other stanzas intact."""

    kind: str
    kid: str
    wrapped: bytes
    extra: tuple[tuple[str, str], ...] = ()
    group: int | None = None  # with a threshold: the group whose share it wraps

    @property
    def name(self) -> str:
        """How messages and recipient policies name it: ``<kind>:<kid>``."""
        return f"{self.kind}:{self.kid}"

    def to_json(self) -> dict[str, str]:
        return {
            "k": self.kind,
            "kid": self.kid,
            **({"g": str(self.group)} if self.group is not None else {}),
            "w": b64url_encode(self.wrapped),
            **dict(self.extra),
        }


@dataclass(frozen=True)
class Keys:
    payload: bytes = field(repr=False)  # keys: never in a repr, which a traceback may show
    mac: bytes = field(repr=False)
    commitment: bytes


def derive_keys(data_key: bytes) -> Keys:
    if len(data_key) != DATA_KEY_SIZE:
        raise DecryptionError("the unwrapped data key has the wrong size")
    okm = HKDF(hashes.SHA256(), 96, salt=None, info=b"kamus/m1/keys").derive(data_key)
    return Keys(okm[:32], okm[32:64], okm[64:])


def payload_aad(sa_id: str, commitment: bytes) -> bytes:
    return b"kamus/m1\x00" + encoded_identity(sa_id) + commitment


def _mac(keys: Keys, header_text: str) -> bytes:
    return hmac.new(keys.mac, (M1_HEADER + header_text).encode("ascii"), "sha256").digest()


@dataclass(frozen=True)
class M1:
    """A parsed m1 value: its shape is valid; nothing is verified yet."""

    header_text: str
    identity_tag: str
    commitment: bytes
    stanzas: tuple[Stanza, ...]
    expired_keys: bool
    mac: bytes
    payload: bytes = field(repr=False)
    threshold: int = 1

    def stanza_for(self, owns: Callable[[Stanza], bool]) -> Stanza | None:
        return next((s for s in self.stanzas if owns(s)), None)

    @property
    def kinds(self) -> list[str]:
        """The stanza kinds present, each once: what a decrypt audit line shows."""
        return sorted({s.kind for s in self.stanzas})

    @property
    def groups(self) -> dict[int, list[Stanza]]:
        """With a threshold, the stanzas of each group."""
        out: dict[int, list[Stanza]] = {}
        for stanza in self.stanzas:
            out.setdefault(stanza.group or 0, []).append(stanza)
        return dict(sorted(out.items()))


def new_data_key() -> bytes:
    return os.urandom(DATA_KEY_SIZE)


def split_data_key(data_key: bytes, groups: int, threshold: int) -> list[bytes]:
    """``K`` in shares, one per group (group ``i`` gets the ``i``-th), any ``threshold`` of which
    give it back. pycryptodome's Shamir works on 16-byte secrets (GF(2^128)), so each half of
    ``K`` is split alone, at the same points."""
    from Crypto.Protocol.SecretSharing import Shamir  # threshold values are rare: loaded then

    if not 2 <= threshold <= groups <= MAX_GROUPS:
        raise ValueError(f"a threshold is 2 to the number of groups (at most {MAX_GROUPS})")
    halves = [Shamir.split(threshold, groups, data_key[i : i + 16]) for i in (0, 16)]
    return [low + high for (_, low), (_, high) in zip(*halves, strict=True)]


def combine_shares(shares: dict[int, bytes]) -> bytes:
    """``K`` from shares by group number: exactly a threshold's worth, each 32 bytes."""
    from Crypto.Protocol.SecretSharing import Shamir

    if any(len(share) != DATA_KEY_SIZE for share in shares.values()):
        raise DecryptionError("an unwrapped share has the wrong size")
    return b"".join(
        Shamir.combine([(group, share[i : i + 16]) for group, share in shares.items()])
        for i in (0, 16)
    )


def _check_groups(stanzas: Sequence[Stanza], threshold: int) -> None:
    grouped = [s.group for s in stanzas]
    if threshold == 1:
        if any(g is not None for g in grouped):
            raise ValueError("stanzas have groups only with a threshold")
        return
    if any(g is None for g in grouped):
        raise ValueError("with a threshold, every stanza names its group")
    # Numbers, not positions: a share is the polynomial at its group's number, so a group whose
    # stanzas were all removed leaves a gap.
    numbers = set(grouped)
    if not all(1 <= g <= MAX_GROUPS for g in numbers if g) or len(numbers) < threshold:
        raise ValueError(
            f"the value needs shares of {threshold} groups but would hold {len(numbers)}"
        )


def _header_text(
    data_key_commitment: bytes,
    sa_id: str,
    stanzas: Sequence[Stanza],
    expired_keys: bool,
    threshold: int = 1,
) -> str:
    if not stanzas:
        raise ValueError("an m1 value needs at least one stanza")
    if len(stanzas) > MAX_STANZAS:
        raise ValueError(f"an m1 value holds at most {MAX_STANZAS} stanzas")
    _check_groups(stanzas, threshold)
    header: dict[str, object] = {
        "c": b64url_encode(data_key_commitment),
        "id": identity_tag(sa_id),
        "s": [s.to_json() for s in stanzas],
    }
    if threshold > 1:
        header["t"] = threshold
    if expired_keys:
        header["xk"] = True  # sealed to an expired bundle on purpose: reviewers should see it
    return b64url_encode(json.dumps(header, separators=(",", ":")).encode("utf-8"))


class Sealer:
    """Values for one identity under one data key: the header and its MAC made once, a fresh
    nonce for each value. Each value carries the stanzas, so it opens alone."""

    def __init__(
        self,
        data_key: bytes,
        stanzas: Sequence[Stanza],
        sa_id: str,
        *,
        expired_keys: bool = False,
        threshold: int = 1,
    ) -> None:
        keys = derive_keys(data_key)
        header = _header_text(keys.commitment, sa_id, stanzas, expired_keys, threshold)
        self._prefix = f"{M1_HEADER}{header}${b64url_encode(_mac(keys, header))}$"
        self._cipher = AESGCM(keys.payload)
        self._aad = payload_aad(sa_id, keys.commitment)

    def seal(self, plaintext: bytes) -> str:
        nonce = os.urandom(NONCE_SIZE)
        return self._prefix + b64url_encode(
            nonce + self._cipher.encrypt(nonce, plaintext, self._aad)
        )


def seal(
    data_key: bytes,
    stanzas: Sequence[Stanza],
    plaintexts: Iterable[bytes],
    sa_id: str,
    *,
    expired_keys: bool = False,
    threshold: int = 1,
) -> list[str]:
    """m1 values of ``plaintexts`` under one data key: one header and one MAC for all."""
    sealer = Sealer(data_key, stanzas, sa_id, expired_keys=expired_keys, threshold=threshold)
    return [sealer.seal(plaintext) for plaintext in plaintexts]


def _malformed(fact: str) -> MalformedCiphertext:
    return MalformedCiphertext(f"m1 ciphertext: {fact}", f"the m1 value's {fact}")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _malformed("header repeats a field")
    return dict(pairs)


def _parse_stanza(raw: object) -> Stanza:
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise _malformed("header has a stanza that is not an object of strings")
    kind, kid, wrapped = raw.get("k"), raw.get("kid"), raw.get("w")
    if not (isinstance(kind, str) and _KIND.fullmatch(kind)):
        raise _malformed("header has a stanza without a valid kind")
    if not (isinstance(kid, str) and _KID.fullmatch(kid)):
        raise _malformed("header has a stanza without a valid key id")
    if kind == "age" and not _AGE_KID.fullmatch(kid):
        raise _malformed("header has an age stanza whose key id is not a lower-case age1 recipient")
    if not isinstance(wrapped, str) or not wrapped:
        raise _malformed("header has a stanza without a wrapped key")
    group = raw.get("g")
    if group is not None and not _GROUP.fullmatch(group):
        raise _malformed("header has a stanza with a malformed group")
    extra = tuple(sorted((k, v) for k, v in raw.items() if k not in ("k", "kid", "w", "g")))
    return Stanza(kind, kid, b64url_decode(wrapped), extra, int(group) if group else None)


def parse(ciphertext: str) -> M1:
    """The fields of an m1 value, or :class:`MalformedCiphertext`: nothing here uses a key."""
    parts = ciphertext.split("$", 5)  # bounded: a body of '$'s must not become a list
    if len(parts) != 5 or parts[0] + "$" + parts[1] + "$" != M1_HEADER:
        raise _malformed("number of fields is wrong")
    header_text, mac_text, payload_text = parts[2], parts[3], parts[4]
    if len(header_text) > MAX_HEADER_BYTES * 4 // 3 + 4:
        raise _malformed("header is too long")
    try:
        header = json.loads(b64url_decode(header_text), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        if isinstance(exc, MalformedCiphertext):
            raise
        raise _malformed("header is not JSON") from None
    if not isinstance(header, dict) or not _FIELDS >= header.keys() >= {"c", "id", "s"}:
        raise _malformed("header does not have exactly the fields c, id, s (and xk, t)")
    tag, commitment, stanzas, expired = header["id"], header["c"], header["s"], header.get("xk")
    if not (isinstance(tag, str) and _TAG.fullmatch(tag)):
        raise _malformed("identity tag is malformed")
    if not isinstance(commitment, str) or len(commitment_bytes := b64url_decode(commitment)) != 32:
        raise _malformed("commitment is malformed")
    if not isinstance(stanzas, list) or not 1 <= len(stanzas) <= MAX_STANZAS:
        raise _malformed(f"header does not hold 1 to {MAX_STANZAS} stanzas")
    if expired not in (None, True):
        raise _malformed("expired-keys flag is malformed")
    threshold = header.get("t", 1)
    if type(threshold) is not int or not (2 if "t" in header else 1) <= threshold <= MAX_GROUPS:
        raise _malformed("threshold is malformed")
    mac, payload = b64url_decode(mac_text), b64url_decode(payload_text)
    if len(mac) != MAC_SIZE:
        raise _malformed("MAC has the wrong length")
    if len(payload) < NONCE_SIZE + TAG_SIZE:
        raise _malformed("payload is shorter than a nonce and a tag")
    parsed = tuple(_parse_stanza(s) for s in stanzas)
    try:
        _check_groups(parsed, threshold)
    except ValueError:
        raise _malformed("stanza groups do not match its threshold") from None
    return M1(
        header_text=header_text,
        identity_tag=tag,
        commitment=commitment_bytes,
        stanzas=parsed,
        expired_keys=expired is True,
        mac=mac,
        payload=payload,
        threshold=threshold,
    )


class Opener:
    """A data key's m1 ciphers, ready to open any value whose header commits to it: what the
    data-key cache keeps (crypto/datakeys.py). The payload and MAC keys go straight into
    OpenSSL objects, and the raw data key is not kept."""

    def __init__(self, data_key: bytes) -> None:
        keys = derive_keys(data_key)
        self._commitment = keys.commitment
        self._mac = crypto_hmac.HMAC(keys.mac, hashes.SHA256())
        self._payload = AESGCM(keys.payload)

    def verify(self, value: M1) -> None:
        """Constant-time checks: a mismatch says nothing about where the keys differ."""
        if not hmac.compare_digest(self._commitment, value.commitment):
            raise DecryptionError("m1 commitment does not match the data key")
        mac = self._mac.copy()
        mac.update((M1_HEADER + value.header_text).encode("ascii"))
        try:
            mac.verify(value.mac)
        except InvalidSignature:
            raise DecryptionError("m1 header MAC failed (a stanza or field was altered)") from None

    def open(self, value: M1, sa_id: str) -> bytes:
        self.verify(value)
        nonce, sealed = value.payload[:NONCE_SIZE], value.payload[NONCE_SIZE:]
        try:
            return self._payload.decrypt(nonce, sealed, payload_aad(sa_id, self._commitment))
        except InvalidTag as exc:
            raise DecryptionError("m1 authentication failed (wrong identity or tampered)") from exc


def open_value(value: M1, data_key: bytes, sa_id: str) -> bytes:
    return Opener(data_key).open(value, sa_id)


def rewrap(value: M1, data_key: bytes, sa_id: str, stanzas: Sequence[Stanza]) -> str:
    """``value`` with a new set of stanzas and the same payload: it needs the data key, which
    the header must commit to, and never the plaintext."""
    open_value(value, data_key, sa_id)  # the payload must open as sa_id, or nothing is rewritten
    keys = derive_keys(data_key)
    header = _header_text(keys.commitment, sa_id, stanzas, value.expired_keys, value.threshold)
    return f"{M1_HEADER}{header}${b64url_encode(_mac(keys, header))}${b64url_encode(value.payload)}"
