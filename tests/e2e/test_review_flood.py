"""A flood of unknown tokens from one address (each needs a TokenReview) must not starve the
other pods of the decryptor, nor take the decryptor out of service: its queue timeouts are
"busy", not "Kubernetes is down"."""

import asyncio
import base64
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from crypto import AESKeyManager
from decryptor.app import create_app as create_decryptor
from encryptor.app import create_app as create_encryptor
from kamus.server.identity import sa_id
from kamus.server.kube import create_api_client
from kamus.server.kubeauth.reviews import TokenReviewAuthenticator
from kamus.server.settings import KubernetesSettings
from tests.k8s_double import Faults, KubeApiDouble
from tests.support.leaks import register
from tests.support.processes import kamus_serve
from tests.support.settings import SettingsFactory, new_key

SECRET = "flood-survivor-s3cr3t"
ATTACKER, POD, PROBE = "127.0.0.2", "127.0.0.3", "127.0.0.1"
BUSY = "the service is busy"
DOWN = "Kubernetes API is unavailable"
ENCRYPT = {"group": "soluto.com", "resource": "kamussecrets", "verb": "create"}


def client_from(address: str, connections: int = 4) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(local_address=address),
        limits=httpx.Limits(max_connections=connections),
        timeout=60,
    )


@dataclass
class Flood:
    """``connections`` loops, each sending decrypts with a new unknown token, until stopped."""

    url: str
    connections: int
    answers: list[httpx.Response] = field(default_factory=list)
    refused: asyncio.Event = field(default_factory=asyncio.Event)  # a 503 came back
    _secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    _sent: int = 0

    def __post_init__(self) -> None:
        register(self._secret)  # the decryptor's log must hold no token, the flood's included

    async def _loop(self, client: httpx.AsyncClient) -> None:
        while True:
            self._sent += 1
            token = f"unknown-{self._sent}-{self._secret}"
            answer = await client.post(
                f"{self.url}/api/v1/decrypt",
                json={"data": "x"},
                headers={"Authorization": f"Bearer {token}"},
            )
            self.answers.append(answer)
            if answer.status_code == 503:
                self.refused.set()

    def refusals(self) -> list[httpx.Response]:
        return [a for a in self.answers if a.status_code == 503]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with client_from(ATTACKER, self.connections) as client:
            loops = [asyncio.create_task(self._loop(client)) for _ in range(self.connections)]
            try:
                yield
            finally:
                for loop in loops:
                    loop.cancel()
                await asyncio.gather(*loops, return_exceptions=True)


