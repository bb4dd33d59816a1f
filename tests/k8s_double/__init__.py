"""A Kubernetes API double for tests: see ``server.py`` and ``README.md``."""

from tests.k8s_double.server import DEFAULT_ISSUER, KubeApiDouble, ReviewRecord
from tests.support.servers import Faults

__all__ = ["DEFAULT_ISSUER", "Faults", "KubeApiDouble", "ReviewRecord"]
