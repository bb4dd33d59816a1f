"""Settings that point the AWS provider at moto (tests/kms_doubles/aws.py)."""

from typing import Any

AWS = {"KeyManagement__Provider": "AwsKms", "KeyManagement__AwsKms__Region": "us-east-1"}
# Fewer retries and a shorter deadline than the defaults, so that the outage tests end soon.
FAST = {"KeyManagement__TimeoutSeconds": "10", "KeyManagement__MaxRetries": "2"}

# What each KMS double logs for a call that unwraps (or wraps) a data key: the X-Amz-Target for
# AWS, the REST path for Cloud KMS and Key Vault.
UNWRAPS = ("decrypt", "unwrapkey")
WRAPS = ("generatedatakey", "encrypt", "wrapkey")


def crypto_calls(requests: list[str], kinds: tuple[str, ...] = UNWRAPS) -> int:
    """How many of a double's logged requests are calls of ``kinds``."""
    return sum(1 for r in requests if r.lower().endswith(kinds))


def provider_env(name: str, double: Any) -> dict[str, str]:
    """The provider settings that point a service at the double (``aws``, ``gcp``, ``azure``);
    the double's fixture sets its credentials and endpoint in the environment."""
    if name == "aws":
        return AWS
    if name == "gcp":
        return {"KeyManagement__Provider": "GoogleKms", "KeyManagement__GoogleKms__ProjectId": "p"}
    return {
        "KeyManagement__Provider": "AzureKeyVault",
        "KeyManagement__KeyVault__Url": str(double.url),
        "KeyManagement__KeyVault__VerifyChallengeResource": "false",
    }
