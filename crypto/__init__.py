"""Kamus's crypto core: key providers and ciphertext formats.

Knows nothing of HTTP, Kubernetes or settings files; the services build providers from settings.
"""

from crypto.aes import KAMUS_PUBLIC_DEFAULT_KEY, AESKeyManager, key_id
from crypto.base import KeyManager
from crypto.errors import DecryptionError, MalformedCiphertext
from crypto.formats import CiphertextFormat, classify
from crypto.keyid import kamus_key_id

__all__ = [
    "KAMUS_PUBLIC_DEFAULT_KEY",
    "AESKeyManager",
    "CiphertextFormat",
    "DecryptionError",
    "KeyManager",
    "MalformedCiphertext",
    "classify",
    "kamus_key_id",
    "key_id",
]
