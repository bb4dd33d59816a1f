"""The KamusSecret controller as a real ``kamus serve controller`` process against the
Kubernetes API double, seen through the official client: what the controller tests and the
tests of the examples drive."""

import asyncio
import base64
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from crypto import AESKeyManager
from tests.k8s_double import KubeApiDouble
from tests.support.kubeclient import close
from tests.support.processes import Service, kamus_serve
from tests.support.settings import new_key

T = TypeVar("T")
GROUP, VERSION, PLURAL = "soluto.com", "v1alpha2", "kamussecrets"
FAST = {
    "Controller__ReconciliationIntervalInSeconds": "2",
    "Controller__LeaseNamespace": "kamus",
    "Controller__LeaseDurationSeconds": "3",
    "Controller__RenewDeadlineSeconds": "2",
    "Controller__RetryPeriodSeconds": "1",
    "Controller__WatchTimeoutSeconds": "30",
}


def eventually(check: Callable[[], T | None], timeout: float = 20.0) -> T:
    """``check()``'s first truthy result, polling until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (ApiException, KeyError, AssertionError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {check.__doc__ or check}")
        time.sleep(0.1)


class Cluster:
    """The double seen through the official client, plus the key the controller uses."""

    controller: Service

    def __init__(self, kube: KubeApiDouble, kubeconfig: Path, key: str) -> None:
        self.kube = kube
        api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
        self.api = api
        self.core = k8s.CoreV1Api(api)
        self.custom = k8s.CustomObjectsApi(api)
        self.coordination = k8s.CoordinationV1Api(api)
        self.keys = AESKeyManager(base64.b64decode(key))

    def close(self) -> None:
        """Close the client's pooled TLS connections, so the double can stop at once."""
        close(self.api)

    def encrypt(self, value: str | bytes, sa_id: str) -> str:
        data = value.encode() if isinstance(value, str) else value
        return asyncio.run(self.keys.encrypt(data, sa_id))

    def apply(self, namespace: str, name: str, **fields: Any) -> dict[str, Any]:
        metadata = fields.pop("metadata", {})
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "KamusSecret",
            "metadata": {"name": name, "namespace": namespace, **metadata},
            "serviceAccount": "app",
            **fields,
        }
        result = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body
        )
        return cast(dict[str, Any], result)

    @staticmethod
    def _at(namespace: str) -> tuple[str, str, str, str]:
        return GROUP, VERSION, namespace, PLURAL

    def kamus_secret(self, namespace: str, name: str) -> dict[str, Any]:
        result = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return cast(dict[str, Any], result)

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret as the apiserver serialises it (camelCase keys), or None."""
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        result: dict[str, Any] = self.api.sanitize_for_serialization(secret)
        return result

    def data(self, namespace: str, name: str) -> dict[str, str] | None:
        secret = self.secret(namespace, name)
        return None if secret is None else cast(dict[str, str], secret.get("data"))

    def ready(self, namespace: str, name: str) -> dict[str, Any] | None:
        status = self.kamus_secret(namespace, name).get("status") or {}
        return next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)


def controller_env(kube: KubeApiDouble, tmp: Path, key: str, **extra: str) -> dict[str, str]:
    return {
        "KUBECONFIG": str(kube.write_kubeconfig(tmp / "controller.kubeconfig")),
        "KeyManagement__AES__Key": key,
        **FAST,
        **extra,
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("controller")
    key = new_key()
    with ExitStack() as stack:
        kube = stack.enter_context(KubeApiDouble())
        env = controller_env(
            kube,
            tmp,
            key,
            Controller__Identity="controller-main",
            Controller__DeniedSecretTypes="example.com/forbidden",
            Controller__DeniedMetadataPrefixes="example.org",
        )
        service = stack.enter_context(kamus_serve("controller", env, tmp / "controller.log"))
        kube.wait_for_watches(2)  # KamusSecrets and Secrets
        cluster = Cluster(kube, kube.write_kubeconfig(tmp / "test.kubeconfig"), key)
        stack.callback(cluster.close)
        cluster.controller = service
        yield cluster


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
