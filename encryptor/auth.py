"""Optional caller authentication for the encryptor (``Encryptor__Authentication=kubernetes``).

Kamus's encryptor is open: anyone who reaches it may encrypt for any service account. That is
safe for secrecy (only the workload decrypts), but it lets anyone plant values that a workload
will trust. With authentication on, the caller sends a Kubernetes token (``kamus encrypt
--kubeconfig-token`` sends the current kubeconfig user's), Kubernetes says who it is
(TokenReview), and Kubernetes RBAC says whether that user may encrypt for the namespace: the
SubjectAccessReview asks whether it may ``create`` ``kamussecrets.soluto.com`` there. Whoever may
create a KamusSecret in a namespace can already have the controller turn values into Secrets
there, so this adds no second permission model.

The encryptor's service account then needs ``system:auth-delegator`` (the Helm chart binds it).
"""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials

if TYPE_CHECKING:
    from kamus.server.kubeauth.reviews import TokenReviewAuthenticator

from kamus.server.health import Dependency
from kamus.server.kubeauth.cache import TtlCache
from kamus.server.kubeauth.callers import (
    Authenticator,
    AuthUnavailable,
    Identity,
    TokenCheck,
    bearer,
    peer_address,
)
from kamus.server.metrics import Metrics
from kamus.server.settings import Settings
from kamus.server.web.middleware import annotate
from kamus.server.web.problems import ApiError

USER_TOKEN = bearer(
    "KubernetesToken",
    "With Encryptor__Authentication=kubernetes: the caller's Kubernetes token, best one made "
    "for the encryptor's audience (kubectl create token SA --audience kamus-encryptor; kamus "
    "encrypt --token-file).",
)


def _what_to_send(audiences: list[str]) -> str:
    if audiences:
        return (
            f"a Kubernetes token made for the audience {audiences[0]} (kubectl create token "
            f"<service account> --audience {audiences[0]} > token; kamus encrypt --token-file "
            "token)"
        )
    return "your Kubernetes token (kamus encrypt --token-file, or --kubeconfig-token)"


# What RBAC must allow in the target namespace: creating a KamusSecret there.
PERMISSION = {"group": "soluto.com", "resource": "kamussecrets", "verb": "create"}
# (caller, namespace) pairs remembered as allowed; the oldest go first.
ALLOWED_CACHE_SIZE = 10_000


class EncryptorCallers:
    """Who may encrypt: anyone (``none``), or what Kubernetes RBAC allows (``kubernetes``)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        client_address: Callable[[Request], str] = peer_address,
    ) -> None:
        self.enabled = settings.encryptor.authentication == "kubernetes"
        self._settings = settings
        self._metrics = metrics
        # Whose share of the apiserver calls a request takes. Give the rate limiter's
        # client_address, which knows the trusted proxies: with the peer, an ingress in front
        # makes all callers one client.
        self._client_address = client_address
        self._reviews: TokenReviewAuthenticator | None = None
        self._tokens: Authenticator | None = None
        # Without it a `kamus seal` of 50 Secrets asked RBAC 50 times the same question.
        self._allowed: TtlCache[tuple[Identity, str], bool] = TtlCache(ALLOWED_CACHE_SIZE)
        self._allowed_seconds = settings.encryptor.authorization_cache_seconds
        self.kubernetes = Dependency("kubernetes", self._apiserver_answers, metrics.dependency_up)
        self._check = TokenCheck(
            self.kubernetes,
            metrics,
            str(settings.server.retry_after_seconds),
            what_to_send=_what_to_send(settings.encryptor.audiences),
            rejected_hint="send a current token of your Kubernetes user",
        )

    @property
    def dependencies(self) -> list[Dependency]:
        return [self.kubernetes] if self.enabled else []

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        if not self.enabled:
            yield
            return
        # Only now: the Kubernetes client is heavy, and unused with authentication off.
        from kamus.server.kubeauth.reviews import token_reviews

        encryptor = self._settings.encryptor
        self._reviews, self._tokens = await token_reviews(
            self._settings.kubernetes,
            encryptor.audiences,
            cache_seconds=encryptor.token_review_cache_seconds,
            cache_size=encryptor.token_review_cache_size,
            observe=lambda result: self._metrics.token_review_cache.labels(result).inc(),
        )
        try:
            yield
        finally:
            await self._tokens.close()
            self._reviews = self._tokens = None

    async def _apiserver_answers(self) -> bool:
        if self._reviews is None:
            return False
        try:
            await self._reviews.ping()
        except AuthUnavailable:
            return False
        return True

    async def identity(
        self, request: Request, credentials: HTTPAuthorizationCredentials | None
    ) -> Identity:
        """The caller, as Kubernetes says (encryptor/app.py's ``authenticated`` dependency runs
        it before the body is validated, so an unauthenticated caller learns nothing)."""
        if self._tokens is None:
            raise ApiError(
                503, "starting", "the encryptor is starting", headers={"Retry-After": "1"}
            )
        return await self._check.identity(
            request, credentials, self._tokens, client=self._client_address(request)
        )

    async def authorize(self, request: Request, caller: Identity | None, namespace: str) -> None:
        """403 unless Kubernetes lets ``caller`` create KamusSecrets in ``namespace``."""
        if caller is None or self._reviews is None:
            return
        key = (caller, namespace)
        if self._allowed.get(key):
            return
        try:
            allowed = await self._reviews.may(
                caller, namespace=namespace, client=self._client_address(request), **PERMISSION
            )
        except AuthUnavailable as exc:
            raise self._check.unavailable(request, exc) from None
        if not allowed:
            annotate(request, reason="RBAC does not allow creating kamussecrets there")
            raise ApiError(
                403,
                "not-allowed-to-encrypt",
                f"{caller.username} may not encrypt for namespace {namespace}: Kubernetes RBAC "
                "must allow it to create kamussecrets.soluto.com there (a Role and RoleBinding "
                "in that namespace; see docs/errors.md)",
            )
        self._allowed.put(key, True, self._allowed_seconds)
