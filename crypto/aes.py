"""The local AES key provider (``KeyManagement__Provider=AESKey``).

New values use format ``a1`` (byte layout in ``docs/ciphertext-format.md``)::

    kamus$a1$<kid>$<base64url(nonce[12] || AES-256-GCM ciphertext || tag[16])>

* The GCM key is ``HKDF-SHA256(master, salt=none, info="kamus/a1/aes-256-gcm" 0x00 sa_id)``, one
  key per ``namespace:service-account``; a leaked value key exposes no other identity.
* The associated data is ``"kamus$a1$<kid>$" + sa_id``: the version, the key id and the identity
  are all authenticated, so a value made for ``a:x`` fails for ``a:y`` and ``b:x``.
* ``kid`` names the master key (8 base64url characters derived from it, see :func:`key_id`), so
  rotation picks the right key directly instead of trying each one.

It also opens ``m1`` values sealed to the sealing keys derived from its master keys
(:mod:`crypto.sealing`). Kamus's own ``iv:ct`` CBC values are read too (see
:mod:`crypto.legacy`), unless switched off.
"""

import functools
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto import m1
from crypto.datakeys import OFF, CacheLimits, CacheObserver, DataKeyCache
from crypto.encoding import b64url_decode, b64url_encode
from crypto.errors import DecryptionError, MalformedCiphertext, shown
from crypto.formats import PREFIX, CiphertextFormat, classify, legacy_switched_off, unreadable
from crypto.legacy import cbc_decrypt, derive_legacy_key, parse_iv_ciphertext
from crypto.lifecycle import (
    KeyPolicy,
    LegacyNeedsIdentity,
    Opened,
    Rewrapped,
    RewrapStatus,
    State,
)
from crypto.m1 import M1_HEADER, parse
from crypto.recipients import Recipient
from crypto.sealing import (
    Keyring,
    Schedule,
    Suite,
    change_recipients,
    check_identity,
    decryptor_may_change,
    no_stanza_held,
)

A1_HEADER = PREFIX + "a1$"
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZES = (16, 24, 32)

# The key Kamus's Helm chart shipped as its default. It is public, so anyone can read and forge
# ciphertexts made under it; the settings layer refuses it unless explicitly allowed.
KAMUS_PUBLIC_DEFAULT_KEY = "rWnWbaFutavdoeqUiVYMNJGvmjQh31qaIej/vAxJ9G0="


def key_id(master_key: bytes) -> str:
    """A short, public name for a master key: it identifies the key without revealing it."""
    return b64url_encode(_hkdf(master_key, 6, b"kamus/key-id"))


def _hkdf(master_key: bytes, length: int, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), length, salt=None, info=info).derive(master_key)


def _value_key(master_key: bytes, sa_id: str) -> bytes:
    return _hkdf(master_key, 32, b"kamus/a1/aes-256-gcm\x00" + sa_id.encode("utf-8"))


@functools.lru_cache(maxsize=4096)
def _cipher(master_key: bytes, sa_id: str) -> AESGCM:
    """The identity's AES-GCM key, derived once: HKDF was a tenth of an encrypt request."""
    return AESGCM(_value_key(master_key, sa_id))


