"""Recipients of an m1 value: whom a data key is wrapped for, and opening a value from the stanzas
one holds the keys of (docs/multi-cluster.md).

A recipient is named ``<kind>:<key>``, the same way on the command line (``--recipient``), in
``.kamus.yaml`` and in the decryptor's recipient settings:

* ``age:age1…``: an age X25519 recipient, for break-glass. Its stanza is a whole age file of
  ``"kamus/m1/age" 0x00 || u16(len ns) || ns || u16(len sa) || sa || secret``, so the identity
  travels with the data key (``kamus recover`` needs no other input) and is checked against the
  value's identity tag and its payload's associated data.
* ``anchor:ed25519:…``: a cluster, by the anchor that signs its key bundle; the stanza is HPKE to
  the bundle's sealing key (:mod:`crypto.sealing`).
* ``aws:<key ARN>``, ``gcp:<CryptoKey name>``, ``azure:<key URL>``: a KMS key named explicitly
  (:mod:`crypto.cloud`).

``secret`` is the data key, or with a threshold the share of the recipient's group. Any one
recipient opens a value unless a threshold is asked for.
"""

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from crypto import m1
from crypto.errors import DecryptionError, MalformedCiphertext, Refused

AGE_KIND = "age"
_AGE_LABEL = b"kamus/m1/age\x00"
KMS_KINDS = ("aws", "gcp", "azure")


class Recipient(Protocol):
    @property
    def name(self) -> str:
        """``<kind>:<key>``, as policies and messages name it."""
        ...

    @property
    def stanza_name(self) -> str:
        """The name (``<kind>:<key id>``) of the stanza it wraps: known before wrapping, so a
        value that has it already costs no wrap (nor a KMS call)."""
        ...

    async def wrap(self, secret: bytes, sa_id: str) -> m1.Stanza:
        """A stanza holding ``secret`` for ``sa_id``."""
        ...


# -- age --------------------------------------------------------------------------------------


# pyrage is imported where it is used: a decryptor that never sees an age recipient does not
# carry it.


IDENTITY_NOT_RECIPIENT = (
    "this is an age identity (AGE-SECRET-KEY-1…), the secret half: give its recipient, age1…, "
    "which age-keygen -y prints; and treat the identity as exposed wherever it was pasted"
)


def is_age_identity(text: str) -> bool:
    """Whether ``text`` is an age secret key, which no message may repeat."""
    return "AGE-SECRET-KEY-" in text.upper()


def _age_recipient(text: str) -> Any:
    """The recipient of ``text``, or a ValueError that never repeats ``text``: what was pasted
    may be an identity, which opens every value sealed to it."""
    import pyrage
    from pyrage import x25519

    if is_age_identity(text):
        raise ValueError(IDENTITY_NOT_RECIPIENT)
    try:
        return x25519.Recipient.from_str(text)
    except (pyrage.RecipientError, ValueError):
        raise ValueError(
            f"not an age X25519 recipient (age1… of 62 characters; {len(text)} given)"
        ) from None


@dataclass(frozen=True)
class AgeRecipient:
    """A break-glass recipient: its holder opens values offline with ``kamus recover``."""

    recipient: str

    def __post_init__(self) -> None:
        # As age-keygen prints it, lower case: the spelling stanzas, policies and removals match.
        object.__setattr__(self, "recipient", str(_age_recipient(self.recipient)))

    @property
    def name(self) -> str:
        return f"{AGE_KIND}:{self.recipient}"

    @property
    def stanza_name(self) -> str:
        return self.name

    async def wrap(self, secret: bytes, sa_id: str) -> m1.Stanza:
        return self.wrap_now(secret, sa_id)

    def wrap_now(self, secret: bytes, sa_id: str) -> m1.Stanza:
        import pyrage

        sealed = _AGE_LABEL + m1.encoded_identity(sa_id) + secret
        wrapped = pyrage.encrypt(sealed, [_age_recipient(self.recipient)])
        return m1.Stanza(AGE_KIND, self.recipient, wrapped)


