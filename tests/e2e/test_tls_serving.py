"""``kamus serve`` over TLS, and with mutual TLS, as the Helm chart's TLS option runs it."""

import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest
import trustme
from click.testing import CliRunner

from kamus.cli.main import main
from tests.support.processes import kamus_serve
from tests.support.settings import new_key


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_env(ca: trustme.CA, tmp: Path, **extra: str) -> dict[str, str]:
    server = ca.issue_cert("127.0.0.1", "kamus-encryptor.kamus.svc")
    server.cert_chain_pems[0].write_to_path(tmp / "tls.crt")
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(tmp / "tls.crt", append=True)
    server.private_key_pem.write_to_path(tmp / "tls.key")
    return {
        "KeyManagement__AES__Key": new_key(),
        "Server__TlsCertFile": str(tmp / "tls.crt"),
        "Server__TlsKeyFile": str(tmp / "tls.key"),
        **extra,
    }


def client_context(ca: trustme.CA, *, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if with_cert:
        ca.issue_cert("kamus-cli").configure_cert(context)
    return context


def test_the_encryptor_serves_https_with_the_given_certificate(
    ca: trustme.CA, tmp_path: Path
) -> None:
    trusting = client_context(ca, with_cert=False)
    env = tls_env(ca, tmp_path)
    with kamus_serve("encryptor", env, tmp_path / "log", verify=trusting) as encryptor:
        assert encryptor.url.startswith("https://")
        body = {"data": "s3cret", "service-account": "app", "namespace": "team"}
        reply = httpx.post(f"{encryptor.url}/api/v1/encrypt", json=body, verify=trusting)
        assert reply.status_code == 200
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{encryptor.url}/healthz")  # the system CAs do not know this one


def test_a_client_ca_requires_client_certificates(ca: trustme.CA, tmp_path: Path) -> None:
    ca.cert_pem.write_to_path(tmp_path / "clients.crt")
    env = tls_env(ca, tmp_path, Server__TlsClientCaFile=str(tmp_path / "clients.crt"))
    with_cert = client_context(ca, with_cert=True)
    with kamus_serve("encryptor", env, tmp_path / "log", verify=with_cert) as encryptor:
        assert httpx.get(f"{encryptor.url}/healthz", verify=with_cert).status_code == 200
        without = client_context(ca, with_cert=False)
        with pytest.raises((httpx.ReadError, httpx.ConnectError, httpx.RemoteProtocolError)):
            httpx.get(f"{encryptor.url}/healthz", verify=without)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"Server__TlsCertFile": "/etc/hostname"}, "set both Server__TlsCertFile"),
        (
            {"Server__TlsCertFile": "/nope.crt", "Server__TlsKeyFile": "/nope.key"},
            "Server__TlsCertFile: /nope.crt cannot be read",
        ),
        ({"Server__TlsClientCaFile": "/etc/hostname"}, "TlsClientCaFile needs"),
    ],
)
def test_tls_misconfiguration_is_refused_clearly(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    monkeypatch.setenv("KeyManagement__AES__Key", new_key())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["serve", "encryptor", "--port", "0"])
    assert result.exit_code == 1
    assert message in result.output


def served_certificate(url: str, context: ssl.SSLContext) -> bytes:
    """The certificate the server presents on a new connection, DER."""
    host, port = url.removeprefix("https://").split(":")
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def wait_for_certificate(
    url: str, context: ssl.SSLContext, expected: bytes, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while served_certificate(url, context) != expected:
        assert time.monotonic() < deadline, "the new certificate was not served"
        time.sleep(0.1)


def pem_to_der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_renewed_certificate_is_served_without_a_restart(
    ca: trustme.CA, tmp_path: Path, workers: str
) -> None:
    """As cert-manager renews into the mounted Secret: new connections get the new
    certificate, an open connection carries on, and a half-written pair changes nothing."""
    trusting = client_context(ca, with_cert=False)
    env = tls_env(ca, tmp_path, Server__TlsReloadSeconds="0.2", Server__Workers=workers)
    first = pem_to_der((tmp_path / "tls.crt").read_bytes())
    with (
        kamus_serve("encryptor", env, tmp_path / "log", verify=trusting) as encryptor,
        httpx.Client(verify=trusting) as kept_open,
    ):
        assert kept_open.get(f"{encryptor.url}/healthz").status_code == 200
        assert served_certificate(encryptor.url, trusting) == first

        renewed = ca.issue_cert("127.0.0.1", "kamus-encryptor.kamus.svc")
        # Half-written: the new certificate, the old key. Still the old certificate.
        renewed.cert_chain_pems[0].write_to_path(tmp_path / "tls.crt")
        time.sleep(1)
        for _ in range(5):  # each worker process, whichever answers
            assert served_certificate(encryptor.url, trusting) == first
        # Then the key: the pair loads.
        renewed.private_key_pem.write_to_path(tmp_path / "tls.key")
        second = pem_to_der(renewed.cert_chain_pems[0].bytes())
        wait_for_certificate(encryptor.url, trusting, second)
        assert kept_open.get(f"{encryptor.url}/healthz").status_code == 200
        log = (tmp_path / "log").read_text()
    assert "do not load" in log
    assert "reloaded the TLS certificate" in log
    assert "BEGIN" not in log  # no key or certificate text in the log


def test_the_images_healthcheck_asks_over_https_when_the_service_serves_it(
    ca: trustme.CA, tmp_path: Path
) -> None:
    """``kamus healthcheck`` (the Dockerfiles' HEALTHCHECK) with the service's own environment:
    an http:// URL is asked over https, and the certificate (not one the system trusts) is not
    checked; the answer must be a 200."""
    env = tls_env(ca, tmp_path)
    trusting = client_context(ca, with_cert=False)
    with kamus_serve("encryptor", env, tmp_path / "log", verify=trusting) as encryptor:
        port = encryptor.url.rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}/healthz"
        healthy = CliRunner().invoke(
            main, ["healthcheck"], env={**env, "KAMUS_HEALTHCHECK_URL": url}
        )
        assert healthy.exit_code == 0, healthy.output
        assert f"https://127.0.0.1:{port}/healthz answered 200" in healthy.output
        missing = CliRunner().invoke(main, ["healthcheck", "--url", f"{url}-not"], env=env)
        assert missing.exit_code == 1
        assert "answered 404" in missing.output


def test_the_healthcheck_over_plain_http_and_against_nothing(tmp_path: Path) -> None:
    env = {"KeyManagement__AES__Key": new_key()}
    with kamus_serve("encryptor", env, tmp_path / "log") as encryptor:
        url = f"{encryptor.url}/healthz"
        healthy = CliRunner().invoke(main, ["healthcheck", "--url", url], env=env)
        assert healthy.exit_code == 0, healthy.output
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/healthz"
    down = CliRunner().invoke(main, ["healthcheck", "--url", closed], env=env)
    assert down.exit_code == 1
    assert f"{closed} does not answer" in down.output
