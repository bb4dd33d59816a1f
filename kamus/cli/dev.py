"""``make run``: both services on loopback, on embedded defaults, without a cluster.

A key and a static token for ``system:serviceaccount:default:demo`` are generated once into the
state folder and reused, so ciphertexts from one run still open in the next.
"""

import base64
import errno
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

DEMO_USER = "system:serviceaccount:default:demo"
DEMO_GROUPS = "system:serviceaccounts,system:serviceaccounts:default,system:authenticated"
HOST = "127.0.0.1"
# Printed by uvicorn only once the process holds its listening socket.
_LISTENING = re.compile(rb"Uvicorn running on https?://")


class DevError(Exception):
    """Why ``kamus dev`` cannot run, and what to do about it."""


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)  # unwinds through run_dev's finally, which stops the services


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def prepare_state(state_dir: Path) -> tuple[Path, Path, str]:
    """The key file, the token file and the demo token, created on first use."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (state_dir / ".gitignore").write_text("*\n", encoding="utf-8")
    key_file = state_dir / "aes.key"
    if not key_file.exists():
        _write_private(key_file, base64.b64encode(os.urandom(32)).decode() + "\n")
    token_file = state_dir / "tokens.csv"
    if not token_file.exists():
        token = secrets.token_urlsafe(32)
        _write_private(token_file, f'{token},{DEMO_USER},demo-uid,"{DEMO_GROUPS}"\n')
    token = token_file.read_text(encoding="utf-8").split(",", 1)[0]
    return key_file, token_file, token


def check_ports_free(ports: dict[str, int]) -> None:
    """Fail before starting anything when a port is taken: otherwise the health check may reach
    whatever holds it, and report another program as this Kamus."""
    if len(set(ports.values())) < len(ports):
        raise DevError(
            f"the encryptor and the decryptor cannot share port {ports['encryptor']}; "
            "pick two ports with --encryptor-port and --decryptor-port"
        )
    for name, port in ports.items():
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port))
            except OSError as exc:
                what = "is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
                raise DevError(
                    f"port {port} for the {name} {what} (another `kamus dev`?). Stop what holds "
                    f"it, or pick other ports: kamus dev --encryptor-port N --decryptor-port M"
                ) from None


@dataclass
class _Child:
    """A service process whose output is copied to ours, watched for its listening line."""

    name: str
    process: subprocess.Popen[bytes]
    listening: threading.Event = field(default_factory=threading.Event)
    copier: threading.Thread | None = None

    def copy_output(self, out: IO[bytes]) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if _LISTENING.search(line):
                self.listening.set()
            out.write(line)
            out.flush()


def _start(name: str, port: int, env: dict[str, str]) -> _Child:
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, "-m", "kamus", "serve", name, "--host", HOST, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    child = _Child(name, process)
    child.copier = threading.Thread(
        target=child.copy_output, args=(sys.stdout.buffer,), daemon=True
    )
    child.copier.start()
    return child


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://{HOST}:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_ready(child: _Child, port: int, deadline: float) -> None:
    """Until the child has said it holds ``port`` and answers on it: a health check alone could
    be answered by whatever took the port between our check and the child's bind."""
    while child.process.poll() is None and time.monotonic() < deadline:
        if child.listening.is_set() and _answers(port):
            return
        time.sleep(0.1)
    code = child.process.poll()
    if code is not None:
        raise DevError(
            f"the {child.name} stopped (exit code {code}) before it was ready; its log is above"
        )
    raise DevError(f"the {child.name} did not answer on port {port} within 30 s; its log is above")


def instructions(encryptor: str, decryptor: str, token: str) -> str:
    return f"""
Kamus is running on its embedded defaults (local AES key, static development token).
  encryptor  {encryptor}   (docs: {encryptor}/docs)
  decryptor  {decryptor}   (docs: {decryptor}/docs)

Encrypt for the service account 'demo' in namespace 'default':

  CT=$(curl -s -X POST {encryptor}/api/v1/encrypt -H 'Content-Type: application/json' \\
       -d '{{"data": "s3cr3t", "service-account": "demo", "namespace": "default"}}')
  echo "$CT"

Decrypt it as that service account:

  curl -s -X POST {decryptor}/api/v1/decrypt -H 'Authorization: Bearer {token}' \\
       -H 'Content-Type: application/json' -d "{{\\"data\\": \\"$CT\\"}}"

Press Ctrl-C to stop.
"""


def _stop(children: list[_Child]) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
    for child in children:  # the last lines of their logs
        if child.copier is not None:
            child.copier.join(timeout=2)


def run_dev(state_dir: str, encryptor_port: int, decryptor_port: int) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    ports = {"encryptor": encryptor_port, "decryptor": decryptor_port}
    children: list[_Child] = []
    try:
        check_ports_free(ports)
        key_file, token_file, token = prepare_state(Path(state_dir).resolve())
        env = {
            **os.environ,
            "KeyManagement__Provider": "AESKey",
            "KeyManagement__AES__KeyFile": str(key_file),
            "Kubernetes__TokenAuthFile": str(token_file),
        }
        env.pop("KeyManagement__AES__Key", None)
        children = [_start(name, port, env) for name, port in ports.items()]
        deadline = time.monotonic() + 30
        for child, port in zip(children, ports.values(), strict=True):
            _wait_ready(child, port, deadline)
        encryptor, decryptor = (f"http://{HOST}:{port}" for port in ports.values())
        print(instructions(encryptor, decryptor, token), flush=True)
        while True:
            for child in children:
                code = child.process.poll()
                if code is not None:
                    raise DevError(f"the {child.name} stopped (exit code {code}); its log is above")
            time.sleep(0.5)
    except DevError as exc:
        print(f"kamus dev: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(children)
