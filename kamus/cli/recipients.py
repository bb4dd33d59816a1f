"""Whom ``--offline`` seals to, and the break-glass side (docs/multi-cluster.md).

Recipients come from the command line (``--keys`` bundles, ``--recipient age:…|aws:…|gcp:…|
azure:…``, ``--threshold N``) or, when it names none, from the first rule of ``.kamus.yaml`` whose
``path`` matches what is being sealed, as ``.sops.yaml``'s ``creation_rules``::

    trust-anchor: ed25519:…                  # the pin when a single bundle is used
    recipients:
      - path: ^deploy/prod/                  # a regular expression on the path from the root
        keys: [.kamus/eu.json, .kamus/us.json]   # cluster bundles: files from the root, or URLs
        trust-anchors: [ed25519:…, ed25519:…]
        recipients: [age:age1…]              # any one of all of these opens a value
      - path: ^recovery/                     # opened offline only (kamus recover)
        threshold: 2                         # shares of 2 of these groups are needed
        groups:
          - recipients: [age:age1alice…]
          - recipients: [age:age1bob…]
          - recipients: [age:age1carol…]

On the command line each recipient is a group of its own. Plaintext never leaves this machine:
bundles and age recipients are public keys; a KMS recipient's key wraps the data key, through the
caller's own cloud credentials.
"""

import asyncio
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from crypto import m1
from crypto.bundle import Bundle
from crypto.errors import DecryptionError
from crypto.recipients import (
    AGE_KIND,
    IDENTITY_NOT_RECIPIENT,
    KMS_KINDS,
    AgeIdentities,
    AgeRecipient,
    Recipient,
    is_age_identity,
    wrap_for,
)
from kamus.cli.client import KamusClient, UsageError
from kamus.cli.keys import (
    BundleRefused,
    Pin,
    Warn,
    check_expiry,
    check_identity,
    load_verified,
    project_settings,
)

RULES_KEY = "recipients"
ANCHORS_KEY = "trust-anchors"
_RULE_FIELDS = {"path", "keys", ANCHORS_KEY, "recipients", "threshold", "groups"}


@dataclass(frozen=True)
class Group:
    keys: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class Choice:
    """The recipients of one sealing: groups of bundles and other recipients, a threshold, the
    pins for the bundles, and where it came from (for messages)."""

    groups: tuple[Group, ...]
    threshold: int = 1
    pins: tuple[Pin, ...] = ()
    source: str = "the command line"
    base: Path | None = None  # bundle files of a rule are relative to the repository root

    @classmethod
    def of_options(
        cls, keys: Sequence[str], recipients: Sequence[str], threshold: int | None
    ) -> "Choice":
        groups = [Group(keys=(k,)) for k in keys] + [Group(recipients=(r,)) for r in recipients]
        choice = cls(tuple(groups), threshold or 1)
        choice.check()
        return choice

    def check(self) -> None:
        if not self.groups:
            raise UsageError(f"{self.source} names no recipient")
        if self.threshold > 1:
            if self.threshold > len(self.groups):
                raise UsageError(
                    f"{self.source}: a threshold of {self.threshold} needs at least that many "
                    f"recipient groups, and there are {len(self.groups)}"
                )
            if len(self.groups) > m1.MAX_GROUPS:
                raise UsageError(f"{self.source}: at most {m1.MAX_GROUPS} groups")
        for group in self.groups:
            for spec in group.recipients:
                kind = spec.partition(":")[0]
                if is_age_identity(spec):
                    raise UsageError(f"{self.source}: {IDENTITY_NOT_RECIPIENT}")
                if kind not in (AGE_KIND, *KMS_KINDS):
                    raise UsageError(
                        f"{self.source}: recipient {spec[:80]!r} is not age:age1…, aws:<key ARN>, "
                        "gcp:<CryptoKey name> or azure:<key URL> (a cluster is given by its "
                        "key bundle: --keys FILE|URL)"
                    )


# -- .kamus.yaml ----------------------------------------------------------------------------------


def _strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UsageError(f"{where} must be a list of strings")
    return tuple(value)


