"""Values as the decryptor's routes take them in and explain them (decrypt and rewrap)."""

import string

from crypto import DecryptionError, MalformedCiphertext, m1
from crypto.errors import Refused
from crypto.lifecycle import LegacyNeedsIdentity, RetiredKey


def entered(ciphertext: str) -> str:
    """A ciphertext as it enters: surrounding whitespace is never part of one (a file's last
    newline, a YAML block's), and crypto/ stays strict. ASCII whitespace only, the set files,
    shells and editors add: no format holds anything else, and a value wrapped in Unicode
    spaces came from rich text that may have changed its inside too, so it is refused."""
    return ciphertext.strip(string.whitespace)


def undecryptable(identity: str, exc: DecryptionError) -> str:
    """What the caller is told: a shape fact as it is, anything a key decided as one message
    (crypto.errors says why)."""
    if isinstance(exc, MalformedCiphertext | RetiredKey | LegacyNeedsIdentity | Refused):
        return str(exc)
    return (
        f"the data cannot be decrypted as {identity}; check that it was encrypted for this "
        "namespace and service account with this Kamus's key"
    )


def stanza_kinds(ciphertext: str) -> list[str]:
    """The recipient kinds an m1 value carries (its audit line shows them, so an operator sees
    which values a break-glass key could open); nothing for other formats or a bad header."""
    if not ciphertext.startswith(m1.M1_HEADER):
        return []
    try:
        return m1.parse(ciphertext).kinds
    except MalformedCiphertext:
        return []
