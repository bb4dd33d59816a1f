"""The KamusSecret controller as a real ``kamus serve controller`` process, against the
Kubernetes API double, driven through the official client. Cases 1-6 are Kamus's own controller
flow tests; 7-10 are what Kamus lacked."""

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Request
from kubernetes import client as k8s

from tests.k8s_double import Faults, KubeApiDouble
from tests.support.cluster import (
    GROUP,
    PLURAL,
    VERSION,
    Cluster,
    b64,
    controller_env,
    eventually,
)
from tests.support.processes import Service, kamus_serve
from tests.support.settings import new_key

MANAGED = {"kamus.soluto.com/managed-by": "kamus-controller"}


def warnings_for(cluster: Cluster, namespace: str) -> list[tuple[str, str]]:
    return [
        (e["type"], e["reason"])
        for e in cluster.kube.events
        if e["involvedObject"]["namespace"] == namespace
    ]


# 1
def test_create_makes_the_secret_with_type_string_data_and_binary_data(cluster: Cluster) -> None:
    binary = b"\x00\x01\xfe\xff certificate bytes"
    created = cluster.apply(
        "case1",
        "tls",
        type="kubernetes.io/tls",
        stringData={"tls.key": cluster.encrypt("private key", "case1:app")},
        data={"tls.crt": cluster.encrypt(b64(binary), "case1:app")},
    )
    secret = eventually(lambda: cluster.secret("case1", "tls"))
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["data"] == {"tls.key": b64(b"private key"), "tls.crt": b64(binary)}
    [owner] = secret["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "soluto.com/v1alpha2",
        "kind": "KamusSecret",
        "name": "tls",
        "uid": created["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    ready = eventually(lambda: cluster.ready("case1", "tls"))
    assert (ready["status"], ready["reason"]) == ("True", "Synced")
    assert cluster.kamus_secret("case1", "tls")["status"]["observedGeneration"] == 1


# 2 and 3
@pytest.mark.parametrize("propagate", [False, True])
def test_labels_are_copied_and_annotations_only_when_asked(
    cluster: Cluster, propagate: bool
) -> None:
    namespace = f"case2-{str(propagate).lower()}"
    cluster.apply(
        namespace,
        "app",
        metadata={
            "labels": {"app": "api", "tier": "backend"},
            "annotations": {
                "owner": "team-a",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
            },
        },
        propagateAnnotations=propagate,
        stringData={"k": cluster.encrypt("v", f"{namespace}:app")},
    )
    secret = eventually(lambda: cluster.secret(namespace, "app"))
    assert secret["metadata"]["labels"] == {"app": "api", "tier": "backend", **MANAGED}
    annotations = secret["metadata"].get("annotations", {})
    assert annotations == ({"owner": "team-a"} if propagate else {})


# 4
def test_a_secret_deleted_by_hand_comes_back(cluster: Cluster) -> None:
    cluster.apply("case4", "db", stringData={"password": cluster.encrypt("p4ss", "case4:app")})
    first = eventually(lambda: cluster.secret("case4", "db"))
    cluster.core.delete_namespaced_secret("db", "case4")
    again = eventually(lambda: cluster.secret("case4", "db"), timeout=5)
    assert again["metadata"]["uid"] != first["metadata"]["uid"]
    assert again["data"] == {"password": b64(b"p4ss")}


# 5
def test_an_updated_kamussecret_updates_the_secret(cluster: Cluster) -> None:
    cluster.apply("case5", "db", stringData={"password": cluster.encrypt("old", "case5:app")})
    eventually(lambda: cluster.secret("case5", "db"))
    patch = {
        "metadata": {"labels": {"rotated": "yes"}},
        "type": "example.com/custom",
        "stringData": {"password": cluster.encrypt("new", "case5:app")},
    }
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, "case5", PLURAL, "db", patch)

    def updated() -> bool:
        secret = cluster.secret("case5", "db")
        return bool(
            secret
            and secret["data"] == {"password": b64(b"new")}
            and secret["type"] == "example.com/custom"
            and secret["metadata"].get("labels") == {"rotated": "yes", **MANAGED}
        )

    eventually(updated)
    eventually(lambda: cluster.kamus_secret("case5", "db")["status"]["observedGeneration"] == 2)


# 6
def test_deleting_the_kamussecret_deletes_the_secret(cluster: Cluster) -> None:
    cluster.apply("case6", "db", stringData={"k": cluster.encrypt("v", "case6:app")})
    eventually(lambda: cluster.secret("case6", "db"))
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, "case6", PLURAL, "db")
    eventually(lambda: cluster.secret("case6", "db") is None)


