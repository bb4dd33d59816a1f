"""``kamus create-key-secret`` in the KMS modes: the chart's key Job makes the sealing seed, wrapped
by the KMS for the reserved identity ``kamus_sealing:seed``, once. Real ``kamus`` processes against
the Kubernetes API double (with only the Role's verbs: ``create`` and ``get`` on Secrets) and the
KMS doubles through the real SDKs; then the seed's round trip: a decryptor-side manager exports
the bundle, ``kamus encrypt --offline`` seals to it with no server, and the provider opens the
value as its identity only."""

import base64
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from crypto import DecryptionError, kamus_key_id
from crypto.cloud import SEALING_IDENTITY, CloudKeyManager, WrappedSeed
from kamus.server.providers import build_key_manager
from tests.k8s_double import KubeApiDouble
from tests.kms_doubles.aws import AwsKmsDouble
from tests.kms_doubles.azure import KeyVaultDouble
from tests.kms_doubles.gcp import CloudKmsDouble
from tests.support import leaks
from tests.support.aio import run
from tests.support.chart import key_job_command, render
from tests.support.processes import run_kamus
from tests.support.served_logs import sdk_loggers_as_served
from tests.support.servers import Faults
from tests.support.settings import SettingsFactory

NAMESPACE, NAME = "kamus", "kamus-sealing-seed"
SEED_KEY_ID = kamus_key_id(SEALING_IDENTITY)
SECRET = "sealed-to-a-kms-seed ✓"
leaks.register(SECRET)
# A well-formed seed of each kind, wrapped by no real KMS: for the refusals.
FOREIGN = {
    "aws": "aws$1234abcd-12ab-34cd-56ef-1234567890ab$" + "A" * 200,
    "gcp": "gcp$1$" + "A" * 150,
}


@dataclass
class Kms:
    """One KMS mode: its double, the settings a process needs, and where the seed's key lives."""

    kind: str
    values: dict[str, Any]  # the chart's keyManagement values for this mode
    settings: dict[str, str]
    double: Any
    seed_key_exists: Callable[[], bool]


def aws(double: AwsKmsDouble, tmp_path: Path) -> Kms:
    def exists() -> bool:
        aliases = double.client().list_aliases()["Aliases"]
        return f"alias/kamus/{SEED_KEY_ID}" in {a["AliasName"] for a in aliases}

    return Kms(
        "aws",
        {"provider": "AwsKms", "awsKms": {"region": "us-east-1"}},
        {"KeyManagement__Provider": "AwsKms", "KeyManagement__AwsKms__Region": "us-east-1"},
        double,
        exists,
    )


def gcp(double: CloudKmsDouble, tmp_path: Path) -> Kms:
    return Kms(
        "gcp",
        {"provider": "GoogleKms", "googleKms": {"projectId": "proj"}},
        {"KeyManagement__Provider": "GoogleKms", "KeyManagement__GoogleKms__ProjectId": "proj"},
        double,
        lambda: any(k.endswith(f"/cryptoKeys/{SEED_KEY_ID}") for k in double.keys),
    )


def azure(double: KeyVaultDouble, tmp_path: Path) -> Kms:
    return Kms(
        "azure",
        {"provider": "AzureKeyVault", "azureKeyVault": {"keyVaultName": "v"}},
        {
            "KeyManagement__Provider": "AzureKeyVault",
            "KeyManagement__KeyVault__Url": double.url,
            "KeyManagement__KeyVault__VerifyChallengeResource": "false",
        },
        double,
        lambda: bool(double.versions(SEED_KEY_ID)),
    )


MODES: dict[str, tuple[Callable[[Any, Path], Kms], str]] = {
    "aws": (aws, "aws_kms"),
    "gcp": (gcp, "gcp_kms"),
    "azure": (azure, "azure_kv"),
}


@pytest.fixture(params=list(MODES))
def kms(request: pytest.FixtureRequest, tmp_path: Path) -> Kms:
    make, fixture = MODES[request.param]
    return make(request.getfixturevalue(fixture), tmp_path)


def job_env(kms: Kms, kube: KubeApiDouble, tmp_path: Path) -> dict[str, str]:
    """The Job's environment: the KMS settings the decryptor gets (the doubles' endpoints and
    credentials are in this process's environment), and a kubeconfig with the Role's rights."""
    return {
        **os.environ,
        **kms.settings,
        "KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "job.kubeconfig")),
        "Logging__Level": "DEBUG",
    }


