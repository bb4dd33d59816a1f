"""Settings for every service, read from the environment under Kamus's names.

``__`` nests, names are case-insensitive, and Kamus's spellings (``UseKeyDeriviation``) are kept so
an existing deployment's environment keeps working. Every secret can instead be read from a file
(``...File``), so keys can live in a mounted Secret rather than in environment variables.
"""

import re
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kamus.server.errors import ConfigurationError

Provider = Literal["AESKey", "AzureKeyVault", "GoogleKms", "AwsKms"]
CommaList = Annotated[list[str], NoDecode]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


# A DNS subdomain, optionally followed by "/" and the start of a name.
_DOMAIN_PREFIX = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(/[-._a-z0-9]*)?",
    re.IGNORECASE,
)


class _Section(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


def read_secret(value: SecretStr | None, file: Path | None, name: str) -> str | None:
    """The secret from its variable or, if that is unset, from its file; never both."""
    if value is not None and file is not None:
        raise ValueError(f"set {name} or {name}File, not both")
    if file is not None:
        try:
            return file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"{name}File {file} cannot be read: {exc.strerror}") from exc
    return value.get_secret_value().strip() if value is not None else None


def secret_setting(value: SecretStr | None, file: Path | None, name: str) -> str | None:
    """A secret from its variable or its file, as a start-up error if misconfigured."""
    try:
        return read_secret(value, file, name)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


class AESSettings(_Section):
    key: SecretStr | None = Field(None, alias="Key")
    key_file: Path | None = Field(None, alias="KeyFile")
    previous_keys: SecretStr | None = Field(None, alias="PreviousKeys")
    previous_keys_file: Path | None = Field(None, alias="PreviousKeysFile")
    use_key_derivation: bool = Field(False, alias="UseKeyDeriviation")
    allow_legacy_ciphertexts: bool = Field(True, alias="AllowLegacyCiphertexts")
    allow_public_default_key: bool = Field(False, alias="AllowPublicDefaultKey")


class AwsKmsSettings(_Section):
    region: str | None = Field(None, alias="Region")
    key: str | None = Field(None, alias="Key")
    secret: SecretStr | None = Field(None, alias="Secret")
    secret_file: Path | None = Field(None, alias="SecretFile")
    cmk_prefix: str = Field("", alias="CmkPrefix")
    automatic_key_rotation: bool = Field(False, alias="AutomaticKeyRotation")


