"""``python -m bench.rollout [--quick] [--out DIR]``: measurement 9, a rollout (issue 20, part 4).

N pods (50 and 200), replicas of one Deployment (one namespace and service account, the same 20
ciphertexts), start at once against one decryptor process. Each pod has its own service-account
token and sends its values as ``kamus init`` does, through kamus init's own client code:

* *Kamus flow*: 20 ``POST /api/v1/decrypt``, one per value, to a decryptor with the data-key cache
  off (``KeyManagement__DataKeyCache__Capacity=0``);
* *ours, cache off*: one ``POST /api/v2/decrypt`` batch, the same decryptor settings;
* *ours, cache on*: one batch, default settings;
* *reference*: ours with the cache on, against the same double without delay or quota: the
  baseline of the target "p99 pod start at most 1.5 times this".

The KMS double runs in a process of its own (bench/kms_process.py) with a 20 ms delay per call and
a quota of 500 crypto calls a second, over which it answers as the real service throttles. The
Kubernetes API double (this process) answers every pod's TokenReview. The decryptor is restarted
for each run: a fresh data-key cache and TokenReview cache.

Pods are threads in a few worker processes (``POD_PROCESSES``): each runs kamus init's retry
loop (503s and network errors retried with backoff within ``--timeout``, 60 s) with kamus init's
HTTP client, from an address of its own in 127.0.0.0/8, as pods have IP addresses of their own
(one address for all would meet the decryptor's per-client limits, made for one noisy client).
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import math
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.kms_process import KINDS, Kind, KmsProcess
from bench.machine import machine
from bench.services import ROOT, Service, Spec, running
from kamus.cli.client import ClientError, KamusClient
from kamus.cli.init import _Unavailable, decrypt_with
from tests.k8s_double import KubeApiDouble

NAMESPACE, SERVICE_ACCOUNT = "team-a", "app"
VALUES = 20
KMS_DELAY = 0.020  # seconds added to every KMS call
QUOTA = 500.0  # crypto calls admitted per second
INIT_TIMEOUT = 60.0  # kamus init --timeout's default
PODS_FULL = (50, 200)
PODS_QUICK = (50,)
QUICK_KMS: tuple[Kind, ...] = ("gcp",)  # the lightest double: REST and AES-GCM in-process
POD_PROCESSES = 2  # one per core: kamus init's client is blocking code, one GIL per process
CACHE_OFF = {"KeyManagement__DataKeyCache__Capacity": "0"}
# The encryptor makes the values, one v1 request each: its per-client rate limit is not measured.
NO_RATE_LIMIT = {"Encryptor__RateLimit": "off"}


@dataclass(frozen=True)
class Flow:
    name: str
    label: str
    api: str  # "v1": a request per value; "v2": one batch
    cache: bool  # the data-key cache as configured by default, or off
    throttled_kms: bool = True  # the delay and the quota, or a KMS that adds neither


FLOWS = (
    Flow("kamus", "Kamus flow (20 x v1, cache off)", "v1", cache=False),
    Flow("cache_off", "ours, cache off (v2 batch)", "v2", cache=False),
    Flow("cache_on", "ours, cache on (v2 batch)", "v2", cache=True),
    Flow("reference", "reference: ours, cache on, KMS without delay or quota", "v2", True, False),
)


# -- a pod: kamus init's requests ---------------------------------------------------------------


@dataclass(frozen=True)
class PodJob:
    index: int
    token: str
    source: str  # the pod's own address


@dataclass
class PodResult:
    index: int
    ok: bool
    started: float  # time.monotonic(): the system's clock, the same in every process here
    finished: float
    unavailable: int  # 503s answered to it (each retried)
    network_errors: int  # connections refused, reset or timed out (each retried)
    error: str | None = None


class PodClient(KamusClient):
    """kamus init's client (as ``decrypt_all`` makes it: plain http allowed, its default
    timeouts), connecting from the pod's own address. Only the connection is made here."""

    def __init__(self, url: str, source: str) -> None:
        super().__init__(url, allow_insecure=True)
        self._source = source

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            self._connection = http.client.HTTPConnection(
                self._host, self._port, timeout=self._timeout, source_address=(self._source, 0)
            )
        return self._connection


def pod_address(index: int) -> str:
    """127.1.0.1, 127.1.0.2, ...: Linux answers the whole of 127.0.0.0/8 on the loopback."""
    return f"127.1.{index // 250}.{index % 250 + 1}"


