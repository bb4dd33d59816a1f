"""The KMS doubles' request quota (tests/support/servers.py ``Quota``, and each double's
``quota()``): at most Q crypto calls per second, the rest answered as the real service throttles,
in the shape each real SDK recognises. The rollout benchmark (bench/rollout.py) counts on it."""

from __future__ import annotations

import os
from typing import Any

import boto3
import httpx
import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm
from botocore.config import Config
from botocore.exceptions import ClientError
from google.api_core.exceptions import TooManyRequests

from tests.kms_doubles import aws, azure, gcp
from tests.kms_doubles.aws import AwsKmsDouble
from tests.kms_doubles.azure import KeyVaultDouble
from tests.kms_doubles.gcp import CloudKmsDouble
from tests.support.servers import Faults, Quota


class Clock:
    """A clock the test moves: the quota's window, without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def frozen(quota: Quota) -> Quota:
    """The quota with time standing still: every call falls in one window, however slow the
    SDK, so the counts are exact."""
    quota.clock = lambda: 1000.0
    return quota


def test_600_calls_in_a_second_against_500_throttle_100() -> None:
    quota = Quota(500)
    answers = [quota.take() for _ in range(600)]  # microseconds: well within one window

    assert answers.count(False) == 100
    assert answers[:500] == [True] * 500  # the first 500 pass, then every call is refused
    assert quota.counts() == {"crypto_calls": 600, "admitted": 500, "throttled": 100}


def test_the_window_slides_and_refused_calls_take_no_slot() -> None:
    clock = Clock()
    quota = Quota(500, clock=clock)
    clock.now += 0.9
    assert sum(quota.take() for _ in range(500)) == 500
    clock.now += 0.1
    # A fixed window would start afresh here and let 500 more through within 0.1 s.
    assert not quota.take()
    clock.now += 0.5
    assert sum(quota.take() for _ in range(100)) == 0  # retrying fast does not help...
    clock.now += 0.41  # ...and does not delay the recovery: 1 s after the first 500
    assert sum(quota.take() for _ in range(600)) == 500
    assert quota.counts() == {"crypto_calls": 1201, "admitted": 1000, "throttled": 201}


def test_a_quota_over_ten_seconds_and_an_unlimited_one() -> None:
    clock = Clock()
    key_vault_hsm = Quota(200, window_seconds=10, clock=clock)  # 2,000 per 10 s
    assert sum(key_vault_hsm.take() for _ in range(2500)) == 2000
    clock.now += 9.9
    assert not key_vault_hsm.take()
    assert key_vault_hsm.seconds_until_free() == pytest.approx(0.1)
    counting = Quota(None)
    assert all(counting.take() for _ in range(10_000))
    assert counting.counts()["throttled"] == 0


def test_aws_throttles_crypto_calls_as_throttling_exception(aws_kms: AwsKmsDouble) -> None:
    key_id = aws_kms.client().create_key()["KeyMetadata"]["KeyId"]
    aws_kms.faults = Faults(quota=frozen(aws.quota(3)))
    # Through the proxy, with botocore's own retries off: each call is one answer.
    client = boto3.client(
        "kms",
        region_name=aws.REGION,
        endpoint_url=aws_kms.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )
    errors: list[ClientError | None] = []
    for _ in range(5):
        try:
            client.encrypt(KeyId=key_id, Plaintext=b"x")
            errors.append(None)
        except ClientError as exc:
            errors.append(exc)
    client.describe_key(KeyId=key_id)  # key management: not counted, never throttled

    codes = [exc and exc.response["Error"]["Code"] for exc in errors]
    assert codes == [None] * 3 + ["ThrottlingException"] * 2
    assert {exc.response["ResponseMetadata"]["HTTPStatusCode"] for exc in errors if exc} == {400}
    assert aws_kms.faults.quota is not None
    assert aws_kms.faults.quota.counts() == {"crypto_calls": 5, "admitted": 3, "throttled": 2}


def test_gcp_throttles_crypto_calls_as_resource_exhausted(gcp_kms: CloudKmsDouble) -> None:
    gcp_kms.faults = Faults(quota=frozen(gcp.quota(3)))
    client = gcp_kms.client()
    parent = "projects/p/locations/global"
    ring = client.create_key_ring(request={"parent": parent, "key_ring_id": "r"})
    key = client.create_crypto_key(
        request={"parent": ring.name, "crypto_key_id": "k", "crypto_key": {"purpose": 1}}
    )
    errors: list[TooManyRequests | None] = []
    for _ in range(5):
        try:
            client.encrypt(request={"name": key.name, "plaintext": b"x"}, retry=None)
            errors.append(None)
        except TooManyRequests as exc:  # the REST client's exception for HTTP 429
            errors.append(exc)

    assert [exc and exc.reason for exc in errors] == [None] * 3 + ["RATE_LIMIT_EXCEEDED"] * 2
    assert {(exc.code, "Quota exceeded" in exc.message) for exc in errors if exc} == {(429, True)}
    assert gcp_kms.faults.quota is not None
    assert gcp_kms.faults.quota.counts()["throttled"] == 2
    raw = httpx.post(f"{gcp_kms.url}/v1/{key.name}:decrypt", json={"ciphertext": ""})
    assert raw.status_code == 429
    assert raw.json()["error"]["status"] == "RESOURCE_EXHAUSTED"


def test_azure_throttles_key_operations_with_429_and_retry_after(
    azure_kv: KeyVaultDouble,
) -> None:
    kid = azure_kv.create_key("k")
    azure_kv.faults = Faults(quota=frozen(azure.quota(3)))
    client = CryptographyClient(
        kid,
        azure_kv.credential(),
        verify_challenge_resource=False,
        connection_verify=str(azure_kv.ca_file),
        retry_total=0,  # azure-core would otherwise wait out the Retry-After and try again
    )
    data_key = os.urandom(32)
    wrapped = client.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, data_key).encrypted_key  # local
    errors: list[HttpResponseError | None] = []
    for _ in range(5):
        try:
            assert client.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped).key == data_key
            errors.append(None)
        except HttpResponseError as exc:
            errors.append(exc)

    refused = [exc for exc in errors if exc]
    assert errors[:3] == [None] * 3
    assert [(exc.status_code, exc.error and exc.error.code) for exc in refused] == [
        (429, "Throttled")
    ] * 2
    # The window frees 1 s after its first call: Key Vault says so in whole seconds. (The
    # response's declared type lacks the headers every transport's response has.)
    responses: list[Any] = [exc.response for exc in refused]
    assert [response.headers["Retry-After"] for response in responses] == ["1"] * 2
    assert azure_kv.faults.quota is not None
    assert azure_kv.faults.quota.counts() == {"crypto_calls": 5, "admitted": 3, "throttled": 2}
    # The key GET (the SDK's, before wrapping locally) is key management: not counted.
    assert sum("/unwrapkey" in r for r in azure_kv.requests) == 5


def test_no_quota_and_an_unlimited_one_throttle_nothing(gcp_kms: CloudKmsDouble) -> None:
    for faults in (Faults(), Faults(quota=gcp.quota(None))):
        gcp_kms.faults = faults
        for _ in range(5):
            answer = httpx.post(
                f"{gcp_kms.url}/v1/projects/p/locations/l/keyRings/r/cryptoKeys/k:encrypt", json={}
            )
            assert answer.status_code == 404  # no such key: answered, not throttled
    assert gcp_kms.faults.quota is not None
    assert gcp_kms.faults.quota.counts() == {"crypto_calls": 5, "admitted": 5, "throttled": 0}
