"""crypto/recipients.py and the m1 threshold: Shamir shares of the data key, age stanzas, the
lookups a holder opens a value with, recipient policies, and changing a value's stanzas."""

import asyncio
import base64
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyrage import x25519

from crypto import m1
from crypto.aes import AESKeyManager
from crypto.errors import DecryptionError, MalformedCiphertext, Refused
from crypto.lifecycle import KeyPolicy, RewrapStatus
from crypto.recipients import (
    AgeIdentities,
    AgeRecipient,
    NotEnoughShares,
    PolicyRefused,
    RecipientPolicy,
    open_offline,
    restanza,
    wrap_for,
)
from crypto.sealing import EPOCH, KeyState, SealingPublicKey, Suite, derive

SA = "team-a:app"


SECRETS: dict[str, str] = {}  # recipient -> its identity, to build holders of several


def age_pair() -> tuple[AgeIdentities, AgeRecipient]:
    identity = x25519.Identity.generate()
    SECRETS[str(identity.to_public())] = str(identity)
    return AgeIdentities(str(identity), "test"), AgeRecipient(str(identity.to_public()))


def holding(*recipients: AgeRecipient) -> AgeIdentities:
    return AgeIdentities("\n".join(SECRETS[r.recipient] for r in recipients), "holder")


def hpke(master: bytes, generation: int = 0) -> SealingPublicKey:
    key = derive(master, Suite.X25519, generation)
    return SealingPublicKey(key.kid, key.suite, key.public, KeyState.ACTIVE, EPOCH, None)


class HpkeRecipient:
    def __init__(self, key: SealingPublicKey) -> None:
        self.key = key

    @property
    def name(self) -> str:
        return f"hpke:{self.key.kid}"

    @property
    def stanza_name(self) -> str:
        return f"hpke-x25519:{self.key.kid}"

    async def wrap(self, secret: bytes, sa_id: str) -> m1.Stanza:
        return self.key.wrap(secret, sa_id)


def seal_for(groups: list[list[object]], threshold: int, plaintext: bytes = b"pt") -> str:
    data_key = m1.new_data_key()
    stanzas = asyncio.run(wrap_for(data_key, groups, SA, threshold))  # type: ignore[arg-type]
    return m1.seal(data_key, stanzas, [plaintext], SA, threshold=threshold)[0]


@settings(max_examples=25, deadline=None)
@given(data=st.data(), groups=st.integers(2, 7))
def test_any_threshold_of_shares_gives_the_data_key_and_fewer_do_not(
    data: st.DataObject, groups: int
) -> None:
    threshold = data.draw(st.integers(2, groups))
    key = os.urandom(32)
    shares = dict(enumerate(m1.split_data_key(key, groups, threshold), 1))
    chosen = data.draw(st.permutations(list(shares)))
    assert m1.combine_shares({g: shares[g] for g in chosen[:threshold]}) == key
    # One share short: a different key (the commitment then refuses it).
    assert m1.combine_shares({g: shares[g] for g in chosen[: threshold - 1]}) != key or (
        threshold - 1 == 0
    )


def test_a_threshold_value_opens_with_enough_groups_and_names_each_group_otherwise() -> None:
    ids = [age_pair() for _ in range(3)]
    value = m1.parse(seal_for([[r] for _, r in ids], 2))
    assert value.threshold == 2
    assert [s.group for s in value.stanzas] == [1, 2, 3]

    opened = open_offline(value, holding(ids[0][1], ids[2][1]))
    assert opened.sa_id == SA
    assert m1.open_value(value, opened.data_key, SA) == b"pt"
    assert [s.group for s in opened.used] == [1, 3]

    with pytest.raises(NotEnoughShares) as short:
        open_offline(value, ids[1][0])
    message = str(short.value)
    assert "needs shares of 2 of its 3 recipient groups, and keys of only 1 are held here" in (
        message
    )
    assert f"group 2 (age:{ids[1][1].recipient}): a key is held here" in message
    assert f"group 1 (age:{ids[0][1].recipient}): no key held here" in message


def test_a_group_may_hold_several_recipients_any_of_which_brings_its_share() -> None:
    a, b, c = age_pair(), age_pair(), age_pair()
    value = m1.parse(seal_for([[a[1], b[1]], [c[1]]], 2))
    assert [s.group for s in value.stanzas] == [1, 1, 2]
    opened = open_offline(value, holding(b[1], c[1]))
    assert m1.open_value(value, opened.data_key, SA) == b"pt"
    # Two recipients of one group are one share: not enough.
    with pytest.raises(NotEnoughShares):
        open_offline(value, holding(a[1], b[1]))


