"""Whitespace around ciphertexts, and a value that is no ciphertext told apart.

Surrounding ASCII whitespace is stripped where values enter (``kamus init``, the decryptor's v1 and
v2 requests, the controller), never in crypto/. A value refused from its shape alone, before any
key is used, is answered "this is not a Kamus ciphertext: <fact>"; whatever a key decides (CBC
padding, a GCM tag, the identity) stays one answer, byte for byte, or the legacy CBC path would
be a padding oracle.
"""

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from fastapi.testclient import TestClient

from crypto import AESKeyManager, DecryptionError, MalformedCiphertext, key_id
from crypto.encoding import b64url_encode
from crypto.envelope import parse as parse_e1
from decryptor.app import create_app as create_decryptor
from encryptor.app import create_app as create_encryptor
from tests.k8s_double import KubeApiDouble
from tests.support import cluster as controller_tests
from tests.support import leaks
from tests.support.apps import MALFORMED, OWNER, Kamus, bearer, mutations, undecryptable
from tests.support.cluster import Cluster, eventually
from tests.support.mounts import configmap_mount
from tests.support.processes import run_kamus
from tests.support.servers import ThreadedServer
from tests.support.settings import SettingsFactory, aes_encrypt, audit_events

# The fixtures of the modules whose services these tests drive: every key provider through both
# apps in-process, and a `kamus serve controller` process against the Kubernetes API double.

IDENTITY = "team-a:app"
SECRET = "malformed-case-s3cr3t"
OTHER_SECRET = "malformed-other-s3cr3t"
leaks.register(SECRET, OTHER_SECRET)
# What files, shells, editors and YAML leave around a value.
WRAPPINGS = [("", "\n"), ("", "  \r\n"), ("\t", "\n"), ("\r\n", " \x0b\x0c")]


def a1(key_b64: str, plaintext: str, sa_id: str = IDENTITY) -> str:
    return aes_encrypt(key_b64, plaintext, sa_id)


def cbc(key: bytes, blocks: bytes) -> str:
    """Kamus's ``b64(iv):b64(ct)`` of ``blocks`` as they are: padded or not, as the case needs."""
    iv = os.urandom(16)
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = encryptor.update(blocks) + encryptor.finalize()
    return f"{base64.b64encode(iv).decode()}:{base64.b64encode(body).decode()}"


