"""The injector's built-in TLS: no manual step, no restart, no Helm ``genCA``.

* **The CA** lives in the Secret ``Injector__CaSecretName`` (``ca.crt``, ``ca.key``). The first
  replica to start makes it; a replica that loses the race to create it (409) reads the winner's.
* **Each replica's leaf** is issued from it in memory for the Service's names, loaded into the
  one ``SSLContext`` uvicorn serves with (:data:`SERVING`), and renewed at two thirds of its
  lifetime (``Injector__LeafValiditySeconds``). A new leaf is loaded into the same context from
  the event loop, between handshakes: connections in flight keep theirs, the next handshake gets
  the new one, nothing restarts. The key never touches a disk (an anonymous memory file).
* **The caBundle** of the webhook configuration ``Injector__WebhookName`` is kept equal to the CA
  by one replica, the holder of the Lease ``Injector__LeaseName`` (kamus/server/lease.py). It
  checks it at start and every few minutes, so a ``helm upgrade`` or a GitOps sync that drops the
  bundle is repaired within one round (Argo CD: ignore the difference; docs/injection.md).
"""

import asyncio
import base64
import datetime
import logging
import os
import socket
import ssl
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

import aiohttp
from kubernetes.aio.client import ApiClient
from kubernetes.aio.client.exceptions import ApiException

from injector.certs import Authority, CertificateError, Leaf
from kamus.server.kube import request_json
from kamus.server.metrics import InjectorMetrics
from kamus.server.settings import InjectorSettings

log = logging.getLogger(__name__)

