"""Format ``e1``: envelope encryption under a cloud KMS (byte layout in docs/ciphertext-format.md).

::

    kamus$e1$<kms>$<key version>$<base64url(wrapped data key)>$<base64url(nonce || ct || tag)>

* A fresh 256-bit data key per value; the plaintext is AES-256-GCM under it, so there is no size
  limit and exactly one KMS call per encrypt and per decrypt.
* The GCM associated data is ``"kamus$e1$<kms>$<key version>$" + sa_id``: the value opens only as
  the identity it was made for, whatever the KMS.
* The data key is wrapped by the service account's own KMS key, which also binds it to the
  identity where the KMS can (AWS encryption context, GCP AAD, a digest inside the Azure blob).
* ``kms`` names the provider (``aws``, ``gcp``, ``azure``); ``key version`` the KMS key (version)
  that wrapped the data key, for audits and for KMSs that need it to unwrap.
"""

import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypto.encoding import b64url_decode, b64url_encode
from crypto.errors import DecryptionError, MalformedCiphertext, shown
from crypto.formats import PREFIX

E1_HEADER = PREFIX + "e1$"
DATA_KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
_KEY_VERSION = re.compile(r"[A-Za-z0-9-]{0,64}")


@dataclass(frozen=True)
class Envelope:
    kms: str
    key_version: str
    wrapped_key: bytes
    sealed: bytes  # nonce || ciphertext || tag

    @property
    def header(self) -> str:
        return f"{E1_HEADER}{self.kms}${self.key_version}$"


def new_data_key() -> bytes:
    return os.urandom(DATA_KEY_SIZE)


def is_key_version(text: str) -> bool:
    return bool(_KEY_VERSION.fullmatch(text))


def seal(
    data_key: bytes, plaintext: bytes, sa_id: str, *, kms: str, key_version: str, wrapped: bytes
) -> str:
    if len(data_key) != DATA_KEY_SIZE:
        raise ValueError("the data key must be 32 bytes")
    if not _KEY_VERSION.fullmatch(key_version):
        raise ValueError("a key version is at most 64 letters, digits and '-'")
    header = f"{E1_HEADER}{kms}${key_version}$"
    nonce = os.urandom(NONCE_SIZE)
    sealed = AESGCM(data_key).encrypt(nonce, plaintext, (header + sa_id).encode("utf-8"))
    return f"{header}{b64url_encode(wrapped)}${b64url_encode(nonce + sealed)}"


def parse(ciphertext: str, kms: str) -> Envelope:
    """The fields of an e1 value, or :class:`MalformedCiphertext`: nothing here uses a key."""
    parts = ciphertext.split("$", 6)  # bounded: a body of '$'s must not become a list
    if len(parts) != 6 or parts[0] + "$" + parts[1] + "$" != E1_HEADER:
        raise MalformedCiphertext(
            "e1 ciphertext has the wrong number of fields",
            "the e1 value has the wrong number of fields",
        )
    if parts[2] != kms:
        # Cut short: the reason reaches the audit log, and the field is the caller's text.
        maker = shown(parts[2])
        raise MalformedCiphertext(
            f"e1 ciphertext was made by the {parts[2][:32]!r} provider, not {kms}",
            f"it was made with the {maker!r} key provider, and this Kamus uses {kms}"
            if maker
            else f"it names a malformed key provider, and this Kamus uses {kms}",
        )
    if not _KEY_VERSION.fullmatch(parts[3]):
        raise MalformedCiphertext(
            "e1 ciphertext has a malformed key version", "the e1 value has a malformed key version"
        )
    wrapped, sealed = b64url_decode(parts[4]), b64url_decode(parts[5])
    if not wrapped or len(sealed) < NONCE_SIZE + TAG_SIZE:
        raise MalformedCiphertext(
            "e1 ciphertext is too short",
            "the e1 value has no wrapped key or is shorter than a nonce and a tag",
        )
    return Envelope(kms, parts[3], wrapped, sealed)


def cipher(data_key: bytes) -> AESGCM:
    """The data key's cipher, ready: what the data-key cache keeps (crypto/datakeys.py)."""
    if len(data_key) != DATA_KEY_SIZE:
        raise DecryptionError("the unwrapped data key has the wrong size")
    return AESGCM(data_key)


def open_with(envelope: Envelope, aead: AESGCM, sa_id: str) -> bytes:
    nonce, sealed = envelope.sealed[:NONCE_SIZE], envelope.sealed[NONCE_SIZE:]
    aad = (envelope.header + sa_id).encode("utf-8")
    try:
        return aead.decrypt(nonce, sealed, aad)
    except InvalidTag as exc:
        raise DecryptionError("e1 authentication failed (wrong identity or tampered)") from exc


def open_sealed(envelope: Envelope, data_key: bytes, sa_id: str) -> bytes:
    return open_with(envelope, cipher(data_key), sa_id)
