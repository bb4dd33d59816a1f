"""A KMS double in a process of its own, as a real KMS runs elsewhere: AWS (moto behind the tests'
proxy), Google Cloud KMS, or Azure Key Vault.

In the bench's process its CPU (about 1 ms a call: the REST API, AES-GCM or RSA) shared one GIL
with ``kamus init``'s code and the Kubernetes double, and a batch's 20 concurrent calls waited on
it. It still shares the machine's two cores.

Every call is delayed by ``delay_seconds``; with ``quota_per_second`` the double also admits at
most that many crypto calls a second and throttles the rest as the real service does
(tests/support/servers.py ``Quota``). :meth:`KmsProcess.configure` changes both between runs and
starts the counts afresh; :meth:`KmsProcess.counts` reads them.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from tests.support.servers import Faults, Quota

START_SECONDS = 60  # moto's import and an RSA CA key for Key Vault's TLS, on a busy machine
Kind = Literal["aws", "gcp", "azure"]
KINDS: tuple[Kind, ...] = ("aws", "gcp", "azure")
PROVIDERS: dict[Kind, str] = {"aws": "AwsKms", "gcp": "GoogleKms", "azure": "AzureKeyVault"}


def _quota(kind: Kind, per_second: float | None) -> Quota:
    # Imported here: each double's module pulls in its SDK's test dependencies (moto, ...).
    if kind == "aws":
        from tests.kms_doubles import aws

        return aws.quota(per_second)
    if kind == "gcp":
        from tests.kms_doubles import gcp

        return gcp.quota(per_second)
    from tests.kms_doubles import azure

    return azure.quota(per_second)


def _start(kind: Kind, workdir: Path) -> tuple[Any, dict[str, str], Any]:
    """The double, the environment a kamus process needs to use it, and how to stop it."""
    if kind == "aws":
        from tests.kms_doubles.aws import AwsKmsDouble

        aws = AwsKmsDouble().start()
        return aws, aws.env(), aws.shutdown
    if kind == "gcp":
        from tests.kms_doubles.gcp import CloudKmsDouble

        gcp = CloudKmsDouble().start()
        return gcp, gcp.env(workdir / "gcp-sa.json"), gcp.stop
    from tests.kms_doubles.azure import KeyVaultDouble

    vault = KeyVaultDouble().start()
    env = {
        **vault.env(),  # a managed identity that DefaultAzureCredential finds, and the CA
        "KeyManagement__KeyVault__Url": vault.url,
        # 127.0.0.1 never matches the challenge's vault.azure.net (docs/providers.md).
        "KeyManagement__KeyVault__VerifyChallengeResource": "false",
    }
    return vault, env, vault.stop


def _faults(kind: Kind, delay_seconds: float, quota_per_second: float | None) -> Faults:
    # Always a quota, unlimited when there is none: it is the double's count of crypto calls.
    return Faults(delay_seconds=delay_seconds, quota=_quota(kind, quota_per_second))


def _serve(
    conn: Connection, kind: Kind, workdir: str, delay_seconds: float, quota: float | None
) -> None:
    double, env, stop = _start(kind, Path(workdir))
    double.faults = _faults(kind, delay_seconds, quota)
    conn.send({**env, "KeyManagement__Provider": PROVIDERS[kind]})
    try:
        while True:  # until the bench is done
            command, *args = conn.recv()
            if command == "stop":
                break
            if command == "configure":
                double.faults = _faults(kind, *args)
                conn.send(None)
            elif command == "counts":
                conn.send(double.faults.quota.counts())
    finally:
        stop()


class KmsProcess:
    """``with KmsProcess("gcp", workdir, delay) as kms:`` the double, every call delayed;
    ``kms.env`` is what a service needs to reach it (the provider setting included)."""

    def __init__(
        self,
        kind: Kind,
        workdir: Path,
        delay_seconds: float,
        quota_per_second: float | None = None,
    ) -> None:
        self.kind = kind
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve,
            args=(child, kind, str(workdir), delay_seconds, quota_per_second),
            daemon=True,
        )
        self.env: dict[str, str] = {}

    def __enter__(self) -> KmsProcess:
        self._process.start()
        if not self._conn.poll(START_SECONDS):
            self._process.kill()
            raise RuntimeError(f"the {self.kind} KMS double did not start")
        self.env = self._conn.recv()
        return self

    def configure(self, delay_seconds: float, quota_per_second: float | None) -> None:
        """A new delay and quota, and the counts from zero."""
        self._conn.send(("configure", delay_seconds, quota_per_second))
        self._conn.recv()

    def counts(self) -> dict[str, int]:
        """Crypto calls since :meth:`configure` (or the start): all that arrived, the admitted
        and the throttled."""
        self._conn.send(("counts",))
        counts: dict[str, int] = self._conn.recv()
        return counts

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._conn.send(("stop",))
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
