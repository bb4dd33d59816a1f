"""KMS throttling, end to end (issue 20).

A throttled call is retried inside its deadline (``KeyManagement__TimeoutSeconds``) with
exponential backoff and full jitter, never sooner than Key Vault's ``Retry-After`` and never
sleeping past the deadline, and each throttled answer is counted in
``kamus_kms_throttled_total``. Throttling that outlasts the deadline answers 503 with
``Retry-After`` (the KMS's own when it said one), and leaves the replica ready: a KMS that
throttles is up, only busy. Throttled answers go through the real SDK clients to the doubles.
"""

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

from crypto.azure import AzureKeyVaultKeyManager
from crypto.cloud import CloudKeyManager
from crypto.errors import KeyManagerBusy, KeyManagerUnavailable, KmsThrottled
from crypto.kms import (
    BlockingCalls,
    Failure,
    KmsError,
    NullObserver,
    answered,
    retry_after_seconds,
)
from decryptor.app import create_app as create_decryptor
from kamus.server.health import WatchedKeyManager
from kamus.server.metrics import Metrics
from kamus.server.providers import build_key_manager
from kamus.server.settings import Settings
from kamus.server.web.api import key_manager_unavailable
from tests.k8s_double import KubeApiDouble
from tests.kms_doubles.aws import THROTTLED, AwsKmsDouble
from tests.kms_doubles.azure import KeyVaultDouble, throttled
from tests.kms_doubles.gcp import CloudKmsDouble
from tests.support import leaks
from tests.support.aio import run
from tests.support.servers import Faults
from tests.support.settings import SettingsFactory

SECRET = "throttled-s3cr3t"
leaks.register(SECRET)
SA = "team-a:app"

# -- through each provider's SDK, against its double --------------------------------------------


@dataclass
class Kms:
    name: str
    double: AwsKmsDouble | CloudKmsDouble | KeyVaultDouble
    env: dict[str, str]
    # The KMS's own throttling answer, for the next ``remaining`` requests (None: for ever).
    throttle: Callable[[int | None], Faults]


def _aws_throttle(remaining: int | None) -> Faults:
    return Faults(
        fail_status=THROTTLED.fail_status, fail_body=THROTTLED.fail_body, remaining=remaining
    )


def _gcp_throttle(remaining: int | None) -> Faults:
    return Faults(fail_status=429, remaining=remaining)  # RESOURCE_EXHAUSTED


@pytest.fixture(params=["aws", "gcp", "azure"])
def kms(request: pytest.FixtureRequest) -> Kms:
    """Each cloud KMS double, this process pointed at it, and its provider's settings."""
    if request.param == "aws":
        # botocore's own retries stay on (MaxRetries=3): its needs-retry hook
        # (crypto/aws.py:leave_throttling_to_kamus) leaves throttled answers to our loop.
        env = {"KeyManagement__Provider": "AwsKms", "KeyManagement__AwsKms__Region": "us-east-1"}
        return Kms("aws", request.getfixturevalue("aws_kms"), env, _aws_throttle)
    if request.param == "gcp":
        # The SDK's own retries stay on: they no longer include throttling.
        env = {"KeyManagement__Provider": "GoogleKms", "KeyManagement__GoogleKms__ProjectId": "p"}
        return Kms("gcp", request.getfixturevalue("gcp_kms"), env, _gcp_throttle)
    double = request.getfixturevalue("azure_kv")
    env = {
        "KeyManagement__Provider": "AzureKeyVault",
        "KeyManagement__KeyVault__Url": double.url,
        "KeyManagement__KeyVault__VerifyChallengeResource": "false",
    }
    # Key Vault's 429 with Retry-After: 0; azure-core no longer retries a 429 either.
    return Kms("azure", double, env, lambda remaining: throttled(remaining))


def manager_of(settings: Settings, metrics: Metrics) -> CloudKeyManager:
    manager = build_key_manager(settings, observer=metrics)
    assert isinstance(manager, CloudKeyManager)
    return manager


