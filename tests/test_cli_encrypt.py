"""``kamus encrypt`` and ``kamus seal`` against a real encryptor app served over HTTPS and HTTP
on 127.0.0.1: TLS verification, certificate pinning, kamus-cli's options, and exit codes."""

import asyncio
import base64
import hashlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
import yaml
from click.testing import CliRunner, Result
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from crypto import AESKeyManager
from encryptor.app import create_app
from kamus.cli import main
from kamus.settings import Settings
from tests.servers import ThreadedServer

KEY = b"k" * 32


class Counting:
    """Counts the HTTP requests that reach the app (to prove a refused pin sent nothing)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.requests += 1
        await self.app(scope, receive, send)


@dataclass
class Encryptor:
    url: str
    counter: Counting
    ca_file: Path | None = None
    der: bytes = b""


def decrypt(ciphertext: str, sa_id: str = "team-a:app") -> str:
    return asyncio.run(AESKeyManager(KEY).decrypt(ciphertext, sa_id)).decode()


def serve(app: ASGIApp, tmp_path: Path, tls: bool) -> Iterator[Encryptor]:
    counter = Counting(app)
    server = ThreadedServer(counter)
    encryptor = Encryptor("", counter)
    if tls:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        pem = tmp_path / "server.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
        server.ssl_certfile = str(pem)
        encryptor.ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(encryptor.ca_file))
        encryptor.der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    server.start()
    encryptor.url = f"{'https' if tls else 'http'}://127.0.0.1:{server.port}"
    try:
        yield encryptor
    finally:
        server.stop()


@pytest.fixture
def https(tmp_path: Path) -> Iterator[Encryptor]:
    app = create_app(Settings(), key_manager=AESKeyManager(KEY))
    yield from serve(app, tmp_path, tls=True)


@pytest.fixture
def plain_http(tmp_path: Path) -> Iterator[Encryptor]:
    app = create_app(Settings(), key_manager=AESKeyManager(KEY))
    yield from serve(app, tmp_path, tls=False)


def run(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin)


def encrypt_args(server: Encryptor, *extra: str) -> list[str]:
    base = ["encrypt", "-a", "app", "-n", "team-a", "-u", server.url]
    if server.ca_file:
        base += ["--ca-bundle", str(server.ca_file)]
    return [*base, *extra]


def colon(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def test_prints_only_the_ciphertext(https: Encryptor) -> None:
    result = run(*encrypt_args(https, "-s", "s3cr3t"))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert decrypt(result.stdout.strip()) == "s3cr3t"
    assert "s3cr3t" not in result.stderr


@pytest.mark.parametrize("form", ["sha256", "sha1-node", "sha256-lower-no-colons"])
def test_the_right_pinned_fingerprint_works(https: Encryptor, form: str) -> None:
    pin = {
        "sha256": colon(hashlib.sha256(https.der).digest()),
        "sha1-node": colon(hashlib.sha1(https.der).digest()),  # noqa: S324 - kamus-cli's form
        "sha256-lower-no-colons": hashlib.sha256(https.der).hexdigest(),
    }[form]
    result = run(*encrypt_args(https, "-s", "v", "--cert-fingerprint", pin))
    assert result.exit_code == 0, result.stderr
    assert decrypt(result.stdout.strip()) == "v"


def test_a_wrong_fingerprint_fails_before_anything_is_sent(https: Encryptor) -> None:
    wrong = colon(hashlib.sha256(b"another certificate").digest())
    result = run(*encrypt_args(https, "-s", "s3cr3t", "--cert-fingerprint", wrong))
    assert result.exit_code == 4
    assert "not the pinned" in result.stderr
    assert "nothing was sent" in result.stderr
    assert https.counter.requests == 0


def test_a_malformed_fingerprint_is_a_usage_error(https: Encryptor) -> None:
    result = run(*encrypt_args(https, "-s", "v", "--cert-fingerprint", "not-hex"))
    assert result.exit_code == 2
    assert "SHA-1 or SHA-256" in result.stderr


def test_an_untrusted_certificate_is_refused(https: Encryptor) -> None:
    https.ca_file = None  # the system CAs do not know trustme's
    result = run(*encrypt_args(https, "-s", "v"))
    assert result.exit_code == 3
    assert "--ca-bundle" in result.stderr
    assert https.counter.requests == 0


def test_plain_http_needs_allow_insecure_url(plain_http: Encryptor) -> None:
    refused = run(*encrypt_args(plain_http, "-s", "v"))
    assert refused.exit_code == 2
    assert "--allow-insecure-url" in refused.stderr
    assert plain_http.counter.requests == 0
    allowed = run(*encrypt_args(plain_http, "-s", "v", "--allow-insecure-url"))
    assert allowed.exit_code == 0
    assert decrypt(allowed.stdout.strip()) == "v"


@pytest.mark.parametrize("args", [[], ["-s", "a", "-f", "file"]], ids=["neither", "both"])
def test_exactly_one_secret_source(https: Encryptor, args: list[str]) -> None:
    result = run(*encrypt_args(https, *args))
    assert result.exit_code == 2
    assert "exactly one of --secret and --secret-file" in result.stderr


def test_secret_from_stdin_and_from_file(https: Encryptor, tmp_path: Path) -> None:
    from_stdin = run(*encrypt_args(https, "-s", "-"), stdin="piped ✓")
    assert decrypt(from_stdin.stdout.strip()) == "piped ✓"
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café".encode("latin-1"))
    from_file = run(*encrypt_args(https, "-f", str(latin), "--secret-file-encoding", "latin-1"))
    assert decrypt(from_file.stdout.strip()) == "café"


def test_a_trailing_newline_warns_without_prompting_in_ci(https: Encryptor, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("line\n")
    warned = run(*encrypt_args(https, "-f", str(secret)))  # stdin is not a TTY: no prompt
    assert warned.exit_code == 0
    assert "ends with a newline" in warned.stderr
    assert decrypt(warned.stdout.strip()) == "line\n"
    quiet = run(*encrypt_args(https, "-f", str(secret), "--ignore-new-line"))
    assert "newline" not in quiet.stderr
    assert decrypt(quiet.stdout.strip()) == "line\n"


def test_output_file_is_not_overwritten_unless_asked(https: Encryptor, tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("precious")
    refused = run(*encrypt_args(https, "-s", "v", "-o", str(target)))
    assert refused.exit_code == 2
    assert "--overwrite" in refused.stderr
    assert target.read_text() == "precious"
    done = run(*encrypt_args(https, "-s", "v", "-o", str(target), "-O"))
    assert done.exit_code == 0
    assert done.stdout == ""
    assert decrypt(target.read_text()) == "v"


def test_the_server_message_is_shown_with_exit_code_5(https: Encryptor) -> None:
    args = ["encrypt", "-s", "v", "-a", "default", "-n", "team-a", "-u", https.url]
    result = run(*args, "--ca-bundle", str(https.ca_file))
    assert result.exit_code == 5
    assert "400" in result.stderr
    assert "'default' service account cannot be used" in result.stderr


def test_an_unreachable_server_is_exit_code_3() -> None:
    result = run("encrypt", "-s", "v", "-a", "app", "-n", "ns", "-u", "https://127.0.0.1:9")
    assert result.exit_code == 3
    assert "cannot reach https://127.0.0.1:9" in result.stderr


SECRETS = """\
apiVersion: v1
kind: Secret
metadata:
  name: db
  namespace: team-a
  labels: {{app: api}}
  annotations:
    team: payments
    kubectl.kubernetes.io/last-applied-configuration: '{{"secret": "leak"}}'
  resourceVersion: "42"
