"""The processes under test: ``kamus serve`` and the bare uvicorn app, each on a free loopback
port with only the environment it is given, started in parallel and stopped at the end."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import httpx

from tests.support.processes import stop

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
BASELINES = {
    "bare": "bench.bare:app",
    "fastapi": "bench.bare:fastapi_app",
    "floor": "bench.bare:floor_app",
}


# The interpreter of the kamus processes: by default this one (the development venv). To measure
# kamus as installed without the development tools, which some libraries import when present
# (kubernetes-validate, say): `python -m venv /tmp/kamus && /tmp/kamus/bin/pip install .` and
# KAMUS_BENCH_PYTHON=/tmp/kamus/bin/python.
KAMUS_PYTHON = os.environ.get("KAMUS_BENCH_PYTHON", sys.executable)


def new_key() -> str:
    """A fresh AES master key, as ``openssl rand -base64 32`` makes."""
    return base64.b64encode(os.urandom(32)).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@cache
def serve_supports_workers() -> bool:
    """Whether the kamus under test (``KAMUS_BENCH_PYTHON``) has ``--workers``: old ones lack it."""
    help_text = subprocess.run(  # noqa: S603 - a Python interpreter of ours, not user input
        [KAMUS_PYTHON, "-m", "kamus", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    return "--workers" in help_text


@dataclass(frozen=True)
class Spec:
    """What to start: ``kind`` is ``encryptor``, ``decryptor`` or one of :data:`BASELINES`."""

    name: str
    kind: str
    env: Mapping[str, str]
    workers: int = 1


@dataclass
class Service:
    spec: Spec
    url: str
    process: subprocess.Popen[bytes]
    log_file: Path

    @property
    def name(self) -> str:
        return self.spec.name

    def pids(self) -> list[int]:
        """The processes that serve: the uvicorn process, or its workers when there are several
        (the supervisor holds no app, and multiprocessing's helpers serve nothing)."""
        if self.spec.workers <= 1:
            return [self.process.pid]
        return [
            pid
            for pid in _descendants(self.process.pid)
            if b"resource_tracker" not in _read(f"/proc/{pid}/cmdline")
        ]

    def rss_mb(self) -> float:
        """Resident memory in MB (10^6 bytes), VmRSS summed over :meth:`pids`."""
        return sum(_vm_rss_kib(pid) for pid in self.pids()) * 1024 / 1e6

    def connections(self) -> list[int]:
        """Established client connections held by each of :meth:`pids`, most first: how the
        kernel spread them over the workers."""
        port = int(self.url.rsplit(":", 1)[1])
        inodes = set()
        for line in _read("/proc/net/tcp").decode().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.add(fields[9])
        counts = []
        for pid in self.pids():
            fds = Path(f"/proc/{pid}/fd")
            links = [os.readlink(fd) for fd in fds.iterdir()] if fds.exists() else []
            counts.append(sum(link[8:-1] in inodes for link in links if link.startswith("socket:")))
        return sorted(counts, reverse=True)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return b""


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read(f"/proc/{entry}/stat")
            if stat:  # "pid (comm) state ppid ...", and comm may hold spaces
                parents[int(entry)] = int(stat.rsplit(b")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += children
        frontier = children
    return found


def _vm_rss_kib(pid: int) -> int:
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith(b"VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"process {pid} has no VmRSS (it has exited)")


def _command(spec: Spec, port: int) -> list[str]:
    listen = ["--host", HOST, "--port", str(port)]
    if spec.kind in BASELINES:
        # uvicorn's defaults are kamus serve's: loop and http "auto" (uvloop and httptools when
        # installed); no access log and no Server header either, as kamus serve.
        command = [sys.executable, "-m", "uvicorn", BASELINES[spec.kind], *listen]
        command += ["--log-level", "warning", "--no-access-log", "--no-server-header"]
        command += ["--lifespan", "off"]
        return command + (["--workers", str(spec.workers)] if spec.workers > 1 else [])
    command = [KAMUS_PYTHON, "-m", "kamus", "serve", spec.kind, *listen]
    if serve_supports_workers():
        command += ["--workers", str(spec.workers)]
    elif spec.workers != 1:
        raise RuntimeError("kamus serve has no --workers option yet")
    return command


def _start(spec: Spec, log_dir: Path) -> Service:
    port = free_port()
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    log_file = log_dir / f"{spec.name}.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own arguments
            _command(spec, port),
            env={**base, **spec.env},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Service(spec, f"http://{HOST}:{port}", process, log_file)


def _wait_ready(service: Service, deadline: float) -> None:
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            break
        try:
            if httpx.get(f"{service.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{service.name} did not start; its log ends:\n{service.log_tail()}")


@contextmanager
def running(specs: Sequence[Spec], log_dir: Path) -> Iterator[dict[str, Service]]:
    """Start every spec at once (startup is mostly imports: two cores do two at a time), wait
    until each answers ``/healthz``, and stop them all on the way out."""
    with ExitStack() as stack:
        services = {}
        for spec in specs:
            service = _start(spec, log_dir)
            stack.callback(stop, service.process)
            services[spec.name] = service
        deadline = time.monotonic() + 120
        for service in services.values():
            _wait_ready(service, deadline)
        yield services
