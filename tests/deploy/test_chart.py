"""The Helm chart, rendered with the real helm binary and checked as a platform team would:
lint, Kubernetes schema validation across versions, a misconfiguration scan, and the security
properties that the Kamus chart lacked."""

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from controller.app import NEEDED
from crypto import KAMUS_PUBLIC_DEFAULT_KEY
from kamus import __version__
from tests.k8s_double import KubeApiDouble
from tests.support.chart import (
    BIN,
    CHART,
    HELM,
    HELM4,
    KUBERNETES_VERSIONS,
    Manifest,
    key_job_command,
    named,
    notes,
    of_kind,
    render,
    render_raw,
    trivy_scan,
)
from tests.support.processes import deploy
from tests.support.settings import new_key

ROOT = Path(__file__).resolve().parents[2]

# Values sets covering each provider and option (the matrix of the issue).
MATRIX: dict[str, dict[str, Any]] = {
    "defaults": {},
    "aes-given-key": {"keyManagement": {"AES": {"key": new_key(), "previousKeys": new_key()}}},
    "azure-service-principal": {
        "keyManagement": {
            "provider": "AzureKeyVault",
            "azureKeyVault": {
                "keyVaultName": "team-vault",
                "tenantId": "tenant",
                "clientId": "client",
                "clientSecret": "azure-client-secret-value",
            },
        }
    },
    "azure-workload-identity": {
        "keyManagement": {"provider": "AzureKeyVault", "azureKeyVault": {"keyVaultName": "v"}},
        "serviceAccount": {"annotations": {"azure.workload.identity/client-id": "id"}},
        "pod": {"labels": {"azure.workload.identity/use": "true"}},
    },
    "google-key-file": {
        "keyManagement": {
            "provider": "GoogleKms",
            "googleKms": {"projectId": "p", "credentials": '{"type": "service_account"}'},
        }
    },
    "google-workload-identity": {
        "keyManagement": {"provider": "GoogleKms", "googleKms": {"projectId": "p"}},
        "serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": "k@p.iam"}},
    },
    "aws-static-keys": {
        "keyManagement": {
            "provider": "AwsKms",
            "awsKms": {"region": "eu-west-1", "key": "AKIAEXAMPLE", "secret": "aws-secret-value"},
        }
    },
    "aws-irsa": {
        "keyManagement": {"provider": "AwsKms", "awsKms": {"region": "eu-west-1"}},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/k"}},
    },
    "existing-secret": {"keyManagement": {"secretName": "my-kamus-keys"}},
    "aws-existing-secret": {
        "keyManagement": {
            "provider": "AwsKms",
            "awsKms": {"region": "eu-west-1"},
            "secretName": "my-kamus-keys",
        }
    },
    "tls-from-secret": {"tls": {"enabled": True}},
    "tls-cert-manager": {
        "tls": {"enabled": True, "certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}
    },
    "ingress": {
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "annotations": {"nginx.ingress.kubernetes.io/limit-rps": "10"},
            "hosts": [{"host": "kamus.example.com"}],
            "tls": [{"secretName": "kamus-ingress", "hosts": ["kamus.example.com"]}],
        }
    },
    "hpa": {"autoscale": {"enabled": True, "minReplicas": 3}},
    "encryptor-authentication": {
        "encryptor": {"authentication": "kubernetes", "audiences": ["kamus-encryptor"]}
    },
    "network-policy-off": {"networkPolicy": {"enabled": False}},
    "single-replica-no-controller": {"replicaCount": 1, "controller": {"enabled": False}},
    "ha-controller-monitoring": {
        "controller": {"replicaCount": 2},
        "metrics": {"serviceMonitor": {"enabled": True}},
        "decryptor": {"audiences": ["kamus-decryptor"]},
    },
}


def pod_specs(manifests: Iterable[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for m in manifests:
        if m["kind"] in ("Deployment", "Job"):
            yield m["metadata"]["name"], m["spec"]["template"]["spec"]
        elif m["kind"] == "Pod":
            yield m["metadata"]["name"], m["spec"]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Manifest]]:
    return {name: render(values, crds=True) for name, values in MATRIX.items()}


