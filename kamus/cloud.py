"""Builds the cloud KMS providers from settings: SDK clients with timeouts, retries, endpoints and
credentials from the SDK's standard chain (or Kamus's explicit settings)."""

import os

from crypto.aws import AwsKmsKeyManager, classify_aws_error
from crypto.kms import BlockingCalls, Classifier, KmsObserver
from kamus.providers import ConfigurationError, secret_setting
from kamus.settings import KeyManagementSettings, Settings


def ca_bundle() -> str | None:
    """A custom CA bundle from the usual variables, for private endpoints behind a private CA."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or None


def per_attempt_timeout(km: KeyManagementSettings) -> float:
    """Each attempt's share of the call's deadline, so the SDK's retries fit inside it."""
    return max(1.0, km.timeout_seconds / (km.max_retries + 1))


def blocking_calls(
    km: KeyManagementSettings, provider: str, classify: Classifier, observer: KmsObserver | None
) -> BlockingCalls:
    return BlockingCalls(
        provider,
        timeout_seconds=km.timeout_seconds,
        max_concurrency=km.max_concurrent_calls,
        classify=classify,
        observer=observer,
    )


def build_aws(settings: Settings, observer: KmsObserver | None) -> AwsKmsKeyManager:
    import boto3
    from botocore.config import Config

    km = settings.key_management
    aws = km.aws_kms
    secret = secret_setting(aws.secret, aws.secret_file, "KeyManagement__AwsKms__Secret")
    if bool(aws.key) != bool(secret):
        raise ConfigurationError(
            "set both KeyManagement__AwsKms__Key and KeyManagement__AwsKms__Secret, or neither "
            "to use the default AWS credential chain (IRSA, EKS pod identity, instance role)"
        )
    session = boto3.session.Session(
        aws_access_key_id=aws.key or None,
        aws_secret_access_key=secret or None,
        # Kamus's chart sets AWS_REGION, which botocore itself does not read.
        region_name=aws.region or os.environ.get("AWS_REGION") or None,
    )
    if not session.region_name:
        raise ConfigurationError("set KeyManagement__AwsKms__Region (or AWS_REGION)")
    attempt = per_attempt_timeout(km)
    client = session.client(
        "kms",
        # Standard retry mode: jittered exponential backoff on throttling and 5xx.
        config=Config(
            connect_timeout=attempt,
            read_timeout=attempt,
            retries={"mode": "standard", "total_max_attempts": km.max_retries + 1},
            max_pool_connections=km.max_concurrent_calls,
        ),
        verify=ca_bundle(),  # None: botocore's own default (AWS_CA_BUNDLE, then certifi)
    )
    return AwsKmsKeyManager(
        client,
        blocking_calls(km, "aws", classify_aws_error, observer),
        cmk_prefix=aws.cmk_prefix,
        automatic_rotation=aws.automatic_key_rotation,
        create_keys=km.create_keys,
        allow_legacy=km.allow_legacy_ciphertexts,
    )
