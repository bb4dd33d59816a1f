"""A short-lived cache of successful TokenReviews, as kube-apiserver's delegated authentication
keeps one (``--authentication-token-webhook-cache-ttl``, 10 s for aggregated API servers).

Without it, a pod that decrypts N values costs the apiserver N TokenReviews, and every pod of a
rollout does the same at once. With it:

* a token that Kubernetes accepted is trusted again, without asking, for at most
  ``ttl_seconds`` and never past the token's own ``exp`` (read from the JWT, only to shorten);
* only acceptances are kept: a rejected token is asked about again every time, so a token that
  becomes valid (a clock-skewed ``nbf``) is not refused for long, and garbage cannot fill the cache;
* concurrent requests with the same token from the same client address share one TokenReview
  (single flight). Not across addresses: the review waits in its client's queue for a slot
  (fair_share.py), and a request joining a review queued behind a flood from another address
  would wait as long as that flood's own requests;
* entries are keyed by SHA-256 of the token and the audiences, so the cache holds no token, and
  bounded in number (least recently used goes first).

The price is the same as kube-apiserver's: a token revoked (its pod or service account deleted)
is still accepted until its entry expires. ``Decryptor__TokenReviewCacheSeconds=0`` turns it off.
"""

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, Literal, TypeVar

from kamus.server.kubeauth.callers import Authenticator, Identity
from kamus.server.tokens import unverified_jwt_claims

Lookup = Literal["hit", "miss", "coalesced"]
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Answers kept until their own deadline, at most ``max_entries`` of them: the least
    recently used goes first. Used for the accepted tokens here and for the encryptor's RBAC
    answers (encryptor/auth.py)."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: K, value: V, ttl_seconds: float) -> None:
        """Keep ``value`` for ``ttl_seconds`` from now; nothing if that is not in the future."""
        if ttl_seconds <= 0:
            return
        self._entries[key] = (self._clock() + ttl_seconds, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


def cache_key(token: str, audiences: Sequence[str]) -> bytes:
    digest = hashlib.sha256(token.encode("utf-8"))
    for audience in sorted(audiences):
        digest.update(b"\0" + audience.encode("utf-8"))
    return digest.digest()


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, unverified (Kubernetes has just verified it), or None."""
    claims = unverified_jwt_claims(token)
    exp = claims.get("exp") if claims is not None else None
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        return float(exp)
    return None


class CachingAuthenticator:
    """An :class:`Authenticator` that remembers what another one accepted."""

    def __init__(
        self,
        inner: Authenticator,
        *,
        ttl_seconds: float,
        max_entries: int,
        audiences: Sequence[str] = (),
        observe: Callable[[Lookup], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._inner = inner
        self._ttl = ttl_seconds
        self._audiences = tuple(audiences)
        self._observe = observe
        self._wall_clock = wall_clock
        self._entries: TtlCache[bytes, Identity] = TtlCache(max_entries, clock)
        self._in_flight: dict[tuple[bytes, str | None], asyncio.Task[Identity]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def authenticate(self, token: str, *, client: str | None = None) -> Identity:
        key = cache_key(token, self._audiences)
        cached = self._entries.get(key)
        if cached is not None:
            self._observe("hit")
            return cached
        flight = (key, client)
        task = self._in_flight.get(flight)
        if task is None:
            self._observe("miss")
            task = asyncio.create_task(self._review(key, token, client))
            self._in_flight[flight] = task
            task.add_done_callback(lambda done: self._settle(flight, done))
        else:
            self._observe("coalesced")
        # shield: one caller giving up (its client went away) must not cancel the review that
        # the other callers are waiting for.
        return await asyncio.shield(task)

    async def _review(self, key: bytes, token: str, client: str | None) -> Identity:
        identity = await self._inner.authenticate(token, client=client)
        ttl = self._ttl
        expiry = token_expiry(token)
        if expiry is not None:
            ttl = min(ttl, expiry - self._wall_clock())
        self._entries.put(key, identity, ttl)
        return identity

    def _settle(self, flight: tuple[bytes, str | None], task: "asyncio.Task[Identity]") -> None:
        self._in_flight.pop(flight, None)
        if not task.cancelled():
            # Retrieved here so that a failure nobody awaited any more is not reported as
            # "Task exception was never retrieved".
            task.exception()

    async def can_review_tokens(self) -> bool:
        return await self._inner.can_review_tokens()

    async def ping(self) -> None:
        await self._inner.ping()

    async def close(self) -> None:
        for task in list(self._in_flight.values()):
            task.cancel()
        self._entries.clear()
        await self._inner.close()
