"""``make run``: ``kamus dev`` starts both services on embedded defaults, with no cluster; it
stops them on Ctrl-C or SIGTERM however it was started, and never reports another program as
itself."""

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from kamus.cli.dev import DevError, _Child, _wait_ready
from tests.support.ports import free_port, free_ports
from tests.support.processes import ignoring_sigint, spawn, stop

ROOT = Path(__file__).resolve().parents[2]


def dev_command(state_dir: Path, ports: tuple[int, int]) -> list[str]:
    return [
        *(sys.executable, "-m", "kamus", "dev", "--state-dir", str(state_dir)),
        *("--encryptor-port", str(ports[0]), "--decryptor-port", str(ports[1])),
    ]


def start_dev(
    state_dir: Path, log: Path, *, sigint_ignored: bool = False
) -> tuple[subprocess.Popen[bytes], str, str, str]:
    encryptor_port, decryptor_port = free_ports(2)
    command = dev_command(state_dir, (encryptor_port, decryptor_port))
    with log.open("wb") as out:
        process = spawn(
            ignoring_sigint(command) if sigint_ignored else command,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while "Press Ctrl-C to stop" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            pytest.fail(f"kamus dev did not start:\n{log.read_text()}")
        time.sleep(0.1)
    text = log.read_text()
    token = re.search(r"Authorization: Bearer (\S+)'", text)
    urls = re.findall(r"(?:en|de)cryptor +(http://\S+)", text)
    assert token is not None
    assert len(urls) == 2
    return process, urls[0], urls[1], token[1]


def children_of(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(child) for child in (task / "children").read_text().split()}
    return found


def gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "zombie" in status


def test_dev_round_trip_and_state_kept_between_runs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    process, encryptor, decryptor, token = start_dev(state, tmp_path / "run1.log")
    try:
        body = {"data": "hello", "service-account": "demo", "namespace": "default"}
        ciphertext = httpx.post(f"{encryptor}/api/v1/encrypt", json=body, timeout=5).text
        headers = {"Authorization": f"Bearer {token}"}
        response = httpx.post(
            f"{decryptor}/api/v1/decrypt", json={"data": ciphertext}, headers=headers, timeout=5
        )
        assert response.text == "hello"
        bad = httpx.post(
            f"{decryptor}/api/v1/decrypt",
            json={"data": ciphertext},
            headers={"Authorization": "Bearer wrong"},
            timeout=5,
        )
        assert bad.status_code == 401
    finally:
        assert stop(process, signal.SIGINT) == 0
    log = (tmp_path / "run1.log").read_text()
    assert "local development only" in log  # the static token file warns
    assert "hello" not in log
    for name in ["aes.key", "tokens.csv"]:
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600
    assert (state / ".gitignore").read_text() == "*\n"

    # A second run reuses the key and token: yesterday's ciphertexts still open.
    process, encryptor, decryptor, token_again = start_dev(state, tmp_path / "run2.log")
    try:
        assert token_again == token
        response = httpx.post(
            f"{decryptor}/api/v1/decrypt", json={"data": ciphertext}, headers=headers, timeout=5
        )
        assert response.text == "hello"
    finally:
        assert stop(process) == 0
    # Both services went down with it.
    for url in (encryptor, decryptor):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=2)


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_dev_stops_with_its_services_when_started_with_sigint_ignored(
    tmp_path: Path, how: signal.Signals
) -> None:
    """As a script's ``make run &`` starts it: SIGINT is ignored in the job, yet Ctrl-C (or
    SIGTERM) stops kamus dev and both of its services, on their own, within the grace time."""
    process, encryptor, _, _ = start_dev(
        tmp_path / "state", tmp_path / "dev.log", sigint_ignored=True
    )
    services = children_of(process.pid)
    try:
        assert len(services) == 2
        process.send_signal(how)
        assert process.wait(timeout=20) == 0
        assert all(gone(pid) for pid in services)
    finally:
        stop(process)  # SIGKILL for all of them if it did not stop by itself
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{encryptor}/healthz", timeout=2)


@pytest.mark.parametrize("busy", ["encryptor", "decryptor"])
def test_dev_refuses_busy_ports_and_says_how_to_pick_others(tmp_path: Path, busy: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        ports = (taken, free_port()) if busy == "encryptor" else (free_port(), taken)
        result = subprocess.run(
            dev_command(tmp_path / "state", ports), capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 1
    assert f"port {taken} for the {busy} is already in use" in result.stderr
    assert "--encryptor-port N --decryptor-port M" in result.stderr
    assert "Kamus is running" not in result.stdout
    assert not (tmp_path / "state").exists()  # nothing started, nothing written


def test_dev_refuses_one_port_for_both(tmp_path: Path) -> None:
    port = free_port()
    result = subprocess.run(
        dev_command(tmp_path / "state", (port, port)), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert f"cannot share port {port}" in result.stderr


def test_dev_says_which_service_stopped_when_one_dies(tmp_path: Path) -> None:
    process, _, decryptor, _ = start_dev(tmp_path / "state", tmp_path / "dev.log")
    try:
        port = int(decryptor.rsplit(":", 1)[1])
        [victim] = [
            pid
            for pid in children_of(process.pid)
            if f"--port\0{port}" in Path(f"/proc/{pid}/cmdline").read_text()
        ]
        os.kill(victim, signal.SIGKILL)
        assert process.wait(timeout=20) == 1
    finally:
        stop(process)
    log = (tmp_path / "dev.log").read_text()
    assert "kamus dev: the decryptor stopped (exit code -9); its log is above" in log


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def another_healthy_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_health_check_answered_by_another_program_is_not_ready(
    another_healthy_server: int,
) -> None:
    """Something took the port between the check and the service's bind: the service fails,
    while /healthz on that port answers 200. Only the service's own "listening" line counts."""
    failing = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; time.sleep(1); sys.exit(1)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    child = _Child("encryptor", failing)
    try:
        with pytest.raises(DevError, match="the encryptor stopped \\(exit code 1\\) before"):
            _wait_ready(child, another_healthy_server, time.monotonic() + 10)
    finally:
        stop(failing)
        assert failing.stdout is not None
        failing.stdout.close()


def test_the_process_tests_pass_with_sigint_ignored(tmp_path: Path) -> None:
    """The suite as ``make test &`` in a script runs it: SIGINT ignored in every process."""
    selection = [
        "tests/e2e/test_dev.py::test_dev_round_trip_and_state_kept_between_runs",
        "tests/e2e/test_e2e.py::test_round_trip_only_for_the_right_service_account",
        "tests/e2e/test_e2e.py::test_several_workers_serve_and_stop_together",
    ]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection]
    result = subprocess.run(
        ignoring_sigint(command),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTEST_ADDOPTS": f"--basetemp={tmp_path / 'inner'}"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{len(selection)} passed" in result.stdout, result.stdout[-500:]
