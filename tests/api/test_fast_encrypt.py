"""encryptor/fast.py answers ``POST /api/v1/encrypt`` without the framework. The same requests,
sent to the app with it and to the app without it, get the same answers, audit lines and
metrics; and it does answer the requests it is for (a test of equal answers alone would also
pass if it never did)."""

import asyncio
import base64
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Message

from crypto.aes import AESKeyManager
from encryptor.app import create_app
from encryptor.fast import FastEncrypt
from kamus.server.settings import Settings
from kamus.server.web.app import KamusApp
from tests.support import leaks
from tests.support.settings import SettingsFactory

MAX_BODY = 600  # small, so that generated bodies cross it
PATHS = ["/api/v1/encrypt", "/encrypt"]
SECRET = "fast-path-s3cr3t"
leaks.register(SECRET)
VALID = {"data": SECRET, "service-account": "app", "namespace": "team-a"}


def has_fast_path(app: KamusApp) -> bool:
    return isinstance(app.build_middleware_stack(), FastEncrypt)


def without_fast_path(app: KamusApp) -> KamusApp:
    app.outer_middleware.clear()
    assert not has_fast_path(app)
    return app


@contextmanager
def audit_lines() -> Iterator[list[dict[str, Any]]]:
    """The audit fields of each line written meanwhile (a handler, not caplog: hypothesis runs
    many examples in one test)."""
    lines: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(dict(getattr(record, "kamus_fields", {})))

    handler = Collect()
    logger = logging.getLogger("kamus.audit")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@dataclass(frozen=True)
class Request:
    path: str
    body: bytes
    content_type: str | None
    method: str = "POST"


@dataclass
class Outcome:
    status: int
    headers: dict[str, str]
    body: bytes
    audit: list[dict[str, Any]]
    metrics: dict[str, float]


def counted(metrics_text: str) -> dict[str, float]:
    """The request, encryption and rate-limit counters (latencies differ, their counts not)."""
    samples = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name in (
                "kamus_http_requests_total",
                "kamus_encryptions_total",
                "kamus_rate_limited_total",
                "kamus_http_request_duration_seconds_count",
            ):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def send(client: TestClient, request: Request) -> Outcome:
    headers = {"content-type": request.content_type} if request.content_type is not None else {}
    with audit_lines() as audit:
        response = client.request(
            request.method, request.path, content=request.body, headers=headers
        )
    return Outcome(
        status=response.status_code,
        headers={
            k: v
            for k, v in response.headers.items()
            if k in ("content-type", "content-length", "retry-after")
        },
        body=response.content,
        audit=audit,
        metrics=counted(client.get("/metrics").text),
    )


def assert_same(fast: Outcome, framework: Outcome, keys: AESKeyManager, request: Request) -> None:
    assert (fast.status, fast.headers, fast.audit, fast.metrics) == (
        framework.status,
        framework.headers,
        framework.audit,
        framework.metrics,
    )
    if fast.status != 200:
        assert fast.body == framework.body
        return
    # Fresh nonces make two encryptions differ: both must open to the value sent.
    body = json.loads(request.body)
    identity = f"{body['namespace']}:{body['service-account']}"
    for ciphertext in (fast.body, framework.body):
        assert ciphertext.startswith(b"kamus$m1$")
        opened = asyncio.run(keys.decrypt(ciphertext.decode(), identity))
        assert opened == body["data"].encode("utf-8")


class Pair:
    """The app with the fast path and the app without, from the same settings and key."""

    def __init__(self, settings: Settings, key: str) -> None:
        self.keys = AESKeyManager(base64.b64decode(key))
        self.fast = TestClient(create_app(settings), client=("192.0.2.7", 40000))
        self.framework = TestClient(
            without_fast_path(create_app(settings)), client=("192.0.2.7", 40000)
        )

    def check(self, request: Request) -> Outcome:
        fast, framework = send(self.fast, request), send(self.framework, request)
        assert_same(fast, framework, self.keys, request)
        return fast


@pytest.fixture
def pair(make_settings: SettingsFactory, aes_key: str) -> Pair:
    settings = make_settings(Encryptor__RateLimit="off", Server__MaxRequestBodyBytes=str(MAX_BODY))
    return Pair(settings, aes_key)


