"""``kamus serve controller``: the controller, with health, readiness and metrics endpoints."""

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from kubernetes.aio.client import (
    ApiClient,
    AuthorizationV1Api,
    V1ResourceAttributes,
    V1SelfSubjectAccessReview,
    V1SelfSubjectAccessReviewSpec,
)
from kubernetes.aio.client.exceptions import ApiException

from controller.reconcile import GROUP, PLURAL
from controller.runner import ControllerRunner
from crypto import KeyManager
from kamus.server.errors import ConfigurationError
from kamus.server.kube import create_api_client
from kamus.server.metrics import ControllerMetrics
from kamus.server.process import cache_cleared_on_sighup
from kamus.server.providers import build_key_manager
from kamus.server.settings import Settings
from kamus.server.web.app import KamusApp, create_base_app

log = logging.getLogger(__name__)

# What the controller must be allowed to do (checked by /healthz, as Kamus's controller did):
# (group, resource[/subresource], verb, in the Lease namespace rather than cluster-wide).
NEEDED = [
    (GROUP, PLURAL, "list", False),
    (GROUP, PLURAL, "watch", False),
    (GROUP, PLURAL, "get", False),
    (GROUP, f"{PLURAL}/status", "patch", False),
    ("", "secrets", "list", False),
    ("", "secrets", "watch", False),
    ("", "secrets", "get", False),
    ("", "secrets", "create", False),
    ("", "secrets", "update", False),
    ("", "secrets", "delete", False),
    ("", "events", "create", False),
    ("coordination.k8s.io", "leases", "get", True),
    ("coordination.k8s.io", "leases", "create", True),
    ("coordination.k8s.io", "leases", "update", True),
]


class AccessCheck:
    """SelfSubjectAccessReviews of everything in NEEDED, cached."""

    def __init__(self, api: ApiClient, lease_namespace: str, cache_seconds: float = 30.0) -> None:
        self._authz = AuthorizationV1Api(api)
        self._lease_namespace = lease_namespace
        self._cache_seconds = cache_seconds
        self._result: tuple[float, list[str]] | None = None

    async def missing(self) -> list[str]:
        if self._result and time.monotonic() - self._result[0] < self._cache_seconds:
            return self._result[1]
        missing = []
        for group, resource, verb, in_lease_namespace in NEEDED:
            plural, _, sub = resource.partition("/")
            namespace = self._lease_namespace if in_lease_namespace else None
            review = V1SelfSubjectAccessReview(
                api_version="authorization.k8s.io/v1",
                kind="SelfSubjectAccessReview",
                spec=V1SelfSubjectAccessReviewSpec(
                    resource_attributes=V1ResourceAttributes(
                        group=group,
                        resource=plural,
                        subresource=sub or None,
                        verb=verb,
                        namespace=namespace,
                    )
                ),
            )
            result = await self._authz.create_self_subject_access_review(review)
            if not (result.status and result.status.allowed):
                where = f" in {namespace}" if namespace else ""
                missing.append(f"{verb} {resource}{'.' + group if group else ''}{where}")
        self._result = (time.monotonic(), missing)
        return missing


def lease_namespace(settings: Settings) -> str:
    return settings.controller.lease_namespace or os.environ.get("POD_NAMESPACE") or "default"


def create_app(settings: Settings | None = None, key_manager: KeyManager | None = None) -> KamusApp:
    settings = settings or Settings()
    metrics = ControllerMetrics()
    keys = key_manager or build_key_manager(settings, observer=metrics)
    state: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            api = await create_api_client(settings.kubernetes)
        except ConfigurationError as exc:
            log.error("the controller cannot start: %s", exc)
            raise
        leases_in = lease_namespace(settings)
        controller = ControllerRunner(
            api, keys, settings.controller, metrics, lease_namespace=leases_in
        )
        task = asyncio.create_task(controller.run())
        state.update(controller=controller, access=AccessCheck(api, leases_in))
        try:
            with cache_cleared_on_sighup(keys):
                yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            with suppress(TimeoutError):
                await asyncio.wait_for(controller.release(), timeout=5)
            await api.close()

    app = create_base_app(
        service="controller",
        title="Kamus controller",
        description="Turns KamusSecrets into Kubernetes Secrets.",
        settings=settings,
        metrics=metrics,
        audited_paths=(),
        lifespan=lifespan,
        plain_healthz=False,  # the controller's also checks its RBAC
    )

    @app.get("/healthz", tags=["health"], summary="May this controller do its work?")
    async def healthz() -> JSONResponse:
        access = state.get("access")
        if not isinstance(access, AccessCheck):
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            missing = await access.missing()
        except (ApiException, OSError, TimeoutError) as exc:
            return JSONResponse({"status": "unknown", "error": type(exc).__name__}, 503)
        if missing:
            return JSONResponse({"status": "forbidden", "missing": missing}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", tags=["health"], summary="Running (leading or standing by)")
    async def readyz() -> JSONResponse:
        controller = state.get("controller")
        if not isinstance(controller, ControllerRunner):
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse(
            {"status": "ready", "leader": controller.leading, "identity": controller.identity}
        )

    return app
