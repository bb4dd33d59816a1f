"""``kamus keys`` and offline sealing: getting a cluster's signed key bundle, checking it against
the pinned anchor, and sealing values to it with no encryptor contacted.

The pin is the anchor's fingerprint (crypto/bundle.py), found in this order: ``--trust-anchor``,
``$KAMUS_TRUST_ANCHOR``, then ``trust-anchor:`` in the ``.kamus.yaml`` at the repository root.
A bundle from a URL is used only under a pin: the network could hand over anyone's keys. A
bundle file vouches for its own signature, and its fingerprint is shown so that the user can
compare it, since whoever could change the file could change the keys in it.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crypto import bundle
from kamus.cli.client import ClientError, KamusClient, ServerError, UsageError, server_message
from kamus.server.identity import (
    DEFAULT_SERVICE_ACCOUNT_REFUSAL,
    check_namespace,
    check_service_account,
    sa_id,
)

KEYS_PATH = "/api/v2/keys"
PROJECT_FILE = ".kamus.yaml"
PIN_KEY = "trust-anchor"

Warn = Callable[[str], None]


class BundleRefused(ClientError):
    """The key bundle must not be used: its signature does not hold, it is not from the pinned
    anchor, or its keys have expired."""

    exit_code = 6


def now() -> datetime:
    return datetime.now(UTC)


def is_url(source: str) -> bool:
    return source.startswith(("https://", "http://"))


# -- the pin ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    fingerprint: str
    source: str  # where it was found, for messages


def project_file(start: Path | None = None) -> Path | None:
    """The ``.kamus.yaml`` at the repository root: walking up from ``start`` (the working
    directory) to the first directory that holds ``.kamus.yaml`` or ``.git``."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / PROJECT_FILE
        if candidate.is_file():
            return candidate
        if (directory / ".git").exists():
            return None
    return None


