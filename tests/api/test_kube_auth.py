"""How the decryptor reaches Kubernetes and authenticates callers, outside the HTTP layer."""

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kamus.server.errors import ConfigurationError
from kamus.server.kube import create_api_client
from kamus.server.kubeauth.reviews import (
    AuthBusy,
    AuthUnavailable,
    NotAuthenticated,
    StaticTokenFileAuthenticator,
    TokenReviewAuthenticator,
)
from kamus.server.settings import KubernetesSettings
from tests.k8s_double import Faults, KubeApiDouble
from tests.support.leaks import register


async def review(double: KubeApiDouble, authenticator: TokenReviewAuthenticator) -> str:
    try:
        identity = await authenticator.authenticate(double.issue_token("team-a", "app"))
        return identity.username
    finally:
        await authenticator.close()


async def test_kubeconfig_reaches_the_apiserver_over_verified_tls(
    kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    path = kube_api.write_kubeconfig(tmp_path / "kubeconfig")
    client = await create_api_client(KubernetesSettings(), environ={"KUBECONFIG": str(path)})
    assert await review(kube_api, TokenReviewAuthenticator(client)) == (
        "system:serviceaccount:team-a:app"
    )


async def test_a_kubeconfig_with_another_ca_fails_as_unavailable(
    kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    other = KubeApiDouble()  # never started: only its CA is used
    path = kube_api.write_kubeconfig(tmp_path / "kubeconfig")
    path.write_text(path.read_text().replace(str(kube_api.ca_file), str(other.ca_file)))
    client = await create_api_client(KubernetesSettings(), environ={"KUBECONFIG": str(path)})
    with pytest.raises(AuthUnavailable, match="unreachable"):
        await review(kube_api, TokenReviewAuthenticator(client))


async def test_in_cluster_config_uses_the_mounted_token_and_ca(
    kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(kube_api.admin_token)
    environ = {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(kube_api.port),
    }
    client = await create_api_client(
        KubernetesSettings(),
        environ=environ,
        token_file=str(token_file),
        ca_file=str(kube_api.ca_file),
    )
    assert await review(kube_api, TokenReviewAuthenticator(client)) == (
        "system:serviceaccount:team-a:app"
    )


@pytest.fixture
async def kubectl_proxy() -> AsyncIterator[KubeApiDouble]:
    """Plain HTTP with no caller credentials, as `kubectl proxy` serves the API."""
    with KubeApiDouble(tls=False, require_auth=False) as double:
        yield double


async def test_proxy_url_wins_over_everything_else(
    kubectl_proxy: KubeApiDouble, tmp_path: Path
) -> None:
    settings = KubernetesSettings(ProxyUrl=kubectl_proxy.url + "/")
    environ = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBECONFIG": str(tmp_path / "missing")}
    client = await create_api_client(settings, environ=environ)
    assert await review(kubectl_proxy, TokenReviewAuthenticator(client)) == (
        "system:serviceaccount:team-a:app"
    )


async def test_no_way_to_reach_kubernetes_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="Kubernetes__ProxyUrl"):
        await create_api_client(
            KubernetesSettings(), environ={"KUBECONFIG": str(tmp_path / "missing")}
        )


async def test_requested_audiences_are_enforced(kube_api: KubeApiDouble, tmp_path: Path) -> None:
    path = kube_api.write_kubeconfig(tmp_path / "kubeconfig")
    client = await create_api_client(KubernetesSettings(), environ={"KUBECONFIG": str(path)})
    authenticator = TokenReviewAuthenticator(client, audiences=["kamus"])
    # The double, like kube-apiserver, answers with the accepted audiences; a token for another
    # audience is refused by the apiserver itself.
    try:
        with pytest.raises(NotAuthenticated, match="invalid for the target audiences"):
            await authenticator.authenticate(kube_api.issue_token("a", "b", audiences=["vault"]))
        ok = await authenticator.authenticate(kube_api.issue_token("a", "b", audiences=["kamus"]))
        assert ok.username == "system:serviceaccount:a:b"
    finally:
        await authenticator.close()


def unknown_tokens(count: int) -> list[str]:
    """Distinct tokens the apiserver never issued (each misses any cache), cheap to make."""
    secret = secrets.token_urlsafe(24)
    register(secret)
    return [f"unknown-{n}-{secret}" for n in range(count)]


async def test_a_client_whose_share_stays_taken_is_busy_not_an_outage(
    kube_api: KubeApiDouble, kubeconfig: Path
) -> None:
    client = await create_api_client(KubernetesSettings())
    authenticator = TokenReviewAuthenticator(
        client, max_concurrency=4, max_concurrency_per_client=1, timeout_seconds=2
    )
    # One review at a time for this client, each at least 0.5 s: the sixth cannot start
    # within the 2 s it may wait, although the apiserver answers every review in time.
    kube_api.faults = Faults(delay_seconds=0.5)
    try:
        results = await asyncio.gather(
            *(authenticator.authenticate(t, client="10.0.0.1") for t in unknown_tokens(6)),
            return_exceptions=True,
        )
    finally:
        await authenticator.close()
    assert isinstance(results[0], NotAuthenticated)  # the apiserver's verdict
    busy = [r for r in results if isinstance(r, AuthBusy)]
    assert len(busy) >= 2
    assert all(b.own_queue for b in busy)
    assert "Kubernetes__MaxConcurrentRequestsPerClient" in busy[0].reason
    # Nothing else: a review that got its slot was never cut short by its wait for it.
    assert all(isinstance(r, NotAuthenticated | AuthBusy) for r in results)


async def test_a_flood_from_one_address_does_not_delay_another(
    kube_api: KubeApiDouble, kubeconfig: Path
) -> None:
    client = await create_api_client(KubernetesSettings())
    authenticator = TokenReviewAuthenticator(
        client, max_concurrency=4, max_concurrency_per_client=2, timeout_seconds=30
    )
    kube_api.faults = Faults(delay_seconds=0.3)
    flood = asyncio.gather(
        *(authenticator.authenticate(t, client="10.0.0.66") for t in unknown_tokens(60)),
        return_exceptions=True,
    )
    try:
        await asyncio.sleep(0.2)  # the flood's first reviews are at the apiserver
        # In one shared queue the pod would wait behind 58 reviews, 2.5 s at least.
        start = time.monotonic()
        identity = await authenticator.authenticate(
            kube_api.issue_token("team-a", "app"), client="10.0.0.7"
        )
        waited = time.monotonic() - start
        assert not flood.done()  # the flood was still going on
    finally:
        flood.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flood
        await authenticator.close()
    assert identity.username == "system:serviceaccount:team-a:app"
    assert waited < 2.0


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens.csv"
    path.write_text(text)
    return path


async def test_static_token_file_in_kube_apiserver_format(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# development tokens\n"
        'tok-1,system:serviceaccount:default:demo,uid-1,"system:serviceaccounts,system:authenticated"\n'
        "\n"
        "tok-2, jane, uid-2\n",
    )
    authenticator = StaticTokenFileAuthenticator(path)
    assert (await authenticator.authenticate("tok-1")).username == (
        "system:serviceaccount:default:demo"
    )
    assert (await authenticator.authenticate("tok-2")).username == "jane"
    with pytest.raises(NotAuthenticated):
        await authenticator.authenticate("tok-3")
    with pytest.raises(NotAuthenticated):
        await authenticator.authenticate("tok-1 ")
    assert await authenticator.can_review_tokens() is True


def test_static_token_file_errors_name_the_line_not_the_token(tmp_path: Path) -> None:
    path = write(tmp_path, "tok-1,user,uid\nsecret-token-value,only-two\n")
    with pytest.raises(ValueError, match="line 2") as info:
        StaticTokenFileAuthenticator(path)
    assert "secret-token-value" not in str(info.value)
    with pytest.raises(ValueError, match="cannot be read"):
        StaticTokenFileAuthenticator(tmp_path / "missing.csv")


def test_static_token_file_warns_that_it_is_for_development(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    StaticTokenFileAuthenticator(write(tmp_path, "tok-1,user,uid\n"))
    assert "local development only" in caplog.text
    assert "tok-1" not in caplog.text