VALID_NAMES = st.sampled_from(["app", "team-a", "a" * 63, "x.y"])
NAMES = VALID_NAMES | st.sampled_from(["default", "a" * 64, "App", "-x", ""])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
VALID_BODIES = st.fixed_dictionaries(
    {"data": st.text(max_size=400), "service-account": VALID_NAMES, "namespace": VALID_NAMES},
    optional={"extra": JSON_VALUES},
)
MUTATED_BODIES = st.fixed_dictionaries(
    {
        "data": st.one_of(st.text(max_size=700), JSON_VALUES),
        "service-account": st.one_of(NAMES, JSON_VALUES),
        "namespace": st.one_of(NAMES, JSON_VALUES),
    },
    optional={"extra": JSON_VALUES, "serviceAccount": NAMES},
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kinds = ["valid"] * 5 + ["mutated", "dropped-field", "json", "bytes", "surrogate", "deep"]
    kind = draw(st.sampled_from(kinds))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        depth = draw(st.integers(1, 50_000))
        return b"[" * depth + b"]" * depth * draw(st.integers(0, 1))
    if kind == "surrogate":
        return b'{"data": "\\ud800", "service-account": "app", "namespace": "team-a"}'
    value: Any
    if kind == "json":
        value = draw(JSON_VALUES)
    elif kind == "valid":
        value = draw(VALID_BODIES)
    else:
        value = draw(MUTATED_BODIES)
        if kind == "dropped-field":
            value.pop(draw(st.sampled_from(sorted(value))))
    return json.dumps(value, ensure_ascii=draw(st.booleans())).encode()


REQUESTS = st.builds(
    Request,
    path=st.sampled_from(PATHS),
    body=bodies(),
    content_type=st.sampled_from(
        [
            None,
            None,
            "application/json",
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "",
        ]
    ),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=REQUESTS)
def test_any_request_gets_the_same_answer_with_and_without_the_fast_path(
    pair: Pair, request: Request
) -> None:
    event(f"status {pair.check(request).status}")  # --hypothesis-show-statistics


def test_a_valid_request_is_answered_by_the_fast_path(pair: Pair) -> None:
    valid = {"data": SECRET, "service-account": "app", "namespace": "team-a"}
    for path in PATHS:
        outcome = pair.check(Request(path, json.dumps(valid).encode(), "application/json"))
        assert outcome.status == 200
        assert outcome.audit == [
            {
                "log_type": "audit",
                "service": "encryptor",
                "route": path,
                "source_ip": "192.0.2.7",
                "status": 200,
                "outcome": "success",
                "namespace": "team-a",
                "service_account": "app",
            }
        ]


def test_the_usual_errors_match(pair: Pair) -> None:
    cases = {
        "default": {"data": SECRET, "service-account": "default", "namespace": "team-a"},
        "missing": {"data": SECRET, "namespace": "team-a"},
        "not a name": {"data": SECRET, "service-account": "App", "namespace": "team-a"},
        "too large": {"data": "x" * MAX_BODY, "service-account": "app", "namespace": "team-a"},
    }
    statuses = {
        name: pair.check(Request("/api/v1/encrypt", json.dumps(body).encode(), None)).status
        for name, body in cases.items()
    }
    assert statuses == {"default": 400, "missing": 400, "not a name": 400, "too large": 413}
    assert pair.check(Request("/api/v1/encrypt", b"", None, method="GET")).status == 405


@pytest.mark.parametrize(
    "body",
    [
        # Where pydantic-core's JSON parser and json.loads might part: each must get one answer.
        b'{"data": "a", "data": "b", "service-account": "app", "namespace": "team-a"}',
        b'{"data": "a", "service-account": "default", "service-account": "app", '
        b'"namespace": "team-a"}',
        b'\xef\xbb\xbf{"data": "a", "service-account": "app", "namespace": "team-a"}',
        '{"data": "a", "service-account": "app", "namespace": "team-a"}'.encode("utf-16"),
        b'{"data": "a\nb", "service-account": "app", "namespace": "team-a"}',  # a raw newline
        b'{"data": "a", "service-account": "app", "namespace": "team-a"} {}',
        b'{"data": "a", "service-account": "app", "namespace": "team-a",}',
        b'{"data": NaN, "service-account": "app", "namespace": "team-a"}',
        b'{"data": "\xed\xa0\x80", "service-account": "app", "namespace": "team-a"}',
        b'{"data": "\\udc80\\ud800", "service-account": "app", "namespace": "team-a"}',
        b'{"data": "\\u00e9\\ud83d\\ude00", "service-account": "app", "namespace": "team-a"}',
        b' \t\r\n{"data": "a", "service-account": "app", "namespace": "team-a"}\n ',
        b'{"data": "a", "service-account": "app", "namespace": "team-a"}\x00',
    ],
)
def test_json_edge_cases_match(pair: Pair, body: bytes) -> None:
    pair.check(Request("/api/v1/encrypt", body, "application/json"))


def test_an_unexpected_error_gets_the_frameworks_answer(
    make_settings: SettingsFactory, aes_key: str
) -> None:
    class Broken(AESKeyManager):
        async def encrypt(self, plaintext: bytes, sa_id: str) -> str:
            raise RuntimeError("a defect")

    settings = make_settings(Encryptor__RateLimit="off")
    keys = Broken(base64.b64decode(aes_key))
    fast = TestClient(create_app(settings, keys), raise_server_exceptions=False)
    framework = TestClient(
        without_fast_path(create_app(settings, keys)), raise_server_exceptions=False
    )
    request = Request("/api/v1/encrypt", json.dumps(VALID).encode(), "application/json")
    answers = [send(fast, request), send(framework, request)]
    assert answers[0] == answers[1]
    assert (answers[0].status, answers[0].body) == (500, b"Internal Server Error")
    assert answers[0].audit[0]["outcome"] == "error"
    with pytest.raises(RuntimeError, match="a defect"):  # and uvicorn logs it, as before
        TestClient(create_app(settings, keys)).post("/api/v1/encrypt", json=VALID)


def test_the_rate_limit_counts_the_same(make_settings: SettingsFactory, aes_key: str) -> None:
    pair = Pair(make_settings(Encryptor__RateLimit="3/minute"), aes_key)
    valid = json.dumps({"data": SECRET, "service-account": "app", "namespace": "team-a"})
    invalid = json.dumps({"data": SECRET, "service-account": "default", "namespace": "team-a"})
    statuses = []
    for body in [valid, invalid, valid, valid, invalid, valid]:
        request = Request("/api/v1/encrypt", body.encode(), "application/json")
        fast, framework = send(pair.fast, request), send(pair.framework, request)
        # Retry-After and its message depend on the clock: the rest must match.
        assert (fast.status, fast.audit, fast.metrics) == (
            framework.status,
            framework.audit,
            framework.metrics,
        )
        statuses.append(fast.status)
    assert statuses == [200, 400, 200, 429, 429, 429]


def test_with_authentication_on_the_framework_answers(
    make_settings: SettingsFactory, kubeconfig: object
) -> None:
    app = create_app(make_settings(Encryptor__Authentication="kubernetes"))
    assert not has_fast_path(app)
    assert has_fast_path(create_app(make_settings(Encryptor__Authentication="none")))


# -- at the ASGI level: bodies in several messages, and which path answered ------------------


async def call(app: FastAPI, messages: list[Message]) -> tuple[dict[str, Any], list[Message]]:
    """One request given as ``messages``; returns the scope as the app left it, and the answer."""
    size = sum(len(m.get("body", b"")) for m in messages)
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/encrypt",
        "raw_path": b"/api/v1/encrypt",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"kamus"), (b"content-length", str(size).encode())],
        "client": ("192.0.2.7", 40000),
        "server": ("127.0.0.1", 80),
    }
    pending = list(messages)
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def answer(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, answer)
    return scope, sent