def samples(metrics: Metrics, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        sample.value
        for metric in metrics.registry.collect()
        for sample in metric.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_throttling_is_ridden_out_and_counted(kms: Kms, make_settings: SettingsFactory) -> None:
    metrics = Metrics()
    manager = manager_of(make_settings(**kms.env), metrics)
    ciphertext = run(manager.encrypt(SECRET.encode(), SA))  # a fresh value: no cached data key
    kms.double.requests.clear()
    attempts_before = samples(metrics, "kamus_kms_calls_total")
    kms.double.faults = kms.throttle(3)

    assert run(manager.decrypt(ciphertext, SA)) == SECRET.encode()

    assert samples(metrics, "kamus_kms_throttled_total", provider=kms.name) == 3
    assert samples(metrics, "kamus_kms_calls_total", outcome="throttled") == 3
    # Every request the KMS saw was an attempt of our loop: no SDK retried a throttled one
    # unseen (kms_call reports each attempt).
    attempts = samples(metrics, "kamus_kms_calls_total") - attempts_before
    assert len(kms.double.requests) == attempts


def test_endless_throttling_is_a_503_by_the_deadline_and_the_replica_stays_ready(
    kms: Kms,
    kube_api: KubeApiDouble,
    kubeconfig: Path,
    make_settings: SettingsFactory,
) -> None:
    env = {
        **kms.env,
        "KeyManagement__TimeoutSeconds": "2",
        "KeyManagement__MaxRetries": "1",
        "KeyManagement__DataKeyCache__Capacity": "0",  # every request reaches the KMS
        "Server__RetryAfterSeconds": "7",
    }
    settings = make_settings(**env)
    ciphertext = run(manager_of(settings, Metrics()).encrypt(SECRET.encode(), SA))
    token = kube_api.issue_token("team-a", "app")
    with TestClient(create_decryptor(settings)) as decryptor:

        def decrypt() -> httpx.Response:
            body = {"items": {"password": ciphertext}}
            headers = {"Authorization": f"Bearer {token}"}
            response: httpx.Response = decryptor.post("/api/v2/decrypt", json=body, headers=headers)
            return response

        assert decrypt().status_code == 200
        kms.double.faults = kms.throttle(None)
        start = time.monotonic()
        refused = decrypt()
        elapsed = time.monotonic() - start
        assert refused.status_code == 503, refused.text
        # Key Vault asked for 0 s: rounded up to the 1 s an HTTP Retry-After can say.
        assert refused.headers["retry-after"] == ("1" if kms.name == "azure" else "7")
        assert elapsed < 2 + 1.0  # by the deadline (and some slack for a loaded machine)
        metrics = decryptor.get("/metrics").text
        ready = decryptor.get("/readyz")
        kms.double.faults = Faults()

    assert "throttling" in refused.json()["detail"]
    assert ready.status_code == 200, ready.text
    assert 'kamus_dependency_up{dependency="key-manager"} 1.0' in metrics
    throttles = [
        line for line in metrics.splitlines() if line.startswith("kamus_kms_throttled_total{")
    ]
    assert throttles, metrics
    assert sum(float(line.rsplit(" ", 1)[1]) for line in throttles) >= 1


def test_key_vaults_retry_after_is_honoured(
    azure_kv: KeyVaultDouble, make_settings: SettingsFactory
) -> None:
    env = {
        "KeyManagement__Provider": "AzureKeyVault",
        "KeyManagement__KeyVault__Url": azure_kv.url,
        "KeyManagement__KeyVault__VerifyChallengeResource": "false",
    }
    metrics = Metrics()
    manager = manager_of(make_settings(**env), metrics)
    assert isinstance(manager, AzureKeyVaultKeyManager)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    manager._calls.sleep = sleep  # asked, not waited: the assertion is on what was asked
    ciphertext = run(manager.encrypt(SECRET.encode(), SA))
    azure_kv.faults = Faults(fail_status=429, fail_headers={"Retry-After": "2"}, remaining=1)

    assert run(manager.decrypt(ciphertext, SA)) == SECRET.encode()
    assert slept == [2.0]  # what Key Vault asked for, not our 50 ms first backoff
    assert samples(metrics, "kamus_kms_throttled_total", provider="azure") == 1


def test_key_vaults_retry_after_reaches_the_caller(
    azure_kv: KeyVaultDouble,
    kube_api: KubeApiDouble,
    kubeconfig: Path,
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(
        **{
            "KeyManagement__Provider": "AzureKeyVault",
            "KeyManagement__KeyVault__Url": azure_kv.url,
            "KeyManagement__KeyVault__VerifyChallengeResource": "false",
            "KeyManagement__TimeoutSeconds": "1",
        }
    )
    ciphertext = run(manager_of(settings, Metrics()).encrypt(SECRET.encode(), SA))
    token = kube_api.issue_token("team-a", "app")
    azure_kv.faults = Faults(fail_status=429, fail_headers={"Retry-After": "2"})
    with TestClient(create_decryptor(settings)) as decryptor:
        refused = decryptor.post(
            "/api/v1/decrypt",
            json={"data": ciphertext},
            headers={"Authorization": f"Bearer {token}"},
        )
        ready = decryptor.get("/readyz")
    assert refused.status_code == 503
    # Waiting 2 s would pass the 1 s deadline: answered at once, with Key Vault's wait.
    assert refused.headers["retry-after"] == "2"
    assert ready.status_code == 200


# -- the retry loop itself, on a fake clock -----------------------------------------------------


@dataclass
class FakeKms:
    """A clock that only sleeps move, and a call that answers what ``answers`` say, in turn
    (an exception class is raised), then succeeds."""

    answers: list[KmsError | type[Exception]] = field(default_factory=list)
    throttle_for_ever: KmsError | None = None
    now: float = 1000.0
    call_seconds: float = 0.01
    calls: int = 0
    started: list[float] = field(default_factory=list)  # when each attempt began
    sleeps: list[tuple[float, float]] = field(default_factory=list)  # (when, how long)
    events: list[tuple[str, ...]] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append((self.now, seconds))
        self.now += seconds

    def call(self) -> str:
        self.calls += 1
        self.started.append(self.now)
        self.now += self.call_seconds
        answer = self.throttle_for_ever or (self.answers.pop(0) if self.answers else None)
        if answer is None:
            return "answer"
        raise Answer(answer) if isinstance(answer, KmsError) else answer("unclassified")

    # crypto.kms.KmsObserver
    def kms_call(self, provider: str, operation: str, outcome: str, seconds: float) -> None:
        self.events.append(("call", operation, outcome))

    def kms_throttled(self, provider: str, operation: str) -> None:
        self.events.append(("throttled", operation))

    def key_created(self, provider: str) -> None:
        pass

    def data_key_cache(self, result: str) -> None:
        pass

    def calls_of(self, timeout: float = 10.0, jitter: float = 1.0) -> BlockingCalls:
        return BlockingCalls(
            "fake",
            timeout_seconds=timeout,
            max_concurrency=4,
            classify=lambda exc, operation: exc.error if isinstance(exc, Answer) else None,
            observer=self,
            sleep=self.sleep,
            jitter=lambda: jitter,
            clock=self.clock,
        )


class Answer(Exception):
    """What the fake SDK raises: the classification is carried along."""

    def __init__(self, error: KmsError) -> None:
        super().__init__(error.reason)
        self.error = error


def throttling(retry_after: float | None = None) -> KmsError:
    return KmsError(Failure.THROTTLED, "SlowDown (HTTP 429)", retry_after)


@pytest.mark.parametrize("jitter", [1.0, 0.5, 0.01])
async def test_the_backoff_never_sleeps_past_the_deadline(jitter: float) -> None:
    kms = FakeKms(throttle_for_ever=throttling())
    calls = kms.calls_of(timeout=10.0, jitter=jitter)
    deadline = kms.now + 10.0
    with pytest.raises(KmsThrottled) as info:
        await calls("Decrypt", kms.call)

    assert kms.sleeps, "it retried"
    for when, seconds in kms.sleeps:
        assert when + seconds < deadline
    assert max(kms.started) < deadline
    assert kms.calls == len(kms.sleeps) + 1  # a sleep between each two attempts, none after
    assert info.value.reason.startswith(f"fake Decrypt: SlowDown (HTTP 429): throttled {kms.calls}")
    assert info.value.retry_after is None
    assert kms.events.count(("throttled", "Decrypt")) == kms.calls
    assert kms.events.count(("call", "Decrypt", "throttled")) == kms.calls  # per attempt
    calls.close()


async def test_the_backoff_doubles_with_full_jitter_up_to_two_seconds() -> None:
    kms = FakeKms(throttle_for_ever=throttling())
    calls = kms.calls_of(timeout=10.0, jitter=1.0)  # the top of each jitter range
    with pytest.raises(KmsThrottled):
        await calls("Decrypt", kms.call)
    waits = [seconds for _, seconds in kms.sleeps]
    assert waits[:7] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0])
    assert max(waits) == pytest.approx(2.0)

    halves = FakeKms(throttle_for_ever=throttling())
    with pytest.raises(KmsThrottled):
        await halves.calls_of(timeout=1.0, jitter=0.5)("Decrypt", halves.call)
    assert [seconds for _, seconds in halves.sleeps][:3] == pytest.approx([0.025, 0.05, 0.1])
    calls.close()


