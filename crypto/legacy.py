"""Reading what Kamus wrote: unauthenticated AES-256-CBC with PKCS#7 padding.

Kamus (``src/key-managment/SymmetricKeyManagement.cs``, ``RijndaelUtils.cs``) encrypted the UTF-8
bytes of a string with .NET's ``RijndaelManaged`` defaults (CBC, PKCS#7, 16-byte random IV) and
wrote ``Convert.ToBase64String(iv) + ":" + Convert.ToBase64String(ct)``. With key derivation on,
the key was HKDF-SHA256 *expand only* of the master key, with the identity as ``info``.

We only ever read this format. CBC without a MAC cannot tell a wrong key from a right one for
sure, so a plaintext is accepted only if its padding is valid and it is valid UTF-8 (Kamus only
ever encrypted .NET strings). Parsing may say what is wrong with a value's shape
(:class:`MalformedCiphertext`); everything :func:`cbc_decrypt` finds is the one
:class:`DecryptionError`, or the padding check would be a padding oracle.
"""

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from crypto.encoding import b64_decode
from crypto.errors import DecryptionError, MalformedCiphertext

AES_BLOCK = 16


def derive_legacy_key(master_key: bytes, sa_id: str) -> bytes:
    """Kamus's ``UseKeyDeriviation``: HKDF-SHA256 expand-only, ``info = "<ns>:<sa>"``."""
    return HKDFExpand(hashes.SHA256(), 32, sa_id.encode("utf-8")).derive(master_key)


def parse_iv_ciphertext(text: str) -> tuple[bytes, bytes]:
    """Split ``b64(iv):b64(ct)`` and check the sizes CBC needs."""
    parts = text.split(":", 2)  # bounded: a body of ':'s must not become a list
    if len(parts) != 2:
        raise MalformedCiphertext(
            "legacy ciphertext is not iv:ciphertext", "the legacy value is not iv:ciphertext"
        )
    iv, body = b64_decode(parts[0]), b64_decode(parts[1])
    if len(iv) != AES_BLOCK or not body or len(body) % AES_BLOCK:
        # Sizes CBC fixes, known before any key: unlike the padding, they are no oracle.
        raise MalformedCiphertext(
            "legacy ciphertext has a bad iv or length",
            "the legacy value's iv is not 16 bytes or its body not whole 16-byte blocks",
        )
    return iv, body


def cbc_decrypt(key: bytes, iv: bytes, body: bytes) -> bytes:
    if len(key) not in (16, 24, 32):  # an unwrapped legacy data key can be anything
        raise DecryptionError("legacy data key has the wrong size")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(body) + decryptor.finalize()
    unpadder = padding.PKCS7(algorithms.AES.block_size).unpadder()
    try:
        plaintext = unpadder.update(padded) + unpadder.finalize()
        plaintext.decode("utf-8")
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise DecryptionError("legacy ciphertext did not decrypt") from exc
    return plaintext


def parse_legacy_envelope(text: str) -> tuple[str, bytes, bytes]:
    """Kamus's ``env$<wrapped data key>$<b64 iv>:<b64 ct>`` (``EnvelopeEncryptionUtils.Wrap``).

    The wrapped key is returned as the base64 text Kamus wrote; what it wraps depends on the KMS.
    """
    if not text.startswith("env$"):
        raise MalformedCiphertext("not a legacy envelope", "it is not a legacy env$ value")
    wrapped, separator, iv_ciphertext = text[4:].rpartition("$")
    if not separator or not wrapped:
        raise MalformedCiphertext(
            "legacy envelope has no wrapped key", "the legacy env$ value has no wrapped key"
        )
    iv, body = parse_iv_ciphertext(iv_ciphertext)
    return wrapped, iv, body
