"""The injector in the Helm chart (issue 21, items 4 and 5): the webhook, the admission policy,
TLS without Helm's genCA, least-privilege RBAC, and its `helm test`, rendered with the real helm
for each relevant values set and each answer the cluster may give about its APIs."""

import contextlib
import copy
import json
import re
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from kamus import __version__
from tests.k8s_double import KubeApiDouble
from tests.k8s_double.cel import evaluate_bool, to_cel
from tests.support.chart import (
    BIN,
    CHART,
    HELM,
    HELM4,
    KUBERNETES_VERSIONS,
    Manifest,
    named,
    notes,
    of_kind,
    render,
    render_raw,
    trivy_scan,
)
from tests.support.cluster import eventually
from tests.support.processes import Deployment, Service, deploy, kamus_serve, run_kamus
from tests.support.settings import new_key

# What `helm install` learns from a 1.30+ cluster (and `helm template` only from --api-versions).
POLICIES = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"
ON: dict[str, Any] = {"enabled": True}

# Values set → (values, the APIs the cluster has).
CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "off": ({}, [POLICIES]),
    "enabled-before-1.30": ({"injector": ON}, []),
    "enabled": ({"injector": ON}, [POLICIES]),
    "cert-manager-bootstrap": (
        {"injector": {**ON, "certManager": {"enabled": True}}},
        [POLICIES],
    ),
    "cert-manager-issuer": (
        {
            "injector": {
                **ON,
                "certManager": {
                    "enabled": True,
                    "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"},
                },
            }
        },
        [POLICIES],
    ),
    "cert-manager-before-1.30": ({"injector": {**ON, "certManager": {"enabled": True}}}, []),
    "network-policy-off": ({"injector": ON, "networkPolicy": {"enabled": False}}, [POLICIES]),
    "tls-gke-required-anti-affinity": (
        {
            "injector": {**ON, "port": 10250, "antiAffinity": "required", "replicaCount": 3},
            "tls": {"enabled": True},
            "decryptor": {"audiences": ["kamus-decryptor", "other"]},
            "networkPolicy": {"clientLabel": {"key": "team.example/kamus", "value": "yes"}},
            "metrics": {"serviceMonitor": {"enabled": True}},
            "serviceAccount": {
                "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/k"}
            },
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "pool", "operator": "In", "values": ["a"]}
                                ]
                            }
                        ]
                    }
                }
            },
        },
        [POLICIES],
    ),
}
ENABLED = [case for case in CASES if case != "off"]
BUILTIN = ["enabled-before-1.30", "enabled", "network-policy-off", "tls-gke-required-anti-affinity"]
CERT_MANAGER = ["cert-manager-bootstrap", "cert-manager-issuer", "cert-manager-before-1.30"]
WITH_POLICIES = [case for case in ENABLED if POLICIES in CASES[case][1]]

NAME = "kamus-injector"
INJECTOR_SA = {"kind": "ServiceAccount", "name": NAME, "namespace": "kamus"}
OPT_IN = {"kamus.soluto.com/inject": "true"}
STATUS = "kamus.soluto.com/inject-status"
POLICY_MESSAGE = "the kamus injector did not inject this pod (unavailable?); retry"
CERT_MANAGER_KINDS = {"Certificate", "Issuer", "ServiceMonitor"}  # other operators' kinds


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Manifest]]:
    return {
        case: render(values, crds=True, api_versions=apis) for case, (values, apis) in CASES.items()
    }


def injector_objects(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if "injector" in m["metadata"]["name"]]


def webhook_of(manifests: list[Manifest]) -> Manifest:
    [configuration] = of_kind(manifests, "MutatingWebhookConfiguration")
    assert configuration["metadata"]["name"] == NAME
    [webhook] = configuration["webhooks"]
    result: Manifest = webhook
    return result


def pod_spec(manifests: list[Manifest]) -> Manifest:
    spec: Manifest = named(manifests, "Deployment", NAME)["spec"]["template"]["spec"]
    return spec