Clock = Callable[[], datetime.datetime]
NETWORK_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)
JSON_PATCH = "application/json-patch+json"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class ServingContext:
    """The server-side ``SSLContext`` the injector serves with; empty until a leaf is loaded."""

    def __init__(self) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.leaf: Leaf | None = None

    def load(self, leaf: Leaf) -> None:
        # OpenSSL loads a chain from files only: an anonymous memory file, never on disk.
        fd = os.memfd_create("kamus-injector-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, leaf.cert_pem + leaf.key_pem)
            path = f"/proc/self/fd/{fd}"
            # Tried on a scratch context first: a failed load into the live one can leave it
            # with no usable key (kamus/server/tls.py).
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(path)
            self.context.load_cert_chain(path)
        finally:
            os.close(fd)
        self.leaf = leaf


# One per process: the injector runs a single worker (it elects a leader among replicas).
SERVING = ServingContext()


@dataclass(frozen=True)
class BuiltInTls:
    """uvicorn's ``ssl_context_factory`` when no certificate files are configured."""

    def __call__(self, config: object, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return SERVING.context


def hosts(settings: InjectorSettings, namespace: str) -> list[str]:
    """The names the apiserver may call the webhook by (it uses ``<svc>.<ns>.svc``)."""
    service = settings.service_name
    names = [
        f"{service}.{namespace}.svc",
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc.cluster.local",
    ]
    return names + [h for h in settings.extra_hosts if h not in names]


class CertificateKeeper:
    """The CA from its Secret, this replica's leaf, and (as leader) the webhook's caBundle."""

    def __init__(
        self,
        api: ApiClient,
        settings: InjectorSettings,
        namespace: str,
        *,
        serving: ServingContext = SERVING,
        clock: Clock = _now,
        identity: str | None = None,
        bundle_interval_seconds: float = 300.0,
        metrics: InjectorMetrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._api = api
        self._settings = settings
        self.namespace = namespace
        self.serving = serving
        self._clock = clock
        self.authority: Authority | None = None
        self.identity = identity or f"{socket.gethostname()}-{os.getpid()}"
        self._bundle_interval = bundle_interval_seconds
        from kamus.server.lease import LeaderElector

        self._election = LeaderElector(
            api,
            _Lease(settings.lease_name),
            identity=self.identity,
            namespace=namespace,
            lead=self._keep_bundle,
            stand_down=lambda: log.info("%s no longer keeps the caBundle", self.identity),
        )

    @property
    def leading(self) -> bool:
        return self._election.leading

    # -- the CA and the leaf -------------------------------------------------------------------

    async def start(self, timeout_seconds: float = 60.0) -> None:
        """The CA and a first leaf, retried until ``timeout_seconds``: uvicorn opens its socket
        only after this, so no handshake ever meets a context without a certificate."""
        deadline = asyncio.get_running_loop().time() + timeout_seconds
        delay = 0.5
        while True:
            try:
                self.authority = await self._authority()
                break
            except (ApiException, *NETWORK_ERRORS) as exc:
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise CertificateError(
                        f"cannot read or create the CA Secret {self._where()}: {_why(exc)}"
                    ) from None
                log.warning("the CA Secret %s: %s; retrying", self._where(), _why(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.renew()

    def renew(self) -> Leaf:
        assert self.authority is not None
        validity = datetime.timedelta(seconds=self._settings.leaf_validity_seconds)
        leaf = self.authority.issue(hosts(self._settings, self.namespace), self._clock(), validity)
        self.serving.load(leaf)
        if self._metrics is not None:
            self._metrics.injector_certificate_expiry.set(leaf.not_after.timestamp())
        log.info("serving a new certificate valid until %s", leaf.not_after.isoformat())
        return leaf

    async def keep_leaf(self) -> None:
        """Forever: renew the leaf at two thirds of its lifetime."""
        while True:
            leaf = self.serving.leaf
            assert leaf is not None
            wait = (leaf.renew_at() - self._clock()).total_seconds()
            await asyncio.sleep(max(wait, 0.5))
            try:
                self.renew()
            except (ValueError, ssl.SSLError, OSError) as exc:  # retried; the old leaf is valid
                log.error("could not renew the serving certificate: %s", type(exc).__name__)

    def _where(self) -> str:
        return f"{self.namespace}/{self._settings.ca_secret_name}"

    async def _authority(self) -> Authority:
        path = f"/api/v1/namespaces/{self.namespace}/secrets/{self._settings.ca_secret_name}"
        try:
            secret = await request_json(self._api, "GET", path)
        except ApiException as exc:
            if exc.status != 404:
                raise
        else:
            return self._stored(secret)
        authority = Authority.new(self._clock())
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": self._settings.ca_secret_name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "kamus-injector"},
            },
            "type": "Opaque",
            "data": {
                "ca.crt": base64.b64encode(authority.cert_pem).decode(),
                "ca.key": base64.b64encode(authority.key_pem).decode(),
            },
        }
        try:
            await request_json(
                self._api, "POST", f"/api/v1/namespaces/{self.namespace}/secrets", body
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
            log.info("another replica made the CA first; using it")
            return self._stored(await request_json(self._api, "GET", path))
        log.info("made the injector's CA in Secret %s", self._where())
        return authority

    def _stored(self, secret: dict[str, object]) -> Authority:
        data = secret.get("data")
        if not isinstance(data, dict) or "ca.crt" not in data or "ca.key" not in data:
            raise CertificateError(
                f"Secret {self._where()} holds no ca.crt and ca.key; delete it and the "
                "injector makes a new CA"
            )
        # The apiserver stores only valid base64 in a Secret's data.
        cert, key = base64.b64decode(data["ca.crt"]), base64.b64decode(data["ca.key"])
        try:
            return Authority.load(cert, key, self._clock())
        except CertificateError as exc:
            raise CertificateError(
                f"Secret {self._where()}: {exc}; delete it and the injector makes a new CA"
            ) from None

    # -- the caBundle ----------------------------------------------------------------------------

    async def run_election(self) -> None:
        await self._election.run()

    async def release(self) -> None:
        await self._election.release()

    async def _keep_bundle(self) -> None:
        log.info("%s keeps the caBundle of %s", self.identity, self._settings.webhook_name)
        while True:
            await self.patch_bundle_once()
            await asyncio.sleep(self._bundle_interval)

    async def patch_bundle_once(self) -> str:
        """One check of the webhook configuration's caBundle: ``patched``, ``unchanged`` or
        ``error`` (logged and counted; never raises but for cancellation)."""
        outcome = await self._patch_bundle()
        if self._metrics is not None:
            self._metrics.injector_ca_bundle_patches.labels(outcome).inc()
        return outcome

    async def _patch_bundle(self) -> str:
        assert self.authority is not None
        name = self._settings.webhook_name
        path = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}"
        wanted = base64.b64encode(self.authority.cert_pem).decode()
        try:
            config = await request_json(self._api, "GET", path)
            webhooks = config.get("webhooks")
            if not isinstance(webhooks, list):
                webhooks = []
            operations: list[object] = []
            for index, hook in enumerate(webhooks):
                client = hook.get("clientConfig") or {}
                if client.get("caBundle") == wanted:
                    continue
                # Guards against a concurrent reorder: the patch fails rather than misplaces.
                operations.append(
                    {"op": "test", "path": f"/webhooks/{index}/name", "value": hook["name"]}
                )
                operations.append(
                    {
                        "op": "add",
                        "path": f"/webhooks/{index}/clientConfig/caBundle",
                        "value": wanted,
                    }
                )
            if not operations:
                return "unchanged"
            await request_json(self._api, "PATCH", path, operations, content_type=JSON_PATCH)
        except ApiException as exc:
            if exc.status == 404:
                log.error(
                    "the webhook configuration %s does not exist; is Injector__WebhookName right?",
                    name,
                )
            elif exc.status == 403:
                log.error(
                    "the injector may not patch the webhook configuration %s: grant get and patch "
                    "on mutatingwebhookconfigurations (the chart's ClusterRole does)",
                    name,
                )
            else:
                log.warning("patching the caBundle of %s: %s", name, _why(exc))
            return "error"
        except NETWORK_ERRORS as exc:
            log.warning("patching the caBundle of %s: %s", name, _why(exc))
            return "error"
        log.info("set the caBundle of %s", name)
        return "patched"


@dataclass(frozen=True)
class _Lease:
    lease_name: str
    lease_duration_seconds: int = 15
    renew_deadline_seconds: int = 10
    retry_period_seconds: int = 2


def _why(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"the apiserver answered {exc.status} {exc.reason}"
    return f"apiserver unreachable ({type(exc).__name__})"


async def cancel(task: "asyncio.Task[None]") -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
