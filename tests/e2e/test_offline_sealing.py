"""Offline sealing end to end, with real ``kamus`` processes: values sealed with no server
running open in a real decryptor as their service account, and ``kamus keys fetch`` gets the
bundle over HTTPS from a real encryptor, refusing tampered and foreign-anchor bundles."""

import base64
import contextlib
import json
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
import yaml
from fastapi import FastAPI
from fastapi.responses import Response

from crypto import bundle
from crypto.sealing import Keyring, Schedule
from tests.k8s_double import KubeApiDouble
from tests.support import leaks
from tests.support.processes import decrypt, kamus_serve, run_kamus
from tests.support.servers import Encryptor, serve
from tests.support.settings import new_key

SECRET = "sealed-offline-pa55w0rd"
leaks.register(SECRET)
MANIFEST = """\
apiVersion: v1
kind: Secret
metadata: {name: db, namespace: team-a}
stringData: {password: sealed-offline-pa55w0rd, user: admin}
"""


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "aes.key"
    path.write_text(new_key())
    return path


def anchor_line(verify_output: str) -> str:
    """The fingerprint on `kamus keys verify`'s ``anchor:`` line."""
    line = next(line for line in verify_output.splitlines() if line.startswith("anchor:"))
    return line.split()[1]


def test_values_sealed_offline_with_no_server_open_in_the_decryptor(
    kube_api: KubeApiDouble, key_file: Path, tmp_path: Path
) -> None:
    env = {"KeyManagement__AES__KeyFile": str(key_file)}
    keys = tmp_path / "keys.json"
    exported = run_kamus("keys", "export", "-o", str(keys), env=env)
    assert exported.returncode == 0, exported.stderr
    verified = run_kamus("keys", "verify", str(keys))
    assert verified.returncode == 0, verified.stderr
    anchor = anchor_line(verified.stdout)

    # No encryptor or decryptor is running: the bundle is all the sealer has.
    pinned = {"KAMUS_TRUST_ANCHOR": anchor}
    one = run_kamus(
        "encrypt", "-s", SECRET, "-a", "app", "-n", "team-a", "--offline", "--keys", str(keys),
        env=pinned,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    ciphertext = one.stdout.strip()
    assert ciphertext.startswith("kamus$m1$")
    sealed = run_kamus("seal", "-a", "app", "--offline", "--keys", str(keys), stdin=MANIFEST)
    assert sealed.returncode == 0, sealed.stderr
    assert f"signed by anchor {anchor}" in sealed.stderr  # unpinned: shown, to compare
    kamus_secret = yaml.safe_load(sealed.stdout)
    assert kamus_secret["kind"] == "KamusSecret"

    decryptor_env = {**env, "KUBECONFIG": str(kube_api.write_kubeconfig(tmp_path / "kubeconfig"))}
    with kamus_serve("decryptor", decryptor_env, tmp_path / "decryptor.log") as decryptor:
        token = kube_api.issue_token("team-a", "app")
        opened = decrypt(decryptor.url, ciphertext, token)
        assert opened.status_code == 200, opened.text
        assert opened.text == SECRET
        values = {
            k: decrypt(decryptor.url, v, token) for k, v in kamus_secret["stringData"].items()
        }
        assert {k: r.text for k, r in values.items()} == {"password": SECRET, "user": "admin"}
        # Only as its own identity.
        for namespace, sa in [("team-a", "web"), ("team-b", "app")]:
            other = decrypt(decryptor.url, ciphertext, kube_api.issue_token(namespace, sa))
            assert other.status_code == 400
        assert SECRET not in decryptor.log_file.read_text()


@contextlib.contextmanager
def bundle_server(text: str, tmp_path: Path) -> Iterator[Encryptor]:
    """A TLS server that answers /api/v2/keys with ``text``, whatever it is."""
    app = FastAPI()

    @app.get("/api/v2/keys")
    async def keys() -> Response:
        return Response(text, media_type="application/json")

    yield from serve(app, tmp_path, tls=True)


@pytest.fixture
def https_encryptor(
    ca: trustme.CA, key_file: Path, tmp_path: Path
) -> Iterator[tuple[str, Path, str]]:
    """A real encryptor over TLS that derives its bundle from its master key: its URL, the CA
    file to trust it, and its anchor."""
    server = ca.issue_cert("127.0.0.1")
    server.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "tls.pem"))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    env = {
        "KeyManagement__AES__KeyFile": str(key_file),
        "Server__TlsCertFile": str(tmp_path / "tls.pem"),
        "Server__TlsKeyFile": str(tmp_path / "tls.pem"),
    }
    master = base64.b64decode(key_file.read_text())
    anchor = bundle.fingerprint(bundle.anchor_from_master(master).public_key())
    with kamus_serve(
        "encryptor",
        env,
        tmp_path / "encryptor.log",
        verify=ssl.create_default_context(cafile=str(ca_file)),
    ) as encryptor:
        yield encryptor.url, ca_file, anchor


