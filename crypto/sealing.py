"""Sealing keys: a cluster's HPKE key pairs, in generations, and the m1 stanzas they wrap.

* Suites (RFC 9180, Base mode, single shot as pyca/cryptography offers it):
  ``x25519``: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM; and the opt-in post-quantum
  ``mlkem768x25519``: the ML-KEM-768 + X25519 hybrid KEM with the same KDF and AEAD.
* A key id names the suite, the generation and the public key:
  ``x25519:g3:<16 hex of SHA-256(public key)>``. A decryptor finds the private key by it.
* HPKE has no associated data in this API, so the identity and the key id ride in ``info``
  (RFC 9180 §8.1): a stanza made for ``a:x`` does not unwrap as ``b:y``.
* Generations follow a schedule: generation ``g`` activates at ``EPOCH + g·period`` and expires
  two periods later, so a bundle fetched one period ago still seals to a key that is used. Time
  never makes a decryptor refuse a value: only an operator retires a key.
* A generation's private key is derived from a master: the AES master key (nothing new to back
  up), or in the KMS modes a random seed the KMS keeps wrapped (:mod:`crypto.cloud`).
"""

import functools
import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto import m1
from crypto.datakeys import DataKeyCache, EntryKey
from crypto.errors import DecryptionError, MalformedCiphertext, Refused
from crypto.formats import CiphertextFormat
from crypto.lifecycle import KeyPolicy, Opened, RetiredKey, Rewrapped, RewrapStatus, State
from crypto.recipients import (
    OpenedOffline,
    Recipient,
    RecipientPolicy,
    Unwrap,
    check_held,
    gather_data_key,
    not_present,
    restanza,
)

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
DEFAULT_PERIOD = timedelta(days=90)
MAX_GENERATION = 100_000  # ~27 000 years of daily renewals: a bound for derivation, not a policy
_KID = re.compile(r"(x25519|mlkem768x25519):g(0|[1-9][0-9]{0,5}):([0-9a-f]{16})")
_X25519_PUBLIC = 32
_MLKEM768_PUBLIC = 1184


class Suite(StrEnum):
    X25519 = "hpke-x25519-sha256-aes256gcm"
    MLKEM768_X25519 = "hpke-mlkem768x25519-sha256-aes256gcm"

    @property
    def short(self) -> str:
        return "x25519" if self is Suite.X25519 else "mlkem768x25519"

    @property
    def stanza_kind(self) -> str:
        return "hpke-" + self.short

    @property
    def post_quantum(self) -> bool:
        return self is Suite.MLKEM768_X25519

    @property
    def hpke(self) -> hpke.Suite:
        return _HPKE[self]

    @classmethod
    def of_short(cls, short: str) -> "Suite":
        return cls.X25519 if short == "x25519" else cls.MLKEM768_X25519


_HPKE = {
    suite: hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    for suite, kem in [
        (Suite.X25519, hpke.KEM.X25519),
        (Suite.MLKEM768_X25519, hpke.KEM.MLKEM768_X25519),
    ]
}

PublicKey = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey
PrivateKey = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey


def kid_for(suite: Suite, generation: int, public: bytes) -> str:
    return f"{suite.short}:g{generation}:{hashlib.sha256(public).hexdigest()[:16]}"


def parse_kid(kid: str) -> tuple[Suite, int] | None:
    """The suite and generation a key id names; None for anything else, a generation past the
    bound included: a value names whatever it likes, and must not reach ``derive`` with it."""
    match = _KID.fullmatch(kid)
    if match is None or int(match[2]) > MAX_GENERATION:
        return None
    return Suite.of_short(match[1]), int(match[2])


@functools.lru_cache(maxsize=64)  # an encryptor seals to one or two keys, again and again
def load_public(suite: Suite, public: bytes) -> PublicKey:
    """The key for raw bytes: X25519's 32, or ML-KEM-768's 1184 followed by X25519's 32."""
    if suite is Suite.X25519:
        if len(public) != _X25519_PUBLIC:
            raise ValueError("an X25519 public key is 32 bytes")
        return x25519.X25519PublicKey.from_public_bytes(public)
    if len(public) != _MLKEM768_PUBLIC + _X25519_PUBLIC:
        raise ValueError("an ML-KEM-768+X25519 public key is 1216 bytes")
    return hpke.MLKEM768X25519PublicKey(
        mlkem.MLKEM768PublicKey.from_public_bytes(public[:_MLKEM768_PUBLIC]),
        x25519.X25519PublicKey.from_public_bytes(public[_MLKEM768_PUBLIC:]),
    )


