"""The user's whole workflow with real processes: ``kamus encrypt`` and ``kamus seal`` against a
running encryptor, then ``kamus init`` in a "pod" against a running decryptor, in every format."""

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.k8s_double import KubeApiDouble
from tests.support import leaks
from tests.support.mounts import configmap_mount
from tests.support.processes import Deployment, deploy, run_kamus
from tests.support.settings import new_key

SECRET_YAML = """\
apiVersion: v1
kind: Secret
metadata: {{name: app-secrets, namespace: team-a}}
stringData:
  username: admin
  config.json: '{{"db": {{"host": "db.internal", "port": 5432}}}}'
data:
  api-key: {api_key}
"""
PLAINTEXTS = {
    "username": "admin",
    "config.json": '{"db": {"host": "db.internal", "port": 5432}}',
    "api-key": 'k3y"with$pecial\nchars ✓',
    "token": "from-kamus-encrypt",
}
leaks.register(*PLAINTEXTS.values())


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("workflow")
    with (
        KubeApiDouble() as kube_api,
        deploy(kube_api, tmp, {"KeyManagement__AES__Key": new_key()}) as d,
    ):
        yield d


@pytest.fixture(scope="module")
def mount(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a developer commits and kubelet mounts: sealed values in a ConfigMap."""
    url = deployment.encryptor.url
    encrypted = run_kamus(
        "encrypt",
        "-s",
        PLAINTEXTS["token"],
        "-a",
        "app",
        "-n",
        "team-a",
        "-u",
        url,
        "--allow-insecure-url",
    )
    assert encrypted.returncode == 0, encrypted.stderr
    manifest = SECRET_YAML.format(api_key=base64.b64encode(PLAINTEXTS["api-key"].encode()).decode())
    sealed = run_kamus(
        "seal",
        "-a",
        "app",
        "-u",
        url,
        "--allow-insecure-url",
        "--format",
        "configmap",
        stdin=manifest,
    )
    assert sealed.returncode == 0, sealed.stderr
    configmap = yaml.safe_load(sealed.stdout)
    assert configmap["kind"] == "ConfigMap"
    files = {**configmap["data"], "token": encrypted.stdout.strip()}
    assert not any(p in json.dumps(files) for p in PLAINTEXTS.values())
    return configmap_mount(tmp_path_factory.mktemp("pod") / "encrypted", files)


def init(
    deployment: Deployment, mount: Path, out: Path, token: str, *args: str
) -> subprocess.CompletedProcess[str]:
    token_file = out.parent / f"{out.name}.token"
    token_file.write_text(token)
    env = {"KAMUS_URL": deployment.decryptor.url, "TOKEN_FILE_PATH": str(token_file)}
    return run_kamus("init", "-e", str(mount), "-d", str(out), *args, env=env)


EXPECTED_JSON = {**PLAINTEXTS, "config.json": {"db": {"host": "db.internal", "port": 5432}}}


@pytest.mark.parametrize("fmt", ["json", "cfg", "cfg-strict", "files", "env", "custom"])
def test_init_writes_every_format(
    deployment: Deployment, mount: Path, tmp_path: Path, fmt: str
) -> None:
    token = deployment.kube_api.issue_token("team-a", "app")
    if fmt == "custom":
        template = configmap_mount(
            tmp_path / "tpl",
            {"template.j2": 'key={{ secrets["api-key"] }}|{{ secrets["config.json"].db.port }}'},
        )
        result = init(
            deployment,
            mount,
            tmp_path / "out",
            token,
            "-n",
            "out",
            "-f",
            fmt,
            "-e",
            f"{mount},{template}",
        )
    else:
        result = init(deployment, mount, tmp_path / "out", token, "-n", "out", "-f", fmt)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    for plaintext in PLAINTEXTS.values():
        assert plaintext not in result.stdout + result.stderr
    if fmt == "json":
        assert json.loads((out / "out").read_text()) == EXPECTED_JSON
    elif fmt == "files":
        assert json.loads((out / "config.json").read_text()) == EXPECTED_JSON["config.json"]
        for name in ("username", "api-key", "token"):
            assert (out / name).read_text() == PLAINTEXTS[name]
    elif fmt == "cfg":
        text = (out / "out").read_text()
        assert "token=from-kamus-encrypt\n" in text
        assert 'config.json={"db":{"host":"db.internal","port":5432}}\n' in text
    elif fmt == "cfg-strict":
        lines = (out / "out").read_text().splitlines()
        assert 'username="admin"' in lines
        assert 'api-key="k3y\\"with$pecial\\nchars ✓"' in lines
    elif fmt == "env":
        names = ("USERNAME", "API_KEY", "TOKEN")
        dump = f"import json, os; print(json.dumps({{k: os.environ[k] for k in {names}}}))"
        shell = subprocess.run(
            [
                "/bin/sh",
                "-c",
                'set -a; . "$0"; exec "$@"',
                str(out / "out"),
                sys.executable,
                "-c",
                dump,
            ],
            capture_output=True,
            text=True,
            check=True,
            env={"PATH": os.environ["PATH"]},
        )
        assert json.loads(shell.stdout) == {
            "USERNAME": "admin",
            "API_KEY": PLAINTEXTS["api-key"],
            "TOKEN": "from-kamus-encrypt",
        }
    else:
        assert (out / "out").read_text() == f"key={PLAINTEXTS['api-key']}|5432"


def test_another_service_account_is_refused_clearly(
    deployment: Deployment, mount: Path, tmp_path: Path
) -> None:
    """The values' identity tags say, before any request, that they are team-a:app's; the
    decryptor would refuse them anyway (tests/e2e/test_e2e.py)."""
    token = deployment.kube_api.issue_token("team-a", "web")
    result = init(deployment, mount, tmp_path / "out", token, "-f", "files")
    assert result.returncode == 1
    assert str(mount / "username") in result.stderr
    assert (
        "sealed for another service account than this pod's, team-a:web: seal them for "
        "team-a:web (kamus seal -a web -n team-a); nothing was sent"
    ) in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_sealed_kamussecret_opens_for_its_service_account(deployment: Deployment) -> None:
    manifest = SECRET_YAML.format(api_key=base64.b64encode(b"\x00binary\xff").decode())
    sealed = run_kamus(
        "seal", "-a", "app", "-u", deployment.encryptor.url, "--allow-insecure-url", stdin=manifest
    )
    assert sealed.returncode == 0, sealed.stderr
    kamus_secret = yaml.safe_load(sealed.stdout)
    token = deployment.kube_api.issue_token("team-a", "app")
    username = deployment.decrypt(kamus_secret["stringData"]["username"], token)
    assert username.text == "admin"
    api_key = deployment.decrypt(kamus_secret["data"]["api-key"], token)
    assert base64.b64decode(api_key.text) == b"\x00binary\xff"
