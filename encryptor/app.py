"""The public encryptor: anyone may encrypt for a service account; nobody can decrypt here.

This process never loads the decryption endpoint, nor the Kubernetes client unless caller
authentication is on (encryptor/auth.py).
"""

import asyncio
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from crypto import KeyManager
from crypto.errors import KeyManagerUnavailable, KeyNotFoundError
from encryptor.auth import EncryptorCallers
from encryptor.fast import FastEncrypt
from encryptor.models import BatchEncryptRequest, EncryptRequest
from kamus.server.addresses import parse_networks
from kamus.server.health import WatchedKeyManager, readiness
from kamus.server.identity import sa_id
from kamus.server.kubeauth.callers import Identity
from kamus.server.metrics import Metrics
from kamus.server.providers import ConfigurationError, build_key_manager
from kamus.server.ratelimit import ClientRateLimiter, parse_limits
from kamus.server.settings import Settings
from kamus.server.web.api import (
    READINESS_RESPONSES,
    BatchItem,
    BatchResponse,
    check_batch_size,
    key_manager_unavailable,
)
from kamus.server.web.app import KamusApp, create_base_app
from kamus.server.web.middleware import annotate
from kamus.server.web.problems import ApiError, problem_responses

ENCRYPT_PATHS = ("/api/v1/encrypt", "/encrypt")
BATCH_PATH = "/api/v2/encrypt"


