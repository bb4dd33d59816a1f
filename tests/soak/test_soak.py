"""A bounded soak: both services as real processes under a fixed request rate, on loopback.

Open loop (requests start on schedule whatever the answers do), encrypt and decrypt at once, for
SOAK_SECONDS: every answer must be right, and memory must not grow past a small bound once warm.
Not a benchmark (bench/ measures speed); this looks for errors and leaks under sustained load.
"""

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from tests.k8s_double import KubeApiDouble
from tests.support import leaks
from tests.support.processes import Deployment, deploy
from tests.support.settings import new_key

SOAK_SECONDS = float(os.environ.get("KAMUS_SOAK_SECONDS", "20"))
RATE = 60  # requests per second, per service
WARM_UP_SECONDS = 4
RSS_GROWTH_LIMIT_MB = 8
SECRET = "soak-test-s3cr3t-value"
leaks.register(SECRET)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def open_loop(
    call: Callable[[], Awaitable[bool]], seconds: float, rate: float, on_warm: Callable[[], None]
) -> Counter[str]:
    """Start ``call`` every 1/rate seconds for ``seconds``; count the outcomes."""
    outcomes: Counter[str] = Counter()
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    warm = False

    async def one() -> None:
        try:
            outcomes["ok" if await call() else "wrong answer"] += 1
        except httpx.HTTPError as exc:
            outcomes[type(exc).__name__] += 1

    for n in range(int(seconds * rate)):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if not warm and time.monotonic() - start >= WARM_UP_SECONDS:
            warm = True
            on_warm()
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return outcomes


def test_sustained_load_makes_no_errors_and_no_leak(
    kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    env = {"KeyManagement__AES__Key": new_key(), "Encryptor__RateLimit": "off"}
    with deploy(kube_api, tmp_path, env) as deployment:
        ciphertext = deployment.encrypt(SECRET, "team-a", "app").text
        token = kube_api.issue_token("team-a", "app")
        pids = {
            "encryptor": deployment.encryptor.process.pid,
            "decryptor": deployment.decryptor.process.pid,
        }
        warm_rss: dict[str, float] = {}

        def on_warm() -> None:
            if not warm_rss:
                warm_rss.update({name: rss_mb(pid) for name, pid in pids.items()})

        outcomes = asyncio.run(soak(deployment, ciphertext, token, on_warm))
        final_rss = {name: rss_mb(pid) for name, pid in pids.items()}

    for service in ("encrypt", "decrypt"):
        counted = outcomes[service]
        assert counted == Counter({"ok": int(SOAK_SECONDS * RATE)}), f"{service}: {counted}"
    for name, before in warm_rss.items():
        growth = final_rss[name] - before
        print(f"{name}: {before:.1f} MB once warm, {final_rss[name]:.1f} MB at the end")
        assert growth < RSS_GROWTH_LIMIT_MB, f"{name} grew {growth:.1f} MB under load"


async def soak(
    deployment: Deployment, ciphertext: str, token: str, on_warm: Callable[[], None]
) -> dict[str, Counter[str]]:
    limits = httpx.Limits(max_connections=50)
    async with (
        httpx.AsyncClient(base_url=deployment.encryptor.url, timeout=10, limits=limits) as enc,
        httpx.AsyncClient(base_url=deployment.decryptor.url, timeout=10, limits=limits) as dec,
    ):

        async def encrypt() -> bool:
            body = {"data": SECRET, "service-account": "app", "namespace": "team-a"}
            answer = await enc.post("/api/v1/encrypt", json=body)
            return answer.status_code == 200 and answer.text.startswith("kamus$")

        async def decrypt() -> bool:
            headers = {"Authorization": f"Bearer {token}"}
            answer = await dec.post("/api/v1/decrypt", json={"data": ciphertext}, headers=headers)
            return answer.status_code == 200 and answer.text == SECRET

        encrypted, decrypted = await asyncio.gather(
            open_loop(encrypt, SOAK_SECONDS, RATE, on_warm),
            open_loop(decrypt, SOAK_SECONDS, RATE, lambda: None),
        )
    return {"encrypt": encrypted, "decrypt": decrypted}
