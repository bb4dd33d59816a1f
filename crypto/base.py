"""The interface every key provider implements."""

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from crypto.lifecycle import Opened, Rewrapped
from crypto.recipients import Recipient


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


@runtime_checkable
class KeyLifecycle(Protocol):
    """A key manager that says which key opened a value, and moves values to the active key
    (every provider here; a test's stand-in may offer only :class:`KeyManager`)."""

    async def open(self, ciphertext: str, sa_id: str) -> Opened: ...

    async def rewrap(
        self, ciphertext: str, sa_id: str, *, upgrade_legacy: bool = False, check_only: bool = False
    ) -> Rewrapped:
        """``ciphertext`` under the active key, in the output format, for the same identity;
        :class:`crypto.DecryptionError` if it does not open as ``sa_id``. Never a plaintext."""
        ...


@runtime_checkable
class RecipientEditor(Protocol):
    """A key manager that adds and removes the recipients of m1 values it opens (every
    provider here), keeping their payload: ``kamus recipients`` through the decryptor."""

    async def change_recipients(
        self,
        ciphertext: str,
        sa_id: str,
        *,
        add: Sequence[Recipient] = (),
        remove: Sequence[str] = (),
        check_only: bool = False,
    ) -> Rewrapped: ...