def run_pod(
    url: str,
    job: PodJob,
    ciphertexts: Mapping[str, str],
    expected: Mapping[str, str],
    api: str,
    timeout: float,
) -> PodResult:
    """One init container: kamus init's requests and retries (``kamus.cli.init.decrypt_with``),
    through a client that sends from the pod's own address, with the retries counted."""
    started = time.monotonic()
    counts = {"unavailable": 0, "network": 0}
    files = {name: Path("/encrypted") / name for name in ciphertexts}  # named in errors only
    client = PodClient(url, job.source)
    # Kamus's flow is kamus init against a decryptor without the batch API: one v1 call per value.
    client.batch_api = api == "v2"

    def on_retry(exc: Exception, wait: float) -> None:
        counts["unavailable" if isinstance(exc, _Unavailable) else "network"] += 1

    error = None
    try:
        values = decrypt_with(
            client,
            job.token,
            files,
            ciphertexts,
            deadline=started + timeout,
            on_retry=on_retry,
        )
        if values != expected:
            error = "wrong plaintexts"
    except (ClientError, _Unavailable) as exc:
        if isinstance(exc, _Unavailable):
            counts["unavailable"] += 1  # the last 503, past the deadline
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        client.close()
    return PodResult(
        job.index,
        error is None,
        started,
        time.monotonic(),
        counts["unavailable"],
        counts["network"],
        error,
    )


def _pods(conn: Connection, job: tuple[Any, ...]) -> None:
    """One rollout's share of pods: a thread each, all released at once on "go"."""
    url, jobs, ciphertexts, expected, api, timeout = job
    go = threading.Event()
    results: list[PodResult] = []

    def pod(one: PodJob) -> None:
        go.wait()
        results.append(run_pod(url, one, ciphertexts, expected, api, timeout))

    threads = [threading.Thread(target=pod, args=(one,), daemon=True) for one in jobs]
    for thread in threads:
        thread.start()  # before "ready": a thread's start is not part of a pod's
    conn.send("ready")
    conn.recv()  # "go"
    go.set()
    for thread in threads:
        thread.join()
    conn.send(results)


def _pod_worker(conn: Connection) -> None:
    """A process of pods, for every rollout of the bench, until None."""
    while (job := conn.recv()) is not None:
        _pods(conn, job)


class PodProcesses:
    """``with PodProcesses(2) as pods: pods.rollout(...)``: worker processes kept for every
    rollout of the bench (started once: each start is an interpreter and kamus's imports)."""

    def __init__(self, count: int = POD_PROCESSES) -> None:
        context = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._processes = []
        for _ in range(count):
            conn, child = context.Pipe()
            process = context.Process(target=_pod_worker, args=(child,), daemon=True)
            self._conns.append(conn)
            self._processes.append(process)

    def __enter__(self) -> PodProcesses:
        for process in self._processes:
            process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for conn in self._conns:
            conn.send(None)
        for process in self._processes:
            process.join(10)
            if process.is_alive():
                process.kill()

    def rollout(
        self,
        url: str,
        tokens: Sequence[str],
        ciphertexts: Mapping[str, str],
        expected: Mapping[str, str],
        api: str,
        timeout: float,
    ) -> tuple[float, list[PodResult]]:
        """Every pod at once; the start instant (time.monotonic) and each pod's result."""
        jobs = [PodJob(i, token, pod_address(i)) for i, token in enumerate(tokens)]
        shares = [jobs[i :: len(self._conns)] for i in range(len(self._conns))]
        for conn, share in zip(self._conns, shares, strict=True):
            conn.send((url, share, dict(ciphertexts), dict(expected), api, timeout))
        for conn in self._conns:
            if conn.recv() != "ready":
                raise RuntimeError("a pod process did not get ready")
        start = time.monotonic()
        for conn in self._conns:
            conn.send("go")
        results = [result for conn in self._conns for result in conn.recv()]
        return start, sorted(results, key=lambda result: result.index)


# -- the decryptor's own counts -----------------------------------------------------------------


def scrape(service: Service) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The decryptor's counters by family and labels, from its /metrics."""
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                labels = tuple(sorted(sample.labels.items()))
                out.setdefault(sample.name, {})[labels] = sample.value
    return out


