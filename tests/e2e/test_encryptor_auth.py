"""Encryptor__Authentication=kubernetes: who may encrypt for a namespace is what Kubernetes RBAC
says (TokenReview, then a SubjectAccessReview for creating KamusSecrets there)."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner
from fastapi.testclient import TestClient

from encryptor.app import create_app
from kamus.cli.main import main
from tests.k8s_double import KubeApiDouble
from tests.support.processes import kamus_serve
from tests.support.settings import SettingsFactory, new_key

V1 = {"data": "s3cr3t-value", "service-account": "app", "namespace": "team-a"}
V2 = {"namespace": "team-a", "serviceAccount": "app", "items": {"a": "s3cr3t-value"}}
KAMUSSECRETS = {"group": "soluto.com", "resource": "kamussecrets", "verb": "create"}
ON = {"Encryptor__Authentication": "kubernetes", "Encryptor__RateLimit": "off"}


@pytest.fixture
def encryptor(
    kube_api: KubeApiDouble, kubeconfig: Path, make_settings: SettingsFactory
) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(**ON))) as client:
        yield client


def as_user(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_off_by_default_anyone_may_encrypt(make_settings: SettingsFactory) -> None:
    with TestClient(create_app(make_settings())) as client:
        assert client.post("/api/v1/encrypt", json=V1).status_code == 200
        spec = client.get("/openapi.json").json()
    # The schema does not claim a token is needed.
    assert "securitySchemes" not in spec.get("components", {})


def test_with_authentication_the_schema_asks_for_a_token(encryptor: TestClient) -> None:
    spec = encryptor.get("/openapi.json").json()
    assert "KubernetesToken" in spec["components"]["securitySchemes"]
    assert spec["paths"]["/api/v2/encrypt"]["post"]["security"] == [{"KubernetesToken": []}]


def test_importing_the_encryptor_does_not_load_the_kubernetes_client() -> None:
    """With authentication off it never needs one, and the client costs ~30 MB of memory."""
    probe = "import sys, encryptor.app; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    # kamus/kubernetes_alone.py registers the two packages without running them: no module.
    assert [m for m in loaded if m.startswith("kubernetes")] == ["kubernetes", "kubernetes.aio"]
    assert [m for m in loaded if m.split(".")[0] == "decryptor"] == []


@pytest.mark.parametrize("service", ["encryptor.app", "decryptor.app", "controller.app"])
def test_no_service_loads_the_synchronous_kubernetes_client(service: str) -> None:
    """Imported first, before ``kamus`` (as ``uvicorn decryptor.app:...`` would): the package
    still registers ``kubernetes`` without its ``__init__.py``, which loads the synchronous
    client, ~16 MB no service uses."""
    probe = f"import sys, {service}; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert service in loaded
    synchronous = [m for m in loaded if m.startswith("kubernetes.") and m != "kubernetes.aio"]
    assert [m for m in synchronous if not m.startswith("kubernetes.aio.")] == []


def test_rbac_decides_who_may_encrypt_for_a_namespace(
    encryptor: TestClient, kube_api: KubeApiDouble
) -> None:
    jane = kube_api.issue_user_token("jane@example.com", groups=["team-a-devs"])
    bob = kube_api.issue_user_token("bob@example.com")
    kube_api.grant("group:team-a-devs", namespace="team-a", **KAMUSSECRETS)

    assert encryptor.post("/api/v1/encrypt", json=V1, headers=as_user(jane)).status_code == 200
    allowed = encryptor.post("/api/v2/encrypt", json=V2, headers=as_user(jane))
    assert allowed.status_code == 200
    # Not in another namespace...
    other = encryptor.post(
        "/api/v1/encrypt", json={**V1, "namespace": "team-b"}, headers=as_user(jane)
    )
    assert other.status_code == 403
    assert "jane@example.com may not encrypt for namespace team-b" in other.json()["detail"]
    # ... and not for a user without the grant.
    refused = encryptor.post("/api/v2/encrypt", json=V2, headers=as_user(bob))
    assert refused.status_code == 403
    assert refused.json()["type"] == "urn:kamus:problem:not-allowed-to-encrypt"

    # The review asked exactly the question, with the identity the TokenReview returned.
    spec = kube_api.access_reviews[0]
    assert spec["user"] == "jane@example.com"
    assert "team-a-devs" in spec["groups"]
    assert spec["resourceAttributes"] == {"namespace": "team-a", **KAMUSSECRETS}


def test_a_cluster_wide_grant_and_a_service_account_caller(
    encryptor: TestClient, kube_api: KubeApiDouble
) -> None:
    """A CI job's service account, allowed by a ClusterRoleBinding."""
    ci = kube_api.issue_token("ci", "pipeline")
    kube_api.grant("system:serviceaccount:ci:pipeline", **KAMUSSECRETS)
    for namespace in ("team-a", "team-b"):
        body = {**V1, "namespace": namespace}
        assert encryptor.post("/api/v1/encrypt", json=body, headers=as_user(ci)).status_code == 200