# 7
def test_one_bad_item_means_no_secret_and_a_clear_condition(cluster: Cluster) -> None:
    cluster.apply(
        "case7",
        "db",
        stringData={
            "good": cluster.encrypt("fine", "case7:app"),
            "stolen": cluster.encrypt("for another app", "case7:other"),
        },
        data={"garbage": "not-a-ciphertext"},
    )
    ready = eventually(lambda: cluster.ready("case7", "db"))
    assert (ready["status"], ready["reason"]) == ("False", "DecryptionFailed")
    assert "data.garbage" in ready["message"]
    assert "stringData.stolen" in ready["message"]
    assert "stringData.good" not in ready["message"]
    assert "fine" not in ready["message"]
    time.sleep(1)
    assert cluster.secret("case7", "db") is None
    warning = eventually(
        lambda: [e for e in cluster.kube.events if e["involvedObject"]["namespace"] == "case7"]
    )[0]
    assert (warning["type"], warning["reason"]) == ("Warning", "DecryptionFailed")


# 8
def test_the_controller_recovers_from_dropped_and_expired_watches(cluster: Cluster) -> None:
    started = cluster.kube.watches_started
    cluster.kube.drop_watches()
    eventually(lambda: cluster.kube.watches_started >= started + 2)
    cluster.apply("case8", "after-drop", stringData={"k": cluster.encrypt("1", "case8:app")})
    eventually(lambda: cluster.secret("case8", "after-drop"))
    cluster.kube.compact()  # every resourceVersion the controller knows is now too old
    cluster.kube.drop_watches()
    cluster.apply("case8", "after-410", stringData={"k": cluster.encrypt("2", "case8:app")})
    secret = eventually(lambda: cluster.secret("case8", "after-410"))
    assert secret["data"] == {"k": b64(b"2")}


def test_apiserver_errors_are_retried_with_backoff_not_a_crash(cluster: Cluster) -> None:
    """Kamus's controller exited when the apiserver failed; this one backs off and goes on."""

    def controller_list_or_watch(request: Request) -> bool:
        return request.url.path == f"/apis/{GROUP}/{VERSION}/{PLURAL}"  # cluster-wide: ours

    cluster.kube.faults = Faults(fail_status=500, remaining=3, when=controller_list_or_watch)
    try:
        cluster.kube.drop_watches()
        eventually(lambda: cluster.kube.faults.remaining == 0)
        cluster.apply("errors", "db", stringData={"k": cluster.encrypt("v", "errors:app")})
        assert eventually(lambda: cluster.data("errors", "db")) == {"k": b64(b"v")}
    finally:
        cluster.kube.faults = Faults()
    assert cluster.controller.process.poll() is None
    warnings = [line["message"] for line in cluster.controller.log_lines()]
    assert any("KamusSecret watch failed: 500" in message for message in warnings)


# 10
def test_a_secret_it_does_not_own_is_taken_over_only_with_the_secrets_consent(
    cluster: Cluster,
) -> None:
    """Whoever may create a KamusSecret must not take over (and, through garbage collection,
    delete) a Secret whose owner never agreed: the KamusSecret's own adopt annotation, which
    took it over before, no longer does; the Secret's kamus.soluto.com/managed does."""
    cluster.core.create_namespaced_secret(
        "case10", k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="db"), string_data={"x": "mine"})
    )
    cluster.apply(
        "case10",
        "db",
        metadata={"annotations": {"kamus.soluto.com/adopt": "true"}},
        stringData={"k": cluster.encrypt("v", "case10:app")},
    )
    ready = eventually(lambda: cluster.ready("case10", "db"))
    assert (ready["status"], ready["reason"]) == ("False", "SecretNotOwned")
    assert "kubectl annotate secret db kamus.soluto.com/managed=true" in ready["message"]
    assert "no longer takes over" in ready["message"]
    eventually(lambda: ("Warning", "SecretNotOwned") in warnings_for(cluster, "case10"))
    time.sleep(2.5)  # past a resync: still untouched
    assert cluster.data("case10", "db") == {"x": b64(b"mine")}
    owner_refs = (cluster.secret("case10", "db") or {})["metadata"].get("ownerReferences")
    assert not owner_refs

    consent = {"metadata": {"annotations": {"kamus.soluto.com/managed": "true"}}}
    cluster.core.patch_namespaced_secret("db", "case10", consent)
    eventually(lambda: cluster.data("case10", "db") == {"k": b64(b"v")})
    eventually(lambda: (cluster.ready("case10", "db") or {}).get("reason") == "Synced")


