"""Slow and greedy clients against real ``kamus serve`` processes (kamus/server/http.py): a body
must arrive within Server__BodyTimeoutSeconds, one address may hold only
Server__MaxConnectionsPerClient connections (Encryptor__TrustedProxies excepted), and the health
probes answer while a flood fills Server__MaxConnections.

Client addresses other than 127.0.0.1 are other loopback addresses (127.0.0.0/8 is all loopback
on Linux), bound as the connection's source.
"""

import json
import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from tests.k8s_double import Faults, KubeApiDouble
from tests.support import leaks
from tests.support.processes import Deployment, Service, deploy, kamus_serve
from tests.support.settings import new_key

SECRET = "slow-clients-secret-for-team-a"
leaks.register(SECRET)

PATHS = {"encryptor": "/api/v1/encrypt", "decryptor": "/api/v1/decrypt"}
PROBES = ["/healthz", "/readyz", "/api/v1/isAlive"]


def _connect(url: str, source: str = "127.0.0.1") -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10, source_address=(source, 0))


def _head(path: str, length: int, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: kamus\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def _read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def _trickle_until_answered(sock: socket.socket, seconds: float) -> bytes:
    """Sends a byte of body every 0.1 s until the server answers; what it answered, or b""."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 0.1)
        if readable:
            return _read_to_end(sock)
        try:
            sock.sendall(b" ")
        except OSError:  # closed by the server: what it wrote first is still to be read
            return _read_to_end(sock)
    return b""


@contextmanager
def _flood(url: str, source: str, path: str, count: int) -> Iterator[list[bytes]]:
    """``count`` connections from ``source``, opened one after the other, each sending headers
    that announce a body it never sends. ``Expect: 100-continue`` makes the server say which it
    holds: the app, reading the body, has 100 Continue sent. Yields each one's first answer:
    that 100 Continue, or the whole refusal. The held ones stay open until the block ends."""
    with ExitStack() as stack:
        answers = []
        for _ in range(count):
            sock = stack.enter_context(_connect(url, source))
            sock.sendall(_head(path, 1000, "Expect: 100-continue\r\n"))
            first = sock.recv(4096)
            answers.append(
                first if first.startswith(b"HTTP/1.1 100 ") else first + _read_to_end(sock)
            )
        yield answers


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer else 0


def _client(source: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=30)


def _encrypt(client: httpx.Client, url: str) -> httpx.Response:
    body = {"data": SECRET, "service-account": "app", "namespace": "team-a"}
    return client.post(f"{url}/api/v1/encrypt", json=body)


def _warnings(service: Service, setting: str) -> list[str]:
    return [
        line["message"]
        for line in service.log_lines()
        if line["level"] == "WARNING" and setting in line["message"]
    ]


@pytest.mark.parametrize("service", ["encryptor", "decryptor"])
def test_a_slow_body_is_answered_408_after_the_body_deadline(
    service: str, kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    """A body trickled a byte at a time, never pausing long, still has its whole deadline; a
    body that arrives in time after a pause is served."""
    env = {"KeyManagement__AES__Key": new_key(), "Server__BodyTimeoutSeconds": "1"}
    with deploy(kube_api, tmp_path, env) as deployment:
        target: Service = getattr(deployment, service)
        with _connect(target.url) as slow:
            slow.sendall(_head(PATHS[service], 1000) + b"{")
            started = time.monotonic()
            answer = _trickle_until_answered(slow, seconds=20)
            elapsed = time.monotonic() - started
        assert _status(answer) == 408, answer
        assert answer.endswith(
            b"the request body did not arrive within 1s of its headers "
            b"(Server__BodyTimeoutSeconds): send the whole body without pausing"
        )
        assert 0.5 < elapsed < 15
        assert _warnings(target, "Server__BodyTimeoutSeconds")

        if service == "encryptor":
            request = {"data": SECRET, "service-account": "app", "namespace": "team-a"}
            extra = ""
        else:
            request = {"data": deployment.encrypt(SECRET, "team-a", "app").text}
            extra = f"Authorization: Bearer {kube_api.issue_token('team-a', 'app')}\r\n"
        body = json.dumps(request).encode()
        with _connect(target.url) as prompt:
            prompt.sendall(_head(PATHS[service], len(body), extra + "Connection: close\r\n"))
            time.sleep(0.3)
            prompt.sendall(body)
            served = _read_to_end(prompt)
        assert _status(served) == 200, served
        if service == "decryptor":
            assert served.endswith(SECRET.encode())


def test_a_pipelined_body_has_its_deadline_once_the_request_before_it_is_answered(
    kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    """uvicorn reads nothing of a pipelined request while the one before it is answered: that
    wait is not the client's. The first answer arrives whole, then the 408."""
    env = {"KeyManagement__AES__Key": new_key(), "Server__BodyTimeoutSeconds": "1"}
    with deploy(kube_api, tmp_path, env) as deployment:
        ciphertext = deployment.encrypt(SECRET, "team-a", "app").text
        token = kube_api.issue_token("team-a", "app")
        kube_api.faults = Faults(delay_seconds=2)  # the first request outlives the deadline
        body = f'{{"data": "{ciphertext}"}}'.encode()
        first = _head(PATHS["decryptor"], len(body), f"Authorization: Bearer {token}\r\n")
        with _connect(deployment.decryptor.url) as pipelined:
            pipelined.sendall(first + body + _head(PATHS["decryptor"], 1000) + b"{")
            answers = _read_to_end(pipelined)
        assert answers.startswith(b"HTTP/1.1 200 "), answers
        answered, cut_off = answers.split(b"HTTP/1.1 408 ")
        assert answered.endswith(SECRET.encode())
        assert b"(Server__BodyTimeoutSeconds)" in cut_off


def test_one_address_cannot_hold_every_connection(tmp_path: Path) -> None:
    """Past Server__MaxConnectionsPerClient an address's connections are answered 503 and do
    not count against Server__MaxConnections: another address is still served."""
    env = {
        "KeyManagement__AES__Key": new_key(),
        "Server__MaxConnections": "20",
        "Server__MaxConnectionsPerClient": "5",
        "Server__BodyTimeoutSeconds": "60",
    }
    with (
        kamus_serve("encryptor", env, tmp_path / "encryptor.log") as encryptor,
        _flood(encryptor.url, "127.0.0.2", PATHS["encryptor"], 25) as answers,
    ):
        assert [_status(answer) for answer in answers] == [100] * 5 + [503] * 20
        assert answers[-1].endswith(
            b"too many connections from this address (Server__MaxConnectionsPerClient is 5): "
            b"close idle ones, or retry later"
        )
        assert b"\r\nretry-after: 5\r\n" in answers[-1]
        with _client("127.0.0.3") as other:
            assert _encrypt(other, encryptor.url).status_code == 200
        with _client("127.0.0.2") as same:
            refused = _encrypt(same, encryptor.url)
            # The kubelet probes from the node's address, which a flood through that node's
            # SNAT shares: the probes are never refused for the cap.
            probes = {probe: same.get(f"{encryptor.url}{probe}").status_code for probe in PROBES}
        assert refused.status_code == 503
        assert "Server__MaxConnectionsPerClient is 5" in refused.text
        assert probes == dict.fromkeys(PROBES, 200)
    # 21 refusals, logged once (the rest are counted into the next line, 10 s later).
    assert len(_warnings(encryptor, "Server__MaxConnectionsPerClient")) == 1


def test_trusted_proxies_are_exempt_from_the_per_client_cap_in_the_encryptor_only(
    kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    """Everyone behind an ingress shares its address. The decryptor has no trusted proxies:
    Encryptor__TrustedProxies in its environment changes nothing."""
    env = {
        "KeyManagement__AES__Key": new_key(),
        "Encryptor__TrustedProxies": "127.0.0.2/32",
        "Server__MaxConnectionsPerClient": "3",
        "Server__BodyTimeoutSeconds": "60",
    }
    with deploy(kube_api, tmp_path, env) as deployment:
        url = deployment.encryptor.url
        with (
            _flood(url, "127.0.0.2", PATHS["encryptor"], 5) as proxy,
            _flood(url, "127.0.0.3", PATHS["encryptor"], 5) as client,
        ):
            assert [_status(answer) for answer in proxy] == [100] * 5
            assert [_status(answer) for answer in client] == [100] * 3 + [503] * 2
            with _client("127.0.0.2") as via_proxy:
                assert _encrypt(via_proxy, url).status_code == 200
        decryptor = deployment.decryptor.url
        with _flood(decryptor, "127.0.0.2", PATHS["decryptor"], 4) as answers:
            assert [_status(answer) for answer in answers] == [100] * 3 + [503]


@pytest.mark.parametrize("service", ["encryptor", "decryptor"])
def test_probes_answer_while_a_flood_holds_max_connections(
    service: str, kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    """Else the kubelet's liveness probe fails and every replica is restarted."""
    env = {
        "KeyManagement__AES__Key": new_key(),
        "Server__MaxConnections": "10",
        "Server__BodyTimeoutSeconds": "60",
    }
    deployment: Deployment
    with (
        deploy(kube_api, tmp_path, env) as deployment,
        _flood(getattr(deployment, service).url, "127.0.0.2", PATHS[service], 12) as answers,
    ):
        url = getattr(deployment, service).url
        # uvicorn's limit counts the arriving connection: 9 held, then refused.
        assert [_status(answer) for answer in answers] == [100] * 9 + [503] * 3
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 503  # the limit is full
        for probe in PROBES:
            assert httpx.get(f"{url}{probe}", timeout=30).status_code == 200, probe
