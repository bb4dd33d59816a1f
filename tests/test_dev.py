"""``make run``: ``kamus dev`` starts both services on embedded defaults, with no cluster."""

import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.processes import stop


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_dev(state_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str, str, str]:
    ports = [str(free_port()), str(free_port())]
    command = [sys.executable, "-m", "kamus", "dev", "--state-dir", str(state_dir)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--encryptor-port", ports[0], "--decryptor-port", ports[1]],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while "Press Ctrl-C to stop" not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    token = re.search(r"Authorization: Bearer (\S+)'", log.read_text())
    assert token is not None
    return process, f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}", token[1]


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
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
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
