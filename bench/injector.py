"""``python -m bench.injector [--requests N]``: what an admission costs the injector (issue 21).

The apiserver waits for the webhook while a pod is created, within the webhook's
``timeoutSeconds`` (5 in the chart). This starts ``kamus serve injector`` with its built-in TLS
against the Kubernetes API double, trusts the caBundle it patched in, and times, one client
after another (as the apiserver calls it per pod):

* ``POST /mutate`` of an opted-in pod (the golden ``existing`` pod: two ConfigMaps, an init
  container, volumes and mounts of its own) over a kept-alive connection;
* the same with a new TLS connection per request (a handshake each);
* ``GET /healthz`` over a kept-alive connection: the floor of the same server and client.

It prints the median and p99 of each, and their ratios to the floor, measured in one run.
"""

from __future__ import annotations

import argparse
import base64
import json
import ssl
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.k8s_double import KubeApiDouble
from tests.support.processes import kamus_serve

ROOT = Path(__file__).resolve().parents[1]
POD = ROOT / "tests" / "golden" / "injector" / "existing" / "pod.yaml"
WEBHOOK = "kamus-injector"


def review(pod: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": "CREATE",
            "object": pod,
            "dryRun": False,
        },
    }


def timed(n: int, call: Callable[[], httpx.Response]) -> list[float]:
    seconds = []
    for _ in range(n):
        start = time.perf_counter()
        answer = call()
        seconds.append(time.perf_counter() - start)
        answer.raise_for_status()
    return seconds


def quantiles(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    n = parser.parse_args().requests
    pod = yaml.safe_load(POD.read_text())
    with tempfile.TemporaryDirectory() as tmp, KubeApiDouble() as kube:
        logs = Path(tmp)
        kube.reset_resources()
        config = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": WEBHOOK},
            "webhooks": [
                {
                    "name": "inject.kamus.soluto.com",
                    "clientConfig": {"service": {"namespace": "kamus", "name": WEBHOOK}},
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                }
            ],
        }
        admin = {"Authorization": f"Bearer {kube.admin_token}"}
        with httpx.Client(verify=str(kube.ca_file), headers=admin) as api:
            path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
            api.post(f"{kube.url}{path}", json=config).raise_for_status()
            env = {
                "KUBECONFIG": str(kube.write_kubeconfig(logs / "kubeconfig")),
                "Injector__Image": "ghcr.io/kamus-py/kamus-decryptor:0.1.0",
                "Injector__DecryptorUrl": "http://kamus-decryptor.kamus.svc:80",
                "Injector__Namespace": "kamus",
                "Injector__ExtraHosts": "127.0.0.1",
            }
            with kamus_serve(
                "injector", env, logs / "injector.log", ready_path="/readyz", verify=False
            ) as injector:
                bundle = None
                while not bundle:
                    time.sleep(0.1)
                    stored = api.get(f"{kube.url}{path}/{WEBHOOK}").json()
                    bundle = stored["webhooks"][0]["clientConfig"].get("caBundle")
                trusted = ssl.create_default_context(cadata=base64.b64decode(bundle).decode())
                body = json.dumps(review(pod)).encode()
                headers = {"Content-Type": "application/json"}
                with httpx.Client(verify=trusted) as kept:
                    kept.get(f"{injector.url}/healthz")  # the connection, made once
                    floor = timed(n, lambda: kept.get(f"{injector.url}/healthz"))
                    mutate = timed(
                        n,
                        lambda: kept.post(f"{injector.url}/mutate", content=body, headers=headers),
                    )

                def fresh() -> httpx.Response:
                    with httpx.Client(verify=trusted) as client:
                        return client.post(f"{injector.url}/mutate", content=body, headers=headers)

                handshakes = timed(max(n // 5, 50), fresh)
    base = quantiles(floor)
    print(f"{'request':<34} {'median ms':>10} {'p99 ms':>8} {'p99 / floor':>12}")
    for name, seconds in [
        ("GET /healthz (the floor)", floor),
        ("POST /mutate, kept-alive", mutate),
        ("POST /mutate, new TLS connection", handshakes),
    ]:
        median, p99 = quantiles(seconds)
        print(f"{name:<34} {median * 1000:>10.2f} {p99 * 1000:>8.2f} {p99 / base[1]:>11.1f}x")
    share = quantiles(mutate)[1] / 5
    print(f"p99 of an admission as a share of the chart's timeoutSeconds (5 s): {share:.5f}")


if __name__ == "__main__":
    main()