class AESKeyManager:
    """Keys derived from local master keys: the first is active, the rest only decrypt, and
    ``policy`` retires any of them (and any sealing generation) by key id."""

    def __init__(
        self,
        key: bytes,
        previous_keys: Sequence[bytes] = (),
        *,
        legacy_key_derivation: bool = False,
        allow_legacy: bool = True,
        sealed_output: bool = True,
        policy: KeyPolicy | None = None,
        schedule: Schedule | None = None,
        cache: CacheLimits = OFF,
        observer: CacheObserver | None = None,
    ) -> None:
        keys = [key, *previous_keys]
        for k in keys:
            if len(k) not in KEY_SIZES:
                raise ValueError(f"an AES master key must be 16, 24 or 32 bytes, not {len(k)}")
        self._keys = keys
        self._by_kid: dict[str, bytes] = {}
        for k in keys:
            self._by_kid.setdefault(key_id(k), k)
        self._active_kid = key_id(key)
        self._legacy_key_derivation = legacy_key_derivation
        self._allow_legacy = allow_legacy
        self.sealed_output = sealed_output
        self.policy = policy or KeyPolicy()
        # m1 values sealed to this Kamus's keys: each stanza an X25519 agreement to unwrap.
        self.data_keys: DataKeyCache[m1.Opener | AESGCM] = DataKeyCache(cache, observer)
        self.sealing = Keyring(
            masters=keys, schedule=schedule, policy=self.policy, cache=self.data_keys
        )

    @property
    def active_key_id(self) -> str:
        return self._active_kid

    async def encrypt(self, plaintext: bytes, sa_id: str) -> str:
        header = f"{A1_HEADER}{self._active_kid}$"
        nonce = os.urandom(NONCE_SIZE)
        sealed = _cipher(self._keys[0], sa_id).encrypt(
            nonce, plaintext, (header + sa_id).encode("utf-8")
        )
        return header + b64url_encode(nonce + sealed)

    async def check(self) -> None:
        """The key is in memory: nothing to reach."""

    async def decrypt(self, ciphertext: str, sa_id: str) -> bytes:
        return (await self.open(ciphertext, sa_id)).plaintext

    async def open(self, ciphertext: str, sa_id: str) -> Opened:
        fmt = classify(ciphertext)
        if fmt is CiphertextFormat.SEALED_V1:
            return self.sealing.opened(parse(ciphertext), sa_id)
        if fmt is CiphertextFormat.AES_GCM_V1:
            kid, plaintext = self._open_a1(ciphertext, sa_id)
            state = State.ACTIVE if kid == self._active_kid else State.DECRYPT_ONLY
            return Opened(plaintext, kid, state, fmt)
        if fmt is CiphertextFormat.LEGACY_AES_CBC:
            if not self._allow_legacy:
                raise legacy_switched_off(A1_HEADER, "KeyManagement__AES__AllowLegacyCiphertexts")
            kid, plaintext = self._open_legacy(ciphertext, sa_id)
            return Opened(plaintext, kid, State.DECRYPT_ONLY, fmt)
        reads = f"{M1_HEADER} and {A1_HEADER} values"
        if self._allow_legacy:
            reads += " and legacy Kamus iv:ciphertext values"
        raise unreadable(ciphertext, "AES", reads)

    async def rewrap(
        self, ciphertext: str, sa_id: str, *, upgrade_legacy: bool = False, check_only: bool = False
    ) -> Rewrapped:
        """``ciphertext`` under the active key in the output format, for the same identity.

        m1 keeps its payload: only the stanza for a key held here changes. a1 and Kamus's values
        are opened and sealed again here; the plaintext never leaves this call."""
        if classify(ciphertext) is CiphertextFormat.SEALED_V1:
            value = parse(ciphertext)
            # A value this cluster refuses to open is not "current" either (kamus verify).
            self.policy.recipients.check(value)
            held = self.sealing.held(value)
            if held is None:
                raise no_stanza_held(value, "no stanza for a sealing key this Kamus holds")
            return self.sealing.rewrap(ciphertext, value, held, sa_id, check_only=check_only)
        opened = await self.open(ciphertext, sa_id)
        if opened.format.is_legacy and not (self._legacy_key_derivation or upgrade_legacy):
            raise LegacyNeedsIdentity()
        if not self.sealed_output:
            target = self._active_kid
            if opened.format is CiphertextFormat.AES_GCM_V1 and opened.key_id == target:
                return Rewrapped(RewrapStatus.UNCHANGED, target, target, ciphertext)
        else:
            target = self.sealing.active(Suite.X25519).kid
        if check_only:
            return Rewrapped(RewrapStatus.STALE, opened.key_id, target, None)
        if self.sealed_output:
            new, target = self.sealing.seal(opened.plaintext, sa_id)
        else:
            new = await self.encrypt(opened.plaintext, sa_id)
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
        """An m1 value with recipients added or removed, through the sealing key held here."""
        value = decryptor_may_change(ciphertext)
        held = self.sealing.held(value)
        if held is None:
            raise no_stanza_held(value, "no stanza for a sealing key this Kamus holds")
        stanza, key = held
        check_identity(value, sa_id)
        data_key = key.unwrap(stanza, sa_id)
        return await change_recipients(
            value,
            ciphertext,
            data_key,
            sa_id,
            key.kid,
            add=add,
            remove=remove,
            policy=self.policy.recipients,
            check_only=check_only,
        )

    def _open_a1(self, ciphertext: str, sa_id: str) -> tuple[str, bytes]:
        # Every check before the tag's is a shape fact (MalformedCiphertext); see crypto.errors.
        parts = ciphertext.split("$", 4)  # bounded: a body of '$'s must not become a list
        if len(parts) != 4:
            raise MalformedCiphertext(
                "a1 ciphertext has the wrong number of fields",
                "the a1 value has the wrong number of fields",
            )
        kid, body = parts[2], parts[3]
        master = self._by_kid.get(kid)
        if master is None:
            named = shown(kid)
            raise MalformedCiphertext(
                "a1 ciphertext names a key that is not configured",
                f"it names key id {named!r}, which is not configured here"
                if named
                else "its key id field is malformed",
            )
        raw = b64url_decode(body)
        if len(raw) < NONCE_SIZE + TAG_SIZE:
            raise MalformedCiphertext(
                "a1 ciphertext is too short", "the a1 value is shorter than a nonce and a tag"
            )
        self.policy.check(kid)
        aad = f"{A1_HEADER}{kid}${sa_id}".encode()
        nonce, sealed = raw[:NONCE_SIZE], raw[NONCE_SIZE:]
        try:
            return kid, _cipher(master, sa_id).decrypt(nonce, sealed, aad)
        except InvalidTag as exc:
            raise DecryptionError("a1 authentication failed (wrong identity or tampered)") from exc

    def _open_legacy(self, ciphertext: str, sa_id: str) -> tuple[str, bytes]:
        iv, body = parse_iv_ciphertext(ciphertext)
        # Legacy values carry no key id, so each configured key is tried, active first, and the
        # retired ones last: a value only they open is refused by name.
        retired = self.policy.retired
        ordered = sorted(self._keys, key=lambda master: key_id(master) in retired)
        for master in ordered:
            key = derive_legacy_key(master, sa_id) if self._legacy_key_derivation else master
            try:
                plaintext = cbc_decrypt(key, iv, body)
            except DecryptionError:
                continue
            self.policy.check(key_id(master))
            return key_id(master), plaintext
        raise DecryptionError("legacy ciphertext did not decrypt under any configured key")