def chunks(body: bytes, parts: int) -> list[Message]:
    step = -(-len(body) // parts)
    pieces = [body[i : i + step] for i in range(0, len(body), step)]
    return [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]


def status(sent: list[Message]) -> int:
    starts = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, sent
    code: int = starts[0]
    return code


async def test_a_body_in_several_messages_is_read_whole(make_settings: SettingsFactory) -> None:
    app = create_app(make_settings(Encryptor__RateLimit="off"))
    body = json.dumps({"data": SECRET, "service-account": "app", "namespace": "team-a"}).encode()
    scope, sent = await call(app, chunks(body, 3))
    assert status(sent) == 200
    assert "endpoint" not in scope  # the router never saw it: the fast path answered


async def test_what_the_fast_path_leaves_reaches_the_app_with_its_body(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(Encryptor__RateLimit="off", Server__MaxRequestBodyBytes="100")
    app = create_app(settings)
    framework = without_fast_path(create_app(settings))
    invalid = json.dumps({"data": SECRET, "service-account": "App", "namespace": "team-a"})
    large = json.dumps({"data": "x" * 200, "service-account": "app", "namespace": "team-a"})
    cut_off = chunks(invalid.encode(), 2)[:1]  # then the client goes away
    answers = []
    for messages in [chunks(invalid.encode(), 2), chunks(large.encode(), 4), cut_off]:
        scope, sent = await call(app, messages)
        _, expected = await call(framework, messages)
        assert scope["endpoint"].__name__ == "encrypt"  # the route answered, body replayed
        assert sent == expected
        answers.append(sent)
    assert [status(sent) for sent in answers[:2]] == [400, 413]