class AgeIdentities:
    """The age identities of a file (``AGE-SECRET-KEY-1…`` lines, as ``age-keygen`` writes them),
    found by their public recipient: a stanza is opened only if it names one of them."""

    def __init__(self, text: str, source: str) -> None:
        import pyrage
        from pyrage import x25519

        self._by_recipient: dict[str, Any] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                identity = x25519.Identity.from_str(line)
            except (pyrage.IdentityError, ValueError):
                raise ValueError(
                    f"{source}, line {number}: not an age X25519 identity (AGE-SECRET-KEY-1…); "
                    "plugin and passphrase identities are not supported"
                ) from None
            self._by_recipient[str(identity.to_public())] = identity
        if not self._by_recipient:
            raise ValueError(f"{source} holds no age identity (AGE-SECRET-KEY-1…)")

    @property
    def recipients(self) -> list[str]:
        return sorted(self._by_recipient)

    def merge(self, other: "AgeIdentities") -> None:
        self._by_recipient.update(other._by_recipient)

    def owns(self, stanza: m1.Stanza) -> bool:
        return stanza.kind == AGE_KIND and stanza.kid in self._by_recipient

    def unwrap(self, stanza: m1.Stanza) -> tuple[str, bytes]:
        """The identity the stanza was made for, and its secret."""
        import pyrage

        try:
            sealed = pyrage.decrypt(stanza.wrapped, [self._by_recipient[stanza.kid]])
        except (pyrage.DecryptError, KeyError) as exc:
            raise DecryptionError(f"the age stanza for {stanza.kid} did not open") from exc
        if not sealed.startswith(_AGE_LABEL):
            raise DecryptionError("the age stanza does not hold a Kamus data key")
        rest = sealed[len(_AGE_LABEL) :]
        names = []
        for _ in range(2):
            size = int.from_bytes(rest[:2], "big")
            if len(rest) < 2 + size:
                raise DecryptionError("the age stanza's identity is truncated")
            names.append(rest[2 : 2 + size].decode("utf-8", "replace"))
            rest = rest[2 + size :]
        return f"{names[0]}:{names[1]}", rest


# -- sealing for several recipients -------------------------------------------------------------


def check_unique(recipients: Iterable[Recipient]) -> None:
    seen: set[str] = set()
    for recipient in recipients:
        if recipient.name in seen:
            raise ValueError(f"recipient {recipient.name} is named twice")
        seen.add(recipient.name)


async def wrap_for(
    data_key: bytes,
    groups: Sequence[Sequence[Recipient]],
    sa_id: str,
    threshold: int = 1,
) -> list[m1.Stanza]:
    """The stanzas for ``groups`` of recipients: each wraps ``data_key`` (threshold 1: any one
    recipient opens the value), or the share of its group (any ``threshold`` groups do)."""
    flat = [r for group in groups for r in group]
    if not flat:
        raise ValueError("a value needs at least one recipient")
    check_unique(flat)
    if threshold == 1:
        return [await r.wrap(data_key, sa_id) for r in flat]
    if any(not group for group in groups):
        raise ValueError("a recipient group is empty")
    shares = m1.split_data_key(data_key, len(groups), threshold)
    return [
        replace(await r.wrap(share, sa_id), group=number)
        for number, (group, share) in enumerate(zip(groups, shares, strict=True), 1)
        for r in group
    ]


# -- opening from the stanzas one holds ----------------------------------------------------------

Unwrap = Callable[[], bytes]
Owned = Callable[[m1.Stanza], Unwrap | None]


class NotEnoughShares(Refused):
    """A threshold value whose groups this holder cannot open enough of. A fact about the value
    and the keys configured here, said with each group's verdict."""


