"""End to end with each cloud key manager: real ``kamus serve`` processes, configured only through
the environment, reaching the KMS double through the SDK's standard endpoint settings."""

import json
from collections.abc import Callable
from pathlib import Path

from tests.k8s_double import KubeApiDouble
from tests.kms_doubles.aws import AwsKmsDouble
from tests.kms_doubles.azure import KeyVaultDouble
from tests.kms_doubles.gcp import CloudKmsDouble
from tests.support import leaks
from tests.support.processes import Deployment, deploy
from tests.support.servers import Faults

SECRET = "kms-backed-secret ✓"
leaks.register(SECRET)
RESILIENCE = {"KeyManagement__TimeoutSeconds": "5", "KeyManagement__MaxRetries": "1"}


def check_round_trip_and_outage(
    deployment: Deployment,
    go_down: Callable[[], object],
    come_back: Callable[[], object],
    *,
    encrypt_is_local: bool = False,
) -> None:
    kube_api = deployment.kube_api
    encrypted = deployment.encrypt(SECRET, "team-a", "app")
    assert encrypted.status_code == 200, encrypted.text
    ciphertext = encrypted.text
    unseen = deployment.encrypt(SECRET, "team-a", "app").text
    token = kube_api.issue_token("team-a", "app")
    assert deployment.decrypt(ciphertext, token).text == SECRET
    assert deployment.decrypt(ciphertext, kube_api.issue_token("team-a", "web")).status_code == 400
    assert deployment.decrypt(ciphertext, kube_api.issue_token("team-b", "app")).status_code == 400

    go_down()
    # A value the decryptor opened in the last MaxAgeSeconds opens from its data-key cache; one
    # it has not seen needs the KMS.
    assert deployment.decrypt(ciphertext, token).text == SECRET
    during = [deployment.decrypt(unseen, token)]
    if encrypt_is_local:  # Azure wraps with the cached public key: encrypting needs no vault
        assert deployment.encrypt(SECRET, "team-a", "app").status_code == 200
    else:
        during.append(deployment.encrypt(SECRET, "team-a", "app"))
    for response in during:
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert response.json()["detail"] == "the key manager is unavailable; retry later"
    come_back()
    assert deployment.decrypt(unseen, token).text == SECRET

    logs = deployment.logs()
    for secret in [SECRET, token, ciphertext, unseen]:
        assert secret not in logs
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert any(line.get("outcome") == "unavailable" for line in lines)


def test_aws_kms(aws_kms: AwsKmsDouble, kube_api: KubeApiDouble, tmp_path: Path) -> None:
    env = {**aws_kms.env(), **RESILIENCE, "KeyManagement__Provider": "AwsKms"}
    with deploy(kube_api, tmp_path, env) as deployment:
        check_round_trip_and_outage(
            deployment,
            go_down=lambda: setattr(aws_kms, "faults", Faults(fail_status=503)),
            come_back=lambda: setattr(aws_kms, "faults", Faults()),
        )


def test_google_cloud_kms(gcp_kms: CloudKmsDouble, kube_api: KubeApiDouble, tmp_path: Path) -> None:
    gcp_kms.allow_anonymous = False  # the processes authenticate with the key file
    env = {
        **gcp_kms.env(tmp_path / "sa.json"),
        **RESILIENCE,
        "KeyManagement__Provider": "GoogleKms",
        "KeyManagement__GoogleKms__Location": "europe-west1",
        "KeyManagement__GoogleKms__KeyRingName": "kamus-prod",
    }
    with deploy(kube_api, tmp_path, env) as deployment:
        check_round_trip_and_outage(deployment, gcp_kms.stop, gcp_kms.start)
    assert all(k.startswith("projects/test-project/locations/europe-west1/") for k in gcp_kms.keys)


def test_azure_key_vault(azure_kv: KeyVaultDouble, kube_api: KubeApiDouble, tmp_path: Path) -> None:
    env = {
        **azure_kv.env(),  # managed identity, found by DefaultAzureCredential
        **RESILIENCE,
        "KeyManagement__Provider": "AzureKeyVault",
        "KeyManagement__KeyVault__Url": azure_kv.url,
        "KeyManagement__KeyVault__VerifyChallengeResource": "false",
    }
    with deploy(kube_api, tmp_path, env) as deployment:
        check_round_trip_and_outage(
            deployment,
            go_down=lambda: setattr(azure_kv, "faults", Faults(fail_status=503)),
            come_back=lambda: setattr(azure_kv, "faults", Faults()),
            encrypt_is_local=True,
        )
