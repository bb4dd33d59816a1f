"""Key states, and what opening or rewrapping a value reports (docs/rotation.md).

Every key a value can name has a state:

* ``active``: new values are made under it (the AES ``Key``, the current sealing generation and
  the one after it, the KMS key version the KMS uses now);
* ``decrypt-only``: it still opens values (``PreviousKeys``, older sealing generations, older
  KMS key versions), and ``kamus rewrap`` moves them to the active key;
* ``retired``: an operator listed it in ``KeyManagement__RetiredKeyIds``; its values are refused
  on decrypt *and* on rewrap. Refusing the rewrap matters when a key is retired because it
  leaked: whoever holds it can forge values under it, and a rewrap would launder a forgery into
  the active key.

A key id is what a value names, and what ``kamus_decryptions_total{key_id}`` shows: an AES master
key's 8-character id, a sealing key's ``x25519:g3:…``, or the KMS key version that wrapped the
data key (AWS: the key's id; GCP: the version number; Azure: the version).
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from crypto import m1
from crypto.errors import DecryptionError, MalformedCiphertext
from crypto.formats import CiphertextFormat, classify
from crypto.recipients import AgeRecipient, RecipientPolicy

LEGACY_KEY_ID = "legacy"  # Kamus's KMS values name no key version


class State(StrEnum):
    ACTIVE = "active"
    DECRYPT_ONLY = "decrypt-only"
    RETIRED = "retired"


class RetiredKey(DecryptionError):
    """The value names a key the operator retired. A configuration fact, like a key id that is
    not configured: said to the caller as it is, with what to do."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"key {key_id[:100]} is retired (KeyManagement__RetiredKeyIds)")
        self.key_id = key_id

    def __str__(self) -> str:
        return (
            f"the value is under key id {self.key_id!r}, which this Kamus has retired "
            "(KeyManagement__RetiredKeyIds): encrypt the value again, or have the operator "
            "make the key decrypt-only again and run `kamus rewrap` on it"
        )


class LegacyNeedsIdentity(DecryptionError):
    """A Kamus AES value made without key derivation opens for every identity: rewrapping it
    binds it to the requested one, which only a cluster-wide grant may ask for."""

    def __init__(self) -> None:
        super().__init__("legacy value without key derivation: upgradeLegacy was not asked")

    def __str__(self) -> str:
        return (
            "this Kamus AES value was made without key derivation, so it is bound to no service "
            "account; rewrapping it binds it to the one requested, which needs upgradeLegacy "
            "(kamus rewrap --upgrade-legacy) and the cluster-wide permission to update "
            "kamussecrets/legacy"
        )


@dataclass(frozen=True)
class KeyPolicy:
    """The operator's word on keys: which are retired, and which recipients an m1 value must,
    or must not, carry."""

    retired: frozenset[str] = frozenset()
    recipients: RecipientPolicy = field(default_factory=RecipientPolicy)
    # Break-glass recipients every new m1 value of this Kamus also gets (the encryptor's, and a
    # decryptor's when it rewraps an older format), so a RequiredRecipients policy can hold.
    extra: tuple[AgeRecipient, ...] = ()

    @classmethod
    def of(
        cls,
        retired: Iterable[str],
        *,
        required: Iterable[str] = (),
        forbidden: Iterable[str] = (),
        extra: Iterable[AgeRecipient] = (),
    ) -> "KeyPolicy":
        def clean(items: Iterable[str]) -> tuple[str, ...]:
            return tuple(k.strip() for k in items if k.strip())

        return cls(
            frozenset(clean(retired)),
            RecipientPolicy(clean(required), clean(forbidden)),
            tuple(extra),
        )

    def extra_stanzas(self, data_key: bytes, sa_id: str) -> list[m1.Stanza]:
        return [r.wrap_now(data_key, sa_id) for r in self.extra]

    def check(self, key_id: str) -> None:
        if key_id in self.retired:
            raise RetiredKey(key_id)


@dataclass(frozen=True)
class Opened:
    """A value opened as its identity: the plaintext, and which key, in which state, did it."""

    plaintext: bytes
    key_id: str
    state: State
    format: CiphertextFormat


class RewrapStatus(StrEnum):
    REWRAPPED = "rewrapped"
    UNCHANGED = "unchanged"  # already the active format under an active key
    STALE = "stale"  # check only: it opens, and a rewrap would change it


@dataclass(frozen=True)
class Rewrapped:
    """The outcome of rewrapping one value. ``ciphertext`` is the new value, the old one when
    unchanged (checked or not), ``None`` when checked and stale; never a plaintext."""

    status: RewrapStatus
    source_key_id: str
    target_key_id: str
    ciphertext: str | None


def named_key_ids(ciphertext: str) -> tuple[CiphertextFormat, tuple[tuple[str, str], ...]]:
    """What a value says about its keys, from its shape alone: its format and, for each key it
    names, ``(kind, key id)``: ``("aes", kid)`` for a1, ``(kms, version)`` for e1, each stanza's
    ``(kind, kid)`` for m1, nothing for Kamus's formats. ``MalformedCiphertext`` for a value
    that is not one (a tool checking a repository needs no key for this)."""
    fmt = classify(ciphertext)
    if fmt is CiphertextFormat.SEALED_V1:
        return fmt, tuple((s.kind, s.kid) for s in m1.parse(ciphertext).stanzas)
    parts = ciphertext.split("$", 5)
    if fmt is CiphertextFormat.AES_GCM_V1 and len(parts) == 4:
        return fmt, (("aes", parts[2]),)
    if fmt is CiphertextFormat.ENVELOPE_V1 and len(parts) == 6:
        return fmt, ((parts[2], parts[3]),)
    if fmt.is_legacy:
        return fmt, ()
    raise MalformedCiphertext(f"not a Kamus ciphertext ({fmt})")
