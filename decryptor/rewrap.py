"""``POST /api/v2/rewrap``: values moved to the active key and format inside the decryptor, so a
whole repository can be rotated without a plaintext ever reaching the client (docs/rotation.md).

Who may: people as well as service accounts, as Kubernetes RBAC says. The caller's token is
checked by TokenReview (made for ``Decryptor__RewrapAudiences``, by default the apiserver's own,
as ``kubectl``'s token is), then a SubjectAccessReview asks whether the caller may ``update``
``kamussecrets.soluto.com`` in the values' namespace: whoever may change a namespace's
KamusSecrets may change their ciphertexts. A namespace admin rewraps their own namespace, and
nobody else's.

What it never does: answer a plaintext, or change a value's identity. Each value must open as the
requested ``namespace:serviceAccount`` and comes back bound to the same one. The one exception is
Kamus's AES values made without key derivation, which open for every identity: binding them to
one is a choice only a cluster-wide grant may make (``update`` on the ``kamussecrets/legacy``
subresource, asked with no namespace), and only with ``"upgradeLegacy": true``.
"""

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field

from crypto import DecryptionError
from crypto.bundle import Bundle, BundleError
from crypto.bundle import load as load_bundle
from crypto.errors import KeyManagerUnavailable
from crypto.recipients import (
    AGE_KIND,
    KMS_KINDS,
    AgeRecipient,
    Recipient,
    canonical_name,
    is_age_identity,
)
from decryptor.values import entered, undecryptable
from kamus.server.errors import ConfigurationError
from kamus.server.health import Dependency, WatchedKeyManager
from kamus.server.identity import Namespace, ServiceAccountName, sa_id
from kamus.server.kubeauth.callers import (
    AuthUnavailable,
    Identity,
    TokenCheck,
    bearer,
    peer_address,
)
from kamus.server.kubeauth.reviews import (
    Authenticator,
    StaticTokenFileAuthenticator,
    TokenReviewAuthenticator,
    token_reviews,
)
from kamus.server.metrics import Metrics
from kamus.server.settings import Settings
from kamus.server.web.api import BatchItems, check_batch_size, key_manager_unavailable
from kamus.server.web.middleware import annotate
from kamus.server.web.problems import ApiError, problem_responses

if TYPE_CHECKING:
    from kamus.server.ratelimit import TokenBuckets

log = logging.getLogger(__name__)

REWRAP_PATH = "/api/v2/rewrap"
USER_TOKEN = bearer(
    "KubernetesToken",
    "The caller's Kubernetes token (a person's or a service account's); RBAC must let it update "
    "kamussecrets.soluto.com in the namespace.",
)
# What RBAC must allow: in the values' namespace, and, to bind legacy values, cluster-wide.
PERMISSION = {"group": "soluto.com", "resource": "kamussecrets", "verb": "update"}
LEGACY_PERMISSION = {**PERMISSION, "subresource": "legacy"}


RecipientName = Annotated[str, Field(min_length=1, max_length=600, pattern=r"^[!-~]+$")]


class RewrapRequest(BaseModel):
    model_config = ConfigDict(validate_by_name=False, validate_by_alias=True, extra="forbid")

    namespace: Namespace = Field(description="The namespace the values are bound to.")
    service_account: ServiceAccountName = Field(
        alias="serviceAccount", description="The service account the values are bound to."
    )
    items: BatchItems = Field(description="Ciphertexts by name.")
    upgrade_legacy: bool = Field(
        False,
        alias="upgradeLegacy",
        description="Bind Kamus's AES values made without key derivation (which open for any "
        "identity) to this one. Needs update on kamussecrets/legacy, cluster-wide.",
    )
    check: bool = Field(
        False,
        description="Only check: say whether each value opens for the identity and whether a "
        "rewrap would change it; no value is returned.",
    )
    add_recipients: list[RecipientName] = Field(
        [],
        alias="addRecipients",
        max_length=16,
        description="Instead of moving values to the active key, add these recipients to each m1 "
        "value: age:age1…, aws:<key ARN>, gcp:<CryptoKey name>, azure:<key URL>. Each must be "
        "listed in Decryptor__AllowedRecipients.",
    )
    add_bundles: list[Annotated[str, Field(max_length=65_536)]] = Field(
        [],
        alias="addBundles",
        max_length=8,
        description="Clusters to add as recipients: their signed key bundles (the JSON text), "
        "each signed by an anchor listed in Decryptor__AllowedRecipients as anchor:ed25519:….",
    )
    remove_recipients: list[RecipientName] = Field(
        [],
        alias="removeRecipients",
        max_length=16,
        description="Remove the stanzas matching these <kind>:<key id> patterns (* matches "
        "anything), e.g. age:* or hpke-x25519:x25519:g3:*.",
    )

    @property
    def changes_recipients(self) -> bool:
        return bool(self.add_recipients or self.add_bundles or self.remove_recipients)