def container_env(manifests: list[Manifest]) -> dict[str, Any]:
    [container] = pod_spec(manifests)["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def bound_to_injector(manifests: list[Manifest]) -> list[Manifest]:
    """The Roles and ClusterRoles bound to the injector's service account."""
    bindings = [
        b
        for b in manifests
        if b["kind"] in ("RoleBinding", "ClusterRoleBinding") and INJECTOR_SA in b["subjects"]
    ]
    roles = []
    for binding in bindings:
        ref = binding["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        roles.append(named(manifests, ref["kind"], ref["name"]))
    return roles


def helm_template_in(namespace: str, values: dict[str, Any], *apis: str) -> list[Manifest]:
    """``helm template`` into another release namespace than the support module's ``kamus``."""
    args = [str(HELM), "template", "kamus", str(CHART), "--namespace", namespace, "--values", "-"]
    for api in apis:
        args += ["--api-versions", api]
    result = subprocess.run(
        args, input=json.dumps(values), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# --- off by default ------------------------------------------------------------------------------


def test_the_injector_is_off_by_default(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["off"]
    assert injector_objects(manifests) == []
    kinds = {m["kind"] for m in manifests}
    assert not kinds & {
        "MutatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    # The capability alone changes nothing: the default render is the one test_chart.py checks.
    assert manifests == render(crds=True)
    # The existing `helm test` is there either way.
    for case in ("off", "enabled"):
        assert named(rendered[case], "Pod", "kamus-test")["metadata"]["annotations"][
            "helm.sh/hook"
        ] == ("test")


# --- every object is a valid Kubernetes object ----------------------------------------------------


@pytest.mark.parametrize("case", ENABLED)
def test_every_object_validates_strictly(rendered: dict[str, list[Manifest]], case: str) -> None:
    validated: set[str] = set()
    for manifest in rendered[case]:
        kind = manifest["kind"]
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                # The policy API is v1 from 1.30 on (and rendered only when the cluster has it);
                # cert-manager's and Prometheus's kinds are checked by the tests below.
                policy = kind.startswith("ValidatingAdmissionPolicy") and version == "1.29.0"
                assert policy or kind in CERT_MANAGER_KINDS, (kind, version)
                continue
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{kind}/{manifest['metadata']['name']} ({version}): {error}")
            validated.add(kind)
        if kind.startswith("ValidatingAdmissionPolicy"):
            kubernetes_validate.validate(manifest, "1.30.0", strict=True)  # the first with it
            validated.add(kind)
    assert {"Deployment", "Service", "MutatingWebhookConfiguration", "Pod"} <= validated
    if case in WITH_POLICIES:
        assert {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} <= validated


@pytest.mark.parametrize("case", ENABLED)
def test_helm_4_renders_the_injector_as_helm_3_does(
    rendered: dict[str, list[Manifest]], case: str
) -> None:
    """The same objects; Helm 4 orders the kinds it does not know (cert-manager's) elsewhere."""
    values, apis = CASES[case]

    def key(manifest: Manifest) -> str:
        return json.dumps(manifest, sort_keys=True)

    helm4 = render(values, crds=True, helm=HELM4, api_versions=apis)
    assert sorted(helm4, key=key) == sorted(rendered[case], key=key)


@pytest.mark.parametrize("helm", [HELM, HELM4], ids=["helm3", "helm4"])
@pytest.mark.parametrize(
    "settings",
    [["injector.enabled=true"], ["injector.enabled=true", "injector.certManager.enabled=true"]],
    ids=["builtin-tls", "cert-manager"],
)
def test_helm_lint_strict_passes_with_the_injector(helm: Path, settings: list[str]) -> None:
    lint = [str(helm), "lint", "--strict", str(CHART)]
    for setting in settings:
        lint += ["--set", setting]
    result = subprocess.run(lint, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


# --- the webhook ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ENABLED)
def test_the_webhooks_exact_safety_settings(rendered: dict[str, list[Manifest]], case: str) -> None:
    webhook = copy.deepcopy(webhook_of(rendered[case]))
    conditions = webhook.pop("matchConditions", None)
    assert webhook == {
        "name": "inject.kamus.soluto.com",
        "admissionReviewVersions": ["v1"],
        # No caBundle: the injector (or cert-manager) patches it in the cluster.
        "clientConfig": {
            "service": {"name": NAME, "namespace": "kamus", "path": "/mutate", "port": 443}
        },
        "rules": [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ],
        "sideEffects": "None",
        "timeoutSeconds": 5,
        "reinvocationPolicy": "IfNeeded",
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "objectSelector": {"matchLabels": OPT_IN},
        "namespaceSelector": {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn",
                    "values": ["kube-system", "kube-public", "kamus"],
                }
            ]
        },
    }
    if case in WITH_POLICIES:
        [condition] = conditions
        assert condition["name"] == "not-yet-injected"
        assert STATUS in condition["expression"]
    else:
        assert conditions is None  # matchConditions need the 1.30 API, as the policy does


def test_the_webhook_points_at_the_injectors_service_and_port(
    rendered: dict[str, list[Manifest]],
) -> None:
    for case in ENABLED:
        manifests = rendered[case]
        service = webhook_of(manifests)["clientConfig"]["service"]
        svc = named(manifests, "Service", service["name"])
        [port] = svc["spec"]["ports"]
        assert port["port"] == service["port"] == 443, case
        assert svc["spec"]["type"] == "ClusterIP"
        [container] = pod_spec(manifests)["containers"]
        [container_port] = container["ports"]
        assert port["targetPort"] == container_port["name"]
        assert (
            svc["spec"]["selector"]
            == named(manifests, "Deployment", NAME)["spec"]["selector"]["matchLabels"]
        )
        expected = CASES[case][0]["injector"].get("port", 8443)
        assert container_port["containerPort"] == expected, case
        assert container["args"] == ["--host", "0.0.0.0", "--port", str(expected)]  # noqa: S104


def test_the_release_namespace_is_excluded_whatever_it_is() -> None:
    for namespace, expected in (
        ("secrets", ["kube-system", "kube-public", "secrets"]),
        ("kube-system", ["kube-system", "kube-public"]),  # no duplicate
    ):
        manifests = helm_template_in(namespace, {"injector": ON}, POLICIES)
        selectors = [webhook_of(manifests)["namespaceSelector"]]
        selectors.append(
            of_kind(manifests, "ValidatingAdmissionPolicy")[0]["spec"]["matchConstraints"][
                "namespaceSelector"
            ]
        )
        for selector in selectors:
            [expression] = selector["matchExpressions"]
            assert expression["key"] == "kubernetes.io/metadata.name"
            assert expression["operator"] == "NotIn"
            assert expression["values"] == expected, namespace
        # The injector runs in the namespace it never acts in, so it never waits on itself.
        assert named(manifests, "Deployment", NAME)["metadata"].get("namespace", namespace) == (
            namespace
        )
        assert webhook_of(manifests)["clientConfig"]["service"]["namespace"] == namespace


def test_no_ca_bundle_is_rendered_and_renders_are_identical() -> None:
    """Never Helm's genCA: it makes a new CA at each render, so every `helm template` (Argo CD)
    would replace the caBundle the API server trusts."""
    sources = "\n".join(p.read_text() for p in (CHART / "templates").rglob("*") if p.is_file())
    uncommented = re.sub(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", "", sources, flags=re.DOTALL)
    actions = "\n".join(re.findall(r"\{\{(.*?)\}\}", uncommented, flags=re.DOTALL))
    assert "include" in actions  # what is searched is the templates' code
    for function in ("genCA", "genSignedCert", "genSelfSignedCert", "genPrivateKey", "lookup"):
        assert not re.search(rf"\b{function}\b", actions), function
    for values, apis in (CASES["enabled"], CASES["cert-manager-bootstrap"]):
        first, second = (render_raw(values, api_versions=apis) for _ in range(2))
        assert first.returncode == 0, first.stderr
        assert first.stdout == second.stdout
        manifests = [doc for doc in yaml.safe_load_all(first.stdout) if doc]
        assert "caBundle" not in json.dumps(manifests)  # comments aside
        assert "BEGIN CERTIFICATE" not in first.stdout
        assert "PRIVATE KEY" not in first.stdout


def cel(expression: str, pod: Manifest) -> bool:
    """Evaluate a CEL expression the way the API server does for ``object`` (as the double
    evaluates the rendered policy's)."""
    return evaluate_bool(expression, {"object": to_cel(pod)})


POD_STATES: dict[str, tuple[Manifest, bool]] = {
    # pod → whether it is injected (by its status annotation)
    "no annotations": ({"metadata": {"labels": OPT_IN}}, False),
    "other annotations": (
        {"metadata": {"labels": OPT_IN, "annotations": {"kamus.soluto.com/secrets-from": "a"}}},
        False,
    ),
    "another status": ({"metadata": {"annotations": {STATUS: "skipped"}}}, False),
    "injected": (
        {"metadata": {"annotations": {"kamus.soluto.com/secrets-from": "a", STATUS: "injected"}}},
        True,
    ),
}


@pytest.mark.parametrize("state", list(POD_STATES))
def test_the_cel_expressions_decide_as_intended(
    rendered: dict[str, list[Manifest]], state: str
) -> None:
    """The webhook is sent every opted-in pod not yet injected (so a label without the
    annotations still reaches it, and is denied with the injector's own message); the policy
    admits only injected ones."""
    pod, injected = POD_STATES[state]
    [condition] = webhook_of(rendered["enabled"])["matchConditions"]
    assert cel(condition["expression"], pod) is not injected
    [policy] = of_kind(rendered["enabled"], "ValidatingAdmissionPolicy")
    [validation] = policy["spec"]["validations"]
    assert cel(validation["expression"], pod) is injected


# --- the admission policy ------------------------------------------------------------------------


@pytest.mark.parametrize("case", WITH_POLICIES)
def test_the_policy_denies_uninjected_opted_in_pods(
    rendered: dict[str, list[Manifest]], case: str
) -> None:
    manifests = rendered[case]
    webhook = webhook_of(manifests)
    [policy] = of_kind(manifests, "ValidatingAdmissionPolicy")
    [binding] = of_kind(manifests, "ValidatingAdmissionPolicyBinding")
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    constraints = spec["matchConstraints"]
    # The same pods as the webhook: opted in, outside the excluded namespaces, on CREATE.
    assert constraints["objectSelector"] == webhook["objectSelector"]
    assert constraints["namespaceSelector"] == webhook["namespaceSelector"]
    assert constraints["resourceRules"] == webhook["rules"]
    assert constraints["matchPolicy"] == "Equivalent"
    [validation] = spec["validations"]
    assert validation["message"] == POLICY_MESSAGE
    assert f"object.metadata.annotations['{STATUS}'] == 'injected'" in validation["expression"]
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }


@pytest.mark.parametrize("case", ["enabled-before-1.30", "cert-manager-before-1.30"])
def test_without_the_policy_api_the_policy_is_left_out(
    rendered: dict[str, list[Manifest]], case: str
) -> None:
    manifests = rendered[case]
    assert not of_kind(manifests, "ValidatingAdmissionPolicy")
    assert not of_kind(manifests, "ValidatingAdmissionPolicyBinding")
    assert "matchConditions" not in webhook_of(manifests)
    # The Kubernetes version alone does not decide: the API must be served (v1beta1 is not it).
    older = render(
        {"injector": ON},
        kube_version="1.29.0",
        api_versions=["admissionregistration.k8s.io/v1beta1/ValidatingAdmissionPolicy"],
    )
    assert not of_kind(older, "ValidatingAdmissionPolicy")
    newer = render({"injector": ON}, kube_version="1.30.0", api_versions=[POLICIES])
    assert of_kind(newer, "ValidatingAdmissionPolicy")


# --- the Deployment ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ENABLED)
def test_the_deployment_runs_the_injector_hardened_and_highly_available(
    rendered: dict[str, list[Manifest]], case: str
) -> None:
    manifests = rendered[case]
    values = CASES[case][0]
    deployment = named(manifests, "Deployment", NAME)
    spec = deployment["spec"]
    replicas = values["injector"].get("replicaCount", 2)
    assert spec["replicas"] == replicas
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == f"ghcr.io/kamus-py/kamus-decryptor:{__version__}"
    assert container["command"] == ["kamus", "serve", "injector"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "webhook", "scheme": "HTTPS"}
    # Hardened as every other pod of the chart.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"]["memory"]
    assert container["resources"]["requests"]["cpu"]
    # Anti-affinity on the node, added to the chart's affinity; a PDB.
    selector = spec["selector"]["matchLabels"]
    anti = pod["affinity"]["podAntiAffinity"]
    term = {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": selector}}
    if values["injector"].get("antiAffinity") == "required":
        assert anti == {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
        # A surge pod could find no node: one pod at a time.
        assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
        assert pod["affinity"]["nodeAffinity"] == values["affinity"]["nodeAffinity"]
    else:
        assert anti == {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term}
            ]
        }
        assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pdb = named(manifests, "PodDisruptionBudget", NAME)
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}
    # Its own service account, without the KMS identity of the other components.
    assert pod["serviceAccountName"] == NAME
    account = named(manifests, "ServiceAccount", NAME)
    assert "annotations" not in account["metadata"]


def test_a_single_replica_has_no_disruption_budget() -> None:
    manifests = render({"injector": {**ON, "replicaCount": 1}})
    assert NAME not in {m["metadata"]["name"] for m in of_kind(manifests, "PodDisruptionBudget")}


@pytest.mark.parametrize("case", ENABLED)
def test_the_injectors_settings(rendered: dict[str, list[Manifest]], case: str) -> None:
    manifests = rendered[case]
    values = CASES[case][0]
    env = container_env(manifests)
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["Injector__Image"] == f"ghcr.io/kamus-py/kamus-decryptor:{__version__}"
    assert env["Injector__ImagePullPolicy"] == "IfNotPresent"
    # The decryptor's URL, as the existing helm test pod computes it.
    test_pod = named(manifests, "Pod", "kamus-test")["spec"]["containers"][0]
    test_env = {e["name"]: e.get("value") for e in test_pod["env"]}
    assert env["Injector__DecryptorUrl"] == test_env["DECRYPTOR_URL"]
    tls = values.get("tls", {}).get("enabled", False)
    expected_url = (
        "https://kamus-decryptor.kamus.svc:443" if tls else ("http://kamus-decryptor.kamus.svc:80")
    )
    assert env["Injector__DecryptorUrl"] == expected_url
    # The label the decryptor's NetworkPolicy admits.
    label = values.get("networkPolicy", {}).get("clientLabel", {})
    key, value = label.get("key", "kamus.soluto.com/client"), label.get("value", "true")
    assert env["Injector__ClientLabel"] == f"{key}={value}"
    if values.get("networkPolicy", {}).get("enabled", True):
        policy = named(manifests, "NetworkPolicy", "kamus-decryptor")
        assert {key: value} in [
            peer.get("podSelector", {}).get("matchLabels")
            for peer in policy["spec"]["ingress"][0]["from"]
        ]
    # The audiences as the decryptor gets them (none by default: no env).
    decryptor = named(manifests, "Deployment", "kamus-decryptor")["spec"]["template"]["spec"]
    decryptor_env = {e["name"]: e.get("value") for e in decryptor["containers"][0]["env"]}
    assert env.get("Decryptor__Audiences") == decryptor_env.get("Decryptor__Audiences")
    # The init container's defaults, those of the interface.
    assert (
        env["Injector__RunAsUser"],
        env["Injector__CpuRequest"],
        env["Injector__MemoryRequest"],
        env["Injector__MemoryLimit"],
    ) == ("10001", "10m", "64Mi", "128Mi")
    # It reads no key material, and no shared key configuration.
    [container] = pod_spec(manifests)["containers"]
    assert "envFrom" not in container
    assert not [name for name in env if name.startswith("KeyManagement__")]
    # An https decryptor: only the CA of its certificate, for kamus-init, never its key.
    volumes = {v["name"]: v for v in pod_spec(manifests)["volumes"]}
    if tls:
        assert env["Injector__DecryptorCaFile"] == "/decryptor-ca/ca.crt"
        assert volumes["decryptor-ca"]["secret"] == {
            "secretName": "kamus-decryptor-tls",
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
            "defaultMode": 0o440,
        }
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["decryptor-ca"] == {
            "name": "decryptor-ca",
            "mountPath": "/decryptor-ca",
            "readOnly": True,
        }
    else:
        assert "Injector__DecryptorCaFile" not in env
        assert "decryptor-ca" not in volumes


def test_custom_init_container_settings() -> None:
    init = {
        "image": "registry.example/kamus-decryptor:pinned",
        "runAsUser": 2000,
        "resources": {"requests": {"cpu": "5m", "memory": "32Mi"}, "limits": {"memory": "48Mi"}},
    }
    values = {"injector": {**ON, "initContainer": init}, "image": {"pullPolicy": "Always"}}
    env = container_env(render(values))
    assert env["Injector__Image"] == "registry.example/kamus-decryptor:pinned"
    assert env["Injector__ImagePullPolicy"] == "Always"
    assert env["Injector__RunAsUser"] == "2000"
    assert env["Injector__CpuRequest"] == "5m"
    assert env["Injector__MemoryRequest"] == "32Mi"
    assert env["Injector__MemoryLimit"] == "48Mi"
    extra = render({"injector": {**ON, "extraEnv": [{"name": "Logging__Level", "value": "DEBUG"}]}})
    assert container_env(extra)["Logging__Level"] == "DEBUG"


# --- TLS and RBAC --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", BUILTIN)
def test_builtin_tls_settings_and_least_privilege_rbac(
    rendered: dict[str, list[Manifest]], case: str
) -> None:
    manifests = rendered[case]
    env = container_env(manifests)
    assert env["Injector__ServiceName"] == NAME
    assert env["Injector__CaSecretName"] == "kamus-injector-ca"
    assert env["Injector__WebhookName"] == NAME
    assert env["Injector__LeaseName"] == "kamus-injector-ca-bundle"
    assert "Server__TlsCertFile" not in env
    assert not of_kind(manifests, "Certificate")
    assert not of_kind(manifests, "Issuer")
    assert "cert-manager.io/inject-ca-from" not in str(
        named(manifests, "MutatingWebhookConfiguration", NAME)["metadata"]
    )
    # The names the injector is told are those of the objects it patches.
    assert named(manifests, "Service", env["Injector__ServiceName"])
    assert named(manifests, "MutatingWebhookConfiguration", env["Injector__WebhookName"])
    # RBAC: exactly one Role (its namespace) and one ClusterRole (its webhook) are bound to it.
    roles = bound_to_injector(manifests)
    assert sorted(r["kind"] for r in roles) == ["ClusterRole", "Role"]
    role = named(manifests, "Role", NAME)
    assert role["metadata"].get("namespace", "kamus") == "kamus"
    assert role["rules"] == [
        # RBAC cannot limit create to a name: by kind, and everything else by name.
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [env["Injector__CaSecretName"]],
            "verbs": ["get", "update"],
        },
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [env["Injector__LeaseName"]],
            "verbs": ["get", "update"],
        },
    ]
    assert named(manifests, "ClusterRole", NAME)["rules"] == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": [env["Injector__WebhookName"]],
            "verbs": ["get", "patch"],
        }
    ]
    for bound in roles:
        for rule in bound["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (bound["metadata"]["name"], rule)
            assert not {"list", "watch", "delete", "deletecollection"} & set(rule["verbs"])
    # It talks to the apiserver: a token.
    assert pod_spec(manifests)["automountServiceAccountToken"] is True
    assert named(manifests, "ServiceAccount", NAME)["automountServiceAccountToken"] is True


@pytest.mark.parametrize("case", CERT_MANAGER)
def test_cert_manager_mode_needs_no_rbac_and_mounts_the_serving_secret(
    rendered: dict[str, list[Manifest]], case: str
) -> None:
    manifests = rendered[case]
    assert bound_to_injector(manifests) == []
    for kind in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"):
        assert NAME not in {m["metadata"]["name"] for m in of_kind(manifests, kind)}, kind
    # It never calls the apiserver: no token.
    assert pod_spec(manifests)["automountServiceAccountToken"] is False
    assert named(manifests, "ServiceAccount", NAME)["automountServiceAccountToken"] is False
    env = container_env(manifests)
    for setting in ("ServiceName", "CaSecretName", "WebhookName", "LeaseName"):
        assert f"Injector__{setting}" not in env
    certificate = named(manifests, "Certificate", NAME)
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    spec = certificate["spec"]
    assert spec["dnsNames"] == [
        NAME,
        f"{NAME}.kamus",
        f"{NAME}.kamus.svc",
        f"{NAME}.kamus.svc.cluster.local",
    ]
    assert spec["privateKey"]["rotationPolicy"] == "Always"
    # The Deployment serves the certificate's Secret, mounted as a directory (renewals arrive).
    pod = pod_spec(manifests)
    [volume] = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == spec["secretName"] == "kamus-injector-tls"
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert "subPath" not in mount
    assert mount["readOnly"] is True
    assert env["Server__TlsCertFile"] == f"{mount['mountPath']}/tls.crt" == "/tls/tls.crt"
    assert env["Server__TlsKeyFile"] == f"{mount['mountPath']}/tls.key" == "/tls/tls.key"
    # cert-manager's CA injector fills caBundle from that Certificate.
    configuration = named(manifests, "MutatingWebhookConfiguration", NAME)
    assert configuration["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"kamus/{certificate['metadata']['name']}"
    }


def test_cert_manager_with_an_issuer_of_yours(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["cert-manager-issuer"]
    assert not of_kind(manifests, "Issuer")
    [certificate] = of_kind(manifests, "Certificate")
    assert certificate["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


def test_cert_manager_bootstraps_its_own_ca_without_an_issuer(
    rendered: dict[str, list[Manifest]],
) -> None:
    """cert-manager's standard bootstrap: self-signed Issuer → CA Certificate → CA Issuer →
    the serving Certificate; the CA is made by cert-manager in the cluster, never by Helm."""
    manifests = rendered["cert-manager-bootstrap"]
    issuers = {m["metadata"]["name"]: m["spec"] for m in of_kind(manifests, "Issuer")}
    certificates = {m["metadata"]["name"]: m["spec"] for m in of_kind(manifests, "Certificate")}
    assert set(issuers) == {"kamus-injector-selfsigned", "kamus-injector-root"}
    assert set(certificates) == {"kamus-injector-root", NAME}
    assert issuers["kamus-injector-selfsigned"] == {"selfSigned": {}}
    ca = certificates["kamus-injector-root"]
    assert ca["isCA"] is True
    assert ca["issuerRef"] == {
        "name": "kamus-injector-selfsigned",
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    assert issuers["kamus-injector-root"] == {"ca": {"secretName": ca["secretName"]}}
    assert certificates[NAME]["issuerRef"] == {
        "name": "kamus-injector-root",
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    # Not the built-in mode's CA Secret: switching modes never mixes the two.
    assert ca["secretName"] != "kamus-injector-ca"
    for objects in (of_kind(manifests, "Issuer"), of_kind(manifests, "Certificate")):
        for manifest in objects:
            assert manifest["apiVersion"] == "cert-manager.io/v1"
    assert not of_kind(manifests, "Secret")  # cert-manager makes them


def test_the_service_monitor_scrapes_the_injector_through_its_ca(
    rendered: dict[str, list[Manifest]],
) -> None:
    [monitor] = of_kind(rendered["tls-gke-required-anti-affinity"], "ServiceMonitor")
    [endpoint] = [e for e in monitor["spec"]["endpoints"] if e["port"] == "webhook"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["serverName"] == f"{NAME}.kamus.svc"
    assert endpoint["tlsConfig"]["ca"] == {"secret": {"name": "kamus-injector-ca", "key": "ca.crt"}}
    assert endpoint["tlsConfig"]["insecureSkipVerify"] is False
    with_cert_manager = render(
        {
            "injector": {**ON, "certManager": {"enabled": True}},
            "metrics": {"serviceMonitor": {"enabled": True}},
        }
    )
    [monitor] = of_kind(with_cert_manager, "ServiceMonitor")
    [endpoint] = [e for e in monitor["spec"]["endpoints"] if e["port"] == "webhook"]
    assert endpoint["tlsConfig"]["ca"]["secret"]["name"] == "kamus-injector-tls"


# --- NetworkPolicy -------------------------------------------------------------------------------


def test_the_network_policy_opens_only_the_webhook_port(
    rendered: dict[str, list[Manifest]],
) -> None:
    manifests = rendered["enabled"]
    policy = named(manifests, "NetworkPolicy", NAME)
    assert (
        policy["spec"]["podSelector"]["matchLabels"]
        == named(manifests, "Deployment", NAME)["spec"]["selector"]["matchLabels"]
    )
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # From anywhere (the API server's addresses are unknown), to the webhook's port only.
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "webhook", "protocol": "TCP"}]}]
    assert not of_kind(rendered["network-policy-off"], "NetworkPolicy")


# --- helm test -----------------------------------------------------------------------------------


def hooks(manifests: list[Manifest]) -> list[Manifest]:
    return [
        m
        for m in manifests
        if m["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
        and m["metadata"]["labels"]["app.kubernetes.io/component"] == "injector-test"
    ]


def test_helm_test_runs_kamus_doctor_only_with_the_injector(
    rendered: dict[str, list[Manifest]],
) -> None:
    assert hooks(rendered["off"]) == []
    manifests = rendered["enabled"]
    objects = {
        (m["kind"], m["metadata"].get("namespace", "kamus"), m["metadata"]["name"])
        for m in hooks(manifests)
    }
    assert objects == {
        ("ServiceAccount", "kamus", "kamus-injector-test"),
        ("ServiceAccount", "default", "kamus-doctor"),  # the probe pod's, where it is created
        ("Role", "default", "kamus-injector-test"),
        ("RoleBinding", "default", "kamus-injector-test"),
        ("ClusterRole", "kamus", "kamus-injector-test"),  # cluster-scoped
        ("ClusterRoleBinding", "kamus", "kamus-injector-test"),
        ("Pod", "kamus", "kamus-injector-test"),
    }
    for hook in hooks(manifests):
        policies = hook["metadata"]["annotations"]["helm.sh/hook-delete-policy"].split(",")
        assert sorted(policies) == ["before-hook-creation", "hook-succeeded"]
        if hook["kind"] != "Pod":  # made before the pod that uses them
            assert int(hook["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0
    pod = named(manifests, "Pod", "kamus-injector-test")
    spec = pod["spec"]
    [container] = spec["containers"]
    round_trip = named(manifests, "Pod", "kamus-test")["spec"]["containers"][0]
    urls = {e["name"]: e.get("value") for e in round_trip["env"]}
    assert container["command"] == [
        "kamus",
        "doctor",
        "--namespace",
        "default",
        "--service-account",
        "kamus-doctor",
        "--encryptor-url",
        urls["ENCRYPTOR_URL"],
        "--decryptor-url",
        urls["DECRYPTOR_URL"],
    ]
    assert container["image"] == f"ghcr.io/kamus-py/kamus-decryptor:{__version__}"
    assert spec["serviceAccountName"] == "kamus-injector-test"
    assert spec["automountServiceAccountToken"] is True  # it calls the API server
    assert spec["restartPolicy"] == "Never"
    # The decryptor's NetworkPolicy admits it.
    assert pod["metadata"]["labels"]["kamus.soluto.com/client"] == "true"
    # Not opted in itself, and in a namespace the webhook skips anyway.
    assert "kamus.soluto.com/inject" not in pod["metadata"]["labels"]
    probe_account = named(manifests, "ServiceAccount", "kamus-doctor")
    assert probe_account["automountServiceAccountToken"] is False


def test_helm_test_rbac_is_dry_run_pod_creation_and_self_reviews_only(
    rendered: dict[str, list[Manifest]],
) -> None:
    manifests = rendered["enabled"]
    subject = {"kind": "ServiceAccount", "name": "kamus-injector-test", "namespace": "kamus"}
    bindings = [
        b
        for b in manifests
        if b["kind"] in ("RoleBinding", "ClusterRoleBinding") and subject in b.get("subjects", [])
    ]
    granted = {}
    for binding in bindings:
        ref = binding["roleRef"]
        role = named(manifests, ref["kind"], ref["name"])
        if ref["kind"] == "Role":  # a RoleBinding grants a Role in its own namespace
            assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "default"
        granted[ref["kind"]] = role["rules"]
    assert granted == {
        "Role": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}],
        "ClusterRole": [
            {
                "apiGroups": ["authorization.k8s.io"],
                "resources": ["selfsubjectaccessreviews"],
                "verbs": ["create"],
            }
        ],
    }


def test_helm_test_namespace_and_account_are_values(rendered: dict[str, list[Manifest]]) -> None:
    test = {"namespace": "team-a", "serviceAccount": "probe"}
    manifests = render({"injector": {**ON, "test": test}, "tls": {"enabled": True}})
    pod = named(manifests, "Pod", "kamus-injector-test")
    [container] = pod["spec"]["containers"]
    command = container["command"]
    assert command[command.index("--namespace") + 1] == "team-a"
    assert command[command.index("--service-account") + 1] == "probe"
    assert command[command.index("--decryptor-url") + 1] == "https://kamus-decryptor.kamus.svc:443"
    assert named(manifests, "ServiceAccount", "probe")["metadata"]["namespace"] == "team-a"
    assert named(manifests, "Role", "kamus-injector-test")["metadata"]["namespace"] == "team-a"
    # With TLS, the doctor trusts the services' CA as the round-trip test does.
    assert command[command.index("--ca-bundle") + 1] == "/var/run/secrets/kamus-tls/ca.crt"
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "tls"]
    assert mount["mountPath"] == "/var/run/secrets/kamus-tls"
    [tls] = [v for v in pod["spec"]["volumes"] if v["name"] == "tls"]
    round_trip = named(manifests, "Pod", "kamus-test")["spec"]["volumes"]
    assert tls in round_trip
    assert (
        "--ca-bundle"
        not in named(render({"injector": ON}), "Pod", NAME + "-test")["spec"]["containers"][0][
            "command"
        ]
    )


def test_with_encryptor_authentication_the_doctor_skips_the_probe_encryption() -> None:
    """The test pod's token is the apiserver's, not one made for the encryptor, and it may not
    create KamusSecrets there: a probe encryption could only FAIL. Without the URL the doctor
    only says whether it may (WARN), and the round-trip test covers the encryptor."""
    values = {"injector": ON, "encryptor": {"authentication": "kubernetes"}}
    [container] = named(render(values), "Pod", "kamus-injector-test")["spec"]["containers"]
    assert "--encryptor-url" not in container["command"]
    assert "--decryptor-url" in container["command"]


@pytest.mark.parametrize("namespace", ["kamus", "kube-system", "kube-public"])
def test_helm_test_refuses_a_namespace_the_webhook_skips(namespace: str) -> None:
    result = render_raw({"injector": {**ON, "test": {"namespace": namespace}}})
    assert result.returncode == 1
    assert "injector.test.namespace" in result.stderr
    assert "where the webhook never acts" in result.stderr
    # Off, the value does not matter.
    assert render_raw({"injector": {"test": {"namespace": namespace}}}).returncode == 0


# --- NOTES ---------------------------------------------------------------------------------------


def test_notes_say_how_to_use_the_injector_and_when_the_policy_was_left_out(
    tmp_path: Path,
) -> None:
    assert "injector" not in notes({}, tmp_path, api_versions=[POLICIES])
    with_policy = notes({"injector": ON}, tmp_path, api_versions=[POLICIES])
    assert 'kamus.soluto.com/inject: "true"' in with_policy
    assert "kamus.soluto.com/secrets-from" in with_policy
    assert "kamus-injector" in with_policy
    assert "never in kube-system,\n   kube-public or kamus" in with_policy
    assert "kamus doctor --namespace my-app --service-account my-app" in with_policy
    assert "helm test" in with_policy
    assert "ignoreDifferences" in with_policy
    assert "ValidatingAdmissionPolicy kamus-injector denies" in with_policy
    assert "left out" not in with_policy
    assert "Secret kamus-injector-ca" in with_policy
    without = notes({"injector": ON}, tmp_path, api_versions=[])
    assert "ValidatingAdmissionPolicy" in without
    assert "was left out" in without
    assert "Kubernetes < 1.30" in without
    assert f"--api-versions {POLICIES}" in without
    cert_manager = notes(
        {"injector": {**ON, "certManager": {"enabled": True}}}, tmp_path, api_versions=[]
    )
    assert "cert-manager issues its certificate" in cert_manager
    assert "kamus-injector-ca" not in cert_manager
    # The doctor command the notes give uses the options it has.
    line = re.search(r"kamus doctor (.*)", with_policy)
    assert line is not None
    help_result = subprocess.run(
        [str(BIN / "kamus"), "doctor", "--help"], capture_output=True, text=True, check=True
    )
    for option in re.findall(r"(--[a-z-]+)", line.group(1)):
        assert option in help_result.stdout, option


# --- values and schema ---------------------------------------------------------------------------


def leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            yield from leaves(value, path)
        else:
            yield path


def test_every_injector_value_is_in_the_schema_and_documented() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path in leaves(values["injector"], "injector"):
        node = schema
        for part in path.split("."):
            assert node.get("additionalProperties") is False or "properties" not in node, path
            node = node["properties"][part]
        assert node, path
    text = (CHART / "values.yaml").read_text()
    block = text[text.index("\ninjector:") : text.index("\nmetrics:")]
    for needle in (
        "10250",  # GKE private clusters' firewall
        "ignoreDifferences",  # Argo CD and the patched caBundle
        '".webhooks[]?.clientConfig.caBundle"',
        "kind: MutatingWebhookConfiguration",
        "RespectIgnoreDifferences=true",
        "genCA",
    ):
        assert needle in block, needle


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"injector": {"enabled": "yes"}}, "injector.enabled"),
        ({"injector": {"enabeld": True}}, "Additional property enabeld is not allowed"),
        ({"injector": {"port": 443}}, "injector.port"),  # non-root: 1024 and above
        ({"injector": {"port": 70000}}, "injector.port"),
        ({"injector": {"replicaCount": 0}}, "injector.replicaCount"),
        ({"injector": {"antiAffinity": "soft"}}, "injector.antiAffinity"),
        ({"injector": {"certManager": {"enabled": 1}}}, "injector.certManager.enabled"),
        (
            {"injector": {"certManager": {"issuerRef": {"namespace": "x"}}}},
            "Additional property namespace is not allowed",
        ),
        ({"injector": {"test": {"namespace": "Team_A"}}}, "injector.test.namespace"),
        (
            {"injector": {"initContainer": {"resources": {"limits": {"cpu": "1"}}}}},
            "Additional property cpu is not allowed",
        ),
        ({"injector": {"initContainer": {"runAsUser": 0}}}, "injector.initContainer.runAsUser"),
        ({"injector": {"extraEnv": [{"value": "x"}]}}, "name"),
    ],
)
def test_the_schema_rejects_bad_injector_values(values: dict[str, Any], message: str) -> None:
    result = render_raw(values)
    assert result.returncode == 1
    assert message in result.stderr, result.stderr


