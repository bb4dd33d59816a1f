"""The interface every key provider implements."""

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class KeyManager(Protocol):
    """Encrypts for, and decrypts as, one ``"<namespace>:<service-account>"`` identity.

    ``decrypt`` raises :class:`crypto.DecryptionError` for every ciphertext that does not open for
    ``sa_id``: its subclass :class:`crypto.MalformedCiphertext` when the value's shape alone says
    so, before any key is used, and the one plain error whatever a key's verdict was.
    """

    async def encrypt(self, plaintext: bytes, sa_id: str) -> str: ...

    async def decrypt(self, ciphertext: str, sa_id: str) -> bytes: ...

    async def check(self) -> None:
        """Raise :class:`crypto.errors.KeyManagerUnavailable` if the key manager cannot be
        reached now (readiness). Needs no permission beyond what decrypting needs."""
        ...


@runtime_checkable
class DocumentSealer(Protocol):
    """A key manager that seals several values for one identity under one data key (one wrap
    per document, not per value): the batch paths use it when the provider offers it."""

    async def encrypt_many(self, plaintexts: Sequence[bytes], sa_id: str) -> list[str]: ...