def _group_line(number: int, stanzas: Sequence[m1.Stanza], verdict: str) -> str:
    names = ", ".join(s.name if len(s.name) <= 80 else s.name[:77] + "…" for s in stanzas)
    return f"group {number} ({names}): {verdict}"


def check_held(value: m1.M1, owned: Callable[[m1.Stanza], object]) -> None:
    """A shape fact, from lookups alone: whether this holder owns a stanza of enough groups
    (of one stanza, without a threshold); :class:`NotEnoughShares` says which it lacks."""
    groups = value.groups
    held = {n for n, stanzas in groups.items() if any(owned(s) for s in stanzas)}
    if value.threshold == 1:
        if not held:
            raise MalformedCiphertext("m1 value has no stanza for a key held here")
        return
    if len(held) < value.threshold:
        lines = [
            _group_line(n, stanzas, "a key is held here" if n in held else "no key held here")
            for n, stanzas in groups.items()
        ]
        raise NotEnoughShares(
            f"m1 threshold value: {len(held)} of {value.threshold} groups held",
            f"the value needs shares of {value.threshold} of its {len(groups)} recipient groups, "
            f"and keys of only {len(held)} are held here: " + "; ".join(lines),
        )


def gather_data_key(value: m1.M1, owned: Owned) -> tuple[bytes, list[m1.Stanza]]:
    """The data key of ``value`` from the stanzas ``owned`` says this holder can open (a lookup
    by key id, never a trial), and the stanzas used. Threshold 1: the first owned stanza. A
    threshold: an owned stanza of each group until enough shares (local unwraps only: HPKE and
    age; a decryptor opens a threshold value with the sealing keys it holds). Not enough groups
    held is said group by group; an unwrap that fails is the plain :class:`DecryptionError`."""
    if value.threshold == 1:
        for stanza in value.stanzas:
            unwrap = owned(stanza)
            if unwrap is not None:
                return unwrap(), [stanza]
        raise MalformedCiphertext("m1 value has no stanza for a key held here")
    shares: dict[int, bytes] = {}
    used: list[m1.Stanza] = []
    verdicts: dict[int, str] = {}
    failure: DecryptionError | None = None
    for number, stanzas in value.groups.items():
        if len(shares) == value.threshold:
            break
        verdicts[number] = "no key held here"
        for stanza in stanzas:
            unwrap = owned(stanza)
            if unwrap is None:
                continue
            try:
                shares[number] = unwrap()
            except DecryptionError as exc:
                failure = failure or exc
                verdicts[number] = f"did not open ({exc.reason})"
                continue
            verdicts[number] = f"opened with {stanza.name}"
            used.append(stanza)
            break
    if len(shares) < value.threshold:
        if failure is not None:
            raise failure
        lines = [_group_line(n, value.groups[n], v) for n, v in verdicts.items()]
        raise NotEnoughShares(
            f"m1 threshold value: {len(shares)} of {value.threshold} shares held",
            f"needs shares of {value.threshold} of its {len(value.groups)} recipient groups "
            f"and only {len(shares)} can be opened here: " + "; ".join(lines),
        )
    return m1.combine_shares(shares), used


# -- policies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecipientPolicy:
    """A cluster's rules on the stanzas a value carries, by ``<kind>:<key id>`` patterns (``*``
    matches anything): ``required`` each match at least one stanza, ``forbidden`` none. Checked
    on the header before any key is used; the header's MAC, checked once the data key is
    unwrapped, makes a stanza added or removed to pass them fail."""

    required: tuple[str, ...] = ()
    forbidden: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Stanzas name age keys in lower case only (m1.parse refuses others): a pattern written
        # in upper case would match nothing, and a forbidden key would pass.
        for name in ("required", "forbidden"):
            patterns = tuple(canonical_name(p) for p in getattr(self, name))
            object.__setattr__(self, name, patterns)

    def check(self, value: m1.M1) -> None:
        names = [s.name for s in value.stanzas]
        for pattern in self.required:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise PolicyRefused(
                    f"this cluster refuses values without a recipient matching {pattern!r} "
                    "(Decryptor__RequiredRecipients): add it with kamus recipients add"
                )
        for pattern in self.forbidden:
            if hit := next((n for n in names if fnmatch.fnmatchcase(n, pattern)), None):
                raise PolicyRefused(
                    f"this cluster refuses values with a recipient matching {pattern!r} "
                    f"(Decryptor__ForbiddenRecipients), and this one has {_short(hit)}: remove "
                    "it with kamus recipients remove"
                )