# --- misconfiguration scan -----------------------------------------------------------------------

# Findings that are the injector's design, each scoped to one object, with the reason.
ACCEPTED_FINDINGS = {
    # Built-in TLS: the leader patches caBundle into its own webhook configuration, and RBAC
    # limits get/patch to that one name (resourceNames); injector.certManager.enabled removes it.
    (
        "KSV-0114",
        "ClusterRole 'kamus-injector' should not have access to resources "
        '["mutatingwebhookconfigurations", "validatingwebhookconfigurations"] for verbs '
        '["create", "update", "patch", "delete", "deletecollection", "impersonate", "*"]',
    ),
}


def test_trivy_finds_no_high_or_critical_misconfiguration(
    rendered: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    """As test_chart.py scans its values sets, over the injector's (which it does not render)."""
    renders = {case: injector_objects(rendered[case]) for case in ENABLED}
    successes = trivy_scan(renders, tmp_path, ACCEPTED_FINDINGS)
    assert successes > 50  # it really ran its Kubernetes checks


# --- end to end: the chart's own objects, the real injector, the helm test's doctor ---------------


def grants_from_chart(
    kube_api: KubeApiDouble, manifests: list[Manifest], namespace: str, account: str
) -> list[tuple[str, str, str, str]]:
    """Give the double the RBAC the chart binds to a service account: each rule of each bound
    Role (in its namespace) or ClusterRole (cluster-wide). The double knows no resourceNames:
    the tests check the names used against them."""
    subject = {"kind": "ServiceAccount", "name": account, "namespace": namespace}
    granted = []
    for binding in manifests:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if subject not in binding["subjects"]:
            continue
        ref = binding["roleRef"]
        role = named(manifests, ref["kind"], ref["name"])
        scope = binding["metadata"].get("namespace", "kamus") if ref["kind"] == "Role" else "*"
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        kube_api.grant(
                            f"system:serviceaccount:{namespace}:{account}",
                            group=group,
                            resource=resource,
                            verb=verb,
                            namespace=scope,
                        )
                        granted.append((group, resource, verb, scope))
    return granted


@dataclass
class ChartCluster:
    manifests: list[Manifest]
    services: Deployment
    injector: Service
    admin: httpx.Client
    kube_api: KubeApiDouble

    def create_pod(
        self, namespace: str, labels: dict[str, str], **annotations: str
    ) -> httpx.Response:
        """A server-side dry-run create, as the admin."""
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "app-", "labels": labels, "annotations": annotations},
            "spec": {
                "serviceAccountName": "app",
                "containers": [{"name": "app", "image": "app:1"}],
            },
        }
        return self.admin.post(f"/api/v1/namespaces/{namespace}/pods?dryRun=All", json=pod)


