"""What the ``kamus`` commands say when they cannot talk to their server: one
sentence on what happened, one on what to try, and the exit code. The real command, in a process
of its own, against real servers on 127.0.0.1; never a secret or a token in what it prints."""

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import jwt
import pytest
import trustme
import yaml
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from crypto import AESKeyManager
from decryptor.app import create_app as create_decryptor
from encryptor.app import create_app as create_encryptor
from kamus.cli.client import KamusClient, NetworkError, wrong_service
from kamus.server.settings import Settings
from tests.k8s_double import KubeApiDouble
from tests.support.ports import free_port
from tests.support.servers import ThreadedServer
from tests.support.settings import SettingsFactory

SECRET = "s3cr3t-" + os.urandom(8).hex()
TOKEN = jwt.encode({"aud": ["kamus-encryptor"], "sub": "ci"}, os.urandom(32), algorithm="HS256")
# A DNS server that does not answer must not slow the unknown-host cases down (glibc's options).
FAST_DNS = {"RES_OPTIONS": "timeout:1 attempts:1"}


def kamus(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kamus", *args],
        env={**os.environ, **FAST_DNS, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class Recording:
    """Notes each request's path, whether it carried credentials, and its body's length."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests: list[tuple[str, bool, int]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            length = int(headers.get(b"content-length", b"0"))
            self.requests.append((scope["path"], b"authorization" in headers, length))
        await self.app(scope, receive, send)


def assert_last_line(stderr: str, prefix: str, expected: str) -> None:
    """The last line of ``stderr`` says ``expected``, both sentences and where one ends and the
    next begins; a ``*`` in it stands for words that vary (a resolver's, a fingerprint)."""
    last = stderr.splitlines()[-1] if stderr else ""
    assert last.startswith(prefix), stderr
    position = len(prefix)
    for piece in expected.split("*"):
        found = last.find(piece, position)
        assert found >= 0, f"{piece!r} is not in {last[position:]!r}"
        position = found + len(piece)


@dataclass
class Target:
    """A URL to give ``--kamus-url``, and the options that go with it."""

    url: str
    args: list[str]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@contextmanager
def served(app: ASGIApp, certificate: trustme.LeafCert | None, tmp_path: Path) -> Iterator[int]:
    server = ThreadedServer(app, lifespan="on")
    if certificate is not None:
        pem = tmp_path / f"server-{id(app)}.pem"
        certificate.private_key_and_cert_chain_pem.write_to_path(str(pem))
        server.ssl_certfile = str(pem)
    server.start()
    try:
        yield server.port
    finally:
        server.stop()


def encryptor() -> FastAPI:
    return create_encryptor(Settings(), key_manager=AESKeyManager(b"k" * 32))


@pytest.fixture
def plain_behind_https(tmp_path: Path, ca_file: str) -> Iterator[Target]:
    with served(encryptor(), None, tmp_path) as port:
        yield Target(f"https://127.0.0.1:{port}", ["--ca-bundle", ca_file])


@pytest.fixture
def https_behind_http(ca: trustme.CA, tmp_path: Path) -> Iterator[Target]:
    with served(encryptor(), ca.issue_cert("127.0.0.1"), tmp_path) as port:
        yield Target(f"http://127.0.0.1:{port}", ["--allow-insecure-url"])


class NginxHttpsPort(BaseHTTPRequestHandler):
    """What nginx answers a plain-http request on its https port (an ingress's 443)."""

    BODY = (
        b"<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>"
        b"\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>The plain HTTP "
        b"request was sent to HTTPS port</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n"
        b"</html>\r\n"
    )

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(400)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        self.wfile.write(self.BODY)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def nginx_behind_http() -> Iterator[Target]:
    with ThreadingHTTPServer(("127.0.0.1", 0), NginxHttpsPort) as server:
        thread = Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield Target(f"http://127.0.0.1:{server.server_port}", ["--allow-insecure-url"])
        server.shutdown()


@pytest.fixture
def nothing_listens() -> Target:
    return Target(f"https://127.0.0.1:{free_port()}", [])


@pytest.fixture
def unknown_host() -> Target:
    return Target("https://kamus.invalid:8443", [])  # RFC 6761: never resolves


@pytest.fixture
def untrusted(ca: trustme.CA, tmp_path: Path) -> Iterator[Target]:
    with served(encryptor(), ca.issue_cert("127.0.0.1"), tmp_path) as port:
        yield Target(f"https://127.0.0.1:{port}", [])  # the system CAs do not know trustme's


@pytest.fixture
def hostname_mismatch(ca: trustme.CA, tmp_path: Path, ca_file: str) -> Iterator[Target]:
    with served(encryptor(), ca.issue_cert("kamus.example"), tmp_path) as port:
        yield Target(f"https://127.0.0.1:{port}", ["--ca-bundle", ca_file])


@pytest.fixture
def pin_mismatch(ca: trustme.CA, tmp_path: Path, ca_file: str) -> Iterator[Target]:
    with served(encryptor(), ca.issue_cert("127.0.0.1"), tmp_path) as port:
        pin = ["--cert-fingerprint", "AB" * 32]
        yield Target(f"https://127.0.0.1:{port}", ["--ca-bundle", ca_file, *pin])


@pytest.fixture
def decryptor_app(make_settings: SettingsFactory, kubeconfig: Path) -> Recording:
    return Recording(create_decryptor(make_settings(), key_manager=AESKeyManager(b"k" * 32)))


@pytest.fixture
def decryptor(
    decryptor_app: Recording, ca: trustme.CA, tmp_path: Path, ca_file: str
) -> Iterator[Target]:
    with served(decryptor_app, ca.issue_cert("127.0.0.1"), tmp_path) as port:
        yield Target(f"https://127.0.0.1:{port}", ["--ca-bundle", ca_file])


@pytest.fixture
def not_kamus(ca: trustme.CA, tmp_path: Path, ca_file: str) -> Iterator[Target]:
    with served(FastAPI(), ca.issue_cert("127.0.0.1"), tmp_path) as port:
        yield Target(f"https://127.0.0.1:{port}", ["--ca-bundle", ca_file])


SAME_PORT_OVER_HTTPS = (
    "{url} speaks TLS on this port: it is an https server. Use https://127.0.0.1:{port}"
)
NOT_AN_ENCRYPTOR = (
    "{url} has no Kamus encrypt API (it answered 404 to /api/v1/encrypt): {looks}. Check "
    "--kamus-url (or $KAMUS_URL): it must be the Kamus encryptor's URL"
)


# The fixture giving the URL, the exit code, and the message (see assert_last_line).
FAILURES = [
    (
        "plain_behind_https",
        3,
        "{url} does not speak TLS on this port (WRONG_VERSION_NUMBER). Is it plain http? Then "
        "use http://127.0.0.1:{port} with --allow-insecure-url",
    ),
    ("https_behind_http", 3, SAME_PORT_OVER_HTTPS),
    ("nginx_behind_http", 3, SAME_PORT_OVER_HTTPS),
    (
        "nothing_listens",
        3,
        "cannot reach {url}: nothing listens on 127.0.0.1:{port} (connection refused). Check "
        "that the service is running and the port is right",
    ),
    (
        "unknown_host",
        3,
        "cannot reach {url}: the host kamus.invalid is not known (*). Check the URL's host "
        "name, and that this machine's DNS resolves it",
    ),
    (
        "untrusted",
        3,
        "the server's certificate is not trusted (unable to get local issuer certificate). "
        "Pass --ca-bundle with the CA that issued it",
    ),
    (
        "hostname_mismatch",
        3,
        "the server's certificate is not valid for 127.0.0.1 (IP address mismatch, "
        "certificate is not valid for '127.0.0.1'). Use a host name the certificate was "
        "issued for in --kamus-url",
    ),
    (
        "pin_mismatch",
        4,
        "not the pinned AB:AB:*; nothing was sent. If the certificate was renewed, check the "
        "new one and pin it (openssl s_client -connect 127.0.0.1:{port} -servername 127.0.0.1"
        " </dev/null | openssl x509 -noout -fingerprint -sha256)",
    ),
    (
        "decryptor",
        5,
        NOT_AN_ENCRYPTOR.replace(
            "{looks}", "it answers on /api/v1/decrypt, so it looks like the Kamus decryptor"
        ),
    ),
    ("not_kamus", 5, NOT_AN_ENCRYPTOR.replace("{looks}", "it is not a Kamus encryptor")),
]


@pytest.mark.parametrize("command", ["encrypt", "seal"])
@pytest.mark.parametrize(
    ("target", "exit_code", "expected"), FAILURES, ids=[case[0] for case in FAILURES]
)
def test_a_failure_says_what_happened_and_what_to_try(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    command: str,
    target: str,
    exit_code: int,
    expected: str,
) -> None:
    server: Target = request.getfixturevalue(target)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    options = ["-u", server.url, "--token-file", str(token_file), *server.args]
    if server.url.startswith("http://"):
        options.append("--allow-token-over-http")
    if command == "encrypt":
        result = kamus("encrypt", "-a", "app", "-n", "team-a", "-s", SECRET, *options)
    else:
        manifest = tmp_path / "secret.yaml"
        manifest.write_text(
            f"apiVersion: v1\nkind: Secret\nmetadata: {{name: db}}\nstringData: {{pw: {SECRET}}}\n"
        )
        result = kamus("seal", "-a", "app", "-n", "team-a", str(manifest), *options)
    assert result.returncode == exit_code, result.stderr
    assert_last_line(result.stderr, "kamus: ", expected.format(url=server.url, port=server.port))
    assert result.stdout == ""
    assert SECRET not in result.stderr
    assert TOKEN not in result.stderr


def test_asking_which_service_it_is_sends_no_credentials_and_no_secret(
    decryptor: Target, decryptor_app: Recording, tmp_path: Path
) -> None:
    """The one extra request, made only once the encrypt API answered 404."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    options = ["-u", decryptor.url, "--token-file", str(token_file), *decryptor.args]
    result = kamus("encrypt", "-a", "app", "-n", "team-a", "-s", SECRET, *options)
    assert result.returncode == 5, result.stderr
    assert decryptor_app.requests[0][:2] == ("/api/v1/encrypt", True)
    assert decryptor_app.requests[1:] == [("/api/v1/decrypt", False, len(b"{}"))]


@pytest.mark.parametrize("command", ["encrypt", "seal"])
def test_encrypt_and_seal_wait_as_long_as_timeout_says(
    silent: int, command: str, tmp_path: Path
) -> None:
    manifest = tmp_path / "secret.yaml"
    manifest.write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {k: v}\n")
    what = ["-s", SECRET, "-n", "team-a"] if command == "encrypt" else [str(manifest), "-n", "a"]
    url = f"http://127.0.0.1:{silent}"
    result = kamus(
        command, *what, "-a", "app", "-u", url, "--allow-insecure-url", "--timeout", "0.5"
    )
    assert result.returncode == 3, result.stderr
    assert_last_line(result.stderr, "kamus: ", f"no answer from {url} within 0.5 s. Is a firewall")
    assert SECRET not in result.stdout + result.stderr


@pytest.fixture
def silent() -> Iterator[int]:
    """A port whose connections the kernel accepts and nobody ever answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_server_that_never_answers_times_out_with_a_hint(silent: int, scheme: str) -> None:
    """At the client's level, for any command's client."""
    url = f"{scheme}://127.0.0.1:{silent}"
    with (
        KamusClient(url, allow_insecure=True, timeout=0.5) as client,
        pytest.raises(NetworkError) as failure,
    ):
        client.post("/api/v1/encrypt", {"data": SECRET}, {"Authorization": f"Bearer {TOKEN}"})
    assert failure.value.exit_code == 3
    assert str(failure.value) == (
        f"no answer from {url} within 0.5 s. Is a firewall dropping the packets, or the server "
        "overloaded? Check the host and port, then try again (--timeout waits longer)"
    )


@pytest.mark.parametrize(
    ("target", "looks"),
    [
        (
            "encryptor_for_init",
            "it answers on /api/v1/encrypt, so it looks like the Kamus encryptor",
        ),
        ("not_kamus", "it is not a Kamus decryptor"),
    ],
    ids=["encryptor", "not-kamus"],
)
def test_init_given_another_service_is_told_which(
    request: pytest.FixtureRequest, target: str, looks: str, ca_file: str
) -> None:
    """What kamus/cli/init.py raises when /api/v1/decrypt answers 404."""
    server: Target = request.getfixturevalue(target)
    with KamusClient(server.url, allow_insecure=True, ca_bundle=ca_file) as client:
        status, _ = client.post("/api/v1/decrypt", {"data": "x"}, {"Authorization": "Bearer t"})
        assert status == 404
        error = wrong_service(client, "decryptor")
    assert error.exit_code == 5
    assert str(error) == (
        f"{server.url} has no Kamus decrypt API (it answered 404 to /api/v1/decrypt): {looks}. "
        "Check --kamus-url (or $KAMUS_URL): it must be the Kamus decryptor's URL"
    )


@pytest.fixture
def encryptor_for_init(ca: trustme.CA, tmp_path: Path) -> Iterator[Target]:
    with served(encryptor(), ca.issue_cert("127.0.0.1"), tmp_path) as port:
        yield Target(f"https://127.0.0.1:{port}", [])


# -- kamus create-key-secret and the Kubernetes API --------------------------------------------


def kubeconfig_for(path: Path, server: str, ca_file: Path | None, token: str) -> Path:
    cluster: dict[str, str] = {"server": server}
    if ca_file is not None:
        cluster["certificate-authority"] = str(ca_file)
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    return path


# What stands where the apiserver should, and the message (see assert_last_line).
APISERVER_FAILURES = [
    (
        "nothing-listens",
        "cannot reach the Kubernetes API at {url}: nothing listens on {address} (connection "
        "refused). Check the server the kubeconfig {kubeconfig} names, and that the apiserver "
        "(or kubectl proxy) is running, then run again",
    ),
    (
        "unknown-host",
        "cannot reach the Kubernetes API at {url}: the host kamus.invalid is not known (*). "
        "Check the server the kubeconfig {kubeconfig} names, and this machine's DNS",
    ),
    (
        "untrusted",
        "the Kubernetes API's certificate at {url} is not trusted (unable to get local issuer "
        "certificate). Check the certificate authority the kubeconfig {kubeconfig} gives",
    ),
    (
        "plain-http",
        "the Kubernetes API at {url} does not speak TLS on this port (WRONG_VERSION_NUMBER). "
        "Is it plain http (kubectl proxy)? Then check the server the kubeconfig {kubeconfig} "
        "names",
    ),
    (
        "credentials-rejected",
        "the apiserver did not accept this command's credentials (401 Unauthorized to create "
        "Secret kamus/kamus-keys): its token or certificate has expired, or is not this "
        "cluster's. Check the kubeconfig's user (KUBECONFIG)",
    ),
    (
        "never-answers",
        "no answer from the Kubernetes API at {url} within 0.5 s. Is a network policy or "
        "firewall dropping the packets, or the apiserver overloaded? Run again, or raise "
        "Kubernetes__RequestTimeoutSeconds",
    ),
]


@pytest.mark.parametrize(
    ("apiserver", "expected"), APISERVER_FAILURES, ids=[case[0] for case in APISERVER_FAILURES]
)
def test_create_key_secret_says_why_it_cannot_use_the_kubernetes_api(
    kube_api: KubeApiDouble, silent: int, tmp_path: Path, apiserver: str, expected: str
) -> None:
    token = "rejected-" + os.urandom(8).hex()
    plain = ThreadedServer(FastAPI())
    plain.start()
    url, ca_file = {
        "nothing-listens": (f"https://127.0.0.1:{free_port()}", None),
        "unknown-host": ("https://kamus.invalid:6443", None),
        "untrusted": (kube_api.url, None),
        "plain-http": (f"https://127.0.0.1:{plain.port}", None),
        "credentials-rejected": (kube_api.url, kube_api.ca_file),
        "never-answers": (f"https://127.0.0.1:{silent}", None),
    }[apiserver]
    kubeconfig = kubeconfig_for(tmp_path / "kubeconfig", url, ca_file, token)
    env = {"KUBECONFIG": str(kubeconfig), "Kubernetes__RequestTimeoutSeconds": "0.5"}
    try:
        result = kamus("create-key-secret", "--name", "kamus-keys", "-n", "kamus", env=env)
    finally:
        plain.stop()
    assert result.returncode == 1, result.stderr
    address = url.removeprefix("https://")
    expected = expected.format(url=url, address=address, kubeconfig=kubeconfig)
    assert_last_line(result.stderr, "Error: ", expected)
    assert token not in result.stderr + result.stdout
    assert not kube_api.objects("secrets")
