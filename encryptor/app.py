"""The public encryptor: anyone may encrypt for a service account; nobody can decrypt here.

This process never loads the decryption endpoint, nor the Kubernetes client unless caller
authentication is on (encryptor/auth.py).
"""

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import Counter

from crypto import KeyManager
from crypto.errors import KeyManagerUnavailable, KeyNotFoundError
from encryptor.auth import USER_TOKEN, EncryptorCallers
from encryptor.fast import FastEncrypt
from encryptor.keys import build_keys
from encryptor.models import BatchEncryptRequest, EncryptRequest
from encryptor.page import add_ui
from kamus.server.addresses import parse_networks
from kamus.server.errors import ConfigurationError
from kamus.server.health import WatchedKeyManager, readiness
from kamus.server.identity import DEFAULT_SERVICE_ACCOUNT_REFUSAL, sa_id
from kamus.server.kubeauth.callers import Identity
from kamus.server.metrics import Metrics
from kamus.server.ratelimit import ClientRateLimiter, parse_limits
from kamus.server.sealing import BundleSource, SealingKeyManager
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
KEYS_PATH = "/api/v2/keys"


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


@dataclass
class Encryptor:
    """What the encryptor's handlers share, on ``app.state.encryptor``."""

    settings: Settings
    metrics: Metrics
    keys: WatchedKeyManager
    rate_limiter: ClientRateLimiter
    callers: EncryptorCallers
    bundle: BundleSource | None
    # The success counter, looked up once: v1 encrypts are the hot path (docs/performance.md).
    _encrypted: Counter = field(init=False)

    def __post_init__(self) -> None:
        provider = self.settings.key_management.provider
        self._encrypted = self.metrics.encryptions.labels(provider, "success")

    async def seal(self, request: Request, plaintexts: list[str], identity: str) -> list[str]:
        """Encrypt values for one identity; all of them, or an HTTP error."""
        provider = self.settings.key_management.provider
        encryptions = self.metrics.encryptions
        try:
            if len(plaintexts) == 1:  # a v1 encrypt: no task to create and schedule
                ciphertexts = [await self.keys.encrypt(plaintexts[0].encode("utf-8"), identity)]
            else:
                ciphertexts = await self.keys.encrypt_many(
                    [p.encode("utf-8") for p in plaintexts],
                    identity,
                    self.settings.server.batch_concurrency,
                )
        except KeyNotFoundError as exc:
            encryptions.labels(provider, "no_key").inc(len(plaintexts))
            annotate(request, reason=f"key {exc.key_name} does not exist")
            raise ApiError(400, "no-key", f"service-account: {exc}") from None
        except KeyManagerUnavailable as exc:
            encryptions.labels(provider, "unavailable").inc(len(plaintexts))
            raise key_manager_unavailable(request, exc, self.settings) from None
        self._encrypted.inc(len(plaintexts))
        return list(ciphertexts)

    async def encrypt_one(
        self, request: Request, body: EncryptRequest, caller: Identity | None
    ) -> str:
        annotate(request, namespace=body.namespace, service_account=body.service_account)
        refuse_default(request, body.service_account, "service-account")
        await self.callers.authorize(request, caller, body.namespace)
        identity = sa_id(body.namespace, body.service_account)
        [ciphertext] = await self.seal(request, [body.data], identity)
        return ciphertext

    async def encrypt_fast(self, request: Request, body: EncryptRequest) -> str:
        """encryptor/fast.py's handler: the route's rate limit, then :meth:`encrypt_one`."""
        self.rate_limiter.charge(request, 1)
        return await self.encrypt_one(request, body, None)


def refuse_default(request: Request, service_account: str, field: str) -> None:
    if service_account == "default":
        annotate(request, reason="default service account")
        raise ApiError(
            400, "default-service-account", f"{field}: {DEFAULT_SERVICE_ACCOUNT_REFUSAL}"
        )


def state_of(request: Request) -> Encryptor:
    """The handlers' shared state. Read directly rather than as a FastAPI dependency: each
    dependency costs every request its resolution, and this one never fails."""
    state: Encryptor = request.app.state.encryptor
    return state


async def rate_limited(request: Request) -> None:
    """One value of the client's budget, before the body is read or the caller checked (so
    that bad bodies and bad tokens are limited too). A batch pays the rest in its handler."""
    state_of(request).rate_limiter.charge(request, 1)


async def authenticated(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(USER_TOKEN)],
) -> None:
    """With Encryptor__Authentication=kubernetes only: the caller, as Kubernetes says. A
    dependency of the routes, so it runs before the body is validated."""
    request.state.caller = await state_of(request).callers.identity(request, credentials)


# async, as every dependency here: FastAPI runs a plain `def` one in a worker thread.
async def caller(request: Request) -> Identity | None:
    """Who :func:`authenticated` found, or None with authentication off."""
    identity: Identity | None = getattr(request.state, "caller", None)
    return identity


Caller = Annotated[Identity | None, Depends(caller)]

# The encrypt routes; create_app adds the rate limit, and the caller check when it is on, to
# each: included with the router, they show in the OpenAPI document only when they apply.
encrypting = APIRouter(tags=["encrypt"])
health = APIRouter(tags=["health"])


