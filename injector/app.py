"""``kamus serve injector``: the mutating admission webhook that adds Kamus's init container.

``POST /mutate`` answers the kube-apiserver's ``admission.k8s.io/v1`` AdmissionReview for pod
CREATE with a JSON patch (injector/pods.py), and ``/healthz``, ``/readyz`` and ``/metrics`` as
the other services. It serves HTTPS always: from ``Server__TlsCertFile`` (cert-manager) or, by
default, from a CA it keeps itself (injector/tls.py).

Why it is safe to register with ``failurePolicy: Fail`` (docs/injection.md): the webhook's
``objectSelector`` sends it only pods labelled ``kamus.soluto.com/inject: "true"``, only CREATE
(never UPDATE, which wedged vault-k8s pods), and it answers from memory, never calling the
apiserver or the decryptor while a pod waits.
"""

import asyncio
import base64
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from injector.pods import decide, service_account
from kamus.server.errors import ConfigurationError
from kamus.server.kube import create_api_client
from kamus.server.metrics import InjectorMetrics
from kamus.server.settings import Settings
from kamus.server.web.app import KamusApp, create_base_app
from kamus.server.web.middleware import annotate

log = logging.getLogger(__name__)

MUTATE_PATH = "/mutate"


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class AdmissionRequest(_Loose):
    uid: str = Field(min_length=1)
    kind: dict[str, str]
    namespace: str = ""
    operation: str
    object: dict[str, Any] | None = None
    dry_run: bool = Field(False, alias="dryRun")


class AdmissionReview(_Loose):
    api_version: Literal["admission.k8s.io/v1"] = Field(alias="apiVersion")
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest


def _answer(uid: str, **response: Any) -> JSONResponse:
    return JSONResponse(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": uid, **response},
        }
    )


def _validate(settings: Settings) -> None:
    s = settings.injector
    missing = [
        name
        for name, value in (
            ("Injector__Image", s.image),
            ("Injector__DecryptorUrl", s.decryptor_url),
        )
        if not value
    ]
    if missing:
        raise ConfigurationError(
            f"set {' and '.join(missing)}: the image and the decryptor URL of the injected "
            "kamus-init container (the Helm chart sets both)"
        )


def decryptor_ca(settings: Settings) -> str | None:
    """The PEM of ``Injector__DecryptorCaFile``, checked, read once at start."""
    path = settings.injector.decryptor_ca_file
    if path is None:
        return None
    try:
        text = path.read_text(encoding="ascii")
        ssl.create_default_context(cadata=text)
    except (OSError, UnicodeDecodeError, ssl.SSLError, ValueError):
        raise ConfigurationError(
            f"Injector__DecryptorCaFile {path} cannot be read as PEM CA certificates"
        ) from None
    return text


def injector_namespace(settings: Settings) -> str | None:
    return settings.injector.namespace or os.environ.get("POD_NAMESPACE") or None


def create_app(settings: Settings | None = None) -> KamusApp:
    settings = settings or Settings()
    _validate(settings)
    ca = decryptor_ca(settings)
    metrics = InjectorMetrics()
    built_in_tls = settings.server.tls_cert_file is None
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not built_in_tls:
            yield
            return
        # Imported here: the cert-manager mode never loads the leader election modules.
        from injector.tls import CertificateKeeper, cancel

        namespace = injector_namespace(settings)
        if namespace is None:
            raise ConfigurationError(
                "the injector's built-in TLS needs a namespace for its CA Secret: set "
                "Injector__Namespace or POD_NAMESPACE (or use cert-manager: Server__TlsCertFile)"
            )
        api = await create_api_client(settings.kubernetes)
        keeper = CertificateKeeper(api, settings.injector, namespace, metrics=metrics)
        try:
            await keeper.start()
        except BaseException:
            await api.close()
            raise
        state["keeper"] = keeper
        tasks = [
            asyncio.create_task(keeper.keep_leaf()),
            asyncio.create_task(keeper.run_election()),
        ]
        try:
            yield
        finally:
            for task in tasks:
                await cancel(task)
            with suppress(TimeoutError):
                await asyncio.wait_for(keeper.release(), timeout=5)
            await api.close()

    app = create_base_app(
        service="injector",
        title="Kamus injector",
        description="The admission webhook that adds Kamus's init container to opted-in pods.",
        settings=settings,
        metrics=metrics,
        audited_paths=(MUTATE_PATH,),
        lifespan=lifespan,
    )

    @app.get("/readyz", tags=["health"], summary="Serving with a certificate")
    async def readyz() -> JSONResponse:
        keeper = state.get("keeper")
        if built_in_tls and keeper is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        body: dict[str, Any] = {"status": "ready"}
        if keeper is not None:
            leaf = keeper.serving.leaf
            body.update(
                certificateExpires=leaf.not_after.isoformat() if leaf else None,
                leader=keeper.leading,
            )
        return JSONResponse(body)

    @app.post(
        MUTATE_PATH,
        tags=["admission"],
        summary="Inject kamus-init into an opted-in pod (AdmissionReview v1)",
    )
    async def mutate(review: AdmissionReview, request: Request) -> JSONResponse:
        admission = review.request
        pod = admission.object or {}
        meta = pod.get("metadata") or {}
        annotate(
            request,
            namespace=admission.namespace,
            service_account=service_account(pod),
            pod=meta.get("name") or meta.get("generateName") or "",
            dry_run=admission.dry_run,
        )
        if admission.operation != "CREATE" or admission.kind.get("kind") != "Pod":
            # The chart registers pod CREATE only; anything else is let through untouched.
            metrics.injector_admissions.labels("skipped").inc()
            annotate(request, injection="skipped", reason="not a pod creation")
            return _answer(admission.uid, allowed=True)
        decision = decide(pod, admission.namespace, settings, ca)
        metrics.injector_admissions.labels(decision.outcome).inc()
        annotate(request, injection=decision.outcome)
        if decision.reason:
            annotate(request, reason=decision.reason)
        if decision.outcome == "denied":
            return _answer(
                admission.uid,
                allowed=False,
                status={"code": 400, "reason": "BadRequest", "message": decision.reason},
            )
        if decision.patch is None:
            return _answer(admission.uid, allowed=True)
        patch = base64.b64encode(json.dumps(decision.patch).encode()).decode()
        return _answer(admission.uid, allowed=True, patchType="JSONPatch", patch=patch)

    return app
