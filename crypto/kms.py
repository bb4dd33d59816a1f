"""What the cloud providers share: blocking SDK calls off the event loop, under one deadline,
observed for metrics; and creating a service account's key once (:func:`ensure_key`).

The SDKs (boto3, google-cloud-kms, azure-keyvault-keys) are synchronous; each call runs in a worker
thread. A semaphore bounds the calls in flight, so a slow KMS cannot pile up threads, and the
deadline covers waiting for a slot as well as the call. The SDKs' own timeouts are set to the same
value and their own retry policies (jittered backoff on throttling and 5xx) run inside it.
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Protocol, TypeVar

from crypto.errors import KeyManagerUnavailable, KeyNotFoundError

T = TypeVar("T")


class Failure(Enum):
    NOT_FOUND = "not found"
    CONFLICT = "already exists"
    REJECTED = "rejected"  # the KMS refused the input: a bad or foreign ciphertext
    UNAVAILABLE = "unavailable"  # down, slow, throttling, or refusing our credentials


class KmsError(KeyManagerUnavailable):
    """A KMS answer, sorted into what the provider must do about it.

    A :class:`KeyManagerUnavailable`, so that one a provider does not handle (say, a key that
    vanishes right after it was created) reaches the caller as a 503, never as a 500.
    """

    def __init__(self, failure: Failure, reason: str) -> None:
        super().__init__(reason)
        self.failure = failure


# (error, operation) -> what it means, or None for an error the classifier does not know.
Classifier = Callable[[Exception, str], KmsError | None]


class KmsObserver(Protocol):
    """Receives one event per KMS call and per key created (the services count them)."""

    def kms_call(self, provider: str, operation: str, outcome: str, seconds: float) -> None: ...

    def key_created(self, provider: str) -> None: ...


class NullObserver:
    def kms_call(self, provider: str, operation: str, outcome: str, seconds: float) -> None:
        return None

    def key_created(self, provider: str) -> None:
        return None


class BlockingCalls:
    def __init__(
        self,
        provider: str,
        *,
        timeout_seconds: float,
        max_concurrency: int,
        classify: Classifier,
        observer: KmsObserver | None = None,
    ) -> None:
        self.provider = provider
        self.classify = classify
        self.timeout_seconds = timeout_seconds
        self.observer = observer or NullObserver()
        self._slots = asyncio.Semaphore(max_concurrency)
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix=f"kms-{provider}")

    async def __call__(self, operation: str, call: Callable[[], T]) -> T:
        """Run ``call`` in a worker.

        SDK errors come out as :class:`KmsError`, except that an unavailable KMS (and a timeout)
        raises :class:`KeyManagerUnavailable` directly: no provider can do anything else with it.
        """
        start = time.perf_counter()
        outcome = "error"
        try:
            async with asyncio.timeout(self.timeout_seconds), self._slots:
                result = await asyncio.get_running_loop().run_in_executor(self._pool, call)
            outcome = "success"
            return result
        except TimeoutError:
            outcome = "timeout"
            raise KeyManagerUnavailable(
                f"{self.provider} {operation}: no answer within {self.timeout_seconds:g}s"
            ) from None
        except Exception as exc:
            error = self.classify(exc, operation)
            if error is None:
                raise
            reason = f"{self.provider} {operation}: {error.reason}"
            if error.failure is Failure.UNAVAILABLE:
                raise KeyManagerUnavailable(reason) from None
            outcome = error.failure.name.lower()
            raise KmsError(error.failure, reason) from None
        finally:
            self.observer.kms_call(self.provider, operation, outcome, time.perf_counter() - start)

    def key_created(self) -> None:
        self.observer.key_created(self.provider)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# A name no service account can have (no colon), for readiness calls.
PROBE_NAME = "kamus-readiness-probe"


async def answered(calls: BlockingCalls, operation: str, call: Callable[[], object]) -> None:
    """Make a call only to see the KMS answer it: any answer, a refusal of the request
    included, shows the KMS is up. Raises :class:`KeyManagerUnavailable` when it is not."""
    with contextlib.suppress(KmsError):
        await calls(operation, call)


class KeyLocks:
    """One lock per key name, so concurrent first encrypts in a process create a key once."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    def __call__(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())


async def found(call: Callable[[], Awaitable[T]]) -> T | None:
    """``call()``, or None when the KMS answers that the key is missing."""
    try:
        return await call()
    except KmsError as exc:
        if exc.failure is not Failure.NOT_FOUND:
            raise
        return None


async def ensure_key(
    locks: KeyLocks,
    name: str,
    *,
    allowed: bool,
    look: Callable[[], Awaitable[T]] | None,
    create: Callable[[], Awaitable[T]],
) -> T:
    """The key ``name``, which the caller just found missing: created here, once.

    Raises :class:`KeyNotFoundError` when creating keys is not ``allowed``. The rest runs under the
    name's lock, so that concurrent first encrypts in a process create one key: ``look`` again
    first, as another request or replica may have created it meanwhile, and ``create`` only if
    the KMS still answers "not found". ``look`` is None for a KMS that refuses to create an
    existing name: its ``create`` takes "already exists" as done. Callers validate the request
    first, so only real identities ever get a key.
    """
    if not allowed:
        raise KeyNotFoundError(name)
    async with locks(name):
        existing = await found(look) if look is not None else None
        return existing if existing is not None else await create()


def owner(sa_id: str) -> tuple[str, str]:
    """The namespace and service account a key is tagged with, from ``"<ns>:<sa>"``."""
    namespace, _, service_account = sa_id.partition(":")
    return namespace, service_account
