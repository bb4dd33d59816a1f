"""The injector end to end: what it injects runs, and it serves TLS the apiserver trusts.

* The ``kamus-init`` container of a patched pod is run as a real process, with exactly the
  patch's command, arguments and environment, its volumes laid out as the kubelet mounts them
  under a scratch root, against a real encryptor and decryptor trusting the Kubernetes double.
"""

import json
import os
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import trustme
import yaml

from injector.app import decryptor_ca
from injector.pods import decide
from kamus.server.settings import Settings
from tests.k8s_double import KubeApiDouble
from tests.k8s_double.resources import json_patch
from tests.support.chart import KUBERNETES_VERSIONS
from tests.support.mounts import configmap_mount
from tests.support.processes import Deployment, deploy, kamus_serve
from tests.support.settings import new_key

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "injector"
AUDIENCE = "kamus-decryptor"


@pytest.fixture
def deployment(kube_api: KubeApiDouble, tmp_path: Path) -> Any:
    key_file = tmp_path / "aes-key"
    key_file.write_text(new_key())
    env = {"KeyManagement__AES__KeyFile": str(key_file), "Decryptor__Audiences": AUDIENCE}
    with deploy(kube_api, tmp_path, env) as running:
        yield running


def injector_settings(decryptor_url: str) -> Settings:
    return Settings.model_validate(
        {
            "Injector": {
                "Image": "ghcr.io/kamus-py/kamus-decryptor:0.1.0",
                "DecryptorUrl": decryptor_url,
            },
            "Decryptor": {"Audiences": [AUDIENCE]},
        }
    )


def patched_pod(case: str, settings: Settings, **annotations: str) -> dict[str, Any]:
    pod: dict[str, Any] = yaml.safe_load((GOLDEN / case / "pod.yaml").read_text())
    pod["metadata"]["annotations"].update(annotations)
    decision = decide(pod, pod["metadata"]["namespace"], settings)
    assert decision.patch is not None, decision.reason
    patched: dict[str, Any] = json_patch(pod, decision.patch)
    return patched