def pkcs7(data: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    return padder.update(data) + padder.finalize()


def kamus_derived_key(master: bytes, sa_id: str) -> bytes:
    """Kamus's UseKeyDeriviation: HKDF-SHA256 expand-only, the identity as info."""
    return HKDFExpand(hashes.SHA256(), 32, sa_id.encode()).derive(master)


# -- crypto/ stays strict ------------------------------------------------------------------------


@pytest.mark.parametrize(("before", "after"), [("", "\n"), (" ", ""), ("", "\r\n"), ("", " ")])
async def test_crypto_itself_refuses_surrounding_whitespace(before: str, after: str) -> None:
    manager = AESKeyManager(b"k" * 32)
    legacy = cbc(b"k" * 32, pkcs7(b"legacy"))
    for value in (await manager.encrypt(b"v", IDENTITY), legacy):
        with pytest.raises(MalformedCiphertext):
            await manager.decrypt(before + value + after, IDENTITY)
        assert await manager.decrypt(value, IDENTITY)
    e1 = "kamus$e1$aws$1$" + b64url_encode(b"wrapped") + "$" + b64url_encode(bytes(28))
    assert parse_e1(e1, "aws").wrapped_key == b"wrapped"
    with pytest.raises(MalformedCiphertext):
        parse_e1(before + e1 + after, "aws")


# -- the decryptor: whitespace stripped, shape facts said ----------------------------------------


@pytest.mark.parametrize(("before", "after"), WRAPPINGS)
def test_the_decryptor_strips_whitespace_in_v1_and_v2(
    decryptor_client: TestClient, kube_api: KubeApiDouble, aes_key: str, before: str, after: str
) -> None:
    headers = bearer(kube_api.issue_token("team-a", "app"))
    wrapped = {
        "from a1": before + a1(aes_key, "from a1") + after,
        "from kamus": before + cbc(base64.b64decode(aes_key), pkcs7(b"from kamus")) + after,
    }
    for plaintext, value in wrapped.items():
        answer = decryptor_client.post("/api/v1/decrypt", json={"data": value}, headers=headers)
        assert (answer.status_code, answer.text) == (200, plaintext)
    batch = decryptor_client.post("/api/v2/decrypt", json={"items": wrapped}, headers=headers)
    assert batch.json()["items"] == {p: {"data": p} for p in wrapped}


def shape_cases(key_b64: str) -> dict[str, tuple[str, str]]:
    """Values whose shape alone refuses them, and the fact the caller is told."""
    kid = key_id(base64.b64decode(key_b64))
    valid = a1(key_b64, "v")
    body = valid.rsplit("$", 1)[1]
    return {
        "not base64": (f"kamus$a1${kid}$!!!!", "malformed base64url"),
        "unknown format": ("kamus$zz$whatever", "unknown format kamus$zz"),
        "a missing field": (f"kamus$a1${kid}", "the a1 value has the wrong number of fields"),
        "a key id not configured": (
            f"kamus$a1$AAAAAAAA${body}",
            "it names key id 'AAAAAAAA', which is not configured here",
        ),
        "a body too short": (
            f"kamus$a1${kid}${b64url_encode(bytes(27))}",
            "the a1 value is shorter than a nonce and a tag",
        ),
        "a legacy iv too short": (
            "AAAA:" + base64.b64encode(bytes(16)).decode(),
            "the legacy value's iv is not 16 bytes or its body not whole 16-byte blocks",
        ),
        "only whitespace": (" \r\n", "it is empty"),
        # Not stripped: no format holds it, and rich text may have changed the value inside.
        "a no-break space": (valid + "\u00a0", "malformed base64url"),
        "another format": (
            "env$AAAA$AAAA:AAAA",
            "this Kamus's AES provider reads only kamus$m1$ and kamus$a1$ values and legacy Kamus "
            "iv:ciphertext values",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "not base64",
        "unknown format",
        "a missing field",
        "a key id not configured",
        "a body too short",
        "a legacy iv too short",
        "only whitespace",
        "a no-break space",
        "another format",
    ],
)
def test_each_shape_fact_gets_its_own_message_in_v1_and_v2(
    decryptor_client: TestClient,
    kube_api: KubeApiDouble,
    aes_key: str,
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    caplog.set_level("INFO", logger="kamus.audit")
    value, fact = shape_cases(aes_key)[case]
    headers = bearer(kube_api.issue_token("team-a", "app"))
    answer = decryptor_client.post("/api/v1/decrypt", json={"data": value}, headers=headers)
    assert answer.status_code == 400
    assert answer.json() == {"detail": MALFORMED + fact}
    batch = decryptor_client.post("/api/v2/decrypt", json={"items": {"x": value}}, headers=headers)
    assert batch.status_code == 200
    assert batch.json()["items"] == {"x": {"error": MALFORMED + fact}}
    # The audit log keeps the detailed reason, as for any failure.
    assert all(event["reason"] for event in audit_events(caplog))


# -- the oracle stays closed -----------------------------------------------------------------------


@pytest.fixture
def deriving_decryptor(make_settings: SettingsFactory, kubeconfig: Path) -> Iterator[TestClient]:
    """Kamus's key derivation on: a legacy value then opens for its own identity only."""
    settings = make_settings(KeyManagement__AES__UseKeyDeriviation="true")
    with TestClient(create_decryptor(settings)) as client:
        yield client


def test_legacy_cbc_failures_after_the_key_are_one_answer(
    deriving_decryptor: TestClient, kube_api: KubeApiDouble, aes_key: str
) -> None:
    master = base64.b64decode(aes_key)
    mine = kamus_derived_key(master, IDENTITY)
    text = pkcs7(b"sixteen bytes ok")[:16]
    values = {
        # Every one has the shape of a legacy value (a 16-byte iv, whole blocks): only the key
        # tells what is wrong, and the caller must not learn which.
        "bad padding": cbc(mine, text + b"A" * 15 + b"\x00"),
        "padding longer than a block": cbc(mine, text + b"A" * 15 + b"\x11"),
        "a last block that is not UTF-8": cbc(mine, text + b"\xff" * 15 + b"\x01"),
        "another identity's": cbc(kamus_derived_key(master, "team-a:web"), pkcs7(b"theirs")),
        "another namespace's": cbc(kamus_derived_key(master, "team-b:app"), pkcs7(b"theirs")),
    }
    headers = bearer(kube_api.issue_token("team-a", "app"))
    opened = cbc(mine, pkcs7(b"mine"))  # the same construction, right: it opens
    assert deriving_decryptor.post("/api/v1/decrypt", json={"data": opened}, headers=headers).text
    v1 = {
        (r.status_code, r.content)
        for r in (
            deriving_decryptor.post("/api/v1/decrypt", json={"data": v}, headers=headers)
            for v in values.values()
        )
    }
    assert len(v1) == 1, v1
    [(status, content)] = v1
    assert status == 400
    assert json.loads(content)["detail"].startswith(undecryptable(*OWNER))
    batch = deriving_decryptor.post("/api/v2/decrypt", json={"items": values}, headers=headers)
    errors = {item["error"] for item in batch.json()["items"].values()}
    assert len(errors) == 1, errors
    assert errors.pop().startswith(undecryptable(*OWNER))


async def test_legacy_cbc_failures_after_the_key_are_one_exception() -> None:
    master = b"m" * 32
    manager = AESKeyManager(master, legacy_key_derivation=True)
    mine = kamus_derived_key(master, IDENTITY)
    values = [
        cbc(mine, b"A" * 15 + b"\x00"),
        cbc(mine, b"\xff" * 15 + b"\x01"),
        cbc(kamus_derived_key(master, "team-a:web"), pkcs7(b"theirs")),
    ]
    errors = []
    for value in values:
        with pytest.raises(DecryptionError) as info:
            await manager.decrypt(value, IDENTITY)
        errors.append(info.value)
    assert {type(e) for e in errors} == {DecryptionError}  # never MalformedCiphertext
    assert len({str(e) for e in errors}) == 1


def test_tag_and_identity_failures_are_one_answer_for_every_provider(kamus: Kamus) -> None:
    """a1 (AES) and e1 (AWS, GCP, Azure): a tag that fails, a value of another identity, a
    wrapped key spliced from another value: one status, one body, one batch error."""
    mine = kamus.encrypt(SECRET, *OWNER)
    other = kamus.encrypt(SECRET, *OWNER)
    tampered = mutations(mine, other)
    values = {
        "tag": tampered["last bit flipped"],
        "another service account": kamus.encrypt(OTHER_SECRET, "team-a", "web"),
        "another namespace": kamus.encrypt(OTHER_SECRET, "team-b", "app"),
    }
    if "another value's wrapped key" in tampered:  # e1 only
        values["spliced"] = tampered["another value's wrapped key"]
    answers = {
        (r.status_code, r.content) for r in (kamus.decrypt(v, *OWNER) for v in values.values())
    }
    assert len(answers) == 1, answers
    assert next(iter(answers))[0] == 400
    errors = {item["error"] for item in kamus.decrypt_batch(values, *OWNER).values()}
    assert len(errors) == 1, errors
    assert errors.pop().startswith(undecryptable(*OWNER))


# -- kamus init, the real command against a real decryptor ---------------------------------------


@pytest.fixture
def decryptor_url(make_settings: SettingsFactory, kubeconfig: Path) -> Iterator[str]:
    server = ThreadedServer(create_decryptor(make_settings()), lifespan="on")
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


def init(url: str, token: str, mount: Path, out: Path) -> tuple[int, str]:
    token_file = out.parent / "token"
    token_file.write_text(token)
    env = {"KAMUS_URL": url, "TOKEN_FILE_PATH": str(token_file)}
    result = run_kamus(
        "init", "-e", str(mount), "-d", str(out), "-f", "files", "--timeout", "5", env=env
    )
    return result.returncode, result.stderr


@pytest.mark.parametrize(("before", "after"), WRAPPINGS)
def test_kamus_init_strips_whitespace_around_each_file(
    decryptor_url: str,
    kube_api: KubeApiDouble,
    aes_key: str,
    tmp_path: Path,
    before: str,
    after: str,
) -> None:
    files = {
        "password": before + a1(aes_key, "pa55") + after,
        "legacy": before + cbc(base64.b64decode(aes_key), pkcs7(b"old")) + after,
    }
    mount = configmap_mount(tmp_path / "encrypted", files)
    code, stderr = init(decryptor_url, kube_api.issue_token("team-a", "app"), mount, tmp_path / "o")
    assert code == 0, stderr
    assert (tmp_path / "o" / "password").read_text() == "pa55"
    assert (tmp_path / "o" / "legacy").read_text() == "old"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("garbage!\n", MALFORMED + "this Kamus's AES provider reads only"),
        ("kamus$a1$AAAAAAAA$AAAA\n", MALFORMED + "it names key id 'AAAAAAAA'"),
        ("kamus$zz$x", MALFORMED + "unknown format kamus$zz"),
        (None, "the data cannot be decrypted as team-a:app;"),  # another identity's value
    ],
)
def test_kamus_init_says_what_is_wrong_with_a_file(
    decryptor_url: str,
    kube_api: KubeApiDouble,
    aes_key: str,
    tmp_path: Path,
    content: str | None,
    message: str,
) -> None:
    value = content if content is not None else a1(aes_key, "theirs", "team-a:web") + "\n"
    mount = configmap_mount(tmp_path / "encrypted", {"password": value})
    code, stderr = init(decryptor_url, kube_api.issue_token("team-a", "app"), mount, tmp_path / "o")
    assert code == 1, stderr
    assert f"{mount / 'password'}: {message}" in stderr
    if content is not None:
        assert "cannot be decrypted as" not in stderr
    assert not (tmp_path / "o").exists()


