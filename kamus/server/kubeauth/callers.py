"""Callers who prove who they are with a Kubernetes bearer token (one TokenReview): the pods at
the decryptor, and the users at the encryptor when ``Encryptor__Authentication=kubernetes``.

The types here are light on purpose: the encryptor imports them, and must not load the
Kubernetes client (kamus/server/kubeauth/reviews.py) unless its authentication is on.
"""

from dataclasses import dataclass
from typing import Protocol

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from kamus.server.health import Dependency
from kamus.server.metrics import Metrics
from kamus.server.web.middleware import annotate
from kamus.server.web.problems import ApiError


@dataclass(frozen=True)
class Identity:
    """Who Kubernetes says the token belongs to: what a SubjectAccessReview asks about."""

    username: str
    uid: str | None = None
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


class NotAuthenticated(Exception):
    """The token does not prove an identity. ``reason`` is for the audit log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AuthUnavailable(Exception):
    """Authentication could not be done right now (apiserver down, slow or refusing us)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AuthBusy(AuthUnavailable):
    """No slot to ask the apiserver came free in time: this replica is busy (or this client
    sends too much at once), which says nothing about whether the apiserver is up."""

    def __init__(self, reason: str, *, own_queue: bool) -> None:
        super().__init__(reason)
        self.own_queue = own_queue  # the client's own share was taken, not the shared slots


class Authenticator(Protocol):
    async def authenticate(self, token: str, *, client: str | None = None) -> Identity:
        """Who ``token`` belongs to. ``client`` is the caller's address: the reviews that go to
        the apiserver are shared fairly between addresses (``None``: not a caller's request)."""
        ...

    async def can_review_tokens(self) -> bool:
        """Whether this service may create TokenReviews (Kamus's isAlive check)."""
        ...

    async def ping(self) -> None:
        """Raise :class:`AuthUnavailable` if the Kubernetes API does not answer now."""
        ...

    async def close(self) -> None: ...


def peer_address(request: Request) -> str:
    """The address the request came from (the TCP peer)."""
    return request.client.host if request.client else "unknown"


def bearer(scheme_name: str, description: str) -> HTTPBearer:
    # auto_error=False: a missing token is our 401 with a useful message, not FastAPI's 403.
    return HTTPBearer(auto_error=False, scheme_name=scheme_name, description=description)


@dataclass(frozen=True)
class TokenCheck:
    """How one service answers the three outcomes of a TokenReview."""

    kubernetes: Dependency
    metrics: Metrics
    retry_after: str
    what_to_send: str  # "the pod's service account token"
    rejected_hint: str  # "send a current service account token of the pod"

    async def identity(
        self,
        request: Request,
        credentials: HTTPAuthorizationCredentials | None,
        authenticator: Authenticator,
        *,
        client: str,
    ) -> Identity:
        if credentials is None:
            annotate(request, reason="no bearer token")
            self.metrics.token_reviews.labels("missing").inc()
            raise ApiError(
                401,
                "missing-token",
                f"send {self.what_to_send} as 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            identity = await authenticator.authenticate(credentials.credentials, client=client)
        except NotAuthenticated as exc:
            self.kubernetes.succeeded()  # the apiserver answered
            annotate(request, reason=exc.reason)
            self.metrics.token_reviews.labels("denied").inc()
            raise ApiError(
                401,
                "token-rejected",
                f"the bearer token was not accepted by Kubernetes; {self.rejected_hint}",
                headers={"WWW-Authenticate": "Bearer"},
            ) from None
        except AuthUnavailable as exc:
            raise self.unavailable(request, exc) from None
        self.kubernetes.succeeded()
        self.metrics.token_reviews.labels("authenticated").inc()
        annotate(request, user=identity.username)
        return identity

    def unavailable(self, request: Request, exc: AuthUnavailable) -> ApiError:
        if isinstance(exc, AuthBusy):
            return self._busy(request, exc)
        self.kubernetes.failed(exc.reason)
        annotate(request, reason=exc.reason)
        self.metrics.token_reviews.labels("unavailable").inc()
        return ApiError(
            503,
            "kubernetes-unavailable",
            "cannot verify the token right now because the Kubernetes API is unavailable; "
            "retry later",
            headers={"Retry-After": self.retry_after},
        )

    def _busy(self, request: Request, exc: AuthBusy) -> ApiError:
        # Not kubernetes.failed(): a full queue here says nothing about the apiserver, and a
        # flood of unknown tokens must not take this replica out of its Service.
        annotate(request, reason=exc.reason)
        self.metrics.token_reviews.labels("busy").inc()
        if exc.own_queue:
            advice = (
                "too many requests from your address are waiting for their tokens to be "
                "verified; send fewer at once and retry later"
            )
        else:
            advice = "too many tokens are waiting to be verified; retry later"
        return ApiError(
            503,
            "busy",
            f"the service is busy: {advice}",
            headers={"Retry-After": self.retry_after},
        )
