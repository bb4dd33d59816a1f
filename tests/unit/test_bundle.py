"""The signed key bundle: its signature, its anchor and the links from an old anchor, the
generation schedule, and expiry as a sealer sees it."""

import json
import os
from datetime import UTC, datetime, timedelta

import pytest

from crypto import bundle
from crypto.bundle import BundleError
from crypto.sealing import Keyring, KeyState, Schedule, Suite

NOW = datetime(2026, 12, 6, tzinfo=UTC)
PERIOD = timedelta(days=90)
SCHEDULE = Schedule(PERIOD)
MASTER, OLD, OLDER = (bytes([i]) * 32 for i in (1, 2, 3))
SA = "team-a:api"


def anchor_of(master: bytes) -> str:
    return bundle.fingerprint(bundle.anchor_from_master(master).public_key())


def export(*masters: bytes, now: datetime = NOW, schedule: Schedule = SCHEDULE) -> str:
    return bundle.from_masters(list(masters), now=now, schedule=schedule, cluster="prod-eu")


def resign(document: dict[str, object], master: bytes) -> str:
    """A bundle altered and signed again by some anchor: valid, but not necessarily pinned."""
    document = {k: v for k, v in document.items() if k != "sig"}
    key = bundle.anchor_from_master(master)
    document["anchor"] = bundle._b64(key.public_key().public_bytes_raw())
    document["sig"] = bundle._b64(key.sign(bundle.canonical(document)))
    return json.dumps(document)


def test_an_exported_bundle_verifies_with_its_anchor_pinned() -> None:
    loaded = bundle.load(export(MASTER), trust_anchor=anchor_of(MASTER))
    assert loaded.anchor == anchor_of(MASTER)
    assert loaded.cluster == "prod-eu"
    states = {(k.suite, k.state) for k in loaded.keys}
    for suite in Suite:
        assert {(suite, s) for s in KeyState} <= states
    # The pin is accepted however it is typed.
    bundle.load(export(MASTER), trust_anchor="  " + anchor_of(MASTER).upper() + "\n")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["keys"][1].__setitem__("public", d["keys"][0]["public"]),
        lambda d: d["keys"][1].__setitem__("state", "next"),
        lambda d: d["keys"][1].__setitem__("expires", "2099-01-01T00:00:00Z"),
        lambda d: d.__setitem__("cluster", "prod-us"),
        lambda d: d.__setitem__("issued", "2030-01-01T00:00:00Z"),
        lambda d: d["keys"].pop(),
        lambda d: d.__setitem__("links", []),
        lambda d: d.__setitem__("sig", d["sig"][:-2] + ("AA" if d["sig"][-2:] != "AA" else "BA")),
    ],
)
def test_any_change_after_signing_is_refused(mutate: object) -> None:
    document = json.loads(export(MASTER, OLD))
    mutate(document)  # type: ignore[operator]
    with pytest.raises(BundleError, match=r"signature does not hold|not canonical"):
        bundle.load(json.dumps(document))


def test_a_bundle_signed_by_a_foreign_anchor_is_refused_under_a_pin() -> None:
    forged = resign(json.loads(export(MASTER)), os.urandom(32))
    bundle.load(forged)  # it vouches for itself ...
    with pytest.raises(BundleError, match="not by the pinned"):
        bundle.load(forged, trust_anchor=anchor_of(MASTER))  # ... but not for the pinned cluster


def test_a_pin_on_the_old_anchor_follows_the_link_to_the_new_one() -> None:
    rotated = export(MASTER, OLD)  # the master key rotated; the old one is a previous key
    loaded = bundle.load(rotated, trust_anchor=anchor_of(OLD))
    assert loaded.anchor == anchor_of(MASTER)
    assert loaded.via == (anchor_of(OLD),)
    assert bundle.load(rotated, trust_anchor=anchor_of(MASTER)).via == ()


def test_a_chain_of_two_links_is_followed_hop_by_hop() -> None:
    older_to_old = bundle.Link.make(
        bundle.anchor_from_master(OLDER), bundle.anchor_from_master(OLD).public_key()
    )
    old_to_new = bundle.Link.make(
        bundle.anchor_from_master(OLD), bundle.anchor_from_master(MASTER).public_key()
    )
    keys = bundle.load(export(MASTER)).keys
    text = bundle.issue(
        keys, bundle.anchor_from_master(MASTER), now=NOW, links=[old_to_new, older_to_old]
    )
    loaded = bundle.load(text, trust_anchor=anchor_of(OLDER))
    assert loaded.via == (anchor_of(OLDER), anchor_of(OLD))


def test_a_forged_link_leads_nowhere() -> None:
    """A link "signed" by the pinned anchor's public key but with someone else's signature."""
    attacker = bundle.anchor_from_master(os.urandom(32))
    forged = bundle.Link(
        bundle.anchor_from_master(OLD).public_key(),
        attacker.public_key(),
        attacker.sign(bundle.LINK_CONTEXT + attacker.public_key().public_bytes_raw()),
    )
    text = bundle.issue(bundle.load(export(MASTER)).keys, attacker, now=NOW, links=[forged])
    with pytest.raises(BundleError, match="no link from the pinned anchor"):
        bundle.load(text, trust_anchor=anchor_of(OLD))


def test_a_bundle_one_period_old_still_seals_to_a_key_the_decryptor_opens() -> None:
    fetched = bundle.load(export(MASTER, now=NOW))
    for later in (NOW + PERIOD, NOW + PERIOD + timedelta(days=30)):
        [value] = fetched.seal([b"s3cret"], SA, later)
        # The decryptor, long after: its master derives every generation it ever published.
        assert Keyring(masters=[MASTER]).open(value, SA)[0] == b"s3cret"
        assert fetched.expiry(later)[0] == "ok"
    # Sealing switches to the `next` key once it is active.
    used = {fetched.sealing_key(t).kid for t in (NOW, NOW + PERIOD)}
    assert len(used) == 2


def test_expiry_warns_within_14_days_and_then_expires() -> None:
    fetched = bundle.load(export(MASTER))
    expires = fetched.expires
    assert expires is not None
    assert fetched.expiry(expires - timedelta(days=15))[0] == "ok"
    assert fetched.expiry(expires - timedelta(days=13))[0] == "soon"
    assert fetched.expiry(expires)[0] == "expired"


def test_a_zero_period_means_one_generation_that_never_expires() -> None:
    fetched = bundle.load(export(MASTER, schedule=Schedule(timedelta(0))))
    assert {k.kid.split(":")[1] for k in fetched.keys} == {"g0"}
    assert fetched.expiry(NOW + timedelta(days=36500)) == ("ok", None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("[]", "not a Kamus key bundle"),
        ('{"format": "kamus-key-bundle/v1", "format": "x"}', "repeats"),
        ('{"format": "kamus-key-bundle/v1"}', "signature is not a string"),
    ],
)
def test_what_is_not_a_bundle_says_so(text: str, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        bundle.load(text)


def test_a_malformed_pin_is_explained() -> None:
    with pytest.raises(BundleError, match="'ed25519:' and 64 hex digits"):
        bundle.load(export(MASTER), trust_anchor="sha256:abc")