class RewrapItem(BaseModel):
    """One answer: the new value and what happened, or why this one failed."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)
    data: str | None = Field(None, description="The value under the active key.")
    status: Literal["rewrapped", "unchanged", "stale"] | None = Field(
        None,
        description="rewrapped; unchanged (already under an active key); stale (check only: a "
        "rewrap would change it).",
    )
    key_id: str | None = Field(None, alias="keyId", description="The key the value was under.")
    target_key_id: str | None = Field(
        None, alias="targetKeyId", description="The key it is (or would be) under now."
    )
    error: str | None = None


class RewrapResponse(BaseModel):
    items: dict[str, RewrapItem]


@dataclass(frozen=True)
class RewrapService:
    settings: Settings
    metrics: Metrics
    keys: WatchedKeyManager


class RewrapCallers:
    """Who may rewrap: their tokens (cached as the pods' are), RBAC, and a rate per caller."""

    def __init__(self, settings: Settings, metrics: Metrics, keys: WatchedKeyManager) -> None:
        self.service = RewrapService(settings, metrics, keys)
        decryptor = settings.decryptor
        # Made on the first rewrap, as the Kubernetes client is: the rate limit's parser costs
        # every replica 1.5 MB, and a bad setting then fails rewraps, not decryption.
        self._buckets: TokenBuckets | None = None
        self._settings = settings
        self._metrics = metrics
        self._reviews: TokenReviewAuthenticator | StaticTokenFileAuthenticator | None = None
        self._tokens: Authenticator | None = None
        self._open = False
        self._building = asyncio.Lock()
        self.kubernetes = Dependency("kubernetes", self._answers, metrics.dependency_up)
        audience = decryptor.rewrap_audiences[0] if decryptor.rewrap_audiences else None
        self._check = TokenCheck(
            self.kubernetes,
            metrics,
            str(settings.server.retry_after_seconds),
            what_to_send=(
                f"a Kubernetes token made for the audience {audience} (kubectl create token "
                f"<service account> --audience {audience})"
                if audience
                else "your Kubernetes token (kamus rewrap --kubeconfig-token, or --token-file)"
            ),
            rejected_hint="send a current token of your Kubernetes user"
            + (
                f", made for the audience {audience} (Decryptor__RewrapAudiences)"
                if audience
                else ""
            ),
        )

    async def _answers(self) -> bool:
        return self._reviews is not None

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Open for rewraps while the app runs. Their Kubernetes client is made on the first
        rewrap: most decryptors never see one, and it would hold memory in every replica."""
        self._open = True
        try:
            yield
        finally:
            self._open = False
            if self._tokens is not None:
                await self._tokens.close()
            self._reviews = self._tokens = None

    async def _authenticator(self) -> Authenticator:
        if not self._open:
            raise ApiError(
                503, "starting", "the decryptor is starting", headers={"Retry-After": "1"}
            )
        async with self._building:
            if self._tokens is None:
                kube = self._settings.kubernetes
                if kube.token_auth_file is not None:
                    try:
                        self._reviews = StaticTokenFileAuthenticator(kube.token_auth_file)
                    except ValueError as exc:
                        raise ConfigurationError(str(exc)) from None
                    self._tokens = self._reviews
                else:
                    decryptor = self._settings.decryptor
                    self._reviews, self._tokens = await token_reviews(
                        kube,
                        decryptor.rewrap_audiences,
                        cache_seconds=decryptor.token_review_cache_seconds,
                        cache_size=decryptor.token_review_cache_size,
                        observe=lambda result: self._metrics.token_review_cache.labels(
                            result
                        ).inc(),
                    )
            return self._tokens

    async def identity(
        self, request: Request, credentials: HTTPAuthorizationCredentials | None
    ) -> Identity:
        tokens = await self._authenticator()
        client = peer_address(request)
        return await self._check.identity(request, credentials, tokens, client=client)

    def _rate(self) -> "TokenBuckets":
        if self._buckets is None:
            from kamus.server import ratelimit

            spec = self._settings.decryptor.rewrap_rate_limit
            try:
                limits = ratelimit.parse_limits(spec, "Decryptor__RewrapRateLimit")
                self._buckets = ratelimit.TokenBuckets(limits)
            except ValueError as exc:
                log.error("rewraps are refused: %s", exc)
                raise ApiError(503, "error", f"the decryptor is misconfigured: {exc}") from None
        return self._buckets

    def charge(self, request: Request, caller: Identity, cost: int, paid: int = 0) -> None:
        """Spend ``cost`` values of the caller's rate, or raise the 429."""
        buckets = self._rate()
        if not buckets.limits:
            return
        refused = buckets.take(caller.username, cost, paid)
        if refused is None:
            return
        limit, wait = refused
        retry_after = max(1, math.ceil(wait))
        self._metrics.rate_limited.inc()
        annotate(request, reason=f"rewrap rate limit {limit} reached")
        raise ApiError(
            429,
            "rate-limited",
            f"too many values rewrapped by {caller.username}: Decryptor__RewrapRateLimit is "
            f"{limit}, and each value counts; retry in {retry_after}s",
            headers={"Retry-After": str(retry_after)},
        )

    async def authorize(
        self, request: Request, caller: Identity, namespace: str, *, legacy: bool
    ) -> None:
        """403 unless RBAC lets the caller update KamusSecrets in ``namespace`` and, for
        ``legacy``, update kamussecrets/legacy cluster-wide. Never cached: rewraps are rare,
        and a revoked grant must take effect at once."""
        assert self._reviews is not None
        try:
            allowed = await self._reviews.may(
                caller, namespace=namespace, client=peer_address(request), **PERMISSION
            )
            if allowed and legacy:
                upgrade = await self._reviews.may(
                    caller, namespace=None, client=peer_address(request), **LEGACY_PERMISSION
                )
        except AuthUnavailable as exc:
            raise self._check.unavailable(request, exc) from None
        if not allowed:
            annotate(request, reason="RBAC does not allow updating kamussecrets there")
            raise ApiError(
                403,
                "not-allowed-to-rewrap",
                f"{caller.username} may not rewrap values of namespace {namespace}: Kubernetes "
                "RBAC must allow it to update kamussecrets.soluto.com there (see "
                "docs/rotation.md)",
            )
        if legacy and not upgrade:
            annotate(request, reason="RBAC does not allow updating kamussecrets/legacy")
            raise ApiError(
                403,
                "not-allowed-to-rewrap",
                f"{caller.username} may not bind legacy values to an identity: upgradeLegacy "
                "needs update on kamussecrets/legacy (soluto.com) granted cluster-wide by a "
                "ClusterRoleBinding, not in a namespace (see docs/rotation.md)",
            )


async def rewrap_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(USER_TOKEN)],
) -> Identity:
    """The caller, checked before the body is read: an unauthenticated caller learns nothing of
    what the API accepts. One value of its rate is spent now, so bad bodies count too."""
    callers: RewrapCallers = request.app.state.rewrap
    caller = await callers.identity(request, credentials)
    callers.charge(request, caller, 1)
    return caller


