"""What the cloud providers share: blocking SDK calls off the event loop, under one deadline,
observed for metrics; and creating a service account's key once (:func:`ensure_key`).

The SDKs (boto3, google-cloud-kms, azure-keyvault-keys) are synchronous; each call runs in a worker
thread. A semaphore bounds the calls in flight, so a slow KMS cannot pile up threads, and the
deadline covers waiting for a slot as well as the call. The SDKs' own timeouts are set to the same
value and their own retry policies (jittered backoff on 5xx and connection errors) run inside it.

Throttling is retried here, not (where the SDK lets us say so) in the SDK: exponential backoff
with full jitter, at least as long as the KMS's ``Retry-After``, sleeping outside the concurrency
slot and never past the deadline; each throttled answer is counted. When the deadline would pass,
:class:`KmsThrottled` says so, which answers 503 without making the replica unready.
"""

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Protocol, TypeVar

from crypto.errors import (
    DecryptionError,
    KeyDisabled,
    KeyManagerBusy,
    KeyManagerUnavailable,
    KeyNotFoundError,
    KmsThrottled,
)

T = TypeVar("T")


class Failure(Enum):
    NOT_FOUND = "not found"
    CONFLICT = "already exists"
    REJECTED = "rejected"  # the KMS refused the input: a bad or foreign ciphertext
    UNAVAILABLE = "unavailable"  # down, slow, or refusing our credentials
    THROTTLED = "throttled"  # over the KMS's request rate: retried with backoff, never "down"
    DISABLED = "disabled"  # the key (version) is disabled, pending deletion or destroyed