type: kubernetes.io/basic-auth
stringData:
  username: admin
data:
  password: {password}
---
apiVersion: v1
kind: Secret
metadata: {{name: tls}}
data:
  key.pem: {pem}
"""


def manifest() -> str:
    return SECRETS.format(
        password=base64.b64encode(b"p4ss").decode(),
        pem=base64.b64encode(b"-----BEGIN KEY-----\n").decode(),
    )


def test_seal_writes_kamussecrets_the_controller_can_use(https: Encryptor) -> None:
    args = ["seal", "-a", "app", "-n", "team-a", "-u", https.url, "--ca-bundle", str(https.ca_file)]
    result = run(*args, stdin=manifest())
    assert result.exit_code == 0, result.stderr
    db, tls = yaml.safe_load_all(result.stdout)
    assert db["apiVersion"] == "soluto.com/v1alpha2"
    assert db["kind"] == "KamusSecret"
    assert db["metadata"] == {
        "name": "db",
        "namespace": "team-a",
        "labels": {"app": "api"},
        "annotations": {"team": "payments"},
    }
    assert db["type"] == "kubernetes.io/basic-auth"
    assert db["serviceAccount"] == "app"
    assert decrypt(db["stringData"]["username"]) == "admin"
    # data values are encrypted as their base64 text: the controller decodes after decrypting.
    assert base64.b64decode(decrypt(db["data"]["password"])) == b"p4ss"
    assert tls["metadata"]["namespace"] == "team-a"  # from --namespace
    assert "p4ss" not in result.stdout
    assert "admin" not in result.stdout
    assert "leak" not in result.stdout


def test_seal_to_a_configmap_for_the_init_container(https: Encryptor) -> None:
    args = ["seal", "-a", "app", "-n", "team-a", "-u", https.url, "--ca-bundle", str(https.ca_file)]
    result = run(*args, "--format", "configmap", stdin=manifest())
    db, tls = yaml.safe_load_all(result.stdout)
    assert db["kind"] == "ConfigMap"
    assert decrypt(db["data"]["password"]) == "p4ss"
    assert decrypt(db["data"]["username"]) == "admin"
    assert decrypt(tls["data"]["key.pem"]) == "-----BEGIN KEY-----\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "is not a v1 Secret"),
        ("apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n", "has no namespace"),
        ("key: [unclosed", "not YAML"),
        ("", "holds no Secret"),
    ],
)
def test_seal_refuses_what_it_cannot_seal(https: Encryptor, text: str, message: str) -> None:
    args = ["seal", "-a", "app", "-u", https.url, "--ca-bundle", str(https.ca_file)]
    result = run(*args, stdin=text)
    assert result.exit_code == 2
    assert message in result.stderr


@pytest.fixture
def kamus_encryptor(tmp_path: Path) -> Iterator[Encryptor]:
    """An original Kamus encryptor: v1 only (no batch API)."""
    app = FastAPI()
    keys = AESKeyManager(KEY)

    @app.post("/api/v1/encrypt")
    async def encrypt(request: Request) -> Response:
        body = await request.json()
        sa = f"{body['namespace']}:{body['service-account']}"
        return PlainTextResponse(await keys.encrypt(body["data"].encode(), sa))

    yield from serve(app, tmp_path, tls=False)


def test_seal_falls_back_to_v1_per_value(kamus_encryptor: Encryptor) -> None:
    args = ["seal", "-a", "app", "-n", "team-a", "-u", kamus_encryptor.url, "--allow-insecure-url"]
    result = run(*args, stdin=manifest())
    assert result.exit_code == 0, result.stderr
    db, _ = yaml.safe_load_all(result.stdout)
    assert decrypt(db["stringData"]["username"]) == "admin"
    assert kamus_encryptor.counter.requests == 1 + 3  # one v2 try, then v1 per value
