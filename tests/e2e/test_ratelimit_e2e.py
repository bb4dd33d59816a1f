"""The rate limit counts values, on a real ``kamus serve encryptor``: one client's average rate
stays under the limit, a batch larger than the limit still goes through, concurrent batches
cannot multiply it, and ``kamus seal`` / ``kamus encrypt`` wait out its 429s."""

import asyncio
import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from crypto import AESKeyManager
from tests.support import leaks
from tests.support.processes import Service, kamus_serve
from tests.support.settings import new_key

SECRET = "rate-limited-s3cr3t"
leaks.register(SECRET)


def batch(size: int) -> dict[str, object]:
    return {
        "namespace": "team-a",
        "serviceAccount": "app",
        "items": {f"k{i}": SECRET for i in range(size)},
    }


ONE = {"data": SECRET, "service-account": "app", "namespace": "team-a"}


def counter(service: Service, name: str) -> float:
    text = httpx.get(f"{service.url}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels.get("outcome", "success") == "success"
    )


@pytest.fixture
def key() -> str:
    return new_key()


@pytest.fixture
def serve(key: str, tmp_path: Path) -> Iterator[Service]:
    """The encryptor with Encryptor__RateLimit=10/second."""
    env = {"KeyManagement__AES__Key": key, "Encryptor__RateLimit": "10/second"}
    with kamus_serve("encryptor", env, tmp_path / "encryptor.log") as service:
        yield service


@pytest.fixture
def serve_default(key: str, tmp_path: Path) -> Iterator[Service]:
    """The encryptor with the default Encryptor__RateLimit (20/second;600/minute)."""
    with kamus_serve("encryptor", {"KeyManagement__AES__Key": key}, tmp_path / "e.log") as service:
        yield service


def test_one_client_gets_at_most_the_limit_in_values_per_second(serve: Service) -> None:
    admitted = 0
    refused = 0
    with httpx.Client(base_url=serve.url, timeout=30) as client:
        started = time.monotonic()
        while time.monotonic() - started < 3:  # a client that ignores Retry-After
            status = client.post("/api/v2/encrypt", json=batch(5)).status_code
            assert status in (200, 429)
            admitted += 5 if status == 200 else 0
            refused += status == 429
        elapsed = time.monotonic() - started
        # The full budget (10), the refill (10 a second), one batch's rounding (5), margin (5).
        # Counting requests instead lets through 10 batches a second: 50 values.
        assert 10 <= admitted <= 10 * elapsed + 20, (admitted, elapsed)
        assert refused > 0
        assert counter(serve, "kamus_encryptions_total") == admitted

        # A batch larger than the per-second limit is admitted once the budget is full...
        time.sleep(1.5)
        assert client.post("/api/v2/encrypt", json=batch(30)).status_code == 200
        # ... and the client waits off the debt (20 values, 2s) before its next value.
        debt = client.post("/api/v1/encrypt", json=ONE)
        assert debt.status_code == 429
        assert int(debt.headers["retry-after"]) >= 2
        assert "Encryptor__RateLimit is 10 per 1 second" in debt.json()["detail"]
        time.sleep(int(debt.headers["retry-after"]))
        assert client.post("/api/v1/encrypt", json=ONE).status_code == 200


async def send_at_once(url: str, count: int, size: int) -> list[int]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        answers = await asyncio.gather(
            *(client.post("/api/v2/encrypt", json=batch(size)) for _ in range(count))
        )
    return [answer.status_code for answer in answers]


def test_concurrent_batches_cannot_multiply_the_limit(serve_default: Service) -> None:
    started = time.monotonic()
    statuses = asyncio.run(send_at_once(serve_default.url, count=25, size=100))
    elapsed = time.monotonic() - started
    assert set(statuses) <= {200, 429}
    encrypted = counter(serve_default, "kamus_encryptions_total")
    assert encrypted == 100 * statuses.count(200)
    # A batch of 100 enters only a full budget of 20/second, and leaves it 80 in debt: one batch
    # per 5 seconds at most. Counting requests let 20 of them through: 2,000 encryptions.
    assert encrypted <= 100 * (1 + elapsed // 5), (statuses, elapsed)
    assert statuses.count(200) >= 1  # the first found the budget full
    # Each refusal is counted and audited, with the limit it hit.
    assert counter(serve_default, "kamus_rate_limited_total") == statuses.count(429)
    refusals = [line for line in serve_default.log_lines() if line.get("status") == 429]
    assert len(refusals) == statuses.count(429)
    assert {line["reason"] for line in refusals} <= {
        "rate limit 20 per 1 second reached",
        "rate limit 600 per 1 minute reached",
    }


def kamus(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kamus", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={"PATH": os.environ["PATH"]},
    )


def secret_manifest(name: str, keys: int) -> str:
    string_data = {f"key-{i}": f"{SECRET}-{name}-{i}" for i in range(keys)}
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": "team-a"},
            "stringData": string_data,
        }
    )


def test_kamus_seal_of_100_keys_works_under_the_default_limit(
    serve_default: Service, key: str
) -> None:
    manifest = "---\n".join(secret_manifest(name, 100) for name in ("first", "second"))
    started = time.monotonic()
    sealed = kamus(
        "seal", "-a", "app", "-u", serve_default.url, "--allow-insecure-url", stdin=manifest
    )
    elapsed = time.monotonic() - started
    assert sealed.returncode == 0, sealed.stderr
    keys = AESKeyManager(base64.b64decode(key))
    for document in yaml.safe_load_all(sealed.stdout):
        name = document["metadata"]["name"]
        assert len(document["stringData"]) == 100
        ciphertext = document["stringData"]["key-99"]
        assert asyncio.run(keys.decrypt(ciphertext, "team-a:app")) == f"{SECRET}-{name}-99".encode()
    assert SECRET not in sealed.stdout
    # 200 values at 20 a second: the second Secret's batch waited for the first one's debt, as the
    # encryptor's 429 (Retry-After) said.
    assert counter(serve_default, "kamus_encryptions_total") == 200
    assert counter(serve_default, "kamus_rate_limited_total") >= 1
    assert elapsed >= 4


def test_kamus_encrypt_waits_out_a_short_429(serve: Service) -> None:
    common = ["-a", "app", "-n", "team-a", "-u", serve.url, "--allow-insecure-url", "-i"]
    with httpx.Client(base_url=serve.url, timeout=30) as client:
        # 50 values in debt: 6s before the next, longer than a kamus process takes to start.
        assert client.post("/api/v2/encrypt", json=batch(60)).status_code == 200
    encrypted = kamus("encrypt", "-s", SECRET, *common)
    assert encrypted.returncode == 0, encrypted.stderr
    assert counter(serve, "kamus_rate_limited_total") >= 1


def test_kamus_encrypt_reports_a_429_too_long_to_wait(key: str, tmp_path: Path) -> None:
    env = {"KeyManagement__AES__Key": key, "Encryptor__RateLimit": "1/hour"}
    with kamus_serve("encryptor", env, tmp_path / "encryptor.log") as serve:
        common = ["-a", "app", "-n", "team-a", "-u", serve.url, "--allow-insecure-url", "-i"]
        assert kamus("encrypt", "-s", SECRET, *common).returncode == 0
        started = time.monotonic()
        refused = kamus("encrypt", "-s", SECRET, *common)
        assert time.monotonic() - started < 60  # not the hour the server asked for
    assert refused.returncode == 5
    assert "the server answered 429" in refused.stderr
    assert "Encryptor__RateLimit is 1 per 1 hour" in refused.stderr
    assert "retry in" in refused.stderr
