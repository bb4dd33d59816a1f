"""End to end: both services as real ``kamus serve`` processes, tokens from the API double."""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.k8s_double import Faults, KubeApiDouble
from tests.support import leaks
from tests.support.processes import Deployment, deploy, kamus_serve
from tests.support.settings import new_key

SECRET = "pa55w0rd-only-for-team-a-app"
leaks.register(SECRET)


@pytest.fixture
def deployment(
    kube_api: KubeApiDouble, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    key = new_key()
    key_file = tmp_path / "aes.key"
    key_file.write_text(key)
    env = {
        "KeyManagement__AES__KeyFile": str(key_file),
        "Kubernetes__RequestTimeoutSeconds": getattr(request, "param", "1"),
    }
    with deploy(kube_api, tmp_path, env) as deployment:
        deployment.key = key
        yield deployment


def test_round_trip_only_for_the_right_service_account(deployment: Deployment) -> None:
    kube_api = deployment.kube_api
    encrypted = deployment.encrypt(SECRET, "team-a", "app")
    assert encrypted.status_code == 200
    ciphertext = encrypted.text

    token = kube_api.issue_token("team-a", "app")
    decrypted = deployment.decrypt(ciphertext, token)
    assert decrypted.status_code == 200
    assert decrypted.text == SECRET

    other_sa = kube_api.issue_token("team-a", "web")
    other_ns = kube_api.issue_token("team-b", "app")
    assert deployment.decrypt(ciphertext, other_sa).status_code == 400
    assert deployment.decrypt(ciphertext, other_ns).status_code == 400
    assert deployment.decrypt(ciphertext, None).status_code == 401
    assert deployment.decrypt(ciphertext, kube_api.forge_token("team-a", "app")).status_code == 401
    user = kube_api.issue_user_token("jane@example.com")
    assert deployment.decrypt(ciphertext, user).status_code == 403
    assert deployment.encrypt(SECRET, "team-a", "default").status_code == 400
    default = kube_api.issue_token("team-a", "default")
    assert deployment.decrypt(ciphertext, default).status_code == 403

    alive = httpx.get(f"{deployment.decryptor.url}/api/v1/isAlive", timeout=5)
    assert alive.json() is True

    # Nothing secret reached either log: not the plaintext, a token, the key or a ciphertext.
    logs = deployment.encryptor.log_file.read_text() + deployment.decryptor.log_file.read_text()
    key_bytes = base64.b64decode(deployment.key)
    for secret in [
        SECRET,
        token,
        other_sa,
        other_ns,
        user,
        default,
        deployment.key,
        key_bytes.hex(),
        ciphertext,
        kube_api.admin_token,
    ]:
        assert secret not in logs
    audits = [
        line
        for svc in (deployment.encryptor, deployment.decryptor)
        for line in svc.log_lines()
        if line.get("log_type") == "audit"
    ]
    assert len(audits) == 9
    assert {a["outcome"] for a in audits} == {"success", "rejected", "denied"}
    assert all(a["source_ip"] == "127.0.0.1" for a in audits)


def test_apiserver_outage_is_503_and_recovers(deployment: Deployment) -> None:
    kube_api = deployment.kube_api
    ciphertext = deployment.encrypt(SECRET, "team-a", "app").text
    token = kube_api.issue_token("team-a", "app")
    kube_api.stop()
    down = deployment.decrypt(ciphertext, token)
    assert down.status_code == 503
    assert down.headers["retry-after"]
    kube_api.start()
    assert deployment.decrypt(ciphertext, token).text == SECRET


def decrypt_held_at_the_apiserver(
    deployment: Deployment, seconds: float
) -> tuple[threading.Thread, list[httpx.Response]]:
    """A decrypt in a thread, returned once its TokenReview is pending at the Kubernetes API
    double, which answers it ``seconds`` late; its response lands in the list."""
    kube_api = deployment.kube_api
    ciphertext = deployment.encrypt(SECRET, "team-a", "app").text
    token = kube_api.issue_token("team-a", "app")
    kube_api.faults = Faults(delay_seconds=seconds)
    result: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: result.append(deployment.decrypt(ciphertext, token)))
    before = kube_api.received
    thread.start()
    while kube_api.received == before:
        threading.Event().wait(0.01)
    return thread, result


@pytest.mark.slow
@pytest.mark.parametrize("deployment", ["10"], indirect=True)
def test_a_slow_tokenreview_does_not_block_other_requests(deployment: Deployment) -> None:
    thread, result = decrypt_held_at_the_apiserver(deployment, seconds=3)
    try:
        # While it hangs, the same process keeps answering: the event loop is not blocked.
        assert httpx.get(f"{deployment.decryptor.url}/healthz", timeout=2).status_code == 200
        assert thread.is_alive()
    finally:
        thread.join(timeout=15)
    assert result[0].text == SECRET