def project_settings(start: Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The ``.kamus.yaml`` at the repository root and what it says, if there is one."""
    path = project_file(start)
    if path is None:
        return None
    from kamus.cli.inputs import decode_text, yaml_documents

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    docs = yaml_documents(decode_text(data, str(path)), str(path))
    settings = docs[0] if docs else {}
    if not isinstance(settings, dict):
        raise UsageError(f"{path} must be a mapping, e.g. '{PIN_KEY}: ed25519:…'")
    return path, settings


def project_pin(start: Path | None = None) -> Pin | None:
    found = project_settings(start)
    if found is None:
        return None
    path, settings = found
    value = settings.get(PIN_KEY)
    if value is None:
        return None
    if not isinstance(value, str):
        raise UsageError(f"{path}: {PIN_KEY} must be an anchor fingerprint 'ed25519:…'")
    return Pin(_normalised(value, f"{path}: {PIN_KEY}"), str(path))


def _normalised(fingerprint: str, where: str) -> str:
    try:
        return bundle.normalise_fingerprint(fingerprint)
    except bundle.BundleError as exc:
        raise UsageError(f"{where}: {exc}") from None


def find_pin(
    trust_anchor: str | None, *, from_env: bool = False, start: Path | None = None
) -> Pin | None:
    """The pin from the option (or ``$KAMUS_TRUST_ANCHOR``, which click folds into it), else
    from ``.kamus.yaml``; ``None`` when nothing pins the anchor."""
    if trust_anchor:
        source = "$KAMUS_TRUST_ANCHOR" if from_env else "--trust-anchor"
        return Pin(_normalised(trust_anchor, source), source)
    return project_pin(start)


def pins_of(trust_anchors: Sequence[str], *, from_env: bool = False) -> list[Pin]:
    """The pins of repeated ``--trust-anchor`` options (one per cluster's bundle), else the
    ``trust-anchor`` of ``.kamus.yaml``."""
    pins = [p for a in trust_anchors if (p := find_pin(a, from_env=from_env)) is not None]
    if not pins and (top := project_pin()) is not None:
        pins = [top]
    return pins


def how_to_pin(fingerprint: str) -> str:
    return (
        f"pin it with --trust-anchor {fingerprint} (or $KAMUS_TRUST_ANCHOR), or commit the line "
        f"'{PIN_KEY}: {fingerprint}' to {PROJECT_FILE} at the repository root"
    )


# -- loading and checking a bundle ------------------------------------------------------------


def verified(text: str | bytes, pin: Pin | None, source: str, warn: Warn) -> bundle.Bundle:
    """The bundle, if its signature holds and (with a pin) its anchor is the pinned one or is
    reached from it through links; says on stderr when a link was followed."""
    try:
        loaded = bundle.load(text, pin.fingerprint if pin else None)
    except bundle.BundleError as exc:
        raise BundleRefused(f"refusing the key bundle from {source}: {exc}") from None
    if loaded.via:
        warn(
            f"the anchor changed: followed the link from the pinned {loaded.via[0]} to "
            f"{loaded.anchor}"
            + (f" (through {', '.join(loaded.via[1:])})" if len(loaded.via) > 1 else "")
            + f". The pin ({pin.source if pin else '?'}) still works; update it to "
            f"{loaded.anchor} when convenient"
        )
    return loaded


def read_bundle_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(bundle.MAX_BUNDLE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read the key bundle {path}: {exc.strerror}") from None


def keys_url(url: str) -> tuple[str, str]:
    """The base URL and the path to GET: a URL given with the bundle's own path keeps it."""
    base = url.rstrip("/")
    if base.endswith(KEYS_PATH):
        return base[: -len(KEYS_PATH)], KEYS_PATH
    return base, KEYS_PATH


def download(client: KamusClient) -> bytes:
    """The bundle's text as the encryptor serves it at ``/api/v2/keys``."""
    status, answer = client.get(KEYS_PATH, max_bytes=bundle.MAX_BUNDLE_BYTES)
    if status == 404:
        # An encryptor that has the route but no bundle says why (a KMS provider); anything
        # else that answers 404 is not an encryptor with sealing keys.
        said = server_message(404, answer) if answer.lstrip().startswith(b"{") else None
        raise ServerError(
            404,
            (said + "; " if said else f"{client.url} serves no key bundle at {KEYS_PATH}: ")
            + "check that the URL is a Kamus encryptor's, or ask the cluster's operator for "
            "the bundle file (kamus keys export)",
        )
    if status != 200:
        raise ServerError(status, server_message(status, answer))
    return answer


def check_expiry(
    loaded: bundle.Bundle, when: datetime, warn: Warn, *, allow_expired: bool, refuse: bool
) -> bool:
    """Warn within 14 days of expiry; refuse an expired bundle unless allowed. Whether it has
    expired."""
    state, expires = loaded.expiry(when)
    stamp = expires.strftime("%Y-%m-%d %H:%M UTC") if expires else ""
    if state == "soon":
        warn(
            f"warning: the key bundle's keys expire on {stamp}: fetch a current bundle soon "
            "(kamus keys fetch)"
        )
    elif state == "expired":
        if refuse and not allow_expired:
            raise BundleRefused(
                f"the key bundle's keys expired on {stamp}: a decryptor that renewed its keys may "
                "have retired them. Fetch a current bundle (kamus keys fetch), or pass "
                "--allow-expired-keys to seal anyway (the values record it)"
            )
        warn(
            f"WARNING: the key bundle's keys EXPIRED on {stamp}"
            + (
                "; sealing with them anyway (--allow-expired-keys), and every value records it"
                if refuse
                else "; fetch a current bundle (kamus keys fetch)"
            )
        )
        return True
    return False


# -- offline sealing --------------------------------------------------------------------------


def check_identity(namespace: str, service_account: str) -> str:
    """``namespace:service_account`` after the checks the encryptor makes online."""
    if service_account == "default":
        raise UsageError(f"--service-account: {DEFAULT_SERVICE_ACCOUNT_REFUSAL}")
    for name, check, value in [
        ("--namespace", check_namespace, namespace),
        ("--service-account", check_service_account, service_account),
    ]:
        try:
            check(value)
        except ValueError as exc:
            raise UsageError(f"{name} {value[:80]!r} {exc}") from None
    return sa_id(namespace, service_account)


def load_verified(
    keys: str, pin: Pin | None, connect: Callable[[str], KamusClient], warn: Warn
) -> bundle.Bundle:
    """The bundle of ``--keys FILE|URL``: a URL only under a pin; a file is checked against
    its own signature, and against the pin if there is one."""
    if is_url(keys):
        if pin is None:
            raise UsageError(
                f"--keys {keys} is a URL, and nothing pins the key bundle's anchor, so keys from "
                "the network cannot be trusted. Fetch and check it once (kamus keys fetch -u "
                "URL), then pass --trust-anchor ed25519:… (or set KAMUS_TRUST_ANCHOR, or put "
                f"'{PIN_KEY}: ed25519:…' in {PROJECT_FILE} at the repository root)"
            )
        base, _ = keys_url(keys)
        with connect(base) as client:
            text = download(client)
        loaded = verified(text, pin, keys, warn)
    else:
        loaded = verified(read_bundle_file(keys), pin, keys, warn)
        if pin is None:
            warn(
                f"the key bundle {keys} is signed by anchor {loaded.anchor}, which nothing pins: "
                f"check it with your cluster's operator, then {how_to_pin(loaded.anchor)}"
            )
    return loaded


# -- kamus keys verify ------------------------------------------------------------------------


def _time(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else "never"


def describe(loaded: bundle.Bundle) -> str:
    """What ``kamus keys verify`` prints: the anchor, the cluster, and a line per key."""
    rows = [("kid", "suite", "state", "activates", "expires")] + [
        (k.kid, str(k.suite), str(k.state), _time(k.activates), _time(k.expires))
        for k in loaded.keys
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    table = [
        "  " + "  ".join([*(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)), row[-1]])
        for row in rows
    ]
    return "\n".join(
        [
            f"anchor:  {loaded.anchor}",
            f"cluster: {loaded.cluster or '(not named)'}",
            f"issued:  {_time(loaded.issued)}",
            "keys:",
            *table,
        ]
    )
