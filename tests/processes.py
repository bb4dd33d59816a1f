"""Real ``kamus`` processes for end-to-end tests, each logging to a file the test can read."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

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


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


@contextmanager
def kamus_serve(service: str, env: Mapping[str, str], log_file: Path) -> Iterator[Service]:
    """``kamus serve <service>`` on a free loopback port, with only ``env`` plus PATH/HOME."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "kamus", "serve", service, "--host", "127.0.0.1", "--port", "0"],
            env={**base, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = _wait_for_url(log_file, process, timeout=30)
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        yield Service(url, log_file, process)
    finally:
        stop(process)