def _rule(raw: object, where: str, base: Path) -> tuple[re.Pattern[str] | None, Choice]:
    if not isinstance(raw, dict):
        raise UsageError(f"{where} must be a mapping (path, keys, recipients, threshold, groups)")
    if unknown := sorted(set(map(str, raw)) - _RULE_FIELDS):
        raise UsageError(
            f"{where}: unknown field {unknown[0]!r}; a rule has {', '.join(sorted(_RULE_FIELDS))}"
        )
    pattern = raw.get("path")
    try:
        compiled = re.compile(pattern) if pattern is not None else None
    except (re.error, TypeError) as exc:
        raise UsageError(f"{where}: path must be a regular expression: {exc}") from None
    threshold = raw.get("threshold", 1)
    if type(threshold) is not int or threshold < 1:
        raise UsageError(f"{where}: threshold must be a whole number, 1 or more")
    if "groups" in raw:
        if "keys" in raw or "recipients" in raw:
            raise UsageError(f"{where}: give either groups, or keys and recipients")
        raw_groups = raw["groups"]
        if not isinstance(raw_groups, list):
            raise UsageError(f"{where}: groups must be a list of {{keys, recipients}}")
        groups = []
        for n, g in enumerate(raw_groups, 1):
            if not isinstance(g, dict) or not set(map(str, g)) <= {"keys", "recipients"}:
                raise UsageError(f"{where}, group {n}: a group has keys and recipients")
            groups.append(
                Group(
                    _strings(g.get("keys"), f"{where}, group {n}: keys"),
                    _strings(g.get("recipients"), f"{where}, group {n}: recipients"),
                )
            )
    else:
        if threshold > 1:
            raise UsageError(f"{where}: a threshold needs groups")
        keys = _strings(raw.get("keys"), f"{where}: keys")
        recipients = _strings(raw.get("recipients"), f"{where}: recipients")
        groups = [Group(keys=(k,)) for k in keys] + [Group(recipients=(r,)) for r in recipients]
    pins = tuple(
        Pin(_fingerprint(a, f"{where}: {ANCHORS_KEY}"), where)
        for a in _strings(raw.get(ANCHORS_KEY), f"{where}: {ANCHORS_KEY}")
    )
    choice = Choice(tuple(groups), threshold, pins, where, base)
    choice.check()
    return compiled, choice


def _fingerprint(text: str, where: str) -> str:
    from crypto.bundle import BundleError, normalise_fingerprint

    try:
        return normalise_fingerprint(text)
    except BundleError as exc:
        raise UsageError(f"{where}: {exc}") from None


def rule_for(target: Path, start: Path | None = None) -> Choice | None:
    """The recipients of the first ``.kamus.yaml`` rule whose ``path`` matches ``target`` (its
    path from the repository root, with ``/``), or ``None``."""
    found = project_settings(start)
    if found is None:
        return None
    path, settings = found
    rules = settings.get(RULES_KEY)
    if rules is None:
        return None
    if not isinstance(rules, list):
        raise UsageError(f"{path}: {RULES_KEY} must be a list of rules")
    root = path.parent
    try:
        relative = target.resolve().relative_to(root).as_posix()
    except ValueError:
        relative = target.resolve().as_posix()
    if target.resolve().is_dir():
        relative += "/"
    for n, raw in enumerate(rules, 1):
        pattern, choice = _rule(raw, f"{path}: {RULES_KEY} rule {n}", root)
        if pattern is None or pattern.search(relative):
            return choice
    return None


# -- building the recipients and sealing -----------------------------------------------------------


def kms_recipient(spec: str) -> Recipient:
    """``aws:<ARN>``, ``gcp:<CryptoKey name>`` or ``azure:<key URL>`` as a recipient, wrapped
    through this machine's credentials for that cloud (its SDK's default chain, or the
    ``KeyManagement__*`` variables the services read)."""
    from crypto.cloud import CloudKeyManager
    from kamus.server.errors import ConfigurationError

    kind, _, name = spec.partition(":")
    try:
        manager: CloudKeyManager = _kms_manager(kind, name)
        return manager.recipient(name)
    except ConfigurationError as exc:
        raise UsageError(f"recipient {kind}:…: {exc}") from None
    except ValueError as exc:
        raise UsageError(f"recipient {spec[:120]!r}: {exc}") from None


def _kms_manager(kind: str, name: str) -> Any:
    from kamus.server import cloud
    from kamus.server.settings import Settings

    settings = Settings()
    km = settings.key_management
    if kind == "aws":
        parts = name.split(":")
        region = parts[3] if len(parts) > 3 and parts[0] == "arn" else ""
        km = km.model_copy(update={"aws_kms": km.aws_kms.model_copy(update={"region": region})})
        build: Callable[..., Any] = cloud.build_aws
    elif kind == "gcp":
        match = re.match(r"projects/([^/]+)/", name)
        project = match[1] if match else None
        km = km.model_copy(
            update={"google_kms": km.google_kms.model_copy(update={"project_id": project})}
        )
        build = cloud.build_gcp
    else:
        match = re.match(r"(https://[^/]+)/keys/", name)
        url = match[1] if match else None
        km = km.model_copy(update={"key_vault": km.key_vault.model_copy(update={"url": url})})
        build = cloud.build_azure
    if (kind == "aws" and not region) or (kind != "aws" and not match):
        raise ValueError(f"it is not a full key name of {kind}")
    return build(settings.model_copy(update={"key_management": km}), None)


