"""The official synchronous Kubernetes client, as tests use it against the API double."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kubernetes import client, config


def close(api_client: client.ApiClient) -> None:
    """Close the sync client's connections, which its ``close()`` leaves open until garbage
    collection (urllib3 2's ``PoolManager.clear`` no longer closes the pools). One left open is
    a ResourceWarning in whatever test the collector happens to run in, and uvicorn's shutdown
    waits for open TLS connections, so stopping the double takes 10 s."""
    pools = api_client.rest_client.pool_manager.pools
    for key in list(pools.keys()):
        pools[key].close()
    api_client.close()


@contextmanager
def sync_client(kubeconfig: Path) -> Iterator[client.ApiClient]:
    """A client configured from ``kubeconfig``, closed on the way out."""
    api_client: client.ApiClient = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield api_client
    finally:
        close(api_client)
