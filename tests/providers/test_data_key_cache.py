"""The data-key cache against each KMS double, through the real SDKs and the services: what a
rollout costs the KMS, that a cached key never serves another identity, and what empties it.
The cache's own rules (expiry, uses, capacity) are in tests/unit/test_data_key_cache.py."""

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from crypto import m1
from crypto.cloud import CloudKeyManager
from crypto.errors import DecryptionError, KeyDisabled, KeyManagerUnavailable
from crypto.gcp import GoogleKmsKeyManager
from crypto.keyid import kamus_key_id
from decryptor.app import create_app as create_decryptor
from encryptor.app import create_app as create_encryptor
from kamus.server.providers import build_key_manager
from tests.k8s_double import KubeApiDouble
from tests.kms_doubles.aws import AwsKmsDouble
from tests.kms_doubles.azure import KeyVaultDouble
from tests.kms_doubles.gcp import CloudKmsDouble
from tests.support import leaks
from tests.support.kms import WRAPS, crypto_calls, provider_env
from tests.support.settings import SettingsFactory

Double = AwsKmsDouble | CloudKmsDouble | KeyVaultDouble
SECRET = "data-key-cache-s3cr3t"
leaks.register(SECRET)


@pytest.fixture(params=["aws", "gcp", "azure"])
def kms(request: pytest.FixtureRequest) -> tuple[Double, dict[str, str]]:
    fixture = {"aws": "aws_kms", "gcp": "gcp_kms", "azure": "azure_kv"}[request.param]
    double: Double = request.getfixturevalue(fixture)
    return double, provider_env(request.param, double)


def lookups(client: TestClient) -> dict[str, float]:
    text = client.get("/metrics").text
    return {
        m[1]: float(m[2])
        for m in re.finditer(r'^kamus_data_key_cache_total\{result="(\w+)"\} (\S+)$', text, re.M)
    }


@pytest.fixture
def decryptor(
    kms: tuple[Double, dict[str, str]],
    kube_api: KubeApiDouble,
    kubeconfig: Path,
    make_settings: SettingsFactory,
) -> Iterator[tuple[TestClient, Double, dict[str, str]]]:
    double, env = kms
    with TestClient(create_decryptor(make_settings(**env))) as client:
        yield client, double, env


def encrypt(
    env: dict[str, str], make_settings: SettingsFactory, items: dict[str, str]
) -> dict[str, str]:
    with TestClient(create_encryptor(make_settings(**env, Encryptor__RateLimit="off"))) as client:
        body = {"namespace": "team-a", "serviceAccount": "app", "items": items}
        response = client.post("/api/v2/encrypt", json=body)
    assert response.status_code == 200, response.text
    return {name: item["data"] for name, item in response.json()["items"].items()}


