"""The injector's decisions (injector/pods.py), against golden files.

Each case in tests/golden/injector/<case>/ has the pod as the apiserver sends it (``pod.yaml``),
the JSON patch the injector answers (``patch.json``) and the pod once patched (``patched.yaml``).
The patched pod is reviewed again and must get no patch: reinvocation changes nothing. Set
KAMUS_UPDATE_GOLDEN=1 to rewrite the expected files after a deliberate change, then read the diff.
"""

import copy
import json
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from injector.pods import Decision, decide
from kamus.server.settings import Settings
from tests.k8s_double.resources import json_patch
from tests.support.chart import KUBERNETES_VERSIONS

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "injector"
UPDATE = os.environ.get("KAMUS_UPDATE_GOLDEN") == "1"
CASES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())
IMAGE = "ghcr.io/kamus-py/kamus-decryptor:0.1.0"
DECRYPTOR = "http://kamus-decryptor.kamus.svc:80"


def settings(**injector: Any) -> Settings:
    return Settings.model_validate(
        {
            "Injector": {"Image": IMAGE, "DecryptorUrl": DECRYPTOR, **injector},
            "Decryptor": {"Audiences": ["kamus-decryptor"]},
        }
    )


def pod_of(case: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((GOLDEN / case / "pod.yaml").read_text())
    return loaded


def review(pod: dict[str, Any], config: Settings | None = None) -> Decision:
    return decide(pod, pod["metadata"].get("namespace", "default"), config or settings())


def golden(path: Path, text: str) -> str:
    if UPDATE:
        path.write_text(text)
    return path.read_text()


@pytest.mark.parametrize("case", CASES)
def test_golden_patch_applied_twice_changes_nothing_more(case: str) -> None:
    pod = pod_of(case)
    first = review(pod)
    assert first.outcome == "injected", first.reason
    assert first.patch is not None
    assert {op["op"] for op in first.patch} == {"add"}  # never replaces or removes
    text = json.dumps(first.patch, indent=2) + "\n"
    assert text == golden(GOLDEN / case / "patch.json", text)

    patched = json_patch(pod, first.patch)
    text = yaml.safe_dump(patched, sort_keys=False)
    assert text == golden(GOLDEN / case / "patched.yaml", text)

    again = review(patched)
    assert (again.outcome, again.reason, again.patch) == ("skipped", "already injected", None)


@pytest.mark.parametrize("case", CASES)
def test_everything_the_pod_had_is_kept(case: str) -> None:
    pod = pod_of(case)
    patched = json_patch(pod, review(pod).patch)
    before, after = pod["spec"], patched["spec"]
    for kind in ("containers", "initContainers", "volumes"):
        names = [c["name"] for c in before.get(kind) or []]
        kept = [c["name"] for c in after.get(kind) or [] if c["name"] in names]
        assert kept == names
    for old in before["containers"] + (before.get("initContainers") or []):
        [new] = [
            c for c in after["containers"] + after["initContainers"] if c["name"] == old["name"]
        ]
        mounts = old.get("volumeMounts") or []
        assert (new.get("volumeMounts") or [])[: len(mounts)] == mounts
    for field in ("labels", "annotations"):
        for key, value in pod["metadata"].get(field, {}).items():
            if key != "kamus.soluto.com/client":
                assert patched["metadata"][field][key] == value


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("case", CASES)
def test_the_patched_pod_is_a_valid_pod(case: str, version: str) -> None:
    pod = pod_of(case)
    patched = json_patch(pod, review(pod).patch)
    kubernetes_validate.validate(patched, version, strict=True)


def init_of(pod: dict[str, Any]) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        c for c in pod["spec"]["initContainers"] if c["name"] == "kamus-init"
    ]
    [init] = found
    return init


