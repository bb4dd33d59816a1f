"""What the three KMS providers share above their KMS calls: writing a value from a data key
the service account's KMS key wrapped (``m1`` with one KMS stanza, or ``e1``), and opening
``m1``, ``e1`` and Kamus's values.

A provider supplies three things: a fresh data key and its wrapped form for an identity
(:meth:`CloudKeyManager.new_data_key`), the data key back from its wrapped form
(:meth:`CloudKeyManager.unwrap_data_key`), and Kamus's legacy values
(:meth:`CloudKeyManager.open_legacy`).

An ``m1`` value opens through the KMS stanza of this provider's kind, or through an HPKE stanza
whose sealing key this decryptor holds (values sealed offline): that one needs no KMS call.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass

from crypto import envelope, m1
from crypto.errors import MalformedCiphertext
from crypto.formats import CiphertextFormat, classify, legacy_switched_off, unreadable
from crypto.kms import KmsObserver, NullObserver
from crypto.sealing import Keyring, no_stanza_held, parse_for


@dataclass(frozen=True)
class Wrapped:
    """A fresh data key, the KMS key version that wrapped it, and the wrapped form."""

    data_key: bytes
    key_version: str
    wrapped: bytes


class CloudKeyManager(ABC):
    kind: str  # the stanza kind and e1 provider name: aws, gcp, azure
    display_name: str  # for messages: AWS KMS, Google Cloud KMS, Azure Key Vault
    legacy_reads: str  # Kamus's formats this provider reads, for messages

    def __init__(
        self,
        *,
        sealed_output: bool = True,
        allow_legacy: bool = True,
        sealing: Keyring | None = None,
        observer: KmsObserver | None = None,
    ) -> None:
        self.sealed_output = sealed_output
        self.allow_legacy = allow_legacy
        self.sealing = sealing or Keyring()
        self.observer = observer or NullObserver()

    @abstractmethod
    async def new_data_key(self, sa_id: str) -> Wrapped: ...

    @abstractmethod
    async def unwrap_data_key(self, key_version: str, wrapped: bytes, sa_id: str) -> bytes:
        """The data key; :class:`DecryptionError` if the KMS refuses it for this identity."""

    @abstractmethod
    async def open_legacy(self, ciphertext: str, sa_id: str, fmt: CiphertextFormat) -> bytes:
        """A value Kamus wrote (never empty); ``unreadable`` for any other format."""

    async def encrypt(self, plaintext: bytes, sa_id: str) -> str:
        key = await self.new_data_key(sa_id)
        if self.sealed_output:
            stanza = m1.Stanza(self.kind, key.key_version, key.wrapped)
            return m1.seal(key.data_key, [stanza], [plaintext], sa_id)[0]
        return envelope.seal(
            key.data_key,
            plaintext,
            sa_id,
            kms=self.kind,
            key_version=key.key_version,
            wrapped=key.wrapped,
        )

    async def decrypt(self, ciphertext: str, sa_id: str) -> bytes:
        fmt = classify(ciphertext)
        if fmt is CiphertextFormat.SEALED_V1:
            return await self._open_m1(ciphertext, sa_id)
        if fmt is CiphertextFormat.ENVELOPE_V1:
            sealed = envelope.parse(ciphertext, self.kind)
            data_key = await self.unwrap_data_key(sealed.key_version, sealed.wrapped_key, sa_id)
            return envelope.open_sealed(sealed, data_key, sa_id)
        if not self.allow_legacy:
            raise legacy_switched_off(envelope.E1_HEADER, "KeyManagement__AllowLegacyCiphertexts")
        if ciphertext == "":
            return b""  # Kamus answered an empty value with an empty value
        return await self.open_legacy(ciphertext, sa_id, fmt)

    def unreadable(self, ciphertext: str) -> MalformedCiphertext:
        return unreadable(
            ciphertext,
            self.display_name,
            f"{m1.M1_HEADER}, {envelope.E1_HEADER}{self.kind}$ values and {self.legacy_reads}",
        )

    async def _open_m1(self, ciphertext: str, sa_id: str) -> bytes:
        value = parse_for(ciphertext, sa_id)
        # An HPKE stanza this decryptor holds first (a value sealed offline): no KMS call.
        opened = self.sealing.try_open(value, sa_id)
        if opened is not None:
            self.observer.key_used(self.kind, opened[1])
            return opened[0]
        for stanza in value.stanzas:
            if stanza.kind == self.kind:
                if not envelope.is_key_version(stanza.kid):
                    raise MalformedCiphertext(
                        f"m1 {self.kind} stanza has a malformed key version",
                        f"the m1 value's {self.kind} stanza has a malformed key version",
                    )
                data_key = await self.unwrap_data_key(stanza.kid, stanza.wrapped, sa_id)
                return m1.open_value(value, data_key, sa_id)
        raise no_stanza_held(
            value, f"no {self.kind} stanza and no stanza for a sealing key this Kamus holds"
        )