@dataclass
class InProcess:
    """The decryptor app called in process, as if from any address: decrypts with an unknown
    token each (a TokenReview each, refused)."""

    app: FastAPI
    _secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def __post_init__(self) -> None:
        register(self._secret)

    def caller(self, address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://decryptor")

    async def decrypt(self, address: str) -> httpx.Response:
        async with self.caller(address) as client:
            return await client.post(
                "/api/v1/decrypt",
                json={"data": "x"},
                headers={"Authorization": f"Bearer unknown-{address}-{self._secret}"},
            )


@pytest.mark.slow
async def test_a_flood_of_unknown_tokens_from_one_address_does_not_starve_new_pods(
    kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    key = new_key()
    env = {
        "KeyManagement__AES__Key": key,
        "KUBECONFIG": str(kube_api.write_kubeconfig(tmp_path / "kubeconfig")),
        "Kubernetes__MaxConcurrentRequests": "4",
        "Kubernetes__MaxConcurrentRequestsPerClient": "2",
        "Kubernetes__RequestTimeoutSeconds": "3",
    }
    keys = AESKeyManager(base64.b64decode(key))
    pods = [f"pod-{n}" for n in range(3)]
    ciphertexts = {pod: await keys.encrypt(SECRET.encode(), sa_id("team-a", pod)) for pod in pods}
    with kamus_serve("decryptor", env, tmp_path / "decryptor.log") as decryptor:
        # Every call to the apiserver takes 0.5 s: the 4 slots answer 8 TokenReviews a second,
        # and 60 connections ask for more than that: in one shared queue, a new pod waited
        # past its 3 s deadline and got 503, and the replica was reported not ready.
        kube_api.faults = Faults(delay_seconds=0.5)
        flood = Flood(decryptor.url, connections=60)
        readiness: list[int] = []
        async with client_from(PROBE) as probe, client_from(POD) as pod_client:

            async def watch_readiness() -> None:
                while True:
                    readiness.append((await probe.get(f"{decryptor.url}/readyz")).status_code)
                    await asyncio.sleep(0.25)

            watcher = asyncio.create_task(watch_readiness())
            async with flood.running():
                await asyncio.sleep(1.5)  # the attacker's queue fills up
                waits = []
                for pod in pods:  # new pods: tokens never seen, each needs its TokenReview
                    token = kube_api.issue_token("team-a", pod)
                    start = time.monotonic()
                    answer = await pod_client.post(
                        f"{decryptor.url}/api/v1/decrypt",
                        json={"data": ciphertexts[pod]},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    waits.append(time.monotonic() - start)
                    assert answer.status_code == 200, answer.text
                    assert answer.text == SECRET
                # Each is one TokenReview of 0.5 s: generous, and below the 3 s deadline that
                # the shared queue made them wait out.
                assert max(waits) < 2.0, waits
                # The attacker's own queue: it waits there for its 3 s, then is told so.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(flood.refused.wait(), timeout=15)
                metrics = (await probe.get(f"{decryptor.url}/metrics")).text
            watcher.cancel()
    refusals = flood.refusals()
    assert refusals, "the attacker's requests never timed out in their queue"
    for answer in refusals:
        assert BUSY in answer.json()["detail"]
        assert "from your address" in answer.json()["detail"]
        assert int(answer.headers["retry-after"]) > 0
    assert not [a for a in flood.answers if DOWN in a.text]
    assert {a.status_code for a in flood.answers} <= {401, 503}
    assert len(readiness) >= 10
    assert set(readiness) == {200}, readiness
    assert 'kamus_dependency_up{dependency="kubernetes"} 1.0' in metrics
    assert 'kamus_token_reviews_total{outcome="busy"}' in metrics
    assert 'outcome="unavailable"' not in metrics


async def test_every_slot_taken_by_other_addresses_is_busy_and_keeps_the_replica_ready(
    kube_api: KubeApiDouble, kubeconfig: Path, make_settings: SettingsFactory
) -> None:
    """The shared slots, not the caller's own share, are what ran out: the answer says the
    service is busy, not that the caller sends too much or that Kubernetes is down."""
    authenticator = TokenReviewAuthenticator(
        await create_api_client(KubernetesSettings()),
        max_concurrency=1,
        max_concurrency_per_client=1,
        timeout_seconds=1.5,
    )
    app = create_decryptor(make_settings(), authenticator=authenticator)
    calls = InProcess(app)
    caller, decrypt = calls.caller, calls.decrypt

    # The one slot is held 1 s by each review: the third caller cannot have it within 1.5 s.
    kube_api.faults = Faults(delay_seconds=1.0)
    try:
        first = asyncio.create_task(decrypt("10.0.0.1"))
        await asyncio.sleep(0.2)
        second = asyncio.create_task(decrypt("10.0.0.2"))
        await asyncio.sleep(0.2)
        third = await decrypt("10.0.0.3")
        assert third.status_code == 503
        assert third.json()["detail"] == (
            "the service is busy: too many tokens are waiting to be verified; retry later"
        )
        assert int(third.headers["retry-after"]) > 0
        assert (await first).status_code == 401
        await second
        async with caller("10.0.0.9") as probe:
            assert (await probe.get("/readyz")).status_code == 200
            metrics = (await probe.get("/metrics")).text
        assert 'kamus_token_reviews_total{outcome="busy"} 1.0' in metrics
        assert 'kamus_dependency_up{dependency="kubernetes"} 1.0' in metrics
    finally:
        await authenticator.close()


async def test_at_the_encryptor_each_client_behind_a_trusted_proxy_has_its_own_share(
    kube_api: KubeApiDouble, kubeconfig: Path, make_settings: SettingsFactory
) -> None:
    """Behind an ingress every caller's peer is the ingress: the fair share must go by the
    client the trusted proxy names, or one busy user makes every other one wait in its queue."""
    settings = make_settings(
        **{
            "Encryptor__Authentication": "kubernetes",
            "Encryptor__RateLimit": "off",
            "Encryptor__TrustedProxies": "10.9.9.9/32",
            "Kubernetes__MaxConcurrentRequests": "2",
            "Kubernetes__MaxConcurrentRequestsPerClient": "1",
            "Kubernetes__RequestTimeoutSeconds": "1.5",
        }
    )
    jane = kube_api.issue_user_token("jane@example.com")
    kube_api.grant("jane@example.com", namespace="team-a", **ENCRYPT)
    secret = secrets.token_urlsafe(24)
    register(secret)
    body = {"data": "v", "service-account": "app", "namespace": "team-a"}

    app = create_encryptor(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("10.9.9.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://encryptor") as ingress:

            async def encrypt(client: str, token: str) -> httpx.Response:
                return await ingress.post(
                    "/api/v1/encrypt",
                    json=body,
                    headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": client},
                )

            # Every apiserver call takes 1 s. 10.0.0.1 sends two unknown tokens: its one slot
            # is held until 1 s, then 2 s. Jane, at 10.0.0.2, must not queue behind them (she
            # would wait past the 1.5 s deadline: 503 busy): she has a share of her own and a
            # free shared slot, for her TokenReview and then her SubjectAccessReview, 1 s each.
            kube_api.faults = Faults(delay_seconds=1.0)
            busy = [
                asyncio.create_task(encrypt("10.0.0.1", f"unknown-{n}-{secret}")) for n in (1, 2)
            ]
            await asyncio.sleep(0.2)
            start = time.monotonic()
            answer = await encrypt("10.0.0.2", jane)
            waited = time.monotonic() - start
            assert answer.status_code == 200, answer.text
            assert waited < 3.0, waited
            assert [(await task).status_code for task in busy] == [401, 401]


async def test_the_services_own_checks_do_not_wait_behind_a_flood(
    kube_api: KubeApiDouble, kubeconfig: Path, make_settings: SettingsFactory
) -> None:
    """With every shared slot taken and more callers queued, Kamus's isAlive (the chart's
    decryptor probe) must still answer, and a replica marked down must still find out that the
    apiserver answers again: the service's own calls have a slot of their own."""
    authenticator = TokenReviewAuthenticator(
        await create_api_client(KubernetesSettings()),
        max_concurrency=1,
        max_concurrency_per_client=1,
        # A check of its own takes the apiserver's 1 s delay; behind the flood (three callers
        # of 1 s each ahead of it) it would wait well over this. The slack is for a loaded CI.
        timeout_seconds=2.5,
        access_review_cache_seconds=0,
    )
    app = create_decryptor(make_settings(), authenticator=authenticator)
    calls = InProcess(app)
    caller, decrypt = calls.caller, calls.decrypt

    try:
        # One apiserver failure marks Kubernetes down.
        kube_api.faults = Faults(fail_status=500, remaining=1)
        assert (await decrypt("10.0.0.99")).status_code == 503
        kube_api.faults = Faults(delay_seconds=1.0)
        # Three addresses: one holds the one shared slot for 1 s, two wait for it.
        flood = [asyncio.create_task(decrypt(f"10.0.0.{n}")) for n in (1, 2, 3)]
        await asyncio.sleep(0.2)
        async with caller("10.0.0.9") as probe:
            alive, ready = await asyncio.gather(probe.get("/api/v1/isAlive"), probe.get("/readyz"))
        assert (alive.status_code, alive.json()) == (200, True)
        assert ready.status_code == 200, ready.text
        await asyncio.gather(*flood)
    finally:
        kube_api.faults = Faults()
        await authenticator.close()
