"""Errors of the v2 APIs are RFC 9457 problem details with a stable type per kind; v1 keeps the
bodies Kamus clients parse."""

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from decryptor.app import create_app as create_decryptor
from encryptor.app import create_app as create_encryptor
from kamus.server.web.problems import (
    PROBLEM_MEDIA_TYPE,
    PROBLEM_TYPE_PREFIX,
    PROBLEMS,
    Problem,
    ProblemKind,
)
from tests.k8s_double import KubeApiDouble
from tests.kms_doubles.aws import AwsKmsDouble
from tests.support.kms import AWS, FAST
from tests.support.settings import SettingsFactory

ROOT = Path(__file__).resolve().parents[2]
ENCRYPT = {"namespace": "team-a", "serviceAccount": "app", "items": {"a": "x"}}


@pytest.fixture
def encryptor(make_settings: SettingsFactory) -> Iterator[TestClient]:
    settings = make_settings(Server__MaxBatchItems="2", Server__MaxRequestBodyBytes="2000")
    with TestClient(create_encryptor(settings)) as client:
        yield client


@pytest.fixture
def decryptor(make_settings: SettingsFactory, kubeconfig: Path) -> Iterator[TestClient]:
    with TestClient(create_decryptor(make_settings(Server__MaxBatchItems="2"))) as client:
        yield client


def problem(response: httpx.Response, status: int, kind: ProblemKind) -> Problem:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = Problem.model_validate(response.json())
    assert body.type == PROBLEM_TYPE_PREFIX + kind
    assert body.title == PROBLEMS[kind]
    assert body.status == status
    assert body.detail
    return body


def test_encryptor_problems(encryptor: TestClient) -> None:
    v2 = "/api/v2/encrypt"
    assert "namespace: is required" in (
        problem(encryptor.post(v2, json={"items": {"a": "x"}}), 400, "invalid-request").detail
    )
    assert "not valid JSON" in (
        problem(encryptor.post(v2, content=b"{"), 400, "invalid-request").detail
    )
    problem(
        encryptor.post(v2, json={**ENCRYPT, "serviceAccount": "default"}),
        400,
        "default-service-account",
    )
    problem(
        encryptor.post(v2, json={**ENCRYPT, "items": {"a": "1", "b": "2", "c": "3"}}),
        413,
        "too-many-items",
    )
    big = {**ENCRYPT, "items": {"a": "x" * 3000}}
    assert (
        "Server__MaxRequestBodyBytes"
        in problem(encryptor.post(v2, json=big), 413, "body-too-large").detail
    )
    problem(encryptor.post("/api/v2/nothing-here", json=ENCRYPT), 404, "not-found")
    problem(encryptor.get(v2), 405, "method-not-allowed")


def test_decryptor_problems(decryptor: TestClient, kube_api: KubeApiDouble) -> None:
    v2 = "/api/v2/decrypt"
    missing = decryptor.post(v2, json={"items": {"a": "x"}})
    problem(missing, 401, "missing-token")
    assert missing.headers["www-authenticate"] == "Bearer"

    def as_caller(token: str, body: dict[str, object] | None = None) -> httpx.Response:
        response: httpx.Response = decryptor.post(
            v2,
            json=body if body is not None else {"items": {"a": "x"}},
            headers={"Authorization": f"Bearer {token}"},
        )
        return response

    problem(as_caller(kube_api.forge_token("team-a", "app")), 401, "token-rejected")
    problem(as_caller(kube_api.issue_user_token("jane@example.com")), 403, "not-a-service-account")
    problem(as_caller(kube_api.issue_token("team-a", "default")), 403, "default-service-account")
    token = kube_api.issue_token("team-a", "app")
    problem(as_caller(token, {"items": {}}), 400, "invalid-request")
    problem(as_caller(token, {"items": {"a": "1", "b": "2", "c": "3"}}), 413, "too-many-items")

    kube_api.stop()
    outage = as_caller(kube_api.issue_token("team-a", "other"))
    assert problem(outage, 503, "kubernetes-unavailable")
    assert int(outage.headers["retry-after"]) > 0


def test_a_kms_outage_is_a_problem_with_retry_after(
    aws_kms: AwsKmsDouble, make_settings: SettingsFactory
) -> None:
    settings = make_settings(**AWS, **FAST)
    with TestClient(create_encryptor(settings)) as client:
        aws_kms.stop()
        outage = client.post("/api/v2/encrypt", json=ENCRYPT)
    problem(outage, 503, "key-manager-unavailable")
    assert outage.headers["retry-after"] == str(settings.server.retry_after_seconds)


def test_v1_keeps_kamus_bodies(encryptor: TestClient, decryptor: TestClient) -> None:
    for response in [
        encryptor.post("/api/v1/encrypt", json={"namespace": "team-a"}),
        decryptor.post("/api/v1/decrypt", json={"data": "x"}),
    ]:
        assert response.headers["content-type"] == "application/json"
        assert set(response.json()) == {"detail"}


def test_every_kind_is_documented_and_in_the_openapi_schema(
    encryptor: TestClient, decryptor: TestClient
) -> None:
    documented = set(re.findall(r"^### `([a-z-]+)`", (ROOT / "docs/errors.md").read_text(), re.M))
    assert documented == set(PROBLEMS)
    for client, path in [(encryptor, "/api/v2/encrypt"), (decryptor, "/api/v2/decrypt")]:
        schema = client.get("/openapi.json").json()
        responses = schema["paths"][path]["post"]["responses"]
        assert "422" not in responses  # FastAPI's default; invalid input is a 400 here
        for status, response in responses.items():
            if status != "200":
                assert list(response["content"]) == [PROBLEM_MEDIA_TYPE]
        assert set(schema["components"]["schemas"]["Problem"]["required"]) == {
            "type",
            "title",
            "status",
            "detail",
        }
