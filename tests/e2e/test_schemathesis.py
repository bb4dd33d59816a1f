"""Schemathesis against both services' OpenAPI: no 5xx, and every answer is the one documented.

Every operation of the encryptor and of the decryptor goes through schemathesis' three phases
(the schema's examples; coverage cases: missing fields, wrong types, unexpected methods; then
hypothesis fuzzing with valid and invalid bodies) in-process over ASGI, and a fuzzing round over
loopback against real ``kamus serve`` processes. Each response passes every built-in check
schemathesis enables by default: not a server error, status code documented, Content-Type
documented, body and headers matching the schema, invalid data rejected, authentication enforced,
unsupported methods answered 405 with ``Allow``. One is off: ``positive_data_acceptance`` (see
``_config``). Two checks of our own add what the schema does not say (``kamus_errors``,
``batch_answers``): docs/errors.md's error bodies and headers, and a batch answer per item.

Generated strings are almost never Kubernetes names or ciphertexts, so hooks put real ones into
some bodies: the success paths answer 200, not only 400. The encryptor runs without and with
``Encryptor__Authentication=kubernetes`` (a user RBAC allows, no token, garbage, a user it does
not), and once with the default rate limit (429s). The decryptor gets a pod's token, then other
callers (none, garbage, forged, a user, the ``default`` service account), then an apiserver that
fails (503s).

The defects it found (fixed) are kept as regression tests at the end of the file.
"""

import asyncio
import base64
import copy
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeAlias, TypeVar, cast
from unittest import mock

import pytest
import schemathesis
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    status_code_conformance,
)
from starlette.types import ASGIApp, Receive, Scope, Send

from crypto import AESKeyManager
from decryptor.app import create_app as create_decryptor
from encryptor.app import create_app as create_encryptor
from kamus.server.settings import Settings
from kamus.server.web.problems import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_PREFIX, PROBLEMS
from tests.k8s_double import Faults, KubeApiDouble
from tests.support.processes import kamus_serve
from tests.support.settings import SETTING_PREFIXES, SettingsFactory, new_key

# -- the schemas under test --------------------------------------------------------------------


def _openapi(create_app: Callable[[Settings], FastAPI]) -> dict[str, Any]:
    """The document a service serves at /openapi.json (test_the_tested_schemas_are_served).

    Built at collection, when the environment is still the developer's, so from a clean one; no
    setting shapes the document.
    """
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith(SETTING_PREFIXES)}
    with mock.patch.dict(os.environ, {**env, "KeyManagement__AES__Key": new_key()}, clear=True):
        return create_app(Settings()).openapi()


class AppUnderTest:
    """The ASGI app a schema sends its cases to: it hands each to the app the running test built.

    Schemathesis runs that app's lifespan on the first request (the decryptor builds its
    Kubernetes client there) and keeps it up until ``shutdown_lifespans()``, which ``serving``
    calls when the test is over.
    """

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:
            raise RuntimeError("no app under test: request the fixture that serves one")
        await self.app(scope, receive, send)

    @contextmanager
    def serving(self, app: ASGIApp) -> Iterator[None]:
        self.app = app
        try:
            yield
        finally:
            try:
                shutdown_lifespans()
            finally:
                self.app = None


def _config() -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "checks": {
                # A schema-valid body is not a good one by design: names must be Kubernetes
                # names, a ciphertext must decrypt for the caller, and JSON Schema says neither.
                "positive_data_acceptance": {"enabled": False},
                # An invalid body over the size limit is rejected too, before it is read.
                "negative_data_rejection": {
                    "expected-statuses": [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"]
                },
            },
            "operations": [
                {
                    # A known defect, pinned by test_metrics_content_type_is_documented.
                    "include-path": "/metrics",
                    "checks": {"content_type_conformance": {"enabled": False}},
                }
            ],
        }
    )


def _load(document: dict[str, Any], app: AppUnderTest) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_dict(document, config=_config())
    schema.app = app  # as from_asgi does: cases go to the app in-process
    return schema


