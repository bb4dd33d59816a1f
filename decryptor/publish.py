"""The decryptor keeps the signed public key bundle in a ConfigMap, for the encryptor and for users.

``Decryptor__PublicKeysConfigMap`` names it (the chart sets ``<release>-public-keys``); empty, the
default, publishes nothing. The ConfigMap lives in ``Decryptor__PublicKeysNamespace``, else the
pod's own namespace. Users read it with plain ``kubectl`` (no service proxy); the chart mounts it
into the encryptor (``Encryptor__SealingKeysFile``), which so needs no master key.

One decryptor replica writes: the holder of the Lease ``<configmap>-publisher``
(kamus/server/lease.py). Every ``Decryptor__PublicKeysIntervalSeconds`` it derives the bundle
(kamus.server.sealing.export_bundle) and writes it only when what it says changed: its keys,
anchor, links or cluster, not its issue time or signature. A ConfigMap that is missing, or holds
no valid bundle, is written again. A failure is logged and retried at the next round; it never
makes the decryptor unready, since decrypting does not depend on it.

The chart does not render the ConfigMap, so GitOps tools neither prune nor overwrite it
(docs/offline-encryption.md).
"""

import asyncio
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from kubernetes.aio.client import ApiClient
from kubernetes.aio.client.exceptions import ApiException
from prometheus_client import Counter

from crypto import KeyManager, bundle
from crypto.errors import KeyManagerUnavailable
from kamus.server.errors import ConfigurationError
from kamus.server.kube import create_api_client, request_json
from kamus.server.metrics import Metrics
from kamus.server.sealing import export_bundle, sealing_masters
from kamus.server.settings import Settings

log = logging.getLogger(__name__)

DATA_KEY = "keys.json"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "kamus-decryptor"
ANCHOR_ANNOTATION = "kamus.soluto.com/anchor"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# What a bundle says apart from when it was signed: a change of these alone is not worth a write.
UNSIGNED_FIELDS = ("issued", "sig")

Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


def publish_namespace(
    settings: Settings,
    *,
    namespace_file: Path = SERVICE_ACCOUNT_NAMESPACE,
    environ: Mapping[str, str] = os.environ,
) -> str | None:
    """Where the ConfigMap goes: the setting, else the pod's namespace (its service account's
    mounted namespace file, else ``POD_NAMESPACE``); None when there is no telling."""
    if settings.decryptor.public_keys_namespace:
        return settings.decryptor.public_keys_namespace
    try:
        mounted = namespace_file.read_text(encoding="utf-8").strip()
    except OSError:
        mounted = ""
    return mounted or environ.get("POD_NAMESPACE") or None


def content(text: str) -> dict[str, object] | None:
    """What a bundle says, without when it was signed; None if it is not a JSON object."""
    try:
        document = json.loads(text)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    return {k: v for k, v in document.items() if k not in UNSIGNED_FIELDS}


@dataclass(frozen=True)
class PublisherLease:
    """The publisher's Lease: its name and timing (whole seconds, as a Lease stores them)."""

    lease_name: str
    lease_duration_seconds: int = 15
    renew_deadline_seconds: int = 10
    retry_period_seconds: int = 2


