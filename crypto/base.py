"""The interface every key provider implements."""

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
