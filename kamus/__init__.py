"""Kamus in Python: the ``kamus`` command (``kamus.cli``) and the runtime the services share
(``kamus.server``)."""

import importlib.util
import sys
import types

__version__ = "0.1.0"


def _register_without_init(name: str) -> None:
    """Make package ``name`` importable without running its ``__init__.py``.

    Every submodule stays importable (``import kubernetes.aio.watch`` still works); only the
    attribute access ``kubernetes.aio.watch`` before importing it would fail, and nothing here
    does that. Skipped when something imported the package already.
    """
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        return
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__file__ = spec.origin
    sys.modules[name] = package
    parent, _, child = name.rpartition(".")
    if parent:
        # As the import system does: library code reaches modules as `kubernetes.aio.client...`.
        setattr(sys.modules[parent], child, package)


def _kubernetes_client_alone() -> None:
    """Let ``import kubernetes.aio.client`` load the asyncio client alone.

    ``kubernetes/__init__.py`` imports the synchronous client, config, dynamic, watch, stream,
    utils, leaderelection and informer modules: a second copy of every model, about 16 MB in each
    process, which the services (asyncio only) never use. ``kubernetes/aio/__init__.py`` likewise
    imports dynamic (with kubernetes-validate and jsonschema when installed), stream, utils
    (PyYAML), watch and leaderelection: another 2 to 4 MB the encryptor and the decryptor never
    use. The controller imports the ones it uses by their full names.
    """
    _register_without_init("kubernetes")
    _register_without_init("kubernetes.aio")


_kubernetes_client_alone()