async def test_a_retry_after_is_a_floor_and_one_past_the_deadline_is_not_waited() -> None:
    kms = FakeKms(answers=[throttling(retry_after=1.5)])
    assert await kms.calls_of(timeout=10.0)("UnwrapKey", kms.call) == "answer"
    assert [seconds for _, seconds in kms.sleeps] == [1.5]

    patient = FakeKms(throttle_for_ever=throttling(retry_after=30.0))
    with pytest.raises(KmsThrottled) as info:
        await patient.calls_of(timeout=10.0)("UnwrapKey", patient.call)
    assert patient.calls == 1
    assert patient.sleeps == []
    assert info.value.retry_after == 30.0
    assert "asked to retry after 30s" in info.value.reason


@pytest.mark.parametrize(
    ("answer", "raised"),
    [
        (KmsError(Failure.UNAVAILABLE, "Boom (HTTP 500)"), KeyManagerUnavailable),
        (KmsError(Failure.REJECTED, "InvalidCiphertextException"), KmsError),
        (KmsError(Failure.NOT_FOUND, "NotFoundException"), KmsError),
        (ValueError, ValueError),
    ],
    ids=["unavailable", "rejected", "not-found", "unclassified"],
)
async def test_other_errors_are_not_retried_by_the_loop(
    answer: KmsError | type[Exception], raised: type[Exception]
) -> None:
    kms = FakeKms(answers=[answer])
    with pytest.raises(raised) as info:
        await kms.calls_of()("Decrypt", kms.call)
    assert not isinstance(info.value, KmsThrottled)
    assert kms.calls == 1
    assert kms.sleeps == []
    assert not any(event[0] == "throttled" for event in kms.events)


