"""``kamus serve injector`` as a real process with its built-in TLS, against the Kubernetes double.

The injector makes its CA in a Secret, the holder of its Lease patches the webhook
configuration's caBundle through the double, and the leaf (valid a few seconds here) is renewed
and reloaded while a client that trusts only that caBundle, and checks the Service's DNS name as
the apiserver does, handshakes over and over: no handshake may fail. Then the apiserver double
itself calls the webhook, trusting the caBundle it stores, for a dry-run pod, and so does
``kamus doctor``.
"""

import base64
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from kubernetes import client as k8s

from tests.k8s_double import KubeApiDouble
from tests.support.cluster import eventually
from tests.support.kubeclient import sync_client
from tests.support.processes import Service, deploy, kamus_serve, run_kamus
from tests.support.settings import new_key

NAMESPACE = "kamus"
SERVICE = "kamus-injector"
WEBHOOK = "kamus-injector"
SERVICE_DNS = f"{SERVICE}.{NAMESPACE}.svc"
LEAF_SECONDS = 6


def webhook_configuration() -> dict[str, Any]:
    """As the chart renders it: no caBundle, for the injector to fill in."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK},
        "webhooks": [
            {
                "name": "inject.kamus.soluto.com",
                "admissionReviewVersions": ["v1"],
                "clientConfig": {
                    "service": {
                        "namespace": NAMESPACE,
                        "name": SERVICE,
                        "path": "/mutate",
                        "port": 443,
                    }
                },
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                    }
                ],
                "objectSelector": {"matchLabels": {"kamus.soluto.com/inject": "true"}},
                "namespaceSelector": {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "NotIn",
                            "values": ["kube-system", "kube-public", NAMESPACE],
                        }
                    ]
                },
                "sideEffects": "None",
                "timeoutSeconds": 5,
                "failurePolicy": "Fail",
                "reinvocationPolicy": "IfNeeded",
            }
        ],
    }


@pytest.fixture
def api(kube_api: KubeApiDouble, tmp_path: Path) -> Iterator[k8s.ApiClient]:
    with sync_client(kube_api.write_kubeconfig(tmp_path / "kubeconfig")) as client:
        yield client


@pytest.fixture
def injector(kube_api: KubeApiDouble, api: k8s.ApiClient, tmp_path: Path) -> Iterator[Service]:
    k8s.AdmissionregistrationV1Api(api).create_mutating_webhook_configuration(
        cast(Any, webhook_configuration())
    )
    env = {
        "KUBECONFIG": str(kube_api.write_kubeconfig(tmp_path / "injector-kubeconfig")),
        "Injector__Image": "ghcr.io/kamus-py/kamus-decryptor:0.1.0",
        "Injector__DecryptorUrl": "http://kamus-decryptor.kamus.svc:80",
        "Injector__Namespace": NAMESPACE,
        "Injector__ServiceName": SERVICE,
        "Injector__WebhookName": WEBHOOK,
        "Injector__CaSecretName": "kamus-injector-ca",
        "Injector__LeaseName": "kamus-injector-ca",
        "Injector__LeafValiditySeconds": str(LEAF_SECONDS),
        "Injector__ExtraHosts": "127.0.0.1",
    }
    # Readiness is polled before the caBundle is known; every later call verifies.
    with kamus_serve(
        "injector", env, tmp_path / "injector.log", ready_path="/readyz", verify=False
    ) as served:
        yield served


def ca_bundle(api: k8s.ApiClient) -> bytes | None:
    read = k8s.AdmissionregistrationV1Api(api).read_mutating_webhook_configuration(WEBHOOK)
    config: dict[str, Any] = api.sanitize_for_serialization(read)
    bundle = config["webhooks"][0]["clientConfig"].get("caBundle")
    return base64.b64decode(bundle) if bundle else None


def handshake(address: tuple[str, int], trusted: ssl.SSLContext) -> int:
    """One TLS handshake as the apiserver makes it (the Service's name); the leaf's serial."""
    with (
        socket.create_connection(address, timeout=5) as raw,
        trusted.wrap_socket(raw, server_hostname=SERVICE_DNS) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_the_leaf_is_renewed_and_reloaded_without_a_failed_handshake(
    injector: Service, api: k8s.ApiClient, kube_api: KubeApiDouble
) -> None:
    bundle = eventually(lambda: ca_bundle(api), timeout=20)
    [secret] = [s for s in kube_api.objects("secrets", NAMESPACE)]
    assert base64.b64decode(secret["data"]["ca.crt"]) == bundle  # the CA the Secret holds
    trusted = ssl.create_default_context(cadata=bundle.decode())
    port = int(injector.url.rsplit(":", 1)[1])
    serials: list[int] = []
    failures: list[str] = []
    deadline = time.monotonic() + 2.5 * LEAF_SECONDS
    while time.monotonic() < deadline:
        try:
            serials.append(handshake(("127.0.0.1", port), trusted))
        except (OSError, ssl.SSLError) as exc:
            failures.append(repr(exc))
        time.sleep(0.02)
    assert failures == []
    distinct = list(dict.fromkeys(serials))
    assert len(distinct) >= 3, f"{len(serials)} handshakes saw {len(distinct)} certificates"
    log = injector.log_file.read_text()
    assert log.count("serving a new certificate") >= 3
    assert "set the caBundle of kamus-injector" in log
    # The CA's key never reaches the log.
    assert base64.b64decode(secret["data"]["ca.key"]).decode().splitlines()[1] not in log


def test_a_client_that_does_not_trust_the_ca_is_refused(injector: Service) -> None:
    port = int(injector.url.rsplit(":", 1)[1])
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(("127.0.0.1", port), ssl.create_default_context())


def test_the_apiserver_calls_the_webhook_trusting_the_bundle_it_stores(
    injector: Service, api: k8s.ApiClient, kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    eventually(lambda: ca_bundle(api), timeout=20)
    port = int(injector.url.rsplit(":", 1)[1])
    kube_api.service_endpoints[(NAMESPACE, SERVICE)] = ("127.0.0.1", port)
    core = k8s.CoreV1Api(api)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-",
            "labels": {"kamus.soluto.com/inject": "true"},
            "annotations": {"kamus.soluto.com/secrets-from": "web-secrets"},
        },
        "spec": {"serviceAccountName": "web", "containers": [{"name": "web", "image": "web:1"}]},
    }
    answer = core.create_namespaced_pod("team-a", cast(Any, pod), dry_run="All")
    created: dict[str, Any] = api.sanitize_for_serialization(answer)
    assert created["metadata"]["annotations"]["kamus.soluto.com/inject-status"] == "injected"
    assert [c["name"] for c in created["spec"]["initContainers"]] == ["kamus-init"]
    assert kube_api.objects("pods", "team-a") == []  # a dry run stores nothing

    kubeconfig = kube_api.write_kubeconfig(tmp_path / "doctor-kubeconfig")
    doctor = run_kamus("doctor", "-n", "team-a", "-a", "web", env={"KUBECONFIG": str(kubeconfig)})
    assert doctor.stdout.startswith("PASS  injector   the webhook injected kamus-init"), (
        doctor.stdout
    )
    assert "SKIP  encryptor  not checked: give --encryptor-url" in doctor.stdout
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr

    # The apiserver cannot reach the webhook: opted-in pods fail (Fail), and the doctor says why.
    kube_api.service_endpoints[(NAMESPACE, SERVICE)] = ("127.0.0.1", 9)
    doctor = run_kamus("doctor", "-n", "team-a", "-a", "web", env={"KUBECONFIG": str(kubeconfig)})
    assert doctor.returncode == 1
    assert "FAIL  injector   the apiserver cannot call the webhook" in doctor.stdout
    assert "failed calling webhook" in doctor.stdout


def test_the_doctor_checks_every_service_of_a_release(
    injector: Service, api: k8s.ApiClient, kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    eventually(lambda: ca_bundle(api), timeout=20)
    kube_api.service_endpoints[(NAMESPACE, SERVICE)] = (
        "127.0.0.1",
        int(injector.url.rsplit(":", 1)[1]),
    )
    key_file = tmp_path / "aes-key"
    key_file.write_text(new_key())
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "doctor-kubeconfig")
    with deploy(kube_api, tmp_path, {"KeyManagement__AES__KeyFile": str(key_file)}) as services:
        args = ["doctor", "-n", "team-a", "-a", "web", "--encryptor-url", services.encryptor.url]
        doctor = run_kamus(
            *args,
            "--decryptor-url",
            services.decryptor.url,
            env={"KUBECONFIG": str(kubeconfig)},
        )
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        lines = doctor.stdout.splitlines()
        assert [line.split()[:2] for line in lines] == [
            ["PASS", "injector"],
            ["PASS", "encryptor"],
            ["PASS", "decryptor"],
            ["PASS", "encrypt"],
        ]
        assert lines[3].endswith(
            "RBAC: you may create kamussecrets.soluto.com in team-a; the encryptor encrypted a "
            "probe value for team-a:web"
        )
        down = run_kamus(
            *args, "--decryptor-url", "http://127.0.0.1:9", env={"KUBECONFIG": str(kubeconfig)}
        )
        assert down.returncode == 1
        assert (
            "FAIL  decryptor  http://127.0.0.1:9/api/v1/isAlive does not answer: ConnectError"
            in (down.stdout)
        )
        assert "kubectl port-forward" in down.stdout