def test_the_init_container_is_locked_down_and_alone_holds_the_token() -> None:
    pod = pod_of("existing")
    patched = json_patch(pod, review(pod).patch)
    init = init_of(patched)
    assert init["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert init["resources"]["requests"] == {"cpu": "10m", "memory": "64Mi"}
    assert init["command"] == ["kamus"]
    assert init["args"][0] == "init"
    [token] = [v for v in patched["spec"]["volumes"] if v["name"] == "kamus-token"]
    assert token["projected"]["sources"] == [
        {
            "serviceAccountToken": {
                "path": "token",
                "expirationSeconds": 600,
                "audience": "kamus-decryptor",
            }
        }
    ]
    holders = [
        c["name"]
        for c in patched["spec"]["containers"] + patched["spec"]["initContainers"]
        if any(m["name"] == "kamus-token" for m in c.get("volumeMounts") or [])
    ]
    assert holders == ["kamus-init"]
    [secrets] = [v for v in patched["spec"]["volumes"] if v["name"] == "kamus-secrets"]
    assert secrets["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Mi"}
    for container in patched["spec"]["containers"]:
        mounts = {m["name"]: m for m in container.get("volumeMounts") or []}
        if container["name"] == "api":
            assert mounts["kamus-secrets"] == {
                "name": "kamus-secrets",
                "mountPath": "/kamus",
                "readOnly": True,
            }
        else:  # not named in kamus.soluto.com/containers
            assert "kamus-secrets" not in mounts
    assert patched["metadata"]["labels"]["kamus.soluto.com/client"] == "true"
    assert patched["metadata"]["annotations"]["kamus.soluto.com/inject-status"] == "injected"


def test_without_decryptor_audiences_the_token_is_the_apiservers() -> None:
    pod = pod_of("minimal")
    config = Settings.model_validate({"Injector": {"Image": IMAGE, "DecryptorUrl": DECRYPTOR}})
    patched = json_patch(pod, review(pod, config).patch)
    [token] = [v for v in patched["spec"]["volumes"] if v["name"] == "kamus-token"]
    assert token["projected"]["sources"] == [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 600}}
    ]


def test_the_client_label_follows_the_setting() -> None:
    pod = pod_of("minimal")
    config = settings(ClientLabel="example.com/kamus=yes", RunAsUser=4242)
    patched = json_patch(pod, review(pod, config).patch)
    assert patched["metadata"]["labels"]["example.com/kamus"] == "yes"
    assert init_of(patched)["securityContext"]["runAsUser"] == 4242


def test_a_pod_without_the_label_gets_no_patch() -> None:
    for labels in ({}, {"kamus.soluto.com/inject": "false"}, {"kamus.soluto.com/inject": "True"}):
        pod = pod_of("minimal")
        pod["metadata"]["labels"] = labels
        decision = review(pod)
        assert (decision.outcome, decision.patch) == ("skipped", None)
    pod = pod_of("minimal")
    del pod["metadata"]["labels"]
    assert review(pod).patch is None


def test_a_pod_with_a_kamus_init_container_of_its_own_gets_no_patch() -> None:
    pod = pod_of("minimal")
    pod["spec"]["initContainers"] = [{"name": "kamus-init", "image": "kamus:old"}]
    assert review(pod) == Decision("skipped", "already injected")


def mutated(case: str, annotations: dict[str, str | None], **spec: Any) -> dict[str, Any]:
    pod = copy.deepcopy(pod_of(case))
    for key, value in annotations.items():
        if value is None:
            pod["metadata"]["annotations"].pop(key, None)
        else:
            pod["metadata"]["annotations"][key] = value
    pod["spec"].update(spec)
    return pod