def test_a_service_account_token_secret_is_never_written(cluster: Cluster) -> None:
    """Kubernetes fills a token into such a Secret for the service account it names: a
    KamusSecret could have minted one for any account of the namespace."""
    cluster.apply(
        "typed",
        "token",
        type="kubernetes.io/service-account-token",
        metadata={"annotations": {"kubernetes.io/service-account.name": "deployer"}},
        propagateAnnotations=True,
        stringData={"k": cluster.encrypt("v", "typed:app")},
    )
    cluster.apply(
        "typed",
        "release",
        type="helm.sh/release.v1",
        stringData={"release": cluster.encrypt("forged", "typed:app")},
    )
    cluster.apply(
        "typed",
        "by-setting",
        type="example.com/forbidden",
        stringData={"k": cluster.encrypt("v", "typed:app")},
    )
    cluster.apply(
        "typed", "custom", type="TlsSecret", stringData={"k": cluster.encrypt("v", "typed:app")}
    )
    expected = {
        "token": "SecretTypeNotAllowed",
        "release": "HelmReleaseNotAllowed",
        "by-setting": "SecretTypeNotAllowed",
    }
    for name, reason in expected.items():
        ready = eventually(lambda name=name: cluster.ready("typed", name))  # type: ignore[misc]
        assert (ready["status"], ready["reason"]) == ("False", reason)
        assert cluster.secret("typed", name) is None
    eventually(
        lambda: {("Warning", r) for r in expected.values()} <= set(warnings_for(cluster, "typed"))
    )
    assert eventually(lambda: cluster.secret("typed", "custom"))["type"] == "TlsSecret"

    def denied_in_audit() -> bool:
        denied = {
            line["name"]
            for line in cluster.controller.log_lines()
            if line.get("log_type") == "audit"
            and line.get("namespace") == "typed"
            and line.get("outcome") == "denied"
        }
        return denied >= set(expected)

    eventually(denied_in_audit)


def test_labels_that_other_controllers_trust_are_not_copied(cluster: Cluster) -> None:
    """argocd.argoproj.io/secret-type: cluster would register a cluster with Argo CD; owner:
    helm would forge a Helm release record."""
    cluster.apply(
        "labels",
        "db",
        metadata={
            "labels": {
                "app": "api",
                "argocd.argoproj.io/secret-type": "cluster",
                "app.kubernetes.io/instance": "someone-else",
                "example.org/team": "denied by the setting",
            }
        },
        stringData={"k": cluster.encrypt("v", "labels:app")},
    )
    secret = eventually(lambda: cluster.secret("labels", "db"))
    assert secret["metadata"]["labels"] == {"app": "api", **MANAGED}
    ready = eventually(lambda: cluster.ready("labels", "db"))
    assert (ready["status"], ready["reason"]) == ("True", "ReservedMetadataNotCopied")
    assert "label argocd.argoproj.io/secret-type" in ready["message"]
    assert "label example.org/team" in ready["message"]
    eventually(lambda: ("Warning", "ReservedMetadataNotCopied") in warnings_for(cluster, "labels"))

    cluster.apply(
        "labels",
        "helm",
        metadata={"labels": {"owner": "helm", "name": "victim"}},
        stringData={"release": cluster.encrypt("forged", "labels:app")},
    )
    ready = eventually(lambda: cluster.ready("labels", "helm"))
    assert (ready["status"], ready["reason"]) == ("False", "HelmReleaseNotAllowed")
    assert cluster.secret("labels", "helm") is None