@pytest.mark.parametrize("helm", [HELM, HELM4], ids=["helm3", "helm4"])
def test_helm_lint_strict_passes(helm: Path) -> None:
    lint = [str(helm), "lint", "--strict", str(CHART)]
    result = subprocess.run(lint, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_helm_4_renders_every_values_set_as_helm_3_does(
    rendered: dict[str, list[Manifest]],
) -> None:
    for case, values in MATRIX.items():
        assert render(values, crds=True, helm=HELM4) == rendered[case], case


@pytest.mark.parametrize("case", list(MATRIX))
def test_every_values_set_renders_valid_kubernetes_objects(
    rendered: dict[str, list[Manifest]], case: str
) -> None:
    manifests = rendered[case]
    validated = 0
    for manifest in manifests:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                # Kinds of other operators (cert-manager, Prometheus): checked below instead.
                assert manifest["kind"] in ("Certificate", "ServiceMonitor"), manifest["kind"]
                continue
            except kubernetes_validate.ValidationError as error:
                pytest.fail(
                    f"{manifest['kind']}/{manifest['metadata']['name']} ({version}): {error}"
                )
            validated += 1
    assert validated >= 2 * 10  # the workloads, Services, RBAC, config and the CRD, twice


def test_the_kinds_rendered_by_default(rendered: dict[str, list[Manifest]]) -> None:
    kinds = sorted({m["kind"] for m in rendered["defaults"]})
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "CustomResourceDefinition",
        "Deployment",
        "Job",  # makes the AES key in the cluster: no Secret of it is rendered
        "NetworkPolicy",
        "Pod",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    crd = named(rendered["defaults"], "CustomResourceDefinition", "kamussecrets.soluto.com")
    [version] = crd["spec"]["versions"]
    assert version["schema"]["openAPIV3Schema"]["required"] == ["serviceAccount"]


def test_no_public_or_plain_text_key_material_anywhere(rendered: dict[str, list[Manifest]]) -> None:
    secrets = ["azure-client-secret-value", "aws-secret-value", '"type": "service_account"']
    for case, manifests in rendered.items():
        text = json.dumps(manifests)
        assert KAMUS_PUBLIC_DEFAULT_KEY not in text, case
        assert base64.b64encode(KAMUS_PUBLIC_DEFAULT_KEY.encode()).decode() not in text, case
        for manifest in manifests:
            if manifest["kind"] == "Secret":
                continue  # the one place they belong, base64 as the API stores them
            body = json.dumps(manifest)
            for secret in secrets:
                assert secret not in body, f"{case}: {manifest['kind']} holds a credential"
            assert 'KeyManagement__AES__Key"' not in body  # only ...KeyFile, never the key
        for name, spec in pod_specs(manifests):
            for container in spec["containers"]:
                for env in container.get("env", []):
                    assert "secretKeyRef" not in json.dumps(env), f"{case}/{name}: secret in env"


def test_the_chart_refuses_kamus_published_key_and_bad_keys() -> None:
    public = render_raw({"keyManagement": {"AES": {"key": KAMUS_PUBLIC_DEFAULT_KEY}}})
    assert public.returncode == 1
    assert "published default key" in public.stderr
    short = render_raw({"keyManagement": {"AES": {"key": base64.b64encode(b"x" * 31).decode()}}})
    assert short.returncode == 1
    no_key = render_raw({"keyManagement": {"AES": {"generate": False}}})
    assert no_key.returncode == 1
    assert "head -c 32 /dev/urandom | base64" in no_key.stderr


# A base64 run long enough to hold a 32-byte key (44 characters), or a Secret's base64 of that.
BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")


def key_material(text: str) -> list[str]:
    """The base64 runs in ``text`` that decode to 32 bytes, or to the base64 text of 32 bytes
    (how a Secret's data holds a key file): what a generated AES key looks like in a manifest."""

    def key_sized(run: str | bytes) -> bool:
        try:
            raw = base64.b64decode(run, validate=True)
        except ValueError:
            return False
        return len(raw) == 32 or (raw.isascii() and len(raw) > 40 and key_sized(raw.strip()))

    return [run[:6] + "…" for run in BASE64_RUN.findall(text) if key_sized(run)]


def test_key_material_finds_a_key_as_the_old_chart_rendered_it() -> None:
    """The check below must be able to fail: it finds a key and a Secret's encoding of one."""
    key = new_key()
    assert len(key_material(f"key: {key}\naes-key: {base64.b64encode(key.encode()).decode()}")) == 2
    assert key_material(f"checksum/keys: {'ab12' * 16}\nname: kamus-decryptor-auth-delegator") == []


@pytest.mark.parametrize("helm", [HELM, HELM4], ids=["helm3", "helm4"])
def test_default_renders_are_identical_and_hold_no_key(helm: Path) -> None:
    """Issue 15, item 4: under GitOps (``helm template``, no ``lookup``) each render made a new
    AES key, which every sync then put in place of the last, and which sat in the GitOps tool's
    manifest cache and CI logs."""
    renders = [render_raw(crds=True, helm=helm) for _ in range(3)]
    assert [r.returncode for r in renders] == [0, 0, 0], renders[0].stderr
    assert renders[0].stdout == renders[1].stdout == renders[2].stdout
    assert key_material(renders[0].stdout) == []
    manifests = [doc for doc in yaml.safe_load_all(renders[0].stdout) if doc]
    assert not of_kind(manifests, "Secret")  # the key's Secret is made in the cluster


def test_the_key_is_made_in_the_cluster_by_a_hook_job_with_narrow_rbac(
    rendered: dict[str, list[Manifest]],
) -> None:
    manifests = rendered["defaults"]
    hooks = {
        (m["kind"], m["metadata"]["name"]): m["metadata"]["annotations"]
        for m in manifests
        if m["metadata"].get("annotations", {}).get("helm.sh/hook", "test") != "test"
    }
    assert set(hooks) == {
        ("ServiceAccount", "kamus-key-secret"),
        ("Role", "kamus-key-secret"),
        ("RoleBinding", "kamus-key-secret"),
        ("Job", "kamus-key-secret"),
    }
    for annotations in hooks.values():
        # Argo CD runs these as PreSync hooks; Flux runs them as Helm does.
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
        policies = annotations["helm.sh/hook-delete-policy"].split(",")
        assert sorted(policies) == ["before-hook-creation", "hook-succeeded"]
    job_weight = int(hooks["Job", "kamus-key-secret"]["helm.sh/hook-weight"])
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        assert int(hooks[kind, "kamus-key-secret"]["helm.sh/hook-weight"]) < job_weight, kind
    # RBAC: create Secrets (RBAC cannot name what is created), read only the key's Secret.
    assert named(manifests, "Role", "kamus-key-secret")["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["kamus-keys"],
            "verbs": ["get"],
        },
    ]
    binding = named(manifests, "RoleBinding", "kamus-key-secret")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "kamus-key-secret",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kamus-key-secret", "namespace": "kamus"}
    ]
    job = named(manifests, "Job", "kamus-key-secret")
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "kamus-key-secret"
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["image"] == f"ghcr.io/kamus-py/kamus-decryptor:{__version__}"
    assert container["command"] == key_job_command(manifests)
    # The workloads that decrypt mount the Secret the Job makes, by name; the encryptor does not.
    for name in ("kamus-decryptor", "kamus-controller"):
        spec = named(manifests, "Deployment", name)["spec"]["template"]["spec"]
        [keys] = [v for v in spec["volumes"] if v["name"] == "keys"]
        assert [s["secret"]["name"] for s in keys["projected"]["sources"]] == ["kamus-keys"]
    encryptor = named(manifests, "Deployment", "kamus-encryptor")["spec"]["template"]["spec"]
    assert "keys" not in {v["name"] for v in encryptor["volumes"]}
    for case in ("aes-given-key", "existing-secret"):
        assert not of_kind(rendered[case], "Job"), f"{case}: no key to generate"


def test_keys_given_in_the_values_have_their_own_secret() -> None:
    """A key you give is rendered (it is your input), never under the generated key's name, so
    that no rendered Secret can overwrite the key the Job made."""
    key, old = new_key(), new_key()
    given = render({"keyManagement": {"AES": {"key": key}}})
    secret = named(given, "Secret", "kamus-keys-from-values")
    assert base64.b64decode(secret["data"]["aes-key"]).decode() == key
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not of_kind(given, "Job")
    # Old keys with a generated active key: both Secrets, in one volume.
    rotated = render({"keyManagement": {"AES": {"previousKeys": old}}})
    secret = named(rotated, "Secret", "kamus-keys-from-values")
    assert secret["data"] == {"aes-previous-keys": base64.b64encode(old.encode()).decode()}
    spec = named(rotated, "Deployment", "kamus-decryptor")["spec"]["template"]["spec"]
    [keys] = [v for v in spec["volumes"] if v["name"] == "keys"]
    assert keys["projected"]["sources"] == [
        {"secret": {"name": "kamus-keys", "items": [{"key": "aes-key", "path": "aes-key"}]}},
        {
            "secret": {
                "name": "kamus-keys-from-values",
                "items": [{"key": "aes-previous-keys", "path": "aes-previous-keys"}],
            }
        },
    ]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["KeyManagement__AES__PreviousKeysFile"] == "/var/run/secrets/kamus/aes-previous-keys"


