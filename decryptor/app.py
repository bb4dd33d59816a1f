"""The internal decryptor: returns a plaintext only to the service account it was made for.

The caller proves who it is with its service-account token (``Authorization: Bearer``), checked by
the Kubernetes TokenReview API; the ciphertext is then opened *as that identity*, so a value made
for another service account simply does not decrypt.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from crypto import DecryptionError, KeyManager, classify
from crypto.errors import KeyManagerUnavailable
from decryptor.auth import (
    Authenticator,
    AuthUnavailable,
    NotAuthenticated,
    StaticTokenFileAuthenticator,
    TokenReviewAuthenticator,
)
from kamus.identity import parse_service_account_user, sa_id
from kamus.kube import create_api_client
from kamus.metrics import Metrics
from kamus.providers import ConfigurationError, build_key_manager
from kamus.settings import Settings
from kamus.web import annotate, create_base_app

log = logging.getLogger(__name__)

DECRYPT_PATHS = ("/api/v1/decrypt", "/decrypt")

# auto_error=False: a missing token is our 401 with a useful message, not FastAPI's 403.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ServiceAccountToken",
    description="The calling pod's Kubernetes service account token.",
)


class DecryptRequest(BaseModel):
    data: str = Field(description="A ciphertext from the encryptor (or from Kamus).")


async def build_authenticator(settings: Settings) -> Authenticator:
    kube = settings.kubernetes
    if kube.token_auth_file is not None:
        try:
            return StaticTokenFileAuthenticator(kube.token_auth_file)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
    return TokenReviewAuthenticator(
        await create_api_client(kube),
        audiences=settings.decryptor.audiences,
        timeout_seconds=kube.request_timeout_seconds,
        max_concurrency=kube.max_concurrent_requests,
        access_review_cache_seconds=settings.decryptor.access_review_cache_seconds,
    )


def create_app(
    settings: Settings | None = None,
    key_manager: KeyManager | None = None,
    authenticator: Authenticator | None = None,
) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    keys = key_manager or build_key_manager(settings, observer=metrics)
    provider = settings.key_management.provider
    retry_after = str(settings.server.retry_after_seconds)
    auth: Authenticator | None = authenticator

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal auth
        if authenticator is not None:  # the caller's, and the caller closes it
            yield
            return
        try:
            auth = await build_authenticator(settings)
        except ConfigurationError as exc:
            log.error("the decryptor cannot start: %s", exc)
            raise
        try:
            yield
        finally:
            await auth.close()
            auth = None

    app = create_base_app(
        service="decryptor",
        title="Kamus decryptor",
        description="Decrypts secrets for the Kubernetes service account they were made for. "
        "Internal to the cluster: never expose it.",
        settings=settings,
        metrics=metrics,
        audited_paths=DECRYPT_PATHS,
        lifespan=lifespan,
    )

    def _authenticator() -> Authenticator:
        if auth is None:
            raise HTTPException(503, "the decryptor is starting", headers={"Retry-After": "1"})
        return auth

    async def decrypt(
        body: DecryptRequest,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Response:
        if credentials is None:
            annotate(request, reason="no bearer token")
            metrics.token_reviews.labels("missing").inc()
            raise HTTPException(
                401,
                "send the pod's service account token as 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            identity = await _authenticator().authenticate(credentials.credentials)
        except NotAuthenticated as exc:
            annotate(request, reason=exc.reason)
            metrics.token_reviews.labels("denied").inc()
            raise HTTPException(
                401,
                "the bearer token was not accepted by Kubernetes; send a current service account "
                "token of the pod",
                headers={"WWW-Authenticate": "Bearer"},
            ) from None
        except AuthUnavailable as exc:
            annotate(request, reason=exc.reason)
            metrics.token_reviews.labels("unavailable").inc()
            raise HTTPException(
                503,
                "cannot verify the token right now because the Kubernetes API is unavailable; "
                "retry later",
                headers={"Retry-After": retry_after},
            ) from None
        metrics.token_reviews.labels("authenticated").inc()
        annotate(request, user=identity.username)
        parsed = parse_service_account_user(identity.username)
        if parsed is None:
            annotate(request, reason="caller is not a service account")
            raise HTTPException(403, "only Kubernetes service accounts may decrypt")
        namespace, service_account = parsed
        annotate(request, namespace=namespace, service_account=service_account)
        if service_account == "default" and settings.decryptor.deny_default_service_account:
            annotate(request, reason="default service account")
            raise HTTPException(
                403,
                "the 'default' service account may not decrypt; run the pod with a dedicated "
                "service account",
            )
        fmt = classify(body.data)
        annotate(request, format=str(fmt))
        try:
            plaintext = await keys.decrypt(body.data, sa_id(namespace, service_account))
        except DecryptionError as exc:
            annotate(request, reason=exc.reason)
            metrics.decryptions.labels(provider, str(fmt), "failure").inc()
            raise HTTPException(
                400,
                f"the data cannot be decrypted as {namespace}:{service_account}; check that it was "
                "encrypted for this namespace and service account with this Kamus's key",
            ) from None
        except KeyManagerUnavailable as exc:
            annotate(request, reason=exc.reason)
            metrics.decryptions.labels(provider, str(fmt), "unavailable").inc()
            raise HTTPException(
                503,
                "the key manager is unavailable; retry later",
                headers={"Retry-After": retry_after},
            ) from None
        metrics.decryptions.labels(provider, str(fmt), "success").inc()
        if fmt.is_legacy:
            metrics.legacy_decryptions.labels(provider, str(fmt)).inc()
        return Response(plaintext, media_type="text/plain; charset=utf-8")

    for path in DECRYPT_PATHS:
        app.add_api_route(
            path,
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
                503: {"description": "Kubernetes or the key manager is unavailable."},
            },
        )

    @app.get("/api/v1/isAlive", tags=["health"], summary="May this service review tokens?")
    async def is_alive() -> JSONResponse:
        try:
            allowed = await _authenticator().can_review_tokens()
        except AuthUnavailable:
            allowed = False
        return JSONResponse(allowed, status_code=200 if allowed else 503)

    @app.get("/readyz", tags=["health"], summary="Ready to serve")
    async def readyz() -> JSONResponse:
        if auth is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ready"})

    return app