def test_the_default_service_account_is_refused_before_anything_is_decrypted(
    cluster: Cluster,
) -> None:
    """As at the decryptor, which answers 403 for 'default'."""
    cluster.apply(
        "default-sa",
        "db",
        serviceAccount="default",
        stringData={"k": cluster.encrypt("v", "default-sa:default")},
    )
    ready = eventually(lambda: cluster.ready("default-sa", "db"))
    assert (ready["status"], ready["reason"]) == ("False", "DefaultServiceAccountDenied")
    assert "Controller__DenyDefaultServiceAccount" in ready["message"]
    assert cluster.secret("default-sa", "db") is None
    eventually(
        lambda: ("Warning", "DefaultServiceAccountDenied") in warnings_for(cluster, "default-sa")
    )


def test_a_secret_written_before_a_type_rule_is_deleted_not_left(cluster: Cluster) -> None:
    """A service-account-token Secret that the controller wrote before these rules holds a live
    token: refusing the KamusSecret must not leave it in place. Another's Secret of the same
    name would be left alone."""
    created = cluster.apply(
        "withdraw",
        "token",
        type="kubernetes.io/service-account-token",
        stringData={"k": cluster.encrypt("v", "withdraw:app")},
    )
    eventually(lambda: (cluster.ready("withdraw", "token") or {}).get("status") == "False")
    # As the controller before this fix wrote it: owned, without the label it watches.
    owner = k8s.V1OwnerReference(
        api_version=f"{GROUP}/{VERSION}",
        kind="KamusSecret",
        name="token",
        uid=created["metadata"]["uid"],
        controller=True,
        block_owner_deletion=True,
    )
    cluster.core.create_namespaced_secret(
        "withdraw",
        k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(
                name="token",
                owner_references=[owner],
                annotations={"kubernetes.io/service-account.name": "deployer"},
            ),
            type="kubernetes.io/service-account-token",
            string_data={"token": "minted"},
        ),
    )
    eventually(lambda: cluster.secret("withdraw", "token") is None)  # at the next resync

    def says_deleted() -> dict[str, Any] | None:
        ready = cluster.ready("withdraw", "token")
        deleted = ready and "The Secret token it wrote earlier was deleted" in ready["message"]
        return ready if deleted else None

    ready = eventually(says_deleted)
    assert (ready["status"], ready["reason"]) == ("False", "SecretTypeNotAllowed")

    cluster.core.create_namespaced_secret(
        "withdraw",
        k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name="someone-elses"),
            type="kubernetes.io/service-account-token",
            string_data={"token": "theirs"},
        ),
    )
    cluster.apply(
        "withdraw",
        "someone-elses",
        type="kubernetes.io/service-account-token",
        stringData={"k": cluster.encrypt("v", "withdraw:app")},
    )
    eventually(lambda: (cluster.ready("withdraw", "someone-elses") or {}).get("status") == "False")
    time.sleep(2.5)  # past a resync
    assert cluster.data("withdraw", "someone-elses") == {"token": b64(b"theirs")}


def test_it_watches_only_the_secrets_it_wrote(tmp_path: Path) -> None:
    """Listing and watching every Secret of the cluster would send every value in it to the
    controller: its Secret informer asks only for those carrying its label. With the resync
    far away, a Secret whose label is removed by hand comes back only through that watch (it
    leaves the selection, which the watch reports as deleted)."""
    key = new_key()
    with KubeApiDouble() as kube, ExitStack() as stack:
        cluster = Cluster(kube, kube.write_kubeconfig(tmp_path / "test.kubeconfig"), key)
        stack.callback(cluster.close)
        env = controller_env(kube, tmp_path, key, Controller__ReconciliationIntervalInSeconds="600")
        stack.enter_context(kamus_serve("controller", env, tmp_path / "controller.log"))
        kube.wait_for_watches(2)
        cluster.apply("narrow", "db", stringData={"k": cluster.encrypt("v", "narrow:app")})
        eventually(lambda: cluster.secret("narrow", "db"))
        reads = [r for r in kube.resources.collection_reads if r[1] == "secrets"]
        assert {verb for verb, *_ in reads} == {"list", "watch"}
        assert {selector for *_, selector in reads} == {
            "kamus.soluto.com/managed-by=kamus-controller"
        }
        unlabel = [{"op": "remove", "path": "/metadata/labels/kamus.soluto.com~1managed-by"}]
        cluster.core.patch_namespaced_secret("db", "narrow", unlabel)  # a list: a JSON patch

        def labelled_again() -> bool:
            secret = cluster.secret("narrow", "db") or {"metadata": {}}
            return bool(secret["metadata"].get("labels") == MANAGED)

        eventually(labelled_again, timeout=15)