def _token_optional(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with each security requirement made optional (``{}`` added): what the
    encryptor's should say with Encryptor__Authentication=none, its default, which takes no
    token (test_encryptor_token_is_optional_without_authentication)."""
    document = copy.deepcopy(document)
    for operations in document["paths"].values():
        for operation in operations.values():
            if operation.get("security") and {} not in operation["security"]:
                operation["security"] = [{}, *operation["security"]]
    return document


Case: TypeAlias = schemathesis.Case[Any]
Test = TypeVar("Test", bound=Callable[..., None])


def each_operation(schema: schemathesis.BaseSchema) -> Callable[[Test], Test]:
    """``schema.parametrize()``, typed: a test for each operation, with its cases."""
    return cast(Callable[[Test], Test], schema.parametrize())


ENCRYPTOR = AppUnderTest()
DECRYPTOR = AppUnderTest()
ENCRYPTOR_OPENAPI = _openapi(create_encryptor)
DECRYPTOR_OPENAPI = _openapi(create_decryptor)
encryptor_schema = _load(ENCRYPTOR_OPENAPI, ENCRYPTOR)  # as served: a token is required
open_encryptor_schema = _load(_token_optional(ENCRYPTOR_OPENAPI), ENCRYPTOR)
decryptor_schema = _load(DECRYPTOR_OPENAPI, DECRYPTOR)

FUZZ = settings(
    max_examples=50,
    deadline=None,
    # Each operation's app is built once for all its examples, on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- what the schemas do not say -----------------------------------------------------------------


def _header(response: schemathesis.Response, name: str) -> str | None:
    values = response.headers.get(name.lower())
    return values[0] if values else None


def kamus_errors(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case
) -> bool | None:
    """docs/errors.md: v2 errors are problem details of a known kind, v1 errors Kamus's
    ``{"detail": ...}``; a 401 says ``WWW-Authenticate: Bearer``, a 429 or 503 ``Retry-After``."""
    status = response.status_code
    if status < 400:
        return None
    body = response.json()
    if case.path.startswith("/api/v2/"):
        assert _header(response, "content-type") == PROBLEM_MEDIA_TYPE
        assert set(body) == {"type", "title", "status", "detail"}, body
        assert str(body["type"]).startswith(PROBLEM_TYPE_PREFIX), body["type"]
        kind = body["type"].removeprefix(PROBLEM_TYPE_PREFIX)
        assert kind in PROBLEMS, body["type"]
        assert body["title"] == PROBLEMS[kind]
        assert body["status"] == status
    else:
        assert _header(response, "content-type") == "application/json"
        assert isinstance(body, dict), body
        assert set(body) == {"detail"}, body
    assert isinstance(body["detail"], str), body
    assert body["detail"], body
    if status == 401:
        assert _header(response, "www-authenticate") == "Bearer"
    if status in (429, 503):
        assert (_header(response, "retry-after") or "").isdigit(), response.headers
    return True


def batch_answers(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case
) -> bool | None:
    """A v2 batch answers every item under the name it was sent with, and nothing else."""
    if case.method != "POST" or not case.path.startswith("/api/v2/") or response.status_code != 200:
        return None
    sent = response.request.body
    assert isinstance(sent, bytes | str), "a 200 for a request without a body"
    names = set(json.loads(sent)["items"])
    answered = response.json()["items"]
    assert set(answered) == names, f"sent {sorted(names)!r}, answered {sorted(answered)!r}"
    for item in answered.values():
        assert set(item) in ({"data"}, {"error"}), item
    return True


def unavailable_not_failed(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case
) -> bool | None:
    """With a dependency down, the one 5xx allowed: 503 (with Retry-After, see kamus_errors)."""
    assert response.status_code < 500 or response.status_code == 503, response.status_code
    return True


CHECKS: list[schemathesis.CheckFunction] = [kamus_errors, batch_answers]

# -- steering generation where the services answer 200 -----------------------------------------
#
# Random strings are almost never Kubernetes names or ciphertexts, so the success paths would
# hardly be reached. These hooks put real ones into some generated bodies, and leave the rest as
# generated (invalid or not).

NAMES = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?\Z")
SECRETS = st.text(max_size=40)
# Refused: the ``default`` service account; a lone surrogate (JSON can escape one, UTF-8 cannot
# hold it); a secret over the body limit of the encryptor fixtures (413).
ODD_SERVICE_ACCOUNTS = st.one_of(NAMES, st.just("default"))
ODD_SECRETS = st.one_of(SECRETS, st.just(chr(0xD800)), st.just("s" * 5000))


def _steer(body: Any, fields: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[Any]:
    """``body`` with its string ``fields`` drawn anew, and its ``items``, if all strings, replaced
    by one to three drawn from ``fields["items"]``. What is not a string stays as generated, so a
    body that breaks the schema still does."""
    if not isinstance(body, dict):
        return st.just(body)
    drawn: dict[str, st.SearchStrategy[Any]] = {}
    for name, values in fields.items():
        value = body.get(name)
        if name == "items" and isinstance(value, dict):
            if all(isinstance(v, str) for v in value.values()):
                drawn[name] = st.dictionaries(st.text(max_size=12), values, min_size=1, max_size=3)
        elif isinstance(value, str):
            drawn[name] = values
    return st.fixed_dictionaries(drawn).map(lambda new: {**body, **new})


def _valid_names(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """A quarter of the bodies as generated, half with names that encrypt, a quarter refused."""
    good = {"namespace": NAMES, "service-account": NAMES, "serviceAccount": NAMES}
    odd = {"service-account": ODD_SERVICE_ACCOUNTS, "serviceAccount": ODD_SERVICE_ACCOUNTS}
    encrypts = _steer(body, {**good, "data": SECRETS, "items": SECRETS})
    refused = _steer(body, {**good, **odd, "data": ODD_SECRETS, "items": ODD_SECRETS})
    return st.one_of(st.just(body), encrypts, encrypts, refused)


# Real ciphertexts for the decryptor's bodies, made by the decryptor fixture.
CIPHERTEXTS: list[str] = []


def _real_ciphertexts(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """A third of the bodies as generated, the rest with real ciphertexts to decrypt."""
    ciphertexts = st.sampled_from(CIPHERTEXTS) if CIPHERTEXTS else st.nothing()
    real = _steer(body, {"data": ciphertexts, "items": ciphertexts})
    return st.one_of(st.just(body), real, real)


encryptor_schema.hook("flatmap_body")(_valid_names)
open_encryptor_schema.hook("flatmap_body")(_valid_names)
decryptor_schema.hook("flatmap_body")(_real_ciphertexts)


def _legacy_kamus_ciphertext(key: bytes, plaintext: bytes) -> str:
    """What Kamus's AES provider wrote: b64(iv):b64(AES-CBC-PKCS7), under the master key."""
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    cbc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = cbc.update(padder.update(plaintext) + padder.finalize()) + cbc.finalize()
    return f"{base64.b64encode(iv).decode()}:{base64.b64encode(body).decode()}"


async def _ciphertexts(key: str) -> list[str]:
    """For team-a:app (which the tests call as): values that open, including an empty one and
    one that is not UTF-8; values for other identities; tampered ones; and one Kamus wrote."""
    master = base64.b64decode(key)
    keys = AESKeyManager(master)
    plaintexts = (b"s3cr3t", b"", "p\u00e4ss \u2713\nline 2".encode(), b"\xff\xfe\x00binary")
    mine = [await keys.encrypt(plaintext, "team-a:app") for plaintext in plaintexts]
    others = [
        await keys.encrypt(b"s3cr3t", identity)
        for identity in ("team-a:web", "team-b:app", "team-a:default")
    ]
    last = mine[0][-1]
    tampered = [mine[0][:-1] + ("A" if last != "A" else "B"), mine[0][:-8]]
    return [*mine, *others, *tampered, _legacy_kamus_ciphertext(master, b"written by kamus")]


@contextmanager
def ciphertexts_for(key: str) -> Iterator[None]:
    CIPHERTEXTS[:] = asyncio.run(_ciphertexts(key))
    try:
        yield
    finally:
        CIPHERTEXTS.clear()


Headers: TypeAlias = dict[str, str]


def _bearer(token: str) -> Headers:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def anonymous() -> list[Headers]:
    """Callers who prove nothing: no token, or one that is not a token."""
    return [{}, _bearer("not-a-token")]


@pytest.fixture
def pod(kube_api: KubeApiDouble) -> Headers:
    """A pod running as team-a:app, which the decryptor fixture's ciphertexts are for."""
    return _bearer(kube_api.issue_token("team-a", "app"))


# -- the encryptor -------------------------------------------------------------------------------

SMALL_LIMITS = {"Server__MaxBatchItems": "3", "Server__MaxRequestBodyBytes": "4096"}


@pytest.fixture
def encryptor(make_settings: SettingsFactory) -> Iterator[FastAPI]:
    """No rate limit, and limits low enough for the generated bodies to reach the 413s."""
    app = create_encryptor(make_settings(Encryptor__RateLimit="off", **SMALL_LIMITS))
    with ENCRYPTOR.serving(app):
        yield app


# Without authentication, the encryptor is tested against the schema its OpenAPI should have:
# one where the token is optional (see _token_optional).
@each_operation(open_encryptor_schema)
@FUZZ
def test_encryptor(case: Case, encryptor: FastAPI) -> None:
    case.call_and_validate(additional_checks=CHECKS)


@pytest.fixture
def rate_limited_encryptor(make_settings: SettingsFactory) -> Iterator[FastAPI]:
    """The default rate limit (20/second), which the cases soon go over: 429s."""
    with ENCRYPTOR.serving(app := create_encryptor(make_settings())):
        yield app


# Not include(method="POST"): the "operations" block of _config makes it include everything.
@each_operation(open_encryptor_schema.exclude(method="GET"))
@settings(FUZZ, max_examples=25)
def test_encryptor_rate_limited(case: Case, rate_limited_encryptor: FastAPI) -> None:
    case.call_and_validate(additional_checks=CHECKS)


@pytest.fixture
def authenticating_encryptor(
    make_settings: SettingsFactory, kubeconfig: Path, kube_api: KubeApiDouble
) -> Iterator[FastAPI]:
    """Encryptor__Authentication=kubernetes, where RBAC lets jane encrypt in every namespace."""
    kube_api.grant("jane@example.com", group="soluto.com", resource="kamussecrets", verb="create")
    settings = make_settings(
        Encryptor__Authentication="kubernetes", Encryptor__RateLimit="off", **SMALL_LIMITS
    )
    with ENCRYPTOR.serving(app := create_encryptor(settings)):
        yield app


@pytest.fixture
def users(kube_api: KubeApiDouble, anonymous: list[Headers]) -> list[Headers]:
    """jane, whom RBAC lets encrypt; 401: no token, garbage; 403: bob, whom RBAC does not let."""
    return [
        _bearer(kube_api.issue_user_token("jane@example.com")),
        *anonymous,
        _bearer(kube_api.issue_user_token("bob@example.com")),
    ]


@each_operation(encryptor_schema)
@settings(FUZZ, max_examples=30)
def test_encryptor_authenticating(
    case: Case, authenticating_encryptor: FastAPI, users: list[Headers]
) -> None:
    for headers in users:
        case.call_and_validate(headers=headers, additional_checks=CHECKS)


# -- the decryptor -------------------------------------------------------------------------------


@pytest.fixture
def decryptor(make_settings: SettingsFactory, kubeconfig: Path, aes_key: str) -> Iterator[FastAPI]:
    # Not SMALL_LIMITS' body limit: the 413 of v1 is undocumented (test_v1_decrypt_413_...).
    app = create_decryptor(make_settings(Server__MaxBatchItems="3"))
    with ciphertexts_for(aes_key), DECRYPTOR.serving(app):
        yield app


@each_operation(decryptor_schema)
@FUZZ
def test_decryptor(case: Case, decryptor: FastAPI, pod: Headers) -> None:
    case.call_and_validate(headers=pod, additional_checks=CHECKS)


@pytest.fixture
def not_pods(kube_api: KubeApiDouble, anonymous: list[Headers]) -> list[Headers]:
    """401: no token, garbage, a forged one; 403: a user's, the ``default`` service account's."""
    return [
        *anonymous,
        _bearer(kube_api.forge_token("team-a", "app")),
        _bearer(kube_api.issue_user_token("jane@example.com")),
        _bearer(kube_api.issue_token("team-a", "default")),
    ]


@each_operation(decryptor_schema)
@settings(FUZZ, max_examples=8)
def test_decryptor_other_callers(case: Case, decryptor: FastAPI, not_pods: list[Headers]) -> None:
    for headers in not_pods:
        case.call_and_validate(headers=headers, additional_checks=CHECKS)


@pytest.fixture
def apiserver_failing(decryptor: FastAPI, kube_api: KubeApiDouble, pod: Headers) -> None:
    """The apiserver answers 500 to everything, and the decryptor has seen it fail once."""
    kube_api.faults = Faults(fail_status=500)
    case = decryptor_schema["/api/v1/decrypt"]["POST"].Case(body={"data": "any"})
    assert case.call(headers=pod).status_code == 503


# Without the health checks, whose 503s are undocumented: test_health_503_is_documented.
@each_operation(decryptor_schema.exclude(path=["/api/v1/isAlive", "/readyz"]))
@settings(FUZZ, max_examples=10)
def test_decryptor_kubernetes_failing(case: Case, apiserver_failing: None, pod: Headers) -> None:
    """503 with Retry-After for every call that needs a TokenReview, still as documented."""
    checks: list[schemathesis.CheckFunction] = [*CHECKS, unavailable_not_failed]
    case.call_and_validate(
        headers=pod,
        additional_checks=checks,
        excluded_checks=[not_a_server_error],
    )


# -- real processes over loopback ----------------------------------------------------------------


def test_real_processes(kube_api: KubeApiDouble, tmp_path: Path) -> None:
    """Both services as ``kamus serve`` processes, fuzzed through the real uvicorn stack against
    the schemas they serve; the encryptor with authentication on, the contract its schema says."""
    key = new_key()
    kube_api.grant("jane@example.com", group="soluto.com", resource="kamussecrets", verb="create")
    env = {
        "KeyManagement__AES__Key": key,
        "KUBECONFIG": str(kube_api.write_kubeconfig(tmp_path / "kubeconfig")),
    }
    authenticating = {"Encryptor__Authentication": "kubernetes", "Encryptor__RateLimit": "off"}
    with (
        kamus_serve(
            "encryptor", {**env, **authenticating}, tmp_path / "encryptor.log"
        ) as encryptor,
        kamus_serve("decryptor", env, tmp_path / "decryptor.log") as decryptor,
        ciphertexts_for(key),
    ):
        for url, token, steer in [
            (encryptor.url, kube_api.issue_user_token("jane@example.com"), _valid_names),
            (decryptor.url, kube_api.issue_token("team-a", "app"), _real_ciphertexts),
        ]:
            schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=_config())
            schema.hook("flatmap_body")(steer)
            cases = st.one_of(
                schema.as_strategy(schemathesis.GenerationMode.POSITIVE),
                schema.as_strategy(schemathesis.GenerationMode.NEGATIVE),
            )
            headers = _bearer(token)

            @given(case=cases)
            @settings(FUZZ, max_examples=60)
            def fuzz(case: Case) -> None:
                case.call_and_validate(headers=headers, additional_checks=CHECKS)  # noqa: B023

            fuzz()


