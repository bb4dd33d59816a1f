"""Strict, canonical base64.

Python's decoders ignore stray characters and unused trailing bits, so two different strings can
decode to the same bytes. For an authenticated format that would let a mutated ciphertext still
open; these helpers accept exactly one spelling of each byte string. Whitespace is refused too:
callers strip it where values enter, never here.

Their errors are :class:`MalformedCiphertext`: a shape fact. A caller decoding what a key
produced (a legacy wrapped key) must turn it back into the one :class:`DecryptionError`.
"""

import base64
import binascii

from crypto.errors import MalformedCiphertext


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url, rejecting any non-canonical spelling."""
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedCiphertext("malformed base64url") from exc
    if b64url_encode(raw) != text:
        raise MalformedCiphertext("non-canonical base64url")
    return raw


def b64_decode(text: str) -> bytes:
    """Decode standard padded base64 as .NET's Convert.FromBase64String writes it."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedCiphertext("malformed base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise MalformedCiphertext("non-canonical base64")
    return raw
