"""The threat model's security cases that no other test showed in full. docs/threat-model.md
maps every case to its tests, here and elsewhere.

Shown here:

* no other identity (another service account of the namespace, the same name in another
  namespace) decrypts a value, through the decryptor's v1 and v2 APIs, for every provider, and a
  batch with one such value fails only that item;
* the ``default`` service account is refused at both ends for every provider, before any KMS call;
* tampered and truncated ciphertexts are a 400 (never a 503 or a 500, never a plaintext), for
  every provider;
* bodies over ``Server__MaxRequestBodyBytes`` are a 413 at both services, declared or streamed;
* a token for another audience is refused when ``Decryptor__Audiences`` is set;
* a token that expires while its TokenReview is cached is refused once expired;
* the TokenReview cache never answers one token's identity for another token;
* the decryptor serves TLS (trustme), and ``kamus init`` verifies it;
* ``kamus seal`` honours a certificate pin as ``kamus encrypt`` does.
"""

import asyncio
import base64
import json
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
import trustme
from click.testing import CliRunner
from fastapi.testclient import TestClient

from crypto import AESKeyManager
from decryptor.app import create_app as create_decryptor
from encryptor.app import create_app as create_encryptor
from kamus.cli.main import main
from kamus.server.kube import create_api_client
from kamus.server.kubeauth.cache import CachingAuthenticator, Lookup
from kamus.server.kubeauth.reviews import TokenReviewAuthenticator
from kamus.server.settings import KubernetesSettings, Settings
from tests.k8s_double import Faults, KubeApiDouble
from tests.support import leaks
from tests.support.apps import (
    MALFORMED,
    OTHERS,
    OWNER,
    Kamus,
    Provider,
    bearer,
    mutations,
    undecryptable,
)
from tests.support.processes import kamus_serve
from tests.support.servers import Encryptor, serve
from tests.support.settings import SettingsFactory, new_key

SECRET = "security-case-s3cr3t"
OTHER_SECRET = "another-identity-s3cr3t"
leaks.register(SECRET, OTHER_SECRET)
# Mutations that keep the shape: only a key can refuse them, with the one message.
WELL_SHAPED = ("last bit flipped", "another value's body", "another value's wrapped key")