def decrypt_v1(client: TestClient, token: str, ciphertext: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    response: httpx.Response = client.post(
        "/api/v1/decrypt", json={"data": ciphertext}, headers=headers
    )
    return response


def test_a_document_costs_one_kms_call_to_seal_and_one_to_open(
    decryptor: tuple[TestClient, Double, dict[str, str]],
    kube_api: KubeApiDouble,
    make_settings: SettingsFactory,
) -> None:
    """A 20-key Secret: one wrap for all 20 values (Key Vault wraps with the public key it
    fetched, so none), each value opening alone, and the decryptor unwrapping once."""
    client, double, env = decryptor
    encrypt(env, make_settings, {"warm-up": "x"})  # the service account's key is created here
    double.requests.clear()
    items = {f"key-{n}": f"{SECRET}-{n}" for n in range(20)}
    values = encrypt(env, make_settings, items)
    assert crypto_calls(double.requests, WRAPS) <= 1
    # One data key: the values share header and MAC, and each has its own nonce.
    assert len({v.rsplit("$", 1)[0] for v in values.values()}) == 1
    assert len(set(values.values())) == 20
    double.requests.clear()
    token = kube_api.issue_token("team-a", "app")
    for name, value in values.items():  # as 20 separate v1 requests: each value opens alone
        response = decrypt_v1(client, token, value)
        assert response.status_code == 200, response.text
        assert response.text == items[name]
    assert crypto_calls(double.requests) == 1
    assert lookups(client) == {"miss": 1.0, "hit": 19.0}


def test_a_hit_makes_no_kms_call_and_another_pod_is_still_authenticated(
    decryptor: tuple[TestClient, Double, dict[str, str]],
    kube_api: KubeApiDouble,
    make_settings: SettingsFactory,
) -> None:
    client, double, env = decryptor
    value = encrypt(env, make_settings, {"password": SECRET})["password"]
    double.requests.clear()
    for _ in range(5):  # five pods, each with its own token
        response = decrypt_v1(client, kube_api.issue_token("team-a", "app"), value)
        assert response.text == SECRET
    assert crypto_calls(double.requests) == 1
    # The cache never stands in for authentication: a pod of another service account is
    # refused, and so is a token the API server does not know.
    other = decrypt_v1(client, kube_api.issue_token("team-a", "other"), value)
    assert other.status_code in (400, 403), other.text
    assert decrypt_v1(client, "not-a-token", value).status_code == 401
    assert crypto_calls(double.requests) == 1


def test_another_identity_with_the_same_wrapped_key_asks_the_kms(
    kms: tuple[Double, dict[str, str]], make_settings: SettingsFactory
) -> None:
    """An e1 value carries no identity tag, so the lookup alone decides: a cache keyed without
    the identity would hand team-b the key team-a's call unwrapped. Keyed with it, team-b's
    request goes to the KMS, which refuses it (AWS's encryption context, GCP's AAD, the digest
    in Key Vault's wrapped blob)."""
    double, env = kms
    manager = build_key_manager(make_settings(**env, Encryptor__OutputFormat="legacy"))
    assert isinstance(manager, CloudKeyManager)
    value = asyncio.run(manager.encrypt(SECRET.encode(), "team-a:app"))
    assert value.startswith("kamus$e1$")

    async def scenario() -> None:
        assert await manager.decrypt(value, "team-a:app") == SECRET.encode()
        double.requests.clear()
        with pytest.raises(DecryptionError):
            await manager.decrypt(value, "team-b:app")
        # The KMS was asked (Key Vault: team-b's key is looked up, and is not there).
        asked = len(double.requests)
        assert asked >= 1
        assert await manager.decrypt(value, "team-a:app") == SECRET.encode()
        assert len(double.requests) == asked  # still cached for team-a

    asyncio.run(scenario())


def test_fifty_concurrent_requests_for_one_value_make_one_kms_call(
    kms: tuple[Double, dict[str, str]], make_settings: SettingsFactory
) -> None:
    double, env = kms
    manager = build_key_manager(make_settings(**env))
    value = asyncio.run(manager.encrypt(SECRET.encode(), "team-a:app"))
    double.requests.clear()

    async def rollout() -> list[bytes]:
        return list(
            await asyncio.gather(*(manager.decrypt(value, "team-a:app") for _ in range(50)))
        )

    assert asyncio.run(rollout()) == [SECRET.encode()] * 50
    assert crypto_calls(double.requests) == 1
    assert len(double.requests) <= 2  # Key Vault: and at most one read of the key version


def test_values_already_cached_keep_opening_while_the_kms_is_down(
    gcp_kms: CloudKmsDouble, make_settings: SettingsFactory
) -> None:
    """A KMS outage does not stop pods whose values a replica has opened in the last
    MaxAgeSeconds; a value it has not seen answers 503 as before."""
    env = provider_env("gcp", gcp_kms)
    manager = build_key_manager(make_settings(**env, KeyManagement__TimeoutSeconds="2"))
    seen, unseen = (asyncio.run(manager.encrypt(SECRET.encode(), "team-a:app")) for _ in range(2))

    async def scenario() -> None:
        await manager.decrypt(seen, "team-a:app")
        gcp_kms.stop()
        try:
            assert await manager.decrypt(seen, "team-a:app") == SECRET.encode()
            with pytest.raises(KeyManagerUnavailable):
                await manager.decrypt(unseen, "team-a:app")
        finally:
            gcp_kms.start_again()

    asyncio.run(scenario())


def test_the_cache_is_off_at_zero(
    kms: tuple[Double, dict[str, str]], make_settings: SettingsFactory
) -> None:
    double, env = kms
    manager = build_key_manager(make_settings(**env, KeyManagement__DataKeyCache__Capacity="0"))
    value = asyncio.run(manager.encrypt(SECRET.encode(), "team-a:app"))
    double.requests.clear()

    async def twice() -> None:
        for _ in range(2):
            assert await manager.decrypt(value, "team-a:app") == SECRET.encode()

    asyncio.run(twice())
    assert crypto_calls(double.requests) == 2


def disable(double: Double, manager: CloudKeyManager, value: str, sa_id: str) -> None:
    """Disable, in the KMS, the key version that wrapped ``value``'s data key."""
    kid = m1.parse(value).stanzas[0].kid
    if isinstance(double, AwsKmsDouble):
        double.disable_key(kid)
    elif isinstance(double, CloudKmsDouble):
        assert isinstance(manager, GoogleKmsKeyManager)
        double.disable(manager.key_name(sa_id), int(kid))
    else:
        double.disable(kamus_key_id(sa_id), kid)


def test_a_disabled_key_clears_its_entries_and_only_its_own(
    kms: tuple[Double, dict[str, str]], make_settings: SettingsFactory
) -> None:
    """Once the KMS answers that a key is disabled, values it wrapped stop opening from the
    cache too; another identity's key and its entries are untouched."""
    double, env = kms
    manager = build_key_manager(make_settings(**env))
    assert isinstance(manager, CloudKeyManager)

    async def scenario() -> None:
        cached = await manager.encrypt(b"cached", "team-a:app")
        fresh = await manager.encrypt(b"fresh", "team-a:app")
        theirs = await manager.encrypt(b"theirs", "team-b:app")
        assert await manager.decrypt(cached, "team-a:app") == b"cached"
        assert await manager.decrypt(theirs, "team-b:app") == b"theirs"
        disable(double, manager, cached, "team-a:app")
        assert await manager.decrypt(cached, "team-a:app") == b"cached"  # the cache still has it
        with pytest.raises(KeyDisabled):
            await manager.decrypt(fresh, "team-a:app")  # the KMS says the key is disabled
        double.requests.clear()
        with pytest.raises(KeyDisabled):
            await manager.decrypt(cached, "team-a:app")
        assert double.requests  # it went to the KMS: its entry was dropped
        double.requests.clear()
        assert await manager.decrypt(theirs, "team-b:app") == b"theirs"
        assert not double.requests

    asyncio.run(scenario())


def test_a_disabled_key_is_a_value_that_does_not_open_not_an_outage(
    decryptor: tuple[TestClient, Double, dict[str, str]],
    kube_api: KubeApiDouble,
    make_settings: SettingsFactory,
) -> None:
    client, double, env = decryptor
    value = encrypt(env, make_settings, {"password": SECRET})["password"]
    manager = build_key_manager(make_settings(**env))
    assert isinstance(manager, CloudKeyManager)
    disable(double, manager, value, "team-a:app")
    response = decrypt_v1(client, kube_api.issue_token("team-a", "app"), value)
    assert response.status_code == 400, response.text
    assert client.get("/readyz").status_code == 200


def test_key_vault_reads_a_key_version_once_for_the_misses_of_a_rollout(
    azure_kv: KeyVaultDouble, make_settings: SettingsFactory
) -> None:
    """20 values under one key version, missed at once by a fresh decryptor: 20 unwraps, and
    one read of the key version that they all wait for, not 20."""
    env = provider_env("azure", azure_kv)
    values = [
        asyncio.run(build_key_manager(make_settings(**env)).encrypt(b"v", "team-a:app"))
        for _ in range(20)
    ]
    manager = build_key_manager(make_settings(**env))
    azure_kv.requests.clear()

    async def rollout() -> list[bytes]:
        return list(await asyncio.gather(*(manager.decrypt(v, "team-a:app") for v in values)))

    assert asyncio.run(rollout()) == [b"v"] * 20
    assert crypto_calls(azure_kv.requests) == 20
    assert sum(r.startswith("GET /keys/") for r in azure_kv.requests) == 1