async def test_a_deadline_that_passes_during_a_retry_is_still_throttling() -> None:
    """The slot or the call after a throttled answer outlasts the deadline (real time here)."""
    answers: list[str] = []

    def call() -> str:
        if not answers:
            answers.append("throttled")
            raise Answer(throttling())
        time.sleep(0.5)
        return "too late"

    calls = BlockingCalls(
        "fake",
        timeout_seconds=0.2,
        max_concurrency=1,
        classify=lambda exc, operation: exc.error if isinstance(exc, Answer) else None,
    )
    with pytest.raises(KmsThrottled):
        await calls("Decrypt", call)
    calls.close()


async def test_a_readiness_probe_takes_a_throttled_answer_as_up_at_once() -> None:
    kms = FakeKms(throttle_for_ever=throttling(retry_after=0.0))
    await answered(kms.calls_of(), "GetKey", kms.call)  # no KeyManagerUnavailable
    assert kms.calls == 1
    assert kms.sleeps == []


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("2", 2.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-1", None),
        ("inf", None),
        ("nan", None),
        ("Wed, 21 Oct 2026 07:28:00 GMT", None),  # an HTTP date: our own backoff decides
    ],
)
def test_a_retry_after_is_read_in_seconds_and_junk_ignored(
    header: str | None, seconds: float | None
) -> None:
    assert retry_after_seconds(header) == seconds


