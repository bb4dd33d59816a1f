"""The Helm chart rendered with the pinned helm (deploy/tools/install-helm.sh), as the chart,
image and example tests read it."""

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "kamus"
BIN = Path(sys.executable).parent
HELM = BIN / "helm"
HELM4 = BIN / "helm4"  # Helm 4, the chart must work with it too
KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]  # the oldest we support and the newest shipped
Manifest = dict[str, Any]


def render(
    values: dict[str, Any] | None = None,
    *,
    chart: Path = CHART,
    crds: bool = False,
    helm: Path = HELM,
    upgrade: bool = False,
    api_versions: Sequence[str] = (),
    kube_version: str | None = None,
) -> list[Manifest]:
    result = render_raw(
        values,
        chart=chart,
        crds=crds,
        helm=helm,
        upgrade=upgrade,
        api_versions=api_versions,
        kube_version=kube_version,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_raw(
    values: dict[str, Any] | None = None,
    *,
    chart: Path = CHART,
    crds: bool = False,
    helm: Path = HELM,
    upgrade: bool = False,
    api_versions: Sequence[str] = (),
    kube_version: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``helm template`` of the chart as release ``kamus`` in namespace ``kamus``; ``upgrade``
    renders it as ``helm upgrade`` would (``.Release.IsUpgrade``). ``api_versions`` and
    ``kube_version`` are what the cluster would tell ``helm install`` (``.Capabilities``), e.g.
    ``admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy`` and ``1.30.0``."""
    if not helm.exists():
        pytest.fail(f"{helm} is missing: `make test` installs it (deploy/tools/install-helm.sh)")
    args = [str(helm), "template", "kamus", str(chart), "--namespace", "kamus", "--values", "-"]
    for api_version in api_versions:
        args += ["--api-versions", api_version]
    if kube_version:
        args += ["--kube-version", kube_version]
    return subprocess.run(
        [*args, *(["--include-crds"] if crds else []), *(["--is-upgrade"] if upgrade else [])],
        input=json.dumps(values or {}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def named(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    [found] = [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name]
    return found


def key_job_command(manifests: list[Manifest], name: str = "kamus-keys") -> list[str]:
    """The key-secret Job's command: ``kamus create-key-secret`` for the key's Secret (the AES
    key's ``kamus-keys``, or in the KMS modes the sealing seed's ``kamus-sealing-seed``)."""
    job = named(manifests, "Job", "kamus-key-secret")
    command: list[str] = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == ["kamus", "create-key-secret", "--name", name, "--namespace", "kamus"]
    return command


def trivy_scan(
    renders: dict[str, list[Manifest]], tmp_path: Path, accepted: set[tuple[str, str]]
) -> int:
    """``trivy config`` (HIGH and CRITICAL) over each render as a file of its own: fails on any
    finding not in ``accepted`` ((id, message) pairs, each with its reason where it is defined)
    or a file left unscanned; returns how many checks passed, to prove it really ran."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    for case, docs in renders.items():
        (manifests / f"{case}.yaml").write_text(yaml.safe_dump_all(docs))
    report = tmp_path / "trivy.json"
    result = subprocess.run(
        [
            *(str(BIN / "trivy"), "config", "--skip-check-update", "--quiet"),
            *("--severity", "HIGH,CRITICAL", "--format", "json", "--output", str(report)),
            str(manifests),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TRIVY_CACHE_DIR": str(tmp_path / "cache")},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    findings = json.loads(report.read_text())
    failures = [
        f"{r['Target']}: {m['ID']} {m['Message']}"
        for r in findings.get("Results", [])
        for m in r.get("Misconfigurations", []) or []
        if m["Status"] == "FAIL" and (m["ID"], m["Message"]) not in accepted
    ]
    assert not failures, "\n".join(failures)
    scanned = {r["Target"] for r in findings.get("Results", [])}
    assert len(scanned) == len(renders), "trivy scanned fewer files than it was given"
    return sum(r.get("MisconfSummary", {}).get("Successes", 0) for r in findings["Results"])


def notes(
    values: dict[str, Any],
    tmp_path: Path,
    *,
    upgrade: bool = False,
    api_versions: Sequence[str] = (),
) -> str:
    """NOTES.txt as ``helm install`` prints it (``helm template`` skips it): render a copy of
    the chart in which the notes are a ConfigMap value, for a cluster with ``api_versions``."""
    chart = tmp_path / "kamus"
    shutil.copytree(CHART, chart, dirs_exist_ok=True)
    templates = chart / "templates"
    body = (templates / "NOTES.txt").read_text()
    (templates / "_notes.tpl").write_text('{{- define "test.notes" -}}' + body + "{{- end -}}")
    (templates / "notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data:\n  notes: |\n{{ include "test.notes" . | indent 4 }}\n'
    )
    rendered = render(values, chart=chart, upgrade=upgrade, api_versions=api_versions)
    [config] = [m for m in rendered if m["metadata"]["name"] == "notes"]
    text: str = config["data"]["notes"]
    return text