def test_kamus_init_pointed_at_the_encryptor_says_so(
    make_settings: SettingsFactory, aes_key: str, tmp_path: Path
) -> None:
    server = ThreadedServer(create_encryptor(make_settings()))
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        mount = configmap_mount(tmp_path / "encrypted", {"password": a1(aes_key, "pa55")})
        code, stderr = init(url, "a-pod-token", mount, tmp_path / "o")
    finally:
        server.stop()
    assert code == 5, stderr
    assert (
        f"{url} has no Kamus decrypt API (it answered 404 to /api/v1/decrypt): it answers on "
        "/api/v1/encrypt, so it looks like the Kamus encryptor. Check --kamus-url"
    ) in stderr
    assert "a-pod-token" not in stderr


# -- the controller --------------------------------------------------------------------------------


def test_the_controller_strips_whitespace_around_values(cluster: Cluster) -> None:
    cluster.apply(
        "ws-ok",
        "db",
        stringData={"password": cluster.encrypt("pa55", "ws-ok:app") + "\n"},
        data={
            "token": "  " + cluster.encrypt(controller_tests.b64(b"t0ken"), "ws-ok:app") + "\r\n"
        },
    )
    data = eventually(lambda: cluster.data("ws-ok", "db"))
    assert data == {
        "password": controller_tests.b64(b"pa55"),
        "token": controller_tests.b64(b"t0ken"),
    }


def test_the_controller_names_the_key_that_is_no_ciphertext(cluster: Cluster) -> None:
    kid = cluster.keys.active_key_id
    cluster.apply(
        "ws-bad",
        "db",
        stringData={
            "good": cluster.encrypt("fine", "ws-bad:app"),
            "broken": f"kamus$a1${kid}$!!!!\n",
            "theirs": cluster.encrypt("not yours", "ws-bad:web"),
        },
    )
    ready = eventually(lambda: cluster.ready("ws-bad", "db"))
    assert (ready["status"], ready["reason"]) == ("False", "DecryptionFailed")
    assert "stringData.broken is not a Kamus ciphertext (malformed base64url)" in ready["message"]
    assert "cannot decrypt stringData.theirs as ws-bad:app" in ready["message"]
    assert "stringData.good" not in ready["message"]
    event = eventually(
        lambda: [e for e in cluster.kube.events if e["involvedObject"]["namespace"] == "ws-bad"]
    )[0]
    assert (event["type"], event["message"]) == ("Warning", ready["message"])
    assert cluster.secret("ws-bad", "db") is None