def test_an_allowed_caller_is_asked_about_once_a_denied_one_every_time(
    encryptor: TestClient, kube_api: KubeApiDouble
) -> None:
    """RBAC's "allowed" is kept Encryptor__AuthorizationCacheSeconds (10 s); a "denied" never,
    so a grant made after a 403 works at once."""
    jane = kube_api.issue_user_token("jane@example.com")
    kube_api.grant("jane@example.com", namespace="team-a", **KAMUSSECRETS)
    for _ in range(5):  # kamus seal: one request per Secret
        assert encryptor.post("/api/v2/encrypt", json=V2, headers=as_user(jane)).status_code == 200
    assert len(kube_api.access_reviews) == 1
    team_b = {**V1, "namespace": "team-b"}  # another question: asked, and denied each time
    for _ in range(2):
        assert (
            encryptor.post("/api/v1/encrypt", json=team_b, headers=as_user(jane)).status_code == 403
        )
    assert len(kube_api.access_reviews) == 3
    kube_api.grant("jane@example.com", namespace="team-b", **KAMUSSECRETS)
    assert encryptor.post("/api/v1/encrypt", json=team_b, headers=as_user(jane)).status_code == 200


def test_the_authorization_cache_can_be_off(
    kube_api: KubeApiDouble, kubeconfig: Path, make_settings: SettingsFactory
) -> None:
    settings = make_settings(**ON, Encryptor__AuthorizationCacheSeconds="0")
    jane = kube_api.issue_user_token("jane@example.com")
    kube_api.grant("jane@example.com", namespace="team-a", **KAMUSSECRETS)
    with TestClient(create_app(settings)) as client:
        for _ in range(3):
            assert client.post("/api/v1/encrypt", json=V1, headers=as_user(jane)).status_code == 200
    assert len(kube_api.access_reviews) == 3


def test_callers_tokens_are_cached_by_the_encryptors_own_settings(
    kube_api: KubeApiDouble, kubeconfig: Path, make_settings: SettingsFactory
) -> None:
    """Encryptor__TokenReviewCache*, not the decryptor's settings, which once applied here."""
    jane = kube_api.issue_user_token("jane@example.com")
    kube_api.grant("jane@example.com", namespace="team-a", **KAMUSSECRETS)

    def reviews_for_three_requests(**env: str) -> int:
        before = len(kube_api.reviews)
        with TestClient(create_app(make_settings(**ON, **env))) as client:
            for _ in range(3):
                response = client.post("/api/v1/encrypt", json=V1, headers=as_user(jane))
                assert response.status_code == 200
        return len(kube_api.reviews) - before

    assert reviews_for_three_requests(Decryptor__TokenReviewCacheSeconds="0") == 1
    assert reviews_for_three_requests(Encryptor__TokenReviewCacheSeconds="0") == 3


def test_no_token_or_a_bad_one_is_401_before_anything_else(
    encryptor: TestClient, kube_api: KubeApiDouble
) -> None:
    missing = encryptor.post("/api/v1/encrypt", json={"nonsense": True})
    assert missing.status_code == 401  # not 400: the body is not looked at
    assert "kamus encrypt --token-file, or --kubeconfig-token" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    forged = kube_api.forge_token("team-a", "app")
    assert encryptor.post("/api/v2/encrypt", json=V2, headers=as_user(forged)).status_code == 401
    assert kube_api.access_reviews == []


