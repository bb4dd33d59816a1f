"""The ``kamus`` command and the runtime the services share (settings, logs, metrics, clients)."""

import importlib.util
import sys
import types

__version__ = "0.1.0"


def _kubernetes_without_the_sync_client() -> None:
    """Let ``import kubernetes.aio...`` load the asyncio client alone.

    The official package's ``kubernetes/__init__.py`` imports its synchronous client, config,
    dynamic, watch, stream, utils, leaderelection and informer modules: a second copy of every
    model, about 16 MB in each process, which the services (asyncio only) never use. Registering
    the package without running that file keeps every submodule importable (``import
    kubernetes.client`` still works, as ``kamus encrypt --kubeconfig-token`` does); only the
    attribute access ``kubernetes.client`` without importing it first would fail, and nothing
    here does that. Skipped when something imported ``kubernetes`` already.
    """
    if "kubernetes" in sys.modules:
        return
    spec = importlib.util.find_spec("kubernetes")
    if spec is None or spec.submodule_search_locations is None:
        return
    package = types.ModuleType("kubernetes")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__file__ = spec.origin
    sys.modules["kubernetes"] = package


_kubernetes_without_the_sync_client()