class KmsError(KeyManagerUnavailable):
    """A KMS answer, sorted into what the provider must do about it.

    A :class:`KeyManagerUnavailable`, so that one a provider does not handle (say, a key that
    vanishes right after it was created) reaches the caller as a 503, never as a 500.
    ``retry_after``: the seconds a THROTTLED answer asked us to wait, if it said.
    """

    def __init__(self, failure: Failure, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.failure = failure
        self.retry_after = retry_after


def retry_after_seconds(header: str | None) -> float | None:
    """A ``Retry-After`` in seconds, or None when absent or not a number of seconds (an HTTP
    date, junk, a negative or endless value): then our own backoff alone decides."""
    try:
        seconds = float((header or "").strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def refused(error: KmsError) -> DecryptionError:
    """A KMS's refusal to unwrap, as the value not opening: :class:`KeyDisabled` when the key
    (version) is disabled or gone, so that the data-key cache drops what it wrapped."""
    if error.failure in (Failure.DISABLED, Failure.NOT_FOUND):
        return KeyDisabled(error.reason)
    return DecryptionError(error.reason)


# (error, operation) -> what it means, or None for an error the classifier does not know.
Classifier = Callable[[Exception, str], KmsError | None]


class KmsObserver(Protocol):
    """Receives one event per KMS call and per key created (the services count them)."""

    def kms_call(self, provider: str, operation: str, outcome: str, seconds: float) -> None: ...

    def kms_throttled(self, provider: str, operation: str) -> None:
        """One answer refusing a call for the KMS's request rate (each retry's too)."""
        ...

    def key_created(self, provider: str) -> None: ...

    def data_key_cache(self, result: str) -> None: ...


class NullObserver:
    def kms_call(self, provider: str, operation: str, outcome: str, seconds: float) -> None:
        return None

    def kms_throttled(self, provider: str, operation: str) -> None:
        return None

    def key_created(self, provider: str) -> None:
        return None

    def data_key_cache(self, result: str) -> None:
        return None


# The backoff between throttled attempts: "full jitter", a random wait below a ceiling that doubles
# from 50 ms up to 2 s, so that the calls a KMS throttled together do not all come back together.
BACKOFF_FIRST_SECONDS = 0.05
BACKOFF_MAX_SECONDS = 2.0


class BlockingCalls:
    def __init__(
        self,
        provider: str,
        *,
        timeout_seconds: float,
        max_concurrency: int,
        classify: Classifier,
        observer: KmsObserver | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.classify = classify
        self.timeout_seconds = timeout_seconds
        self.observer = observer or NullObserver()
        # The backoff's sleep, its random factor in [0, 1) and the clock that bounds it: tests
        # replace them so as not to wait out real backoffs.
        self.sleep = sleep
        self.jitter = jitter
        self.clock = clock
        self._slots = asyncio.Semaphore(max_concurrency)
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix=f"kms-{provider}")

    async def __call__(
        self, operation: str, call: Callable[[], T], *, retry_throttling: bool = True
    ) -> T:
        """Run ``call`` in a worker, and again after each throttled answer while the deadline
        allows (only once with ``retry_throttling=False``).

        SDK errors come out as :class:`KmsError`, except that an unavailable KMS (and a timeout)
        raises :class:`KeyManagerUnavailable` directly, and a KMS that throttled the call until
        the deadline :class:`KmsThrottled`: no provider can do anything else with them.
        """
        deadline = self.clock() + self.timeout_seconds
        throttled: KmsError | None = None  # the last throttled answer
        answers = 0
        queued = False  # waiting for a slot, not for the KMS
        try:
            # One deadline for everything: the slots, the attempts and the sleeps between them.
            async with asyncio.timeout(self.timeout_seconds):
                while True:
                    try:
                        queued = True
                        await self._slots.acquire()  # released when the worker is done
                        queued = False
                        return await self._attempt(operation, call)
                    except KmsError as error:
                        if error.failure is not Failure.THROTTLED:
                            raise
                        throttled, answers = error, answers + 1
                    self.observer.kms_throttled(self.provider, operation)
                    delay = self._backoff(answers, throttled.retry_after)
                    if not retry_throttling or self.clock() + delay >= deadline:
                        break  # an attempt after the deadline would be cut short anyway
                    # Outside the slot: a call waiting for the KMS's rate holds no thread.
                    await self.sleep(delay)
        except TimeoutError:
            if throttled is None and queued:
                # Never sent: this process has as many calls in flight as it allows.
                raise KeyManagerBusy(
                    f"{self.provider} {operation}: no free call slot within "
                    f"{self.timeout_seconds:g}s (KeyManagement__MaxConcurrentCalls)"
                ) from None
            if throttled is None:
                raise KeyManagerUnavailable(
                    f"{self.provider} {operation}: no answer within {self.timeout_seconds:g}s"
                ) from None
        assert throttled is not None  # the loop ends by a return, a raise, or after a throttle
        raise self._gave_up(throttled, answers)

    async def _attempt(self, operation: str, call: Callable[[], T]) -> T:
        """One call to the KMS, in a slot, reported on its own: ``kms_call`` is per attempt, so
        that ``kamus_kms_calls_total`` counts the requests that reached the KMS (its quota counts
        each retry of a throttled call too; a call that never got a slot is not one) and the
        latency histogram times each of them, outcome ``throttled`` included."""
        start = self.clock()
        outcome = "timeout"  # unless an answer says otherwise: the deadline cancelled the wait
        loop = asyncio.get_running_loop()
        try:
            try:
                worker = self._pool.submit(call)
            except BaseException:
                self._slots.release()
                raise
            # The slot goes back when the worker is free, not when the deadline stops our wait:
            # a call cut short still runs in its thread, and the next call would wait for that
            # thread inside its own attempt, counted as a KMS call it never made.
            worker.add_done_callback(lambda _: self._release_from(loop))
            result = await asyncio.wrap_future(worker)
            outcome = "success"
            return result
        except Exception as exc:
            error = self.classify(exc, operation)
            if error is None:
                outcome = "timeout" if isinstance(exc, TimeoutError) else "error"
                raise
            reason = f"{self.provider} {operation}: {error.reason}"
            if error.failure is Failure.UNAVAILABLE:
                outcome = "error"
                raise KeyManagerUnavailable(reason) from None
            outcome = error.failure.name.lower()
            raise KmsError(error.failure, reason, error.retry_after) from None
        finally:
            self.observer.kms_call(self.provider, operation, outcome, self.clock() - start)

    def _release_from(self, loop: asyncio.AbstractEventLoop) -> None:
        """A slot back, from the worker's thread; nothing to give back once the loop is gone."""
        with contextlib.suppress(RuntimeError):  # the event loop closed (the process stops)
            loop.call_soon_threadsafe(self._slots.release)

    def _backoff(self, answers: int, retry_after: float | None) -> float:
        """The wait after the ``answers``-th throttled answer: full jitter, and never less than
        the KMS asked for (a Retry-After of 0 still waits our jittered backoff)."""
        ceiling = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2.0 ** min(answers - 1, 16))
        return max(retry_after or 0.0, self.jitter() * ceiling)

    def _gave_up(self, throttled: KmsError, answers: int) -> KmsThrottled:
        times = "once" if answers == 1 else f"{answers} times"
        reason = f"{throttled.reason}: throttled {times} within {self.timeout_seconds:g}s"
        if throttled.retry_after is not None:
            reason += f", asked to retry after {throttled.retry_after:g}s"
        return KmsThrottled(reason, throttled.retry_after)

    def key_created(self) -> None:
        self.observer.key_created(self.provider)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# A name no service account can have (no colon), for readiness calls.
PROBE_NAME = "kamus-readiness-probe"


async def answered(calls: BlockingCalls, operation: str, call: Callable[[], object]) -> None:
    """Make a call only to see the KMS answer it: any answer, a refusal of the request
    included, shows the KMS is up. Raises :class:`KeyManagerUnavailable` when it is not.

    A throttled answer is an answer too: the KMS is up, only busy. It is not retried here, so
    that a readiness probe returns at once rather than waiting out the KMS's rate."""
    with contextlib.suppress(KmsError, KmsThrottled):
        await calls(operation, call, retry_throttling=False)


class KeyLocks:
    """One lock per key name, so concurrent first encrypts in a process create a key once.

    Names can come from callers (a key version in a value), so the locks nobody holds are
    dropped once there are ``max_idle`` of them."""

    def __init__(self, max_idle: int = 4096) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._max_idle = max_idle

    def __call__(self, name: str) -> asyncio.Lock:
        if len(self._locks) > self._max_idle:
            self._locks = {n: lock for n, lock in self._locks.items() if lock.locked()}
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
