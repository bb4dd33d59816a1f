"""The signed key bundle: a cluster's public sealing keys, signed by its *anchor* (Ed25519).

Users pin the anchor's fingerprint, not a sealing key, so sealing keys rotate without
re-pinning. When the anchor itself changes (a new master key, a new signing key), the bundle
carries links: the previous anchor's signature over the new one, so an old pin still leads to it.

The signature is over the bundle's canonical JSON (sorted keys, no spaces, ASCII) without its
``sig`` field; docs/ciphertext-format.md has the layout.
"""

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto import m1
from crypto.sealing import (
    KeyState,
    Schedule,
    SealingPublicKey,
    Suite,
    derive,
    kid_for,
    load_public,
    parse_kid,
    public_keys,
)

FORMAT = "kamus-key-bundle/v1"
LINK_CONTEXT = b"kamus/anchor-link/v1\x00"
WARN_BEFORE_EXPIRY = timedelta(days=14)
MAX_BUNDLE_BYTES = 256 * 1024


# More stanzas for a fresh data key and an identity (the operator's break-glass recipients).
AddStanzas = Callable[[bytes, str], Sequence[m1.Stanza]]


class BundleError(Exception):
    """A bundle that must not be used: unreadable, badly signed, or not from the pinned anchor.
    The message says which, and what to do."""


def fingerprint(anchor: ed25519.Ed25519PublicKey) -> str:
    return "ed25519:" + hashlib.sha256(anchor.public_bytes_raw()).hexdigest()


def normalise_fingerprint(text: str) -> str:
    fp = text.strip().lower()
    if not fp.startswith("ed25519:") or len(fp) != 8 + 64:
        raise BundleError(
            f"{text.strip()[:80]!r} is not an anchor fingerprint: it looks like 'ed25519:' and 64 "
            "hex digits, as `kamus keys verify` prints it"
        )
    return fp


def anchor_from_master(master: bytes) -> ed25519.Ed25519PrivateKey:
    """AES mode's anchor: derived from the master key, so there is nothing new to back up."""
    seed = HKDF(hashes.SHA256(), 32, salt=b"kamus-sealing", info=b"kamus/anchor/ed25519").derive(
        master
    )
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise BundleError(f"the bundle's {what} is not a string")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"the bundle's {what} is not base64url") from None
    if _b64(raw) != text:
        raise BundleError(f"the bundle's {what} is not canonical base64url")
    return raw


def _time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: object, what: str) -> datetime:
    if not isinstance(text, str):
        raise BundleError(f"the bundle's {what} is not a time")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise BundleError(f"the bundle's {what} is not a time like 2026-01-01T00:00:00Z") from None