A = "kamus.soluto.com/"
DENIED: list[tuple[str, dict[str, Any], str]] = [
    (
        "label without annotations",
        mutated("minimal", {A + "secrets-from": None}),
        "has the kamus.soluto.com/inject label but no kamus.soluto.com/secrets-from annotation",
    ),
    (
        "empty secrets-from",
        mutated("minimal", {A + "secrets-from": " , a"}),
        "kamus.soluto.com/secrets-from has an empty name",
    ),
    (
        "bad ConfigMap name",
        mutated("minimal", {A + "secrets-from": "Web_Secrets"}),
        "kamus.soluto.com/secrets-from: 'Web_Secrets' is not a ConfigMap name",
    ),
    (
        "a ConfigMap twice",
        mutated("minimal", {A + "secrets-from": "a,b,a"}),
        "kamus.soluto.com/secrets-from names a twice",
    ),
    (
        "unknown format",
        mutated("minimal", {A + "output-format": "yaml"}),
        "kamus.soluto.com/output-format: 'yaml' is not one of json, cfg, cfg-strict, files, "
        "custom, env",
    ),
    (
        "output file with files",
        mutated("minimal", {A + "output-file": "x.json"}),
        "kamus.soluto.com/output-file has no meaning with the files format",
    ),
    (
        "output file with a slash",
        mutated("minimal", {A + "output-format": "json", A + "output-file": "../etc/passwd"}),
        "kamus.soluto.com/output-file: '../etc/passwd' is not a file name",
    ),
    (
        "custom without output file",
        mutated("custom", {A + "output-file": None}),
        "the custom format needs kamus.soluto.com/output-file",
    ),
    (
        "custom without template",
        mutated("custom", {A + "template-configmap": None}),
        "the custom format needs kamus.soluto.com/template-configmap",
    ),
    (
        "template without custom",
        mutated("minimal", {A + "template-configmap": "t"}),
        "kamus.soluto.com/template-configmap is only read with kamus.soluto.com/output-format: "
        "custom",
    ),
    (
        "relative mount path",
        mutated("minimal", {A + "mount-path": "kamus"}),
        "kamus.soluto.com/mount-path: 'kamus' is not an absolute, normalised directory",
    ),
    (
        "mount path with dot-dot",
        mutated("minimal", {A + "mount-path": "/kamus/../etc"}),
        "kamus.soluto.com/mount-path: '/kamus/../etc' is not an absolute, normalised",
    ),
    (
        "mount path /",
        mutated("minimal", {A + "mount-path": "/"}),
        "kamus.soluto.com/mount-path: '/' is not an absolute, normalised directory other than /",
    ),
    (
        "mount path over the inputs",
        mutated("minimal", {A + "mount-path": "/var/run"}),
        "kamus.soluto.com/mount-path: /var/run overlaps /var/run/kamus",
    ),
    (
        "mount path already mounted",
        mutated("existing", {A + "mount-path": "/etc/api"}),
        "container api already mounts /etc/api; set kamus.soluto.com/mount-path",
    ),
    (
        "unknown container",
        mutated("existing", {A + "containers": "api,sidecar"}),
        "kamus.soluto.com/containers: the pod has no container sidecar (it has api, proxy, "
        "migrate)",
    ),
    (
        "init container without init-first",
        mutated("existing", {A + "containers": "migrate"}),
        "kamus.soluto.com/containers: migrate is an init container, which runs before "
        'kamus-init; set kamus.soluto.com/init-first: "true"',
    ),
    (
        "init-first not a boolean",
        mutated("minimal", {A + "init-first": "yes"}),
        'kamus.soluto.com/init-first: \'yes\' is not "true" or "false"',
    ),
    (
        "file mode not octal",
        mutated("minimal", {A + "file-mode": "rw-r--r--"}),
        "kamus.soluto.com/file-mode: 'rw-r--r--' is not an octal mode",
    ),
    (
        "root user",
        mutated("minimal", {A + "run-as-user": "0"}),
        "kamus.soluto.com/run-as-user: '0' is not a user id above 0",
    ),
    (
        "a typo in an annotation",
        mutated("minimal", {A + "secret-from": "web-secrets"}),
        "unknown annotation kamus.soluto.com/secret-from; the injector reads",
    ),
    (
        "default service account",
        mutated("minimal", {}, serviceAccountName="default"),
        "the pod runs as the default service account, whose values the decryptor refuses",
    ),
    (
        "a volume of ours already there",
        mutated("minimal", {}, volumes=[{"name": "kamus-secrets", "emptyDir": {}}]),
        "the pod already has a volume named kamus-secrets",
    ),
]


@pytest.mark.parametrize(
    ("pod", "message"), [(pod, message) for _, pod, message in DENIED], ids=[c[0] for c in DENIED]
)
def test_every_bad_annotation_is_denied_with_what_to_fix(pod: dict[str, Any], message: str) -> None:
    decision = review(pod)
    assert decision.outcome == "denied"
    assert decision.patch is None
    assert message in decision.reason


def test_a_pod_without_a_service_account_runs_as_default_and_is_denied() -> None:
    pod = pod_of("minimal")
    del pod["spec"]["serviceAccountName"]
    assert "default service account" in review(pod).reason
    allowed = Settings.model_validate(
        {
            "Injector": {"Image": IMAGE, "DecryptorUrl": DECRYPTOR},
            "Decryptor": {"DenyDefaultServiceAccount": False},
        }
    )
    assert review(pod, allowed).outcome == "injected"


@pytest.mark.parametrize("namespace", ["kube-system", "kube-public"])
def test_system_namespaces_are_denied(namespace: str) -> None:
    decision = decide(pod_of("minimal"), namespace, settings())
    assert decision.outcome == "denied"
    assert f"kamus injects no pod in {namespace}" in decision.reason
