"""Per-client rate limiting for the public encryptor.

Kamus left IP throttling to an nginx in front. Here the encryptor itself answers 429 with
``Retry-After`` once a client address goes over ``Encryptor__RateLimit``, so a single client
cannot make it create keys or call the KMS without bound.

The counting is the ``limits`` library's moving window (the one flask-limiter and slowapi use),
kept in this process's memory: several limits (``20/second;600/minute``) act as a token bucket
does, a burst allowance and a sustained rate. ``limits`` has no token bucket proper; a moving
window of N per period never lets more than N through in any period, which a token bucket of
capacity N with the same refill also guarantees.

Behind an ingress every request comes from the ingress' address. Name the proxies
(``Encryptor__TrustedProxies``, CIDRs) and their header (``Encryptor__ClientIpHeader``,
``X-Forwarded-For``): the client is then the right-most address in the header that is not a
trusted proxy. The header is ignored from any other peer, since a client can write it.
"""

import ipaddress
import math
import time
from collections.abc import Sequence

from fastapi import Request
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from kamus.metrics import Metrics
from kamus.web import ApiError, annotate

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_limits(spec: str) -> list[RateLimitItem]:
    """``20/second;600/minute`` → the limits; ``off`` or empty → none."""
    if spec.strip().lower() in ("", "off", "none"):
        return []
    try:
        return parse_many(spec)
    except ValueError:
        raise ValueError(
            f"Encryptor__RateLimit={spec!r} is not a rate limit: write e.g. "
            "'20/second;600/minute', or 'off'"
        ) from None


def parse_networks(items: Sequence[str]) -> list[Network]:
    try:
        return [ipaddress.ip_network(item, strict=False) for item in items]
    except ValueError as exc:
        raise ValueError(f"Encryptor__TrustedProxies: {exc}") from None


class ClientRateLimiter:
    def __init__(
        self,
        limits: Sequence[RateLimitItem],
        *,
        metrics: Metrics,
        trusted_proxies: Sequence[Network] = (),
        client_ip_header: str = "X-Forwarded-For",
    ) -> None:
        self._limits = list(limits)
        self._metrics = metrics
        self._trusted = list(trusted_proxies)
        self._header = client_ip_header
        # The synchronous API on purpose: memory storage never blocks, and limits' asyncio
        # memory storage hands expiry work to a thread on every call, which measured costlier
        # than all the rest of an encrypt request (GIL hand-offs).
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    def client_address(self, request: Request) -> str:
        peer = request.client.host if request.client else "unknown"
        if not self._trusted or not self._is_trusted(peer):
            return peer
        # Every line of the header: some proxies add their own line rather than append to the
        # client's, and the client's (forged) line must not be the only one read.
        lines = request.headers.getlist(self._header)
        hops = [hop.strip() for hop in ",".join(lines).split(",")]
        for hop in reversed([hop for hop in hops if hop]):
            if not self._is_trusted(hop):
                return hop
        return peer

    async def __call__(self, request: Request) -> None:
        """A FastAPI dependency: passes, or raises the 429."""
        if not self._limits:
            return
        client = self.client_address(request)
        for limit in self._limits:  # all of them first: a refused request consumes nothing
            if not self._limiter.test(limit, client):
                self._refuse(request, limit, client)
        for limit in self._limits:
            self._limiter.hit(limit, client)

    def _refuse(self, request: Request, limit: RateLimitItem, client: str) -> None:
        stats = self._limiter.get_window_stats(limit, client)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        self._metrics.rate_limited.inc()
        annotate(request, reason=f"rate limit {limit} reached", client=client)
        raise ApiError(
            429,
            "rate-limited",
            f"too many requests from this address (Encryptor__RateLimit is {limit}); "
            f"retry in {retry_after}s",
            headers={"Retry-After": str(retry_after)},
        )
