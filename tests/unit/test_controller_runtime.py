"""The controller's runtime parts that tests/e2e/test_controller.py only sees from outside: the
watches' backoff and the work queue. (The Lease and the informers are tested there, against the
Kubernetes API double; the token bucket in tests/unit/test_controller_rules.py.)"""

import asyncio

import pytest
from kubernetes.aio.client import ApiClient, Configuration

from controller.pacing import Backoff
from controller.runner import ControllerRunner
from controller.workqueue import WorkQueue
from crypto import AESKeyManager
from kamus.server.metrics import ControllerMetrics
from kamus.server.settings import ControllerSettings


async def take(queue: WorkQueue[str], within: float = 1.0) -> str:
    return await asyncio.wait_for(queue.get(), within)


async def test_backoff_doubles_with_jitter_up_to_its_cap_and_starts_over_after_a_reset() -> None:
    backoff = Backoff(first=1.0, cap=4.0)
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    backoff.sleep = record
    for _ in range(5):
        await backoff.wait()
    backoff.reset()
    await backoff.wait()
    nominal = [1.0, 2.0, 4.0, 4.0, 4.0, 1.0]
    # Jitter takes each wait to between half and all of the nominal one.
    assert all(n / 2 <= w <= n for w, n in zip(waits, nominal, strict=True)), waits


async def test_a_key_waits_in_the_work_queue_once_until_a_worker_takes_it() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for key in ("a", "b", "a", "b", "a"):
        queue.add(key)
    assert await take(queue) == "a"
    queue.add("a")  # an event after a worker took it: reconciled again, from a fresh read
    assert await take(queue) == "b"
    assert await take(queue) == "a"
    with pytest.raises(TimeoutError):
        await take(queue, within=0.05)


async def test_a_key_retried_later_comes_back_after_its_delay() -> None:
    queue: WorkQueue[str] = WorkQueue()
    loop = asyncio.get_running_loop()
    start = loop.time()
    queue.add_after("a", 0.2)
    queue.add("b")
    assert await take(queue) == "b"
    assert await take(queue, within=5) == "a"
    assert loop.time() - start >= 0.19  # the loop may run a timer a clock tick early


async def test_a_reconcile_that_raises_what_no_rule_foresaw_leaves_the_worker_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One KamusSecret whose reconcile raises an unexpected error is retried later; the worker
    goes on with the others, and the log names the error's type, never its message."""
    api = ApiClient(Configuration(host="http://127.0.0.1:9"))  # never called
    runner = ControllerRunner(
        api,
        AESKeyManager(bytes(32)),
        ControllerSettings(),
        ControllerMetrics(),
        lease_namespace="kamus",
    )
    reconciled: list[tuple[str, str]] = []

    class Breaks:
        async def reconcile(self, namespace: str, name: str) -> str:
            if name == "broken":
                raise RuntimeError("held-in-the-value")
            reconciled.append((namespace, name))
            return "unchanged"

    runner._controller = Breaks()  # type: ignore[assignment]
    runner._queue.add(("team-a", "broken"))
    runner._queue.add(("team-a", "fine"))
    worker = asyncio.create_task(runner._work())
    try:
        for _ in range(100):
            if reconciled:
                break
            await asyncio.sleep(0.01)
        assert reconciled == [("team-a", "fine")]
        assert not worker.done()
        runner._queue.add(("team-a", "later"))
        for _ in range(100):
            if len(reconciled) == 2:
                break
            await asyncio.sleep(0.01)
        assert reconciled[-1] == ("team-a", "later")
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await api.close()
    [line] = [r for r in caplog.records if r.name == "controller.runner"]
    assert line.getMessage() == "team-a/broken: reconcile failed (RuntimeError); retried later"
    assert "held-in-the-value" not in caplog.text
    errors = runner._metrics.controller_reconciles.labels("error")._value.get()
    assert errors == 1