def hpke_info(kind: str, kid: str, sa_id: str) -> bytes:
    return b"kamus/m1/" + kind.encode() + b"\x00" + m1.encoded_identity(sa_id) + m1._lv(kid)


@dataclass(frozen=True)
class Schedule:
    """When each generation is used. ``period`` zero: generation 0 forever, never expiring."""

    period: timedelta = DEFAULT_PERIOD

    def generation_at(self, when: datetime) -> int:
        if not self.period:
            return 0
        return max(0, int((when - EPOCH) / self.period))

    def activates(self, generation: int) -> datetime:
        return EPOCH + generation * self.period

    def expires(self, generation: int) -> datetime | None:
        return self.activates(generation) + 2 * self.period if self.period else None


class KeyState(StrEnum):
    NEXT = "next"
    ACTIVE = "active"
    DECRYPT_ONLY = "decrypt-only"


@dataclass(frozen=True)
class SealingPublicKey:
    """One generation's public key as a bundle lists it."""

    kid: str
    suite: Suite
    public: bytes
    state: KeyState
    activates: datetime
    expires: datetime | None

    def usable_at(self, when: datetime) -> bool:
        return self.state is not KeyState.DECRYPT_ONLY and self.activates <= when

    def wrap(self, data_key: bytes, sa_id: str) -> m1.Stanza:
        kind = self.suite.stanza_kind
        key = load_public(self.suite, self.public)
        wrapped = self.suite.hpke.encrypt(data_key, key, info=hpke_info(kind, self.kid, sa_id))
        return m1.Stanza(kind, self.kid, wrapped)


@dataclass(frozen=True)
class SealingPrivateKey:
    kid: str
    suite: Suite
    generation: int
    private: PrivateKey
    public: bytes

    def unwrap(self, stanza: m1.Stanza, sa_id: str) -> bytes:
        try:
            return self.suite.hpke.decrypt(
                stanza.wrapped, self.private, info=hpke_info(stanza.kind, self.kid, sa_id)
            )
        except (InvalidTag, ValueError) as exc:
            raise DecryptionError(
                "m1 HPKE stanza did not open (wrong identity or tampered)"
            ) from exc


def _hkdf(master: bytes, length: int, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), length, salt=b"kamus-sealing", info=info).derive(master)


def private_key_from_parts(
    suite: Suite, generation: int, x25519_raw: bytes, mlkem_seed: bytes | None = None
) -> SealingPrivateKey:
    """A generation's key pair from its raw secrets: X25519's 32 bytes, and for the hybrid
    suite ML-KEM-768's 64-byte seed too."""
    x = x25519.X25519PrivateKey.from_private_bytes(x25519_raw)
    x_public = x.public_key().public_bytes_raw()
    if suite is Suite.X25519:
        return SealingPrivateKey(
            kid_for(suite, generation, x_public), suite, generation, x, x_public
        )
    if mlkem_seed is None:
        raise ValueError("the hybrid suite needs an ML-KEM seed")
    m = mlkem.MLKEM768PrivateKey.from_seed_bytes(mlkem_seed)
    public = m.public_key().public_bytes_raw() + x_public
    return SealingPrivateKey(
        kid_for(suite, generation, public),
        suite,
        generation,
        hpke.MLKEM768X25519PrivateKey(m, x),
        public,
    )


@functools.lru_cache(maxsize=256)
def derive(master: bytes, suite: Suite, generation: int) -> SealingPrivateKey:
    """Generation ``generation``'s key pair in AES mode: a pure function of the master key."""
    if not 0 <= generation <= MAX_GENERATION:
        raise ValueError("generation out of range")
    label = f"{suite.short}/{generation}".encode()
    x_raw = _hkdf(master, 32, b"kamus/sealing/x25519/" + label)
    seed = _hkdf(master, 64, b"kamus/sealing/mlkem768/" + label) if suite.post_quantum else None
    return private_key_from_parts(suite, generation, x_raw, seed)


