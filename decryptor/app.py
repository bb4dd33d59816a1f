"""The internal decryptor: returns a plaintext only to the service account it was made for.

The caller proves who it is with its service-account token (``Authorization: Bearer``), checked by
the Kubernetes TokenReview API; the ciphertext is then opened *as that identity*, so a value made
for another service account simply does not decrypt.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, Field

from crypto import CiphertextFormat, DecryptionError, KeyManager, classify
from crypto.errors import KeyManagerUnavailable
from crypto.lifecycle import RetiredKey, State
from decryptor.rewrap import REWRAP_PATH, RewrapCallers
from decryptor.rewrap import router as rewrap_router
from decryptor.values import entered, stanza_kinds, undecryptable
from kamus.server.errors import ConfigurationError
from kamus.server.health import Dependency, WatchedKeyManager, readiness
from kamus.server.identity import parse_service_account_user, sa_id
from kamus.server.kubeauth.callers import TokenCheck, bearer, peer_address
from kamus.server.kubeauth.reviews import (
    Authenticator,
    AuthUnavailable,
    StaticTokenFileAuthenticator,
    token_reviews,
)
from kamus.server.metrics import Metrics
from kamus.server.process import cache_cleared_on_sighup
from kamus.server.providers import build_key_manager
from kamus.server.settings import Settings
from kamus.server.web.api import (
    READINESS_RESPONSES,
    BatchItem,
    BatchItems,
    BatchResponse,
    check_batch_size,
    key_manager_unavailable,
)
from kamus.server.web.app import KamusApp, create_base_app
from kamus.server.web.middleware import annotate
from kamus.server.web.problems import ApiError, problem_responses

log = logging.getLogger(__name__)

DECRYPT_PATHS = ("/api/v1/decrypt", "/decrypt")
POD_TOKEN = bearer("ServiceAccountToken", "The calling pod's Kubernetes service account token.")
BATCH_PATH = "/api/v2/decrypt"


class DecryptRequest(BaseModel):
    data: str = Field(description="A ciphertext from the encryptor (or from Kamus).")


class BatchDecryptRequest(BaseModel):
    items: BatchItems = Field(description="Ciphertexts by name, e.g. the files of a ConfigMap.")


async def build_authenticator(settings: Settings, metrics: Metrics) -> Authenticator:
    kube = settings.kubernetes
    if kube.token_auth_file is not None:
        try:
            return StaticTokenFileAuthenticator(kube.token_auth_file)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
    decryptor = settings.decryptor
    _, authenticator = await token_reviews(
        kube,
        decryptor.audiences,
        cache_seconds=decryptor.token_review_cache_seconds,
        cache_size=decryptor.token_review_cache_size,
        observe=lambda result: metrics.token_review_cache.labels(result).inc(),
        access_review_cache_seconds=decryptor.access_review_cache_seconds,
    )
    return authenticator


@dataclass
class Decryptor:
    """What the decryptor's handlers share, on ``app.state.decryptor``."""

    settings: Settings
    metrics: Metrics
    keys: WatchedKeyManager
    tokens: TokenCheck = field(init=False)
    kubernetes: Dependency = field(init=False)
    decrypt_only: "DecryptOnlyWarnings" = field(init=False)
    # Given by a test (which closes it), else built at start-up by the lifespan.
    given_authenticator: Authenticator | None = None
    auth: Authenticator | None = None

    def __post_init__(self) -> None:
        warnings = self.settings.decryptor.decrypt_only_warning_seconds
        self.decrypt_only = DecryptOnlyWarnings(warnings)
        self.auth = self.given_authenticator
        self.kubernetes = Dependency(
            "kubernetes", self._apiserver_answers, self.metrics.dependency_up
        )
        self.tokens = TokenCheck(
            self.kubernetes,
            self.metrics,
            str(self.settings.server.retry_after_seconds),
            what_to_send="the pod's service account token",
            rejected_hint="send a current service account token of the pod",
        )

    def authenticator(self) -> Authenticator:
        if self.auth is None:
            raise ApiError(
                503, "starting", "the decryptor is starting", headers={"Retry-After": "1"}
            )
        return self.auth

    async def _apiserver_answers(self) -> bool:
        try:
            await self.authenticator().ping()
        except (AuthUnavailable, HTTPException):
            return False
        return True

    async def open_value(self, ciphertext: str, identity: str) -> bytes:
        """Decrypt one value, counted by format, key id and outcome."""
        provider = self.settings.key_management.provider
        fmt = classify(ciphertext)
        decryptions = self.metrics.decryptions
        try:
            opened = await self.keys.open(ciphertext, identity)
        except RetiredKey as exc:
            decryptions.labels(provider, str(fmt), exc.key_id, "retired").inc()
            raise
        except DecryptionError:
            decryptions.labels(provider, str(fmt), "", "failure").inc()
            raise
        except KeyManagerUnavailable:
            decryptions.labels(provider, str(fmt), "", "unavailable").inc()
            raise
        decryptions.labels(provider, str(fmt), opened.key_id, "success").inc()
        if fmt.is_legacy:
            self.metrics.legacy_decryptions.labels(provider, str(fmt)).inc()
        if opened.state is State.DECRYPT_ONLY:
            self.decrypt_only.seen(opened.key_id, fmt, identity)
        return opened.plaintext


