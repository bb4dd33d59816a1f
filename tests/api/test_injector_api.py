"""The injector's HTTP API (injector/app.py) in-process: AdmissionReview in, AdmissionReview out."""

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from injector.app import create_app
from injector.pods import decide
from kamus.server.errors import ConfigurationError
from kamus.server.settings import Settings
from tests.k8s_double import KubeApiDouble
from tests.k8s_double.resources import json_patch
from tests.support.settings import SettingsFactory, audit_events

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "injector"
INJECTOR_ENV = {
    "Injector__Image": "ghcr.io/kamus-py/kamus-decryptor:0.1.0",
    "Injector__DecryptorUrl": "http://kamus-decryptor.kamus.svc:80",
    "Decryptor__Audiences": "kamus-decryptor",
}


def pod(case: str = "minimal") -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((GOLDEN / case / "pod.yaml").read_text())
    return loaded


def admission(
    obj: dict[str, Any], *, operation: str = "CREATE", kind: str = "Pod", dry_run: bool = False
) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": obj["metadata"].get("namespace", "default"),
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": obj,
            "oldObject": None,
            "dryRun": dry_run,
        },
    }


@pytest.fixture
def files_mode(make_settings: SettingsFactory, tmp_path: Path) -> SettingsFactory:
    """Settings of an injector serving cert-manager's files: no Kubernetes needed."""

    def build(**env: str) -> Any:
        for name in ("tls.crt", "tls.key"):
            (tmp_path / name).write_text("unused in-process")
        return make_settings(
            **INJECTOR_ENV,
            Server__TlsCertFile=str(tmp_path / "tls.crt"),
            Server__TlsKeyFile=str(tmp_path / "tls.key"),
            **env,
        )

    return build


@pytest.fixture
def client(files_mode: SettingsFactory) -> Iterator[TestClient]:
    with TestClient(create_app(files_mode())) as test_client:
        yield test_client


def test_an_opted_in_pod_gets_the_patch_and_its_uid_back(client: TestClient) -> None:
    review = admission(pod("existing"))
    answer = client.post("/mutate", json=review)
    assert answer.status_code == 200
    body = answer.json()
    assert body["apiVersion"] == "admission.k8s.io/v1"
    assert body["kind"] == "AdmissionReview"
    response = body["response"]
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    expected = decide(pod("existing"), "team-a", Settings())  # as the app read them
    assert patch == expected.patch
    patched = json_patch(pod("existing"), patch)
    assert patched["metadata"]["annotations"]["kamus.soluto.com/inject-status"] == "injected"


def test_a_dry_run_gets_the_same_patch(client: TestClient) -> None:
    real = client.post("/mutate", json=admission(pod())).json()["response"]
    dry = client.post("/mutate", json=admission(pod(), dry_run=True)).json()["response"]
    assert dry["patch"] == real["patch"]


def test_a_bad_annotation_is_denied_with_its_message(client: TestClient) -> None:
    bad = pod()
    bad["metadata"]["annotations"]["kamus.soluto.com/output-format"] = "yaml"
    response = client.post("/mutate", json=admission(bad)).json()["response"]
    assert response["allowed"] is False
    assert "patch" not in response
    assert response["status"]["code"] == 400
    assert response["status"]["message"].startswith(
        "kamus.soluto.com/output-format: 'yaml' is not one of"
    )


@pytest.mark.parametrize(
    ("operation", "kind"), [("UPDATE", "Pod"), ("DELETE", "Pod"), ("CREATE", "ConfigMap")]
)
def test_anything_but_a_pod_creation_passes_untouched(
    client: TestClient, operation: str, kind: str
) -> None:
    response = client.post("/mutate", json=admission(pod(), operation=operation, kind=kind))
    assert response.json()["response"] == {
        "uid": response.json()["response"]["uid"],
        "allowed": True,
    }


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "AdmissionReview", "request": {}},
        {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}},
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"},
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": ""}},
    ],
)
def test_what_is_not_an_admission_review_v1_is_a_400_saying_what_is_wrong(
    client: TestClient, body: dict[str, Any]
) -> None:
    answer = client.post("/mutate", json=body)
    assert answer.status_code == 400
    assert answer.json()["detail"]


