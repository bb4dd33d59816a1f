"""Two real ``kamus serve decryptor`` processes publishing the public key bundle into the
Kubernetes API double: one leads and writes, the other stands by, takes over when the leader
stops, and a deleted or damaged ConfigMap comes back within a round."""

import base64
import json
import socket
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from crypto import bundle
from tests.k8s_double import KubeApiDouble
from tests.support.cluster import eventually
from tests.support.kubeclient import sync_client
from tests.support.processes import Service, kamus_serve, stop
from tests.support.settings import new_key

NAME, NAMESPACE = "kamus-public-keys", "kamus"
METRIC = "kamus_public_keys_published_total"


def identity(service: Service) -> str:
    """The publisher's Lease holder identity: hostname and pid."""
    return f"{socket.gethostname()}-{service.process.pid}"


def published(service: Service) -> dict[str, float]:
    """The decryptor's publish rounds by outcome, from its /metrics."""
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    rounds = {}
    for line in text.splitlines():
        if line.startswith(METRIC + "{"):
            labels, value = line.rsplit(" ", 1)
            rounds[labels.split('outcome="')[1].split('"')[0]] = float(value)
    return rounds


def test_one_decryptor_publishes_restores_and_hands_over(tmp_path: Path) -> None:
    key = new_key()
    pin = bundle.fingerprint(bundle.anchor_from_master(base64.b64decode(key)).public_key())
    with KubeApiDouble() as kube, ExitStack() as stack:
        api = stack.enter_context(sync_client(kube.write_kubeconfig(tmp_path / "test.kubeconfig")))
        core, leases = k8s.CoreV1Api(api), k8s.CoordinationV1Api(api)
        env = {
            "KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "decryptor.kubeconfig")),
            "KeyManagement__AES__Key": key,
            "Decryptor__PublicKeysConfigMap": NAME,
            "Decryptor__PublicKeysNamespace": NAMESPACE,
            "Decryptor__PublicKeysIntervalSeconds": "0.5",
        }
        services = {
            name: stack.enter_context(kamus_serve("decryptor", env, tmp_path / f"{name}.log"))
            for name in ("a", "b")
        }
        by_identity = {identity(s): name for name, s in services.items()}

        def holder() -> str | None:
            spec = leases.read_namespaced_lease(f"{NAME}-publisher", NAMESPACE).spec
            return by_identity.get(spec.holder_identity or "") if spec else None

        def config_map() -> Any:
            """The published ConfigMap, once it holds a bundle from the pinned anchor."""
            try:
                found = core.read_namespaced_config_map(NAME, NAMESPACE)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            bundle.load((found.data or {})["keys.json"], trust_anchor=pin)  # until restored
            return found

        def with_bundle() -> Any:
            try:
                return config_map()
            except bundle.BundleError:
                return None

        first = eventually(with_bundle)
        leader = eventually(holder)
        follower = "b" if leader == "a" else "a"
        assert first.metadata.labels == {"app.kubernetes.io/managed-by": "kamus-decryptor"}
        assert first.metadata.annotations == {"kamus.soluto.com/anchor": pin}
        # Rounds go by: the leader finds nothing to change, the follower never writes.
        eventually(lambda: published(services[leader]).get("unchanged", 0) >= 2)
        assert published(services[leader])["created"] == 1
        assert published(services[follower]) == {}
        unchanged: Any = core.read_namespaced_config_map(NAME, NAMESPACE)
        assert unchanged.metadata.resource_version == first.metadata.resource_version

        # Deleted: back within a round or two.
        core.delete_namespaced_config_map(NAME, NAMESPACE)
        restored = eventually(with_bundle, timeout=5)
        assert restored.metadata.uid != first.metadata.uid
        # Damaged by hand: rewritten.
        document = json.loads(restored.data["keys.json"])
        document["cluster"] = "forged"
        restored.data["keys.json"] = json.dumps(document)
        core.replace_namespaced_config_map(NAME, NAMESPACE, restored)
        eventually(with_bundle, timeout=5)  # the forged one does not verify until rewritten
        assert published(services[leader])["updated"] == 1

        # The leader stops: it hands the Lease over, and the other one keeps the ConfigMap.
        stop(services[leader].process)
        assert "released the lease" in services[leader].log_file.read_text()
        eventually(lambda: holder() == follower, timeout=15)
        core.delete_namespaced_config_map(NAME, NAMESPACE)
        eventually(with_bundle, timeout=10)
        assert published(services[follower])["created"] == 1
        ready = httpx.get(f"{services[follower].url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text


def test_an_encryptor_with_only_the_published_bundle_seals_for_the_decryptor(
    tmp_path: Path,
) -> None:
    """The chart's AES wiring: the encryptor gets the ConfigMap's keys.json as a file (as the
    kubelet mounts it) and no key at all; the decryptor opens what it seals."""
    key = new_key()
    with KubeApiDouble() as kube, ExitStack() as stack:
        api = stack.enter_context(sync_client(kube.write_kubeconfig(tmp_path / "test.kubeconfig")))
        core = k8s.CoreV1Api(api)
        decryptor = stack.enter_context(
            kamus_serve(
                "decryptor",
                {
                    "KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "decryptor.kubeconfig")),
                    "KeyManagement__AES__Key": key,
                    "Decryptor__PublicKeysConfigMap": NAME,
                    "Decryptor__PublicKeysNamespace": NAMESPACE,
                },
                tmp_path / "decryptor.log",
            )
        )

        def keys_json() -> str | None:
            try:
                found = core.read_namespaced_config_map(NAME, NAMESPACE)
            except ApiException:
                return None
            return (found.data or {}).get("keys.json")

        mounted = tmp_path / "public-keys" / "keys.json"
        mounted.parent.mkdir()
        mounted.write_text(eventually(keys_json))
        encryptor_env = {  # what the chart gives it: the shared ConfigMap and the bundle's path
            "KeyManagement__Provider": "AESKey",
            "KeyManagement__AES__AllowLegacyCiphertexts": "false",
            "KeyManagement__AES__AllowPublicDefaultKey": "false",
            "Encryptor__SealingKeysFile": str(mounted),
        }
        encryptor = stack.enter_context(
            kamus_serve(
                "encryptor", encryptor_env, tmp_path / "encryptor.log", ready_path="/readyz"
            )
        )
        body = {"data": "s3cr3t", "namespace": "team-a", "service-account": "app"}
        sealed = httpx.post(f"{encryptor.url}/api/v1/encrypt", json=body, timeout=30)
        assert sealed.status_code == 200, sealed.text
        assert sealed.text.startswith("kamus$m1$")
        token = kube.issue_token("team-a", "app")
        opened = httpx.post(
            f"{decryptor.url}/api/v1/decrypt",
            json={"data": sealed.text},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert opened.status_code == 200, opened.text
        assert opened.text == "s3cr3t"
