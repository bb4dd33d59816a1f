"""The m1 format with the real HPKE: round trips, tampering of every field, cross-identity,
key commitment, rewrapping, and a parser that only ever says "not a Kamus ciphertext"."""

import base64
import contextlib
import json
import os
import string
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import m1
from crypto.errors import DecryptionError, MalformedCiphertext
from crypto.sealing import Keyring, KeyState, Schedule, SealingPublicKey, Suite, derive

NOW = datetime(2026, 12, 6, tzinfo=UTC)
SCHEDULE = Schedule()
MASTER = bytes(range(32))
OTHER_CLUSTER = bytes(range(1, 33))
SA = "team-a:api"


def public(master: bytes, suite: Suite = Suite.X25519, generation: int = 3) -> SealingPublicKey:
    key = derive(master, suite, generation)
    return SealingPublicKey(
        key.kid,
        suite,
        key.public,
        KeyState.ACTIVE,
        SCHEDULE.activates(generation),
        SCHEDULE.expires(generation),
    )


def seal(plaintexts: list[bytes], sa_id: str = SA, **kw: object) -> tuple[list[str], bytes]:
    data_key = m1.new_data_key()
    stanza = public(MASTER).wrap(data_key, sa_id)
    return m1.seal(data_key, [stanza], plaintexts, sa_id, **kw), data_key  # type: ignore[arg-type]


def header(value: str) -> dict[str, object]:
    text = value.split("$")[2]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    return decoded


def with_header(value: str, new: dict[str, object]) -> str:
    parts = value.split("$")
    parts[2] = base64.urlsafe_b64encode(json.dumps(new).encode()).decode().rstrip("=")
    return "$".join(parts)


RING = Keyring(masters=[MASTER])


def test_a_value_opens_as_its_identity_only() -> None:
    [value], _ = seal([b"s3cret"])
    assert value.startswith("kamus$m1$")
    assert RING.open(value, SA) == (b"s3cret", public(MASTER).kid)
    for other in ("team-a:web", "team-b:api", "team-aa:pi", "team-a:api "):
        with pytest.raises(DecryptionError):
            RING.open(value, other)


def test_the_identity_is_bound_in_hpke_info_and_payload_even_with_a_matching_tag() -> None:
    """Rewriting the identity tag alone cannot move a value to another identity: the stanza's
    HPKE info and the payload's associated data both hold the identity."""
    [value], data_key = seal([b"s3cret"])
    forged = header(value) | {"id": m1.identity_tag("team-a:web")}
    with pytest.raises(DecryptionError) as raised:
        RING.open(with_header(value, forged), "team-a:web")
    assert "HPKE" in raised.value.reason
    # Even with the data key (a holder re-sealing the header for another identity), the payload
    # does not open as that identity.
    moved = m1.parse(value)
    with pytest.raises(DecryptionError):
        m1.open_value(moved, data_key, "team-a:web")


def test_one_document_shares_one_wrap_and_each_value_opens_alone() -> None:
    values, _ = seal([b"one", b"two", b"three"])
    heads = {v.rsplit("$", 1)[0] for v in values}
    assert len(heads) == 1  # one header, one HPKE operation, one MAC
    assert [RING.open(v, SA)[0] for v in values] == [b"one", b"two", b"three"]


@pytest.mark.parametrize(
    ("field", "new"),
    [
        ("c", base64.urlsafe_b64encode(bytes(32)).decode().rstrip("=")),
        ("id", "00000000"),
        ("xk", True),
    ],
)
def test_tampering_a_header_field_fails(field: str, new: object) -> None:
    [value], _ = seal([b"s3cret"])
    tampered = header(value) | {field: new}
    with pytest.raises(DecryptionError):
        RING.open(with_header(value, tampered), SA)


@pytest.mark.parametrize("field", ["k", "kid", "w"])
def test_tampering_a_stanza_field_fails(field: str) -> None:
    [value], _ = seal([b"s3cret"])
    h = header(value)
    stanza = dict(h["s"][0])  # type: ignore[index]
    original = stanza[field]
    stanza[field] = original[:-2] + ("AA" if not original.endswith("AA") else "BA")
    with pytest.raises(DecryptionError):
        RING.open(with_header(value, h | {"s": [stanza]}), SA)


def test_adding_or_removing_a_stanza_without_the_data_key_fails() -> None:
    data_key = m1.new_data_key()
    ours, theirs = public(MASTER), public(OTHER_CLUSTER)
    [value] = m1.seal(data_key, [ours.wrap(data_key, SA), theirs.wrap(data_key, SA)], [b"x"], SA)
    h = header(value)
    stanzas = h["s"]
    assert isinstance(stanzas, list)
    with pytest.raises(DecryptionError) as raised:
        RING.open(with_header(value, h | {"s": stanzas[:1]}), SA)  # the other cluster's removed
    assert "MAC" in raised.value.reason
    # A stanza for the attacker's own key, wrapping a data key of their own choosing.
    attacker = public(os.urandom(32))
    planted = attacker.wrap(m1.new_data_key(), SA).to_json()
    with pytest.raises(DecryptionError):
        RING.open(with_header(value, h | {"s": [*stanzas, planted]}), SA)