def run_init_container(
    pod: dict[str, Any], root: Path, config_maps: dict[str, dict[str, str]], token: str
) -> subprocess.CompletedProcess[str]:
    """The pod's kamus-init as the kubelet would start it, under ``root`` instead of ``/``."""
    [init] = [c for c in pod["spec"]["initContainers"] if c["name"] == "kamus-init"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}

    def rooted(path: str) -> str:
        return str(root / path.lstrip("/"))

    for mount in init["volumeMounts"]:
        volume, where = volumes[mount["name"]], Path(rooted(mount["mountPath"]))
        if "emptyDir" in volume:
            where.mkdir(parents=True)
        elif "projected" in volume:
            [source] = volume["projected"]["sources"]
            where.mkdir(parents=True)
            (where / source["serviceAccountToken"]["path"]).write_text(token)
        else:
            data = config_maps[volume["configMap"]["name"]]
            items = volume["configMap"].get("items")
            if items:
                data = {item["path"]: data[item["key"]] for item in items}
            configmap_mount(where, data)
    assert init["command"] == ["kamus"]
    args = list(init["args"])
    for index, arg in enumerate(args):
        if arg.startswith("/"):
            args[index] = ",".join(rooted(p) for p in arg.split(","))
    env = {e["name"]: e["value"] for e in init["env"]}
    env["TOKEN_FILE_PATH"] = rooted(env["TOKEN_FILE_PATH"])
    return subprocess.run(
        [sys.executable, "-m", "kamus", *args],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def app_view(pod: dict[str, Any], root: Path, container: str) -> Path:
    """The folder the app container reads the secrets from, and it is mounted read-only."""
    [app] = [c for c in pod["spec"]["containers"] if c["name"] == container]
    [mount] = [m for m in app["volumeMounts"] if m["name"] == "kamus-secrets"]
    assert mount["readOnly"] is True
    return root / str(mount["mountPath"]).lstrip("/")


def test_the_injected_init_container_writes_the_json_the_app_reads(
    deployment: Deployment, kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    settings = injector_settings(deployment.decryptor.url)
    pod = patched_pod("existing", settings)  # two ConfigMaps, json, config.json, only "api"
    values = {"db-password": "s3cr3t-db", "api-key": '{"id": 7, "key": "k-123"}'}
    sealed = {name: deployment.encrypt(v, "team-a", "api").text for name, v in values.items()}
    config_maps = {
        "api-secrets": {"db-password": sealed["db-password"]},
        "shared-secrets": {"api-key": sealed["api-key"]},
    }
    token = kube_api.issue_token("team-a", "api", audiences=[AUDIENCE], expires_in=600)
    root = tmp_path / "pod"
    result = run_init_container(pod, root, config_maps, token)
    assert result.returncode == 0, result.stderr
    written = app_view(pod, root, "api") / "config.json"
    assert json.loads(written.read_text()) == {
        "db-password": "s3cr3t-db",
        "api-key": {"id": 7, "key": "k-123"},
    }
    assert stat.S_IMODE(written.stat().st_mode) == 0o444
    for secret in (*values.values(), token):
        assert secret not in result.stdout + result.stderr


def test_files_env_and_custom_formats_as_injected(
    deployment: Deployment, kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    settings = injector_settings(deployment.decryptor.url)
    token = kube_api.issue_token("team-a", "web", audiences=[AUDIENCE], expires_in=600)
    sealed = deployment.encrypt("it's a secret", "team-a", "web").text
    maps = {"web-secrets": {"password": sealed}}

    files = patched_pod("minimal", settings)
    assert run_init_container(files, tmp_path / "files", maps, token).returncode == 0
    assert (app_view(files, tmp_path / "files", "web") / "password").read_text() == "it's a secret"

    env = patched_pod("minimal", settings, **{"kamus.soluto.com/output-format": "env"})
    assert run_init_container(env, tmp_path / "env", maps, token).returncode == 0
    dotenv = app_view(env, tmp_path / "env", "web") / ".env"
    shell = subprocess.run(
        ["/bin/sh", "-c", f'. {dotenv} && printf %s "$PASSWORD"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout == "it's a secret"

    custom = patched_pod(
        "minimal",
        settings,
        **{
            "kamus.soluto.com/output-format": "custom",
            "kamus.soluto.com/output-file": "app.yaml",
            "kamus.soluto.com/template-configmap": "web-template",
        },
    )
    maps["web-template"] = {
        "template.j2": "password: {{ secrets['password'] | tojson }}\n",
        "unrelated": "not a ciphertext, and not mounted",
    }
    result = run_init_container(custom, tmp_path / "custom", maps, token)
    assert result.returncode == 0, result.stderr
    rendered = (app_view(custom, tmp_path / "custom", "web") / "app.yaml").read_text()
    assert yaml.safe_load(rendered) == {"password": "it's a secret"}


def test_a_token_without_the_decryptors_audience_is_refused(
    deployment: Deployment, kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    """Why the injector projects an audience-bound token rather than mounting the pod's own."""
    settings = injector_settings(deployment.decryptor.url)
    pod = patched_pod("minimal", settings)
    maps = {"web-secrets": {"password": deployment.encrypt("x", "team-a", "web").text}}
    plain = kube_api.issue_token("team-a", "web")  # the apiserver's audience
    result = run_init_container(pod, tmp_path / "pod", maps, plain)
    assert result.returncode != 0
    assert "401" in result.stderr
    assert not (app_view(pod, tmp_path / "pod", "web") / "password").exists()


EXAMPLE = Path(__file__).resolve().parents[2] / "example" / "injected" / "deployment.yaml"


def example_pod() -> dict[str, Any]:
    """The example Deployment's pod as its ReplicaSet creates it."""
    deployment: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    template = deployment["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", **template}
    pod["metadata"] = {
        **template["metadata"],
        "generateName": "kamus-example-injected-5d8f9-",
        "namespace": deployment["metadata"]["namespace"],
    }
    return pod


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_example_deployment_and_its_injected_pod_validate(version: str) -> None:
    kubernetes_validate.validate(yaml.safe_load(EXAMPLE.read_text()), version, strict=True)
    settings = injector_settings("http://kamus-decryptor.kamus.svc:80")
    decision = decide(example_pod(), "kamus-example", settings)
    assert decision.patch is not None, decision.reason
    kubernetes_validate.validate(json_patch(example_pod(), decision.patch), version, strict=True)


def test_the_example_deployment_gets_its_config_json_through_the_injector(
    deployment: Deployment, kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    settings = injector_settings(deployment.decryptor.url)
    pod = example_pod()
    decision = decide(pod, "kamus-example", settings)
    assert decision.patch is not None, decision.reason
    patched = json_patch(pod, decision.patch)
    values = {"db-password": "example-db-password", "db-username": "app"}
    sealed = {
        name: deployment.encrypt(value, "kamus-example", "kamus-example-sa").text
        for name, value in values.items()
    }
    token = kube_api.issue_token(
        "kamus-example", "kamus-example-sa", audiences=[AUDIENCE], expires_in=600
    )
    root = tmp_path / "pod"
    result = run_init_container(patched, root, {"kamus-example-encrypted": sealed}, token)
    assert result.returncode == 0, result.stderr
    folder = app_view(patched, root, "app")
    assert json.loads((folder / "config.json").read_text()) == values
    # What the app container runs, on what kamus-init wrote (paths under the scratch root).
    [app] = patched["spec"]["containers"]
    script = app["args"][0].replace("/secrets/", f"{folder}/")
    script = script[: script.index('echo "ready"') + len('echo "ready"')]  # not its idle loop
    ran = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0, ran.stderr
    assert "  db-password\n  db-username\nready\n" in ran.stdout
    assert "example-db-password" not in ran.stdout


def test_an_https_decryptor_is_trusted_through_the_ca_the_injector_passes(
    kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    """With the chart's tls.enabled the decryptor serves https: kamus-init gets the CA as
    $KAMUS_CA_CERT, read once by the injector from Injector__DecryptorCaFile."""
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(tmp_path / "tls.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.crt")
    key_file = tmp_path / "aes-key"
    key_file.write_text(new_key())
    env = {
        "KeyManagement__AES__KeyFile": str(key_file),
        "Decryptor__Audiences": AUDIENCE,
        "Server__TlsCertFile": str(tmp_path / "tls.pem"),
        "Server__TlsKeyFile": str(tmp_path / "tls.pem"),
        "KUBECONFIG": str(kube_api.write_kubeconfig(tmp_path / "kubeconfig")),
    }
    trusting = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    with (
        kamus_serve("decryptor", env, tmp_path / "decryptor.log", verify=trusting) as decryptor,
        kamus_serve(
            "encryptor", {"KeyManagement__AES__KeyFile": str(key_file)}, tmp_path / "e.log"
        ) as encryptor,
    ):
        assert decryptor.url.startswith("https://")
        settings = Settings.model_validate(
            {
                "Injector": {
                    "Image": "ghcr.io/kamus-py/kamus-decryptor:0.1.0",
                    "DecryptorUrl": decryptor.url,
                    "DecryptorCaFile": str(tmp_path / "ca.crt"),
                },
                "Decryptor": {"Audiences": [AUDIENCE]},
            }
        )
        pod: dict[str, Any] = yaml.safe_load((GOLDEN / "minimal" / "pod.yaml").read_text())
        decision = decide(pod, "team-a", settings, decryptor_ca(settings))
        assert decision.patch is not None, decision.reason
        patched = json_patch(pod, decision.patch)
        body = {"data": "over https", "service-account": "web", "namespace": "team-a"}
        sealed = httpx.post(f"{encryptor.url}/api/v1/encrypt", json=body, timeout=30).text
        token = kube_api.issue_token("team-a", "web", audiences=[AUDIENCE], expires_in=600)
        maps = {"web-secrets": {"password": sealed}}
        result = run_init_container(patched, tmp_path / "pod", maps, token)
        assert result.returncode == 0, result.stderr
        assert (app_view(patched, tmp_path / "pod", "web") / "password").read_text() == "over https"
        # Without the CA, the same init container refuses the decryptor's certificate.
        init = next(c for c in patched["spec"]["initContainers"] if c["name"] == "kamus-init")
        init["env"] = [e for e in init["env"] if e["name"] != "KAMUS_CA_CERT"]
        init["args"] += ["--timeout", "1"]  # it retries meanwhile: a certificate may be renewed
        refused = run_init_container(patched, tmp_path / "untrusting", maps, token)
        assert refused.returncode != 0
        assert "certificate" in refused.stderr