def canonical(document: dict[str, object]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class Link:
    """``signer`` vouches for ``signed``: how a pin on an old anchor reaches a new one."""

    signer: ed25519.Ed25519PublicKey
    signed: ed25519.Ed25519PublicKey
    signature: bytes

    @classmethod
    def make(cls, old: ed25519.Ed25519PrivateKey, new: ed25519.Ed25519PublicKey) -> "Link":
        return cls(old.public_key(), new, old.sign(LINK_CONTEXT + new.public_bytes_raw()))

    def holds(self) -> bool:
        try:
            self.signer.verify(self.signature, LINK_CONTEXT + self.signed.public_bytes_raw())
        except InvalidSignature:
            return False
        return True

    def to_json(self) -> dict[str, str]:
        return {
            "signer": _b64(self.signer.public_bytes_raw()),
            "signed": _b64(self.signed.public_bytes_raw()),
            "sig": _b64(self.signature),
        }


def issue(
    keys: Sequence[SealingPublicKey],
    anchor: ed25519.Ed25519PrivateKey,
    *,
    now: datetime,
    cluster: str = "",
    links: Sequence[Link] = (),
) -> str:
    """The signed bundle, as JSON text (what `kamus keys export` prints)."""
    document: dict[str, object] = {
        "format": FORMAT,
        "cluster": cluster,
        "issued": _time(now),
        "anchor": _b64(anchor.public_key().public_bytes_raw()),
        "keys": [
            {
                "kid": k.kid,
                "suite": str(k.suite),
                "public": _b64(k.public),
                "state": str(k.state),
                "activates": _time(k.activates),
                "expires": _time(k.expires) if k.expires else None,
            }
            for k in keys
        ],
        "links": [link.to_json() for link in links],
    }
    document["sig"] = _b64(anchor.sign(canonical(document)))
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class Bundle:
    """A bundle whose signature holds and whose anchor is the pinned one (or reached from it)."""

    text: str
    anchor: str  # its fingerprint
    cluster: str
    issued: datetime
    keys: tuple[SealingPublicKey, ...]
    via: tuple[str, ...] = field(default=())  # the pinned anchor and any between, if it changed

    def sealing_key(self, now: datetime, *, post_quantum: bool = False) -> SealingPublicKey:
        """The key to seal with at ``now``: the newest usable one of the suite."""
        suite = Suite.MLKEM768_X25519 if post_quantum else Suite.X25519
        usable = [k for k in self.keys if k.suite is suite and k.usable_at(now)]
        if not usable:
            raise BundleError(
                f"the bundle has no {'post-quantum ' if post_quantum else ''}sealing key usable "
                f"now ({suite}); fetch a current bundle (kamus keys fetch)"
                + ("" if not post_quantum else ", or seal without --post-quantum")
            )
        return max(usable, key=lambda k: k.activates)

    @property
    def expires(self) -> datetime | None:
        """When the last key a sealer may use expires (None: never)."""
        times = [k.expires for k in self.keys if k.state is not KeyState.DECRYPT_ONLY]
        if any(t is None for t in times):
            return None
        return max((t for t in times if t is not None), default=self.issued)

    def expiry(self, now: datetime) -> tuple[str, datetime | None]:
        """``ok``, ``soon`` (within 14 days) or ``expired``, with the time."""
        expires = self.expires
        if expires is None:
            return "ok", None
        if expires <= now:
            return "expired", expires
        return ("soon" if expires - now <= WARN_BEFORE_EXPIRY else "ok"), expires

    def seal(
        self,
        plaintexts: Sequence[bytes],
        sa_id: str,
        now: datetime,
        *,
        post_quantum: bool = False,
        expired_keys: bool = False,
        extra: AddStanzas | None = None,
    ) -> list[str]:
        """m1 values of ``plaintexts`` for ``sa_id``: one data key and one HPKE operation for
        the whole document."""
        sealer = self.sealer(
            sa_id, now, post_quantum=post_quantum, expired_keys=expired_keys, extra=extra
        )
        return [sealer.seal(plaintext) for plaintext in plaintexts]

    def recipient(self, now: datetime, *, post_quantum: bool = False) -> "BundleRecipient":
        """This cluster as a recipient of a multi-recipient value: its sealing key in use."""
        return BundleRecipient(self, self.sealing_key(now, post_quantum=post_quantum))

    def sealer(
        self,
        sa_id: str,
        now: datetime,
        *,
        post_quantum: bool = False,
        expired_keys: bool = False,
        extra: AddStanzas | None = None,
    ) -> m1.Sealer:
        """A fresh data key, wrapped to the sealing key in use for ``sa_id`` (and by ``extra``,
        the operator's break-glass recipients), ready to seal."""
        data_key = m1.new_data_key()
        stanza = self.sealing_key(now, post_quantum=post_quantum).wrap(data_key, sa_id)
        more = extra(data_key, sa_id) if extra is not None else []
        return m1.Sealer(data_key, [stanza, *more], sa_id, expired_keys=expired_keys)


@dataclass(frozen=True)
class BundleRecipient:
    """A cluster, named by its anchor (``anchor:ed25519:…``); its stanza is HPKE to the sealing
    key its bundle says to use."""

    bundle: Bundle
    key: SealingPublicKey

    @property
    def name(self) -> str:
        return f"anchor:{self.bundle.anchor}"

    @property
    def kid(self) -> str:
        return self.key.kid

    @property
    def stanza_name(self) -> str:
        return f"{self.key.suite.stanza_kind}:{self.key.kid}"

    async def wrap(self, secret: bytes, sa_id: str) -> m1.Stanza:
        return self.key.wrap(secret, sa_id)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise BundleError("the bundle repeats a field")
    return dict(pairs)


def _public_anchor(raw: bytes) -> ed25519.Ed25519PublicKey:
    if len(raw) != 32:
        raise BundleError("the bundle's anchor is not an Ed25519 public key")
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


def _key(entry: object) -> SealingPublicKey:
    if not isinstance(entry, dict):
        raise BundleError("the bundle has a key that is not an object")
    kid, suite_name, state = entry.get("kid"), entry.get("suite"), entry.get("state")
    try:
        suite = Suite(str(suite_name))
        key_state = KeyState(str(state))
    except ValueError:
        raise BundleError(f"the bundle has a key of unknown suite or state: {kid!r:.80}") from None
    public = _unb64(entry.get("public"), "public key")
    parsed = parse_kid(kid) if isinstance(kid, str) else None
    if parsed is None or parsed[0] is not suite or kid != kid_for(suite, parsed[1], public):
        raise BundleError(f"the bundle has a key whose id does not match it: {kid!r:.80}")
    try:
        load_public(suite, public)
    except ValueError as exc:
        raise BundleError(f"the bundle's key {kid} is not a valid public key: {exc}") from None
    expires = entry.get("expires")
    return SealingPublicKey(
        kid,
        suite,
        public,
        key_state,
        _parse_time(entry.get("activates"), f"key {kid}'s activation time"),
        None if expires is None else _parse_time(expires, f"key {kid}'s expiry"),
    )


def _path(pin: str, links: Sequence[Link], target: str) -> tuple[str, ...] | None:
    """The anchors from ``pin`` to ``target`` through links whose signatures hold."""
    paths: dict[str, tuple[str, ...]] = {pin: (pin,)}
    frontier = [pin]
    while frontier:
        current = frontier.pop()
        for link in links:
            signer, signed = fingerprint(link.signer), fingerprint(link.signed)
            if signer == current and signed not in paths and link.holds():
                paths[signed] = (*paths[current], signed)
                frontier.append(signed)
    return paths.get(target)


def load(text: str | bytes, trust_anchor: str | None = None) -> Bundle:
    """Parse and verify a bundle. Without ``trust_anchor`` the bundle vouches only for itself:
    the caller shows its fingerprint for the user to pin."""
    if len(text) > MAX_BUNDLE_BYTES:
        raise BundleError(f"the bundle is over {MAX_BUNDLE_BYTES // 1024} KiB")
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError):
        raise BundleError("the bundle is not JSON: is this a Kamus key bundle?") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BundleError(f"this is not a Kamus key bundle (its format is not {FORMAT!r})")
    signature = _unb64(document.pop("sig", None), "signature")
    anchor_key = _public_anchor(_unb64(document.get("anchor"), "anchor"))
    try:
        anchor_key.verify(signature, canonical(document))
    except InvalidSignature:
        raise BundleError(
            "the bundle's signature does not hold: it was altered after it was signed; fetch it "
            "again from its source"
        ) from None
    anchor = fingerprint(anchor_key)
    raw_links = document.get("links", [])
    if not isinstance(raw_links, list):
        raise BundleError("the bundle's links are not a list")
    links = [
        Link(
            _public_anchor(_unb64(link.get("signer"), "link signer")),
            _public_anchor(_unb64(link.get("signed"), "link target")),
            _unb64(link.get("sig"), "link signature"),
        )
        for link in raw_links
        if isinstance(link, dict)
    ]
    via: tuple[str, ...] = ()
    if trust_anchor is not None:
        pin = normalise_fingerprint(trust_anchor)
        if pin != anchor:
            path = _path(pin, links, anchor)
            if path is None:
                raise BundleError(
                    f"the bundle is signed by anchor {anchor}, not by the pinned {pin}, and no "
                    "link from the pinned anchor leads to it. Do not use it: it may not come from "
                    "your cluster. If the anchor changed on purpose, verify the new fingerprint "
                    "with your cluster's operator and pin it."
                )
            via = path[:-1]
    keys = document.get("keys")
    if not isinstance(keys, list) or not keys:
        raise BundleError("the bundle lists no keys")
    cluster = document.get("cluster", "")
    return Bundle(
        text=text if isinstance(text, str) else text.decode("utf-8"),
        anchor=anchor,
        cluster=cluster if isinstance(cluster, str) else "",
        issued=_parse_time(document.get("issued"), "issue time"),
        keys=tuple(_key(k) for k in keys),
        via=via,
    )


def from_masters(
    masters: Sequence[bytes],
    *,
    now: datetime,
    schedule: Schedule,
    cluster: str = "",
) -> str:
    """AES mode's bundle: the active master's generations around ``now`` in both suites, signed
    by the anchor derived from it, with a link from each previous master's anchor."""
    if not masters:
        raise ValueError("no master key")
    current = schedule.generation_at(now)
    private = [
        derive(masters[0], suite, g)
        for suite in Suite
        for g in range(max(0, current - 1), current + 2)
    ]
    anchor = anchor_from_master(masters[0])
    links = [
        Link.make(anchor_from_master(old), anchor.public_key())
        for old in masters[1:]
        if old != masters[0]
    ]
    return issue(public_keys(private, schedule, now), anchor, now=now, cluster=cluster, links=links)