def test_health_readiness_and_metrics(cluster: Cluster) -> None:
    url = cluster.controller.url
    health = httpx.get(f"{url}/healthz", timeout=10)
    assert health.status_code == 200, health.text
    ready = httpx.get(f"{url}/readyz", timeout=5).json()
    assert ready == {"status": "ready", "leader": True, "identity": "controller-main"}
    cluster.apply("metrics", "m", stringData={"k": cluster.encrypt("v", "metrics:app")})
    eventually(lambda: cluster.secret("metrics", "m"))
    text = httpx.get(f"{url}/metrics", timeout=5).text
    assert "kamus_controller_leader 1.0" in text
    assert 'kamus_controller_reconciles_total{outcome="created"}' in text
    assert "kamus_controller_kamussecrets " in text
    assert "kamus_controller_reconcile_duration_seconds_bucket" in text


def test_audit_lines_name_the_secret_never_a_value(cluster: Cluster) -> None:
    cluster.apply("audit", "db", stringData={"password": cluster.encrypt("hunter2", "audit:app")})
    eventually(lambda: cluster.secret("audit", "db"))

    def audit_lines() -> list[dict[str, Any]]:
        return [
            line
            for line in cluster.controller.log_lines()
            if line.get("log_type") == "audit" and line.get("namespace") == "audit"
        ]

    audits = eventually(audit_lines)
    assert audits[0]["action"] == "created"
    assert audits[0]["keys"] == ["password"]
    assert "hunter2" not in cluster.controller.log_file.read_text()


def test_healthz_reports_missing_rbac(tmp_path: Path) -> None:
    key = new_key()
    with KubeApiDouble() as kube:
        kube.denied_access.add(("", "secrets", "create"))
        kube.denied_access.add(("coordination.k8s.io", "leases", "update"))
        env = controller_env(kube, tmp_path, key)
        log_file = tmp_path / "controller.log"
        with kamus_serve("controller", env, log_file, ready_path="/readyz") as controller:
            health = httpx.get(f"{controller.url}/healthz", timeout=10)
    assert health.status_code == 503
    assert health.json() == {
        "status": "forbidden",
        "missing": ["create secrets", "update leases.coordination.k8s.io in kamus"],
    }


# 9
@pytest.mark.slow
@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_two_controllers_elect_one_leader_and_fail_over(tmp_path: Path, how: str) -> None:
    """A stopped leader hands the Lease over; a killed one loses it when it expires."""
    key = new_key()
    with KubeApiDouble() as kube, ExitStack() as stack:
        cluster = Cluster(kube, kube.write_kubeconfig(tmp_path / "test.kubeconfig"), key)
        stack.callback(cluster.close)
        services = {}
        for name in ("a", "b"):
            env = controller_env(kube, tmp_path, key, Controller__Identity=name)
            services[name] = stack.enter_context(
                kamus_serve("controller", env, tmp_path / f"{name}.log")
            )

        def leading(service: Service) -> bool:
            try:
                return bool(httpx.get(f"{service.url}/readyz", timeout=5).json()["leader"])
            except httpx.TransportError:  # stopping or stopped
                return False

        def leaders() -> list[str]:
            return [name for name, service in services.items() if leading(service)]

        [leader] = eventually(leaders)
        lease = cluster.coordination.read_namespaced_lease("kamus-controller", "kamus")
        assert lease.spec is not None
        assert lease.spec.holder_identity == leader
        cluster.apply("ha", "first", stringData={"k": cluster.encrypt("1", "ha:app")})
        eventually(lambda: cluster.secret("ha", "first"))
        assert leaders() == [leader]  # the other one stands by

        leaving = services[leader].process
        leaving.terminate() if how == "stopped" else leaving.kill()
        follower = "b" if leader == "a" else "a"
        eventually(lambda: leaders() == [follower], timeout=30)
        cluster.apply("ha", "second", stringData={"k": cluster.encrypt("2", "ha:app")})
        assert eventually(lambda: cluster.data("ha", "second")) == {"k": b64(b"2")}