class GoogleKmsSettings(_Section):
    project_id: str | None = Field(None, alias="ProjectId")
    location: str = Field("global", alias="Location")
    key_ring_name: str = Field("kamus", alias="KeyRingName")
    protection_level: Literal["SOFTWARE", "HSM"] = Field("SOFTWARE", alias="ProtectionLevel")
    rotation_period: str | None = Field(None, alias="RotationPeriod")
    credentials_path: Path | None = Field(None, alias="CredentialsPath")
    endpoint: str | None = Field(None, alias="Endpoint")
    transport: Literal["grpc", "rest"] = Field("grpc", alias="Transport")

    @field_validator("protection_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class KeyVaultSettings(_Section):
    name: str | None = Field(None, alias="Name")
    url: str | None = Field(None, alias="Url")
    key_type: Literal["RSA", "RSA-HSM"] = Field("RSA", alias="KeyType")
    key_length: int = Field(2048, alias="KeyLength")
    maximum_data_length: int = Field(214, alias="MaximumDataLength")
    verify_challenge_resource: bool = Field(True, alias="VerifyChallengeResource")

    @field_validator("key_length")
    @classmethod
    def _rsa_size(cls, value: int) -> int:
        if value not in (2048, 3072, 4096):
            raise ValueError("Key Vault RSA keys are 2048, 3072 or 4096 bits")
        return value


class SealingSettings(_Section):
    # A new sealing key generation every this many days (crypto/sealing.py); 0: never.
    renew_period_days: int = Field(90, ge=0, le=3650, alias="RenewPeriodDays")
    # The name the public key bundle carries, so a user with several clusters tells them apart.
    cluster: str = Field("", max_length=253, alias="Cluster")
    # The KMS modes: the sealing seed(s), wrapped by the KMS, active first (comma-separated);
    # `kamus create-key-secret` makes one. Unwrapped by the decryptor, never by the encryptor.
    wrapped_seeds: SecretStr | None = Field(None, alias="WrappedSeeds")
    wrapped_seeds_file: Path | None = Field(None, alias="WrappedSeedsFile")


class DataKeyCacheSettings(_Section):
    """Unwrapped data keys the KMS providers keep (crypto/datakeys.py): never plaintext values.
    Any of the three at 0 turns the cache off."""

    capacity: int = Field(1024, ge=0, le=1_000_000, alias="Capacity")
    max_age_seconds: float = Field(300.0, ge=0, le=86_400, alias="MaxAgeSeconds")
    max_uses: int = Field(10_000, ge=0, alias="MaxUses")


class KeyManagementSettings(_Section):
    provider: Provider = Field("AESKey", alias="Provider")
    aes: AESSettings = Field(default_factory=AESSettings, alias="AES")
    aws_kms: AwsKmsSettings = Field(default_factory=AwsKmsSettings, alias="AwsKms")
    google_kms: GoogleKmsSettings = Field(default_factory=GoogleKmsSettings, alias="GoogleKms")
    key_vault: KeyVaultSettings = Field(default_factory=KeyVaultSettings, alias="KeyVault")
    sealing: SealingSettings = Field(default_factory=SealingSettings, alias="Sealing")
    data_key_cache: DataKeyCacheSettings = Field(
        default_factory=DataKeyCacheSettings, alias="DataKeyCache"
    )
    create_keys: bool = Field(True, alias="CreateKeys")
    allow_legacy_ciphertexts: bool = Field(True, alias="AllowLegacyCiphertexts")
    # Key ids whose values are refused on decrypt and on rewrap (crypto/lifecycle.py): what
    # kamus_decryptions_total{key_id} shows, e.g. an AES key's id or x25519:g3:<16 hex>.
    retired_key_ids: CommaList = Field(default_factory=list, alias="RetiredKeyIds")
    # KMS keys named explicitly as m1 recipients (an ARN, a CryptoKey name, a Key Vault key URL)
    # that this cluster opens with its credentials (docs/multi-cluster.md).
    recipient_keys: CommaList = Field(default_factory=list, alias="RecipientKeys")
    # Break-glass recipients (age:age1…) added to every new m1 value this Kamus makes: what a
    # Decryptor__RequiredRecipients policy then finds in the encryptor's values too.
    extra_recipients: CommaList = Field(default_factory=list, alias="ExtraRecipients")
    timeout_seconds: float = Field(10.0, gt=0, alias="TimeoutSeconds")
    max_retries: int = Field(3, ge=0, le=10, alias="MaxRetries")
    # A pod's 20 values decrypt at once: the calls of one batch run concurrently.
    max_concurrent_calls: int = Field(32, ge=1, alias="MaxConcurrentCalls")

    _split = field_validator(
        "retired_key_ids", "recipient_keys", "extra_recipients", mode="before"
    )(_split_commas)


class ActiveDirectorySettings(_Section):
    client_id: str | None = Field(None, alias="ClientId")
    client_secret: SecretStr | None = Field(None, alias="ClientSecret")
    client_secret_file: Path | None = Field(None, alias="ClientSecretFile")
    tenant_id: str | None = Field(None, alias="TenantId")


class KubernetesSettings(_Section):
    proxy_url: str | None = Field(None, alias="ProxyUrl")
    token_auth_file: Path | None = Field(None, alias="TokenAuthFile")
    request_timeout_seconds: float = Field(5.0, gt=0, alias="RequestTimeoutSeconds")
    max_concurrent_requests: int = Field(16, ge=1, alias="MaxConcurrentRequests")
    # Of those, how many the reviews of one client address may hold at once (tokens not in the
    # cache): a flood from one address cannot take every slot from the other pods.
    max_concurrent_requests_per_client: int = Field(4, ge=1, alias="MaxConcurrentRequestsPerClient")


class DecryptorSettings(_Section):
    audiences: CommaList = Field(default_factory=list, alias="Audiences")
    deny_default_service_account: bool = Field(True, alias="DenyDefaultServiceAccount")
    access_review_cache_seconds: float = Field(30.0, ge=0, alias="AccessReviewCacheSeconds")
    # As kube-apiserver's delegated authentication: accepted tokens are trusted for this long
    # (never past their exp) without a new TokenReview; 0 turns the cache off.
    token_review_cache_seconds: float = Field(10.0, ge=0, alias="TokenReviewCacheSeconds")
    token_review_cache_size: int = Field(10_000, ge=1, alias="TokenReviewCacheSize")
    # The ConfigMap the decryptor (its Lease's holder) keeps the signed public key bundle in,
    # in its own namespace; empty: not published. The chart sets <release>-public-keys.
    public_keys_config_map: str = Field("", alias="PublicKeysConfigMap")
    public_keys_namespace: str | None = Field(None, alias="PublicKeysNamespace")
    # How often the publisher checks the ConfigMap (and its lease).
    public_keys_interval_seconds: float = Field(60.0, gt=0, alias="PublicKeysIntervalSeconds")
    # POST /api/v2/rewrap (decryptor/rewrap.py): the audiences its callers' tokens must be made
    # for (empty: the apiserver's own, as kubectl's token is), and the values each caller may
    # rewrap, as Encryptor__RateLimit ("off" turns it off).
    rewrap_audiences: CommaList = Field(default_factory=list, alias="RewrapAudiences")
    rewrap_rate_limit: str = Field("200/second", alias="RewrapRateLimit")
    # A value opened under a decrypt-only key is logged once per key id per this many seconds.
    decrypt_only_warning_seconds: float = Field(3600.0, gt=0, alias="DecryptOnlyWarningSeconds")
    # m1 recipient policy (crypto/recipients.py, docs/multi-cluster.md): `<kind>:<key id>`
    # patterns a value's stanzas must (Required) or must not (Forbidden) match, e.g. age:*; and
    # the recipients a rewrap may add (Allowed: age:age1…, anchor:ed25519:…, aws:arn:…).
    required_recipients: CommaList = Field(default_factory=list, alias="RequiredRecipients")
    forbidden_recipients: CommaList = Field(default_factory=list, alias="ForbiddenRecipients")
    allowed_recipients: CommaList = Field(default_factory=list, alias="AllowedRecipients")

    _split = field_validator(
        "audiences",
        "rewrap_audiences",
        "required_recipients",
        "forbidden_recipients",
        "allowed_recipients",
        mode="before",
    )(_split_commas)


class EncryptorSettings(_Section):
    # "kubernetes": callers send a Kubernetes token, and RBAC must let them create KamusSecrets
    # in the namespace they encrypt for. "none": anyone may encrypt, as in Kamus.
    authentication: Literal["none", "kubernetes"] = Field("none", alias="Authentication")
    audiences: CommaList = Field(default_factory=list, alias="Audiences")
    # How long an RBAC "allowed" is trusted without a new SubjectAccessReview (0: never). As
    # kube-apiserver's webhook authorizer caches, but shorter; a "denied" is never cached.
    authorization_cache_seconds: float = Field(10.0, ge=0, alias="AuthorizationCacheSeconds")
    # The callers' tokens, as the decryptor's Decryptor__TokenReviewCache* keep pods' tokens.
    token_review_cache_seconds: float = Field(10.0, ge=0, alias="TokenReviewCacheSeconds")
    token_review_cache_size: int = Field(10_000, ge=1, alias="TokenReviewCacheSize")
    # Per client address (kamus/server/ratelimit.py); "off" turns it off.
    rate_limit: str = Field("20/second;600/minute", alias="RateLimit")
    # Sealing to a bundle: single values for one identity share a data key for this long
    # (kamus/server/sealing.py); 0: a fresh data key and HPKE wrap per request.
    data_key_reuse_seconds: float = Field(0.0, ge=0, le=300, alias="DataKeyReuseSeconds")
    trusted_proxies: CommaList = Field(default_factory=list, alias="TrustedProxies")
    client_ip_header: str = Field("X-Forwarded-For", alias="ClientIpHeader")
    # The signed public key bundle to seal with (the chart mounts the decryptor's ConfigMap
    # here); then the encryptor needs no master key and no KMS decrypt permission.
    sealing_keys_file: Path | None = Field(None, alias="SealingKeysFile")
    # The anchor fingerprint the bundle file must be signed by (or link from). Unset: the first
    # bundle read is trusted, and every later one must come from its anchor.
    trust_anchor: str | None = Field(None, alias="TrustAnchor")
    # "m1" (sealed to the public keys, or the KMS key in an m1 envelope); "legacy": a1/e1, for
    # as long as some decryptor is older than m1 (docs/offline-encryption.md, upgrade order).
    output_format: Literal["m1", "legacy"] = Field("m1", alias="OutputFormat")
    # GET /ui, the encrypt page (encryptor/page.py, docs/ui.md).
    ui: bool = Field(True, alias="Ui")

    _split = field_validator("trusted_proxies", "audiences", mode="before")(_split_commas)

    @field_validator("authentication", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class ControllerSettings(_Section):
    reconciliation_interval_seconds: float = Field(
        60.0, gt=0, alias="ReconciliationIntervalInSeconds"
    )
    qps: float = Field(20.0, gt=0, alias="Qps")
    burst: int = Field(40, ge=1, alias="Burst")
    workers: int = Field(4, ge=1, alias="Workers")
    lease_name: str = Field("kamus-controller", alias="LeaseName")
    lease_namespace: str | None = Field(None, alias="LeaseNamespace")
    # Whole seconds: a Lease stores leaseDurationSeconds as an integer.
    lease_duration_seconds: int = Field(15, ge=2, alias="LeaseDurationSeconds")
    renew_deadline_seconds: int = Field(10, ge=2, alias="RenewDeadlineSeconds")
    retry_period_seconds: int = Field(2, ge=1, alias="RetryPeriodSeconds")
    watch_timeout_seconds: int = Field(300, ge=1, alias="WatchTimeoutSeconds")
    identity: str | None = Field(None, alias="Identity")
    # As the decryptor: a KamusSecret for the 'default' service account is refused.
    deny_default_service_account: bool = Field(True, alias="DenyDefaultServiceAccount")
    # Secret types refused on top of the built-in rules (controller/reconcile.py).
    denied_secret_types: CommaList = Field(default_factory=list, alias="DeniedSecretTypes")
    # Label and annotation prefixes never copied, on top of the built-in ones.
    denied_metadata_prefixes: CommaList = Field(
        default_factory=list, alias="DeniedMetadataPrefixes"
    )

    _split = field_validator("denied_secret_types", "denied_metadata_prefixes", mode="before")(
        _split_commas
    )

    @field_validator("denied_metadata_prefixes")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not _DOMAIN_PREFIX.fullmatch(entry):
                raise ValueError(
                    f"{entry!r} is not a label or annotation prefix: write a domain "
                    "(example.org, which covers its subdomains) or a domain and name prefix "
                    "(example.org/team)"
                )
        return value

    @model_validator(mode="after")
    def _election_timing(self) -> Self:
        # The same rule as client-go's leader election: a leader must get several renewal
        # attempts before its lease can expire under it.
        if not (
            self.lease_duration_seconds
            > self.renew_deadline_seconds
            > 1.2 * self.retry_period_seconds
        ):
            raise ValueError(
                "need Controller__LeaseDurationSeconds > Controller__RenewDeadlineSeconds > "
                "1.2 x Controller__RetryPeriodSeconds"
            )
        return self


class InjectorSettings(_Section):
    """``kamus serve injector`` (injector/): what the admission webhook injects, and its own TLS."""

    # The injected kamus-init container: its image (the chart's decryptor image), how the
    # kubelet pulls it, and the decryptor it asks (KAMUS_URL).
    image: str = Field("", alias="Image")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", alias="ImagePullPolicy"
    )
    decryptor_url: str = Field("", alias="DecryptorUrl")
    # An https decryptor's CA certificates (PEM), given to kamus-init as $KAMUS_CA_CERT.
    decryptor_ca_file: Path | None = Field(None, alias="DecryptorCaFile")
    # The label the chart's decryptor NetworkPolicy admits ("key=value"), added to every pod.
    client_label: str = Field("kamus.soluto.com/client=true", alias="ClientLabel")
    run_as_user: int = Field(10001, ge=1, alias="RunAsUser")
    cpu_request: str = Field("10m", alias="CpuRequest")
    memory_request: str = Field("64Mi", alias="MemoryRequest")
    memory_limit: str = Field("128Mi", alias="MemoryLimit")
    # The in-memory volume counts against the pod's memory: a bound on what it may hold.
    volume_size_limit: str = Field("1Mi", alias="VolumeSizeLimit")
    # The projected token's lifetime; the kubelet refuses less than 10 minutes.
    token_expiration_seconds: int = Field(600, ge=600, le=86400, alias="TokenExpirationSeconds")
    # Built-in TLS (when Server__TlsCertFile is unset): where the CA Secret and the Lease live
    # (else POD_NAMESPACE), the Service the leaf names, and the webhook whose caBundle the
    # Lease's holder keeps current.
    namespace: str | None = Field(None, alias="Namespace")
    service_name: str = Field("kamus-injector", alias="ServiceName")
    ca_secret_name: str = Field("kamus-injector-ca", alias="CaSecretName")
    webhook_name: str = Field("kamus-injector", alias="WebhookName")
    lease_name: str = Field("kamus-injector-ca", alias="LeaseName")
    leaf_validity_seconds: int = Field(30 * 86400, ge=3, alias="LeafValiditySeconds")
    # More names or addresses for the leaf (tests and `kamus doctor` use 127.0.0.1).
    extra_hosts: CommaList = Field(default_factory=list, alias="ExtraHosts")

    _split = field_validator("extra_hosts", mode="before")(_split_commas)

    @field_validator("client_label")
    @classmethod
    def _label(cls, value: str) -> str:
        key, sep, _ = value.partition("=")
        if not sep or not key:
            raise ValueError(
                "Injector__ClientLabel is key=value, e.g. kamus.soluto.com/client=true"
            )
        return value


class ServerSettings(_Section):
    # TLS serving (the Helm chart mounts these from a Secret, or from cert-manager).
    tls_cert_file: Path | None = Field(None, alias="TlsCertFile")
    tls_key_file: Path | None = Field(None, alias="TlsKeyFile")
    tls_client_ca_file: Path | None = Field(None, alias="TlsClientCaFile")
    # How often to look for renewed certificate files (kamus/server/tls.py); 0: read them once.
    tls_reload_seconds: float = Field(10.0, ge=0, alias="TlsReloadSeconds")
    max_request_body_bytes: int = Field(1024 * 1024, ge=1, alias="MaxRequestBodyBytes")
    retry_after_seconds: int = Field(5, ge=1, alias="RetryAfterSeconds")
    max_batch_items: int = Field(500, ge=1, alias="MaxBatchItems")
    batch_concurrency: int = Field(32, ge=1, alias="BatchConcurrency")
    workers: int = Field(1, ge=1, le=64, alias="Workers")
    # On SIGTERM: stop accepting, let requests in flight finish for up to this long, then exit.
    # Under Kubernetes' default grace period (30 s), which the chart keeps.
    shutdown_timeout_seconds: int = Field(20, ge=1, alias="ShutdownTimeoutSeconds")
    # A request's headers must arrive within this long (kamus/server/http.py: against slowloris).
    header_timeout_seconds: float = Field(10.0, gt=0, alias="HeaderTimeoutSeconds")
    # Connections and requests open at once per process; past it, 503 at once.
    max_connections: int = Field(1000, ge=1, alias="MaxConnections")
    # The whole body must arrive within this long of its headers (kamus/server/http.py).
    body_timeout_seconds: float = Field(10.0, gt=0, alias="BodyTimeoutSeconds")
    # Connections open at once from one client address; Encryptor__TrustedProxies are exempt.
    max_connections_per_client: int = Field(100, ge=1, alias="MaxConnectionsPerClient")

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both Server__TlsCertFile and Server__TlsKeyFile, or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("Server__TlsClientCaFile needs Server__TlsCertFile/TlsKeyFile")
        return self


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", alias="Level")

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    key_management: KeyManagementSettings = Field(
        default_factory=KeyManagementSettings, alias="KeyManagement"
    )
    active_directory: ActiveDirectorySettings = Field(
        default_factory=ActiveDirectorySettings, alias="ActiveDirectory"
    )
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings, alias="Kubernetes")
    encryptor: EncryptorSettings = Field(default_factory=EncryptorSettings, alias="Encryptor")
    decryptor: DecryptorSettings = Field(default_factory=DecryptorSettings, alias="Decryptor")
    controller: ControllerSettings = Field(default_factory=ControllerSettings, alias="Controller")
    injector: InjectorSettings = Field(default_factory=InjectorSettings, alias="Injector")
    server: ServerSettings = Field(default_factory=ServerSettings, alias="Server")
    logging: LoggingSettings = Field(default_factory=LoggingSettings, alias="Logging")
