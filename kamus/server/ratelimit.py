"""Per-client rate limiting for the public encryptor, counted in encrypted values.

Kamus left IP throttling to an nginx in front. Here the encryptor itself answers 429 with
``Retry-After`` once a client address goes over ``Encryptor__RateLimit``, so a single client
cannot make it create keys or call the KMS without bound.

What is limited is values, not requests: a batch costs as many units as it has items, since each
item is one encryption (one KMS call in the KMS modes). The cost is charged after the body is
parsed and before anything is encrypted.

Each limit ``N/period`` is a token bucket of capacity N refilled at N per period, kept per client
as GCRA does (one "theoretical arrival time" per bucket; ``limits``, which parses the spec, has
no bucket that can go into debt). A request is admitted when every bucket holds its cost, or when
a bucket that does not is full: a batch larger than the capacity is then admitted and the client
waits off the debt, so a 100-value ``kamus seal`` works under ``20/second`` while a flood still
gets no more than the rate. A refused request consumes nothing. The buckets live in this
process's memory, are touched only from its event loop, and are forgotten once full again.

Behind an ingress every request comes from the ingress' address. Name the proxies
(``Encryptor__TrustedProxies``, CIDRs) and their header (``Encryptor__ClientIpHeader``,
``X-Forwarded-For``): the client is then the right-most address in the header that is not a
trusted proxy. The header is ignored from any other peer, since a client can write it.
"""

import math
import time
from collections.abc import Callable, Sequence

from fastapi import Request
from limits import RateLimitItem, parse_many

from kamus.server.addresses import Network, client_key, is_in
from kamus.server.metrics import Metrics
from kamus.server.web.middleware import annotate
from kamus.server.web.problems import ApiError

# Float sums of 1/N intervals drift by a few ulps: a bucket that holds exactly the cost must pass.
_SLACK = 1e-6
# Buckets are kept for at most this many clients. Full ones are dropped first; then, if more than
# half that many are in debt (a flood from many addresses), those nearest to full, whose forgiven
# debt is smallest.
MAX_CLIENTS = 100_000
_FIRST_SWEEP = 1024


def parse_limits(spec: str, setting: str = "Encryptor__RateLimit") -> list[RateLimitItem]:
    """``20/second;600/minute`` → the limits; ``off`` or empty → none."""
    if spec.strip().lower() in ("", "off", "none"):
        return []
    try:
        limits = parse_many(spec)
    except ValueError:
        limits = []
    if not limits or any(limit.amount < 1 for limit in limits):
        raise ValueError(
            f"{setting}={spec!r} is not a rate limit: write e.g. "
            "'20/second;600/minute' (each at least 1), or 'off'"
        )
    return limits


class TokenBuckets:
    """Per client, one bucket per limit that may go into debt (GCRA).

    For each bucket the client's "theoretical arrival time" ``tat`` is when the bucket will be
    full again: it is full when ``tat <= now``, and holds ``(period - (tat - now)) / interval``
    units otherwise, where ``interval = period / N`` is the time one unit takes to refill.
    """

    def __init__(
        self,
        limits: Sequence[RateLimitItem],
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.limits = list(limits)
        self._rates = [
            (float(limit.get_expiry()), limit.get_expiry() / limit.amount) for limit in self.limits
        ]
        self._clock = clock
        self._max_clients = max_clients
        self._tats: dict[str, list[float]] = {}
        self._sweep_at = min(_FIRST_SWEEP, max_clients)

    def __len__(self) -> int:
        return len(self._tats)

    def take(self, client: str, cost: int, paid: int = 0) -> tuple[RateLimitItem, float] | None:
        """Spend ``cost`` units of ``client``'s buckets: None if admitted, else the limit that
        refuses longest and the seconds until the same request would be admitted.

        ``paid`` units of the cost were taken earlier for the same request (a deposit, before
        its size was known): the decision is made on the whole cost, as if they had not been,
        and a refusal gives them back.
        """
        now = self._clock()
        tats = self._tats.get(client)
        if tats is None:  # an unknown client's buckets are full
            if len(self._tats) >= self._sweep_at:
                self._sweep(now)
            self._tats[client] = [now + cost * interval for _, interval in self._rates]
            return None
        refused = -1
        wait = 0.0
        for index, (period, interval) in enumerate(self._rates):
            tat = tats[index] - paid * interval
            if tat <= now:
                continue  # full: admits any cost, going into debt past its capacity
            short = tat + cost * interval - period - now
            if short > _SLACK:
                # Admitted once it holds the cost, or once it is full, whichever comes first
                # (the latter for a cost over the capacity).
                ready = min(short, tat - now)
                if ready > wait:
                    refused, wait = index, ready
        if refused >= 0:
            if paid:
                for index, (_, interval) in enumerate(self._rates):
                    tats[index] -= paid * interval
            return self.limits[refused], wait
        for index, (_, interval) in enumerate(self._rates):
            tats[index] = max(tats[index] - paid * interval, now) + cost * interval
        return None

    def _sweep(self, now: float) -> None:
        tats = self._tats
        for client in [client for client, times in tats.items() if max(times) <= now]:
            del tats[client]
        keep = self._max_clients // 2
        if len(tats) > keep:
            by_debt = sorted(tats, key=lambda client: max(tats[client]))
            for client in by_debt[: len(tats) - keep]:
                del tats[client]
        # Sweep again once the table has doubled: each sweep is paid for by as many new clients.
        self._sweep_at = min(self._max_clients, max(_FIRST_SWEEP, 2 * len(tats)))


class ClientRateLimiter:
    def __init__(
        self,
        limits: Sequence[RateLimitItem],
        *,
        metrics: Metrics,
        trusted_proxies: Sequence[Network] = (),
        client_ip_header: str = "X-Forwarded-For",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._enabled = bool(limits)
        self._buckets = TokenBuckets(limits, clock=clock)
        self._metrics = metrics
        self._trusted = list(trusted_proxies)
        self._header = client_ip_header

    def _is_trusted(self, address: str) -> bool:
        return is_in(address, self._trusted)

    def client_key(self, request: Request) -> str:
        """What the limits count this request's client as
        (:func:`kamus.server.addresses.client_key`)."""
        return client_key(self.client_address(request))

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
        """A FastAPI dependency: one value, before the body is read or the caller checked (so
        that bad bodies and bad tokens are limited too). A batch pays the rest in its handler."""
        self.charge(request, 1)

    def charge(self, request: Request, cost: int, paid: int = 0) -> None:
        """Spend ``cost`` values of this request's client, of which ``paid`` were already
        charged for it (see :meth:`TokenBuckets.take`), or raise the 429."""
        if not self._enabled:
            return
        address = self.client_address(request)
        refused = self._buckets.take(client_key(address), cost, paid)
        if refused is not None:
            limit, wait = refused
            self._refuse(request, limit, address, cost if paid else None, wait)

    def _refuse(
        self, request: Request, limit: RateLimitItem, client: str, batch: int | None, wait: float
    ) -> None:
        retry_after = max(1, math.ceil(wait))
        self._metrics.rate_limited.inc()
        annotate(request, reason=f"rate limit {limit} reached", client=client)
        size = f" (this one has {batch})" if batch is not None else ""
        raise ApiError(
            429,
            "rate-limited",
            f"too many values from this address: Encryptor__RateLimit is {limit}, and each value "
            f"of a batch counts{size}; retry in {retry_after}s",
            headers={"Retry-After": str(retry_after)},
        )