router = APIRouter()


@router.post(
    REWRAP_PATH,
    tags=["rewrap"],
    summary="Move values to the active key, for the identity they are bound to",
    response_model_exclude_none=True,
    responses=problem_responses(
        {
            400: "The body is invalid.",
            401: "No token, or Kubernetes did not accept it.",
            403: "RBAC does not let the caller update kamussecrets in the namespace.",
            413: "Too many items, or the body is over the size limit.",
            429: "Over Decryptor__RewrapRateLimit; see Retry-After.",
            503: "Kubernetes or the key manager is unavailable; see Retry-After.",
        }
    ),
)
async def rewrap(
    body: RewrapRequest,
    request: Request,
    caller: Annotated[Identity, Depends(rewrap_caller)],
) -> RewrapResponse:
    callers: RewrapCallers = request.app.state.rewrap
    state = callers.service
    identity = sa_id(body.namespace, body.service_account)
    annotate(request, namespace=body.namespace, service_account=body.service_account)
    check_batch_size(request, body.items, state.settings)
    callers.charge(request, caller, len(body.items), paid=1)
    if body.changes_recipients and body.upgrade_legacy:
        raise ApiError(
            400, "invalid-request", "upgradeLegacy and a change of recipients go in separate calls"
        )
    await callers.authorize(request, caller, body.namespace, legacy=body.upgrade_legacy)
    additions: list[Recipient] = []
    if body.changes_recipients:
        additions = allowed_additions(request, body, state)
    slots = asyncio.Semaphore(state.settings.server.batch_concurrency)
    counted: dict[str, int] = {}
    reasons: list[str] = []

    async def one(ciphertext: str) -> RewrapItem:
        async with slots:
            try:
                if body.changes_recipients:
                    result = await state.keys.change_recipients(
                        entered(ciphertext),
                        identity,
                        add=additions,
                        remove=body.remove_recipients,
                        check_only=body.check,
                    )
                else:
                    result = await state.keys.rewrap(
                        entered(ciphertext),
                        identity,
                        upgrade_legacy=body.upgrade_legacy,
                        check_only=body.check,
                    )
            except DecryptionError as exc:
                reasons.append(exc.reason)
                counted["failed"] = counted.get("failed", 0) + 1
                return RewrapItem(error=undecryptable(identity, exc))
        counted[result.status] = counted.get(result.status, 0) + 1
        state.metrics.rewraps.labels(str(result.status)).inc()
        return RewrapItem(
            data=None if body.check else result.ciphertext,
            status=result.status.value,
            key_id=result.source_key_id,
            target_key_id=result.target_key_id,
        )

    try:
        results = await asyncio.gather(*(one(v) for v in body.items.values()))
    except KeyManagerUnavailable as exc:
        raise key_manager_unavailable(request, exc, state.settings) from None
    if counted.get("failed"):
        state.metrics.rewraps.labels("failed").inc(counted["failed"])
    annotate(request, items=len(results), failed=counted.get("failed", 0))
    annotate(request, **{k: v for k, v in counted.items() if k != "failed"})
    if reasons:
        annotate(request, reason="; ".join(sorted(set(reasons)))[:500])
    return RewrapResponse(items=dict(zip(body.items, results, strict=True)))