def legacy_settings(values: dict[str, Any]) -> dict[str, str]:
    config: dict[str, str] = named(render(values), "ConfigMap", "kamus-config")["data"]
    return {k: v for k, v in config.items() if "Legacy" in k or "PublicDefaultKey" in k}


def test_kamus_values_are_read_only_when_migrating_from_kamus() -> None:
    """Issue 15, item 7: the services read Kamus's unauthenticated values by default, so a
    team-a AES value put into a team-b KamusSecret became a team-b Secret, even on a fresh
    install. The chart turns legacy reading off unless migration.fromKamus says otherwise."""
    aws = {"provider": "AwsKms", "awsKms": {"region": "eu-west-1"}}
    assert legacy_settings({}) == {
        "KeyManagement__AES__AllowLegacyCiphertexts": "false",
        "KeyManagement__AES__AllowPublicDefaultKey": "false",
    }
    assert legacy_settings({"keyManagement": aws}) == {
        "KeyManagement__AllowLegacyCiphertexts": "false"
    }
    migrating = {"migration": {"fromKamus": True}}
    assert legacy_settings(migrating) == {
        "KeyManagement__AES__AllowLegacyCiphertexts": "true",
        "KeyManagement__AES__AllowPublicDefaultKey": "true",
    }
    assert legacy_settings({**migrating, "keyManagement": aws}) == {
        "KeyManagement__AllowLegacyCiphertexts": "true"
    }


def test_kamus_published_key_is_only_an_old_key_and_only_when_migrating() -> None:
    previous = {
        "keyManagement": {"AES": {"previousKeys": f"{new_key()},{KAMUS_PUBLIC_DEFAULT_KEY}"}}
    }
    refused = render_raw(previous)
    assert refused.returncode == 1
    assert "published default key" in refused.stderr
    assert "set migration.fromKamus=true" in refused.stderr
    migrating = render({**previous, "migration": {"fromKamus": True}})
    secret = named(migrating, "Secret", "kamus-keys-from-values")
    assert (
        KAMUS_PUBLIC_DEFAULT_KEY in base64.b64decode(secret["data"]["aes-previous-keys"]).decode()
    )
    # Never the key new values are made with, migrating or not.
    active = {"keyManagement": {"AES": {"key": KAMUS_PUBLIC_DEFAULT_KEY}}}
    for values in (active, {**active, "migration": {"fromKamus": True}}):
        result = render_raw(values)
        assert result.returncode == 1
        assert "keyManagement.AES.previousKeys" in result.stderr


def test_notes_warn_about_kamus_values_on_upgrade_and_when_migrating(tmp_path: Path) -> None:
    installed = notes({}, tmp_path)
    assert "UPGRADE NOTE" not in installed
    assert "WARNING" not in installed
    upgraded = notes({}, tmp_path, upgrade=True)
    assert "!!! UPGRADE NOTE: VALUES WRITTEN BY KAMUS NO LONGER DECRYPT !!!" in upgraded
    assert "--reuse-values --set migration.fromKamus=true" in upgraded
    migrating = notes({"migration": {"fromKamus": True}}, tmp_path, upgrade=True)
    assert "WARNING: migration.fromKamus=true" in migrating
    assert "re-encrypt" in migrating.lower()
    assert "UPGRADE NOTE" not in migrating
    # The generated key: where it is and how to back it up, never the key.
    assert "kubectl -n kamus get secret kamus-keys -o yaml > kamus-key-backup.yaml" in installed
    assert "lost" in installed


def test_the_encryptor_wants_tokens_made_for_it_by_default(tmp_path: Path) -> None:
    """Issue 15, item 6: with authentication on, the encryptor accepted any token for the
    apiserver, so any pod's token, or a user's kubeconfig token, could be sent (and replayed)."""
    authenticated = {"encryptor": {"authentication": "kubernetes"}}
    pod = named(render(authenticated), "Deployment", "kamus-encryptor")["spec"]["template"]
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["Encryptor__Audiences"] == "kamus-encryptor"
    text = notes(authenticated, tmp_path)
    assert "kubectl create token <service account> --audience kamus-encryptor" in text
    # Through the notes' own port-forward, without TLS, the CLI refuses the token without it.
    assert "kamus encrypt --token-file token --allow-token-over-http ..." in text
    with_tls = {
        **authenticated,
        "tls": {"enabled": True},
        "keyManagement": {"AES": {"key": new_key()}},
    }
    assert "--allow-token-over-http" not in notes(with_tls, tmp_path)
    # Opting out: the apiserver's audience (kubeconfig tokens).
    opted_out = {"encryptor": {"authentication": "kubernetes", "audiences": []}}
    pod = named(render(opted_out), "Deployment", "kamus-encryptor")["spec"]["template"]
    assert "Encryptor__Audiences" not in {e["name"] for e in pod["spec"]["containers"][0]["env"]}


def test_the_decryptor_is_never_exposed(rendered: dict[str, list[Manifest]]) -> None:
    exposed = render({"service": {"type": "LoadBalancer"}, **MATRIX["ingress"]})
    assert named(exposed, "Service", "kamus-encryptor")["spec"]["type"] == "LoadBalancer"
    assert named(exposed, "Service", "kamus-decryptor")["spec"]["type"] == "ClusterIP"
    for manifests in [*rendered.values(), exposed]:
        for ingress in of_kind(manifests, "Ingress"):
            backends = {
                path["backend"]["service"]["name"]
                for rule in ingress["spec"]["rules"]
                for path in rule["http"]["paths"]
            }
            assert backends == {"kamus-encryptor"}