class Publisher:
    """Keeps ``keys.json`` of one ConfigMap equal to the bundle the provider settings make."""

    def __init__(
        self,
        api: ApiClient,
        settings: Settings,
        namespace: str,
        counter: Counter,
        *,
        identity: str | None = None,
        lease: PublisherLease | None = None,
        clock: Clock = _now,
        key_manager: KeyManager | None = None,
    ) -> None:
        self._api = api
        self._settings = settings
        self._key_manager = key_manager  # the KMS modes: it unwraps the sealing seed
        self.name = settings.decryptor.public_keys_config_map
        self.namespace = namespace
        self.counter = counter
        self._clock = clock
        self._interval = settings.decryptor.public_keys_interval_seconds
        self.identity = identity or f"{socket.gethostname()}-{os.getpid()}"
        # Here, not at the top: a decryptor that does not publish (the default) never loads the
        # client's leader election modules (docs/performance.md: the memory budget).
        from kamus.server.lease import LeaderElector

        self._election = LeaderElector(
            api,
            lease or PublisherLease(f"{self.name}-publisher"),
            identity=self.identity,
            namespace=namespace,
            lead=self._lead,
            stand_down=self._stand_down,
        )

    @property
    def leading(self) -> bool:
        return self._election.leading

    async def run(self) -> None:
        """Forever: wait for the Lease, publish every interval while holding it."""
        await self._election.run()

    async def release(self) -> None:
        """Hand the Lease over on shutdown; call it after ``run`` is cancelled."""
        await self._election.release()

    async def _lead(self) -> None:
        log.info(
            "publishing the public key bundle in ConfigMap %s/%s as %s",
            self.namespace,
            self.name,
            self.identity,
        )
        while True:
            await self.publish_once()
            await asyncio.sleep(self._interval)

    def _stand_down(self) -> None:
        log.info("%s no longer publishes the public key bundle", self.identity)

    async def publish_once(self) -> str:
        """One round: the outcome, also counted. Never raises but for cancellation."""
        where = f"{self.namespace}/{self.name}"
        try:
            outcome = await self._publish()
        except ConfigurationError as exc:
            outcome = "error"
            log.error("cannot make the public key bundle for ConfigMap %s: %s", where, exc)
        except KeyManagerUnavailable as exc:
            outcome = "error"
            log.warning("the public key bundle for ConfigMap %s: %s", where, exc.reason)
        except ApiException as exc:
            outcome = "conflict" if exc.status == 409 else "error"
            if exc.status == 409:
                log.info("ConfigMap %s changed while it was written; re-read next round", where)
            elif exc.status == 403:
                log.error(
                    "the decryptor may not write ConfigMap %s: grant its service account get, "
                    "create, update on that ConfigMap (the chart's Role does)",
                    where,
                )
            else:
                log.warning(
                    "ConfigMap %s: the apiserver answered %s %s", where, exc.status, exc.reason
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            outcome = "error"
            log.warning("ConfigMap %s: apiserver unreachable (%s)", where, type(exc).__name__)
        except Exception as exc:  # the round must end; the next one retries
            outcome = "error"
            log.error("ConfigMap %s not published: %s", where, type(exc).__name__)
        self.counter.labels(outcome).inc()
        return outcome

    async def _publish(self) -> str:
        # Key derivation (ML-KEM key generation included) and signing: off the event loop.
        masters = await sealing_masters(self._settings, self._key_manager)
        text = await asyncio.to_thread(export_bundle, self._settings, self._clock(), masters)
        anchor = bundle.load(text).anchor
        collection = f"/api/v1/namespaces/{self.namespace}/configmaps"
        try:
            current = await request_json(self._api, "GET", f"{collection}/{self.name}")
        except ApiException as exc:
            if exc.status != 404:
                raise
            await request_json(self._api, "POST", collection, self._new(text, anchor))
            log.info("created ConfigMap %s/%s with anchor %s", self.namespace, self.name, anchor)
            return "created"
        if self._current(current, text, anchor):
            return "unchanged"
        meta = _mapping(current.get("metadata"))
        meta["labels"] = {**_mapping(meta.get("labels")), MANAGED_BY_LABEL: MANAGED_BY}
        meta["annotations"] = {**_mapping(meta.get("annotations")), ANCHOR_ANNOTATION: anchor}
        current["metadata"] = meta
        current["data"] = {**_mapping(current.get("data")), DATA_KEY: text}
        # resourceVersion as read: a concurrent writer makes this a 409, not a lost update.
        await request_json(self._api, "PUT", f"{collection}/{self.name}", current)
        log.info("updated ConfigMap %s/%s with anchor %s", self.namespace, self.name, anchor)
        return "updated"

    @staticmethod
    def _current(config_map: Mapping[str, object], text: str, anchor: str) -> bool:
        """Whether the ConfigMap already holds a valid bundle saying what ``text`` says."""
        stored = _mapping(config_map.get("data")).get(DATA_KEY)
        if not isinstance(stored, str):
            return False
        try:
            bundle.load(stored)
        except bundle.BundleError:
            return False
        meta = _mapping(config_map.get("metadata"))
        labelled = _mapping(meta.get("labels")).get(MANAGED_BY_LABEL) == MANAGED_BY
        annotated = _mapping(meta.get("annotations")).get(ANCHOR_ANNOTATION) == anchor
        return labelled and annotated and content(stored) == content(text)

    def _new(self, text: str, anchor: str) -> dict[str, object]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {MANAGED_BY_LABEL: MANAGED_BY},
                "annotations": {ANCHOR_ANNOTATION: anchor},
            },
            "data": {DATA_KEY: text},
        }


def _mapping(value: object) -> dict[str, object]:
    return dict(value) if isinstance(value, dict) else {}


@asynccontextmanager
async def publishing(
    settings: Settings, metrics: Metrics, key_manager: KeyManager | None = None
) -> AsyncIterator[Publisher | None]:
    """The publisher running in the background for as long as the context lasts (the decryptor's
    lifespan); None when it is off or cannot run, which is logged and leaves decrypting as is."""
    name = settings.decryptor.public_keys_config_map
    if not name:
        yield None
        return
    counter = metrics.public_keys_published
    namespace = publish_namespace(settings)
    if namespace is None:
        counter.labels("error").inc()
        log.error(
            "the public key bundle is not published: no namespace for ConfigMap %s; set "
            "Decryptor__PublicKeysNamespace (or POD_NAMESPACE)",
            name,
        )
        yield None
        return
    try:
        api = await create_api_client(settings.kubernetes)
    except ConfigurationError as exc:
        counter.labels("error").inc()
        log.error("the public key bundle is not published: %s", exc)
        yield None
        return
    publisher = Publisher(api, settings, namespace, counter, key_manager=key_manager)
    task = asyncio.create_task(publisher.run())
    try:
        yield publisher
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        with suppress(TimeoutError):
            await asyncio.wait_for(publisher.release(), timeout=5)
        await api.close()