def test_audit_lines_and_metrics_name_the_pod_never_its_values(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    secret_looking = pod()
    secret_looking["spec"]["containers"][0]["env"] = [{"name": "PASSWORD", "value": "hunter2"}]
    client.post("/mutate", json=admission(secret_looking))
    denied = pod()
    denied["metadata"]["annotations"]["kamus.soluto.com/mount-path"] = "relative"
    client.post("/mutate", json=admission(denied))
    unlabeled = pod()
    unlabeled["metadata"]["labels"] = {}
    client.post("/mutate", json=admission(unlabeled))
    fields = audit_events(caplog)
    assert [(f["injection"], f["namespace"], f["service_account"]) for f in fields] == [
        ("injected", "team-a", "web"),
        ("denied", "team-a", "web"),
        ("skipped", "team-a", "web"),
    ]
    assert fields[0]["pod"] == "web-7c9d8-"
    assert "kamus.soluto.com/mount-path" in fields[1]["reason"]
    assert "hunter2" not in caplog.text + json.dumps(fields)
    metrics = client.get("/metrics").text
    for outcome in ("injected", "denied", "skipped"):
        assert f'kamus_injector_admissions_total{{outcome="{outcome}"}} 1.0' in metrics


def test_health_and_readiness_with_certificate_files(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_the_image_and_the_decryptor_url_must_be_set(make_settings: SettingsFactory) -> None:
    with pytest.raises(ConfigurationError, match="set Injector__Image and Injector__DecryptorUrl"):
        create_app(make_settings())


def test_built_in_tls_needs_a_namespace(make_settings: SettingsFactory) -> None:
    app = create_app(make_settings(**INJECTOR_ENV))
    with (
        pytest.raises(ConfigurationError, match="Injector__Namespace or POD_NAMESPACE"),
        TestClient(app),
    ):
        pass


def test_built_in_tls_makes_its_ca_once_and_serves_a_leaf_for_the_service(
    make_settings: SettingsFactory, kubeconfig: Path, kube_api: KubeApiDouble
) -> None:
    from cryptography import x509

    from injector.tls import SERVING

    settings = make_settings(
        **INJECTOR_ENV, Injector__Namespace="kamus", Injector__ServiceName="kamus-injector"
    )
    with TestClient(create_app(settings)) as first:
        ready = first.get("/readyz").json()
        assert ready["status"] == "ready"
        assert ready["certificateExpires"]
        leaf = SERVING.leaf
    assert leaf is not None
    [secret] = [s for s in kube_api.objects("secrets", "kamus")]
    assert secret["metadata"]["name"] == "kamus-injector-ca"
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    served = x509.load_pem_x509_certificate(leaf.cert_pem)
    assert served.issuer == ca.subject
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kamus-injector.kamus.svc" in names.get_values_for_type(x509.DNSName)
    # A second replica (or a restart) uses the same CA.
    with TestClient(create_app(settings)):
        pass
    [again] = kube_api.objects("secrets", "kamus")
    assert again["data"] == secret["data"]
    assert SERVING.leaf is not None
    assert SERVING.leaf.serial != leaf.serial


def test_the_injector_process_never_loads_a_key_provider() -> None:
    """It holds no key: neither crypto/ nor a cloud SDK is ever imported by it."""
    probe = (
        "import sys, injector.app, injector.tls, injector.pods; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'crypto', 'encryptor', 'decryptor', 'controller', 'boto3', 'google', 'azure'}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.strip() == "[]"


@pytest.mark.parametrize("content", [None, "not a certificate"])
def test_a_decryptor_ca_that_does_not_load_stops_the_start(
    files_mode: SettingsFactory, tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "ca.crt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigurationError, match=f"Injector__DecryptorCaFile {path} cannot be"):
        create_app(files_mode(Injector__DecryptorCaFile=str(path)))