def test_the_network_policy_admits_only_labelled_clients_and_the_controller(
    rendered: dict[str, list[Manifest]],
) -> None:
    policy = named(rendered["defaults"], "NetworkPolicy", "kamus-decryptor")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "decryptor"
    )
    [rule] = policy["spec"]["ingress"]
    clients, controller = rule["from"]
    assert clients["podSelector"]["matchLabels"] == {"kamus.soluto.com/client": "true"}
    assert controller["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "controller"
    assert not of_kind(rendered["network-policy-off"], "NetworkPolicy")
    # The helm test pod is a client, so it must carry the label.
    [test_pod] = of_kind(rendered["defaults"], "Pod")
    assert test_pod["metadata"]["labels"]["kamus.soluto.com/client"] == "true"


def test_every_pod_is_hardened(rendered: dict[str, list[Manifest]]) -> None:
    for case, manifests in rendered.items():
        for name, spec in pod_specs(manifests):
            where = f"{case}/{name}"
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True, where
            assert pod["runAsUser"] != 0, where
            assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for container in spec["containers"]:
                sc = container["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["readOnlyRootFilesystem"] is True, where
                assert sc["capabilities"] == {"drop": ["ALL"]}, where
                assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
                assert container["resources"]["limits"]["memory"], where
                assert container["resources"]["requests"]["cpu"], where


def test_service_accounts_and_tokens(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["defaults"]
    encryptor_sa = named(manifests, "ServiceAccount", "kamus-encryptor")
    assert encryptor_sa["automountServiceAccountToken"] is False
    encryptor = named(manifests, "Deployment", "kamus-encryptor")["spec"]["template"]["spec"]
    assert encryptor["automountServiceAccountToken"] is False
    decryptor = named(manifests, "Deployment", "kamus-decryptor")["spec"]["template"]["spec"]
    assert decryptor["serviceAccountName"] == "kamus-decryptor"
    annotated = rendered["aws-irsa"]
    for component in ("encryptor", "decryptor", "controller"):
        sa = named(annotated, "ServiceAccount", f"kamus-{component}")
        assert sa["metadata"]["annotations"] == {
            "eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/k"
        }


def test_the_decryptor_may_review_tokens(rendered: dict[str, list[Manifest]]) -> None:
    binding = named(rendered["defaults"], "ClusterRoleBinding", "kamus-decryptor-auth-delegator")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "system:auth-delegator",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kamus-decryptor", "namespace": "kamus"}
    ]


def test_encryptor_authentication_gets_a_token_and_auth_delegator(
    rendered: dict[str, list[Manifest]],
) -> None:
    bindings = of_kind(rendered["defaults"], "ClusterRoleBinding")
    assert "kamus-encryptor-auth-delegator" not in {b["metadata"]["name"] for b in bindings}
    manifests = rendered["encryptor-authentication"]
    binding = named(manifests, "ClusterRoleBinding", "kamus-encryptor-auth-delegator")
    assert binding["roleRef"]["name"] == "system:auth-delegator"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kamus-encryptor", "namespace": "kamus"}
    ]
    assert named(manifests, "ServiceAccount", "kamus-encryptor")["automountServiceAccountToken"]
    pod = named(manifests, "Deployment", "kamus-encryptor")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["Encryptor__Authentication"] == "kubernetes"
    assert env["Encryptor__Audiences"] == "kamus-encryptor"


def test_the_rewrap_roles_are_rendered_and_bound_to_nobody(
    rendered: dict[str, list[Manifest]],
) -> None:
    """kamus rewrap asks RBAC in the namespace, and cluster-wide for --upgrade-legacy
    (decryptor/rewrap.py): the roles match those questions, and the chart binds neither."""
    manifests = rendered["defaults"]
    rewrap = named(manifests, "ClusterRole", "kamus-rewrap")
    legacy = named(manifests, "ClusterRole", "kamus-rewrap-legacy")
    assert rewrap["rules"] == [
        {"apiGroups": ["soluto.com"], "resources": ["kamussecrets"], "verbs": ["update"]}
    ]
    assert legacy["rules"] == [
        {"apiGroups": ["soluto.com"], "resources": ["kamussecrets/legacy"], "verbs": ["update"]}
    ]
    assert "rbac.authorization.k8s.io/aggregate-to-admin" not in rewrap["metadata"]["labels"]
    bound = {
        b["roleRef"]["name"]
        for b in manifests
        if b["kind"] in ("RoleBinding", "ClusterRoleBinding")
    }
    assert not bound & {"kamus-rewrap", "kamus-rewrap-legacy"}
    aggregated = render({"rbac": {"aggregateToAdmin": True}})
    labels = named(aggregated, "ClusterRole", "kamus-rewrap")["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert "aggregate-to-admin" not in str(
        named(aggregated, "ClusterRole", "kamus-rewrap-legacy")["metadata"]
    )
    without = of_kind(render({"rbac": {"rewrapRoles": False}}), "ClusterRole")
    assert [m for m in without if "rewrap" in m["metadata"]["name"]] == []


def test_the_controller_is_granted_everything_its_healthz_checks(
    rendered: dict[str, list[Manifest]],
) -> None:
    manifests = rendered["defaults"]
    cluster_rules = named(manifests, "ClusterRole", "kamus-controller")["rules"]
    lease_rules = named(manifests, "Role", "kamus-controller-leader-election")["rules"]

    def granted(rules: list[Manifest], group: str, resource: str, verb: str) -> bool:
        return any(
            group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
            for r in rules
        )

    for group, resource, verb, in_lease_namespace in NEEDED:
        rules = lease_rules if in_lease_namespace else cluster_rules
        assert granted(rules, group, resource, verb), (group, resource, verb)
    assert not granted(cluster_rules, "coordination.k8s.io", "leases", "update")  # namespaced
    deployment = named(manifests, "Deployment", "kamus-controller")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["kamus", "serve", "controller"]
    assert container["image"].endswith(f"/kamus-decryptor:{__version__}")  # no third image
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["Controller__ReconciliationIntervalInSeconds"] == "60"


def test_kms_credentials_are_mounted_files(rendered: dict[str, list[Manifest]]) -> None:
    expectations = {
        "aes-given-key": ("KeyManagement__AES__KeyFile", "aes-key"),
        "azure-service-principal": ("ActiveDirectory__ClientSecretFile", "azure-client-secret"),
        "google-key-file": ("KeyManagement__GoogleKms__CredentialsPath", "google-credentials.json"),
        "aws-static-keys": ("AWS_SHARED_CREDENTIALS_FILE", "aws-credentials"),
    }
    for case, (setting, key) in expectations.items():
        manifests = rendered[case]
        if case == "aes-given-key":
            # Only the pods that decrypt are told where the AES key is (the encryptor reads the
            # shared ConfigMap too, and holds no key).
            decryptor = named(manifests, "Deployment", "kamus-decryptor")["spec"]["template"]
            config = {e["name"]: e.get("value") for e in decryptor["spec"]["containers"][0]["env"]}
        else:
            config = named(manifests, "ConfigMap", "kamus-config")["data"]
        assert config[setting] == f"/var/run/secrets/kamus/{key}", case
        secret = named(
            manifests,
            "Secret",
            "kamus-keys-from-values" if case == "aes-given-key" else "kamus-keys",
        )
        assert key in secret["data"], case
        for name, spec in pod_specs(m for m in manifests if m["kind"] == "Deployment"):
            if case == "aes-given-key" and name == "kamus-encryptor":
                continue  # it seals to the public key bundle (below)
            [keys] = [v for v in spec["volumes"] if v["name"] == "keys"]
            assert keys["secret"]["secretName"] == secret["metadata"]["name"], case
            assert secret["metadata"]["name"] == (
                "kamus-keys-from-values" if case == "aes-given-key" else "kamus-keys"
            )
    aws_file = named(rendered["aws-static-keys"], "Secret", "kamus-keys")["data"]["aws-credentials"]
    assert base64.b64decode(aws_file).decode() == (
        "[default]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = aws-secret-value\n"
    )
    for case in ("azure-workload-identity", "google-workload-identity", "aws-irsa"):
        manifests = rendered[case]
        assert not of_kind(manifests, "Secret"), f"{case} needs no credentials Secret"
        config = named(manifests, "ConfigMap", "kamus-config")["data"]
        assert not [v for v in config.values() if "/var/run/secrets/kamus/" in v], case
    existing = rendered["existing-secret"]
    assert not of_kind(existing, "Secret")
    for name, spec in pod_specs(m for m in existing if m["kind"] == "Deployment"):
        keys = [v for v in spec["volumes"] if v["name"] == "keys"]
        if name == "kamus-encryptor":
            assert keys == []
        else:
            assert keys[0]["secret"]["secretName"] == "my-kamus-keys"


AES_CASES = [
    case
    for case, values in MATRIX.items()
    if values.get("keyManagement", {}).get("provider", "AESKey") == "AESKey"
]
KEY_SECRETS = {"kamus-keys", "kamus-keys-from-values", "my-kamus-keys"}
BUNDLE_DIR = "/var/run/kamus/public-keys"


def secrets_referenced(pod: Manifest) -> set[str]:
    """Every Secret a pod spec names: env, envFrom, and secret or projected volumes."""
    names: set[str] = set()
    for container in [*pod["containers"], *pod.get("initContainers", [])]:
        for env in container.get("env", []):
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                names.add(ref["name"])
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                names.add(source["secretRef"]["name"])
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            names.add(volume["secret"]["secretName"])
        for source in (volume.get("projected") or {}).get("sources", []):
            if "secret" in source:
                names.add(source["secret"]["name"])
    return names


def test_secrets_referenced_finds_every_way_a_pod_names_a_secret() -> None:
    """The check below must be able to fail: the old encryptor named the key Secret."""
    pod = {
        "containers": [
            {
                "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "a", "key": "k"}}}],
                "envFrom": [{"secretRef": {"name": "b"}}, {"configMapRef": {"name": "c"}}],
            }
        ],
        "volumes": [
            {"name": "v", "secret": {"secretName": "d"}},
            {"name": "p", "projected": {"sources": [{"secret": {"name": "e"}}]}},
            {"name": "m", "configMap": {"name": "f"}},
        ],
    }
    assert secrets_referenced(pod) == {"a", "b", "d", "e"}


@pytest.mark.parametrize("case", AES_CASES)
def test_in_aes_mode_the_encryptor_holds_no_key_only_the_public_bundle(
    rendered: dict[str, list[Manifest]], case: str
) -> None:
    """Issue 18, item 6: the public encryptor holds no key that decrypts. It seals to the bundle
    the decryptor publishes, mounted from the ConfigMap the chart does not render."""
    manifests = rendered[case]
    pod = named(manifests, "Deployment", "kamus-encryptor")["spec"]["template"]["spec"]
    assert not secrets_referenced(pod) & KEY_SECRETS, case
    assert secrets_referenced(pod) <= {"kamus-encryptor-tls"}, case  # its TLS, at most
    [container] = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["Encryptor__SealingKeysFile"] == f"{BUNDLE_DIR}/keys.json"
    assert not [name for name in env if name.startswith("KeyManagement__AES__")], case
    # What it reads from the shared ConfigMap names no key file either.
    [config_ref] = [s["configMapRef"]["name"] for s in container["envFrom"]]
    config = named(manifests, "ConfigMap", config_ref)["data"]
    assert not [v for v in config.values() if "/var/run/secrets/kamus" in str(v)], case
    [bundle_volume] = [v for v in pod["volumes"] if "configMap" in v]
    assert bundle_volume["configMap"] == {"name": "kamus-public-keys", "optional": True}
    [mount] = [m for m in container["volumeMounts"] if m["name"] == bundle_volume["name"]]
    assert mount == {"name": bundle_volume["name"], "mountPath": BUNDLE_DIR, "readOnly": True}
    assert "subPath" not in mount  # a subPath mount would never see a renewed bundle
    assert (
        "checksum/keys"
        not in named(manifests, "Deployment", "kamus-encryptor")["spec"]["template"]["metadata"][
            "annotations"
        ]
    )  # a key rotation reaches it through the ConfigMap
    # The chart never renders the ConfigMap the decryptor writes (GitOps would prune it).
    assert "kamus-public-keys" not in {
        m["metadata"]["name"] for m in of_kind(manifests, "ConfigMap")
    }


def test_the_decryptor_publishes_the_bundle_with_least_privilege(
    rendered: dict[str, list[Manifest]],
) -> None:
    manifests = rendered["defaults"]
    decryptor = named(manifests, "Deployment", "kamus-decryptor")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in decryptor["containers"][0]["env"]}
    assert env["Decryptor__PublicKeysConfigMap"] == "kamus-public-keys"
    assert env["Decryptor__PublicKeysIntervalSeconds"] == "60"
    assert "fieldRef" in json.dumps(decryptor["containers"][0]["env"])  # POD_NAMESPACE
    role = named(manifests, "Role", "kamus-decryptor-public-keys")
    assert "namespace" not in role["metadata"] or role["metadata"]["namespace"] == "kamus"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["kamus-public-keys"],
            "verbs": ["get", "update"],
        },
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["kamus-public-keys-publisher"],
            "verbs": ["get", "update"],
        },
    ]
    binding = named(manifests, "RoleBinding", "kamus-decryptor-public-keys")
    assert binding["roleRef"]["name"] == "kamus-decryptor-public-keys"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kamus-decryptor", "namespace": "kamus"}
    ]
    # Nothing cluster-wide on ConfigMaps or Leases for the decryptor.
    for cluster_role in of_kind(manifests, "ClusterRole"):
        for rule in cluster_role["rules"]:
            assert "configmaps" not in rule["resources"], cluster_role["metadata"]["name"]
    # Opting out: you provide the ConfigMap; the encryptor still seals with it.
    own = render({"decryptor": {"publicKeys": {"publish": False}}})
    decryptor = named(own, "Deployment", "kamus-decryptor")["spec"]["template"]["spec"]
    assert "Decryptor__PublicKeysConfigMap" not in json.dumps(decryptor)
    assert "kamus-decryptor-public-keys" not in {
        m["metadata"]["name"] for m in of_kind(own, "Role")
    }
    encryptor = named(own, "Deployment", "kamus-encryptor")["spec"]["template"]["spec"]
    assert {"name": "kamus-public-keys", "optional": True} in [
        v.get("configMap") for v in encryptor["volumes"]
    ]