def test_every_single_character_change_fails() -> None:
    """Each character of header, MAC and payload, changed to another base64url character: the
    value never opens, and never to another plaintext."""
    [value], _ = seal([b"s3cret"])
    start = len("kamus$m1$")
    alphabet = string.ascii_letters + string.digits + "-_"
    opened = 0
    for i in range(start, len(value)):
        if value[i] == "$":
            continue
        changed = value[:i] + alphabet[(alphabet.index(value[i]) + 7) % 64] + value[i + 1 :]
        try:
            RING.open(changed, SA)
        except DecryptionError:
            continue
        opened += 1
    assert opened == 0


def test_the_format_is_key_committing() -> None:
    """Two recipients whose stanzas wrap different data keys (an "invisible salamander"): the
    one whose key the header does not commit to fails, before its payload is opened."""
    k1, k2 = m1.new_data_key(), m1.new_data_key()
    ours, theirs = public(MASTER), public(OTHER_CLUSTER)
    [value] = m1.seal(k1, [ours.wrap(k1, SA), theirs.wrap(k2, SA)], [b"payload"], SA)
    assert RING.open(value, SA)[0] == b"payload"
    with pytest.raises(DecryptionError) as raised:
        Keyring(masters=[OTHER_CLUSTER]).open(value, SA)
    assert "commitment" in raised.value.reason
    # Re-deriving the header for k2 and keeping the payload made under k1 cannot help either:
    # the payload's associated data holds k1's commitment.
    with pytest.raises(DecryptionError):
        m1.open_value(m1.parse(value), k2, SA)


def test_rewrap_adds_a_recipient_keeps_the_payload_and_needs_the_data_key() -> None:
    [value], data_key = seal([b"s3cret"])
    parsed = m1.parse(value)
    other = public(OTHER_CLUSTER).wrap(data_key, SA)
    rewrapped = m1.rewrap(parsed, data_key, SA, [*parsed.stanzas, other])
    assert rewrapped.rsplit("$", 1)[1] == value.rsplit("$", 1)[1]  # the payload is untouched
    assert RING.open(rewrapped, SA)[0] == b"s3cret"
    assert Keyring(masters=[OTHER_CLUSTER]).open(rewrapped, SA)[0] == b"s3cret"
    with pytest.raises(DecryptionError):
        m1.rewrap(parsed, m1.new_data_key(), SA, [other])  # a made-up data key
    with pytest.raises(DecryptionError):
        m1.rewrap(parsed, data_key, "team-a:web", [other])  # the identity never changes


def test_a_rotated_generation_still_opens_years_later() -> None:
    [value], _ = seal([b"old"])  # generation 3
    later = Keyring(masters=[os.urandom(32), MASTER])  # the master rotated since
    assert later.open(value, SA)[0] == b"old"
    assert SCHEDULE.generation_at(NOW + timedelta(days=3650)) > 40


def test_the_post_quantum_suite_round_trips() -> None:
    data_key = m1.new_data_key()
    key = public(MASTER, Suite.MLKEM768_X25519)
    [value] = m1.seal(data_key, [key.wrap(data_key, SA)], [b"pq"], SA)
    assert RING.open(value, SA) == (b"pq", key.kid)
    with pytest.raises(DecryptionError):
        RING.open(value, "team-b:api")


@pytest.mark.parametrize(
    ("mutate", "fact"),
    [
        (lambda h: h | {"extra": 1}, "exactly the fields"),
        (lambda h: {k: v for k, v in h.items() if k != "c"}, "exactly the fields"),
        (lambda h: h | {"s": []}, "stanzas"),
        (lambda h: h | {"s": h["s"] * 33}, "stanzas"),
        (lambda h: h | {"id": "ABCDEFGH"}, "identity tag"),
        (lambda h: h | {"xk": False}, "expired-keys"),
        (lambda h: h | {"s": [{"k": "hpke-x25519", "kid": "x", "w": 5}]}, "stanza"),
        (lambda h: h | {"s": [{"k": "Bad Kind", "kid": "x", "w": "AA"}]}, "kind"),
    ],
)
def test_a_malformed_header_is_named_before_any_key_is_used(mutate: object, fact: str) -> None:
    [value], _ = seal([b"s3cret"])
    bad = with_header(value, mutate(header(value)))  # type: ignore[operator]
    with pytest.raises(MalformedCiphertext) as raised:
        RING.open(bad, SA)
    assert fact in str(raised.value)
    assert str(raised.value).startswith("this is not a Kamus ciphertext: the m1 value's")


def test_a_repeated_header_field_is_malformed() -> None:
    [value], _ = seal([b"s3cret"])
    text = json.dumps(header(value))[:-1] + ', "id": "00000000"}'
    parts = value.split("$")
    parts[2] = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
    with pytest.raises(MalformedCiphertext, match="repeats"):
        m1.parse("$".join(parts))


def test_a_value_for_no_key_held_here_names_the_key_ids() -> None:
    data_key = m1.new_data_key()
    theirs = public(OTHER_CLUSTER)
    [value] = m1.seal(data_key, [theirs.wrap(data_key, SA)], [b"x"], SA)
    with pytest.raises(MalformedCiphertext) as raised:
        RING.open(value, SA)
    assert theirs.kid in str(raised.value)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.ascii_letters + string.digits + '-_$={}":,', max_size=300))
def test_the_parser_only_ever_raises_malformed(text: str) -> None:
    with contextlib.suppress(MalformedCiphertext):
        m1.parse("kamus$m1$" + text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_any_header_bytes_are_refused_as_malformed_or_fail_the_mac(raw: bytes) -> None:
    [value], _ = seal([b"s3cret"])
    parts = value.split("$")
    parts[2] = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    with pytest.raises(DecryptionError):
        RING.open("$".join(parts), SA)