@dataclass
class Sealing:
    """Recipients made ready: bundles verified and their keys chosen, KMS clients made. One
    event loop runs every wrap of the command (KMS clients keep state bound to one)."""

    groups: list[list[Recipient]]
    threshold: int
    expired_keys: bool
    _runner: asyncio.Runner = field(default_factory=asyncio.Runner, repr=False)

    def describe(self) -> str:
        names = [_display(r) for g in self.groups for r in g]
        how = (
            f"shares of {self.threshold} of {len(self.groups)} groups" if self.threshold > 1 else ""
        )
        return ", ".join(names) + (f" ({how})" if how else "")

    def seal(self, identity: str, plaintexts: Sequence[str]) -> list[str]:
        if not plaintexts:
            return []
        data_key = m1.new_data_key()
        try:
            stanzas = self._runner.run(wrap_for(data_key, self.groups, identity, self.threshold))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        except DecryptionError as exc:
            raise UsageError(
                f"a KMS recipient refused to wrap the data key: {exc.reason}"
            ) from None
        return m1.seal(
            data_key,
            stanzas,
            [p.encode("utf-8") for p in plaintexts],
            identity,
            expired_keys=self.expired_keys,
            threshold=self.threshold,
        )

    def seal_values(
        self, namespace: str, service_account: str, values: Mapping[str, str]
    ) -> dict[str, str]:
        """One Secret's values for one identity, under one data key."""
        identity = check_identity(namespace, service_account)
        names = list(values)
        return dict(zip(names, self.seal(identity, [values[n] for n in names]), strict=True))

    def close(self) -> None:
        self._runner.close()


def _display(recipient: Recipient) -> str:
    from crypto.bundle import BundleRecipient

    if isinstance(recipient, BundleRecipient):
        cluster = f"cluster {recipient.bundle.cluster} " if recipient.bundle.cluster else ""
        return f"{cluster}(anchor {recipient.bundle.anchor[:20]}…, key {recipient.kid})"
    return recipient.name if len(recipient.name) <= 90 else recipient.name[:87] + "…"


def prepare(
    choice: Choice,
    pins: Sequence[Pin],
    connect: Callable[[str], KamusClient],
    warn: Warn,
    *,
    when: datetime,
    allow_expired: bool,
    post_quantum: bool,
) -> Sealing:
    """Every recipient of ``choice`` loaded and checked before anything is sealed: each bundle
    against the pins (the command line's, else the rule's, else ``trust-anchor``)."""
    pins = list(pins) or list(choice.pins)
    expired = False
    loaded: dict[str, Recipient] = {}
    groups: list[list[Recipient]] = []
    for group in choice.groups:
        members: list[Recipient] = []
        for keys in group.keys:
            source = keys
            if choice.base is not None and not keys.startswith(("https://", "http://")):
                source = str(choice.base / keys)
            if source not in loaded:
                bundle = load_pinned(source, pins, connect, warn)
                expired |= check_expiry(
                    bundle, when, warn, allow_expired=allow_expired, refuse=True
                )
                try:
                    loaded[source] = bundle.recipient(when, post_quantum=post_quantum)
                except Exception as exc:  # BundleError: no usable key of the suite
                    raise BundleRefused(f"{source}: {exc}") from None
            members.append(loaded[source])
        for spec in group.recipients:
            if spec not in loaded:
                loaded[spec] = _recipient(spec)
            members.append(loaded[spec])
        groups.append(members)
    return Sealing(groups, choice.threshold, expired)


def _recipient(spec: str) -> Recipient:
    kind, _, key = spec.partition(":")
    if kind == AGE_KIND:
        try:
            return AgeRecipient(key)
        except ValueError as exc:
            raise UsageError(f"recipient age:…: {exc}") from None
    return kms_recipient(spec)


def load_pinned(
    keys: str, pins: Sequence[Pin], connect: Callable[[str], KamusClient], warn: Warn
) -> Bundle:
    """The bundle of ``keys``, checked against whichever of ``pins`` signs it (several clusters'
    bundles, several anchors): refused if none does."""
    if len(pins) <= 1:
        return load_verified(keys, pins[0] if pins else None, connect, warn)
    refusals = []
    for pin in pins:
        try:
            return load_verified(keys, pin, connect, lambda _: None)
        except BundleRefused as exc:
            refusals.append(str(exc))
    raise BundleRefused(
        f"the key bundle {keys} is signed by none of the {len(pins)} pinned anchors ("
        + ", ".join(p.fingerprint[:20] + "…" for p in pins)
        + f"): {refusals[0]}"
    )


# -- break-glass ---------------------------------------------------------------------------------


def read_identities(paths: Sequence[str]) -> AgeIdentities:
    """The age identities of ``--identity`` files (age-keygen's format), all together."""
    identities: AgeIdentities | None = None
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the age identity file {path}: {exc}") from None
        try:
            loaded = AgeIdentities(text, path)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if identities is None:
            identities = loaded
        else:
            identities.merge(loaded)
    if identities is None:
        raise UsageError("give the break-glass key with --identity AGE_KEY_FILE")
    return identities
