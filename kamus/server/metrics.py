"""Prometheus metrics, one registry per app so tests can build many apps in one process."""

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

# The *_created series double the output and no dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kamus_http_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.latency = Histogram(
            "kamus_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["route", "method"],
            registry=self.registry,
        )
        self.encryptions = Counter(
            "kamus_encryptions",
            "Encryptions by key provider and outcome.",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.decryptions = Counter(
            "kamus_decryptions",
            "Decryptions by key provider, ciphertext format, key id (empty when the value did "
            "not open) and outcome: a key whose count stops growing is no longer in use and can "
            "be retired (docs/rotation.md).",
            ["provider", "format", "key_id", "outcome"],
            registry=self.registry,
        )
        self.legacy_decryptions = Counter(
            "kamus_legacy_decryptions",
            "Ciphertexts written by Kamus that were read successfully; re-encrypt them, then "
            "switch legacy reading off (KeyManagement__AES__AllowLegacyCiphertexts=false for the "
            "AES provider, KeyManagement__AllowLegacyCiphertexts=false for the KMS providers).",
            ["provider", "format"],
            registry=self.registry,
        )
        self.rewraps = Counter(
            "kamus_rewraps",
            "Values through POST /api/v2/rewrap by status: rewrapped, unchanged, stale (checked "
            "only) or failed.",
            ["status"],
            registry=self.registry,
        )
        self.public_keys_published = Counter(
            "kamus_public_keys_published",
            "Rounds of the decryptor's public key bundle publisher by outcome: created, updated, "
            "unchanged, conflict (another writer won; re-read next round) or error.",
            ["outcome"],
            registry=self.registry,
        )
        self.kms_calls = Counter(
            "kamus_kms_calls",
            "Calls to the cloud key manager by provider, operation and outcome.",
            ["provider", "operation", "outcome"],
            registry=self.registry,
        )
        self.kms_latency = Histogram(
            "kamus_kms_call_duration_seconds",
            "Latency of calls to the cloud key manager, retries included.",
            ["provider", "operation"],
            registry=self.registry,
        )
        self.kms_keys_created = Counter(
            "kamus_kms_keys_created",
            "Service-account keys this process created in the cloud key manager.",
            ["provider"],
            registry=self.registry,
        )
        self.kms_throttles = Counter(
            "kamus_kms_throttled",
            "Answers of the cloud key manager refusing a call for its request rate (throttling), "
            "each retried with backoff within KeyManagement__TimeoutSeconds. AWS counts those "
            "that outlast botocore's own retries.",
            ["provider", "operation"],
            registry=self.registry,
        )
        self.token_reviews = Counter(
            "kamus_token_reviews",
            "Caller authentications by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "kamus_rate_limited",
            "Requests refused with 429 because their client went over Encryptor__RateLimit.",
            registry=self.registry,
        )
        self.dependency_up = Gauge(
            "kamus_dependency_up",
            "Whether a dependency (kubernetes, key-manager) answered its last call (1) or not.",
            ["dependency"],
            registry=self.registry,
        )
        self.token_review_cache = Counter(
            "kamus_token_review_cache",
            "TokenReview cache lookups: hit, miss (a TokenReview was sent) or coalesced (joined "
            "one in flight for the same token).",
            ["result"],
            registry=self.registry,
        )
        self.data_key_cache_lookups = Counter(
            "kamus_data_key_cache",
            "Data-key cache lookups (KeyManagement__DataKeyCache__*): hit, miss (the KMS "
            "unwrapped the key) or coalesced (joined an unwrap in flight for the same key).",
            ["result"],
            registry=self.registry,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One HTTP request answered, by route template (bounded: templates, methods, codes)."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            # labels() costs a locked lookup per call; a request answered in tens of
            # microseconds (encryptor/fast.py) should not pay it twice.
            children = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route, method),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    # crypto.kms.KmsObserver, so providers report without knowing Prometheus.
    def kms_call(self, provider: str, operation: str, outcome: str, seconds: float) -> None:
        self.kms_calls.labels(provider, operation, outcome).inc()
        self.kms_latency.labels(provider, operation).observe(seconds)

    def key_created(self, provider: str) -> None:
        self.kms_keys_created.labels(provider).inc()

    def kms_throttled(self, provider: str, operation: str) -> None:
        self.kms_throttles.labels(provider, operation).inc()

    def data_key_cache(self, result: str) -> None:
        self.data_key_cache_lookups.labels(result).inc()


class ControllerMetrics(Metrics):
    def __init__(self) -> None:
        super().__init__()
        self.controller_reconciles = Counter(
            "kamus_controller_reconciles",
            "KamusSecret reconciles by outcome (created, updated, unchanged, decryption_failed, "
            "not_owned, unavailable, error, gone).",
            ["outcome"],
            registry=self.registry,
        )
        self.controller_reconcile_duration = Histogram(
            "kamus_controller_reconcile_duration_seconds",
            "Time to reconcile one KamusSecret.",
            registry=self.registry,
        )
        self.controller_kamus_secrets = Gauge(
            "kamus_controller_kamussecrets",
            "KamusSecrets known to the leading controller.",
            registry=self.registry,
        )
        self.controller_leader = Gauge(
            "kamus_controller_leader",
            "1 while this process holds the leader lease and reconciles.",
            registry=self.registry,
        )


class InjectorMetrics(Metrics):
    def __init__(self) -> None:
        super().__init__()
        self.injector_admissions = Counter(
            "kamus_injector_admissions",
            "Pod admissions answered by outcome (injected, skipped, denied).",
            ["outcome"],
            registry=self.registry,
        )
        self.injector_certificate_expiry = Gauge(
            "kamus_injector_certificate_expiry_timestamp_seconds",
            "When the certificate this replica serves expires (Unix time).",
            registry=self.registry,
        )
        self.injector_ca_bundle_patches = Counter(
            "kamus_injector_ca_bundle_patches",
            "Writes of the webhook configuration's caBundle by outcome (patched, unchanged, "
            "error), by the replica holding the Lease.",
            ["outcome"],
            registry=self.registry,
        )