def public_keys(
    private: Iterable[SealingPrivateKey], schedule: Schedule, now: datetime
) -> list[SealingPublicKey]:
    """What a bundle issued at ``now`` lists: the active and the next generation, and the one
    before for reference (decrypt-only). Older generations still open; they are not for sealing."""
    current = schedule.generation_at(now)
    out = []
    for key in private:
        if key.generation == current:
            state = KeyState.ACTIVE
        elif key.generation == current + 1 and schedule.period:
            state = KeyState.NEXT
        elif key.generation == current - 1:
            state = KeyState.DECRYPT_ONLY
        else:
            continue
        out.append(
            SealingPublicKey(
                key.kid,
                key.suite,
                key.public,
                state,
                schedule.activates(key.generation),
                schedule.expires(key.generation),
            )
        )
    return out


class Keyring:
    """The sealing private keys a decryptor holds, found by key id: derived on demand from the
    master keys (the AES master keys, or the KMS modes' unwrapped seeds), active first. A kid
    the ring does not hold is a shape fact, as in a1: it names a key not configured here.

    The first master's generation for now (``schedule``) is the active key, and the one after
    it too (encryptors may seal to it already); older generations, and every generation of the
    other masters, are decrypt-only; ``policy`` retires keys by id."""

    def __init__(
        self,
        masters: Sequence[bytes] = (),
        *,
        schedule: Schedule | None = None,
        policy: KeyPolicy | None = None,
        cache: DataKeyCache[m1.Opener | AESGCM] | None = None,
    ) -> None:
        self._masters = tuple(masters)
        self.schedule = schedule or Schedule()
        self.policy = policy or KeyPolicy()
        # The data keys its stanzas unwrapped (an X25519 agreement each), shared with the key
        # manager's cache: a rollout's pods present the same values.
        self.data_keys: DataKeyCache[m1.Opener | AESGCM] = (
            cache if cache is not None else DataKeyCache()
        )

    def find(self, kid: str) -> SealingPrivateKey | None:
        parsed = parse_kid(kid)
        if parsed is None:
            return None
        suite, generation = parsed
        for master in self._masters:
            key = derive(master, suite, generation)
            if key.kid == kid:
                return key
        return None

    def _owned(self, stanza: m1.Stanza) -> SealingPrivateKey | None:
        """The key of an HPKE stanza, if held here and not retired: a lookup by key id."""
        key = self.find(stanza.kid) if stanza.kind.startswith("hpke-") else None
        if key is None or stanza.kind != key.suite.stanza_kind or key.kid in self.policy.retired:
            return None
        return key

    def unwrapper(self, sa_id: str) -> Callable[[m1.Stanza], Unwrap | None]:
        """For :func:`crypto.recipients.gather_data_key`: how each stanza held here opens."""

        def owned(stanza: m1.Stanza) -> Unwrap | None:
            key = self._owned(stanza)
            return None if key is None else functools.partial(key.unwrap, stanza, sa_id)

        return owned

    def held(self, value: m1.M1) -> tuple[m1.Stanza, SealingPrivateKey] | None:
        """The first stanza naming a sealing key held here and not retired, and the key: a
        lookup by key id. Only retired keys held: :class:`RetiredKey`, a shape fact too."""
        retired = None
        for stanza in value.stanzas:
            key = self.find(stanza.kid) if stanza.kind.startswith("hpke-") else None
            if key is not None and stanza.kind == key.suite.stanza_kind:
                if key.kid in self.policy.retired:
                    retired = retired or key.kid
                    continue
                return stanza, key
        if retired is not None:
            raise RetiredKey(retired)
        return None

    def active(self, suite: Suite) -> SealingPrivateKey:
        """The key new values of ``suite`` are sealed to: the first master's generation now."""
        if not self._masters:
            raise ValueError("no sealing master key")
        return derive(self._masters[0], suite, self.schedule.generation_at(datetime.now(UTC)))

    def state(self, key: SealingPrivateKey) -> State:
        if key.kid in self.policy.retired:
            return State.RETIRED
        current = self.schedule.generation_at(datetime.now(UTC))
        if (
            self._masters
            and key.generation in (current, current + 1)
            and derive(self._masters[0], key.suite, key.generation).kid == key.kid
        ):
            return State.ACTIVE
        return State.DECRYPT_ONLY

    def open(self, ciphertext: str, sa_id: str) -> tuple[bytes, str]:
        """The plaintext of an m1 value as ``sa_id``, and the key id that opened it."""
        opened = self.opened(m1.parse(ciphertext), sa_id)
        return opened.plaintext, opened.key_id

    def opened(self, value: m1.M1, sa_id: str) -> Opened:
        """An m1 value opened through the stanza held here, with the key's id and state."""
        self.policy.recipients.check(value)
        if value.threshold > 1:
            return self._opened_threshold(value, sa_id)
        held = self.held(value)
        if held is None:
            raise no_stanza_held(value, "no stanza for a sealing key this Kamus holds")
        check_identity(value, sa_id)
        stanza, key = held
        fmt = CiphertextFormat.SEALED_V1
        entry = EntryKey.of(stanza.kind, fmt.value, key.kid, stanza.wrapped, sa_id)
        opener = self.data_keys.get_now(entry, lambda: m1.Opener(key.unwrap(stanza, sa_id)))
        assert isinstance(opener, m1.Opener)  # the format is part of the entry's key
        return Opened(opener.open(value, sa_id), key.kid, self.state(key), fmt)

    def _opened_threshold(self, value: m1.M1, sa_id: str) -> Opened:
        """A threshold value, from shares of the groups whose sealing keys are held here."""
        owned = self.unwrapper(sa_id)
        check_held(value, owned)
        check_identity(value, sa_id)
        fmt = CiphertextFormat.SEALED_V1
        first = next(s for s in value.stanzas if owned(s))
        # The whole header names the shares: its text is the entry's "wrapped key".
        entry = EntryKey.of("threshold", fmt.value, first.kid, value.header_text.encode(), sa_id)
        opener = self.data_keys.get_now(entry, lambda: m1.Opener(gather_data_key(value, owned)[0]))
        assert isinstance(opener, m1.Opener)
        key = self._owned(first)
        assert key is not None
        return Opened(opener.open(value, sa_id), key.kid, self.state(key), fmt)

    def rewrap(
        self,
        ciphertext: str,
        value: m1.M1,
        held: tuple[m1.Stanza, SealingPrivateKey],
        sa_id: str,
        *,
        check_only: bool = False,
    ) -> Rewrapped:
        """``value`` with its stanzas for keys held here replaced by one for the active key of
        the same suite. The payload is unchanged, the other stanzas (other clusters', KMS ones)
        are kept, and the value must open as ``sa_id`` first."""
        stanza, key = held
        if value.threshold > 1:
            raise Refused(
                "m1 threshold value: not rewrapped by a decryptor",
                "a threshold value is not rewrapped by a decryptor: its recipients can only be "
                "removed (kamus recipients remove --identity), or it is sealed again "
                "(kamus recover, then kamus seal --threshold)",
            )
        check_identity(value, sa_id)
        data_key = key.unwrap(stanza, sa_id)
        m1.open_value(value, data_key, sa_id)
        if self.state(key) is State.ACTIVE:
            return Rewrapped(RewrapStatus.UNCHANGED, key.kid, key.kid, ciphertext)
        target = self.active(key.suite)
        if check_only:
            return Rewrapped(RewrapStatus.STALE, key.kid, target.kid, None)
        kept = [s for s in value.stanzas if not self._holds(s)]
        new = m1.rewrap(value, data_key, sa_id, [_stanza(target, data_key, sa_id), *kept])
        return Rewrapped(RewrapStatus.REWRAPPED, key.kid, target.kid, new)

    def seal(self, plaintext: bytes, sa_id: str) -> tuple[str, str]:
        """A new m1 value sealed to the active key, and its id: what a value in an older format
        becomes on rewrap."""
        target = self.active(Suite.X25519)
        data_key = m1.new_data_key()
        stanzas = [_stanza(target, data_key, sa_id), *self.policy.extra_stanzas(data_key, sa_id)]
        [value] = m1.seal(data_key, stanzas, [plaintext], sa_id)
        return value, target.kid

    def _holds(self, stanza: m1.Stanza) -> bool:
        key = self.find(stanza.kid) if stanza.kind.startswith("hpke-") else None
        return key is not None and stanza.kind == key.suite.stanza_kind