def canonical_name(pattern: str) -> str:
    """``<kind>:<key id>`` (or a pattern of them) as stanzas spell it: age keys in lower case."""
    kind, sep, kid = pattern.partition(":")
    return f"{kind}{sep}{kid.lower()}" if kind == AGE_KIND else pattern


def _short(name: str) -> str:
    return name if len(name) <= 100 else name[:97] + "…"


class PolicyRefused(Refused):
    """The value's recipients break the cluster's recipient policy: the operator's rule."""

    def __init__(self, message: str) -> None:
        super().__init__("m1 value refused by the recipient policy", message)


# -- offline: a holder of age identities (kamus recover, kamus recipients add/remove) -------------


@dataclass(frozen=True)
class OpenedOffline:
    sa_id: str
    data_key: bytes = field(repr=False)  # never in a repr: a traceback or a log may show one
    used: tuple[m1.Stanza, ...]


def open_offline(value: m1.M1, identities: AgeIdentities) -> OpenedOffline:
    """The identity and data key of ``value`` from its age stanzas: the break-glass path. The
    identity comes from inside the stanzas, must be the same in each, and must match the
    value's identity tag; the commitment and MAC must then hold for the data key."""
    named: set[str] = set()

    def owned(stanza: m1.Stanza) -> Unwrap | None:
        if not identities.owns(stanza):
            return None

        def unwrap() -> bytes:
            sa_id, secret = identities.unwrap(stanza)
            named.add(sa_id)
            return secret

        return unwrap

    check_held(value, owned)
    data_key, used = gather_data_key(value, owned)
    if len(named) != 1:
        raise DecryptionError("the age stanzas name different identities")
    [sa_id] = named
    try:
        tag = m1.identity_tag(sa_id)
    except ValueError:
        raise DecryptionError("the age stanza's identity is malformed") from None
    if tag != value.identity_tag:
        raise DecryptionError("the age stanza's identity is not the value's")
    m1.Opener(data_key).verify(value)
    return OpenedOffline(sa_id, data_key, tuple(used))


def restanza(
    value: m1.M1,
    opened: OpenedOffline,
    *,
    add: Sequence[m1.Stanza] = (),
    remove: Sequence[str] = (),
) -> str | None:
    """``value`` with the stanzas ``add`` (already wrapping its data key) and without those
    matching a ``remove`` pattern; ``None`` when nothing changes. The payload stays."""
    if add and value.threshold > 1:
        raise ValueError(
            "a recipient cannot be added to a threshold value: it would need its group's "
            "share; seal it again (kamus recover, then kamus seal --threshold)"
        )
    present = {s.name for s in value.stanzas}
    patterns = [canonical_name(p) for p in remove]
    kept = [s for s in value.stanzas if not any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]
    added = [s for s in add if s.name not in present]
    if not added and len(kept) == len(value.stanzas):
        return None
    if not kept and not added:
        raise ValueError("that would remove every recipient: nobody could open the value")
    return m1.rewrap(value, opened.data_key, opened.sa_id, [*kept, *added])


def not_present(value: m1.M1, add: Sequence[Recipient]) -> list[Recipient]:
    """The recipients of ``add`` whose stanza ``value`` does not hold yet."""
    present = {s.name for s in value.stanzas}
    return [r for r in add if r.stanza_name not in present]