KMS_CASES = [case for case in MATRIX if case not in AES_CASES]
SEED_SECRET = "kamus-sealing-seed"
SEED_DIR = "/var/run/secrets/kamus-sealing"


def hook_annotations(manifest: Manifest) -> dict[str, str]:
    return {k: v for k, v in manifest["metadata"].get("annotations", {}).items() if "helm.sh/" in k}


def test_every_kms_values_set_is_covered() -> None:
    providers = {MATRIX[case]["keyManagement"]["provider"] for case in KMS_CASES}
    assert providers == {"AwsKms", "GoogleKms", "AzureKeyVault"}


@pytest.mark.parametrize("case", KMS_CASES)
def test_in_the_kms_modes_the_key_job_makes_the_sealing_seed(
    rendered: dict[str, list[Manifest]], case: str
) -> None:
    """Issue 18, items 2 and 4: the hook Job makes the KMS-wrapped sealing seed in the cluster,
    with the KMS settings and credentials the decryptor gets, before any pod needs it."""
    manifests = rendered[case]
    values = MATRIX[case]
    job = named(manifests, "Job", "kamus-key-secret")
    assert hook_annotations(job)["helm.sh/hook"] == "pre-install,pre-upgrade"
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == key_job_command(manifests, name=SEED_SECRET)
    # Only create Secrets, and read the seed's.
    assert named(manifests, "Role", "kamus-key-secret")["rules"][1]["resourceNames"] == [
        SEED_SECRET
    ]
    # The decryptor's KMS settings, inline: a pre-install hook runs before the ConfigMap exists.
    assert "envFrom" not in container
    env = {e["name"]: e["value"] for e in container["env"]}
    config = named(manifests, "ConfigMap", "kamus-config")["data"]
    assert env == {k: v for k, v in config.items() if k != "Logging__Level"}
    assert env["KeyManagement__Provider"] == values["keyManagement"]["provider"]
    assert "KeyManagement__Sealing__WrappedSeedsFile" not in env  # it makes the seed
    # The KMS credentials: a workload identity on its ServiceAccount and pod, or a file.
    account = named(manifests, "ServiceAccount", "kamus-key-secret")
    for name, value in values.get("serviceAccount", {}).get("annotations", {}).items():
        assert account["metadata"]["annotations"][name] == value, case
    for name, value in values.get("pod", {}).get("labels", {}).items():
        assert job["spec"]["template"]["metadata"]["labels"][name] == value, case
    mounted = secrets_referenced(pod)
    given = values["keyManagement"].get("secretName")
    if given:
        assert mounted == {given}
    elif of_kind(manifests, "Secret"):  # credentials in the values: a hook copy of them
        copy = named(manifests, "Secret", "kamus-key-secret-credentials")
        assert copy["data"] == named(manifests, "Secret", "kamus-keys")["data"]
        assert hook_annotations(copy) == hook_annotations(
            named(manifests, "RoleBinding", "kamus-key-secret")
        )
        assert mounted == {"kamus-key-secret-credentials"}
    else:
        assert mounted == set(), case
        assert not [v for v in env.values() if "/var/run/secrets/kamus/" in v], case
    if mounted:
        [keys] = [m for m in container["volumeMounts"] if m["name"] == "keys"]
        assert keys["mountPath"] == "/var/run/secrets/kamus"  # where the settings point
    # The seed's Secret itself is never rendered.
    assert SEED_SECRET not in {m["metadata"]["name"] for m in of_kind(manifests, "Secret")}