def delta(
    before: Mapping[str, Mapping[tuple[tuple[str, str], ...], float]],
    after: Mapping[str, Mapping[tuple[tuple[str, str], ...], float]],
    name: str,
    by: str,
) -> dict[str, int]:
    """How much ``name`` grew during the rollout, by the label ``by``."""
    grown: dict[str, int] = {}
    for labels, value in after.get(name, {}).items():
        change = value - before.get(name, {}).get(labels, 0.0)
        if change:
            key = dict(labels).get(by, "")
            grown[key] = grown.get(key, 0) + round(change)
    return grown


def log_summary(service: Service) -> dict[str, Any]:
    """What the decryptor's log says of the rollout: its answers by status, why it answered 503,
    and how often it marked itself not ready (in a cluster, a replica that is not ready gets no
    pods' requests at all: every pod behind it would stall)."""
    statuses: dict[str, int] = {}
    reasons: dict[str, int] = {}
    not_ready = 0
    for line in service.log_file.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("logger") == "kamus.server.health" and "not ready" in entry.get("message", ""):
            not_ready += 1
        if entry.get("log_type") == "audit":
            status = str(entry.get("status"))
            statuses[status] = statuses.get(status, 0) + 1
            if status == "503":
                reason = str(entry.get("reason", ""))[:120]
                reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "answers_by_status": statuses,
        "reasons_503": dict(sorted(reasons.items(), key=lambda item: -item[1])[:5]),
        "readiness_lost": not_ready,
    }


