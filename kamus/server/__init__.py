"""The runtime the services share: settings, logs and audit, metrics, health, rate limits, the
HTTP protocol and TLS, the Kubernetes client and caller authentication, building key providers
from settings, the FastAPI skeleton, and the registry of services."""

import kamus.kubernetes_alone  # noqa: F401 - before any kubernetes import in this package
