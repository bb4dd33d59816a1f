"""Real ``kamus`` processes for end-to-end tests, each logging to a file the test can read."""

import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.k8s_double import KubeApiDouble
from tests.support.leaks import found_in

_LISTENING = re.compile(r"Uvicorn running on (https?://[\d.]+:\d+)")


@dataclass
class Service:
    url: str
    log_file: Path
    process: subprocess.Popen[bytes]

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_file.read_text().splitlines() if line]


def _wait_for_url(log_file: Path, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _LISTENING.search(log_file.read_text())
        if match:
            return match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"kamus did not start; its log:\n{log_file.read_text()}")


def _wait_until_ready(
    url: str, process: subprocess.Popen[bytes], verify: ssl.SSLContext | bool, timeout: float
) -> None:
    """Until ``url`` answers 200. With several workers the parent binds the socket and logs
    its address, but nobody accepts until a worker has started."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = httpx.get(url, timeout=5, verify=verify).status_code
        except httpx.ConnectError:
            status = None
        if status == 200:
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} answered {status}, not 200")
        time.sleep(0.05)


# How long a process may take to stop on its own before it gets SIGKILL, which it cannot ignore.
GRACE_SECONDS = 10.0


def spawn(command: Sequence[str], **options: Any) -> subprocess.Popen[Any]:
    """A process in a session of its own, so that :func:`stop` can reach whatever it starts."""
    return subprocess.Popen(command, start_new_session=True, **options)


def stop(
    process: subprocess.Popen[Any],
    how: signal.Signals = signal.SIGTERM,
    grace: float = GRACE_SECONDS,
) -> int:
    """Ask ``process`` to stop with ``how``; after ``grace`` seconds, SIGKILL its session. Its
    exit code; nothing it started is left running, even if it ignored ``how``."""
    if process.poll() is None:
        process.send_signal(how)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _kill_session(process)
    code = process.wait()
    _kill_session(process)  # what it started and left behind
    return code


def _kill_session(process: subprocess.Popen[Any]) -> None:
    """SIGKILL the process group that ``process`` leads (one :func:`spawn` started); for a
    process that leads none, ESRCH is all that happens."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def running_children() -> list[str]:
    """This process's children that still run (zombies, merely not yet reaped, do not)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # it ended while we looked
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        state, ppid = text[text.rindex(")") + 2 :].split()[:2]
        if int(ppid) == os.getpid() and state != "Z":
            found.append(text[: text.rindex(")") + 1])
    return found


def ignoring_sigint(command: Sequence[str]) -> list[str]:
    """``command`` started as a script's ``cmd &`` starts it: with SIGINT ignored, which every
    process it starts inherits."""
    return [
        sys.executable,
        "-c",
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "os.execvp(sys.argv[1], sys.argv[1:])",
        *command,
    ]


@contextmanager
def kamus_serve(
    service: str,
    env: Mapping[str, str],
    log_file: Path,
    *,
    ready_path: str = "/healthz",
    verify: ssl.SSLContext | bool = True,
) -> Iterator[Service]:
    """``kamus serve <service>`` on a free loopback port, with only ``env`` plus PATH/HOME;
    yields once ``ready_path`` answers 200."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    with log_file.open("wb") as log:
        process = spawn(
            [sys.executable, "-m", "kamus", "serve", service, "--host", "127.0.0.1", "--port", "0"],
            env={**base, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = _wait_for_url(log_file, process, timeout=30)
        _wait_until_ready(f"{url}{ready_path}", process, verify, timeout=30)
        yield Service(url, log_file, process)
    finally:
        stop(process)
    # After a passing test only: a failing one is reported as it failed.
    leaked = found_in(log_file.read_text(errors="replace"))
    assert not leaked, f"secrets reached the log of kamus serve {service}: {leaked}"


def decrypt(decryptor_url: str, ciphertext: str, token: str | None) -> httpx.Response:
    """``POST /api/v1/decrypt`` to a running decryptor, as the pod whose token it is."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(
        f"{decryptor_url}/api/v1/decrypt", json={"data": ciphertext}, headers=headers, timeout=30
    )


@dataclass
class Deployment:
    """The encryptor and the decryptor running as processes, and the cluster they trust."""

    encryptor: Service
    decryptor: Service
    kube_api: KubeApiDouble
    key: str = ""

    def encrypt(self, data: str, namespace: str, sa: str) -> httpx.Response:
        body = {"data": data, "service-account": sa, "namespace": namespace}
        return httpx.post(f"{self.encryptor.url}/api/v1/encrypt", json=body, timeout=30)

    def decrypt(self, data: str, token: str | None) -> httpx.Response:
        return decrypt(self.decryptor.url, data, token)

    def logs(self) -> str:
        return self.encryptor.log_file.read_text() + self.decryptor.log_file.read_text()


@contextmanager
def deploy(kube_api: KubeApiDouble, tmp_path: Path, env: Mapping[str, str]) -> Iterator[Deployment]:
    """Both services with ``env`` (key provider settings); the decryptor trusts ``kube_api``."""
    common = {"Logging__Level": "DEBUG", **env}
    decryptor_env = {
        **common,
        "KUBECONFIG": str(kube_api.write_kubeconfig(tmp_path / "kubeconfig")),
    }
    with (
        kamus_serve("encryptor", common, tmp_path / "encryptor.log") as encryptor,
        kamus_serve("decryptor", decryptor_env, tmp_path / "decryptor.log") as decryptor,
    ):
        yield Deployment(encryptor, decryptor, kube_api)


def run_kamus(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``kamus ARGS`` to its end, with only PATH and ``env`` in its environment."""
    return subprocess.run(
        [sys.executable, "-m", "kamus", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": os.environ["PATH"], **(env or {})},
    )