class DecryptOnlyWarnings:
    """The operator's cue to rewrap: one log line per decrypt-only key id per interval, naming
    an identity that still uses it (never a value)."""

    def __init__(self, interval_seconds: float, clock: Callable[[], float] = time.monotonic):
        self._interval = interval_seconds
        self._clock = clock
        self._last: dict[str, float] = {}

    def seen(self, key_id: str, fmt: CiphertextFormat, identity: str) -> None:
        now = self._clock()
        last = self._last.get(key_id)
        if last is not None and now - last < self._interval:
            return
        if len(self._last) > 1024:  # key ids are few; a bound all the same
            self._last.clear()
        self._last[key_id] = now
        log.warning(
            "values under the decrypt-only key %r (format %s) are still decrypted, e.g. for %s: "
            "run `kamus rewrap` on their sources before retiring the key (docs/rotation.md)",
            key_id or "unknown",
            fmt,
            identity,
        )


def state_of(request: Request) -> Decryptor:
    """The handlers' shared state. Read directly rather than as a FastAPI dependency: each
    dependency costs every request its resolution, and this one never fails."""
    state: Decryptor = request.app.state.decryptor
    return state


async def caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(POD_TOKEN)],
) -> str:
    """The caller's ``namespace:service-account``, proved by its token (one TokenReview).

    A dependency, so it runs before the body is validated: an unauthenticated caller learns
    nothing about what the API would accept."""
    # The peer: pods reach the decryptor directly, with no proxy to name another address.
    client = peer_address(request)
    state = state_of(request)
    identity = await state.tokens.identity(
        request, credentials, state.authenticator(), client=client
    )
    parsed = parse_service_account_user(identity.username)
    if parsed is None:
        annotate(request, reason="caller is not a service account")
        raise ApiError(403, "not-a-service-account", "only Kubernetes service accounts may decrypt")
    namespace, service_account = parsed
    annotate(request, namespace=namespace, service_account=service_account)
    if service_account == "default" and state.settings.decryptor.deny_default_service_account:
        annotate(request, reason="default service account")
        raise ApiError(
            403,
            "default-service-account",
            "the 'default' service account may not decrypt; run the pod with a dedicated "
            "service account",
        )
    return sa_id(namespace, service_account)


Caller = Annotated[str, Depends(caller)]


router = APIRouter()


async def decrypt(body: DecryptRequest, request: Request, identity: Caller) -> Response:
    state = state_of(request)
    ciphertext = entered(body.data)
    annotate(request, format=str(classify(ciphertext)))
    if kinds := stanza_kinds(ciphertext):
        annotate(request, stanzas=",".join(kinds))
    try:
        plaintext = await state.open_value(ciphertext, identity)
    except DecryptionError as exc:
        annotate(request, reason=exc.reason)
        raise ApiError(400, "undecryptable", undecryptable(identity, exc)) from None
    except KeyManagerUnavailable as exc:
        raise key_manager_unavailable(request, exc, state.settings) from None
    return Response(plaintext, media_type="text/plain; charset=utf-8")


for _path in DECRYPT_PATHS:
    router.add_api_route(
        _path,
        decrypt,
        methods=["POST"],
        response_class=PlainTextResponse,
        summary="Decrypt a secret as the calling service account",
        tags=["decrypt"],
        responses={
            200: {"content": {"text/plain": {}}, "description": "The plaintext."},
            400: {"description": "The body is invalid, or the data does not decrypt."},
            401: {"description": "No token, or Kubernetes did not accept it."},
            403: {"description": "The caller is not an allowed service account."},
            413: {"description": "The request body is over the size limit."},
            503: {"description": "Kubernetes or the key manager is unavailable."},
        },
    )