def _stanza(key: SealingPrivateKey, data_key: bytes, sa_id: str) -> m1.Stanza:
    kind = key.suite.stanza_kind
    info = hpke_info(kind, key.kid, sa_id)
    return m1.Stanza(
        kind, key.kid, key.suite.hpke.encrypt(data_key, load_public(key.suite, key.public), info)
    )


def check_identity(value: m1.M1, sa_id: str) -> None:
    """A cheap "made for someone else", after every shape check: the shape facts must not
    depend on who asks."""
    try:
        tag = m1.identity_tag(sa_id)
    except ValueError:
        raise DecryptionError("the identity is not '<namespace>:<service-account>'") from None
    if value.identity_tag != tag:
        raise DecryptionError("m1 value was made for another identity (identity tag)")


class NotSealedHere(MalformedCiphertext):
    """A well-formed m1 value with no stanza for a key held here: sealed for other clusters
    (or keys since removed). A fact about the value and this Kamus's keys, as a shape fact is."""

    def __str__(self) -> str:
        return f"this value was not sealed for this Kamus: {self.fact}"


def no_stanza_held(value: m1.M1, fact: str) -> MalformedCiphertext:
    # Only well-formed sealing key ids are named: any other field is the caller's text.
    named = [s.kid for s in value.stanzas if parse_kid(s.kid)][:4]
    return NotSealedHere(
        "m1 ciphertext has no stanza for a key held here",
        f"it has {fact}" + (f" (it names {', '.join(named)})" if named else ""),
    )


