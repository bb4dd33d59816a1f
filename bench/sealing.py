"""Measurement 7 (issue 18): what public-key sealing costs.

* per value, in this process: an a1 encrypt, an m1 seal (one HPKE operation) and open, for the
  X25519 suite and the post-quantum hybrid;
* a 20-key Secret sealed offline: in process (one data key, one HPKE operation for the document)
  and as ``kamus seal --offline`` (a whole process, start-up included);
* v1 encrypt throughput of the bundle-only encryptor (m1) against the same encryptor writing a1
  (``Encryptor__OutputFormat=legacy``), rounds alternated in one run.
"""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench.measure import Plan, alternate, encrypt_one, encrypt_target, summary
from bench.services import ROOT, Service
from crypto import AESKeyManager, bundle
from crypto.sealing import Schedule

SECRETS = 20
SA_ID = "team-a:app"


def per_call_us(call: Callable[[], object], n: int) -> float:
    """The median of five batches of ``n`` calls, in µs per call."""
    batches = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            call()
        batches.append((time.perf_counter() - start) / n * 1e6)
    return round(statistics.median(batches), 1)


def per_value(plan: Plan, master: bytes) -> dict[str, Any]:
    n = 50 if plan.quick else 2000
    now = datetime.now(UTC)
    keys = bundle.load(bundle.from_masters([master], now=now, schedule=Schedule()))
    aes = AESKeyManager(master)
    loop = asyncio.new_event_loop()
    try:
        a1 = loop.run_until_complete(aes.encrypt(b"s3cr3t", SA_ID))
        m1 = keys.seal([b"s3cr3t"], SA_ID, now)[0]
        pq = keys.seal([b"s3cr3t"], SA_ID, now, post_quantum=True)[0]
        result = {
            "a1_encrypt_us": per_call_us(
                lambda: loop.run_until_complete(aes.encrypt(b"s3cr3t", SA_ID)), n
            ),
            "a1_open_us": per_call_us(lambda: loop.run_until_complete(aes.decrypt(a1, SA_ID)), n),
            "m1_seal_us": per_call_us(lambda: keys.seal([b"s3cr3t"], SA_ID, now), n),
            "m1_open_us": per_call_us(lambda: loop.run_until_complete(aes.decrypt(m1, SA_ID)), n),
            "pq_seal_us": per_call_us(
                lambda: keys.seal([b"s3cr3t"], SA_ID, now, post_quantum=True), n // 4
            ),
            "pq_open_us": per_call_us(
                lambda: loop.run_until_complete(aes.decrypt(pq, SA_ID)), n // 4
            ),
            "sizes": {"a1": len(a1), "m1": len(m1), "m1_post_quantum": len(pq)},
        }
    finally:
        loop.close()
    return result


def _secret_manifest(work: Path) -> Path:
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "app", "namespace": "team-a"},
        "stringData": {f"KEY_{i}": f"value-{i}-" + "x" * 24 for i in range(SECRETS)},
    }
    path = work / "secret.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def offline_seal(plan: Plan, master: bytes, work: Path) -> dict[str, Any]:
    now = datetime.now(UTC)
    text = bundle.from_masters([master], now=now, schedule=Schedule())
    keys_file = work / "keys.json"
    keys_file.write_text(text)
    keys = bundle.load(text)
    values = [f"value-{i}".encode() for i in range(SECRETS)]
    in_process = per_call_us(lambda: keys.seal(values, SA_ID, now), 10 if plan.quick else 200)
    manifest = _secret_manifest(work)
    command = [
        sys.executable, "-m", "kamus", "seal", str(manifest),
        "--service-account", "app", "--offline", "--keys", str(keys_file),
    ]  # fmt: skip
    runs = []
    for _ in range(2 if plan.quick else 7):
        start = time.perf_counter()
        done = subprocess.run(  # noqa: S603 (our own interpreter and arguments)
            command, capture_output=True, text=True, cwd=ROOT, check=False
        )
        runs.append((time.perf_counter() - start) * 1000)
        if done.returncode != 0:
            return {"in_process_us": in_process, "process": f"failed: {done.stderr.strip()}"}
    return {"in_process_us": in_process, "process_ms": round(statistics.median(runs), 1)}


def encrypt_throughput(plan: Plan, m1: Service, a1: Service) -> dict[str, Any]:
    for service in (m1, a1):
        encrypt_one(service)
    rounds = alternate(plan, {"m1": encrypt_target(m1), "a1": encrypt_target(a1)})
    result = {name: summary(r) for name, r in rounds.items()}
    return {
        **result,
        "m1_over_a1": round(result["m1"]["median_rps"] / result["a1"]["median_rps"], 3),
    }


def new_master() -> bytes:
    return os.urandom(32)


def master_env(master: bytes) -> dict[str, str]:
    return {"KeyManagement__AES__Key": base64.b64encode(master).decode()}
