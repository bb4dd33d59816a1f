"""Who is calling: service-account tokens checked by the Kubernetes TokenReview API.

Two authenticators share one small interface:

* :class:`TokenReviewAuthenticator`, the product: asks kube-apiserver, with the official asyncio
  client, bounded concurrency shared fairly between client addresses (fair_share.py) and a
  timeout on every call.
* :class:`StaticTokenFileAuthenticator`, for a laptop without a cluster: kube-apiserver's
  ``--token-auth-file`` CSV format. Never used by the Helm chart.

Outages raise :class:`AuthUnavailable` (the caller answers 503), never :class:`NotAuthenticated`:
an apiserver hiccup must not look like a bad token. No free slot within the deadline raises
:class:`AuthBusy`, a kind of :class:`AuthUnavailable` that does not mean the apiserver is down.
"""

import asyncio
import csv
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import aiohttp
from kubernetes.aio.client import (
    ApiClient,
    AuthenticationV1Api,
    AuthorizationV1Api,
    V1ResourceAttributes,
    V1SelfSubjectAccessReview,
    V1SelfSubjectAccessReviewSpec,
    V1SubjectAccessReview,
    V1SubjectAccessReviewSpec,
    V1TokenReview,
    V1TokenReviewSpec,
    VersionApi,
)
from kubernetes.aio.client.exceptions import ApiException
from pydantic import ValidationError

from kamus.server.kube import create_api_client
from kamus.server.kubeauth.cache import CachingAuthenticator, Lookup
from kamus.server.kubeauth.callers import (
    AuthBusy,
    Authenticator,
    AuthUnavailable,
    Identity,
    NotAuthenticated,
)
from kamus.server.kubeauth.fair_share import FairShare, NoSlot
from kamus.server.settings import KubernetesSettings

