"""Fault injection: the Kubernetes API and each KMS down, slow (past the deadline), failing (500)
and throttling (429). Every request answers 503 with Retry-After (never 500, never a misleading
401 or 400), readiness turns false, and both recover within seconds once the dependency does.
Except a throttling KMS: it answers, only not to everyone, so the replica stays ready
(tests/providers/test_throttling.py has the rest of that story)."""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from crypto.errors import KeyManagerUnavailable
from decryptor.app import create_app as create_decryptor
from encryptor.app import create_app as create_encryptor
from kamus.server.providers import build_key_manager
from tests.k8s_double import Faults, KubeApiDouble
from tests.kms_doubles.aws import AwsKmsDouble
from tests.kms_doubles.azure import KeyVaultDouble
from tests.kms_doubles.gcp import CloudKmsDouble
from tests.support import leaks
from tests.support.settings import SettingsFactory

SECRET = "fault-injection-s3cr3t"
leaks.register(SECRET)
V1 = {"data": SECRET, "service-account": "app", "namespace": "team-a"}
# A deadline the "slow" fault (2.5 s) overruns, and no SDK retries, so that each case takes
# seconds. Not 1 s: an encrypt for a new service account on AWS is five calls, CreateKey among
# them, and moto's CreateKey on a loaded machine once took longer than that after recovery.
# No data-key cache: a value decrypted before the outage would keep opening from it
# (tests/providers/test_data_key_cache.py shows that), and each request here must reach the KMS.
FAST = {
    "KeyManagement__TimeoutSeconds": "2",
    "KeyManagement__MaxRetries": "0",
    "KeyManagement__DataKeyCache__Capacity": "0",
    "Kubernetes__RequestTimeoutSeconds": "1",
    "Encryptor__RateLimit": "off",
}
FAULTS = {
    "slow": Faults(delay_seconds=2.5),
    "500": Faults(fail_status=500),
    "429": Faults(fail_status=429, fail_headers={"Retry-After": "1"}),
}
RECOVERY_SECONDS = 10  # the probe runs at most once a second; generous for a loaded CI machine


@dataclass
class Fault:
    name: str
    double: KubeApiDouble | AwsKmsDouble | CloudKmsDouble | KeyVaultDouble

    def inject(self) -> None:
        if self.name == "down":
            self.double.stop()
        else:
            self.double.faults = FAULTS[self.name]

    def heal(self) -> None:
        self.double.faults = Faults()
        if self.name == "down":
            restart = getattr(self.double, "start_again", None) or self.double.start
            restart()


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1


