"""Builds the cloud KMS providers from settings: SDK clients with timeouts, retries, endpoints and
credentials from the SDK's standard chain (or Kamus's explicit settings)."""

import os
import re
from collections.abc import Callable
from datetime import timedelta
from typing import cast

from crypto.aws import AwsKmsKeyManager, classify_aws_error, leave_throttling_to_kamus
from crypto.azure import AzureKeyVaultKeyManager, classify_azure_error, client_kwargs
from crypto.cloud import WrappedSeed
from crypto.gcp import GoogleKmsKeyManager, classify_gcp_error
from crypto.kms import BlockingCalls, Classifier, KmsObserver
from kamus.server.errors import ConfigurationError
from kamus.server.lifecycle import cache_limits, key_policy, schedule_of
from kamus.server.settings import KeyManagementSettings, Settings, secret_setting


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


def wrapped_seeds(km: KeyManagementSettings, kind: str) -> list[WrappedSeed]:
    sealing = km.sealing
    text = secret_setting(
        sealing.wrapped_seeds, sealing.wrapped_seeds_file, "KeyManagement__Sealing__WrappedSeeds"
    )
    try:
        seeds = [WrappedSeed.parse(part) for part in (text or "").split(",") if part.strip()]
    except ValueError as exc:
        raise ConfigurationError(
            f"KeyManagement__Sealing__WrappedSeeds: {exc} (kamus create-key-secret makes it)"
        ) from None
    for seed in seeds:
        if seed.kind != kind:
            raise ConfigurationError(
                f"KeyManagement__Sealing__WrappedSeeds holds a seed wrapped by {seed.kind}, and "
                f"this Kamus uses {kind}: make one with this provider (kamus create-key-secret)"
            )
    return seeds


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
        # Standard retry mode: jittered exponential backoff on 5xx and connection errors;
        # throttling is left to BlockingCalls by the needs-retry hook below.
        config=Config(
            connect_timeout=attempt,
            read_timeout=attempt,
            retries={"mode": "standard", "total_max_attempts": km.max_retries + 1},
            max_pool_connections=km.max_concurrent_calls,
        ),
        verify=ca_bundle(),  # None: botocore's own default (AWS_CA_BUNDLE, then certifi)
    )
    # First, so that its False (botocore >= 1.44 reads it as "do not retry") wins. The stubs
    # type handlers as returning None; needs-retry handlers return a value by design.
    client.meta.events.register_first(
        "needs-retry.kms", cast(Callable[..., None], leave_throttling_to_kamus)
    )
    return AwsKmsKeyManager(
        client,
        blocking_calls(km, "aws", classify_aws_error, observer),
        cmk_prefix=aws.cmk_prefix,
        automatic_rotation=aws.automatic_key_rotation,
        create_keys=km.create_keys,
        allow_legacy=km.allow_legacy_ciphertexts,
        sealed_output=settings.encryptor.output_format == "m1",
        policy=key_policy(settings),
        recipient_keys=settings.key_management.recipient_keys,
        schedule=schedule_of(settings),
        wrapped_seeds=wrapped_seeds(km, "aws"),
        cache=cache_limits(settings),
    )


_TIMESPAN = re.compile(r"(?:(\d+)\.)?(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,7}))?)?")


def parse_rotation_period(text: str) -> timedelta:
    """Kamus's ``RotationPeriod`` as C#'s ``TimeSpan.Parse`` read it (``"30"`` is 30 days,
    ``"30.00:00:00"``, ``"12:00:00"``), or protobuf's seconds (``"2592000s"``)."""
    text = text.strip()
    if match := re.fullmatch(r"(\d+)s", text):
        period = timedelta(seconds=int(match[1]))
    elif text.isdigit():
        period = timedelta(days=int(text))
    elif match := _TIMESPAN.fullmatch(text):
        days, hours, minutes, seconds, fraction = match.groups()
        period = timedelta(
            days=int(days or 0),
            hours=int(hours),
            minutes=int(minutes),
            seconds=int(seconds or 0) + float(f"0.{fraction or 0}"),
        )
    else:
        raise ConfigurationError(
            f"KeyManagement__GoogleKms__RotationPeriod={text!r} is not a period: use days "
            '("90"), a .NET TimeSpan ("90.00:00:00") or seconds ("7776000s")'
        )
    if period < timedelta(days=1):
        raise ConfigurationError(
            "KeyManagement__GoogleKms__RotationPeriod must be at least one day, Cloud KMS's minimum"
        )
    return period