async def encrypt(body: EncryptRequest, request: Request, caller: Caller) -> PlainTextResponse:
    return PlainTextResponse(await state_of(request).encrypt_one(request, body, caller))


for _path in ENCRYPT_PATHS:
    encrypting.add_api_route(
        _path,
        encrypt,
        methods=["POST"],
        response_class=PlainTextResponse,
        summary="Encrypt a secret for a service account",
        responses={
            200: {"content": {"text/plain": {}}, "description": "The ciphertext."},
            400: {
                "description": "A field is missing or invalid, the SA is `default`, or it has no "
                "key and keys are not created here."
            },
            401: {"description": "Authentication is on, and no token or a rejected one."},
            403: {"description": "Authentication is on, and RBAC does not allow it."},
            413: {"description": "The request body is over the size limit."},
            429: {"description": "This client sent too many requests; see Retry-After."},
            503: {"description": "The key manager is unavailable; see Retry-After."},
        },
    )


@encrypting.post(
    BATCH_PATH,
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
    state = state_of(request)
    annotate(request, namespace=body.namespace, service_account=body.service_account)
    check_batch_size(request, body.items, state.settings)
    # Each item is an encryption (a KMS call): the whole count, decided now that it is known and
    # before any, including the one value the route's dependency took as a deposit.
    state.rate_limiter.charge(request, len(body.items), paid=1)
    refuse_default(request, body.service_account, "serviceAccount")
    await state.callers.authorize(request, caller, body.namespace)
    identity = sa_id(body.namespace, body.service_account)
    ciphertexts = await state.seal(request, list(body.items.values()), identity)
    annotate(request, items=len(ciphertexts))
    items = {name: BatchItem(data=c) for name, c in zip(body.items, ciphertexts, strict=True)}
    return BatchResponse(items=items)


public_keys = APIRouter(tags=["keys"])


@public_keys.get(
    KEYS_PATH,
    summary="The signed public key bundle, for offline sealing (kamus keys fetch)",
    response_model=None,
    responses={
        200: {"content": {"application/json": {}}, "description": "The signed bundle."},
        304: {"description": "Not modified since the ETag sent in If-None-Match."},
        **problem_responses({503: "This encryptor has no valid bundle yet."}),
    },
)
async def keys(request: Request) -> Response:
    """Public and cacheable: anyone may seal; the bundle's signature, not this channel, says
    whose keys these are."""
    state = state_of(request)
    if state.bundle is None:
        raise ApiError(
            404,
            "no-key-bundle",
            "this encryptor has no public key bundle: its key provider seals with KMS keys, and "
            "no Encryptor__SealingKeysFile is set",
        )
    try:
        published = state.bundle.current()
    except KeyManagerUnavailable as exc:
        raise key_manager_unavailable(request, exc, state.settings) from None
    headers = {"ETag": published.etag, "Cache-Control": "public, max-age=300"}
    if published.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(published.text, media_type="application/json", headers=headers)


@health.get("/api/v1/isAlive", summary="Kamus's liveness check")
async def is_alive() -> bool:
    return True


@health.get(
    "/readyz",
    summary="Ready to serve: the key manager answers",
    response_model=None,
    responses=READINESS_RESPONSES,
)
async def readyz(request: Request) -> JSONResponse:
    state = state_of(request)
    return await readiness(state.keys.dependency, *state.callers.dependencies)


def create_app(settings: Settings | None = None, key_manager: KeyManager | None = None) -> KamusApp:
    settings = settings or Settings()
    metrics = Metrics()
    rate_limiter = build_rate_limiter(settings, metrics)
    manager, bundle = build_keys(settings, metrics, key_manager)
    keys = WatchedKeyManager(manager, metrics)
    if isinstance(manager, SealingKeyManager):
        # Not ready until the decryptor has published a valid bundle; /readyz looks again.
        try:
            manager.source.current()
        except KeyManagerUnavailable as exc:
            keys.dependency.failed(exc.reason)
    callers = EncryptorCallers(settings, metrics, client_address=rate_limiter.client_key)
    state = Encryptor(settings, metrics, keys, rate_limiter, callers, bundle)
    app = create_base_app(
        service="encryptor",
        title="Kamus encryptor",
        description="Encrypts secrets so that only one Kubernetes service account can read them.",
        settings=settings,
        metrics=metrics,
        audited_paths=(*ENCRYPT_PATHS, BATCH_PATH),
        lifespan=callers.lifespan,
    )
    app.state.encryptor = state
    checks = [Depends(rate_limited), *([Depends(authenticated)] if callers.enabled else [])]
    app.include_router(encrypting, dependencies=checks)
    app.include_router(health)
    app.include_router(public_keys)
    if settings.encryptor.ui:
        add_ui(app)
    if not callers.enabled:
        app.outer_middleware.append(
            lambda inner: FastEncrypt(
                inner,
                paths=ENCRYPT_PATHS,
                handler=state.encrypt_fast,
                service="encryptor",
                metrics=metrics,
                max_body_bytes=settings.server.max_request_body_bytes,
            )
        )
    return app
