"""Shared fixtures: the Kubernetes API double, keys, settings and the two apps in-process."""

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from fastapi.testclient import TestClient

from kamus.server.settings import Settings
from tests.k8s_double import Faults, KubeApiDouble
from tests.kms_doubles.aws import AwsKmsDouble
from tests.kms_doubles.azure import KeyVaultDouble
from tests.kms_doubles.gcp import CloudKmsDouble
from tests.support import leaks

# Fixtures of tests/support/apps.py, for every test that drives both services in-process.
from tests.support.apps import kamus, provider  # noqa: F401

# ... and of tests/support/cluster.py, for the tests that drive a controller process.
from tests.support.cluster import cluster  # noqa: F401
from tests.support.keysecret import core, kube  # noqa: F401
from tests.support.processes import running_children
from tests.support.settings import SETTING_PREFIXES, SettingsFactory, new_key


@pytest.fixture(autouse=True, scope="session")
def _nothing_left_running() -> Iterator[None]:
    """A run leaves no process behind: each would hold ports and files, and fail later tests
    (or later runs) in ways that point elsewhere."""
    yield
    left = running_children()
    for stat in left:  # stopped, so that one leak does not also spoil the next run
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(stat.split(" ", 1)[0]), signal.SIGKILL)
    assert not left, f"the tests left these processes running: {left}"


@pytest.fixture(autouse=True)
def _clean_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.lower().startswith(SETTING_PREFIXES) or name == "KUBECONFIG":
            monkeypatch.delenv(name)
    # Nor read a developer's own cloud configuration files.
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(autouse=True)
def _no_secret_in_logs() -> Iterator[None]:
    """Fails the test if a registered secret reached any log record (tests/support/leaks.py). The
    root logger goes to DEBUG for the test, so that nothing escapes the search by its level."""
    detector = leaks.LeakDetector()
    root = logging.getLogger()
    level = root.level
    root.addHandler(detector)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(detector)
        root.setLevel(level)
    if detector.leaks:
        pytest.fail("secrets reached the log:\n" + "\n".join(detector.leaks), pytrace=False)


@pytest.fixture(scope="session")
def _kube_api_server() -> Iterator[KubeApiDouble]:
    with KubeApiDouble() as double:
        yield double


@pytest.fixture
def kube_api(_kube_api_server: KubeApiDouble) -> Iterator[KubeApiDouble]:
    """The shared double, healthy and with fresh state for each test."""
    double = _kube_api_server
    double.faults = Faults()
    double.reviewers = {double.admin_token}
    double.reviews.clear()
    double.grants.clear()
    double.access_reviews.clear()
    double.deleted_service_accounts.clear()
    double.reset_resources()
    if not double.running:
        double.start()
    yield double
    if not double.running:
        double.start()


class _Double(Protocol):
    """What the KMS doubles share: stoppable (the outage tests), resettable, and a process env."""

    @property
    def running(self) -> bool: ...

    def start_again(self) -> object: ...

    def reset(self) -> None: ...


def _fresh(double: _Double, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Empty the session's double for a test, point this process at it, restore it after."""
    if not double.running:
        double.start_again()
    double.reset()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield
    if not double.running:
        double.start_again()


@pytest.fixture(scope="session")
def _aws_kms_server() -> Iterator[AwsKmsDouble]:
    double = AwsKmsDouble().start()
    yield double
    double.shutdown()


@pytest.fixture
def aws_kms(
    _aws_kms_server: AwsKmsDouble, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AwsKmsDouble]:
    """moto's KMS, emptied for each test, and this process's AWS settings pointing at it."""
    for _ in _fresh(_aws_kms_server, _aws_kms_server.env(), monkeypatch):
        yield _aws_kms_server


@pytest.fixture(scope="session")
def _gcp_kms_server() -> Iterator[CloudKmsDouble]:
    double = CloudKmsDouble().start()
    yield double
    double.stop()


@pytest.fixture
def gcp_kms(
    _gcp_kms_server: CloudKmsDouble, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[CloudKmsDouble]:
    """The Cloud KMS double, emptied, and this process's Google settings pointing at it."""
    env = _gcp_kms_server.env(tmp_path / "gcp-sa.json")
    for _ in _fresh(_gcp_kms_server, env, monkeypatch):
        yield _gcp_kms_server


@pytest.fixture(scope="session")
def _azure_kv_server() -> Iterator[KeyVaultDouble]:
    double = KeyVaultDouble().start()
    yield double
    double.stop()


@pytest.fixture
def azure_kv(
    _azure_kv_server: KeyVaultDouble, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KeyVaultDouble]:
    """The Key Vault double, emptied, and managed identity settings pointing at it."""
    for _ in _fresh(_azure_kv_server, _azure_kv_server.env(), monkeypatch):
        yield _azure_kv_server


@pytest.fixture
def kubeconfig(kube_api: KubeApiDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = kube_api.write_kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


@pytest.fixture
def aes_key() -> str:
    return new_key()


@pytest.fixture
def make_settings(monkeypatch: pytest.MonkeyPatch, aes_key: str) -> SettingsFactory:
    """Settings read from the environment exactly as a service reads them, e.g.
    ``make_settings(**{"Decryptor__Audiences": "kamus"})``. The AES key defaults to ``aes_key``.
    """

    def build(**env: str) -> Settings:
        monkeypatch.setenv("KeyManagement__AES__Key", aes_key)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return Settings()

    return build


@pytest.fixture
def encryptor_client(make_settings: SettingsFactory) -> Iterator[TestClient]:
    from encryptor.app import create_app

    with TestClient(create_app(make_settings())) as client:
        yield client


@pytest.fixture
def decryptor_client(make_settings: SettingsFactory, kubeconfig: Path) -> Iterator[TestClient]:
    from decryptor.app import create_app

    with TestClient(create_app(make_settings())) as client:
        yield client