@pytest.mark.parametrize(
    ("change", "fact"),
    [
        (lambda h: {**h, "t": 1}, "threshold is malformed"),
        (lambda h: {**h, "t": True}, "threshold is malformed"),
        (lambda h: {**h, "t": 4}, "stanza groups do not match its threshold"),
        (lambda h: {**h, "t": 40}, "threshold is malformed"),
        (
            lambda h: {**h, "s": [{**s, "g": "0"} for s in h["s"]]},
            "stanza with a malformed group",
        ),
        (lambda h: {k: v for k, v in h.items() if k != "t"}, "groups do not match"),
        (
            lambda h: {**h, "s": [{k: v for k, v in s.items() if k != "g"} for s in h["s"]]},
            "groups do not match",
        ),
    ],
)
def test_a_threshold_header_is_checked_for_its_shape(change: object, fact: str) -> None:
    ids = [age_pair() for _ in range(3)]
    value = seal_for([[r] for _, r in ids], 2)
    kamus, tag, header, mac, payload = value.split("$")
    parsed = json.loads(base64.urlsafe_b64decode(header + "=="))
    new = change(parsed)  # type: ignore[operator]
    text = base64.urlsafe_b64encode(json.dumps(new).encode()).rstrip(b"=").decode()
    with pytest.raises(MalformedCiphertext) as raised:
        m1.parse("$".join([kamus, tag, text, mac, payload]))
    assert fact in str(raised.value)


def test_the_age_stanza_carries_the_identity_and_must_match_the_value() -> None:
    ids, recipient = age_pair()
    data_key = m1.new_data_key()
    # An age stanza made for another identity, under the same data key and the right MAC.
    stanza = recipient.wrap_now(data_key, "team-b:app")
    value = m1.parse(m1.seal(data_key, [stanza], [b"x"], SA)[0])
    with pytest.raises(DecryptionError) as raised:
        open_offline(value, ids)
    assert raised.value.reason == "the age stanza's identity is not the value's"


def test_age_identity_files_are_read_as_age_keygen_writes_them() -> None:
    identity = x25519.Identity.generate()
    text = f"# created: 2026-12-07\n# public key: {identity.to_public()}\n\n{identity}\n"
    assert AgeIdentities(text, "dr.key").recipients == [str(identity.to_public())]
    with pytest.raises(ValueError, match=r"dr.key, line 2: not an age X25519 identity"):
        AgeIdentities(f"{identity}\nAGE-PLUGIN-YUBIKEY-1XYZ\n", "dr.key")
    with pytest.raises(ValueError, match="holds no age identity"):
        AgeIdentities("# nothing\n", "dr.key")
    with pytest.raises(ValueError, match="not an age X25519 recipient"):
        AgeRecipient("age1notreally")


def test_an_age_key_has_one_spelling_in_stanzas_policies_and_removals() -> None:
    """bech32 is case-insensitive: AGE1… names the same key as age1…. Stanzas carry the lower
    case age-keygen prints; policies and removals written otherwise still match; a stanza that
    spells it otherwise is refused by the format (else a forbidden key would pass)."""
    ids, recipient = age_pair()
    _, second = age_pair()
    shouted = AgeRecipient(recipient.recipient.upper())
    assert shouted == recipient
    value = m1.parse(seal_for([[shouted], [second]], 1))
    assert [s.kid for s in value.stanzas] == [recipient.recipient, second.recipient]
    opened = open_offline(value, ids)
    assert m1.open_value(value, opened.data_key, opened.sa_id) == b"pt"
    upper = f"age:{recipient.recipient.upper()}"
    RecipientPolicy(required=(upper,)).check(value)
    with pytest.raises(PolicyRefused):
        RecipientPolicy(forbidden=(upper,)).check(value)
    new = restanza(value, opened, remove=[upper])
    assert new is not None
    assert [s.kid for s in m1.parse(new).stanzas] == [second.recipient]

    data_key = m1.new_data_key()
    stanza = recipient.wrap_now(data_key, SA)
    respelled = m1.Stanza("age", stanza.kid.upper(), stanza.wrapped)
    with pytest.raises(MalformedCiphertext, match="lower-case age1 recipient"):
        m1.parse(m1.seal(data_key, [respelled], [b"x"], SA)[0])


def test_an_age_identity_given_for_a_recipient_is_never_repeated() -> None:
    identity = str(x25519.Identity.generate())
    secret_part = identity.upper().removeprefix("AGE-SECRET-KEY-")
    for pasted in (identity, identity.lower(), f"  {identity}\n"):
        with pytest.raises(ValueError, match="this is an age identity") as raised:
            AgeRecipient(pasted)
        assert secret_part not in str(raised.value).upper()
        assert "age-keygen -y" in str(raised.value)
    with pytest.raises(ValueError, match="not an age X25519 recipient") as raised:
        AgeRecipient(identity[:-1].replace("AGE-SECRET-KEY-", ""))  # nor any other text
    assert identity[20:40] not in str(raised.value)


