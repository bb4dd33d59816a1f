"""Import this module before any ``kubernetes`` module: it lets ``import kubernetes.aio.client``
load the asyncio client alone.

``kubernetes/__init__.py`` imports the synchronous client, config, dynamic, watch, stream, utils,
leaderelection and informer modules, which the services (asyncio only) never use;
``kubernetes/aio/__init__.py`` likewise imports dynamic (with kubernetes-validate and jsonschema
when installed), stream, utils (PyYAML), watch and leaderelection. In all, about 50 MB of RSS.
The decryptor runs within a memory budget (docs/performance.md), so the two packages are
registered here without running their ``__init__.py``; every submodule stays importable by its
full name.

The packages whose modules import ``kubernetes`` import this one in their ``__init__.py``
(``kamus.server``, ``kamus.cli``, ``controller``), which Python runs before any of their modules.
tests/unit/test_kubernetes_alone.py shows what it saves.
"""

import importlib.util
import sys
import types


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


_register_without_init("kubernetes")
_register_without_init("kubernetes.aio")
