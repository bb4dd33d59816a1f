"""A Kubernetes API double for tests: see ``server.py``, ``resources.py`` and ``admission.py``."""

from tests.k8s_double.admission import AdmissionCall
from tests.k8s_double.server import DEFAULT_ISSUER, KubeApiDouble, ReviewRecord
from tests.support.servers import Faults

__all__ = ["DEFAULT_ISSUER", "AdmissionCall", "Faults", "KubeApiDouble", "ReviewRecord"]