def wait_until_ready(client: TestClient) -> None:
    deadline = time.monotonic() + RECOVERY_SECONDS
    while (ready := client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, f"still not ready: {ready.json()}"
        time.sleep(0.2)


def check_outage_and_recovery(
    client: TestClient,
    fault: Fault,
    dependency: str,
    request: Callable[[], httpx.Response],
    expected: Callable[[httpx.Response], None],
) -> None:
    assert client.get("/readyz").status_code == 200
    expected(request())
    fault.inject()
    try:
        assert_unavailable(request())
        metrics = client.get("/metrics").text
        if fault.name == "429" and dependency == "key-manager":
            assert client.get("/readyz").status_code == 200
            assert f'kamus_dependency_up{{dependency="{dependency}"}} 1.0' in metrics
        else:
            not_ready = client.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json()["unavailable"] == [dependency]
            assert f'kamus_dependency_up{{dependency="{dependency}"}} 0.0' in metrics
    finally:
        fault.heal()
    wait_until_ready(client)  # with no request in between: the probe finds it back
    expected(request())


KINDS = ["down", "slow", "500", "429"]


@pytest.mark.parametrize("kind", KINDS)
def test_kubernetes_faults(
    kind: str, kube_api: KubeApiDouble, kubeconfig: Path, make_settings: SettingsFactory
) -> None:
    with TestClient(create_encryptor(make_settings(**FAST))) as encryptor:
        ciphertext = encryptor.post("/api/v1/encrypt", json=V1).text
    token = kube_api.issue_token("team-a", "app")
    settings = make_settings(**FAST, Decryptor__TokenReviewCacheSeconds="0")
    with TestClient(create_decryptor(settings)) as decryptor:

        def decrypt() -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"}
            response: httpx.Response = decryptor.post(
                "/api/v1/decrypt", json={"data": ciphertext}, headers=headers
            )
            return response

        def decrypted(response: httpx.Response) -> None:
            assert response.status_code == 200
            assert response.text == SECRET

        check_outage_and_recovery(
            decryptor, Fault(kind, kube_api), "kubernetes", decrypt, decrypted
        )


@pytest.fixture(params=["aws", "gcp", "azure"])
def kms(
    request: pytest.FixtureRequest, make_settings: SettingsFactory
) -> tuple[AwsKmsDouble | CloudKmsDouble | KeyVaultDouble, dict[str, str]]:
    """Each cloud KMS double, with this process pointed at it, and its provider settings."""
    if request.param == "aws":
        double: AwsKmsDouble | CloudKmsDouble | KeyVaultDouble = request.getfixturevalue("aws_kms")
        env = {"KeyManagement__Provider": "AwsKms", "KeyManagement__AwsKms__Region": "us-east-1"}
    elif request.param == "gcp":
        double = request.getfixturevalue("gcp_kms")
        env = {"KeyManagement__Provider": "GoogleKms", "KeyManagement__GoogleKms__ProjectId": "p"}
    else:
        double = request.getfixturevalue("azure_kv")
        env = {
            "KeyManagement__Provider": "AzureKeyVault",
            "KeyManagement__KeyVault__Url": double.url,
            "KeyManagement__KeyVault__VerifyChallengeResource": "false",
        }
    return double, {**FAST, **env}


@pytest.mark.parametrize("kind", KINDS)
def test_kms_faults_at_the_encryptor(
    kind: str,
    kms: tuple[AwsKmsDouble | CloudKmsDouble | KeyVaultDouble, dict[str, str]],
    make_settings: SettingsFactory,
) -> None:
    double, env = kms
    service_accounts = (f"app-{n}" for n in range(100))
    with TestClient(create_encryptor(make_settings(**env))) as encryptor:

        def encrypt() -> httpx.Response:
            # A new service account each time: Key Vault's provider wraps with the public key
            # it has cached (so it goes on encrypting for known ones through an outage).
            body = {**V1, "service-account": next(service_accounts)}
            response: httpx.Response = encryptor.post("/api/v1/encrypt", json=body)
            return response

        def encrypted(response: httpx.Response) -> None:
            assert response.status_code == 200, response.text

        check_outage_and_recovery(encryptor, Fault(kind, double), "key-manager", encrypt, encrypted)


@pytest.mark.parametrize("kind", KINDS)
def test_kms_faults_at_the_decryptor(
    kind: str,
    kms: tuple[AwsKmsDouble | CloudKmsDouble | KeyVaultDouble, dict[str, str]],
    kube_api: KubeApiDouble,
    kubeconfig: Path,
    make_settings: SettingsFactory,
) -> None:
    double, env = kms
    with TestClient(create_encryptor(make_settings(**env))) as encryptor:
        ciphertext = encryptor.post("/api/v1/encrypt", json=V1).text
    token = kube_api.issue_token("team-a", "app")
    with TestClient(create_decryptor(make_settings(**env))) as decryptor:

        def decrypt() -> httpx.Response:
            body = {"items": {"password": ciphertext}}
            headers = {"Authorization": f"Bearer {token}"}
            response: httpx.Response = decryptor.post("/api/v2/decrypt", json=body, headers=headers)
            return response

        def decrypted(response: httpx.Response) -> None:
            assert response.status_code == 200, response.text
            assert response.json() == {"items": {"password": {"data": SECRET}}}

        check_outage_and_recovery(decryptor, Fault(kind, double), "key-manager", decrypt, decrypted)
        # The Kubernetes API stayed up all along: only the KMS was reported.
        assert 'kamus_dependency_up{dependency="kubernetes"} 1.0' in (
            decryptor.get("/metrics").text
        )


def test_each_provider_check_asks_its_kms(
    kms: tuple[AwsKmsDouble | CloudKmsDouble | KeyVaultDouble, dict[str, str]],
    make_settings: SettingsFactory,
) -> None:
    """The readiness call reaches the KMS and succeeds with the provider's narrow grant; it
    fails only when the KMS does not answer."""
    double, env = kms
    keys = build_key_manager(make_settings(**env))
    asyncio.run(keys.check())
    if isinstance(double, CloudKmsDouble):
        assert double.requests[-1] == "GET /v1/projects/p/locations/global"
    elif isinstance(double, KeyVaultDouble):
        assert double.requests[-1].startswith("GET /keys/kamus-readiness-probe")
    double.stop()
    with pytest.raises(KeyManagerUnavailable):
        asyncio.run(keys.check())