@pytest.fixture
def chart_cluster(kube_api: KubeApiDouble, tmp_path: Path) -> Iterator[ChartCluster]:
    """What `helm install` with injector.enabled puts in a 1.30+ cluster: the chart's webhook
    configuration and policy, stored as rendered, and the injector started with the chart's
    settings, as its own service account with exactly the chart's RBAC."""
    manifests = render({"injector": ON}, api_versions=[POLICIES])
    with contextlib.ExitStack() as stack:
        admin = stack.enter_context(
            httpx.Client(
                base_url=kube_api.url,
                headers={"Authorization": f"Bearer {kube_api.admin_token}"},
                verify=ssl.create_default_context(cafile=str(kube_api.ca_file)),
                timeout=30,
            )
        )
        group = "/apis/admissionregistration.k8s.io/v1"
        for kind, plural in (
            ("MutatingWebhookConfiguration", "mutatingwebhookconfigurations"),
            ("ValidatingAdmissionPolicy", "validatingadmissionpolicies"),
            ("ValidatingAdmissionPolicyBinding", "validatingadmissionpolicybindings"),
        ):
            [manifest] = of_kind(manifests, kind)
            created = admin.post(f"{group}/{plural}", json=manifest)
            assert created.status_code == 201, created.text
        assert grants_from_chart(kube_api, manifests, "kamus", NAME)
        # The Deployment's environment; the pod's namespace from the downward API.
        env = {k: v for k, v in container_env(manifests).items() if isinstance(v, str)}
        env["POD_NAMESPACE"] = "kamus"
        token = kube_api.issue_token("kamus", NAME)
        env["KUBECONFIG"] = str(kube_api.write_kubeconfig(tmp_path / "injector-kubeconfig", token))
        key_file = tmp_path / "aes-key"
        key_file.write_text(new_key())
        services = stack.enter_context(
            deploy(kube_api, tmp_path, {"KeyManagement__AES__KeyFile": str(key_file)})
        )
        # Ready once it serves its certificate; what trusts it is the caBundle, waited for below.
        injector = stack.enter_context(
            kamus_serve(
                "injector", env, tmp_path / "injector.log", ready_path="/readyz", verify=False
            )
        )
        port = int(injector.url.rsplit(":", 1)[1])
        kube_api.service_endpoints[("kamus", NAME)] = ("127.0.0.1", port)

        def ca_bundle() -> str | None:
            configuration = admin.get(f"{group}/mutatingwebhookconfigurations/{NAME}").json()
            bundle: str | None = configuration["webhooks"][0]["clientConfig"].get("caBundle")
            return bundle

        eventually(ca_bundle, timeout=30)
        yield ChartCluster(manifests, services, injector, admin, kube_api)


