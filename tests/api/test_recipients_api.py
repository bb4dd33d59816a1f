"""Issue 22 in the decryptor (AES provider): recipient policies on decrypt, the stanza kinds in
the audit line, and ``POST /api/v2/rewrap`` adding and removing recipients only as
``Decryptor__AllowedRecipients`` allows. The whole flow with real processes:
tests/e2e/test_multi_cluster.py."""

import base64
import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pyrage import x25519

from crypto import bundle, m1
from crypto.recipients import AgeIdentities, AgeRecipient, open_offline
from crypto.sealing import EPOCH, KeyState, Schedule, SealingPublicKey, Suite, derive
from decryptor.app import create_app
from tests.k8s_double import KubeApiDouble
from tests.support.settings import SettingsFactory, audit_events

SA_ID = "team-a:app"
REWRAP = "/api/v2/rewrap"
DECRYPT = "/api/v1/decrypt"
ADMIN = "alice@example.com"
DR = x25519.Identity.generate()
MALLORY = x25519.Identity.generate()
NOW = datetime.now(UTC)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def public(master: bytes, generation: int = 0) -> SealingPublicKey:
    key = derive(master, Suite.X25519, generation)
    return SealingPublicKey(key.kid, key.suite, key.public, KeyState.ACTIVE, EPOCH, None)


def sealed(master: bytes, plaintext: str, *, age: bool = False, extra_master: bytes = b"") -> str:
    """A value for ``SA_ID`` sealed to ``master``'s generation 0 (and optionally a break-glass
    age stanza and another cluster's key)."""
    data_key = m1.new_data_key()
    stanzas = [public(master).wrap(data_key, SA_ID)]
    if extra_master:
        stanzas.append(public(extra_master).wrap(data_key, SA_ID))
    if age:
        stanzas.append(AgeRecipient(str(DR.to_public())).wrap_now(data_key, SA_ID))
    return m1.seal(data_key, stanzas, [plaintext.encode()], SA_ID)[0]


@pytest.fixture
def master(aes_key: str) -> bytes:
    return base64.b64decode(aes_key)


@pytest.fixture
def make_client(
    make_settings: SettingsFactory, kubeconfig: object
) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**settings: str) -> TestClient:
        client = TestClient(create_app(make_settings(**settings)))
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def decrypt(client: TestClient, kube_api: KubeApiDouble, value: str) -> Any:
    token = kube_api.issue_token("team-a", "app")
    return client.post(DECRYPT, json={"data": value}, headers=bearer(token))


