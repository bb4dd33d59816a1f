"""The measurements of issue 7. Each returns a JSON-ready dict; ratios compare rounds of the two
sides taken alternately in the same run, on the same machine, with the same client."""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bench.load import Target, Throughput, closed_loop, open_loop, wrk
from bench.services import KAMUS_PYTHON, ROOT, Service
from kamus.cli.init import InitOptions, run_init
from tests.k8s_double import Faults, KubeApiDouble

NAMESPACE, SERVICE_ACCOUNT = "team-a", "app"
SECRETS = 20
TOKEN_REVIEW_DELAY = 0.005  # seconds added to every Kubernetes API request
KMS_DELAY = 0.020  # seconds added to every Cloud KMS call


@dataclass(frozen=True)
class Plan:
    """How long and how often: the full run, or the smoke run's tiny counts."""

    quick: bool
    rounds: int  # alternating rounds of each side of a ratio
    seconds: int  # per throughput round
    warmup_seconds: int  # per side, before the rounds
    memory_requests: int
    latency_rate: float
    latency_seconds: float
    pod_rounds: int
    sweep: tuple[int, ...]  # --workers values for the encrypt throughput sweep
    workers: int = 1  # for every other service
    python_load: bool = False  # the asyncio client instead of wrk


FULL = Plan(False, 5, 4, 1, 10_000, 200, 10, 9, (1, 2, 3, 4))
QUICK = Plan(True, 1, 1, 0, 300, 50, 1, 1, ())


def throughput(plan: Plan, target: Target) -> Throughput:
    if plan.python_load:
        return closed_loop(target, seconds=plan.seconds)
    return wrk(target, plan.seconds)


def warm_up(plan: Plan, targets: Mapping[str, Target]) -> None:
    for target in targets.values():
        if plan.warmup_seconds:
            closed_loop(target, seconds=plan.warmup_seconds, connections=8)


def alternate(
    plan: Plan, targets: Mapping[str, Target], *, warm: bool = True
) -> dict[str, list[Throughput]]:
    """Rounds of each target in turn (A B A B ...), after a warm-up of each."""
    if warm:
        warm_up(plan, targets)
    results: dict[str, list[Throughput]] = {name: [] for name in targets}
    for _ in range(plan.rounds):
        for name, target in targets.items():
            results[name].append(throughput(plan, target))
    return results


def summary(rounds: list[Throughput]) -> dict[str, Any]:
    result = {
        "rps": [round(r.rps, 1) for r in rounds],
        "median_rps": round(statistics.median(r.rps for r in rounds), 1),
        "max_rps": round(max(r.rps for r in rounds), 1),
        "requests": sum(r.requests for r in rounds),
        "errors": sum(r.errors for r in rounds),
    }
    cpu = [r.client_cpu_seconds / r.seconds for r in rounds if r.client_cpu_seconds is not None]
    if cpu:  # how much of the two cores the load generator itself took
        result["wrk_cores"] = round(statistics.median(cpu), 2)
    return result


def encrypt_body(data: str = "s3cr3t-database-password") -> dict[str, str]:
    return {"data": data, "service-account": SERVICE_ACCOUNT, "namespace": NAMESPACE}


def encrypt_target(service: Service) -> Target:
    return Target(f"{service.url}/api/v1/encrypt", encrypt_body(), {})


def decrypt_target(service: Service, ciphertext: str, token: str) -> Target:
    return Target(
        f"{service.url}/api/v1/decrypt", {"data": ciphertext}, {"Authorization": f"Bearer {token}"}
    )


def encrypt_one(service: Service) -> str:
    response = httpx.post(f"{service.url}/api/v1/encrypt", json=encrypt_body(), timeout=30)
    response.raise_for_status()
    return response.text


def check_decrypts(target: Target) -> None:
    """One request answered 200 before the load, so the load measures success, not errors."""
    response = httpx.post(target.url, json=target.body, headers=dict(target.headers), timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"{target.url} answered {response.status_code}: {response.text}")


