"""``kamus create-key-secret``, the command the chart's hook Job runs to make the AES master key
inside the cluster. A real ``kamus`` process against the Kubernetes API double,
with only the RBAC the chart's Role grants: ``create`` and ``get`` on Secrets. Any update, patch,
delete, list or watch would be refused, so a test that passes proves none was needed."""

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request
from kubernetes import client as k8s

from crypto import KAMUS_PUBLIC_DEFAULT_KEY
from crypto.aes import key_id
from tests.k8s_double import Faults, KubeApiDouble
from tests.support import leaks
from tests.support.chart import key_job_command, render
from tests.support.processes import spawn, stop
from tests.support.settings import new_key

NAMESPACE, NAME = "kamus", "kamus-keys"


def command_env(kube: KubeApiDouble, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "job.kubeconfig")),
        "Logging__Level": "DEBUG",
    }


def start(env: dict[str, str], arguments: list[str]) -> subprocess.Popen[str]:
    """``kamus ARGUMENTS`` in a process of its own, as in the Job's container."""
    return spawn(
        [sys.executable, "-m", "kamus", *arguments],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(run: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = run.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        stop(run, grace=0)  # SIGKILL: nothing left running for the next test
        run.communicate()
        raise
    return subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)


def create_key_secret(env: dict[str, str], name: str = NAME) -> subprocess.CompletedProcess[str]:
    return finish(start(env, ["create-key-secret", "--name", name, "--namespace", NAMESPACE]))


def stored(core: k8s.CoreV1Api, name: str = NAME) -> dict[str, Any]:
    secret: dict[str, Any] = core.api_client.sanitize_for_serialization(
        core.read_namespaced_secret(name, NAMESPACE)
    )
    return secret


def stored_key(core: k8s.CoreV1Api, name: str = NAME) -> bytes:
    """The key as the services read it: the mounted file holds its base64."""
    text = base64.b64decode(stored(core, name)["data"]["aes-key"])
    leaks.register(text.decode(), stored(core, name)["data"]["aes-key"])
    return base64.b64decode(text, validate=True)


def put_secret(core: k8s.CoreV1Api, data: dict[str, str]) -> dict[str, Any]:
    metadata = k8s.V1ObjectMeta(name=NAME, labels={"mine": "yes"})
    core.create_namespaced_secret(NAMESPACE, k8s.V1Secret(metadata=metadata, data=data))
    return stored(core)


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def assert_no_key_in(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert not leaks.found_in(output), leaks.found_in(output)


def test_the_job_creates_the_key_once_and_never_again(
    kube: KubeApiDouble, core: k8s.CoreV1Api, tmp_path: Path
) -> None:
    """The command the chart's Job runs, exactly as rendered, with only the Role's verbs."""
    env = command_env(kube, tmp_path)
    kamus, *arguments = key_job_command(render())
    assert kamus == "kamus"
    first = finish(start(env, arguments))
    assert first.returncode == 0, first.stderr
    key = stored_key(core)
    assert len(key) == 32
    assert f"created Secret kamus/kamus-keys with a new AES key (key id {key_id(key)})" in (
        first.stdout
    )
    assert "kubectl -n kamus get secret kamus-keys -o yaml" in first.stdout  # the backup
    created = stored(core)
    assert created["type"] == "Opaque"
    labels = created["metadata"]["labels"]
    # Nothing Helm or Argo CD tracks (app.kubernetes.io/instance is Argo CD's default tracking
    # label): neither may ever delete or prune the only copy of the key.
    assert "app.kubernetes.io/instance" not in labels
    assert labels["app.kubernetes.io/part-of"] == "kamus"
    assert not [a for a in created["metadata"].get("annotations", {}) if "helm.sh" in a]
    # An upgrade or a re-sync runs it again: the Secret is left byte for byte.
    again = finish(start(env, arguments))
    assert again.returncode == 0, again.stderr
    assert f"already holds a key (key id {key_id(key)}); left unchanged" in again.stdout
    assert stored(core) == created
    assert_no_key_in(first)
    assert_no_key_in(again)


def test_each_install_gets_its_own_random_key(
    kube: KubeApiDouble, core: k8s.CoreV1Api, tmp_path: Path
) -> None:
    env = command_env(kube, tmp_path)
    for name in ("keys-a", "keys-b"):
        result = create_key_secret(env, name=name)
        assert result.returncode == 0, result.stderr
        assert_no_key_in(result)
    assert stored_key(core, "keys-a") != stored_key(core, "keys-b")


def test_two_runs_at_once_make_one_key(
    kube: KubeApiDouble, core: k8s.CoreV1Api, tmp_path: Path
) -> None:
    """Two hook Jobs (a retried sync, two operators): one creates, the other finds its key."""
    env = command_env(kube, tmp_path)
    arguments = ["create-key-secret", "--name", NAME, "--namespace", NAMESPACE]
    runs = [start(env, arguments) for _ in range(2)]
    results = [finish(run) for run in runs]
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    key = stored_key(core)
    outputs = sorted(r.stdout for r in results)
    assert [("created" in o, f"key id {key_id(key)}" in o) for o in outputs] == [
        (False, True),  # "already holds a key": the same key
        (True, True),
    ]
    for result in results:
        assert_no_key_in(result)


def test_an_existing_key_is_left_byte_for_byte(
    kube: KubeApiDouble, core: k8s.CoreV1Api, tmp_path: Path
) -> None:
    """A Secret made before (by the previous chart, or by hand) is the key: never touched."""
    key = new_key()
    before = put_secret(core, {"aes-key": b64(key), "aes-previous-keys": b64(new_key())})
    result = create_key_secret(command_env(kube, tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"key id {key_id(base64.b64decode(key))}" in result.stdout
    assert stored(core) == before
    assert_no_key_in(result)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"other": b64("x")}, "has no 'aes-key' entry"),
        ({"aes-key": b64("not a key at all")}, "'aes-key' is not a base64 key"),
        ({"aes-key": b64(b64(os.urandom(31)))}, "'aes-key' decodes to 31 bytes"),
        ({"aes-key": b64(KAMUS_PUBLIC_DEFAULT_KEY)}, "Kamus's published default key"),
    ],
    ids=["no-entry", "not-base64", "wrong-length", "kamus-public-key"],
)
def test_a_malformed_existing_secret_is_refused_and_left_alone(
    kube: KubeApiDouble,
    core: k8s.CoreV1Api,
    tmp_path: Path,
    data: dict[str, str],
    problem: str,
) -> None:
    before = put_secret(core, data)
    result = create_key_secret(command_env(kube, tmp_path))
    assert result.returncode == 1
    assert "Secret kamus/kamus-keys" in result.stderr
    assert problem in result.stderr
    if "published" in problem:
        assert "keyManagement.AES.previousKeys with migration.fromKamus=true" in result.stderr
    else:
        # What to do: fix it, delete it if it never held a key in use, or bring your own.
        assert "kubectl -n kamus delete secret kamus-keys" in result.stderr
        assert "keyManagement.secretName" in result.stderr
        assert "It was left unchanged" in result.stderr
    assert stored(core) == before


