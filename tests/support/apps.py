"""Both services in-process for each key provider, and the helpers the tests that drive them
share: who asks, what a refusal says, and ciphertexts tampered with."""

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from decryptor.app import create_app as create_decryptor
from encryptor.app import create_app as create_encryptor
from tests.k8s_double import KubeApiDouble
from tests.kms_doubles.aws import AwsKmsDouble
from tests.kms_doubles.azure import KeyVaultDouble
from tests.kms_doubles.gcp import CloudKmsDouble
from tests.support.settings import SettingsFactory

OWNER = ("team-a", "app")
# Another service account of the same namespace, and the same name in another namespace.
OTHERS = [("team-a", "web"), ("team-b", "app")]

KmsDouble = AwsKmsDouble | CloudKmsDouble | KeyVaultDouble


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def undecryptable(namespace: str, service_account: str) -> str:
    """How every decryption failure a key decides starts, whatever its cause (no oracle)."""
    return f"the data cannot be decrypted as {namespace}:{service_account};"


# How a value starts that its shape alone refuses, before any key is used.
MALFORMED = "this is not a Kamus ciphertext: "


@dataclass
class Provider:
    name: str
    env: dict[str, str]
    double: KmsDouble | None = None

    def kms_requests(self) -> list[str]:
        return list(self.double.requests) if self.double is not None else []


@pytest.fixture(params=["aes", "aws", "gcp", "azure"])
def provider(request: pytest.FixtureRequest) -> Provider:
    """Each key provider, its double ready and this process pointed at it (as
    tests/providers/test_faults.py does). No SDK retries, so that a wrong 503 shows at once rather
    than after backoff."""
    env = {"Encryptor__RateLimit": "off", "KeyManagement__MaxRetries": "0"}
    if request.param == "aes":
        return Provider("aes", env)
    if request.param == "aws":
        double: KmsDouble = request.getfixturevalue("aws_kms")
        env |= {"KeyManagement__Provider": "AwsKms", "KeyManagement__AwsKms__Region": "us-east-1"}
    elif request.param == "gcp":
        double = request.getfixturevalue("gcp_kms")
        env |= {"KeyManagement__Provider": "GoogleKms", "KeyManagement__GoogleKms__ProjectId": "p"}
    else:
        double = request.getfixturevalue("azure_kv")
        env |= {
            "KeyManagement__Provider": "AzureKeyVault",
            "KeyManagement__KeyVault__Url": double.url,
            "KeyManagement__KeyVault__VerifyChallengeResource": "false",
        }
    return Provider(request.param, env, double)


@dataclass
class Kamus:
    encryptor: TestClient
    decryptor: TestClient
    kube_api: KubeApiDouble
    tokens: dict[tuple[str, str], str] = field(default_factory=dict)

    def token(self, namespace: str, service_account: str) -> str:
        """One token per identity, as one pod holds one: its TokenReview is then cached."""
        key = (namespace, service_account)
        if key not in self.tokens:
            self.tokens[key] = self.kube_api.issue_token(namespace, service_account)
        return self.tokens[key]

    def encrypt(self, data: str, namespace: str, service_account: str) -> str:
        body = {"data": data, "service-account": service_account, "namespace": namespace}
        response = self.encryptor.post("/api/v1/encrypt", json=body)
        assert response.status_code == 200, response.text
        ciphertext: str = response.text
        return ciphertext

    def decrypt(self, data: str, namespace: str, service_account: str) -> httpx.Response:
        headers = bearer(self.token(namespace, service_account))
        response: httpx.Response = self.decryptor.post(
            "/api/v1/decrypt", json={"data": data}, headers=headers
        )
        return response

    def decrypt_batch(
        self, items: dict[str, str], namespace: str, service_account: str
    ) -> dict[str, dict[str, str]]:
        headers = bearer(self.token(namespace, service_account))
        response = self.decryptor.post("/api/v2/decrypt", json={"items": items}, headers=headers)
        assert response.status_code == 200, response.text
        answer: dict[str, dict[str, str]] = response.json()["items"]
        return answer


@pytest.fixture
def kamus(
    provider: Provider, make_settings: SettingsFactory, kube_api: KubeApiDouble, kubeconfig: Path
) -> Iterator[Kamus]:
    settings = make_settings(**provider.env)
    with (
        TestClient(create_encryptor(settings)) as encryptor,
        TestClient(create_decryptor(settings)) as decryptor,
    ):
        yield Kamus(encryptor, decryptor, kube_api)


def mutations(ciphertext: str, other: str) -> dict[str, str]:
    """Tampered and truncated forms of ``ciphertext`` (``other``: another value for the same
    identity, to splice from)."""
    fields = ciphertext.split("$")
    cases: dict[str, str] = {}
    for index in range(1, len(fields)):  # the format version, the key (version), every payload
        text = fields[index]
        middle = len(text) // 2
        replacement = "B" if text[middle] == "A" else "A"
        changed = [
            *fields[:index],
            text[:middle] + replacement + text[middle + 1 :],
            *fields[index + 1 :],
        ]
        cases[f"field {index} changed"] = "$".join(changed)
    body = base64.urlsafe_b64decode(fields[-1] + "=" * (-len(fields[-1]) % 4))
    without_tag = base64.urlsafe_b64encode(body[:-16]).rstrip(b"=").decode()
    cases["tag cut off"] = "$".join([*fields[:-1], without_tag])
    flipped = bytes([*body[:-1], body[-1] ^ 1])
    cases["last bit flipped"] = "$".join(
        [*fields[:-1], base64.urlsafe_b64encode(flipped).rstrip(b"=").decode()]
    )
    cases["last character dropped"] = ciphertext[:-1]
    cases["last four characters dropped"] = ciphertext[:-4]
    cases["cut in half"] = ciphertext[: len(ciphertext) // 2]
    cases["last field dropped"] = "$".join(fields[:-1])
    cases["only the header"] = "$".join(fields[:2]) + "$"
    # Another value's sealed body (a1: the other value is then whole and valid; skip it).
    other_fields = other.split("$")
    if len(fields) > 4:
        cases["another value's body"] = "$".join([*fields[:-1], other_fields[-1]])
        cases["another value's wrapped key"] = "$".join(
            [*fields[:-2], other_fields[-2], fields[-1]]
        )
    return cases
