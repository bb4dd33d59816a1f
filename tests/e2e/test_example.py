"""``example/``: manifests that validate, a pod hardened like the chart and wired to it, and the
flow the README walks through, run for real: ``encrypt.sh`` against the encryptor, the init
container's exact command against the decryptor, the app container's script on its output, and
the KamusSecret through the controller."""

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate
import pytest
import yaml

from tests.k8s_double import KubeApiDouble
from tests.support.chart import KUBERNETES_VERSIONS, named, render
from tests.support.cluster import GROUP, PLURAL, VERSION, Cluster, controller_env, eventually
from tests.support.mounts import configmap_mount
from tests.support.processes import Deployment, deploy, kamus_serve
from tests.support.settings import new_key

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "example"
CRD = ROOT / "deploy" / "helm" / "kamus" / "crds" / "kamussecret.yaml"
SH = shutil.which("sh") or "/bin/sh"
CLIENT_LABEL = ("kamus.soluto.com/client", "true")
Manifest = dict[str, Any]


# -- reading the example ---------------------------------------------------------------------


def load(folder: Path = EXAMPLE) -> list[Manifest]:
    """Every object of the folder's YAML files, as ``kubectl apply -f folder/`` reads them."""
    return [
        doc
        for path in sorted(folder.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def one(manifests: list[Manifest], kind: str) -> Manifest:
    [found] = [m for m in manifests if m["kind"] == kind]
    return found


def pod_spec(manifests: list[Manifest]) -> Manifest:
    spec: Manifest = one(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def init_container(manifests: list[Manifest]) -> Manifest:
    containers: list[Manifest] = pod_spec(manifests)["initContainers"]
    [container] = containers
    return container


def app_container(manifests: list[Manifest]) -> Manifest:
    containers: list[Manifest] = pod_spec(manifests)["containers"]
    [container] = containers
    return container


def identity(manifests: list[Manifest]) -> tuple[str, str]:
    """The namespace and service account the example's values are encrypted for."""
    account = one(manifests, "ServiceAccount")["metadata"]
    return account["namespace"], account["name"]


def crd_schema() -> Manifest:
    [version] = yaml.safe_load(CRD.read_text())["spec"]["versions"]
    schema: Manifest = version["schema"]["openAPIV3Schema"]
    return schema


def readme_block(marker: str) -> str:
    """The fenced block that follows ``<!-- tests/e2e/test_example.py: marker -->`` in the
    README."""
    text = (EXAMPLE / "README.md").read_text()
    match = re.search(
        rf"<!-- tests/e2e/test_example\.py: {re.escape(marker)} -->\n```\w*\n(.*?)```", text, re.S
    )
    assert match, f"example/README.md has no block marked {marker!r}"
    return match.group(1)


# -- playing kubelet -------------------------------------------------------------------------


def kubelet_volumes(manifests: list[Manifest], token: str, root: Path) -> dict[str, Path]:
    """The pod's volumes laid out as kubelet would, under ``root``: the ConfigMap as a
    ConfigMap mount, the projected token, empty emptyDirs. Volume name -> folder."""
    configmap = one(manifests, "ConfigMap")
    volumes: dict[str, Path] = {}
    for volume in pod_spec(manifests)["volumes"]:
        folder = root / volume["name"]
        if "configMap" in volume:
            assert volume["configMap"]["name"] == configmap["metadata"]["name"]
            configmap_mount(folder, configmap["data"])
        elif "emptyDir" in volume:
            folder.mkdir(parents=True)
        else:
            folder.mkdir(parents=True)
            for source in volume["projected"]["sources"]:
                (folder / source["serviceAccountToken"]["path"]).write_text(token)
        volumes[volume["name"]] = folder
    return volumes


def localize(text: str, container: Manifest, volumes: dict[str, Path]) -> str:
    """``text`` with each of the container's mount paths replaced by the volume's local folder."""
    for mount in container["volumeMounts"]:
        text = re.sub(
            rf"{re.escape(mount['mountPath'])}(?=/|,|\s|$)",
            str(volumes[mount["name"]]),
            text,
            flags=re.M,
        )
    return text


def run_init(
    manifests: list[Manifest], volumes: dict[str, Path], decryptor_url: str
) -> subprocess.CompletedProcess[str]:
    """The init container's command and args from deployment.yaml, as they are but for the
    ``--kamus-url`` value and the paths, with its environment."""
    container = init_container(manifests)
    assert container["command"] == ["kamus", "init"]
    args = [localize(arg, container, volumes) for arg in container["args"]]
    args[args.index("--kamus-url") + 1] = decryptor_url
    env = {e["name"]: localize(e["value"], container, volumes) for e in container["env"]}
    assert Path(env["TOKEN_FILE_PATH"]).is_file()  # in a mounted volume: the projected token
    return subprocess.run(
        [sys.executable, "-m", "kamus", *container["command"][1:], *args],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def decrypted_file(manifests: list[Manifest], volumes: dict[str, Path]) -> Path:
    container = init_container(manifests)
    args: list[str] = container["args"]
    folder = Path(localize(args[args.index("-d") + 1], container, volumes))
    return folder / args[args.index("-n") + 1]


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in the process group ``pgid``."""
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def run_app(manifests: list[Manifest], volumes: dict[str, Path], log: Path) -> str:
    """The app container's script on the decrypted volume: it must print ``ready``, then stop
    at once on SIGTERM (as PID 1 it must handle it itself) with nothing left running."""
    container = app_container(manifests)
    command = [
        localize(part, container, volumes) for part in container["command"] + container["args"]
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 10
        while not log.read_text().endswith("ready\n"):
            assert process.poll() is None, f"the app exited {process.returncode}: {log.read_text()}"
            assert time.monotonic() < deadline, f"the app is not ready: {log.read_text()}"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert eventually(lambda: not group_alive(process.pid), timeout=5)  # its `sleep` too
    finally:  # on failure, leave nothing of it running
        if process.poll() is None or group_alive(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return log.read_text()


def encrypt_sh(folder: Path, url: str, **values: str) -> subprocess.CompletedProcess[str]:
    """``folder/encrypt.sh url --allow-insecure-url`` with the ``kamus`` command of this venv."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        [SH, str(folder / "encrypt.sh"), url, "--allow-insecure-url"],
        env={"PATH": path, **values},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def encrypted_values(manifests: list[Manifest]) -> dict[str, str]:
    kamus_secret = one(manifests, "KamusSecret")
    return {
        **{f"configmap {k}": v for k, v in one(manifests, "ConfigMap")["data"].items()},
        **{f"stringData {k}": v for k, v in kamus_secret["stringData"].items()},
        **{f"data {k}": v for k, v in kamus_secret["data"].items()},
    }


# -- the manifests ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates(version: str) -> None:
    manifests = load()
    kinds = sorted(m["kind"] for m in manifests)
    assert kinds == ["ConfigMap", "Deployment", "KamusSecret", "Namespace", "ServiceAccount"]
    for manifest in manifests:
        if manifest["kind"] == "KamusSecret":
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):  # checked below
                kubernetes_validate.validate(manifest, version, strict=True)
            continue
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']} ({version}): {error}")


def test_the_kamussecret_validates_against_the_crd() -> None:
    kamus_secret = one(load(), "KamusSecret")
    schema = crd_schema()
    jsonschema.validate(kamus_secret, schema)
    # No field the apiserver would prune without a word (the schema is not closed).
    assert set(kamus_secret) <= set(schema["properties"])
    # The schema does check: without its service account, or with a non-string value, it fails.
    for broken in (
        {k: v for k, v in kamus_secret.items() if k != "serviceAccount"},
        {**kamus_secret, "stringData": {"password": 1}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


def test_the_committed_values_are_placeholders_or_ciphertexts() -> None:
    for where, value in encrypted_values(load()).items():
        assert value.startswith(("<kamus encrypt output", "kamus$")), where


def test_one_namespace_and_one_service_account_tie_it_together() -> None:
    manifests = load()
    namespace, account = identity(manifests)
    assert account != "default"  # the decryptor refuses it
    assert one(manifests, "Namespace")["metadata"]["name"] == namespace
    for manifest in manifests:
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"]["namespace"] == namespace, manifest["kind"]
    assert pod_spec(manifests)["serviceAccountName"] == account
    assert one(manifests, "KamusSecret")["serviceAccount"] == account
    deployment = one(manifests, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_pod_is_hardened() -> None:
    manifests = load()
    spec = pod_spec(manifests)
    namespace = one(manifests, "Namespace")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"

    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001  # the kamus image's user
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in [*spec["initContainers"], *spec["containers"]]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["runAsNonRoot"] is True, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
        assert "privileged" not in context
        assert "add" not in context["capabilities"]
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}, container["name"]

    volumes = {v["name"]: v for v in spec["volumes"]}
    init, app = init_container(manifests), app_container(manifests)
    mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    decrypted = mounts[init["args"][init["args"].index("-d") + 1]]
    assert volumes[decrypted["name"]]["emptyDir"]["medium"] == "Memory"
    assert volumes[decrypted["name"]]["emptyDir"]["sizeLimit"]
    encrypted = mounts[init["args"][init["args"].index("-e") + 1]]
    assert encrypted["readOnly"] is True
    assert (
        volumes[encrypted["name"]]["configMap"]["name"]
        == (one(manifests, "ConfigMap")["metadata"]["name"])
    )
    # The app reads the decrypted volume, read-only, and holds no token: only the init container
    # gets one, projected, short-lived, at TOKEN_FILE_PATH.
    [app_mount] = app["volumeMounts"]
    assert app_mount["name"] == decrypted["name"]
    assert app_mount["readOnly"] is True
    assert spec["automountServiceAccountToken"] is False
    assert one(manifests, "ServiceAccount")["automountServiceAccountToken"] is False
    token_path = Path({e["name"]: e["value"] for e in init["env"]}["TOKEN_FILE_PATH"])
    token_mount = mounts[str(token_path.parent)]
    assert token_mount["readOnly"] is True
    [source] = volumes[token_mount["name"]]["projected"]["sources"]
    assert source["serviceAccountToken"]["path"] == token_path.name
    assert source["serviceAccountToken"]["expirationSeconds"] <= 3600
    tokens = [v["name"] for v in spec["volumes"] if "projected" in v]
    assert not [m for m in app["volumeMounts"] if m["name"] in tokens]
    assert "$(" not in json.dumps(app)  # Kubernetes would expand $(NAME) in command and args


def test_the_pod_reaches_the_charts_decryptor() -> None:
    """What the chart renders as release ``kamus`` in namespace ``kamus``: the decryptor's
    Service is the init container's URL, its NetworkPolicy admits the pod, its image is the
    init container's."""
    chart = render()
    manifests = load()
    init = init_container(manifests)
    service = named(chart, "Service", "kamus-decryptor")
    [port] = service["spec"]["ports"]
    host = f"{service['metadata']['name']}.kamus.svc"
    url = init["args"][init["args"].index("--kamus-url") + 1]
    assert url == (f"http://{host}" if port["port"] == 80 else f"http://{host}:{port['port']}")
    policy = named(chart, "NetworkPolicy", "kamus-decryptor")
    clients = [
        p for rule in policy["spec"]["ingress"] for p in rule["from"] if "namespaceSelector" in p
    ]
    [client] = clients
    assert client["podSelector"]["matchLabels"] == dict([CLIENT_LABEL])
    labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert labels[CLIENT_LABEL[0]] == CLIENT_LABEL[1]
    [decryptor] = named(chart, "Deployment", "kamus-decryptor")["spec"]["template"]["spec"][
        "containers"
    ]
    assert init["image"] == decryptor["image"]
    assert decryptor["securityContext"]["runAsNonRoot"] is True


# -- the flow, with the real services ---------------------------------------------------------


@pytest.fixture
def deployment(kube_api: KubeApiDouble, tmp_path: Path) -> Iterator[Deployment]:
    key = new_key()
    with deploy(kube_api, tmp_path, {"KeyManagement__AES__Key": key}) as deployment:
        deployment.key = key
        yield deployment


def test_the_init_container_decrypts_the_configmap_as_the_pods_service_account(
    deployment: Deployment, tmp_path: Path
) -> None:
    manifests = load()
    namespace, account = identity(manifests)
    configmap = one(manifests, "ConfigMap")
    plaintexts = {key: f"{key}-{os.urandom(8).hex()}" for key in configmap["data"]}
    for key, plaintext in plaintexts.items():
        encrypted = deployment.encrypt(plaintext, namespace, account)
        assert encrypted.status_code == 200, encrypted.text
        configmap["data"][key] = encrypted.text

    token = deployment.kube_api.issue_token(namespace, account)
    volumes = kubelet_volumes(manifests, token, tmp_path / "pod")
    result = run_init(manifests, volumes, deployment.decryptor.url)
    assert result.returncode == 0, result.stderr
    output = decrypted_file(manifests, volumes)
    assert json.loads(output.read_text()) == plaintexts
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert not any(p in result.stdout + result.stderr for p in plaintexts.values())

    # The same pod under another service account of the namespace gets nothing.
    other = deployment.kube_api.issue_token(namespace, f"{account}-other")
    volumes = kubelet_volumes(manifests, other, tmp_path / "other-pod")
    refused = run_init(manifests, volumes, deployment.decryptor.url)
    assert refused.returncode != 0
    assert (
        f"sealed for another service account than this pod's, {namespace}:{account}-other"
        in refused.stderr
    )
    assert not decrypted_file(manifests, volumes).exists()


def test_the_readme_flow_encrypt_sh_init_container_app_and_kamussecret(
    deployment: Deployment, kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    folder = tmp_path / "example"
    shutil.copytree(EXAMPLE, folder)
    before = {p.name: p.read_text() for p in folder.iterdir() if p.is_file()}

    # encrypt.sh fills the manifests in place: ciphertexts where the placeholders were, and
    # not another byte changed.
    filled = encrypt_sh(folder, deployment.encryptor.url)
    assert filled.returncode == 0, filled.stderr
    after = {p.name: p.read_text() for p in folder.iterdir() if p.is_file()}
    assert set(after) == set(before)  # no leftovers
    values = encrypted_values(load(folder))
    assert set(values) == set(encrypted_values(load()))
    assert all(v.startswith("kamus$") for v in values.values()), values
    for name in ("configmap.yaml", "kamussecret.yaml"):
        pattern = re.compile(r'^(  [\w.-]+: )"(?:<kamus encrypt output[^"]*|kamus\$[^"]*)"$', re.M)
        assert pattern.sub(r"\1V", after[name]) == pattern.sub(r"\1V", before[name]), name
    assert {
        k: v for k, v in after.items() if not k.endswith(("configmap.yaml", "kamussecret.yaml"))
    } == {k: v for k, v in before.items() if not k.endswith(("configmap.yaml", "kamussecret.yaml"))}
    manifests = load(folder)
    jsonschema.validate(one(manifests, "KamusSecret"), crd_schema())
    kubernetes_validate.validate(one(manifests, "ConfigMap"), KUBERNETES_VERSIONS[0], strict=True)

    # The init container's exact command writes the config.json the README shows, and logs
    # what the README shows.
    namespace, account = identity(manifests)
    token = kube_api.issue_token(namespace, account)
    volumes = kubelet_volumes(manifests, token, tmp_path / "pod")
    result = run_init(manifests, volumes, deployment.decryptor.url)
    assert result.returncode == 0, result.stderr
    config = decrypted_file(manifests, volumes)
    expected = json.loads(readme_block("the config.json of encrypt.sh's demo values"))
    assert json.loads(config.read_text()) == expected
    readme_log = [
        localize(line.removeprefix("# "), init_container(manifests), volumes)
        for line in (EXAMPLE / "README.md").read_text().splitlines()
        if line.startswith("# kamus init:")
    ]
    assert result.stderr.splitlines() == readme_log

    # The app container's script reads it and names the settings, never a value.
    log = run_app(manifests, volumes, tmp_path / "app.log")
    assert log.splitlines()[1:] == [*(f"  {key}" for key in sorted(expected)), "ready"]
    for value in expected.values():
        assert json.dumps(value) not in log
        assert str(value) not in log

    # The controller turns the filled KamusSecret into the Secret the README shows.
    env = controller_env(kube_api, tmp_path, deployment.key)
    watches = kube_api.watch_count
    with kamus_serve("controller", env, tmp_path / "controller.log"):
        kube_api.wait_for_watches(watches + 2)
        kubeconfig = kube_api.write_kubeconfig(tmp_path / "test.kubeconfig")
        cluster = Cluster(kube_api, kubeconfig, deployment.key)
        try:
            kamus_secret = one(manifests, "KamusSecret")
            cluster.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, kamus_secret
            )
            name = kamus_secret["metadata"]["name"]
            data = eventually(lambda: cluster.data(namespace, name))
        finally:
            cluster.close()
    shown = dict(
        line.split("=", 1)
        for line in readme_block("the Secret of encrypt.sh's demo values").splitlines()
    )
    assert {k: base64.b64decode(v).decode() for k, v in data.items()} == shown

    # Run again with values of one's own: every value is replaced, the new ones decrypt.
    own = {
        "EXAMPLE_DB_USERNAME": "svc-user",
        "EXAMPLE_DB_PASSWORD": 'p4ss "quoted" $HOME `x` \\ end',
        "EXAMPLE_API_KEY": os.urandom(12).hex(),
        "EXAMPLE_FEATURE_FLAGS": '{"beta": false, "regions": ["eu", "us"]}',
    }
    refilled = encrypt_sh(folder, deployment.encryptor.url, **own)
    assert refilled.returncode == 0, refilled.stderr
    manifests = load(folder)
    again = encrypted_values(manifests)
    assert not set(again.values()) & set(values.values())
    for plaintext in own.values():
        assert plaintext not in "".join(p.read_text() for p in folder.rglob("*") if p.is_file())
    volumes = kubelet_volumes(manifests, token, tmp_path / "pod-again")
    result = run_init(manifests, volumes, deployment.decryptor.url)
    assert result.returncode == 0, result.stderr
    assert json.loads(decrypted_file(manifests, volumes).read_text()) == {
        "db-username": own["EXAMPLE_DB_USERNAME"],
        "db-password": own["EXAMPLE_DB_PASSWORD"],
        "api-key": own["EXAMPLE_API_KEY"],
        "feature-flags": json.loads(own["EXAMPLE_FEATURE_FLAGS"]),
    }
    api_key = deployment.decrypt(again["data api-key"], token)
    assert base64.b64decode(api_key.text).decode() == own["EXAMPLE_API_KEY"]


def test_encrypt_sh_without_a_url_prints_its_usage_and_changes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "example"
    shutil.copytree(EXAMPLE, folder)
    result = subprocess.run(
        [SH, str(folder / "encrypt.sh")], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert "example/encrypt.sh URL [kamus encrypt options]" in result.stderr
    assert load(folder) == load()


def test_encrypt_sh_stops_on_a_refusal_and_leaves_the_manifests_alone(
    deployment: Deployment, tmp_path: Path
) -> None:
    folder = tmp_path / "example"
    shutil.copytree(EXAMPLE, folder)
    kamus_secret = folder / "kamussecret.yaml"
    kamus_secret.write_text(
        kamus_secret.read_text().replace(
            "serviceAccount: kamus-example-sa", "serviceAccount: default"
        )
    )
    before = {p.name: p.read_text() for p in folder.iterdir() if p.is_file()}
    result = encrypt_sh(folder, deployment.encryptor.url)
    assert result.returncode == 5  # kamus encrypt: the server refused
    assert "default" in result.stderr
    assert {p.name: p.read_text() for p in folder.iterdir() if p.is_file()} == before