def assert_refused(response: httpx.Response, namespace: str, service_account: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith(undecryptable(namespace, service_account))
    assert SECRET not in response.text


def test_no_other_identity_decrypts_for_any_provider(kamus: Kamus) -> None:
    ciphertext = kamus.encrypt(SECRET, *OWNER)
    assert kamus.decrypt(ciphertext, *OWNER).text == SECRET
    for other in OTHERS:
        # Before the other identity has a key of its own (KMS providers create one on its first
        # encrypt), and after: refused either way, with the answer a forgery of the right shape
        # gets (a value that is no ciphertext at all is told so: see MALFORMED).
        assert_refused(kamus.decrypt(ciphertext, *other), *other)
        own = kamus.encrypt(OTHER_SECRET, *other)
        refused = kamus.decrypt(ciphertext, *other)
        assert_refused(refused, *other)
        forged = mutations(ciphertext, own)["last bit flipped"]
        assert refused.json() == kamus.decrypt(forged, *other).json()
        # A v2 batch fails that one item only; the caller's own value still opens.
        items = kamus.decrypt_batch({"own": own, "stolen": ciphertext}, *other)
        assert items["own"] == {"data": OTHER_SECRET}
        assert set(items["stolen"]) == {"error"}
        assert items["stolen"]["error"].startswith(undecryptable(*other))
        # And the other way round: the owner cannot read the other identity's value.
        items = kamus.decrypt_batch({"own": ciphertext, "theirs": own}, *OWNER)
        assert items["own"] == {"data": SECRET}
        assert items["theirs"]["error"].startswith(undecryptable(*OWNER))


def test_default_service_account_is_refused_at_both_ends_for_any_provider(
    kamus: Kamus, provider: Provider
) -> None:
    if provider.double is not None:
        provider.double.requests.clear()
    v1 = {"data": SECRET, "service-account": "default", "namespace": "team-a"}
    assert kamus.encryptor.post("/api/v1/encrypt", json=v1).status_code == 400
    v2 = {"namespace": "team-a", "serviceAccount": "default", "items": {"a": SECRET}}
    v2_answer = kamus.encryptor.post("/api/v2/encrypt", json=v2)
    assert v2_answer.status_code == 400
    assert v2_answer.json()["type"] == "urn:kamus:problem:default-service-account"
    assert provider.kms_requests() == []  # refused before any key is made or used

    ciphertext = kamus.encrypt(SECRET, *OWNER)
    before = provider.kms_requests()
    for path, body in [
        ("/api/v1/decrypt", {"data": ciphertext}),
        ("/api/v2/decrypt", {"items": {"a": ciphertext}}),
    ]:
        refused = kamus.decryptor.post(
            path, json=body, headers=bearer(kamus.token("team-a", "default"))
        )
        assert refused.status_code == 403
        assert "'default' service account" in refused.json()["detail"]
        assert SECRET not in refused.text
    assert provider.kms_requests() == before  # refused before any decryption


def test_tampered_and_truncated_ciphertexts_are_400_for_any_provider(kamus: Kamus) -> None:
    ciphertext = kamus.encrypt(SECRET, *OWNER)
    other = kamus.encrypt(OTHER_SECRET, *OWNER)
    cases = mutations(ciphertext, other)
    assert len(cases) >= 10

    def answers(name: str) -> tuple[str, ...]:
        refused = (undecryptable(*OWNER),)
        return refused if name in WELL_SHAPED else (*refused, MALFORMED)

    for name, tampered in cases.items():
        assert tampered != ciphertext
        response = kamus.decrypt(tampered, *OWNER)
        assert response.status_code == 400, f"{name}: {response.status_code} {response.text}"
        assert response.json()["detail"].startswith(answers(name)), name
        assert SECRET not in response.text
        assert OTHER_SECRET not in response.text
    items = kamus.decrypt_batch({**cases, "intact": ciphertext}, *OWNER)
    assert items.pop("intact") == {"data": SECRET}
    for name, item in items.items():
        assert set(item) == {"error"}, name
        assert item["error"].startswith(answers(name)), name


# -- limits, audiences, expiry and the TokenReview cache (local AES) -------------------------


LIMIT = 1000


@pytest.mark.parametrize("streamed", [False, True], ids=["declared", "chunked"])
@pytest.mark.parametrize(
    ("service", "path"),
    [
        ("encryptor", "/api/v1/encrypt"),
        ("encryptor", "/api/v2/encrypt"),
        ("decryptor", "/api/v1/decrypt"),
        ("decryptor", "/api/v2/decrypt"),
    ],
)
def test_bodies_over_the_limit_are_413_at_both_services(
    service: str,
    path: str,
    streamed: bool,
    make_settings: SettingsFactory,
    kube_api: KubeApiDouble,
    kubeconfig: Path,
) -> None:
    settings = make_settings(Server__MaxRequestBodyBytes=str(LIMIT), Encryptor__RateLimit="off")
    create = create_encryptor if service == "encryptor" else create_decryptor
    headers = {"Content-Type": "application/json"}
    if service == "decryptor":
        headers |= bearer(kube_api.issue_token(*OWNER))

    def body(size: int) -> bytes:
        value = "x" * size
        if path == "/api/v1/encrypt":
            return json.dumps(
                {"data": value, "service-account": "app", "namespace": "team-a"}
            ).encode()
        if path == "/api/v2/encrypt":
            return json.dumps(
                {"namespace": "team-a", "serviceAccount": "app", "items": {"a": value}}
            ).encode()
        if path == "/api/v1/decrypt":
            return json.dumps({"data": value}).encode()
        return json.dumps({"items": {"a": value}}).encode()

    def send(content: bytes) -> httpx.Response:
        if not streamed:
            response: httpx.Response = client.post(path, content=content, headers=headers)
            return response

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for start in range(0, len(content), 300):
                yield content[start : start + 300]

        response = client.post(path, content=chunks(), headers=headers)
        return response

    with TestClient(create(settings)) as client:
        over = send(body(2 * LIMIT))
        assert over.status_code == 413, over.text
        assert "Server__MaxRequestBodyBytes" in over.json()["detail"]
        if path.startswith("/api/v2/"):
            assert over.json()["type"] == "urn:kamus:problem:body-too-large"
        under = send(body(LIMIT // 2))
        assert under.status_code in (200, 400), under.text  # read: "x" is no ciphertext


@pytest.fixture
def audience_bound(
    make_settings: SettingsFactory, kubeconfig: Path, aes_key: str
) -> Iterator[tuple[TestClient, str]]:
    ciphertext = asyncio.run(
        AESKeyManager(base64.b64decode(aes_key)).encrypt(SECRET.encode(), "team-a:app")
    )
    with TestClient(create_decryptor(make_settings(Decryptor__Audiences="kamus"))) as client:
        yield client, ciphertext


@pytest.mark.parametrize(
    "audiences", [["vault"], ["https://kubernetes.default.svc"], ["kamus-other", "vault"]]
)
def test_a_token_for_another_audience_is_refused(
    audience_bound: tuple[TestClient, str], kube_api: KubeApiDouble, audiences: list[str]
) -> None:
    client, ciphertext = audience_bound
    wrong = kube_api.issue_token(*OWNER, audiences=audiences)
    for path, body in [
        ("/api/v1/decrypt", {"data": ciphertext}),
        ("/api/v2/decrypt", {"items": {"a": ciphertext}}),
    ]:
        response = client.post(path, json=body, headers=bearer(wrong))
        assert response.status_code == 401, response.text
        assert SECRET not in response.text
    assert {tuple(r.audiences or ()) for r in kube_api.reviews} == {("kamus",)}
    # The same pod's token for the configured audience is accepted (among others).
    right = kube_api.issue_token(*OWNER, audiences=["vault", "kamus"])
    assert (
        client.post("/api/v1/decrypt", json={"data": ciphertext}, headers=bearer(right)).text
        == SECRET
    )


def test_a_token_that_expires_while_cached_is_refused_once_expired(
    decryptor_client: TestClient, kube_api: KubeApiDouble, aes_key: str
) -> None:
    ciphertext = asyncio.run(
        AESKeyManager(base64.b64decode(aes_key)).encrypt(SECRET.encode(), "team-a:app")
    )
    token = kube_api.issue_token(*OWNER, expires_in=2)
    expiry = jwt.decode(token, options={"verify_signature": False})["exp"]
    body = {"data": ciphertext}
    assert decryptor_client.post("/api/v1/decrypt", json=body, headers=bearer(token)).text == SECRET
    # Cached for Decryptor__TokenReviewCacheSeconds (10 s) at most, and never past exp.
    time.sleep(max(0.0, expiry - time.time()) + 0.3)
    expired = decryptor_client.post("/api/v1/decrypt", json=body, headers=bearer(token))
    assert expired.status_code == 401
    assert SECRET not in expired.text
    assert [r.authenticated for r in kube_api.reviews] == [True, False]


def splice(token: str, *, payload_of: str | None = None, signature_of: str | None = None) -> str:
    header, payload, signature = token.split(".")
    if payload_of is not None:
        payload = payload_of.split(".")[1]
    if signature_of is not None:
        signature = signature_of.split(".")[2]
    return f"{header}.{payload}.{signature}"


def test_the_token_review_cache_never_answers_for_another_token(
    decryptor_client: TestClient, kube_api: KubeApiDouble, aes_key: str
) -> None:
    keys = AESKeyManager(base64.b64decode(aes_key))
    app_value = asyncio.run(keys.encrypt(SECRET.encode(), "team-a:app"))
    web_value = asyncio.run(keys.encrypt(OTHER_SECRET.encode(), "team-a:web"))
    app_token = kube_api.issue_token("team-a", "app")
    web_token = kube_api.issue_token("team-a", "web")

    def decrypt(value: str, token: str) -> httpx.Response:
        response: httpx.Response = decryptor_client.post(
            "/api/v1/decrypt", json={"data": value}, headers=bearer(token)
        )
        return response

    assert decrypt(app_value, app_token).text == SECRET  # app's identity is now cached
    # web's token gets web's identity, not the cached one: app's value stays closed to it.
    assert_refused(decrypt(app_value, web_token), "team-a", "web")
    assert decrypt(web_value, web_token).text == OTHER_SECRET
    # Tokens made of a cached token's parts are tokens of their own: reviewed, and refused.
    for forged in [
        splice(app_token, signature_of=web_token),
        splice(web_token, payload_of=app_token),
        kube_api.forge_token("team-a", "app"),
        app_token + "x",
    ]:
        leaks.register_token(forged)
        refused = decrypt(app_value, forged)
        assert refused.status_code == 401, refused.text
    reviews = [(r.authenticated, r.username) for r in kube_api.reviews]
    assert reviews == [
        (True, "system:serviceaccount:team-a:app"),
        (True, "system:serviceaccount:team-a:web"),
        *[(False, None)] * 4,
    ]
    metrics = decryptor_client.get("/metrics").text
    assert 'kamus_token_review_cache_total{result="hit"} 1.0' in metrics


async def test_concurrent_reviews_of_different_tokens_are_never_shared(
    kube_api: KubeApiDouble, kubeconfig: Path, make_settings: SettingsFactory, aes_key: str
) -> None:
    """While a TokenReview is in flight (single flight: other requests with the *same* token wait
    for it), requests with other tokens get reviews, and identities, of their own."""
    keys = AESKeyManager(base64.b64decode(aes_key))
    names = [f"sa-{n}" for n in range(6)]
    values = {
        name: await keys.encrypt(f"{SECRET}-{name}".encode(), f"team-a:{name}") for name in names
    }
    tokens = {name: kube_api.issue_token("team-a", name) for name in names}
    reviews = TokenReviewAuthenticator(await create_api_client(KubernetesSettings()))
    lookups: Counter[Lookup] = Counter()
    cache = CachingAuthenticator(
        reviews, ttl_seconds=10, max_entries=100, observe=lambda r: lookups.update([r])
    )
    app = create_decryptor(make_settings(), authenticator=cache)
    # Slow reviews: every request arrives while the reviews are still in flight.
    kube_api.faults = Faults(delay_seconds=0.5)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://decryptor") as client:

            async def decrypt(value_of: str, token_of: str) -> httpx.Response:
                return await client.post(
                    "/api/v1/decrypt",
                    json={"data": values[value_of]},
                    headers=bearer(tokens[token_of]),
                )

            # Each token twice (shared reviews), each asking for its own value and for another's.
            calls = [(name, name) for name in names] * 2
            calls += [(names[(i + 1) % len(names)], name) for i, name in enumerate(names)]
            answers = await asyncio.gather(*(decrypt(value, token) for value, token in calls))
    finally:
        kube_api.faults = Faults()
        await cache.close()
    for (value, token), answer in zip(calls, answers, strict=True):
        if value == token:
            assert answer.text == f"{SECRET}-{token}"
        else:
            assert_refused(answer, "team-a", token)
    # One review per token, which its other two requests waited for (they overlapped).
    assert sorted(r.username or "" for r in kube_api.reviews) == [
        f"system:serviceaccount:team-a:{name}" for name in names
    ]
    assert lookups == {"miss": len(names), "coalesced": 2 * len(names)}


# -- the rate limit behind a proxy -----------------------------------------------------------


def test_a_client_cannot_escape_the_rate_limit_with_its_own_forwarded_header_line(
    make_settings: SettingsFactory,
) -> None:
    env = {"Encryptor__RateLimit": "1/minute", "Encryptor__TrustedProxies": "10.0.0.0/8"}
    body = {"data": SECRET, "service-account": "app", "namespace": "team-a"}
    app = create_encryptor(make_settings(**env))
    with TestClient(app, client=("10.1.2.3", 40000)) as ingress:
        statuses = []
        for n in range(3):
            # The client's own (forged) line first; the proxy's line, naming the real client,
            # after it: one header field, per RFC 9110 section 5.3, whose last hop counts.
            headers = [("X-Forwarded-For", f"203.0.113.{n}"), ("X-Forwarded-For", "198.51.100.1")]
            statuses.append(ingress.post("/api/v1/encrypt", json=body, headers=headers).status_code)
    assert statuses == [200, 429, 429]


# -- TLS and pinning --------------------------------------------------------------------------


def test_the_decryptor_serves_tls_and_kamus_init_verifies_it(
    kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "kamus-decryptor.kamus.svc")
    server.cert_chain_pems[0].write_to_path(tmp_path / "tls.crt")
    server.private_key_pem.write_to_path(tmp_path / "tls.key")
    ca.cert_pem.write_to_path(tmp_path / "ca.crt")
    key = new_key()
    env = {
        "KeyManagement__AES__Key": key,
        "KUBECONFIG": str(kube_api.write_kubeconfig(tmp_path / "kubeconfig")),
        "Server__TlsCertFile": str(tmp_path / "tls.crt"),
        "Server__TlsKeyFile": str(tmp_path / "tls.key"),
    }
    ciphertext = asyncio.run(
        AESKeyManager(base64.b64decode(key)).encrypt(SECRET.encode(), "team-a:app")
    )
    token = kube_api.issue_token(*OWNER)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    with kamus_serve("decryptor", env, tmp_path / "log", verify=trusting) as decryptor:
        assert decryptor.url.startswith("https://")
        answer = httpx.post(
            f"{decryptor.url}/api/v1/decrypt",
            json={"data": ciphertext},
            headers=bearer(token),
            verify=trusting,
        )
        assert answer.text == SECRET
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{decryptor.url}/healthz")  # the system CAs do not know this one
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(decryptor.url.replace("https://", "http://") + "/healthz")

        encrypted = tmp_path / "encrypted"
        encrypted.mkdir()
        (encrypted / "password").write_text(ciphertext)
        (tmp_path / "token").write_text(token)

        def init(output: Path, *extra: str) -> int:
            args = [
                "init",
                "-e",
                str(encrypted),
                "-d",
                str(output),
                "-f",
                "files",
                "--timeout",
                "0",
            ]
            env = {"KAMUS_URL": decryptor.url, "TOKEN_FILE_PATH": str(tmp_path / "token")}
            return CliRunner().invoke(main, [*args, *extra], env=env).exit_code

        assert init(tmp_path / "trusted", "--ca-bundle", str(tmp_path / "ca.crt")) == 0
        assert (tmp_path / "trusted" / "password").read_text() == SECRET
        assert init(tmp_path / "untrusted") != 0  # the system CAs: refused, nothing written
        assert not (tmp_path / "untrusted" / "password").exists()


@pytest.fixture
def https_encryptor(tmp_path: Path) -> Iterator[Encryptor]:
    settings = Settings()
    app = create_encryptor(settings, key_manager=AESKeyManager(b"k" * 32))
    yield from serve(app, tmp_path, tls=True)


def test_kamus_seal_with_a_wrong_pin_sends_nothing(https_encryptor: Encryptor) -> None:
    manifest = (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData: {password: "
        + SECRET
        + "}\n"
    )
    wrong = ":".join(["AB"] * 32)
    args = ["seal", "-a", "app", "-n", "team-a", "-u", https_encryptor.url]
    args += ["--ca-bundle", str(https_encryptor.ca_file), "--cert-fingerprint", wrong]
    result = CliRunner().invoke(main, args, input=manifest)
    assert result.exit_code == 4, result.output
    assert "nothing was sent" in result.stderr
    assert SECRET not in result.output
    assert https_encryptor.counter.requests == 0