def cache_lookups(service: Service) -> dict[str, float]:
    """``kamus_token_review_cache_total`` by result, from the decryptor's /metrics."""
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    found = {}
    for line in text.splitlines():
        if line.startswith("kamus_token_review_cache_total{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('result="')[1].split('"')[0]] = float(value)
    return found


# -- 1. encrypt throughput against the bare server ---------------------------------------------


def encrypt_throughput(
    plan: Plan, kamus: Service, bare: Service, fastapi: Service, floor: Service, reuse: Service
) -> dict[str, Any]:
    encrypt_one(kamus)
    encrypt_one(reuse)
    servers = {"kamus": kamus, "bare": bare, "fastapi": fastapi, "floor": floor, "reuse": reuse}
    rounds = alternate(plan, {name: encrypt_target(s) for name, s in servers.items()})
    result = {name: summary(r) for name, r in rounds.items()}
    bare_rps = result["bare"]["median_rps"]
    ratio = result["kamus"]["median_rps"] / bare_rps
    return {
        **result,
        "ratio": round(ratio, 3),
        "target": 0.6,
        "pass": ratio >= 0.6,
        # For reference: what the framework alone keeps of the bare server; what the encryption
        # work alone (no audit, metrics or rate limit) keeps; and Kamus of that.
        "fastapi_over_bare": round(result["fastapi"]["median_rps"] / bare_rps, 3),
        "floor_over_bare": round(result["floor"]["median_rps"] / bare_rps, 3),
        "kamus_over_floor": round(result["kamus"]["median_rps"] / result["floor"]["median_rps"], 3),
        # Encryptor__DataKeyReuseSeconds=5: a data key and HPKE wrap per identity and window.
        "reuse_over_bare": round(result["reuse"]["median_rps"] / bare_rps, 3),
    }


# -- 3. decrypt throughput, TokenReview cache warm against off ---------------------------------


def decrypt_throughput(
    plan: Plan, kube: KubeApiDouble, warm: Service, cold: Service, ciphertext: str
) -> dict[str, Any]:
    token = kube.issue_token(NAMESPACE, SERVICE_ACCOUNT)
    targets = {"warm": decrypt_target(warm, ciphertext, token)}
    targets["cold"] = decrypt_target(cold, ciphertext, token)
    for target in targets.values():
        check_decrypts(target)
    warm_up(plan, targets)
    reviews_before = len(kube.reviews)
    rounds = alternate(plan, targets, warm=False)
    reviews = len(kube.reviews) - reviews_before
    result = {name: summary(r) for name, r in rounds.items()}
    ratio = result["warm"]["median_rps"] / result["cold"]["median_rps"]
    cold_requests = result["cold"]["requests"]
    return {
        **result,
        "ratio": round(ratio, 2),
        # Both ran in the same span, but the warm decryptor asks once per 10 s at most: nearly
        # every TokenReview is the cold one's (a little over 1: wrk counts no request that is
        # still unanswered when a round ends).
        "token_reviews_per_cold_request": round(reviews / max(cold_requests, 1), 3),
        "warm_cache_lookups": cache_lookups(warm),
    }


# -- 4. memory, and 5. latency at a fixed rate ------------------------------------------------


def memory(plan: Plan, encryptor: Service, decryptor: Service, decrypt: Target) -> dict[str, Any]:
    """RSS of a fresh encryptor and decryptor, idle and after ``memory_requests`` each."""
    result: dict[str, Any] = {"requests": plan.memory_requests, "target_mb": 80}
    for name, service, target in [
        ("encryptor", encryptor, encrypt_target(encryptor)),
        ("decryptor", decryptor, decrypt),
    ]:
        idle = service.rss_mb()
        load = closed_loop(target, connections=16, count=plan.memory_requests)
        if load.errors:
            raise RuntimeError(f"{name}: {load.errors} errors under load")
        result[name] = {"idle_mb": round(idle, 1), "rss_mb": round(service.rss_mb(), 1)}
    result["pass"] = all(result[n]["rss_mb"] <= 80 for n in ("encryptor", "decryptor"))
    return result


def latency(plan: Plan, targets: Mapping[str, Target]) -> dict[str, Any]:
    """p50 and p99 of each target in turn at the plan's fixed rate (the bare server's show what
    the client and the loopback add)."""
    result: dict[str, Any] = {"rate": plan.latency_rate, "seconds": plan.latency_seconds}
    for name, target in targets.items():
        measured = open_loop(target, plan.latency_rate, plan.latency_seconds)
        if measured.errors:
            raise RuntimeError(f"{name}: {measured.errors} errors at a fixed rate")
        numbers = asdict(measured)
        result[name] = {k: round(numbers[k], 2) for k in ("requests", "p50_ms", "p99_ms", "max_ms")}
    return result


# -- 2. a pod start with 20 secrets ------------------------------------------------------------


def encrypt_secrets(encryptor: Service) -> dict[str, str]:
    """Ciphertexts of ``SECRETS`` values by name, through the v2 batch encrypt."""
    values = {f"secret-{i:02}": f"value {i}: {os.urandom(12).hex()}" for i in range(SECRETS)}
    body = {"namespace": NAMESPACE, "serviceAccount": SERVICE_ACCOUNT, "items": values}
    response = httpx.post(f"{encryptor.url}/api/v2/encrypt", json=body, timeout=60)
    response.raise_for_status()
    return {name: item["data"] for name, item in response.json()["items"].items()}


class PodStart:
    """The two ways a pod's init container gets its secrets, timed in this process."""

    def __init__(self, work: Path, ciphertexts: Mapping[str, str]) -> None:
        self.work = work
        self.folder = work / "encrypted"  # as a mounted ConfigMap
        self.folder.mkdir()
        for name, ciphertext in ciphertexts.items():
            (self.folder / name).write_text(ciphertext)
        self.ciphertexts = ciphertexts
        self.runs = 0

    def kamus_flow(self, decryptor: Service, token: str) -> float:
        """Kamus's init container: one ``/api/v1/decrypt`` per secret, one after the other (over
        one kept-alive connection, which flatters it)."""
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=decryptor.url, headers=headers, timeout=60) as client:
            begin = time.perf_counter()
            for ciphertext in self.ciphertexts.values():
                client.post("/api/v1/decrypt", json={"data": ciphertext}).raise_for_status()
            return time.perf_counter() - begin

    def _options(self, decryptor: Service, token: str) -> InitOptions:
        self.runs += 1
        token_file = self.work / f"token-{self.runs}"
        token_file.write_text(token)
        return InitOptions(
            folders=[self.folder],
            output_dir=self.work / f"out-{self.runs}",
            file_name="config.json",
            output_format="json",
            url=decryptor.url,
            token_file=token_file,
        )

    def init_batch(self, decryptor: Service, token: str) -> float:
        """``kamus init``'s code in this process: the batch path, one request."""
        options = self._options(decryptor, token)
        options.output_dir.mkdir()
        with contextlib.redirect_stderr(io.StringIO()):  # its progress lines
            begin = time.perf_counter()
            run_init(options)
            elapsed = time.perf_counter() - begin
        written = json.loads((options.output_dir / "config.json").read_text())
        if len(written) != len(self.ciphertexts):
            raise RuntimeError(f"kamus init wrote {len(written)} secrets, not {SECRETS}")
        return elapsed

    def init_process(self, decryptor: Service, token: str) -> float:
        """``kamus init`` as the init container runs it: a new Python process."""
        options = self._options(decryptor, token)
        options.output_dir.mkdir()
        command = [KAMUS_PYTHON, "-m", "kamus", "init", "-e", str(self.folder)]
        command += ["-d", str(options.output_dir), "-n", "config.json", "-f", "json"]
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
        env |= {"KAMUS_URL": decryptor.url, "TOKEN_FILE_PATH": str(options.token_file)}
        begin = time.perf_counter()
        subprocess.run(command, env=env, cwd=ROOT, check=True, capture_output=True)  # noqa: S603
        return time.perf_counter() - begin