def test_the_chart_rbac_lets_the_injector_patch_its_webhook(chart_cluster: ChartCluster) -> None:
    """The injector, as its service account with the chart's RBAC only, made its CA, took its
    Lease and patched caBundle; the names it used are those the Role and ClusterRole name."""
    kube_api, manifests = chart_cluster.kube_api, chart_cluster.manifests
    role = named(manifests, "Role", NAME)
    names = {r["resources"][0]: r["resourceNames"] for r in role["rules"] if "resourceNames" in r}
    assert [s["metadata"]["name"] for s in kube_api.objects("secrets", "kamus")] == names["secrets"]
    assert [le["metadata"]["name"] for le in kube_api.objects("leases", "kamus")] == names["leases"]
    [cluster_rule] = named(manifests, "ClusterRole", NAME)["rules"]
    assert cluster_rule["resourceNames"] == [
        m["metadata"]["name"] for m in kube_api.objects("mutatingwebhookconfigurations")
    ]
    assert "Forbidden" not in chart_cluster.injector.log_file.read_text()


def test_the_helm_test_doctor_passes_against_the_chart_objects(
    chart_cluster: ChartCluster, tmp_path: Path
) -> None:
    """The `helm test` pod's own command, as its service account with the test's RBAC: the
    webhook is reached through the chart's configuration, and the policy admits what it
    patched."""
    kube_api, manifests = chart_cluster.kube_api, chart_cluster.manifests
    assert grants_from_chart(kube_api, manifests, "kamus", "kamus-injector-test")
    [container] = named(manifests, "Pod", "kamus-injector-test")["spec"]["containers"]
    local = {
        "http://kamus-encryptor.kamus.svc:80": chart_cluster.services.encryptor.url,
        "http://kamus-decryptor.kamus.svc:80": chart_cluster.services.decryptor.url,
    }
    command = [local.get(arg, arg) for arg in container["command"]]
    assert command[0] == "kamus"
    token = kube_api.issue_token("kamus", "kamus-injector-test")
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "doctor-kubeconfig", token)
    doctor = run_kamus(*command[1:], env={"KUBECONFIG": str(kubeconfig)})
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    verdicts = [line.split()[:2] for line in doctor.stdout.splitlines() if line.strip()]
    assert verdicts == [
        ["PASS", "injector"],
        ["PASS", "encryptor"],
        ["PASS", "decryptor"],
        ["PASS", "encrypt"],
    ], doctor.stdout
    [call] = [c for c in kube_api.admission_calls if c.namespace == "default"]
    assert (call.webhook, call.configuration, call.dry_run, call.outcome) == (
        "inject.kamus.soluto.com",
        NAME,
        True,
        "patched",
    )