@pytest.mark.parametrize("case", KMS_CASES)
def test_in_the_kms_modes_only_the_pods_that_decrypt_mount_the_seed(
    rendered: dict[str, list[Manifest]], case: str
) -> None:
    manifests = rendered[case]
    for component in ("decryptor", "controller"):
        pod = named(manifests, "Deployment", f"kamus-{component}")["spec"]["template"]["spec"]
        [container] = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["KeyManagement__Sealing__WrappedSeedsFile"] == f"{SEED_DIR}/sealing-seeds"
        [volume] = [
            v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == SEED_SECRET
        ]
        assert volume["secret"]["items"] == [{"key": "sealing-seeds", "path": "sealing-seeds"}]
        [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount == {"name": volume["name"], "mountPath": SEED_DIR, "readOnly": True}
    # The encryptor: neither the seed nor any AES key. It keeps its KMS credentials (it
    # encrypts online with each service account's KMS key) and serves the public bundle.
    pod = named(manifests, "Deployment", "kamus-encryptor")["spec"]["template"]["spec"]
    given = MATRIX[case]["keyManagement"].get("secretName")
    credentials = {given or "kamus-keys"} if of_kind(manifests, "Secret") or given else set()
    assert secrets_referenced(pod) == credentials, case
    [container] = pod["containers"]
    assert "sealing" not in json.dumps(container["env"]).replace("SealingKeysFile", "")
    assert "WrappedSeeds" not in json.dumps(pod)
    assert not [e for e in container["env"] if e["name"].startswith("KeyManagement__AES__")]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["Encryptor__SealingKeysFile"] == f"{BUNDLE_DIR}/keys.json"
    [bundle_volume] = [v for v in pod["volumes"] if "configMap" in v]
    assert bundle_volume["configMap"] == {"name": "kamus-public-keys", "optional": True}
    [mount] = [m for m in container["volumeMounts"] if m["name"] == bundle_volume["name"]]
    assert mount["mountPath"] == BUNDLE_DIR
    assert "subPath" not in mount


def test_an_operators_own_sealing_seed_secret_replaces_the_job() -> None:
    """keyManagement.sealingSeed.secretName: bring your own seed Secret; no Job, no KMS rights
    for one, and the pods that decrypt mount the named Secret."""
    values = {**MATRIX[KMS_CASES[0]]}
    values["keyManagement"] = {**values["keyManagement"], "sealingSeed": {"secretName": "my-seed"}}
    manifests = render(values)
    assert not of_kind(manifests, "Job")
    for component in ("decryptor", "controller"):
        pod = named(manifests, "Deployment", f"kamus-{component}")["spec"]["template"]["spec"]
        assert "my-seed" in secrets_referenced(pod)
    encryptor = named(manifests, "Deployment", "kamus-encryptor")["spec"]["template"]["spec"]
    assert "my-seed" not in secrets_referenced(encryptor)


@pytest.mark.parametrize("case", KMS_CASES)
def test_in_the_kms_modes_the_decryptor_publishes_the_bundle(
    rendered: dict[str, list[Manifest]], case: str
) -> None:
    manifests = rendered[case]
    decryptor = named(manifests, "Deployment", "kamus-decryptor")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in decryptor["containers"][0]["env"]}
    assert env["Decryptor__PublicKeysConfigMap"] == "kamus-public-keys"
    role = named(manifests, "Role", "kamus-decryptor-public-keys")
    assert (
        role["rules"] == named(rendered["defaults"], "Role", "kamus-decryptor-public-keys")["rules"]
    )
    assert "kamus-public-keys" not in {
        m["metadata"]["name"] for m in of_kind(manifests, "ConfigMap")
    }