# -- one run --------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest rank; a failed pod counts as never started (inf), so a p99 with more than 1% of
    pods failed is None rather than a flattering number."""
    if not values:
        return None
    ranked = sorted(values)
    value = ranked[max(0, math.ceil(q * len(ranked)) - 1)]
    return None if math.isinf(value) else value


def summarise(
    flow: Flow, pods: int, start: float, results: Sequence[PodResult], timeout: float
) -> dict[str, Any]:
    times = [r.finished - start if r.ok else math.inf for r in results]
    failed = [r for r in results if not r.ok]
    p50, p99 = percentile(times, 0.50), percentile(times, 0.99)
    return {
        "flow": flow.name,
        "label": flow.label,
        "pods": pods,
        "values_per_pod": VALUES,
        "pods_with_503": sum(r.unavailable > 0 for r in results),
        "responses_503": sum(r.unavailable for r in results),
        "pods_with_network_errors": sum(r.network_errors > 0 for r in results),
        "pods_failed": len(failed),
        # kamus init's --timeout bounds its retrying only: a pod never refused waits on.
        "pods_over_timeout": sum(t > timeout for t in times if not math.isinf(t)),
        "failures": sorted({r.error or "" for r in failed})[:5],
        "p50_seconds": None if p50 is None else round(p50, 3),
        "p99_seconds": None if p99 is None else round(p99, 3),
        # Rollout start to the last pod's end, got its values or gave up.
        "wall_seconds": round(max(r.finished for r in results) - start, 3),
        "timeout_seconds": timeout,
        # How long after "go" the last pod thread began: the bench's own release spread.
        "start_lag_ms": round((max(r.started for r in results) - start) * 1e3, 1),
    }


def one_run(
    kms: KmsProcess,
    kube: KubeApiDouble,
    pods: PodProcesses,
    flow: Flow,
    n: int,
    values: tuple[dict[str, str], dict[str, str]],
    logs: Path,
    *,
    delay: float,
    quota: float | None,
    timeout: float,
) -> dict[str, Any]:
    ciphertexts, expected = values
    env = {**kms.env, "KUBECONFIG": str(kube.write_kubeconfig(logs / "kubeconfig"))}
    if not flow.cache:
        env |= CACHE_OFF
    # A new Deployment's pods: each has a token of its own, unknown to the decryptor.
    tokens = [kube.issue_token(NAMESPACE, SERVICE_ACCOUNT) for _ in range(n)]
    name = f"decryptor-{kms.kind}-{flow.name}-{n}"
    with running([Spec(name, "decryptor", env)], logs) as services:
        decryptor = services[name]
        # After the decryptor's start: its counts are the rollout's alone.
        if flow.throttled_kms:
            kms.configure(delay, quota)
        else:
            kms.configure(0.0, None)
        reviews = len(kube.reviews)
        before = scrape(decryptor)
        start, results = pods.rollout(
            decryptor.url, tokens, ciphertexts, expected, flow.api, timeout
        )
        after = scrape(decryptor)
        logged = log_summary(decryptor)
        double = kms.counts()
        alive = decryptor.process.poll() is None
        rss_mb = round(decryptor.rss_mb(), 1) if alive else None
        log_tail = "" if alive else decryptor.log_tail()
    row = summarise(flow, n, start, results, timeout)
    calls = delta(before, after, "kamus_kms_calls_total", "operation")
    row |= {
        "kms": kms.kind,
        "kms_delay_ms": round(delay * 1e3, 1) if flow.throttled_kms else 0.0,
        "kms_quota_per_second": quota if flow.throttled_kms else None,
        # The decryptor's own count (kamus_kms_calls_total, every operation and outcome)...
        "kms_calls": sum(calls.values()),
        "kms_calls_by_operation": calls,
        "kms_calls_by_outcome": delta(before, after, "kamus_kms_calls_total", "outcome"),
        # ...and the double's: every crypto call that reached it, throttled ones included
        # (an SDK's own retries of a throttled call reach it; the decryptor counts its call once).
        "double_crypto_calls": double["crypto_calls"],
        "double_admitted": double["admitted"],
        "throttled": double["throttled"],
        # Present once the throttling work (kamus_kms_throttled_total) and the data-key cache
        # (kamus_data_key_cache_total) are in the decryptor: empty before.
        "decryptor_throttled": delta(before, after, "kamus_kms_throttled_total", "operation"),
        "data_key_cache": delta(before, after, "kamus_data_key_cache_total", "result"),
        "token_reviews": len(kube.reviews) - reviews,
        **logged,
        "decryptor_survived": alive,
        "decryptor_rss_mb": rss_mb,
    }
    if not alive:
        row["decryptor_log_tail"] = log_tail
    return row


# -- the values -----------------------------------------------------------------------------------


def make_values(kms: KmsProcess, logs: Path) -> tuple[dict[str, str], dict[str, str]]:
    """20 ciphertexts in the default output format (m1, the data key wrapped by the KMS), each
    from a v1 encrypt of its own: 20 data keys, the cache's worst case. Returns them and their
    plaintexts, by file name."""
    kms.configure(0.0, None)  # setup, not measured
    expected = {f"secret-{i:02}": f"value {i}: {os.urandom(12).hex()}" for i in range(VALUES)}
    name = f"encryptor-{kms.kind}"
    with running([Spec(name, "encryptor", {**kms.env, **NO_RATE_LIMIT})], logs) as services:
        url = f"{services[name].url}/api/v1/encrypt"
        ciphertexts = {}
        with httpx.Client(timeout=60) as client:
            for key, value in expected.items():
                body = {"data": value, "service-account": SERVICE_ACCOUNT, "namespace": NAMESPACE}
                response = client.post(url, json=body)
                response.raise_for_status()
                ciphertexts[key] = response.text
    if not all(c.startswith("kamus$m1$") for c in ciphertexts.values()):
        raise RuntimeError("the encryptor's default output is not m1")
    return ciphertexts, expected


# -- the whole measurement ---------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutPlan:
    kms: tuple[Kind, ...]
    pods: tuple[int, ...]
    quota: float = QUOTA
    delay: float = KMS_DELAY
    timeout: float = INIT_TIMEOUT
    flows: tuple[str, ...] = tuple(flow.name for flow in FLOWS)


FULL = RolloutPlan(KINDS, PODS_FULL)
QUICK = RolloutPlan(QUICK_KMS, PODS_QUICK)


def targets(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Issue 20's targets, at the largest N, for each double: KMS decrypts with the cache on at
    most the distinct values (one decryptor), 0 pods failed, p99 at most 1.5x the reference."""
    out = []
    for kind in dict.fromkeys(run["kms"] for run in runs):
        mine = [run for run in runs if run["kms"] == kind]
        n = max(run["pods"] for run in mine)
        by_flow = {run["flow"]: run for run in mine if run["pods"] == n}
        cached, reference = by_flow.get("cache_on"), by_flow.get("reference")
        if cached is None or reference is None:
            continue
        p99, ref = cached["p99_seconds"], reference["p99_seconds"]
        ratio = None if p99 is None or not ref else round(p99 / ref, 2)
        out.append(
            {
                "kms": kind,
                "pods": n,
                "kms_calls": cached["double_admitted"],
                "kms_calls_target": VALUES,
                "kms_calls_pass": cached["double_admitted"] <= VALUES,
                "pods_failed": cached["pods_failed"],
                "pods_failed_pass": cached["pods_failed"] == 0,
                "p99_seconds": p99,
                "reference_p99_seconds": ref,
                "p99_ratio": ratio,
                "p99_ratio_target": 1.5,
                "p99_pass": ratio is not None and ratio <= 1.5,
            }
        )
    return out