@router.post(
    BATCH_PATH,
    tags=["decrypt"],
    summary="Decrypt many secrets as the calling service account, with one TokenReview",
    response_model_exclude_none=True,
    responses=problem_responses(
        {
            400: "The body is invalid.",
            401: "No token, or Kubernetes did not accept it.",
            403: "The caller is not an allowed service account.",
            413: "Too many items, or the body is over the size limit.",
            503: "Kubernetes or the key manager is unavailable; see Retry-After.",
        }
    ),
)
async def decrypt_batch(
    body: BatchDecryptRequest, request: Request, identity: Caller
) -> BatchResponse:
    state = state_of(request)
    check_batch_size(request, body.items, state.settings)
    slots = asyncio.Semaphore(state.settings.server.batch_concurrency)
    reasons: list[str] = []
    kinds: set[str] = set()

    async def one(ciphertext: str) -> BatchItem:
        async with slots:
            try:
                kinds.update(stanza_kinds(entered(ciphertext)))
                plaintext = await state.open_value(entered(ciphertext), identity)
            except DecryptionError as exc:
                reasons.append(exc.reason)
                return BatchItem(error=undecryptable(identity, exc))
        try:
            return BatchItem(data=plaintext.decode("utf-8"))
        except UnicodeDecodeError:
            return BatchItem(error="the plaintext is not UTF-8 text; use /api/v1/decrypt")

    try:
        results = await asyncio.gather(*(one(v) for v in body.items.values()))
    except KeyManagerUnavailable as exc:
        raise key_manager_unavailable(request, exc, state.settings) from None
    annotate(request, items=len(results), failed=len(reasons))
    if kinds:
        annotate(request, stanzas=",".join(sorted(kinds)))
    if reasons:
        annotate(request, reason="; ".join(sorted(set(reasons)))[:500])
    return BatchResponse(items=dict(zip(body.items, results, strict=True)))


@router.get(
    "/api/v1/isAlive",
    tags=["health"],
    summary="May this service review tokens?",
    response_model=None,
    responses={
        200: {
            "description": "true: it may create TokenReviews.",
            "content": {"application/json": {"schema": {"type": "boolean"}}},
        },
        503: {
            "description": "false: it may not, or the Kubernetes API does not answer.",
            "content": {"application/json": {"schema": {"type": "boolean"}}},
        },
    },
)
async def is_alive(request: Request) -> JSONResponse:
    state = state_of(request)
    try:
        allowed = await state.authenticator().can_review_tokens()
    except AuthUnavailable:
        allowed = False
    return JSONResponse(allowed, status_code=200 if allowed else 503)


@router.get(
    "/readyz",
    tags=["health"],
    summary="Ready to serve: the Kubernetes API and the key manager answer",
    response_model=None,
    responses=READINESS_RESPONSES,
)
async def readyz(request: Request) -> JSONResponse:
    state = state_of(request)
    if state.auth is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    return await readiness(state.kubernetes, state.keys.dependency)


@asynccontextmanager
async def publishing(state: "Decryptor") -> AsyncIterator[None]:
    """The bundle publisher in the background, off unless Decryptor__PublicKeysConfigMap is
    set: only then is its module loaded (docs/performance.md: the memory budget)."""
    if not state.settings.decryptor.public_keys_config_map:
        yield
        return
    from decryptor.publish import publishing as publisher

    async with publisher(state.settings, state.metrics, state.keys.inner):
        yield


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: Decryptor = app.state.decryptor
    rewraps: RewrapCallers = app.state.rewrap
    if state.given_authenticator is not None:  # the caller's, and the caller closes it
        with cache_cleared_on_sighup(state.keys.inner):
            async with rewraps.lifespan(), publishing(state):
                yield
        return
    try:
        state.auth = await build_authenticator(state.settings, state.metrics)
    except ConfigurationError as exc:
        log.error("the decryptor cannot start: %s", exc)
        raise
    try:
        with cache_cleared_on_sighup(state.keys.inner):
            async with rewraps.lifespan(), publishing(state):
                yield
    finally:
        await state.auth.close()
        state.auth = None


def create_app(
    settings: Settings | None = None,
    key_manager: KeyManager | None = None,
    authenticator: Authenticator | None = None,
) -> KamusApp:
    settings = settings or Settings()
    metrics = Metrics()
    keys = WatchedKeyManager(key_manager or build_key_manager(settings, observer=metrics), metrics)
    app = create_base_app(
        service="decryptor",
        title="Kamus decryptor",
        description="Decrypts secrets for the Kubernetes service account they were made for. "
        "Internal to the cluster: never expose it.",
        settings=settings,
        metrics=metrics,
        audited_paths=(*DECRYPT_PATHS, BATCH_PATH, REWRAP_PATH),
        lifespan=lifespan,
    )
    app.state.decryptor = Decryptor(settings, metrics, keys, given_authenticator=authenticator)
    app.state.rewrap = RewrapCallers(settings, metrics, keys)
    # The router's routes as the app's own: FastAPI dispatches an included router through a
    # matching layer of its own on every request, which cost a v1 decrypt about 5% here.
    app.router.routes.extend(router.routes)
    app.router.routes.extend(rewrap_router.routes)
    return app
