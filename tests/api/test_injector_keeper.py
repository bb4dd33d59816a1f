"""The injector's certificate keeper (injector/tls.py) in-process, against the Kubernetes API
double through the real asyncio client: the CA Secret it makes, finds or refuses, and the
caBundle it keeps, with each way that can fail saying what to fix."""

import asyncio
import base64
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio.client import ApiClient

from injector.certs import CertificateError
from injector.tls import CertificateKeeper, ServingContext
from kamus.server.kube import create_api_client
from kamus.server.metrics import InjectorMetrics
from kamus.server.settings import Settings
from tests.k8s_double import KubeApiDouble
from tests.support.settings import SettingsFactory

NAMESPACE = "kamus"
WEBHOOK = "kamus-injector"
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


@pytest.fixture
def settings(make_settings: SettingsFactory, kubeconfig: Path) -> Settings:
    return make_settings(Injector__WebhookName=WEBHOOK, Injector__CaSecretName="kamus-injector-ca")


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[ApiClient]:
    client = await create_api_client(settings.kubernetes)
    yield client
    await client.close()


def keeper(api: ApiClient, settings: Settings, **options: Any) -> CertificateKeeper:
    return CertificateKeeper(api, settings.injector, NAMESPACE, serving=ServingContext(), **options)


def webhook_configuration(names: list[str]) -> dict[str, Any]:
    hooks = [
        {
            "name": name,
            "clientConfig": {"service": {"namespace": NAMESPACE, "name": WEBHOOK}},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        }
        for name in names
    ]
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK},
        "webhooks": hooks,
    }


async def test_the_bundle_is_patched_once_and_then_left_alone(
    api: ApiClient, settings: Settings, kube_api: KubeApiDouble
) -> None:
    from kamus.server.kube import request_json

    await request_json(api, "POST", WEBHOOKS, webhook_configuration(["a.kamus", "b.kamus"]))
    metrics = InjectorMetrics()
    kept = keeper(api, settings, metrics=metrics)
    await kept.start()
    assert await kept.patch_bundle_once() == "patched"
    assert await kept.patch_bundle_once() == "unchanged"
    [stored] = kube_api.objects("mutatingwebhookconfigurations")
    assert kept.authority is not None
    wanted = base64.b64encode(kept.authority.cert_pem).decode()
    assert [h["clientConfig"]["caBundle"] for h in stored["webhooks"]] == [wanted, wanted]
    assert stored["webhooks"][0]["clientConfig"]["service"]["name"] == WEBHOOK  # the rest kept
    assert metrics.injector_ca_bundle_patches.labels("patched")._value.get() == 1
    assert metrics.injector_ca_bundle_patches.labels("unchanged")._value.get() == 1


async def test_a_missing_webhook_configuration_names_the_setting(
    api: ApiClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    kept = keeper(api, settings)
    await kept.start()
    assert await kept.patch_bundle_once() == "error"
    assert "webhook configuration kamus-injector does not exist" in caplog.text
    assert "Injector__WebhookName" in caplog.text


async def test_missing_rbac_says_what_to_grant(
    api: ApiClient, settings: Settings, kube_api: KubeApiDouble, caplog: pytest.LogCaptureFixture
) -> None:
    from kamus.server.kube import request_json

    await request_json(api, "POST", WEBHOOKS, webhook_configuration(["a.kamus"]))
    kube_api.denied_access.add(
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch")
    )
    kept = keeper(api, settings)
    await kept.start()
    assert await kept.patch_bundle_once() == "error"
    assert "grant get and patch on mutatingwebhookconfigurations" in caplog.text


async def test_an_unreachable_apiserver_is_an_error_round_and_a_clear_start_failure(
    api: ApiClient, settings: Settings, kube_api: KubeApiDouble, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    kept = keeper(api, settings)
    await kept.start()
    # In a thread: the client's loop must answer the TLS close of its idle connection, or the
    # double's shutdown waits for it.
    await asyncio.to_thread(kube_api.stop)
    try:
        assert await kept.patch_bundle_once() == "error"
        assert "apiserver unreachable" in caplog.text
        with pytest.raises(
            CertificateError, match="cannot read or create the CA Secret kamus/kamus-injector-ca"
        ):
            await keeper(api, settings).start(timeout_seconds=1)
    finally:
        kube_api.start()


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"ca.crt": base64.b64encode(b"x").decode()}, "holds no ca.crt and ca.key"),
        (
            {"ca.crt": base64.b64encode(b"x").decode(), "ca.key": base64.b64encode(b"y").decode()},
            "ca.crt or ca.key is not PEM",
        ),
    ],
)
async def test_a_damaged_ca_secret_is_refused_with_how_to_recover(
    api: ApiClient, settings: Settings, data: dict[str, str], says: str
) -> None:
    from kamus.server.kube import request_json

    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "kamus-injector-ca", "namespace": NAMESPACE},
        "data": data,
    }
    await request_json(api, "POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", secret)
    with pytest.raises(CertificateError, match=re.escape(says)) as refused:
        await keeper(api, settings).start()
    assert "delete it and the injector makes a new CA" in str(refused.value)


async def test_a_ca_key_that_is_not_the_certificates_is_refused(
    api: ApiClient, settings: Settings
) -> None:
    from datetime import UTC, datetime

    from injector.certs import Authority
    from kamus.server.kube import request_json

    one, other = Authority.new(datetime.now(UTC)), Authority.new(datetime.now(UTC))
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "kamus-injector-ca", "namespace": NAMESPACE},
        "data": {
            "ca.crt": base64.b64encode(one.cert_pem).decode(),
            "ca.key": base64.b64encode(other.key_pem).decode(),
        },
    }
    await request_json(api, "POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", secret)
    with pytest.raises(CertificateError, match=re.escape("ca.key does not belong to ca.crt")):
        await keeper(api, settings).start()