def say(message: str) -> None:
    print(f"[rollout {time.strftime('%H:%M:%S')}] {message}", flush=True)


def row_line(run: Mapping[str, Any]) -> str:
    p50, p99 = run["p50_seconds"], run["p99_seconds"]

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    return (
        f"{run['kms']:5} N={run['pods']:<3} {run['label'][:44]:44} "
        f"KMS calls {run['kms_calls']:>5} (double {run['double_crypto_calls']:>5}), "
        f"throttled {run['throttled']:>5}, 503 pods {run['pods_with_503']:>3}, "
        f"failed {run['pods_failed']:>3}, p50/p99 {seconds(p50)}/{seconds(p99)} s, "
        f"wall {run['wall_seconds']:.2f} s"
    )


def rollout_phase(
    plan: RolloutPlan,
    logs: Path,
    kube: KubeApiDouble,
    report: Callable[[str], None] = say,
) -> dict[str, Any]:
    """Every run of ``plan``; the JSON-ready results."""
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    with PodProcesses() as pods:
        for kind in plan.kms:
            with KmsProcess(kind, logs, plan.delay, plan.quota) as kms:
                report(f"{kind}: 20 values, each with its own data key")
                values = make_values(kms, logs)
                for n in plan.pods:
                    for flow in (f for f in FLOWS if f.name in plan.flows):
                        run = one_run(
                            kms,
                            kube,
                            pods,
                            flow,
                            n,
                            values,
                            logs,
                            delay=plan.delay,
                            quota=plan.quota,
                            timeout=plan.timeout,
                        )
                        runs.append(run)
                        report(row_line(run))
    return {
        "plan": asdict(plan),
        "pod_processes": POD_PROCESSES,
        "runs": runs,
        "targets": targets(runs),
        "elapsed_seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    from bench.report import plot_rollout, rollout_table

    parser = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"N={PODS_QUICK[0]}, Cloud KMS only")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--kms", help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--pods", help="comma-separated pod counts")
    parser.add_argument("--quota", type=float, default=QUOTA, help="crypto calls per second")
    parser.add_argument("--flows", help=f"comma-separated, of {', '.join(FULL.flows)}")
    parser.add_argument("--logs", type=Path, help="keep the services' logs here")
    args = parser.parse_args()
    plan = dataclasses.replace(QUICK if args.quick else FULL, quota=args.quota)
    if args.kms:
        asked = {k.strip() for k in args.kms.split(",")}
        if asked - set(KINDS):
            parser.error(f"--kms: unknown {', '.join(sorted(asked - set(KINDS)))}")
        plan = dataclasses.replace(plan, kms=tuple(k for k in KINDS if k in asked))
    if args.pods:
        plan = dataclasses.replace(plan, pods=tuple(int(n) for n in args.pods.split(",")))
    if args.flows:
        flows = tuple(f.strip() for f in args.flows.split(","))
        if set(flows) - set(FULL.flows):
            parser.error(f"--flows: unknown {', '.join(sorted(set(flows) - set(FULL.flows)))}")
        plan = dataclasses.replace(plan, flows=flows)
    load_before = round(os.getloadavg()[0], 2)
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "command": " ".join(["python -m bench.rollout", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory(prefix="kamus-rollout-") as tmp, KubeApiDouble() as kube:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        results |= rollout_phase(plan, logs, kube)
    results["load_average"] = [load_before, round(os.getloadavg()[0], 2)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rollout.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_rollout(results, args.out / "rollout.png")
    print(rollout_table(results))
    print(f"\nwrote {args.out / 'rollout.json'} and {args.out / 'rollout.png'}")


if __name__ == "__main__":
    # Through the module, not this __main__ copy of it: the pod processes send back
    # bench.rollout's classes, which pickle by their module's importable name.
    from bench.rollout import main as rollout_main

    rollout_main()
