"""One way for every service to reach the Kubernetes API, with the official asyncio client.

In order: ``Kubernetes__ProxyUrl`` (as in Kamus, e.g. ``kubectl proxy``), the in-cluster service
account, then ``KUBECONFIG`` (or ``~/.kube/config``).
"""

import json
import os
from collections.abc import Mapping
from pathlib import Path

from kubernetes.aio.client import ApiClient, Configuration
from kubernetes.aio.config import ConfigException, load_kube_config
from kubernetes.aio.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_HOST_ENV_NAME,
    SERVICE_TOKEN_FILENAME,
    InClusterConfigLoader,
)

from kamus.server.errors import ConfigurationError
from kamus.server.settings import KubernetesSettings


async def create_api_client(
    settings: KubernetesSettings,
    *,
    environ: Mapping[str, str] = os.environ,
    token_file: str = SERVICE_TOKEN_FILENAME,
    ca_file: str = SERVICE_CERT_FILENAME,
) -> ApiClient:
    config = Configuration()
    try:
        if settings.proxy_url:
            config.host = settings.proxy_url.rstrip("/")
        elif environ.get(SERVICE_HOST_ENV_NAME):
            InClusterConfigLoader(token_file, ca_file, environ=environ).load_and_set(config)
        else:
            kubeconfig = environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
            await load_kube_config(
                config_file=kubeconfig, client_configuration=config, persist_config=False
            )
    except (ConfigException, OSError) as exc:
        raise ConfigurationError(
            f"cannot configure the Kubernetes client ({exc}). Set Kubernetes__ProxyUrl, run in "
            "a cluster, or point KUBECONFIG at a kubeconfig"
        ) from None
    config.connection_pool_maxsize = settings.max_concurrent_requests
    return ApiClient(configuration=config)


async def request_json(
    api: ApiClient,
    method: str,
    path: str,
    body: Mapping[str, object] | list[object] | None = None,
    *,
    content_type: str = "application/json",
) -> dict[str, object]:
    """One request as JSON, without the client's generated API classes (the core API alone is
    about 23 MB of RSS: docs/performance.md). Raises ``ApiException`` for any other answer than
    2xx, as the generated classes do. A JSON patch is a list with ``content_type``
    ``application/json-patch+json``."""
    from kubernetes.aio.client.exceptions import ApiException

    params = await api.param_serialize(
        method=method,
        resource_path=path,
        header_params={"Accept": "application/json", "Content-Type": content_type},
        body=(list(body) if isinstance(body, list) else dict(body)) if body is not None else None,
        auth_settings=["BearerToken"],
    )
    response = await api.call_api(*params)
    data = await response.read()
    if not 200 <= response.status <= 299:
        raise ApiException(status=response.status, reason=response.reason, body=data.decode())
    decoded: dict[str, object] = json.loads(data)
    return decoded