def test_the_chart_webhook_and_policy_fail_closed_for_opted_in_pods_only(
    chart_cluster: ChartCluster,
) -> None:
    kube_api = chart_cluster.kube_api
    secrets_from = {"kamus.soluto.com/secrets-from": "app-secrets"}
    injected = chart_cluster.create_pod("team-a", OPT_IN, **secrets_from)
    assert injected.status_code == 201, injected.text
    assert injected.json()["metadata"]["annotations"][STATUS] == "injected"
    # A label without the annotations reaches the injector, which names what is missing.
    bare = chart_cluster.create_pod("team-a", OPT_IN)
    assert bare.status_code >= 400
    assert "kamus.soluto.com/secrets-from" in bare.json()["message"]
    calls = len(kube_api.admission_calls)
    # Never called for other pods, nor in the release's or the control plane's namespaces.
    assert chart_cluster.create_pod("team-a", {"app": "web"}).status_code == 201
    for namespace in ("kamus", "kube-system", "kube-public"):
        own = chart_cluster.create_pod(namespace, OPT_IN, **secrets_from)
        assert own.status_code == 201, (namespace, own.text)
        assert STATUS not in own.json()["metadata"]["annotations"]
    # Already injected (a copied manifest): not sent again, and the policy admits it.
    again = chart_cluster.create_pod("team-a", OPT_IN, **secrets_from, **{STATUS: "injected"})
    assert again.status_code == 201, again.text
    assert len(kube_api.admission_calls) == calls
    # The injector unreachable: opted-in pods are refused, the others are not.
    del kube_api.service_endpoints[("kamus", NAME)]
    down = chart_cluster.create_pod("team-a", OPT_IN, **secrets_from)
    assert down.status_code == 500
    assert 'failed calling webhook "inject.kamus.soluto.com"' in down.json()["message"]
    assert chart_cluster.create_pod("team-a", {"app": "web"}).status_code == 201
    # The webhook bypassed (its configuration deleted): the policy still refuses them.
    group = "/apis/admissionregistration.k8s.io/v1"
    deleted = chart_cluster.admin.delete(f"{group}/mutatingwebhookconfigurations/{NAME}")
    assert deleted.status_code == 200, deleted.text
    bypassed = chart_cluster.create_pod("team-a", OPT_IN, **secrets_from)
    assert bypassed.status_code == 403, bypassed.text
    assert POLICY_MESSAGE in bypassed.json()["message"]
    assert chart_cluster.create_pod("team-a", {"app": "web"}).status_code == 201
