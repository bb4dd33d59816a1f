"""The controller's rules, as pure functions: what Secret a KamusSecret means, and its status."""

import asyncio
import base64
import time
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from controller import reconcile
from controller.objects import KamusSecret, Secret
from controller.pacing import TokenBucket
from controller.reconcile import Condition, Policy


def kamus_secret(**fields: Any) -> KamusSecret:
    ks = {
        "apiVersion": "soluto.com/v1alpha2",
        "kind": "KamusSecret",
        "metadata": {
            "name": "db",
            "namespace": "team-a",
            "uid": "uid-1",
            "generation": 3,
            "labels": {"app": "api"},
            "annotations": {
                "team": "payments",
                reconcile.LAST_APPLIED: '{"big": "blob"}',
                reconcile.ADOPT_ANNOTATION: "true",
            },
        },
        "serviceAccount": "app",
        **fields,
    }
    return cast(KamusSecret, ks)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_string_data_and_binary_data_become_secret_data() -> None:
    plaintexts = {
        "stringData.username": b"admin",
        "data.key.bin": b64(b"\x00\xff binary").encode(),
    }
    data, invalid = reconcile.secret_values(plaintexts)
    assert invalid == []
    assert data == {"username": b64(b"admin"), "key.bin": b64(b"\x00\xff binary")}


def test_data_that_is_not_base64_after_decryption_is_invalid() -> None:
    data, invalid = reconcile.secret_values({"data.x": b"not base64!"})
    assert data == {}
    assert invalid == ["data.x (not base64 after decryption)"]


def test_string_data_wins_over_data_for_the_same_key_as_the_apiserver_merges() -> None:
    data, _ = reconcile.secret_values({"data.k": b64(b"from data").encode(), "stringData.k": b"s"})
    assert data == {"k": b64(b"s")}


def test_the_secret_copies_type_and_labels_and_owns_nothing_else() -> None:
    secret, not_copied = reconcile.desired_secret(
        kamus_secret(type="kubernetes.io/tls"), {"a": "Yg=="}
    )
    assert not_copied == []
    assert secret["type"] == "kubernetes.io/tls"
    # The controller's own label: it watches only the Secrets that carry it.
    assert secret["metadata"]["labels"] == {
        "app": "api",
        "kamus.soluto.com/managed-by": "kamus-controller",
    }
    assert secret["metadata"]["annotations"] == {}
    assert secret["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "soluto.com/v1alpha2",
            "kind": "KamusSecret",
            "name": "db",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert reconcile.desired_secret(kamus_secret(), {})[0]["type"] == "Opaque"


def test_annotations_propagate_only_when_asked_and_without_kubectl_or_kamus_ones() -> None:
    secret, not_copied = reconcile.desired_secret(kamus_secret(propagateAnnotations=True), {})
    assert secret["metadata"]["annotations"] == {"team": "payments"}
    assert not_copied == []  # kubectl's and Kamus's own bookkeeping go unmentioned


def test_owner_detection_and_consent_on_the_secret() -> None:
    ks = kamus_secret()
    secret, _ = reconcile.desired_secret(ks, {})
    assert reconcile.owned_by(secret, ks)
    assert reconcile.owner_of(secret) == ("team-a", "db")
    stranger: Secret = {"metadata": {"name": "db", "namespace": "team-a"}}
    assert not reconcile.owned_by(stranger, ks)
    assert reconcile.owner_of(stranger) is None
    # The KamusSecret asking (its adopt annotation) is not consent; only the Secret gives it.
    assert reconcile.asks_to_adopt(ks)
    assert not reconcile.consents_to_adoption(stranger)
    stranger["metadata"]["annotations"] = {"kamus.soluto.com/managed": "true"}
    assert reconcile.consents_to_adoption(stranger)
    stranger["metadata"]["annotations"] = {"kamus.soluto.com/managed": "false"}
    assert not reconcile.consents_to_adoption(stranger)


@pytest.mark.parametrize(
    "kind",
    [
        "Opaque",
        "",
        "kubernetes.io/tls",
        "kubernetes.io/dockerconfigjson",
        "kubernetes.io/dockercfg",
        "kubernetes.io/basic-auth",
        "kubernetes.io/ssh-auth",
        "TlsSecret",  # Kamus's own tests use such custom types
        "example.com/custom",
        "kubernetes.io.example.com/custom",  # a domain that only starts like Kubernetes'
    ],
)
def test_allowed_secret_types(kind: str) -> None:
    assert reconcile.refusal(kamus_secret(type=kind), Policy()) is None


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("kubernetes.io/service-account-token", "SecretTypeNotAllowed"),
        ("bootstrap.kubernetes.io/token", "SecretTypeNotAllowed"),
        ("Kubernetes.IO/service-account-token", "SecretTypeNotAllowed"),
        ("kubernetes.io/some-future-type", "SecretTypeNotAllowed"),
        ("k8s.io/anything", "SecretTypeNotAllowed"),
        ("sub.k8s.io/anything", "SecretTypeNotAllowed"),
        ("helm.sh/release.v1", "HelmReleaseNotAllowed"),
    ],
)
def test_refused_secret_types_name_their_rule(kind: str, reason: str) -> None:
    refused = reconcile.refusal(kamus_secret(type=kind), Policy())
    assert refused is not None
    assert (refused.ready, refused.reason) == (False, reason)
    assert repr(kind) in refused.message


def test_a_setting_refuses_more_types_exactly_or_by_domain() -> None:
    policy = Policy(denied_types=("example.com/forbidden", "corp.example/"))
    for kind in ("example.com/forbidden", "corp.example/x", "sub.corp.example/x"):
        refused = reconcile.refusal(kamus_secret(type=kind), policy)
        assert refused is not None
        assert refused.reason == "SecretTypeNotAllowed"
        assert "Controller__DeniedSecretTypes" in refused.message
    assert reconcile.refusal(kamus_secret(type="example.com/allowed"), policy) is None