def test_the_tested_schemas_are_served(make_settings: SettingsFactory) -> None:
    """What schemathesis tests in-process is what the services serve (by default)."""
    for create_app, document in [
        (create_encryptor, ENCRYPTOR_OPENAPI),
        (create_decryptor, DECRYPTOR_OPENAPI),
    ]:
        served = TestClient(create_app(make_settings())).get("/openapi.json")  # no lifespan
        assert served.json() == document


# -- defects schemathesis found, fixed: kept as regression tests ---------------------------------


def test_encryptor_token_is_optional_without_authentication(encryptor: FastAPI) -> None:
    body: dict[str, Any] = {"data": "s3cr3t", "service-account": "app", "namespace": "team-a"}
    case = encryptor_schema["/api/v1/encrypt"]["POST"].Case(body=body)
    case.call_and_validate(checks=[ignored_auth])


def test_metrics_content_type_is_documented(encryptor: FastAPI) -> None:
    case = encryptor_schema["/metrics"]["GET"].Case()
    case.call_and_validate(checks=[content_type_conformance])


def test_v1_decrypt_413_is_documented(
    make_settings: SettingsFactory, kubeconfig: Path, kube_api: KubeApiDouble
) -> None:
    with DECRYPTOR.serving(create_decryptor(make_settings(Server__MaxRequestBodyBytes="64"))):
        case = decryptor_schema["/api/v1/decrypt"]["POST"].Case(body={"data": "x" * 100})
        token = kube_api.issue_token("team-a", "app")
        case.call_and_validate(headers=_bearer(token), checks=[status_code_conformance])


@pytest.mark.parametrize("path", ["/readyz", "/api/v1/isAlive"])
def test_health_503_is_documented(path: str, apiserver_failing: None) -> None:
    case = decryptor_schema[path]["GET"].Case()
    case.call_and_validate(checks=[status_code_conformance])


def test_batch_item_names_come_back(encryptor: FastAPI) -> None:
    # Lone surrogates (JSON escapes them: "\\ud800"), not as literals, which tools mangle.
    items: dict[str, Any] = {chr(0xD800): "a", chr(0xDFFF): "b"}
    body: dict[str, Any] = {"namespace": "team-a", "serviceAccount": "app", "items": items}
    case = encryptor_schema["/api/v2/encrypt"]["POST"].Case(body=body)
    case.call_and_validate(checks=[batch_answers])