def test_notes_tell_how_to_fetch_and_pin_the_bundle(tmp_path: Path) -> None:
    text = notes({}, tmp_path)
    assert (
        "kubectl get configmap kamus-public-keys -n kamus -o jsonpath='{.data.keys\\.json}' "
        "> keys.json" in text
    )
    assert "kamus keys verify keys.json" in text
    assert "kamus keys fetch -u https://" in text
    assert "pin" in text
    for command, line in (
        (["keys", "fetch"], re.search(r"kamus keys fetch (.*)", text)),
        (["encrypt"], re.search(r"kamus encrypt (--offline.*)", text)),
    ):
        assert line is not None, command
        help_text = subprocess.run(
            [str(BIN / "kamus"), *command, "--help"], capture_output=True, text=True, check=True
        ).stdout
        for option in re.findall(r"(--[a-z-]+|-[a-zA-Z]\b)", line.group(1)):
            assert option in help_text, (command, option)
    aws = notes(
        {"keyManagement": {"provider": "AwsKms", "awsKms": {"region": "eu-west-1"}}}, tmp_path
    )
    assert "kubectl get configmap kamus-public-keys" in aws
    assert "encrypts online with each service account's KMS key" in aws
    assert "holds no key" not in aws
    assert "kubectl -n kamus get secret kamus-sealing-seed -o yaml" in aws  # back it up
    assert "get secret kamus-keys" not in aws


def test_config_checksums_roll_the_pods() -> None:
    def checksums(values: dict[str, Any]) -> dict[str, str]:
        deployment = named(render(values), "Deployment", "kamus-decryptor")
        annotations: dict[str, str] = deployment["spec"]["template"]["metadata"]["annotations"]
        return annotations

    key = new_key()
    base = checksums({"keyManagement": {"AES": {"key": key}}})
    assert base == checksums({"keyManagement": {"AES": {"key": key}}})  # stable
    rotated = checksums({"keyManagement": {"AES": {"key": new_key()}}})
    assert rotated["checksum/keys"] != base["checksum/keys"]
    moved = checksums({"keyManagement": {"AES": {"key": key, "previousKeys": new_key()}}})
    assert moved["checksum/config"] != base["checksum/config"]


def test_disruption_budgets_and_autoscaling(rendered: dict[str, list[Manifest]]) -> None:
    pdbs = {m["metadata"]["name"] for m in of_kind(rendered["defaults"], "PodDisruptionBudget")}
    assert pdbs == {"kamus-encryptor", "kamus-decryptor"}  # 2 replicas; the controller has 1
    assert not of_kind(rendered["single-replica-no-controller"], "PodDisruptionBudget")
    ha = {
        m["metadata"]["name"]
        for m in of_kind(rendered["ha-controller-monitoring"], "PodDisruptionBudget")
    }
    assert "kamus-controller" in ha
    assert not of_kind(rendered["defaults"], "HorizontalPodAutoscaler")
    hpas = of_kind(rendered["hpa"], "HorizontalPodAutoscaler")
    assert {h["apiVersion"] for h in hpas} == {"autoscaling/v2"}
    assert {h["spec"]["minReplicas"] for h in hpas} == {3}
    scaled = named(rendered["hpa"], "Deployment", "kamus-encryptor")
    assert "replicas" not in scaled["spec"]  # the HPA owns it
    spread = named(rendered["defaults"], "Deployment", "kamus-decryptor")["spec"]["template"]
    [constraint] = spread["spec"]["topologySpreadConstraints"]
    assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"


def test_tls_serving_and_probes(rendered: dict[str, list[Manifest]]) -> None:
    for case in ("tls-from-secret", "tls-cert-manager"):
        manifests = rendered[case]
        for component in ("encryptor", "decryptor"):
            service = named(manifests, "Service", f"kamus-{component}")
            assert service["spec"]["ports"][0]["port"] == 443
            pod = named(manifests, "Deployment", f"kamus-{component}")["spec"]["template"]
            [container] = pod["spec"]["containers"]
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["Server__TlsCertFile"] == "/var/run/secrets/kamus-tls/tls.crt"
            assert container["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
            [tls] = [v for v in pod["spec"]["volumes"] if v["name"] == "tls"]
            assert tls["secret"]["secretName"] == f"kamus-{component}-tls"
    certificates = of_kind(rendered["tls-cert-manager"], "Certificate")
    assert {c["spec"]["secretName"] for c in certificates} == {
        "kamus-encryptor-tls",
        "kamus-decryptor-tls",
    }
    for certificate in certificates:
        assert certificate["apiVersion"] == "cert-manager.io/v1"
        assert certificate["spec"]["issuerRef"]["name"] == "ca"
        assert f"{certificate['metadata']['name']}.kamus.svc" in certificate["spec"]["dnsNames"]
    plain = named(rendered["defaults"], "Service", "kamus-decryptor")
    assert plain["spec"]["ports"][0]["port"] == 80


def test_decryptor_audiences_bind_the_test_token(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["ha-controller-monitoring"]
    decryptor = named(manifests, "Deployment", "kamus-decryptor")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in decryptor["containers"][0]["env"]}
    assert env["Decryptor__Audiences"] == "kamus-decryptor"
    [pod] = of_kind(manifests, "Pod")
    [token] = [v for v in pod["spec"]["volumes"] if v["name"] == "token"]
    [source] = token["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "kamus-decryptor"
    assert source["serviceAccountToken"]["expirationSeconds"] <= 3600
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [monitor] = of_kind(manifests, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "two"}, "replicaCount: Invalid type"),
        ({"replicaCaunt": 2}, "Additional property replicaCaunt is not allowed"),
        ({"keyManagement": {"provider": "Vault"}}, "keyManagement.provider"),
        ({"keyManagement": {"AES": {"key": "short"}}}, "keyManagement.AES.key"),
        ({"service": {"port": 70000}}, "service.port"),
        ({"autoscale": {"targetCPU": "50%"}}, "autoscale.targetCPU"),
        ({"networkPolicy": {"enabled": "yes"}}, "networkPolicy.enabled"),
        ({"keyManagement": {"azureKeyVault": {"keySize": 1024}}}, "keySize"),
    ],
)
def test_the_values_schema_rejects_bad_values(values: dict[str, Any], message: str) -> None:
    result = render_raw(values)
    assert result.returncode == 1
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"keyManagement": {"provider": "AwsKms"}}, "keyManagement.awsKms.region is required"),
        ({"keyManagement": {"provider": "GoogleKms"}}, "googleKms.projectId is required"),
        ({"ingress": {"enabled": True}}, "ingress.hosts needs at least one host"),
        (
            {"tls": {"enabled": True, "certManager": {"enabled": True}}},
            "tls.certManager.issuerRef.name is required",
        ),
    ],
)
def test_incomplete_settings_fail_with_what_to_set(values: dict[str, Any], message: str) -> None:
    result = render_raw(values)
    assert result.returncode == 1
    assert message in result.stderr, result.stderr