def counted(kube: KubeApiDouble, run: Callable[[], float]) -> tuple[float, int]:
    """Seconds a pod start took, and the TokenReviews the apiserver answered meanwhile."""
    before = len(kube.reviews)
    seconds = run()
    return seconds, len(kube.reviews) - before


def pod_start(
    plan: Plan,
    work: Path,
    kube: KubeApiDouble,
    encryptor: Service,
    no_cache: Service,
    cached: Service,
) -> dict[str, Any]:
    pods = PodStart(work, encrypt_secrets(encryptor))
    kube.faults = Faults(delay_seconds=TOKEN_REVIEW_DELAY)  # the KMS double's is set at its start

    def token() -> str:  # a new pod's own token
        return kube.issue_token(NAMESPACE, SERVICE_ACCOUNT)

    # Connections, KMS credentials and code paths warmed up, once each, untimed.
    pods.kamus_flow(no_cache, token())
    pods.init_batch(cached, token())
    times: dict[str, list[float]] = {"kamus": [], "v1_cached": [], "cold": [], "warm": []}
    times["process"] = []
    reviews: dict[str, list[int]] = {name: [] for name in ("kamus", "v1_cached", "cold", "warm")}
    for _ in range(plan.pod_rounds):
        # Kamus's flow, and the same flow against the TokenReview cache (a v1-only client).
        for run, decryptor in [("kamus", no_cache), ("v1_cached", cached)]:
            seconds, count = counted(kube, partial(pods.kamus_flow, decryptor, token()))
            times[run].append(seconds)
            reviews[run].append(count)
        pod_token = token()
        for run in ("cold", "warm"):  # a new pod's token, then the same token again
            seconds, count = counted(kube, partial(pods.init_batch, cached, pod_token))
            times[run].append(seconds)
            reviews[run].append(count)
        times["process"].append(pods.init_process(cached, token()))
    kube.faults = Faults()
    median = {name: statistics.median(values) for name, values in times.items()}
    speedup = median["kamus"] / median["cold"]
    return {
        "secrets": SECRETS,
        "token_review_delay_ms": TOKEN_REVIEW_DELAY * 1e3,
        "kms_delay_ms": KMS_DELAY * 1e3,
        "seconds": {name: [round(v, 4) for v in values] for name, values in times.items()},
        "median_ms": {name: round(v * 1e3, 1) for name, v in median.items()},
        "speedup": round(speedup, 1),
        "speedup_warm": round(median["kamus"] / median["warm"], 1),
        "speedup_with_process_start": round(median["kamus"] / median["process"], 1),
        "target": 10,
        "pass": speedup >= 10,
        "token_reviews": {name: values for name, values in reviews.items()},
        # For reference: the Google Cloud KMS client's share of memory, against the AES one.
        "rss_mb": {
            "encryptor": round(encryptor.rss_mb(), 1),
            "decryptor": round(cached.rss_mb(), 1),
        },
    }


# -- 6. workers ----------------------------------------------------------------------------------


def worker_sweep(plan: Plan, encryptors: Mapping[int, Service]) -> dict[str, Any]:
    """Alternating rounds, as :func:`alternate`, noting mid-round how the kernel spread wrk's
    kept-alive connections over the workers (uvicorn's workers share one listening socket)."""
    rounds: dict[str, list[Throughput]] = {str(n): [] for n in encryptors}
    spread: dict[str, list[list[int]]] = {str(n): [] for n in encryptors}
    for service in encryptors.values():
        encrypt_one(service)
    warm_up(plan, {str(n): encrypt_target(s) for n, s in encryptors.items()})
    with ThreadPoolExecutor(1) as pool:
        for _ in range(plan.rounds):
            for n, service in encryptors.items():
                running = pool.submit(throughput, plan, encrypt_target(service))
                time.sleep(plan.seconds / 2)
                spread[str(n)].append(service.connections())
                rounds[str(n)].append(running.result())
    return {
        "workers": {name: summary(r) for name, r in rounds.items()},
        "connections_per_worker": spread,
        "rss_mb": {str(n): round(s.rss_mb(), 1) for n, s in encryptors.items()},
    }
