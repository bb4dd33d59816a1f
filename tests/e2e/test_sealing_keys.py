"""The encryptor as the chart runs it: a public key bundle in a file, no master key, no way to
decrypt. Real ``kamus serve`` processes; the decryptor holds the master key."""

import base64
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from crypto import bundle
from crypto.sealing import Schedule
from tests.k8s_double import KubeApiDouble
from tests.support.cluster import eventually
from tests.support.processes import Service, decrypt, kamus_serve
from tests.support.settings import new_key

SECRET = "sealed-to-a-public-key"
StartDecryptor = Callable[..., Service]


def export(*keys: str) -> str:
    masters = [base64.b64decode(k) for k in keys]
    return bundle.from_masters(masters, now=datetime.now(UTC), schedule=Schedule())


def encrypt(encryptor: Service, data: str = SECRET) -> httpx.Response:
    body = {"data": data, "service-account": "app", "namespace": "team-a"}
    return httpx.post(f"{encryptor.url}/api/v1/encrypt", json=body, timeout=10)


@pytest.fixture
def decryptor_for(kube_api: KubeApiDouble, tmp_path: Path) -> Iterator[StartDecryptor]:
    """A decryptor process holding ``key`` (and ``previous``): started on demand."""

    def start(key: str, previous: str = "") -> Service:
        env = {
            "KeyManagement__AES__Key": key,
            "KUBECONFIG": str(kube_api.write_kubeconfig(tmp_path / "kubeconfig")),
            **({"KeyManagement__AES__PreviousKeys": previous} if previous else {}),
        }
        return stack.enter_context(kamus_serve("decryptor", env, tmp_path / "decryptor.log"))

    with ExitStack() as stack:
        yield start


def test_an_encryptor_with_only_the_bundle_encrypts_and_the_decryptor_opens(
    kube_api: KubeApiDouble, tmp_path: Path, decryptor_for: StartDecryptor
) -> None:
    key = new_key()
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(export(key))
    env = {"Encryptor__SealingKeysFile": str(keys_file)}  # and no key of any kind
    with kamus_serve("encryptor", env, tmp_path / "encryptor.log", ready_path="/readyz") as enc:
        sealed = encrypt(enc)
        assert sealed.status_code == 200
        assert sealed.text.startswith("kamus$m1$")
        served = httpx.get(f"{enc.url}/api/v2/keys", timeout=10)
        assert served.text == keys_file.read_text()
        assert bundle.load(served.text).anchor == bundle.load(keys_file.read_text()).anchor
    decryptor = decryptor_for(key)
    token = kube_api.issue_token("team-a", "app")
    assert decrypt(decryptor.url, sealed.text, token).text == SECRET
    assert (
        decrypt(decryptor.url, sealed.text, kube_api.issue_token("team-a", "web")).status_code
        == 400
    )
    log = (tmp_path / "encryptor.log").read_text()
    assert "holds the AES master key" not in log


def test_not_ready_without_a_bundle_then_a_renewed_bundle_is_used_without_a_restart(
    kube_api: KubeApiDouble, tmp_path: Path, decryptor_for: StartDecryptor
) -> None:
    old, new = new_key(), new_key()
    keys_file = tmp_path / "keys.json"
    env = {"Encryptor__SealingKeysFile": str(keys_file)}
    with kamus_serve("encryptor", env, tmp_path / "encryptor.log") as enc:
        # No bundle yet (the decryptor has not published it): alive, not ready, and a 503.
        assert httpx.get(f"{enc.url}/readyz", timeout=10).status_code == 503
        refused = encrypt(enc)
        assert refused.status_code == 503
        assert "Retry-After" in refused.headers

        keys_file.write_text(export(old))
        eventually(lambda: httpx.get(f"{enc.url}/readyz", timeout=10).status_code == 200, 10)
        before = encrypt(enc).text

        # The master key rotates: the new bundle (with its link) replaces the file in place.
        time.sleep(0.05)
        keys_file.write_text(export(new, old))
        kid_of_new = bundle.load(keys_file.read_text()).sealing_key(datetime.now(UTC)).kid

        def uses_new_key() -> bool:
            return (
                kid_of_new
                in base64.urlsafe_b64decode(encrypt(enc).text.split("$")[2] + "==").decode()
            )

        eventually(uses_new_key, 10)
        after = encrypt(enc).text

        # A broken file keeps the last good bundle in use, and says so in the log.
        keys_file.write_text("{ not a bundle")
        time.sleep(2.5)
        assert encrypt(enc).status_code == 200
        assert httpx.get(f"{enc.url}/readyz", timeout=10).status_code == 200
    assert "sealing key bundle not usable" in (tmp_path / "encryptor.log").read_text()

    # The decryptor with the rotated master opens values of both generations of keys.
    decryptor = decryptor_for(new, old)
    token = kube_api.issue_token("team-a", "app")
    assert decrypt(decryptor.url, before, token).text == SECRET
    assert decrypt(decryptor.url, after, token).text == SECRET