def job_arguments(kms: Kms) -> list[str]:
    """The command the chart's Job runs in this mode, exactly as rendered."""
    kamus, *arguments = key_job_command(render({"keyManagement": kms.values}), name=NAME)
    assert kamus == "kamus"
    return arguments


def create(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_kamus("create-key-secret", "--name", NAME, "--namespace", NAMESPACE, env=env)


def stored(core: k8s.CoreV1Api) -> dict[str, Any]:
    secret: dict[str, Any] = core.api_client.sanitize_for_serialization(
        core.read_namespaced_secret(NAME, NAMESPACE)
    )
    return secret


def stored_seeds(core: k8s.CoreV1Api) -> str:
    text = base64.b64decode(stored(core)["data"]["sealing-seeds"]).decode()
    for seed in text.split(","):
        leaks.register(seed.rsplit("$", 1)[-1])  # the wrapped seed is never shown either
    return text


def put_secret(core: k8s.CoreV1Api, data: dict[str, str]) -> dict[str, Any]:
    metadata = k8s.V1ObjectMeta(name=NAME, labels={"mine": "yes"})
    core.create_namespaced_secret(NAMESPACE, k8s.V1Secret(metadata=metadata, data=data))
    return stored(core)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def assert_nothing_secret_in(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert not leaks.found_in(output), leaks.found_in(output)


def test_the_job_makes_a_kms_wrapped_seed_once_and_never_again(
    kms: Kms, kube: KubeApiDouble, core: k8s.CoreV1Api, tmp_path: Path
) -> None:
    env = job_env(kms, kube, tmp_path)
    arguments = job_arguments(kms)
    first = run_kamus(*arguments, env=env)
    assert first.returncode == 0, first.stderr
    seed = WrappedSeed.parse(stored_seeds(core))
    assert seed.kind == kms.kind
    assert kms.seed_key_exists()  # the provider's usual key, for the reserved identity
    shown = f"wrapped by {kms.kind}, KMS key version {seed.key_version}"
    assert f"created Secret kamus/kamus-sealing-seed with a new sealing seed ({shown})" in (
        first.stdout
    )
    assert "kubectl -n kamus get secret kamus-sealing-seed -o yaml" in first.stdout
    created = stored(core)
    assert created["type"] == "Opaque"
    labels = created["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "sealing-seed"
    assert "app.kubernetes.io/instance" not in labels  # no GitOps tool may prune it
    assert "sealed offline" in created["metadata"]["annotations"]["kamus.soluto.com/backup"]
    # An upgrade or a re-sync: the Secret is found before any KMS call, and left byte for byte.
    calls = len(kms.double.requests)
    again = run_kamus(*arguments, env=env)
    assert again.returncode == 0, again.stderr
    assert f"already holds a sealing seed ({shown}); left unchanged" in again.stdout
    assert stored(core) == created
    assert len(kms.double.requests) == calls
    assert_nothing_secret_in(first)
    assert_nothing_secret_in(again)


def test_the_seed_round_trips_through_an_offline_seal(
    kms: Kms,
    kube: KubeApiDouble,
    core: k8s.CoreV1Api,
    tmp_path: Path,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Secret's seed, as the decryptor reads it: `kamus keys export` unwraps it and prints
    the bundle; `kamus encrypt --offline` seals to that bundle with no server; the provider opens
    the value as its identity, and only a manager holding the seed can."""
    made = create(job_env(kms, kube, tmp_path))
    assert made.returncode == 0, made.stderr
    seeds_file = tmp_path / "sealing-seeds"  # as the chart mounts it
    seeds_file.write_text(stored_seeds(core))
    decryptor = {**kms.settings, "KeyManagement__Sealing__WrappedSeedsFile": str(seeds_file)}
    keys = tmp_path / "keys.json"
    exported = run_kamus("keys", "export", "-o", str(keys), env={**os.environ, **decryptor})
    assert exported.returncode == 0, exported.stderr
    sealed = run_kamus(
        "encrypt", "-s", SECRET, "-n", "team-a", "-a", "app", "--offline", "--keys", str(keys)
    )  # no KMS settings, no server
    assert sealed.returncode == 0, sealed.stderr
    ciphertext = sealed.stdout.strip()
    assert ciphertext.startswith("kamus$m1$")

    # In this process as in `kamus serve`: the SDKs' DEBUG lines would show the request bodies.
    with sdk_loggers_as_served():
        manager = build_key_manager(make_settings(**decryptor))
        assert isinstance(manager, CloudKeyManager)
        [seed] = run(manager.sealing_masters())
        leaks.register(base64.b64encode(seed).decode(), seed.hex())
        calls = len(kms.double.requests)
        assert run(manager.decrypt(ciphertext, "team-a:app")) == SECRET.encode()
        assert len(kms.double.requests) == calls  # an HPKE stanza: no KMS call to open it
        for other in ("team-a:web", "team-b:app"):
            with pytest.raises(DecryptionError):
                run(manager.decrypt(ciphertext, other))
        # The encryptor's manager holds no seed: it cannot open what was sealed offline.
        monkeypatch.delenv("KeyManagement__Sealing__WrappedSeedsFile")
        encryptor = build_key_manager(make_settings(**kms.settings))
        with pytest.raises(DecryptionError):
            run(encryptor.decrypt(ciphertext, "team-a:app"))
    for result in (made, exported, sealed):
        assert_nothing_secret_in(result)


@pytest.mark.parametrize("foreign", ["aws", "gcp"])
def test_a_seed_of_another_kms_is_refused_and_left_alone(
    azure_kv: KeyVaultDouble,
    kube: KubeApiDouble,
    core: k8s.CoreV1Api,
    tmp_path: Path,
    foreign: str,
) -> None:
    """A release moved to Key Vault still holds the seed AWS or Google wrapped: the decryptor
    could never unwrap it, so the Job stops and says so, before any KMS call."""
    before = put_secret(core, {"sealing-seeds": b64(FOREIGN[foreign])})
    result = create(job_env(azure(azure_kv, tmp_path), kube, tmp_path))
    assert result.returncode == 1
    assert (
        f"Secret kamus/kamus-sealing-seed holds a sealing seed wrapped by {foreign}, and this "
        "Kamus uses azure" in result.stderr
    )
    assert f"open only with {foreign}" in result.stderr
    assert "It was left unchanged" in result.stderr
    assert "kubectl -n kamus delete secret kamus-sealing-seed" in result.stderr
    assert stored(core) == before
    assert azure_kv.requests == []
    assert FOREIGN[foreign] not in result.stderr


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"aes-key": b64("x")}, "has no 'sealing-seeds' entry"),
        ({"sealing-seeds": b64("not a seed")}, "'sealing-seeds' is not a list of wrapped"),
        ({"sealing-seeds": b64(" , ")}, "'sealing-seeds' is not a list of wrapped"),
    ],
    ids=["no-entry", "not-a-seed", "empty"],
)
def test_a_malformed_seed_secret_is_refused_and_left_alone(
    aws_kms: AwsKmsDouble,
    kube: KubeApiDouble,
    core: k8s.CoreV1Api,
    tmp_path: Path,
    data: dict[str, str],
    problem: str,
) -> None:
    before = put_secret(core, data)
    result = create(job_env(aws(aws_kms, tmp_path), kube, tmp_path))
    assert result.returncode == 1
    assert "Secret kamus/kamus-sealing-seed" in result.stderr
    assert problem in result.stderr
    assert "kubectl -n kamus delete secret kamus-sealing-seed" in result.stderr
    assert stored(core) == before


def test_a_kms_that_refuses_leaves_no_secret_and_says_what_is_needed(
    aws_kms: AwsKmsDouble, kube: KubeApiDouble, tmp_path: Path
) -> None:
    aws_kms.faults = Faults(fail_status=503)
    env = {**job_env(aws(aws_kms, tmp_path), kube, tmp_path), "KeyManagement__MaxRetries": "0"}
    down = create(env)
    assert down.returncode == 1
    assert "cannot make the sealing seed: aws " in down.stderr
    assert "kamus_sealing:seed" in down.stderr
    assert "run again" in down.stderr
    assert not kube.objects("secrets")
    # Keys made by an administrator only: the seed's key must exist first, and is named.
    aws_kms.faults = Faults()
    no_key = create({**env, "KeyManagement__CreateKeys": "false"})
    assert no_key.returncode == 1
    assert f"cannot make the sealing seed: no key alias/kamus/{SEED_KEY_ID} exists" in (
        no_key.stderr
    )
    assert not kube.objects("secrets")


def test_without_permission_to_create_it_says_which_rbac(
    aws_kms: AwsKmsDouble, kube: KubeApiDouble, tmp_path: Path
) -> None:
    kube.denied_access.add(("", "secrets", "create"))
    result = create(job_env(aws(aws_kms, tmp_path), kube, tmp_path))
    assert result.returncode == 1
    assert "refused to create Secret kamus/kamus-sealing-seed (403 Forbidden)" in result.stderr
    assert "needs create on secrets in namespace kamus" in result.stderr