def test_without_permission_to_create_it_says_which_rbac(
    kube: KubeApiDouble, tmp_path: Path
) -> None:
    kube.denied_access.add(("", "secrets", "create"))
    result = create_key_secret(command_env(kube, tmp_path))
    assert result.returncode == 1
    assert "refused to create Secret kamus/kamus-keys (403 Forbidden)" in result.stderr
    assert "needs create on secrets in namespace kamus" in result.stderr
    assert not kube.objects("secrets")


def test_without_permission_to_read_an_existing_one_says_which_rbac(
    kube: KubeApiDouble, core: k8s.CoreV1Api, tmp_path: Path
) -> None:
    put_secret(core, {"aes-key": b64(new_key())})
    kube.denied_access.add(("", "secrets", "get"))
    result = create_key_secret(command_env(kube, tmp_path))
    assert result.returncode == 1
    assert "refused to get Secret kamus/kamus-keys (403 Forbidden)" in result.stderr
    assert "needs get on the secret kamus-keys in namespace kamus" in result.stderr


def test_without_a_cluster_it_says_how_to_reach_one(tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "missing")}
    result = create_key_secret(env)
    assert result.returncode == 1
    assert "cannot configure the Kubernetes client" in result.stderr
    assert "KUBECONFIG" in result.stderr


def test_an_unreachable_apiserver_is_reported(kube: KubeApiDouble, tmp_path: Path) -> None:
    env = {**os.environ, "Kubernetes__ProxyUrl": "http://127.0.0.1:9"}  # discard: nothing listens
    result = create_key_secret(env)
    assert result.returncode == 1
    assert "cannot reach the Kubernetes API" in result.stderr
    assert "run again" in result.stderr


def test_an_apiserver_error_says_to_run_again(kube: KubeApiDouble, tmp_path: Path) -> None:
    kube.faults = Faults(fail_status=500)
    result = create_key_secret(command_env(kube, tmp_path))
    assert result.returncode == 1
    assert "the apiserver answered 500" in result.stderr
    assert "to create Secret kamus/kamus-keys; run again" in result.stderr


def reads_of_the_secret(request: Request) -> bool:
    return request.method == "GET" and request.url.path.endswith(f"/secrets/{NAME}")


def test_a_secret_deleted_between_create_and_read_is_made_again(
    kube: KubeApiDouble, core: k8s.CoreV1Api, tmp_path: Path
) -> None:
    """409 on create, then 404 on the read: someone deleted it meanwhile. The command tries the
    pair again rather than fail a Job over a race; if it never settles, it says so."""
    before = put_secret(core, {"aes-key": b64(new_key())})
    kube.faults = Faults(fail_status=404, when=reads_of_the_secret, remaining=1)
    settled = create_key_secret(command_env(kube, tmp_path))
    assert settled.returncode == 0, settled.stderr
    assert "already holds a key" in settled.stdout
    assert stored(core) == before
    kube.faults = Faults(fail_status=404, when=reads_of_the_secret)
    unsettled = create_key_secret(command_env(kube, tmp_path))
    assert unsettled.returncode == 1
    assert "Secret kamus/kamus-keys kept appearing and disappearing; run again" in (
        unsettled.stderr
    )
