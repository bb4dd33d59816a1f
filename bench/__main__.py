"""``python -m bench [--quick] [--out DIR]``: run every measurement, print the table, and write
``DIR/results.json``, ``DIR/performance.png`` and (measurement 9) ``DIR/rollout.png``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import measure, recipients, rollout, sealing
from bench.kms_process import KmsProcess
from bench.load import CONNECTIONS, WRK_THREADS, wrk_version
from bench.machine import machine
from bench.measure import FULL, QUICK, Plan
from bench.report import plot, plot_rollout, table
from bench.rewrap import rewrap_phase
from bench.services import ROOT, Spec, new_key, running, serve_supports_workers
from tests.k8s_double import KubeApiDouble

NO_CACHE = {"Decryptor__TokenReviewCacheSeconds": "0"}
# One client sending thousands of requests a second is what the per-client rate limit is there
# to refuse (429): the bench measures the work behind it instead.
NO_RATE_LIMIT = {"Encryptor__RateLimit": "off"}


def aes_phase(plan: Plan, logs: Path, kube: KubeApiDouble) -> dict[str, Any]:
    """Measurements 1, 3, 4 and 5: the AES provider, the Kubernetes double without delay."""
    aes = {"KeyManagement__AES__Key": new_key(), **NO_RATE_LIMIT}
    kube_env = {**aes, "KUBECONFIG": str(kube.write_kubeconfig(logs / "kubeconfig"))}
    no_cache = {**kube_env, **NO_CACHE}
    n = plan.workers
    specs = [
        Spec("encryptor", "encryptor", aes, n),
        Spec("bare", "bare", {}, n),
        Spec("fastapi", "fastapi", {}, n),
        Spec("floor", "floor", {}, n),
        # The same encryptor with Encryptor__DataKeyReuseSeconds (off by default): what an
        # X25519 agreement per request costs it.
        Spec("encryptor-reuse", "encryptor", {**aes, "Encryptor__DataKeyReuseSeconds": "5"}, n),
        Spec("decryptor-warm", "decryptor", kube_env, n),
        Spec("decryptor-cold", "decryptor", no_cache, n),
        Spec("encryptor-memory", "encryptor", aes, n),
        Spec("decryptor-memory", "decryptor", kube_env, n),
    ]
    results: dict[str, Any] = {}
    with running(specs, logs) as services:
        say("1. encrypt throughput: kamus against the bare uvicorn app")
        results["encrypt_throughput"] = measure.encrypt_throughput(
            plan,
            services["encryptor"],
            services["bare"],
            services["fastapi"],
            services["floor"],
            services["encryptor-reuse"],
        )
        say("3. decrypt throughput: TokenReview cache warm against off")
        ciphertext = measure.encrypt_one(services["encryptor"])
        results["decrypt_throughput"] = measure.decrypt_throughput(
            plan, kube, services["decryptor-warm"], services["decryptor-cold"], ciphertext
        )
        say(f"4. memory after {plan.memory_requests} requests each")
        token = kube.issue_token(measure.NAMESPACE, measure.SERVICE_ACCOUNT)
        encrypt = measure.encrypt_target(services["encryptor-memory"])
        decrypt = measure.decrypt_target(services["decryptor-memory"], ciphertext, token)
        measure.check_decrypts(decrypt)
        results["memory"] = measure.memory(
            plan, services["encryptor-memory"], services["decryptor-memory"], decrypt
        )
        say(f"5. latency at {plan.latency_rate:g} requests/s")
        bare = measure.encrypt_target(services["bare"])
        targets = {"bare": bare, "encrypt": encrypt, "decrypt": decrypt}
        results["latency"] = measure.latency(plan, targets)
    return results


def pod_phase(plan: Plan, logs: Path, kube: KubeApiDouble) -> dict[str, Any]:
    """Measurement 2: GoogleKms provider against the Cloud KMS double, both doubles delayed."""
    say("2. pod start with 20 secrets: Kamus's flow against kamus init's batch")
    with KmsProcess("gcp", logs, measure.KMS_DELAY) as kms:
        gcp = {**kms.env, **NO_RATE_LIMIT}  # kms.env sets KeyManagement__Provider=GoogleKms
        kube_env = {**gcp, "KUBECONFIG": str(kube.write_kubeconfig(logs / "kubeconfig"))}
        specs = [
            Spec("encryptor-gcp", "encryptor", gcp, plan.workers),
            Spec("decryptor-gcp-no-cache", "decryptor", {**kube_env, **NO_CACHE}, plan.workers),
            Spec("decryptor-gcp", "decryptor", kube_env, plan.workers),
        ]
        with running(specs, logs) as services, tempfile.TemporaryDirectory() as work:
            return measure.pod_start(
                plan,
                Path(work),
                kube,
                services["encryptor-gcp"],
                services["decryptor-gcp-no-cache"],
                services["decryptor-gcp"],
            )


def sweep_phase(plan: Plan, logs: Path) -> dict[str, Any]:
    """Measurement 6: encrypt throughput by worker count."""
    if not plan.sweep:
        return {"skipped": "quick run"}
    if not serve_supports_workers():
        return {"skipped": "kamus serve has no --workers option"}
    say(f"6. encrypt throughput with --workers {','.join(map(str, plan.sweep))}")
    aes = {"KeyManagement__AES__Key": new_key(), **NO_RATE_LIMIT}
    specs = [Spec(f"encryptor-workers-{n}", "encryptor", aes, n) for n in plan.sweep]
    with running(specs, logs) as services:
        encryptors = {n: services[f"encryptor-workers-{n}"] for n in plan.sweep}
        return measure.worker_sweep(plan, encryptors)


def sealing_phase(plan: Plan, logs: Path) -> dict[str, Any]:
    """Measurement 7: public-key sealing (issue 18)."""
    say("7. sealing: per value, a 20-key Secret offline, the bundle-only encryptor")
    master = sealing.new_master()
    results: dict[str, Any] = {
        "per_value": sealing.per_value(plan, master),
        "offline_secret": sealing.offline_seal(plan, master, logs),
    }
    keys_file = logs / "keys.json"
    specs = [
        Spec("encryptor-bundle", "encryptor", {"Encryptor__SealingKeysFile": str(keys_file)}),
        Spec(
            "encryptor-a1",
            "encryptor",
            {**sealing.master_env(master), "Encryptor__OutputFormat": "legacy"},
        ),
    ]
    specs = [
        dataclasses.replace(s, env={**s.env, **NO_RATE_LIMIT}, workers=plan.workers) for s in specs
    ]
    with running(specs, logs) as services:
        results["encrypt_throughput"] = sealing.encrypt_throughput(
            plan, services["encryptor-bundle"], services["encryptor-a1"]
        )
    return results


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts: the smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--workers", type=int, default=1, help="kamus serve --workers (1-4)")
    parser.add_argument(
        "--python-load", action="store_true", help="the asyncio client instead of wrk"
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    wrk = wrk_version()
    python_load = args.python_load or wrk is None
    plan = dataclasses.replace(plan, workers=args.workers, python_load=python_load)
    why = "wrk is not installed" if wrk is None else "--python-load"
    if python_load:
        banner = "!" * 78
        print(
            f"{banner}\n!! NO WRK ({why}): throughput comes from the Python asyncio client in "
            "this\n!! process, which is slower than the servers: req/s and ratios are "
            "client-bound.\n!! Install wrk (deploy/tools/install-system-tools.sh) for real "
            f"numbers.\n{banner}",
            flush=True,
        )
    started = time.monotonic()
    load_before = round(os.getloadavg()[0], 2)
    results: dict[str, Any] = {
        "mode": "quick" if plan.quick else "full",
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "load_generator": (
            f"python asyncio client, {CONNECTIONS} connections (NO WRK: {why}; client-bound)"
            if python_load
            else f"{wrk} -t{WRK_THREADS} -c{CONNECTIONS} (unpinned)"
        ),
        "plan": dataclasses.asdict(plan),
    }
    with tempfile.TemporaryDirectory(prefix="kamus-bench-") as tmp, KubeApiDouble() as kube:
        logs = Path(tmp)
        results |= aes_phase(plan, logs, kube)
        results["pod_start"] = pod_phase(plan, logs, kube)
        results["worker_sweep"] = sweep_phase(plan, logs)
        results["sealing"] = sealing_phase(plan, logs)
        say("8. kamus rewrap --in-place of a 1,000-value tree: AES, and AWS KMS (moto)")
        results["rewrap"] = rewrap_phase(plan, logs, kube)
        rollout_plan = rollout.QUICK if plan.quick else rollout.FULL
        say(
            f"9. a rollout: {', '.join(map(str, rollout_plan.pods))} pods x {rollout.VALUES} "
            f"values at once, against {', '.join(rollout_plan.kms)} (bench/rollout.py)"
        )
        results["rollout"] = rollout.rollout_phase(rollout_plan, logs, kube, report=say)
        say(
            "10. recipients: value size and open cost for 1, 2 and 5 clusters (bench/recipients.py)"
        )
        results["recipients"] = recipients.measure(plan.quick)
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    # Other work on the machine skews every number: the 1-minute load before and after.
    results["load_average"] = [load_before, round(os.getloadavg()[0], 2)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out / "performance.png")
    plot_rollout(
        {"mode": results["mode"], "load_average": results["load_average"], **results["rollout"]},
        args.out / "rollout.png",
    )
    print(table(results))
    print(
        f"\nwrote {args.out / 'results.json'}, {args.out / 'performance.png'} and "
        f"{args.out / 'rollout.png'}"
    )


if __name__ == "__main__":
    main()