def test_keys_fetch_from_the_encryptor_over_https(
    https_encryptor: tuple[str, Path, str], key_file: Path, tmp_path: Path
) -> None:
    url, ca_file, anchor = https_encryptor
    out = tmp_path / "fetched.json"
    first = run_kamus("keys", "fetch", "-u", url, "--ca-bundle", str(ca_file), "-o", str(out))
    assert first.returncode == 0, first.stderr
    assert "first use" in first.stderr
    assert f"--trust-anchor {anchor}" in first.stderr
    assert f"trust-anchor: {anchor}" in first.stderr  # the .kamus.yaml line
    assert bundle.load(out.read_text(), anchor).anchor == anchor

    pinned = run_kamus(
        "keys", "fetch", "-u", url, "--ca-bundle", str(ca_file), "--trust-anchor", anchor
    )
    assert pinned.returncode == 0, pinned.stderr
    assert bundle.load(pinned.stdout, anchor).keys
    assert "first use" not in pinned.stderr

    # Sealing straight from the URL, pinned, with no file in between.
    sealed = run_kamus(
        "encrypt", "-s", SECRET, "-a", "app", "-n", "team-a", "--offline", "--keys", url,
        "--ca-bundle", str(ca_file), env={"KAMUS_TRUST_ANCHOR": anchor},
    )  # fmt: skip
    assert sealed.returncode == 0, sealed.stderr
    master = base64.b64decode(key_file.read_text())
    plaintext, _ = Keyring(masters=[master]).open(sealed.stdout.strip(), "team-a:app")
    assert plaintext.decode() == SECRET

    # A URL without a pin is refused before anything is fetched.
    unpinned = run_kamus(
        "encrypt", "-s", SECRET, "-a", "app", "-n", "team-a", "--offline", "--keys", url,
        "--ca-bundle", str(ca_file),
    )  # fmt: skip
    assert unpinned.returncode == 2
    assert "--trust-anchor" in unpinned.stderr


def test_keys_fetch_refuses_a_foreign_anchor(
    https_encryptor: tuple[str, Path, str], tmp_path: Path
) -> None:
    url, ca_file, _ = https_encryptor
    foreign = bundle.fingerprint(bundle.anchor_from_master(b"f" * 32).public_key())
    out = tmp_path / "keys.json"
    result = run_kamus(
        "keys", "fetch", "-u", url, "--ca-bundle", str(ca_file), "--trust-anchor", foreign,
        "-o", str(out),
    )  # fmt: skip
    assert result.returncode == 6
    assert f"not by the pinned {foreign}" in result.stderr
    assert not out.exists()
    sealing = run_kamus(
        "encrypt", "-s", SECRET, "-a", "app", "-n", "team-a", "--offline", "--keys", url,
        "--ca-bundle", str(ca_file), "--trust-anchor", foreign,
    )  # fmt: skip
    assert sealing.returncode == 6
    assert sealing.stdout == ""


def test_keys_fetch_refuses_plain_http_unless_allowed(
    https_encryptor: tuple[str, Path, str],
) -> None:
    url, _, _ = https_encryptor
    result = run_kamus("keys", "fetch", "-u", url.replace("https://", "http://"))
    assert result.returncode == 2
    assert "--allow-insecure-url" in result.stderr


def test_keys_fetch_refuses_a_tampered_bundle(tmp_path: Path) -> None:
    master = b"t" * 32
    anchor = bundle.fingerprint(bundle.anchor_from_master(master).public_key())
    good = bundle.from_masters([master], now=datetime.now(UTC), schedule=Schedule(timedelta(90)))
    document = json.loads(good)
    document["cluster"] = "someone-else"
    with bundle_server(json.dumps(document), tmp_path) as server:
        assert server.ca_file is not None
        out = tmp_path / "keys.json"
        for pin in ([], ["--trust-anchor", anchor]):
            result = run_kamus(
                "keys", "fetch", "-u", server.url, "--ca-bundle", str(server.ca_file),
                "-o", str(out), *pin,
            )  # fmt: skip
            assert result.returncode == 6, result.stderr
            assert "signature does not hold" in result.stderr
            assert not out.exists()
        # The same server with the untouched bundle: fetched.
    with bundle_server(good, tmp_path) as server:
        assert server.ca_file is not None
        result = run_kamus(
            "keys", "fetch", "-u", f"{server.url}/api/v2/keys", "--ca-bundle",
            str(server.ca_file), "--trust-anchor", anchor,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert bundle.load(result.stdout, anchor).anchor == anchor