__all__ = [
    "AuthBusy",
    "AuthUnavailable",
    "Authenticator",
    "Identity",
    "NotAuthenticated",
    "StaticTokenFileAuthenticator",
    "TokenReviewAuthenticator",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


class TokenReviewAuthenticator:
    def __init__(
        self,
        api_client: ApiClient,
        *,
        audiences: Sequence[str] = (),
        timeout_seconds: float = 5.0,
        max_concurrency: int = 16,
        max_concurrency_per_client: int = 4,
        access_review_cache_seconds: float = 30.0,
    ) -> None:
        self._api_client = api_client
        self._authn = AuthenticationV1Api(api_client)
        self._authz = AuthorizationV1Api(api_client)
        self._version = VersionApi(api_client)
        self._audiences = list(audiences)
        self._timeout = timeout_seconds
        self._slots = FairShare(
            max_concurrency, max_concurrency_per_client, wait_seconds=timeout_seconds
        )
        self._cache_seconds = access_review_cache_seconds
        self._access_review: tuple[float, bool] | None = None

    async def _call(
        self, what: str, request: Callable[[], Awaitable[T]], client: str | None = None
    ) -> T:
        # Waiting for a slot and the call have a deadline each: a call that waited long in the
        # queue still gets its whole timeout, so that only the apiserver's own slowness counts
        # as the apiserver being down.
        try:
            async with self._slots.slot(client):
                async with asyncio.timeout(self._timeout):
                    return await request()
        except NoSlot as exc:
            raise self._busy(what, exc) from None
        except TimeoutError:
            raise AuthUnavailable(f"{what}: no answer within {self._timeout:g}s") from None
        except ApiException as exc:
            # 401/403 here means the apiserver rejected *our* credentials or RBAC: a
            # misconfiguration of this service, not a verdict on the caller's token.
            raise AuthUnavailable(f"{what}: apiserver answered {exc.status} {exc.reason}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise AuthUnavailable(f"{what}: apiserver unreachable ({type(exc).__name__})") from None
        except ValidationError:
            raise AuthUnavailable(f"{what}: apiserver sent a malformed response") from None

    def _busy(self, what: str, exc: NoSlot) -> AuthBusy:
        if exc.own_queue:
            reason = (
                f"{what}: this client already had {self._slots.per_client} calls to the "
                f"apiserver waiting or in flight for {self._timeout:g}s "
                "(Kubernetes__MaxConcurrentRequestsPerClient)"
            )
        else:
            reason = (
                f"{what}: all {self._slots.total} slots for calls to the apiserver stayed busy "
                f"for {self._timeout:g}s (Kubernetes__MaxConcurrentRequests)"
            )
        return AuthBusy(reason, own_queue=exc.own_queue)

    async def authenticate(self, token: str, *, client: str | None = None) -> Identity:
        review = V1TokenReview(
            api_version="authentication.k8s.io/v1",
            kind="TokenReview",
            spec=V1TokenReviewSpec(token=token, audiences=self._audiences or None),
        )
        result = await self._call(
            "TokenReview",
            lambda: self._authn.create_token_review(review, _request_timeout=self._timeout),
            client,
        )
        status = result.status
        if status is None or not status.authenticated:
            error = status.error if status is not None else None
            raise NotAuthenticated(f"TokenReview: {(error or 'not authenticated')[:200]}")
        user = status.user
        if user is None or not user.username:
            raise NotAuthenticated("TokenReview: authenticated without a username")
        if self._audiences and not set(status.audiences or ()) & set(self._audiences):
            raise NotAuthenticated("TokenReview: token is not for the configured audiences")
        return Identity(
            username=user.username,
            uid=user.uid or None,
            groups=tuple(user.groups or ()),
            extra=tuple((k, tuple(v or ())) for k, v in sorted((user.extra or {}).items())),
        )

    async def may(
        self,
        identity: Identity,
        *,
        group: str,
        resource: str,
        verb: str,
        namespace: str | None,
        subresource: str | None = None,
        client: str | None = None,
    ) -> bool:
        """Whether Kubernetes RBAC (or whatever authorizes the cluster) lets ``identity`` do
        ``verb`` on ``resource`` in ``namespace`` (``None``: cluster-wide, which only a
        ClusterRoleBinding grants): a SubjectAccessReview, as kube-apiserver's delegated
        authorization asks."""
        review = V1SubjectAccessReview(
            api_version="authorization.k8s.io/v1",
            kind="SubjectAccessReview",
            spec=V1SubjectAccessReviewSpec(
                user=identity.username,
                uid=identity.uid,
                groups=list(identity.groups) or None,
                extra={k: list(v) for k, v in identity.extra} or None,
                resource_attributes=V1ResourceAttributes(
                    group=group,
                    resource=resource,
                    subresource=subresource,
                    verb=verb,
                    namespace=namespace,
                ),
            ),
        )
        result = await self._call(
            "SubjectAccessReview",
            lambda: self._authz.create_subject_access_review(
                review, _request_timeout=self._timeout
            ),
            client,
        )
        return bool(result.status and result.status.allowed)

    async def can_review_tokens(self) -> bool:
        now = time.monotonic()
        if self._access_review and now - self._access_review[0] < self._cache_seconds:
            return self._access_review[1]
        review = V1SelfSubjectAccessReview(
            api_version="authorization.k8s.io/v1",
            kind="SelfSubjectAccessReview",
            spec=V1SelfSubjectAccessReviewSpec(
                resource_attributes=V1ResourceAttributes(
                    group="authentication.k8s.io", resource="tokenreviews", verb="create"
                )
            ),
        )
        result = await self._call(
            "SelfSubjectAccessReview",
            lambda: self._authz.create_self_subject_access_review(
                review, _request_timeout=self._timeout
            ),
        )
        allowed = bool(result.status and result.status.allowed)
        self._access_review = (now, allowed)
        return allowed

    async def ping(self) -> None:
        # GET /version: readable by every authenticated client (system:public-info-viewer).
        await self._call(
            "GET /version", lambda: self._version.get_code(_request_timeout=self._timeout)
        )

    async def close(self) -> None:
        await self._api_client.close()


async def token_reviews(
    kube: KubernetesSettings,
    audiences: Sequence[str],
    *,
    cache_seconds: float,
    cache_size: int,
    observe: Callable[[Lookup], None],
    access_review_cache_seconds: float = 30.0,
) -> tuple[TokenReviewAuthenticator, Authenticator]:
    """TokenReviews for tokens made for ``audiences`` (none: the apiserver's), and the same
    behind a cache of accepted tokens (``cache_seconds`` 0: none): what each service that
    authenticates callers builds, with the first's SubjectAccessReviews for its RBAC checks."""
    reviews = TokenReviewAuthenticator(
        await create_api_client(kube),
        audiences=audiences,
        timeout_seconds=kube.request_timeout_seconds,
        max_concurrency=kube.max_concurrent_requests,
        max_concurrency_per_client=kube.max_concurrent_requests_per_client,
        access_review_cache_seconds=access_review_cache_seconds,
    )
    if not cache_seconds:
        return reviews, reviews
    cached = CachingAuthenticator(
        reviews,
        ttl_seconds=cache_seconds,
        max_entries=cache_size,
        audiences=audiences,
        observe=observe,
    )
    return reviews, cached


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class StaticTokenFileAuthenticator:
    """kube-apiserver's ``--token-auth-file``: ``token,user,uid[,"group1,group2"]`` per line.

    Tokens are held only as SHA-256 digests, so a lookup compares digests rather than secrets.
    """

    def __init__(self, path: Path) -> None:
        self._users: dict[bytes, Identity] = {}
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(
                f"Kubernetes__TokenAuthFile {path} cannot be read: {exc.strerror}"
            ) from None
        for number, row in enumerate(csv.reader(text.splitlines(), skipinitialspace=True), 1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 3 or not row[0] or not row[1]:
                raise ValueError(
                    f"Kubernetes__TokenAuthFile {path} line {number}: expected "
                    'token,user,uid[,"groups"]'
                )
            digest = _digest(row[0])
            if digest in self._users:
                log.warning("Kubernetes__TokenAuthFile line %d repeats a token; last wins", number)
            groups = (
                tuple(g.strip() for g in row[3].split(",") if g.strip()) if len(row) > 3 else ()
            )
            self._users[digest] = Identity(username=row[1], uid=row[2] or None, groups=groups)
        log.warning(
            "Kubernetes__TokenAuthFile is set: callers are checked against a static token file, "
            "not the Kubernetes API. This is for local development only."
        )

    async def authenticate(self, token: str, *, client: str | None = None) -> Identity:
        identity = self._users.get(_digest(token))
        if identity is None:
            raise NotAuthenticated("token is not in the static token file")
        return identity

    async def may(
        self,
        identity: Identity,
        *,
        group: str,
        resource: str,
        verb: str,
        namespace: str | None,
        subresource: str | None = None,
        client: str | None = None,
    ) -> bool:
        """No RBAC without a cluster: as kube-apiserver, the group system:masters may do
        anything, and nobody else anything."""
        return "system:masters" in identity.groups

    async def can_review_tokens(self) -> bool:
        return True

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
