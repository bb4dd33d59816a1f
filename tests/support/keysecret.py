"""What the tests of ``kamus create-key-secret`` share: the Kubernetes double limited to the
chart Job's RBAC, and an administrator's view of it."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from tests.k8s_double import KubeApiDouble
from tests.support.kubeclient import sync_client

# What the chart's Role does not grant, on Secrets.
NOT_GRANTED = {("", "secrets", verb) for verb in ("update", "patch", "delete", "list", "watch")}


@pytest.fixture
def kube(kube_api: KubeApiDouble) -> KubeApiDouble:
    kube_api.denied_access |= NOT_GRANTED
    return kube_api


@pytest.fixture
def core(kube: KubeApiDouble, tmp_path: Path) -> Iterator[k8s.CoreV1Api]:
    """The test's own view of the double, as an administrator."""
    with sync_client(kube.write_kubeconfig(tmp_path / "admin.yaml")) as api:
        yield k8s.CoreV1Api(api)