def build_gcp(settings: Settings, observer: KmsObserver | None) -> GoogleKmsKeyManager:
    import google.auth
    from google.api_core.client_options import ClientOptions
    from google.auth.exceptions import GoogleAuthError
    from google.cloud import kms
    from google.oauth2 import service_account

    km = settings.key_management
    gk = km.google_kms
    scopes = ["https://www.googleapis.com/auth/cloud-platform"]
    try:
        if gk.credentials_path is not None:  # Kamus's setting: a service-account key file
            credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                str(gk.credentials_path), scopes=scopes
            )
            project = credentials.project_id
        else:  # GOOGLE_APPLICATION_CREDENTIALS, GKE workload identity, the metadata server
            credentials, project = google.auth.default(scopes=scopes)
    except (GoogleAuthError, OSError, ValueError) as exc:
        raise ConfigurationError(
            f"no Google credentials ({type(exc).__name__}): set GOOGLE_APPLICATION_CREDENTIALS or "
            "KeyManagement__GoogleKms__CredentialsPath, or run with GKE workload identity"
        ) from None
    project_id = gk.project_id or project
    if not project_id:
        raise ConfigurationError("set KeyManagement__GoogleKms__ProjectId")
    rotation = parse_rotation_period(gk.rotation_period) if gk.rotation_period else None
    client = kms.KeyManagementServiceClient(
        credentials=credentials,
        transport=gk.transport,
        client_options=ClientOptions(api_endpoint=gk.endpoint) if gk.endpoint else None,
    )
    if gk.transport == "rest":
        _size_rest_pool(client, km.max_concurrent_calls)
    return GoogleKmsKeyManager(
        client,
        blocking_calls(km, "gcp", classify_gcp_error, observer),
        project=project_id,
        location=gk.location,
        key_ring=gk.key_ring_name,
        protection_level=gk.protection_level,
        rotation_period=rotation,
        attempt_timeout=per_attempt_timeout(km),
        create_keys=km.create_keys,
        allow_legacy=km.allow_legacy_ciphertexts,
        sealed_output=settings.encryptor.output_format == "m1",
        policy=key_policy(settings),
        recipient_keys=settings.key_management.recipient_keys,
        schedule=schedule_of(settings),
        wrapped_seeds=wrapped_seeds(km, "gcp"),
        cache=cache_limits(settings),
    )


def _size_rest_pool(client: object, connections: int) -> None:
    """Give the REST transport's requests session as many pooled connections as calls may be in
    flight. Its default of 10 made a batch of 32 open (and discard, with a warning each) new TLS
    connections every time. The session is not public API: without it, the default stays."""
    import requests.adapters

    session = getattr(getattr(client, "_transport", None), "_session", None)
    if isinstance(session, requests.Session):
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=connections)
        session.mount("https://", adapter)
        session.mount("http://", adapter)


def build_azure(settings: Settings, observer: KmsObserver | None) -> AzureKeyVaultKeyManager:
    from azure.core.credentials import TokenCredential
    from azure.identity import ClientSecretCredential, DefaultAzureCredential
    from azure.keyvault.keys import KeyClient

    km = settings.key_management
    kv = km.key_vault
    if kv.url:
        vault_url = kv.url.rstrip("/")
    elif kv.name:
        vault_url = f"https://{kv.name}.vault.azure.net"
    else:
        raise ConfigurationError(
            "set KeyManagement__KeyVault__Name (or KeyManagement__KeyVault__Url for a private "
            "endpoint)"
        )
    ad = settings.active_directory
    secret = secret_setting(
        ad.client_secret, ad.client_secret_file, "ActiveDirectory__ClientSecret"
    )
    credential: TokenCredential
    if ad.client_id or secret:  # Kamus's service principal
        tenant = ad.tenant_id or os.environ.get("AZURE_TENANT_ID")
        if not (ad.client_id and secret and tenant):
            raise ConfigurationError(
                "a service principal needs ActiveDirectory__ClientId, ActiveDirectory__ClientSecret"
                " and ActiveDirectory__TenantId; set none of them for workload or managed identity"
            )
        credential = ClientSecretCredential(tenant, ad.client_id, secret)
    else:  # AKS workload identity, managed identity, AZURE_* environment
        credential = DefaultAzureCredential()
    attempt = per_attempt_timeout(km)
    options: dict[str, object] = {
        "verify_challenge_resource": kv.verify_challenge_resource,
        # azure-core's retry: exponential backoff with jitter on 5xx and connection errors.
        # Not on 429: client_kwargs leaves throttling to BlockingCalls, which honours
        # Retry-After without holding a worker thread asleep.
        "retry_total": km.max_retries,
        "retry_backoff_factor": 0.5,
        "connection_timeout": attempt,
        "read_timeout": attempt,
    }
    if bundle := ca_bundle():
        options["connection_verify"] = bundle
    return AzureKeyVaultKeyManager(
        KeyClient(vault_url, credential, **client_kwargs(options)),
        credential,
        blocking_calls(km, "azure", classify_azure_error, observer),
        client_options=options,
        hardware_protected=kv.key_type == "RSA-HSM",
        key_size=kv.key_length,
        create_keys=km.create_keys,
        allow_legacy=km.allow_legacy_ciphertexts,
        sealed_output=settings.encryptor.output_format == "m1",
        policy=key_policy(settings),
        recipient_keys=settings.key_management.recipient_keys,
        schedule=schedule_of(settings),
        wrapped_seeds=wrapped_seeds(km, "azure"),
        cache=cache_limits(settings),
    )
