"""POST /api/v2/rewrap on the AES provider: RBAC, identity, every AES-side format, retired keys,
and no plaintext in any answer or log line. The KMS providers: tests/providers/test_rewrap.py."""

import base64
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from crypto import m1
from crypto.aes import key_id
from crypto.sealing import EPOCH, Keyring, KeyState, SealingPublicKey, Suite, derive
from decryptor.app import create_app
from tests.k8s_double import KubeApiDouble
from tests.support.settings import (
    SettingsFactory,
    aes_encrypt,
    audit_events,
    kamus_aes_value,
    new_key,
)
from tests.support.values import sealed_to_generation

REWRAP = "/api/v2/rewrap"
DECRYPT = "/api/v1/decrypt"
ADMIN = "alice@example.com"  # a person: rewrap is not for service accounts alone
PLAINTEXTS = ["hunter2-🦄-plain", "correct horse battery staple", "p@ss=w0rd/+"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def grant_namespace(kube_api: KubeApiDouble, user: str, namespace: str) -> None:
    kube_api.grant(
        user, group="soluto.com", resource="kamussecrets", verb="update", namespace=namespace
    )


def grant_legacy(kube_api: KubeApiDouble, user: str) -> None:
    kube_api.grant(user, group="soluto.com", resource="kamussecrets/legacy", verb="update")


@pytest.fixture
def previous_key() -> str:
    return new_key()


@pytest.fixture
def client(
    make_settings: SettingsFactory, kubeconfig: object, previous_key: str
) -> Iterator[TestClient]:
    settings = make_settings(**{"KeyManagement__AES__PreviousKeys": previous_key})
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def admin(kube_api: KubeApiDouble) -> dict[str, str]:
    grant_namespace(kube_api, ADMIN, "team-a")
    return bearer(kube_api.issue_user_token(ADMIN))


def rewrap(client: TestClient, headers: dict[str, str], items: dict[str, str], **extra: Any) -> Any:
    body = {"namespace": "team-a", "serviceAccount": "app", "items": items, **extra}
    return client.post(REWRAP, json=body, headers=headers)


def decrypts_as(
    client: TestClient, kube_api: KubeApiDouble, ciphertext: str, namespace: str, sa: str
) -> Any:
    token = kube_api.issue_token(namespace, sa)
    return client.post(DECRYPT, json={"data": ciphertext}, headers=bearer(token))


def active_kid(master_b64: str) -> str:
    return Keyring(masters=[base64.b64decode(master_b64)]).active(Suite.X25519).kid


def test_every_aes_format_moves_to_the_active_sealing_key_for_the_same_identity(
    client: TestClient,
    kube_api: KubeApiDouble,
    admin: dict[str, str],
    aes_key: str,
    previous_key: str,
) -> None:
    items = {
        "a1-previous": aes_encrypt(previous_key, "one", "team-a:app"),
        "a1-active": aes_encrypt(aes_key, "two", "team-a:app"),
        "m1-old-generation": sealed_to_generation(aes_key, 0, "three", "team-a:app"),
        "m1-previous-master": sealed_to_generation(previous_key, 3, "four", "team-a:app"),
    }
    response = rewrap(client, admin, items)
    assert response.status_code == 200, response.text
    answers = response.json()["items"]
    target = active_kid(aes_key)
    assert {name: a["status"] for name, a in answers.items()} == dict.fromkeys(items, "rewrapped")
    assert answers["a1-previous"]["keyId"] == key_id(base64.b64decode(previous_key))
    assert answers["m1-old-generation"]["keyId"].startswith("x25519:g0:")
    assert {a["targetKeyId"] for a in answers.values()} == {target}
    expected = {"a1-previous": "one", "a1-active": "two", "m1-old-generation": "three"}
    expected["m1-previous-master"] = "four"
    for name, plaintext in expected.items():
        new = answers[name]["data"]
        assert new.startswith("kamus$m1$")
        assert decrypts_as(client, kube_api, new, "team-a", "app").text == plaintext
        wrong = decrypts_as(client, kube_api, new, "team-a", "other")
        assert wrong.status_code == 400
        assert decrypts_as(client, kube_api, new, "team-b", "app").status_code == 400


def test_an_m1_rewrap_changes_only_the_stanza_and_keeps_foreign_stanzas(
    client: TestClient, admin: dict[str, str], aes_key: str
) -> None:
    """The payload is unchanged; another cluster's stanza survives (issue 22 builds on it)."""
    old = derive(base64.b64decode(aes_key), Suite.X25519, 1)
    other = derive(os.urandom(32), Suite.X25519, 5)  # another cluster's key
    data_key = m1.new_data_key()
    stanzas = [
        SealingPublicKey(k.kid, k.suite, k.public, KeyState.ACTIVE, EPOCH, None).wrap(
            data_key, "team-a:app"
        )
        for k in (old, other)
    ]
    value = m1.seal(data_key, stanzas, [b"shared"], "team-a:app")[0]
    new = rewrap(client, admin, {"v": value}).json()["items"]["v"]["data"]
    before, after = m1.parse(value), m1.parse(new)
    assert after.payload == before.payload
    assert [s.kid for s in after.stanzas] == [active_kid(aes_key), other.kid]
    assert after.stanzas[1] == before.stanzas[1]


def test_values_under_the_active_key_come_back_unchanged(
    client: TestClient, admin: dict[str, str], aes_key: str
) -> None:
    current = sealed_to_generation(aes_key, 100_000 - 1, "x", "team-a:app")  # far future
    active = Keyring(masters=[base64.b64decode(aes_key)]).active(Suite.X25519)
    value = sealed_to_generation(aes_key, active.generation, "x", "team-a:app")
    answers = rewrap(client, admin, {"now": value, "later": current}).json()["items"]
    assert answers["now"] == {
        "data": value,
        "status": "unchanged",
        "keyId": active.kid,
        "targetKeyId": active.kid,
    }
    # A generation after the next is not active: it came from a clock far ahead.
    assert answers["later"]["status"] == "rewrapped"


def test_check_mode_says_what_would_change_and_returns_no_value(
    client: TestClient, admin: dict[str, str], aes_key: str, previous_key: str
) -> None:
    items = {
        "stale": aes_encrypt(previous_key, "s", "team-a:app"),
        "current": rewrap(client, admin, {"x": aes_encrypt(aes_key, "c", "team-a:app")}).json()[
            "items"
        ]["x"]["data"],
        "foreign": aes_encrypt(aes_key, "f", "team-b:app"),
    }
    answers = rewrap(client, admin, items, check=True).json()["items"]
    assert answers["stale"]["status"] == "stale"
    assert answers["current"]["status"] == "unchanged"
    assert "data" not in answers["stale"]
    assert "data" not in answers["current"]
    assert "cannot be decrypted as team-a:app" in answers["foreign"]["error"]


def test_a_value_of_another_identity_is_an_item_error_and_the_others_go_through(
    client: TestClient, admin: dict[str, str], aes_key: str
) -> None:
    answers = rewrap(
        client,
        admin,
        {
            "mine": aes_encrypt(aes_key, "m", "team-a:app"),
            "theirs": aes_encrypt(aes_key, "t", "team-a:other"),
            "junk": "kamus$zz$nothing",
        },
    ).json()["items"]
    assert answers["mine"]["status"] == "rewrapped"
    assert answers["theirs"] == {
        "error": "the data cannot be decrypted as team-a:app; check that it was encrypted for "
        "this namespace and service account with this Kamus's key"
    }
    assert answers["junk"]["error"].startswith("this is not a Kamus ciphertext: unknown format")


@pytest.mark.parametrize(
    "who",
    ["nobody", "other-namespace", "service-account-of-the-namespace"],
)
def test_without_the_rbac_permission_nothing_is_rewrapped(
    client: TestClient, kube_api: KubeApiDouble, aes_key: str, who: str
) -> None:
    if who == "other-namespace":
        grant_namespace(kube_api, "bob", "team-b")
        token = kube_api.issue_user_token("bob")
    elif who == "nobody":
        token = kube_api.issue_user_token("mallory")
    else:  # the workload may decrypt its values, but not rewrap them
        token = kube_api.issue_token("team-a", "app")
    response = rewrap(client, bearer(token), {"v": aes_encrypt(aes_key, "x", "team-a:app")})
    assert response.status_code == 403
    body = response.json()
    assert body["type"].endswith(":not-allowed-to-rewrap")
    assert "update kamussecrets.soluto.com" in body["detail"]
    assert "items" not in body
    asked = kube_api.access_reviews[-1]["resourceAttributes"]
    assert asked == {
        "group": "soluto.com",
        "resource": "kamussecrets",
        "verb": "update",
        "namespace": "team-a",
    }


def test_a_service_account_with_the_grant_may_rewrap(
    client: TestClient, kube_api: KubeApiDouble, aes_key: str
) -> None:
    grant_namespace(kube_api, "system:serviceaccount:ci:rotator", "team-a")
    token = kube_api.issue_token("ci", "rotator")
    response = rewrap(client, bearer(token), {"v": aes_encrypt(aes_key, "x", "team-a:app")})
    assert response.json()["items"]["v"]["status"] == "rewrapped"


def test_without_a_token_the_body_is_not_even_read(client: TestClient) -> None:
    response = client.post(REWRAP, json={"nonsense": True})
    assert response.status_code == 401
    assert response.json()["type"].endswith(":missing-token")


def test_legacy_values_without_derivation_need_upgrade_legacy_and_a_cluster_wide_grant(
    client: TestClient, kube_api: KubeApiDouble, admin: dict[str, str], aes_key: str
) -> None:
    legacy = kamus_aes_value(aes_key, "from kamus")
    plain = rewrap(client, admin, {"v": legacy}).json()["items"]["v"]
    assert "upgradeLegacy" in plain["error"]
    assert "kamussecrets/legacy" in plain["error"]

    # A namespace owner with every resource in their namespace is still refused.
    kube_api.grant(ADMIN, group="soluto.com", resource="*", verb="update", namespace="team-a")
    refused = rewrap(client, admin, {"v": legacy}, upgradeLegacy=True)
    assert refused.status_code == 403
    assert "ClusterRoleBinding" in refused.json()["detail"]
    assert kube_api.access_reviews[-1]["resourceAttributes"] == {
        "group": "soluto.com",
        "resource": "kamussecrets",
        "subresource": "legacy",
        "verb": "update",
    }

    grant_legacy(kube_api, ADMIN)
    answer = rewrap(client, admin, {"v": legacy}, upgradeLegacy=True).json()["items"]["v"]
    assert answer["status"] == "rewrapped"
    assert decrypts_as(client, kube_api, answer["data"], "team-a", "app").text == "from kamus"
    # It is bound now: the identity it was upgraded to, and no other.
    assert decrypts_as(client, kube_api, answer["data"], "team-b", "app").status_code == 400


def test_legacy_values_with_derivation_are_bound_already(
    make_settings: SettingsFactory,
    kubeconfig: object,
    kube_api: KubeApiDouble,
    aes_key: str,
) -> None:
    settings = make_settings(**{"KeyManagement__AES__UseKeyDeriviation": "true"})
    grant_namespace(kube_api, ADMIN, "team-a")
    headers = bearer(kube_api.issue_user_token(ADMIN))
    with TestClient(create_app(settings)) as client:
        mine = kamus_aes_value(aes_key, "derived", derive_for="team-a:app")
        theirs = kamus_aes_value(aes_key, "derived", derive_for="team-b:app")
        answers = rewrap(client, headers, {"mine": mine, "theirs": theirs}).json()["items"]
        assert answers["mine"]["status"] == "rewrapped"
        assert decrypts_as(client, kube_api, answers["mine"]["data"], "team-a", "app").text == (
            "derived"
        )
        assert "error" in answers["theirs"]


def test_legacy_reading_switched_off_is_honoured(
    make_settings: SettingsFactory, kubeconfig: object, kube_api: KubeApiDouble, aes_key: str
) -> None:
    settings = make_settings(**{"KeyManagement__AES__AllowLegacyCiphertexts": "false"})
    grant_namespace(kube_api, ADMIN, "team-a")
    grant_legacy(kube_api, ADMIN)
    headers = bearer(kube_api.issue_user_token(ADMIN))
    with TestClient(create_app(settings)) as client:
        legacy = kamus_aes_value(aes_key, "x")
        answer = rewrap(client, headers, {"v": legacy}, upgradeLegacy=True).json()["items"]["v"]
    assert "reading legacy Kamus values is switched off" in answer["error"]


def test_a_retired_key_is_refused_on_decrypt_and_on_rewrap_by_name(
    make_settings: SettingsFactory,
    kubeconfig: object,
    kube_api: KubeApiDouble,
    aes_key: str,
    previous_key: str,
) -> None:
    retired = key_id(base64.b64decode(previous_key))
    old_generation = derive(base64.b64decode(aes_key), Suite.X25519, 1).kid
    settings = make_settings(
        **{
            "KeyManagement__AES__PreviousKeys": previous_key,
            "KeyManagement__RetiredKeyIds": f"{retired}, {old_generation}",
        }
    )
    grant_namespace(kube_api, ADMIN, "team-a")
    headers = bearer(kube_api.issue_user_token(ADMIN))
    values = {
        "a1": aes_encrypt(previous_key, "x", "team-a:app"),
        "m1": sealed_to_generation(aes_key, 1, "x", "team-a:app"),
        "legacy": kamus_aes_value(previous_key, "x"),
    }
    with TestClient(create_app(settings)) as client:
        for name, value in values.items():
            response = decrypts_as(client, kube_api, value, "team-a", "app")
            assert response.status_code == 400, name
            detail = response.json()["detail"]
            assert "retired" in detail, name
            assert "kamus rewrap" in detail, name
            assert "KeyManagement__RetiredKeyIds" in detail
        answers = rewrap(client, headers, values, upgradeLegacy=False).json()["items"]
        metrics = client.get("/metrics").text
    for name in ("a1", "m1"):
        assert "retired" in answers[name]["error"], name
    assert f'key_id="{retired}",outcome="retired"' in metrics
    assert f'key_id="{old_generation}",outcome="retired"' in metrics


def test_no_plaintext_in_any_answer_or_log_line(
    client: TestClient,
    kube_api: KubeApiDouble,
    admin: dict[str, str],
    aes_key: str,
    previous_key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    grant_legacy(kube_api, ADMIN)
    items: dict[str, str] = {}
    for index, plaintext in enumerate(PLAINTEXTS):
        items[f"a1-{index}"] = aes_encrypt(previous_key, plaintext, "team-a:app")
        items[f"legacy-{index}"] = kamus_aes_value(aes_key, plaintext)
        items[f"m1-{index}"] = sealed_to_generation(aes_key, 0, plaintext, "team-a:app")
        items[f"foreign-{index}"] = aes_encrypt(aes_key, plaintext, "team-b:app")
    answers = [
        rewrap(client, admin, items, upgradeLegacy=True),
        rewrap(client, admin, items, upgradeLegacy=True, check=True),
        rewrap(client, admin, items),
    ]
    texts = [a.text for a in answers] + [r.getMessage() for r in caplog.records]
    texts += [str(getattr(r, "kamus_fields", "")) for r in caplog.records]
    for plaintext in PLAINTEXTS:
        encoded = [plaintext, base64.b64encode(plaintext.encode()).decode()]
        assert not [t for t in texts for e in encoded if e in t]
    assert all(a.status_code == 200 for a in answers)


def test_one_audit_line_names_the_caller_the_identity_and_the_counts(
    client: TestClient,
    admin: dict[str, str],
    aes_key: str,
    previous_key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    items = {
        "a": aes_encrypt(previous_key, "x", "team-a:app"),
        "b": aes_encrypt(aes_key, "x", "team-b:app"),
    }
    rewrap(client, admin, items)
    (line,) = [e for e in audit_events(caplog) if e.get("route") == REWRAP]
    assert line["user"] == ADMIN
    assert (line["namespace"], line["service_account"]) == ("team-a", "app")
    assert (line["items"], line["failed"], line["rewrapped"]) == (2, 1, 1)


def test_the_rate_limit_counts_values_per_caller(
    make_settings: SettingsFactory, kubeconfig: object, kube_api: KubeApiDouble, aes_key: str
) -> None:
    settings = make_settings(**{"Decryptor__RewrapRateLimit": "5/minute"})
    grant_namespace(kube_api, ADMIN, "team-a")
    grant_namespace(kube_api, "bob", "team-a")
    value = aes_encrypt(aes_key, "x", "team-a:app")
    with TestClient(create_app(settings)) as client:
        alice = bearer(kube_api.issue_user_token(ADMIN))
        first = rewrap(client, alice, {str(i): value for i in range(3)})
        second = rewrap(client, alice, {str(i): value for i in range(3)})
        # Another caller has a bucket of their own, whatever the address.
        bob = rewrap(client, bearer(kube_api.issue_user_token("bob")), {"v": value})
    assert first.status_code == 200
    assert second.status_code == 429
    assert int(second.headers["retry-after"]) >= 1
    assert "Decryptor__RewrapRateLimit" in second.json()["detail"]
    assert bob.status_code == 200


def test_the_token_audience_is_the_apiserver_s_unless_set(
    make_settings: SettingsFactory, kubeconfig: object, kube_api: KubeApiDouble, aes_key: str
) -> None:
    grant_namespace(kube_api, ADMIN, "team-a")
    value = {"v": aes_encrypt(aes_key, "x", "team-a:app")}
    settings = make_settings(**{"Decryptor__RewrapAudiences": "kamus-rewrap"})
    with TestClient(create_app(settings)) as client:
        apiserver = rewrap(client, bearer(kube_api.issue_user_token(ADMIN)), value)
        made_for_us = bearer(kube_api.issue_user_token(ADMIN, audiences=["kamus-rewrap"]))
        ours = rewrap(client, made_for_us, value)
    assert apiserver.status_code == 401
    assert "kamus-rewrap" in apiserver.json()["detail"]
    assert ours.status_code == 200


def test_a_decrypt_only_key_in_use_is_logged_once_per_interval(
    client: TestClient,
    kube_api: KubeApiDouble,
    previous_key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    for plaintext in ("a", "b", "c"):
        value = aes_encrypt(previous_key, plaintext, "team-a:app")
        assert decrypts_as(client, kube_api, value, "team-a", "app").status_code == 200
    warnings = [r.getMessage() for r in caplog.records if "decrypt-only" in r.getMessage()]
    assert len(warnings) == 1
    assert key_id(base64.b64decode(previous_key)) in warnings[0]
    assert "run `kamus rewrap`" in warnings[0]


def test_a_bad_rate_limit_setting_fails_rewraps_and_leaves_decryption_alone(
    make_settings: SettingsFactory, kubeconfig: object, kube_api: KubeApiDouble, aes_key: str
) -> None:
    settings = make_settings(**{"Decryptor__RewrapRateLimit": "lots"})
    grant_namespace(kube_api, ADMIN, "team-a")
    value = aes_encrypt(aes_key, "x", "team-a:app")
    with TestClient(create_app(settings)) as client:
        refused = rewrap(client, bearer(kube_api.issue_user_token(ADMIN)), {"v": value})
        assert decrypts_as(client, kube_api, value, "team-a", "app").text == "x"
    assert refused.status_code == 503
    assert "Decryptor__RewrapRateLimit='lots' is not a rate limit" in refused.json()["detail"]
