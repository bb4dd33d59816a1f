"""The Cloud KMS double in a process of its own, as a real KMS runs elsewhere.

In the bench's process its CPU (about 1 ms a call: the REST API, AES-GCM) shared one GIL with
``kamus init``'s code and the Kubernetes double, and a batch's 20 concurrent calls waited on it.
It still shares the machine's two cores.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType

from tests.kms_doubles.gcp import CloudKmsDouble
from tests.support.servers import Faults

START_SECONDS = 30


def _serve(conn: Connection, credentials: str, delay_seconds: float) -> None:
    double = CloudKmsDouble().start()
    double.faults = Faults(delay_seconds=delay_seconds)
    conn.send(double.env(Path(credentials)))
    conn.recv()  # until the bench is done
    double.stop()


class KmsProcess:
    """``with KmsProcess(path, delay) as kms:`` the double, every call delayed; ``kms.env`` is what
    a service needs to reach it."""

    def __init__(self, credentials: Path, delay_seconds: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, str(credentials), delay_seconds), daemon=True
        )
        self.env: dict[str, str] = {}

    def __enter__(self) -> KmsProcess:
        self._process.start()
        if not self._conn.poll(START_SECONDS):
            self._process.kill()
            raise RuntimeError("the Cloud KMS double did not start")
        self.env = self._conn.recv()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._conn.send("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