def test_helm_release_labels_are_refused() -> None:
    ks = kamus_secret()
    ks["metadata"]["labels"] = {"owner": "helm", "name": "victim", "status": "deployed"}
    refused = reconcile.refusal(ks, Policy())
    assert refused is not None
    assert refused.reason == "HelmReleaseNotAllowed"


def test_the_default_service_account_is_refused_unless_allowed() -> None:
    refused = reconcile.refusal(kamus_secret(serviceAccount="default"), Policy())
    assert refused is not None
    assert refused.reason == "DefaultServiceAccountDenied"
    assert "Controller__DenyDefaultServiceAccount" in refused.message
    allowed = Policy(deny_default_service_account=False)
    assert reconcile.refusal(kamus_secret(serviceAccount="default"), allowed) is None


def test_labels_and_annotations_other_controllers_trust_are_never_copied() -> None:
    trusted = {
        "argocd.argoproj.io/secret-type": "cluster",
        "app.kubernetes.io/instance": "other-app",
        "kubernetes.io/service-account.name": "deployer",
        "node.k8s.io/x": "y",
        "kustomize.toolkit.fluxcd.io/name": "infra",
        "meta.helm.sh/release-name": "other",
        "kamus.soluto.com/managed-by": "kamus-controller",
        "example.org/team": "denied-by-setting",
    }
    ks = kamus_secret(propagateAnnotations=True)
    ks["metadata"]["labels"] = {"app": "api", **trusted}
    ks["metadata"]["annotations"] = {"team": "payments", **trusted}
    secret, not_copied = reconcile.desired_secret(
        ks, {}, Policy(denied_metadata_domains=("example.org/",))
    )
    assert secret["metadata"]["labels"] == {
        "app": "api",
        "kamus.soluto.com/managed-by": "kamus-controller",
    }
    assert secret["metadata"]["annotations"] == {"team": "payments"}
    assert not_copied == [f"label {k}" for k in sorted(trusted)] + [
        f"annotation {k}" for k in sorted(trusted)
    ]
    # A domain and a name prefix: that key (and those it starts), not the whole domain.
    by_key = Policy(denied_metadata_domains=("sealedsecrets.bitnami.com/managed",))
    assert reconcile.reserved_metadata("sealedsecrets.bitnami.com/managed", by_key)
    assert not reconcile.reserved_metadata("sealedsecrets.bitnami.com/other", by_key)
    # Without the setting, example.org is an ordinary domain.
    secret, _ = reconcile.desired_secret(ks, {})
    assert secret["metadata"]["labels"]["example.org/team"] == "denied-by-setting"


def test_differs_sees_every_field_the_controller_owns() -> None:
    ks = kamus_secret()
    desired, _ = reconcile.desired_secret(ks, {"a": "Yg=="})
    same: Secret = {
        **desired,
        "metadata": {**desired["metadata"], "resourceVersion": "7", "uid": "s"},
    }
    assert not reconcile.differs(same, desired)
    changes: list[dict[str, Any]] = [
        {"data": {"a": "Yw=="}},
        {"type": "kubernetes.io/tls"},
        {"metadata": {**same["metadata"], "labels": {}}},
        {"metadata": {**same["metadata"], "annotations": {"x": "y"}}},
        {"metadata": {**same["metadata"], "ownerReferences": []}},
    ]
    for change in changes:
        assert reconcile.differs(cast(Secret, {**same, **change}), desired)


def test_status_is_written_only_when_it_changes() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    ks = kamus_secret()
    ready = Condition(True, "Synced", "Secret db is up to date")
    patch = reconcile.status_patch(ks, ready, now)
    assert patch == {
        "status": {
            "observedGeneration": 3,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Synced",
                    "message": "Secret db is up to date",
                    "observedGeneration": 3,
                    "lastTransitionTime": "2026-11-26T12:00:00Z",
                }
            ],
        }
    }
    ks["status"] = patch["status"]
    assert reconcile.status_patch(ks, ready) is None
    ks["metadata"]["generation"] = 4  # an edit: observedGeneration must follow
    bumped = reconcile.status_patch(ks, ready)
    assert bumped is not None
    # Same status, so the transition time stays.
    assert bumped["status"]["conditions"][0]["lastTransitionTime"] == "2026-11-26T12:00:00Z"
    failed = reconcile.status_patch(ks, Condition(False, "DecryptionFailed", "m"))
    assert failed is not None
    assert failed["status"]["conditions"][0]["status"] == "False"
    assert failed["status"]["conditions"][0]["lastTransitionTime"] != "2026-11-26T12:00:00Z"


def test_encrypted_items_cover_both_fields() -> None:
    ks = kamus_secret(stringData={"a": "c1"}, data={"b": "c2"})
    assert reconcile.encrypted_items(ks) == {"stringData.a": "c1", "data.b": "c2"}


async def test_the_token_bucket_allows_a_burst_then_holds_to_the_rate() -> None:
    bucket = TokenBucket(qps=20, burst=5)
    sleeps: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(seconds)

    bucket.sleep = recording_sleep
    start = time.monotonic()
    for _ in range(5):
        await bucket.take()
    assert sleeps == []  # the burst goes through at once
    for _ in range(4):
        await bucket.take()
    assert len(sleeps) == 4
    # A lower bound only: four calls past the burst wait at least 4/20 s, on any machine.
    assert time.monotonic() - start >= 4 / 20 - 0.01