def test_a_stanza_is_opened_by_lookup_not_by_trial() -> None:
    """Ten foreign age stanzas before ours: only ours is ever decrypted."""
    ids, mine = age_pair()
    others = [age_pair()[1] for _ in range(10)]
    value = m1.parse(seal_for([[r] for r in [*others, mine]], 1))
    tried: list[str] = []
    real = ids.unwrap

    def counting(stanza: m1.Stanza) -> tuple[str, bytes]:
        tried.append(stanza.kid)
        return real(stanza)

    ids.unwrap = counting  # type: ignore[method-assign]
    assert open_offline(value, ids).sa_id == SA
    assert tried == [mine.recipient]


def test_recipient_policy_patterns() -> None:
    _, dr = age_pair()
    master = os.urandom(32)
    value = m1.parse(seal_for([[HpkeRecipient(hpke(master))], [dr]], 1))
    RecipientPolicy(required=("age:*", "hpke-x25519:*")).check(value)
    RecipientPolicy(required=(f"age:{dr.recipient}",), forbidden=("aws:*",)).check(value)
    with pytest.raises(PolicyRefused, match="refuses values without a recipient matching 'gcp:"):
        RecipientPolicy(required=("gcp:*",)).check(value)
    with pytest.raises(PolicyRefused) as raised:
        RecipientPolicy(forbidden=("age:*",)).check(value)
    assert f"and this one has age:{dr.recipient}" in str(raised.value)
    assert "kamus recipients remove" in str(raised.value)


def test_a_decryptor_opens_a_threshold_value_with_the_sealing_keys_it_holds() -> None:
    """Groups of two sealing keys of this Kamus (its master and a previous one), and an age
    key it does not hold: shares of two groups are here."""
    active, previous = os.urandom(32), os.urandom(32)
    _, dr = age_pair()
    value = seal_for(
        [[HpkeRecipient(hpke(active))], [HpkeRecipient(hpke(previous, 3))], [dr]], 2, b"both"
    )
    both = AESKeyManager(active, [previous])
    assert asyncio.run(both.decrypt(value, SA)) == b"both"
    alone = AESKeyManager(active)
    with pytest.raises(NotEnoughShares) as raised:
        asyncio.run(alone.decrypt(value, SA))
    assert "group 3 (age:" in str(raised.value)
    # A threshold value is not rewrapped by a decryptor.
    with pytest.raises(Refused, match="not rewrapped by a decryptor"):
        asyncio.run(both.rewrap(value, SA))


def test_changing_stanzas_keeps_the_payload_and_refuses_to_leave_none() -> None:
    ids, dr = age_pair()
    master = os.urandom(32)
    text = seal_for([[HpkeRecipient(hpke(master))], [dr]], 1)
    value = m1.parse(text)
    opened = open_offline(value, ids)
    _, extra = age_pair()
    new = restanza(value, opened, add=[extra.wrap_now(opened.data_key, SA)])
    assert new is not None
    assert m1.parse(new).payload == value.payload
    assert len(m1.parse(new).stanzas) == 3
    assert restanza(value, opened, add=[value.stanzas[1]]) is None  # already there
    assert restanza(value, opened, remove=["gcp:*"]) is None  # nothing matches
    with pytest.raises(ValueError, match="remove every recipient"):
        restanza(value, opened, remove=["*"])
    threshold = m1.parse(seal_for([[dr], [extra]], 2))
    with pytest.raises(ValueError, match="threshold value"):
        restanza(threshold, opened, add=[extra.wrap_now(opened.data_key, SA)])


def test_changing_recipients_in_the_decryptor_checks_the_result_against_the_policy() -> None:
    master = os.urandom(32)
    _, dr = age_pair()
    value = seal_for([[HpkeRecipient(hpke(master))]], 1)
    manager = AESKeyManager(master, policy=KeyPolicy.of([], forbidden=["age:*"]))
    with pytest.raises(PolicyRefused):
        asyncio.run(manager.change_recipients(value, SA, add=[dr]))
    plain = AESKeyManager(master)
    checked = asyncio.run(plain.change_recipients(value, SA, add=[dr], check_only=True))
    assert (checked.status, checked.ciphertext) == (RewrapStatus.STALE, None)
    done = asyncio.run(plain.change_recipients(value, SA, add=[dr]))
    assert done.status is RewrapStatus.REWRAPPED
    assert done.ciphertext is not None
    assert asyncio.run(plain.decrypt(done.ciphertext, SA)) == b"pt"
    # As another identity: the data key does not unwrap, nothing is changed.
    with pytest.raises(DecryptionError):
        asyncio.run(plain.change_recipients(value, "team-a:web", add=[dr]))
