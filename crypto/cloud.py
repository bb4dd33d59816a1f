"""What the three KMS providers share above their KMS calls: writing a value from a data key
the service account's KMS key wrapped (``m1`` with one KMS stanza, or ``e1``), and opening
``m1``, ``e1`` and Kamus's values.

Sealing keys in the KMS modes: a random 32-byte *seed* plays the AES master key's part (the
generations and the anchor derive from it, :mod:`crypto.sealing`). It is a data key wrapped by
the provider for :data:`SEALING_IDENTITY`, stored wrapped (``KeyManagement__Sealing__WrappedSeeds``)
and unwrapped once, when the decryptor first needs it: the KMS custodies it, and only whoever
may decrypt with the sealing KMS key can use it.

A provider supplies three things: a fresh data key and its wrapped form for an identity
(:meth:`CloudKeyManager.new_data_key`), the data key back from its wrapped form
(:meth:`CloudKeyManager.unwrap_data_key`), and Kamus's legacy values
(:meth:`CloudKeyManager.open_legacy`).

An ``m1`` value opens through the KMS stanza of this provider's kind, or through an HPKE stanza
whose sealing key this decryptor holds (values sealed offline): that one needs no KMS call.
"""

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypto import envelope, m1
from crypto.datakeys import OFF, CacheLimits, DataKeyCache, EntryKey
from crypto.encoding import b64url_decode, b64url_encode
from crypto.errors import (
    DecryptionError,
    KeyDisabled,
    KeyManagerUnavailable,
    MalformedCiphertext,
)
from crypto.formats import CiphertextFormat, classify, legacy_switched_off, unreadable
from crypto.kms import KmsObserver, NullObserver
from crypto.lifecycle import (
    LEGACY_KEY_ID,
    KeyPolicy,
    Opened,
    RetiredKey,
    Rewrapped,
    RewrapStatus,
    State,
)
from crypto.recipients import Recipient
from crypto.sealing import (
    Keyring,
    Schedule,
    change_recipients,
    check_identity,
    decryptor_may_change,
    no_stanza_held,
)

# How long the KMS key version a service account's key uses now is trusted (rewrap only).
CURRENT_VERSION_SECONDS = 30.0

Cipher = TypeVar("Cipher", m1.Opener, AESGCM)

# The identity the seed is wrapped for. '_' is never in a namespace's name, so no workload's
# identity (and no KMS key name, a hash of it) can be this one.
SEALING_IDENTITY = "kamus_sealing:seed"


@dataclass(frozen=True)
class WrappedSeed:
    """A sealing seed as stored: ``<kms>$<key version>$<base64url(wrapped)>``."""

    kind: str
    key_version: str
    wrapped: bytes

    def __str__(self) -> str:
        return f"{self.kind}${self.key_version}${b64url_encode(self.wrapped)}"

    @classmethod
    def parse(cls, text: str) -> "WrappedSeed":
        parts = text.strip().split("$")
        if len(parts) != 3 or not envelope.is_key_version(parts[1]) or not parts[2]:
            raise ValueError("a wrapped sealing seed is <kms>$<key version>$<base64url>")
        try:
            return cls(parts[0], parts[1], b64url_decode(parts[2]))
        except MalformedCiphertext:
            raise ValueError("a wrapped sealing seed ends in base64url") from None


@dataclass(frozen=True)
class Wrapped:
    """A fresh data key, the KMS key version that wrapped it, and the wrapped form."""

    data_key: bytes = field(repr=False)  # never in a repr, which a traceback may show
    key_version: str
    wrapped: bytes


@dataclass(frozen=True)
class KmsRecipient:
    """A KMS key named explicitly as a recipient (``aws:<ARN>``, ``gcp:<CryptoKey name>``,
    ``azure:<key URL>``), wrapped through ``manager``'s credentials."""

    manager: "CloudKeyManager"
    key_name: str

    @property
    def name(self) -> str:
        return f"{self.manager.kind}:{self.key_name}"

    @property
    def stanza_name(self) -> str:
        return self.name

    async def wrap(self, secret: bytes, sa_id: str) -> m1.Stanza:
        wrapped = await self.manager.wrap_with_key(self.key_name, secret, sa_id)
        return m1.Stanza(self.manager.kind, self.key_name, wrapped)


