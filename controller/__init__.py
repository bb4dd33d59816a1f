"""The KamusSecret controller: ``soluto.com/v1alpha2`` KamusSecret → native Secret.

``reconcile`` decides (pure functions: what the Secret and the status should be), ``controller``
acts (watches, a work queue, leader election, the Kubernetes calls), ``app`` serves health and
metrics and runs it under ``kamus serve controller``.

``kamus`` is imported first, whatever imports this package: it keeps ``import kubernetes...``
from loading the synchronous client (kamus/__init__.py).
"""

import kamus  # noqa: F401