async def change_recipients(
    value: m1.M1,
    ciphertext: str,
    data_key: bytes,
    sa_id: str,
    source: str,
    *,
    add: Sequence[Recipient],
    remove: Sequence[str],
    policy: RecipientPolicy,
    check_only: bool,
) -> Rewrapped:
    """``value`` (whose ``data_key`` a stanza held here, ``source``, unwrapped) with stanzas for
    ``add`` and without those matching ``remove``: the payload stays. Refused if the result would
    break this cluster's recipient policy, or leave nobody able to open it."""
    m1.open_value(value, data_key, sa_id)
    stanzas = [await r.wrap(data_key, sa_id) for r in not_present(value, add)]
    opened = OpenedOffline(sa_id, data_key, ())
    try:
        new = restanza(value, opened, add=stanzas, remove=remove)
    except ValueError as exc:
        raise Refused("m1 recipient change refused", str(exc)) from None
    if new is None:
        return Rewrapped(RewrapStatus.UNCHANGED, source, source, ciphertext)
    policy.check(m1.parse(new))
    if check_only:
        return Rewrapped(RewrapStatus.STALE, source, source, None)
    return Rewrapped(RewrapStatus.REWRAPPED, source, source, new)


def only_m1(ciphertext: str) -> m1.M1:
    """An m1 value to change the recipients of; any other format has none."""
    from crypto.formats import classify

    if classify(ciphertext) is not CiphertextFormat.SEALED_V1:
        raise Refused(
            "not an m1 value: it has no recipients",
            "only m1 values have recipients to add or remove: move this one to m1 first "
            "(kamus rewrap)",
        )
    return m1.parse(ciphertext)


def decryptor_may_change(ciphertext: str) -> m1.M1:
    """An m1 value whose recipients a decryptor may change: not a threshold value, whose new
    stanza would need its group's share (a decryptor holds one group at most)."""
    value = only_m1(ciphertext)
    if value.threshold > 1:
        raise Refused(
            "m1 threshold value: recipients not changed by a decryptor",
            "a decryptor does not change the recipients of a threshold value: remove them "
            "offline (kamus recipients remove --identity), or seal it again",
        )
    return value