def allowed_additions(
    request: Request, body: RewrapRequest, state: RewrapService
) -> list[Recipient]:
    """The recipients to add, each one the operator allows (``Decryptor__AllowedRecipients``):
    whoever may rewrap must never add a key of their own and then read the values with it."""
    allowed = {canonical_name(a) for a in state.settings.decryptor.allowed_recipients}
    added: list[Recipient] = []
    annotate(
        request,
        recipients_added=len(body.add_recipients) + len(body.add_bundles),
        recipients_removed=len(body.remove_recipients),
    )
    for spec in body.add_recipients:
        if canonical_name(spec) not in allowed:
            annotate(request, reason="recipient not in Decryptor__AllowedRecipients")
            raise ApiError(
                403,
                "recipient-not-allowed",
                f"{_shown(spec)} is not in Decryptor__AllowedRecipients: through the decryptor, "
                "only the recipients the operator lists there may be added (add others offline, "
                "with a key that opens the values)",
            )
        kind, _, key = spec.partition(":")
        try:
            if kind == AGE_KIND:
                added.append(AgeRecipient(key))
                continue
            recipient = state.keys.kms_recipient(spec) if kind in KMS_KINDS else None
        except ValueError as exc:
            raise ApiError(400, "invalid-request", f"recipient {_shown(spec)}: {exc}") from None
        if recipient is None:
            raise ApiError(
                400,
                "invalid-request",
                f"this decryptor cannot wrap for {kind[:20]} recipients: its provider is another "
                "(add it offline with kamus recipients add --identity)",
            )
        added.append(recipient)
    anchors = [a.removeprefix("anchor:") for a in allowed if a.startswith("anchor:")]
    now = datetime.now(UTC)
    for n, text in enumerate(body.add_bundles, 1):
        loaded = next((b for a in anchors if (b := _bundle_under(text, a)) is not None), None)
        if loaded is None:
            annotate(request, reason="bundle anchor not in Decryptor__AllowedRecipients")
            raise ApiError(
                403,
                "recipient-not-allowed",
                f"key bundle {n} is not signed by an anchor listed in "
                "Decryptor__AllowedRecipients (anchor:ed25519:…), or its signature does not hold",
            )
        if loaded.expiry(now)[0] == "expired":
            raise ApiError(
                400, "invalid-request", f"key bundle {n} has expired: send a current one"
            )
        try:
            added.append(loaded.recipient(now))
        except BundleError as exc:
            raise ApiError(400, "invalid-request", f"key bundle {n}: {exc}") from None
    return added


def _shown(spec: str) -> str:
    """A recipient as a message may repeat it: never an age identity pasted in its place."""
    return "an age identity (AGE-SECRET-KEY-1…)" if is_age_identity(spec) else spec[:100]


def _bundle_under(text: str, anchor: str) -> Bundle | None:
    try:
        return load_bundle(text, anchor)
    except BundleError:
        return None