def test_with_audiences_the_401_says_how_to_make_a_token_for_them(
    kube_api: KubeApiDouble, kubeconfig: Path, make_settings: SettingsFactory
) -> None:
    settings = make_settings(**ON, Encryptor__Audiences="kamus-encryptor")
    with TestClient(create_app(settings)) as client:
        missing = client.post("/api/v1/encrypt", json=V1)
    assert missing.status_code == 401
    assert (
        "kubectl create token <service account> --audience kamus-encryptor > token; "
        "kamus encrypt --token-file token"
    ) in missing.json()["detail"]


def test_an_apiserver_outage_is_503_and_not_ready(
    encryptor: TestClient, kube_api: KubeApiDouble
) -> None:
    jane = kube_api.issue_user_token("jane@example.com")
    kube_api.stop()
    down = encryptor.post("/api/v1/encrypt", json=V1, headers=as_user(jane))
    assert down.status_code == 503
    assert down.headers["retry-after"]
    assert encryptor.get("/readyz").json()["unavailable"] == ["kubernetes"]


def test_the_encryptor_needs_auth_delegator(encryptor: TestClient, kube_api: KubeApiDouble) -> None:
    """Without system:auth-delegator the reviews fail: a 503 that says so in the audit log,
    never a misleading 401 or 403 to the caller."""
    jane = kube_api.issue_user_token("jane@example.com")
    kube_api.denied_access.add(("authorization.k8s.io", "subjectaccessreviews", "create"))
    response = encryptor.post("/api/v1/encrypt", json=V1, headers=as_user(jane))
    assert response.status_code == 503


def test_kamus_encrypt_and_seal_send_the_kubeconfig_users_token(
    kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    """The CLI against a real encryptor process, with the token of the kubeconfig's user."""
    jane = kube_api.issue_user_token("jane@example.com")
    kube_api.grant("jane@example.com", namespace="team-a", **KAMUSSECRETS)
    encryptor_kubeconfig = kube_api.write_kubeconfig(tmp_path / "encryptor.kubeconfig")
    user_kubeconfig = kube_api.write_kubeconfig(tmp_path / "jane.kubeconfig", token=jane)
    env = {
        **ON,
        "KeyManagement__AES__Key": new_key(),
        "KUBECONFIG": str(encryptor_kubeconfig),
    }
    with kamus_serve("encryptor", env, tmp_path / "encryptor.log") as encryptor:
        runner = CliRunner(env={"KUBECONFIG": str(user_kubeconfig)})
        # Plain http on loopback stands for kubectl port-forward, the case the flag exists for.
        common = ["-u", encryptor.url, "--allow-insecure-url", "--allow-token-over-http"]

        without = runner.invoke(main, ["encrypt", "-s", "x", "-a", "app", "-n", "team-a", *common])
        assert without.exit_code == 5
        assert "401" in without.output

        encrypted = runner.invoke(
            main,
            ["encrypt", "-s", "s3cr3t", "-a", "app", "-n", "team-a", "--kubeconfig-token", *common],
        )
        assert encrypted.exit_code == 0, encrypted.output
        assert encrypted.stdout.startswith("kamus$")

        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db", "namespace": "team-b"},
            "stringData": {"password": "s3cr3t"},
        }
        sealed = runner.invoke(
            main, ["seal", "-a", "app", "--kubeconfig-token", *common], input=yaml.dump(secret)
        )
        assert sealed.exit_code == 5  # jane may not encrypt for team-b
        assert "may not encrypt for namespace team-b" in sealed.output
        assert httpx.get(f"{encryptor.url}/readyz").status_code == 200


def test_kubeconfig_token_errors_are_clear(tmp_path: Path) -> None:
    runner = CliRunner(env={"KUBECONFIG": str(tmp_path / "missing")})
    args = ["encrypt", "-s", "x", "-a", "app", "-n", "team-a", "-u", "https://kamus.example"]
    result = runner.invoke(main, [*args, "--kubeconfig-token"])
    assert result.exit_code == 2
    assert "cannot load the kubeconfig" in result.output
    # A user with a password (or a client certificate) has no token to forward, and the
    # password must not be sent as one.
    kubeconfig = tmp_path / "cert-user"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"username": "admin", "password": "x"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    result = CliRunner(env={"KUBECONFIG": str(kubeconfig)}).invoke(
        main, [*args, "--kubeconfig-token"]
    )
    assert result.exit_code == 2
    assert "has no bearer token" in result.output
    result = runner.invoke(main, [*args, "--kube-context", "prod"])
    assert result.exit_code == 2
    assert "--kube-context goes with --kubeconfig-token" in result.output