class CloudKeyManager(ABC):
    kind: str  # the stanza kind and e1 provider name: aws, gcp, azure
    display_name: str  # for messages: AWS KMS, Google Cloud KMS, Azure Key Vault
    legacy_reads: str  # Kamus's formats this provider reads, for messages

    def __init__(
        self,
        *,
        sealed_output: bool = True,
        allow_legacy: bool = True,
        wrapped_seeds: Sequence[WrappedSeed] = (),
        observer: KmsObserver | None = None,
        policy: KeyPolicy | None = None,
        schedule: Schedule | None = None,
        cache: CacheLimits = OFF,
        recipient_keys: Sequence[str] = (),
    ) -> None:
        self.sealed_output = sealed_output
        # KMS keys named explicitly in m1 stanzas that this decryptor opens (multi-cluster values
        # sealed with --recipient aws:<ARN> and the like): a stanza naming any other is skipped.
        self.recipient_keys = frozenset(recipient_keys)
        # A key version listed by mistake would make this identity's own stanzas look named.
        if bad := sorted(k for k in self.recipient_keys if not self.is_key_name(k)):
            raise ValueError(
                f"KeyManagement__RecipientKeys: {bad[0][:200]!r} is not a full "
                f"{self.display_name} key name ({self.key_name_example})"
            )
        self.allow_legacy = allow_legacy
        self.observer = observer or NullObserver()
        for seed in wrapped_seeds:
            if seed.kind != self.kind:
                raise ValueError(
                    f"a sealing seed wrapped by {seed.kind} cannot be unwrapped by {self.kind}"
                )
        self.wrapped_seeds = tuple(wrapped_seeds)
        self._masters: list[bytes] | None = None
        self._unwrapping = asyncio.Lock()
        self.policy = policy or KeyPolicy()
        self._schedule = schedule
        self.data_keys: DataKeyCache[m1.Opener | AESGCM] = DataKeyCache(cache, self.observer)
        self.sealing = Keyring(schedule=schedule, policy=self.policy, cache=self.data_keys)
        self._current: dict[str, tuple[float, str]] = {}
        self._looking_up = asyncio.Lock()

    @abstractmethod
    async def new_data_key(self, sa_id: str) -> Wrapped: ...

    @abstractmethod
    async def unwrap_data_key(self, key_version: str, wrapped: bytes, sa_id: str) -> bytes:
        """The data key; :class:`DecryptionError` if the KMS refuses it for this identity."""

    @abstractmethod
    def check_wrapped(self, key_version: str, wrapped: bytes) -> None:
        """Raise :class:`MalformedCiphertext` for a wrapped key no KMS answer is needed to refuse
        (its size): a shape fact, checked before anything that depends on the caller."""

    @abstractmethod
    async def check(self) -> None:
        """Raise :class:`KeyManagerUnavailable` if the KMS cannot be reached now."""

    @abstractmethod
    async def current_key_version(self, sa_id: str) -> str:
        """The version of the service account's KMS key that new values are wrapped under."""

    @abstractmethod
    async def wrap_again(
        self, key_version: str, wrapped: bytes, data_key: bytes, sa_id: str
    ) -> Wrapped:
        """``data_key`` (which ``wrapped`` holds, under ``key_version``) wrapped under the
        service account's current key version."""

    @abstractmethod
    def is_key_name(self, name: str) -> bool:
        """Whether ``name`` has the shape of a full key name of this KMS (an ARN, a CryptoKey's
        resource name, a Key Vault key URL): a recipient named explicitly."""

    @abstractmethod
    async def wrap_with_key(self, key_name: str, secret: bytes, sa_id: str) -> bytes:
        """``secret`` wrapped by the KMS key ``key_name`` (not the service account's own), with
        ``sa_id`` bound as the provider binds it for its own keys."""

    @abstractmethod
    async def unwrap_with_key(self, key_name: str, wrapped: bytes, sa_id: str) -> bytes:
        """What :meth:`wrap_with_key` wrapped; :class:`DecryptionError` if the KMS refuses it
        for this identity."""

    def recipient(self, key_name: str) -> "KmsRecipient":
        if not self.is_key_name(key_name):
            raise ValueError(
                f"{key_name[:200]!r} is not a full {self.display_name} key name "
                f"({self.key_name_example})"
            )
        return KmsRecipient(self, key_name)

    key_name_example: str = ""

    @abstractmethod
    async def open_legacy(self, ciphertext: str, sa_id: str, fmt: CiphertextFormat) -> bytes:
        """A value Kamus wrote (never empty); ``unreadable`` for any other format."""

    async def new_sealing_seed(self) -> WrappedSeed:
        """A fresh seed, wrapped by this provider (creating its sealing KMS key if allowed).
        Only the wrapped form is returned: the seed is used in the decryptor alone."""
        key = await self.new_data_key(SEALING_IDENTITY)
        return WrappedSeed(self.kind, key.key_version, key.wrapped)

    async def sealing_masters(self) -> list[bytes]:
        """The unwrapped seeds, active first: one KMS call each, the first time only."""
        if self._masters is None:
            async with self._unwrapping:
                if self._masters is None:
                    masters = []
                    for seed in self.wrapped_seeds:
                        try:
                            masters.append(
                                await self.unwrap_data_key(
                                    seed.key_version, seed.wrapped, SEALING_IDENTITY
                                )
                            )
                        except DecryptionError as exc:
                            # A configuration fault, not the caller's value: never a 400.
                            raise KeyManagerUnavailable(
                                f"the sealing seed did not unwrap: {exc.reason}"
                            ) from exc
                    self._masters = masters
                    self.sealing = Keyring(
                        masters=masters,
                        schedule=self._schedule,
                        policy=self.policy,
                        cache=self.data_keys,
                    )
        return self._masters

    async def encrypt(self, plaintext: bytes, sa_id: str) -> str:
        return (await self._encrypt(plaintext, sa_id))[0]

    async def encrypt_many(self, plaintexts: Sequence[bytes], sa_id: str) -> list[str]:
        """Values of one document (a request, a Secret) for one identity: one data key and one
        KMS call for all of them. Each value carries the wrapped key, so it still opens alone,
        and a decryptor's cache unwraps it once for the whole document."""
        values, _ = await self._encrypt_document(plaintexts, sa_id)
        return values

    async def _encrypt(self, plaintext: bytes, sa_id: str) -> tuple[str, str]:
        """A new value in the output format, and the key version that wrapped its data key."""
        [value], key_version = await self._encrypt_document([plaintext], sa_id)
        return value, key_version

    async def _encrypt_document(
        self, plaintexts: Sequence[bytes], sa_id: str
    ) -> tuple[list[str], str]:
        key = await self.new_data_key(sa_id)
        if self.sealed_output:
            stanza = m1.Stanza(self.kind, key.key_version, key.wrapped)
            stanzas = [stanza, *self.policy.extra_stanzas(key.data_key, sa_id)]
            return m1.seal(key.data_key, stanzas, plaintexts, sa_id), key.key_version
        # e1 under one key: a random 96-bit nonce per value, far below GCM's 2^32 bound.
        values = [
            envelope.seal(
                key.data_key,
                plaintext,
                sa_id,
                kms=self.kind,
                key_version=key.key_version,
                wrapped=key.wrapped,
            )
            for plaintext in plaintexts
        ]
        return values, key.key_version

    async def decrypt(self, ciphertext: str, sa_id: str) -> bytes:
        return (await self.open(ciphertext, sa_id)).plaintext

    async def open(self, ciphertext: str, sa_id: str) -> Opened:
        """``ciphertext`` opened as ``sa_id``, with the key that opened it. A KMS key version is
        reported active: the KMS keeps its versions' states (docs/rotation.md)."""
        fmt = classify(ciphertext)
        if fmt is CiphertextFormat.SEALED_V1:
            value = m1.parse(ciphertext)
            self.policy.recipients.check(value)
            if value.threshold > 1 or await self._held_sealing(value):
                if value.threshold > 1 and self.wrapped_seeds:
                    await self.sealing_masters()
                return self.sealing.opened(value, sa_id)
            stanza = self._kms_stanza(value, sa_id)
            opener = await self._cached(
                m1.Opener, fmt, stanza.kid, stanza.wrapped, sa_id, named=self._named(stanza)
            )
            return Opened(opener.open(value, sa_id), stanza.kid, State.ACTIVE, fmt)
        if fmt is CiphertextFormat.ENVELOPE_V1:
            sealed = envelope.parse(ciphertext, self.kind)
            self.policy.check(sealed.key_version)
            aead = await self._cached(AESGCM, fmt, sealed.key_version, sealed.wrapped_key, sa_id)
            plaintext = envelope.open_with(sealed, aead, sa_id)
            return Opened(plaintext, sealed.key_version, State.ACTIVE, fmt)
        if not self.allow_legacy:
            raise legacy_switched_off(envelope.E1_HEADER, "KeyManagement__AllowLegacyCiphertexts")
        # Kamus answered an empty value with an empty value.
        plaintext = b"" if ciphertext == "" else await self.open_legacy(ciphertext, sa_id, fmt)
        return Opened(plaintext, LEGACY_KEY_ID, State.DECRYPT_ONLY, fmt)

    async def rewrap(
        self, ciphertext: str, sa_id: str, *, upgrade_legacy: bool = False, check_only: bool = False
    ) -> Rewrapped:
        """``ciphertext`` under the current key version in the output format, for the same
        identity. An m1 value keeps its payload: its data key is unwrapped once, to check the
        value and to MAC the new header (m1 authenticates its stanzas under it). Other formats
        are opened and sealed again here; the plaintext never leaves this call. Kamus's KMS
        values are bound to the service account's own key, so ``upgrade_legacy`` is not needed."""
        fmt = classify(ciphertext)
        if fmt is CiphertextFormat.SEALED_V1:
            value = m1.parse(ciphertext)
            # A value this cluster refuses to open is not "current" either (kamus verify).
            self.policy.recipients.check(value)
            if await self._held_sealing(value):
                held = self.sealing.held(value)
                assert held is not None
                return self.sealing.rewrap(ciphertext, value, held, sa_id, check_only=check_only)
            stanza, data_key = await self._open_kms_stanza(value, sa_id)
            m1.open_value(value, data_key, sa_id)
            if self._named(stanza):  # the KMS rotates a named key's versions behind its name
                return Rewrapped(RewrapStatus.UNCHANGED, stanza.kid, stanza.kid, ciphertext)
            current = await self.active_key_version(sa_id)
            if stanza.kid == current:
                return Rewrapped(RewrapStatus.UNCHANGED, stanza.kid, current, ciphertext)
            if check_only:
                return Rewrapped(RewrapStatus.STALE, stanza.kid, current, None)
            key = await self.wrap_again(stanza.kid, stanza.wrapped, data_key, sa_id)
            fresh = m1.Stanza(self.kind, key.key_version, key.wrapped)
            kept = [s for s in value.stanzas if s is not stanza]
            new = m1.rewrap(value, data_key, sa_id, [fresh, *kept])
            return Rewrapped(RewrapStatus.REWRAPPED, stanza.kid, key.key_version, new)
        opened = await self.open(ciphertext, sa_id)
        if fmt is CiphertextFormat.ENVELOPE_V1 and not self.sealed_output:
            current = await self.active_key_version(sa_id)
            if opened.key_id == current:
                return Rewrapped(RewrapStatus.UNCHANGED, current, current, ciphertext)
        if check_only:
            target = await self.active_key_version(sa_id)
            return Rewrapped(RewrapStatus.STALE, opened.key_id, target, None)
        new, target = await self._encrypt(opened.plaintext, sa_id)
        return Rewrapped(RewrapStatus.REWRAPPED, opened.key_id, target, new)

    async def change_recipients(
        self,
        ciphertext: str,
        sa_id: str,
        *,
        add: Sequence[Recipient] = (),
        remove: Sequence[str] = (),
        check_only: bool = False,
    ) -> Rewrapped:
        """An m1 value with recipients added or removed: its data key unwrapped through the
        stanza held here (a sealing key, this provider's own or a named key)."""
        value = decryptor_may_change(ciphertext)
        if await self._held_sealing(value):
            held = self.sealing.held(value)
            assert held is not None
            stanza, key = held
            check_identity(value, sa_id)
            source, data_key = key.kid, key.unwrap(stanza, sa_id)
        else:
            kms_stanza, data_key = await self._open_kms_stanza(value, sa_id)
            source = kms_stanza.kid
        return await change_recipients(
            value,
            ciphertext,
            data_key,
            sa_id,
            source,
            add=add,
            remove=remove,
            policy=self.policy.recipients,
            check_only=check_only,
        )

    async def active_key_version(self, sa_id: str) -> str:
        """The current key version, asked once per identity per 30 s: a batch's values wait
        for one lookup rather than each making its own."""
        cached = self._current.get(sa_id)
        if cached and time.monotonic() - cached[0] < CURRENT_VERSION_SECONDS:
            return cached[1]
        async with self._looking_up:
            cached = self._current.get(sa_id)
            if cached and time.monotonic() - cached[0] < CURRENT_VERSION_SECONDS:
                return cached[1]
            version = await self.current_key_version(sa_id)
            if len(self._current) > 4096:
                self._current.clear()
            self._current[sa_id] = (time.monotonic(), version)
            return version

    def unreadable(self, ciphertext: str) -> MalformedCiphertext:
        return unreadable(
            ciphertext,
            self.display_name,
            f"{m1.M1_HEADER}, {envelope.E1_HEADER}{self.kind}$ values and {self.legacy_reads}",
        )

    async def _held_sealing(self, value: m1.M1) -> bool:
        """Whether an HPKE stanza this decryptor holds opens ``value`` (a value sealed
        offline): then no KMS call is needed."""
        if self.wrapped_seeds and any(st.kind.startswith("hpke-") for st in value.stanzas):
            await self.sealing_masters()
        try:
            return self.sealing.held(value) is not None
        except RetiredKey:
            if any(s.kind == self.kind for s in value.stanzas):
                return False  # this provider's own stanza may still open it
            raise

    async def _cached(
        self,
        cipher: type[Cipher],
        fmt: CiphertextFormat,
        key_version: str,
        wrapped: bytes,
        sa_id: str,
        *,
        named: bool = False,
    ) -> Cipher:
        """The ready cipher of the data key ``wrapped`` holds for ``sa_id``: from the data-key
        cache, or unwrapped by the KMS (one call, however many requests ask at once).
        ``named``: ``key_version`` is a key named explicitly, not a version of the identity's."""
        build: Callable[[bytes], m1.Opener | AESGCM] = (
            m1.Opener if cipher is m1.Opener else envelope.cipher
        )
        unwrap_key = self.unwrap_with_key if named else self.unwrap_data_key

        async def unwrap() -> m1.Opener | AESGCM:
            try:
                return build(await unwrap_key(key_version, wrapped, sa_id))
            except KeyDisabled:
                # Its owner turned the key off: what it wrapped for this identity goes too.
                self.data_keys.forget(sa_id, key_version)
                raise

        entry = EntryKey.of(self.kind, fmt.value, key_version, wrapped, sa_id)
        found = await self.data_keys.get(entry, unwrap)
        assert isinstance(found, cipher)  # the format is part of the entry's key
        return found

    async def _open_kms_stanza(self, value: m1.M1, sa_id: str) -> tuple[m1.Stanza, bytes]:
        """This provider's stanza of ``value`` and the data key it wraps for ``sa_id``: for a
        rewrap, which needs the key itself (never cached)."""
        stanza = self._kms_stanza(value, sa_id)
        unwrap = self.unwrap_with_key if self._named(stanza) else self.unwrap_data_key
        return stanza, await unwrap(stanza.kid, stanza.wrapped, sa_id)

    def _named(self, stanza: m1.Stanza) -> bool:
        return stanza.kind == self.kind and stanza.kid in self.recipient_keys

    def _kms_stanza(self, value: m1.M1, sa_id: str) -> m1.Stanza:
        """This provider's stanza of ``value`` (a lookup: a key named explicitly that is
        configured here, else one that names a version of the identity's own key; another
        cluster's named key is skipped, never tried), checked: its shape, the key's state, and
        the identity tag (no KMS call before all of these pass)."""
        ours = [s for s in value.stanzas if s.kind == self.kind]
        stanza = next((s for s in ours if self._named(s)), None) or next(
            (s for s in ours if not self.is_key_name(s.kid)), None
        )
        if stanza is None:
            raise no_stanza_held(
                value,
                f"no {self.kind} stanza for a key of this Kamus and no stanza for a sealing key "
                "it holds",
            )
        if self._named(stanza):
            self.check_wrapped(stanza.kid, stanza.wrapped)
            self.policy.check(stanza.kid)
            check_identity(value, sa_id)
            return stanza
        if not envelope.is_key_version(stanza.kid):
            raise MalformedCiphertext(
                f"m1 {self.kind} stanza has a malformed key version",
                f"the m1 value's {self.kind} stanza has a malformed key version",
            )
        self.check_wrapped(stanza.kid, stanza.wrapped)
        self.policy.check(stanza.kid)
        check_identity(value, sa_id)
        return stanza