def test_notes_give_a_correct_walk_through(tmp_path: Path) -> None:
    text = notes({}, tmp_path)
    assert "svc/kamus-encryptor 9090:80" in text  # the Service's real port
    assert "http://kamus-decryptor.kamus.svc:80" in text
    assert "--allow-insecure-url" in text
    assert "kamus.soluto.com/client=true" in text
    assert "helm test kamus -n kamus" in text
    assert "get secret kamus-keys" in text  # back up the generated key
    tls = notes({"tls": {"enabled": True}, "keyManagement": {"AES": {"key": new_key()}}}, tmp_path)
    assert "svc/kamus-encryptor 9090:443" in tls
    assert "--cert-fingerprint" in tls
    assert "get secret kamus-keys" not in tls
    # Every flag the walk-through uses exists in the CLI.
    for flag in re.findall(r"kamus encrypt (.*?)\n\s*(.*?)\n", text)[0]:
        for option in re.findall(r"(--[a-z-]+)", flag):
            help_text = subprocess.run(
                [str(BIN / "kamus"), "encrypt", "--help"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert option in help_text, option


# Findings that are the product's purpose, each scoped to one object, with the reason.
ACCEPTED_FINDINGS = {
    # The controller writes the Secrets of KamusSecrets in every namespace; docs/kamussecret.md
    # says who may create KamusSecrets, and controller.enabled=false removes it.
    (
        "KSV-0041",
        "ClusterRole 'kamus-controller' shouldn't have access to manage resource 'secrets'",
    ),
}


def test_trivy_finds_no_high_or_critical_misconfiguration(
    rendered: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    successes = trivy_scan(rendered, tmp_path, ACCEPTED_FINDINGS)
    assert successes > 100  # it really ran its Kubernetes checks


def test_the_helm_test_script_round_trips_against_the_real_services(
    kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    """The script the `helm test` pod runs (files/smoke-test.py), against real processes."""
    key_file = tmp_path / "aes-key"
    key_file.write_text(new_key())
    token = tmp_path / "token"
    token.write_text(kube_api.issue_token("kamus", "kamus-test"))
    with deploy(kube_api, tmp_path, {"KeyManagement__AES__KeyFile": str(key_file)}) as services:
        env = {
            "PATH": os.environ["PATH"],
            "ENCRYPTOR_URL": services.encryptor.url,
            "DECRYPTOR_URL": services.decryptor.url,
            "POD_NAMESPACE": "kamus",
            "SERVICE_ACCOUNT": "kamus-test",
            "TOKEN_FILE": str(token),
        }
        script = [sys.executable, str(CHART / "files" / "smoke-test.py")]
        passed = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
        assert passed.returncode == 0, passed.stdout + passed.stderr
        assert "ok: encrypted and decrypted as kamus:kamus-test" in passed.stdout
        assert "ok: a value for kamus:kamus-test-other is refused (400)" in passed.stdout
        # A token of another service account fails the test, as it must.
        token.write_text(kube_api.issue_token("kamus", "someone-else"))
        failed = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
        assert failed.returncode == 1
        assert "FAIL decrypt as kamus:kamus-test" in failed.stdout


DR_RECIPIENT = "age:age1f44u8admxdeu7ehn0jpj6rlx4l5ncdtjrr4cd3aat5489ksvvsps42dgxd"


def test_recipient_settings_reach_the_decryptor_and_the_controller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 22: the recipient policy is in the key ConfigMap, which the decryptor and the
    controller both read (both decrypt); what rewrap may add is the decryptor's alone. The
    rendered settings are read back as the services read them."""
    from kamus.server.lifecycle import key_policy
    from kamus.server.settings import Settings

    arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    manifests = render(
        {
            "keyManagement": {
                "provider": "AwsKms",
                "awsKms": {"region": "eu-west-1"},
                "recipientKeys": [arn],
                "extraRecipients": [DR_RECIPIENT],
            },
            "decryptor": {
                "recipients": {
                    "required": ["age:*"],
                    "forbidden": ["hpke-mlkem768x25519:*"],
                    "allowed": ["age:age1dr", "anchor:ed25519:ab"],
                }
            },
        }
    )
    config = named(manifests, "ConfigMap", "kamus-config")["data"]
    for component in ("decryptor", "controller"):
        spec = named(manifests, "Deployment", f"kamus-{component}")["spec"]["template"]["spec"]
        refs = [s["configMapRef"]["name"] for s in spec["containers"][0]["envFrom"]]
        assert "kamus-config" in refs, component
    decryptor = named(manifests, "Deployment", "kamus-decryptor")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in decryptor["containers"][0]["env"]}
    for name, value in {**config, **env}.items():
        if value:
            monkeypatch.setenv(name, value)
    settings = Settings()
    policy = key_policy(settings)
    assert policy.recipients.required == ("age:*",)
    assert policy.recipients.forbidden == ("hpke-mlkem768x25519:*",)
    assert settings.decryptor.allowed_recipients == ["age:age1dr", "anchor:ed25519:ab"]
    assert settings.key_management.recipient_keys == [arn]
    assert [r.name for r in policy.extra] == [DR_RECIPIENT]  # the encryptor reads it too
    encryptor = named(manifests, "Deployment", "kamus-encryptor")["spec"]["template"]["spec"]
    assert "kamus-config" in [
        s["configMapRef"]["name"] for s in encryptor["containers"][0]["envFrom"]
    ]
    controller = named(manifests, "Deployment", "kamus-controller")["spec"]["template"]["spec"]
    assert "Decryptor__AllowedRecipients" not in str(controller)


def test_the_encrypt_page_is_on_unless_turned_off() -> None:
    def env(values: dict[str, Any]) -> dict[str, str | None]:
        spec = named(render(values), "Deployment", "kamus-encryptor")["spec"]["template"]["spec"]
        return {e["name"]: e.get("value") for e in spec["containers"][0].get("env", [])}

    assert "Encryptor__Ui" not in env({})  # the service's default: on
    assert env({"encryptor": {"ui": {"enabled": False}}})["Encryptor__Ui"] == "false"