def test_the_audit_line_names_the_stanza_kinds_of_the_value(
    make_client: Callable[..., TestClient],
    kube_api: KubeApiDouble,
    master: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_client()
    answer = decrypt(client, kube_api, sealed(master, "x", age=True, extra_master=os.urandom(32)))
    assert answer.status_code == 200, answer.text
    [line] = [e for e in audit_events(caplog) if e.get("route") == DECRYPT]
    assert line["stanzas"] == "age,hpke-x25519"


@pytest.mark.parametrize(
    ("setting", "pattern", "with_age", "opens", "said"),
    [
        ("Decryptor__RequiredRecipients", "age:*", True, True, ""),
        ("Decryptor__RequiredRecipients", "age:*", False, False, "refuses values without"),
        ("Decryptor__RequiredRecipients", f"age:{DR.to_public()}", True, True, ""),
        ("Decryptor__RequiredRecipients", f"age:{MALLORY.to_public()}", True, False, "without"),
        ("Decryptor__ForbiddenRecipients", "age:*", True, False, "refuses values with a"),
        ("Decryptor__ForbiddenRecipients", "age:*", False, True, ""),
    ],
)
def test_recipient_policies_on_decrypt(
    make_client: Callable[..., TestClient],
    kube_api: KubeApiDouble,
    master: bytes,
    setting: str,
    pattern: str,
    with_age: bool,
    opens: bool,
    said: str,
) -> None:
    client = make_client(**{setting: pattern})
    answer = decrypt(client, kube_api, sealed(master, "policy", age=with_age))
    if opens:
        assert answer.status_code == 200, answer.text
        assert answer.text == "policy"
        return
    assert answer.status_code == 400
    assert said in answer.text
    assert setting in answer.text  # says which setting refuses it
    assert "policy" not in answer.text.replace("policy (", "")


def test_a_stanza_added_to_pass_the_policy_fails_the_mac(
    make_client: Callable[..., TestClient], kube_api: KubeApiDouble, master: bytes
) -> None:
    """Whoever holds no data key cannot add the required stanza: the header's MAC covers it."""
    client = make_client(Decryptor__RequiredRecipients="age:*")
    plain = sealed(master, "x")
    value = m1.parse(plain)
    dr_stanza = m1.parse(sealed(master, "y", age=True)).stanzas[1]
    header = json.loads(base64.urlsafe_b64decode(value.header_text + "=="))
    header["s"].append(dr_stanza.to_json())
    text = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    kamus, m1_tag, _, mac, payload = plain.split("$")
    answer = decrypt(client, kube_api, "$".join([kamus, m1_tag, text, mac, payload]))
    assert answer.status_code == 400
    assert "cannot be decrypted" in answer.text


@pytest.fixture
def admin(kube_api: KubeApiDouble) -> dict[str, str]:
    kube_api.grant(ADMIN, group="soluto.com", resource="kamussecrets", verb="update",
                   namespace="team-a")  # fmt: skip
    return bearer(kube_api.issue_user_token(ADMIN))


def rewrap(client: TestClient, headers: dict[str, str], value: str, **extra: Any) -> Any:
    body = {"namespace": "team-a", "serviceAccount": "app", "items": {"v": value}, **extra}
    return client.post(REWRAP, json=body, headers=headers)


def test_adding_a_recipient_not_allowed_is_refused_and_allowed_ones_are_added(
    make_client: Callable[..., TestClient],
    kube_api: KubeApiDouble,
    admin: dict[str, str],
    master: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    other_cluster = os.urandom(32)
    their_bundle = bundle.from_masters([other_cluster], cluster="us", now=NOW, schedule=Schedule())
    anchor = bundle.fingerprint(bundle.anchor_from_master(other_cluster).public_key())
    client = make_client(
        Decryptor__AllowedRecipients=f"age:{DR.to_public()},anchor:{anchor}",
    )
    value = sealed(master, "s3cret")

    for body in (
        {"addRecipients": [f"age:{MALLORY.to_public()}"]},
        {"addBundles": [bundle.from_masters([os.urandom(32)], now=NOW, schedule=Schedule())]},
    ):
        refused = rewrap(client, admin, value, **body)
        assert refused.status_code == 403, refused.text
        assert refused.json()["type"].endswith("recipient-not-allowed")
        assert "Decryptor__AllowedRecipients" in refused.json()["detail"]

    # The allowed cluster's bundle, but an old copy whose keys have expired: said.
    stale = bundle.from_masters([other_cluster], now=NOW - timedelta(days=400), schedule=Schedule())
    expired = rewrap(client, admin, value, addBundles=[stale])
    assert expired.status_code == 400
    assert "key bundle 1 has expired: send a current one" in expired.json()["detail"]

    # Not a kind the decryptor can wrap for: said, not tried.
    kms = rewrap(client, admin, value, addRecipients=["aws:arn:aws:kms:eu-west-1:1:key/x"])
    assert kms.status_code == 403  # not allowed comes first
    # A recipient change and upgradeLegacy are separate calls.
    both = rewrap(client, admin, value, upgradeLegacy=True, removeRecipients=["age:*"])
    assert both.status_code == 400

    added = rewrap(
        client,
        admin,
        value,
        addRecipients=[f"age:{DR.to_public()}"],
        addBundles=[their_bundle],
    )
    assert added.status_code == 200, added.text
    item = added.json()["items"]["v"]
    assert item["status"] == "rewrapped"
    new = m1.parse(item["data"])
    assert new.payload == m1.parse(value).payload
    assert [s.kind for s in new.stanzas] == ["hpke-x25519", "age", "hpke-x25519"]
    # The break-glass key opens it; the decryptor still does.
    opened = open_offline(new, AgeIdentities(str(DR), "dr"))
    assert m1.open_value(new, opened.data_key, opened.sa_id) == b"s3cret"
    assert decrypt(client, kube_api, item["data"]).text == "s3cret"

    # Again: unchanged. Check mode returns no value.
    again = rewrap(client, admin, item["data"], addRecipients=[f"age:{DR.to_public()}"])
    assert again.json()["items"]["v"]["status"] == "unchanged"
    check = rewrap(client, admin, item["data"], removeRecipients=["age:*"], check=True)
    assert check.json()["items"]["v"] == {
        "status": "stale",
        "keyId": new.stanzas[0].kid,
        "targetKeyId": new.stanzas[0].kid,
    }
    line = [e for e in audit_events(caplog) if e.get("route") == REWRAP][-1]
    assert "s3cret" not in str(audit_events(caplog))
    assert line["user"] == ADMIN


def test_an_age_key_is_allowed_in_any_case_and_an_identity_is_never_repeated(
    make_client: Callable[..., TestClient],
    admin: dict[str, str],
    master: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_client(Decryptor__AllowedRecipients=f"age:{str(DR.to_public()).upper()}")
    value = sealed(master, "s3cret")
    # The break-glass holder's secret half, pasted by mistake: refused, and not said back.
    pasted = rewrap(client, admin, value, addRecipients=[f"age:{DR}"])
    assert pasted.status_code == 403, pasted.text
    assert "an age identity (AGE-SECRET-KEY-1…) is not in" in pasted.json()["detail"]
    secret = str(DR).removeprefix("AGE-SECRET-KEY-")
    assert secret not in pasted.text
    assert secret not in caplog.text
    # The allowed key, in the other case from the setting's: one key, one spelling.
    added = rewrap(client, admin, value, addRecipients=[f"age:{DR.to_public()}"])
    assert added.status_code == 200, added.text
    new = m1.parse(added.json()["items"]["v"]["data"])
    assert [s.kid for s in new.stanzas if s.kind == "age"] == [str(DR.to_public())]


def test_removing_every_recipient_or_breaking_the_policy_is_refused(
    make_client: Callable[..., TestClient],
    admin: dict[str, str],
    master: bytes,
) -> None:
    client = make_client(Decryptor__RequiredRecipients="age:*")
    value = sealed(master, "x", age=True)
    everything = rewrap(client, admin, value, removeRecipients=["*"]).json()["items"]["v"]
    assert "remove every recipient" in everything["error"]
    policy = rewrap(client, admin, value, removeRecipients=["age:*"]).json()["items"]["v"]
    assert "Decryptor__RequiredRecipients" in policy["error"]
    # A value in another format has no recipients to change.
    plain = rewrap(client, admin, "kamus$a1$AAAAAAAA$AAAA", removeRecipients=["age:*"])
    assert "only m1 values have recipients" in plain.json()["items"]["v"]["error"]