# -- what a throttled call does to readiness and to the answer ----------------------------------


class Throttled:
    """A key manager whose every call raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def encrypt(self, plaintext: bytes, sa_id: str) -> str:
        raise self.error

    async def decrypt(self, ciphertext: str, sa_id: str) -> bytes:
        raise self.error

    async def check(self) -> None:
        raise self.error


async def test_throttling_marks_the_key_manager_neither_down_nor_up() -> None:
    keys = WatchedKeyManager(Throttled(KmsThrottled("aws Decrypt: throttled")), Metrics())
    with pytest.raises(KmsThrottled):
        await keys.decrypt("v", SA)
    assert keys.dependency.up

    keys.dependency.failed("aws Decrypt: no answer within 10s")
    with pytest.raises(KmsThrottled):
        await keys.decrypt("v", SA)
    assert not keys.dependency.up  # only an answer that went through says it is back


@pytest.mark.parametrize(("asked", "header"), [(None, "7"), (0.0, "1"), (1.2, "2"), (2.0, "2")])
def test_the_503_says_when_to_retry(
    asked: float | None, header: str, make_settings: SettingsFactory
) -> None:
    settings = make_settings(Server__RetryAfterSeconds="7")
    request = Request({"type": "http", "headers": []})
    error = key_manager_unavailable(request, KmsThrottled("azure UnwrapKey", asked), settings)
    assert error.status_code == 503
    assert error.headers is not None
    assert error.headers["Retry-After"] == header
    outage = key_manager_unavailable(request, KeyManagerUnavailable("down"), settings)
    assert outage.headers is not None
    assert outage.headers["Retry-After"] == "7"


async def test_a_call_that_never_gets_a_slot_is_busy_not_an_outage_and_not_counted() -> None:
    """Every call slot taken until the deadline (a rollout without the data-key cache): the
    KMS was never asked, so nothing is counted as a KMS call, and the replica stays ready."""
    events: list[tuple[str, str]] = []

    class Observer(NullObserver):
        def kms_call(self, provider: str, operation: str, outcome: str, seconds: float) -> None:
            events.append((operation, outcome))

    calls = BlockingCalls(
        "fake",
        timeout_seconds=0.3,
        max_concurrency=1,
        classify=lambda exc, operation: None,
        observer=Observer(),
    )
    release = threading.Event()
    try:
        slow = asyncio.ensure_future(calls("Slow", lambda: release.wait(5)))
        await asyncio.sleep(0.05)
        with pytest.raises(KeyManagerBusy) as info:
            await calls("Queued", lambda: True)
        assert not isinstance(info.value, KmsThrottled)
        assert "KeyManagement__MaxConcurrentCalls" in info.value.reason
        with pytest.raises(KeyManagerUnavailable):
            await slow  # the one in the slot had its answer too late: that is an outage
    finally:
        release.set()
        calls.close()
    assert events == [("Slow", "timeout")]

    keys = WatchedKeyManager(
        Throttled(KeyManagerBusy("fake Decrypt: no free call slot")), Metrics()
    )
    with pytest.raises(KeyManagerBusy):
        await keys.decrypt("v", SA)
    assert keys.dependency.up