def build_rate_limiter(settings: Settings, metrics: Metrics) -> ClientRateLimiter:
    try:
        return ClientRateLimiter(
            parse_limits(settings.encryptor.rate_limit),
            metrics=metrics,
            trusted_proxies=parse_networks(settings.encryptor.trusted_proxies),
            client_ip_header=settings.encryptor.client_ip_header,
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def create_app(settings: Settings | None = None, key_manager: KeyManager | None = None) -> KamusApp:
    settings = settings or Settings()
    metrics = Metrics()
    rate_limiter = build_rate_limiter(settings, metrics)
    rate_limit = [Depends(rate_limiter)]
    keys = WatchedKeyManager(key_manager or build_key_manager(settings, observer=metrics), metrics)
    provider = settings.key_management.provider
    callers = EncryptorCallers(settings, metrics, client_address=rate_limiter.client_key)
    Caller = Annotated[Identity | None, Depends(callers.caller)]
    app = create_base_app(
        service="encryptor",
        title="Kamus encryptor",
        description="Encrypts secrets so that only one Kubernetes service account can read them.",
        settings=settings,
        metrics=metrics,
        audited_paths=(*ENCRYPT_PATHS, BATCH_PATH),
        lifespan=callers.lifespan,
    )

    def refuse_default(request: Request, service_account: str, field: str) -> None:
        if service_account == "default":
            # Refused before any crypto or key creation: every pod without its own service
            # account runs as `default`, so a value for it is readable by all of them.
            annotate(request, reason="default service account")
            raise ApiError(
                400,
                "default-service-account",
                f"{field}: the 'default' service account cannot be used; create a "
                "dedicated service account for the workload and encrypt for it",
            )

    encrypted = metrics.encryptions.labels(provider, "success")

    async def seal(request: Request, plaintexts: list[str], identity: str) -> list[str]:
        """Encrypt values for one identity; all of them, or an HTTP error."""

        async def each(slots: asyncio.Semaphore, plaintext: str) -> str:
            async with slots:
                return await keys.encrypt(plaintext.encode("utf-8"), identity)

        try:
            if len(plaintexts) == 1:  # a v1 encrypt: no task to create and schedule
                ciphertexts = [await keys.encrypt(plaintexts[0].encode("utf-8"), identity)]
            else:
                slots = asyncio.Semaphore(settings.server.batch_concurrency)
                ciphertexts = await asyncio.gather(*(each(slots, p) for p in plaintexts))
        except KeyNotFoundError as exc:
            metrics.encryptions.labels(provider, "no_key").inc(len(plaintexts))
            annotate(request, reason=f"key {exc.key_name} does not exist")
            raise ApiError(400, "no-key", f"service-account: {exc}") from None
        except KeyManagerUnavailable as exc:
            metrics.encryptions.labels(provider, "unavailable").inc(len(plaintexts))
            raise key_manager_unavailable(request, exc, settings) from None
        encrypted.inc(len(plaintexts))
        return list(ciphertexts)

    async def encrypt_one(request: Request, body: EncryptRequest, caller: Identity | None) -> str:
        annotate(request, namespace=body.namespace, service_account=body.service_account)
        refuse_default(request, body.service_account, "service-account")
        await callers.authorize(request, caller, body.namespace)
        [ciphertext] = await seal(request, [body.data], sa_id(body.namespace, body.service_account))
        return ciphertext

    async def encrypt(body: EncryptRequest, request: Request, caller: Caller) -> PlainTextResponse:
        return PlainTextResponse(await encrypt_one(request, body, caller))

    for path in ENCRYPT_PATHS:
        app.add_api_route(
            path,
            encrypt,
            methods=["POST"],
            dependencies=rate_limit,
            response_class=PlainTextResponse,
            summary="Encrypt a secret for a service account",
            tags=["encrypt"],
            responses={
                200: {"content": {"text/plain": {}}, "description": "The ciphertext."},
                400: {
                    "description": "A field is missing or invalid, the SA is `default`, or it "
                    "has no key and keys are not created here."
                },
                401: {"description": "Authentication is on, and no token or a rejected one."},
                403: {"description": "Authentication is on, and RBAC does not allow it."},
                413: {"description": "The request body is over the size limit."},
                429: {"description": "This client sent too many requests; see Retry-After."},
                503: {"description": "The key manager is unavailable; see Retry-After."},
            },
        )

    @app.post(
        BATCH_PATH,
        dependencies=rate_limit,
        tags=["encrypt"],
        summary="Encrypt many secrets for one service account",
        response_model_exclude_none=True,
        responses=problem_responses(
            {
                400: "A field is missing or invalid, or the SA is `default` or has no key.",
                401: "Authentication is on, and no token or a rejected one.",
                403: "Authentication is on, and RBAC does not allow it.",
                413: "Too many items, or the body is over the size limit.",
                429: "This client sent too many values; see Retry-After.",
                503: "The key manager is unavailable; see Retry-After.",
            }
        ),
    )
    async def encrypt_batch(
        body: BatchEncryptRequest, request: Request, caller: Caller
    ) -> BatchResponse:
        annotate(request, namespace=body.namespace, service_account=body.service_account)
        check_batch_size(request, body.items, settings)
        # Each item is an encryption (a KMS call): the whole count, decided now that it is known
        # and before any, including the one value the route's dependency took as a deposit.
        rate_limiter.charge(request, len(body.items), paid=1)
        refuse_default(request, body.service_account, "serviceAccount")
        await callers.authorize(request, caller, body.namespace)
        identity = sa_id(body.namespace, body.service_account)
        ciphertexts = await seal(request, list(body.items.values()), identity)
        annotate(request, items=len(ciphertexts))
        items = {name: BatchItem(data=c) for name, c in zip(body.items, ciphertexts, strict=True)}
        return BatchResponse(items=items)

    if not callers.enabled:

        async def encrypt_fast(request: Request, body: EncryptRequest) -> str:
            rate_limiter.charge(request, 1)  # the route's dependency
            return await encrypt_one(request, body, None)

        app.outer_middleware.append(
            lambda inner: FastEncrypt(
                inner,
                paths=ENCRYPT_PATHS,
                handler=encrypt_fast,
                service="encryptor",
                metrics=metrics,
                max_body_bytes=settings.server.max_request_body_bytes,
            )
        )

    @app.get("/api/v1/isAlive", tags=["health"], summary="Kamus's liveness check")
    async def is_alive() -> bool:
        return True

    @app.get(
        "/readyz",
        tags=["health"],
        summary="Ready to serve: the key manager answers",
        response_model=None,
        responses=READINESS_RESPONSES,
    )
    async def readyz() -> JSONResponse:
        return await readiness(keys.dependency, *callers.dependencies)

    return app