def test_decryptor_without_a_way_to_kubernetes_exits_with_the_fix(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),  # no ~/.kube/config
        "KeyManagement__AES__Key": new_key(),
    }
    result = subprocess.run(
        [sys.executable, "-m", "kamus", "serve", "decryptor", "--port", "0"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert b"cannot configure the Kubernetes client" in result.stderr
    assert b"Kubernetes__ProxyUrl" in result.stderr
    assert env["KeyManagement__AES__Key"].encode() not in result.stderr


def _workers(pid: int) -> set[int]:
    """uvicorn's worker processes under ``pid`` (multiprocessing also starts a resource
    tracker there)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {
        int(child)
        for child in children
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    }


def test_several_workers_serve_and_stop_together(kube_api: KubeApiDouble, tmp_path: Path) -> None:
    env = {"KeyManagement__AES__Key": new_key(), "Server__Workers": "2"}
    with deploy(kube_api, tmp_path, env) as deployment:
        workers = {
            service: _workers(process.pid)
            for service, process in [
                ("encryptor", deployment.encryptor.process),
                ("decryptor", deployment.decryptor.process),
            ]
        }
        ciphertexts = [deployment.encrypt(SECRET, "team-a", "app").text for _ in range(6)]
        token = kube_api.issue_token("team-a", "app")
        assert {deployment.decrypt(c, token).text for c in ciphertexts} == {SECRET}
    assert {len(pids) for pids in workers.values()} == {2}
    for pid in set().union(*workers.values()):  # SIGTERM to the parent ends its workers too
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )


def test_the_controller_refuses_several_workers(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kamus", "serve", "controller", "--workers", "2"],
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "KeyManagement__AES__Key": new_key(),
        },
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert b"run more replicas instead" in result.stderr


@pytest.mark.parametrize("deployment", ["10"], indirect=True)
def test_sigterm_lets_requests_in_flight_finish(deployment: Deployment) -> None:
    """As Kubernetes stops a pod: no new connections, the request in flight still answered,
    then a clean exit."""
    thread, result = decrypt_held_at_the_apiserver(deployment, seconds=2)
    process = deployment.decryptor.process
    process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while True:  # the listening socket closes at once
        try:
            httpx.get(f"{deployment.decryptor.url}/healthz", timeout=1)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
            # Refused, or (a connection the kernel had queued as the socket closed) dropped
            # unanswered or reset: either way no new request is served.
            break
        assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
        time.sleep(0.05)
    assert thread.is_alive()  # ... while the request in flight goes on
    thread.join(timeout=15)
    assert result[0].status_code == 200
    assert result[0].text == SECRET
    # uvicorn re-raises the signal once it has shut down: the exit status of a SIGTERM.
    assert process.wait(timeout=10) == -signal.SIGTERM
    lines = [json.loads(line) for line in deployment.decryptor.log_file.read_text().splitlines()]
    # The audit line of the request in flight was written although the process ended on a signal.
    messages = [(line["message"], line.get("status")) for line in lines]
    assert messages.index(("decryptor request", 200)) < messages.index(
        (f"Finished server process [{process.pid}]", None)
    )


def test_past_max_connections_new_requests_get_503(kube_api: KubeApiDouble, tmp_path: Path) -> None:
    """uvicorn's limit counts the arriving connection too: with 3, two held requests leave no
    room for another."""
    env = {"KeyManagement__AES__Key": new_key(), "Server__MaxConnections": "3"}
    with deploy(kube_api, tmp_path, env) as deployment:
        ciphertext = deployment.encrypt(SECRET, "team-a", "app").text
        kube_api.faults = Faults(delay_seconds=2)
        answers: list[httpx.Response] = []

        def held() -> None:
            # A token each: two TokenReviews, so the apiserver's count shows both in flight.
            answers.append(deployment.decrypt(ciphertext, kube_api.issue_token("team-a", "app")))

        threads = [threading.Thread(target=held) for _ in range(2)]
        before = kube_api.received
        for thread in threads:
            thread.start()
        while kube_api.received < before + 2:
            threading.Event().wait(0.01)
        # Not /healthz: the probes are exempt (kamus/server/http.py).
        refused = httpx.get(f"{deployment.decryptor.url}/metrics", timeout=5)
        for thread in threads:
            thread.join(timeout=15)
        assert refused.status_code == 503
        assert [answer.text for answer in answers] == [SECRET, SECRET]  # the two were served
        kube_api.faults = Faults()
        token = kube_api.issue_token("team-a", "app")
        assert deployment.decrypt(ciphertext, token).text == SECRET


def test_slow_headers_lose_their_connection(tmp_path: Path) -> None:
    """A client trickling its headers (slowloris) is cut off after Server__HeaderTimeoutSeconds;
    one that finishes them in time is served, over the same kind of connection."""
    env = {"KeyManagement__AES__Key": new_key(), "Server__HeaderTimeoutSeconds": "1"}
    with kamus_serve("encryptor", env, tmp_path / "encryptor.log") as encryptor:
        host, port = encryptor.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: kamus\r\n")  # ... and no blank line
            started = time.monotonic()
            assert slow.recv(1024) == b""  # closed by the server
            assert time.monotonic() - started < 8
        with socket.create_connection((host, int(port)), timeout=10) as prompt:
            prompt.sendall(b"GET /healthz HTTP/1.1\r\n")
            time.sleep(0.3)
            prompt.sendall(b"Host: kamus\r\nConnection: close\r\n\r\n")
            assert prompt.recv(1024).startswith(b"HTTP/1.1 200")
