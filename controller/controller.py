"""The running controller: informers, a work queue, leader election and the Kubernetes calls.

Only the leader reconciles. It lists and watches KamusSecrets (and the Secrets they own, so a
Secret deleted by hand comes back at once), queues each changed KamusSecret once, and also
requeues every one each ``ReconciliationIntervalInSeconds``. A watch resumes from its last
resourceVersion, relists on 410 Gone, backs off on apiserver errors and never exits the process:
Kamus's controller crash-looped on a closed stream.
"""

import asyncio
import json
import logging
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
from kubernetes.aio.client import (
    ApiClient,
    CoordinationV1Api,
    CoreV1Api,
    CoreV1Event,
    CustomObjectsApi,
    V1DeleteOptions,
    V1Lease,
    V1ObjectMeta,
    V1Preconditions,
    V1Secret,
)
from kubernetes.aio.client.exceptions import ApiException
from kubernetes.aio.leaderelection.electionconfig import Config as ElectionConfig
from kubernetes.aio.leaderelection.leaderelection import LeaderElection
from kubernetes.aio.leaderelection.resourcelock.leaselock import LeaseLock
from kubernetes.aio.watch import Watch

from controller import reconcile
from controller.reconcile import GROUP, KIND, PLURAL, VERSION, Condition, Policy
from crypto import DecryptionError, KeyManager, MalformedCiphertext
from crypto.errors import KeyManagerUnavailable
from kamus.server.logs import audit, log_fields
from kamus.server.metrics import ControllerMetrics
from kamus.server.settings import ControllerSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
Key = tuple[str, str]  # (namespace, name)


class TokenBucket:
    """Client-side QPS/burst limit, so a resync of thousands of objects cannot flood the
    apiserver (and so users are not stuck behind a hard-coded QPS 5, as with sealed-secrets)."""

    def __init__(self, qps: float, burst: int) -> None:
        self._rate = qps
        self._capacity = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def take(self) -> None:
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            if self._tokens < 1:
                await self.sleep((1 - self._tokens) / self._rate)
                self._stamp = time.monotonic()
                self._tokens = 1
            self._tokens -= 1


class Backoff:
    """Jittered exponential backoff, reset after a success."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self._first, self._cap, self._next = first, cap, first

    def reset(self) -> None:
        self._next = self._first

    async def wait(self) -> None:
        await asyncio.sleep(random.uniform(0.5, 1.0) * self._next)  # noqa: S311 - jitter
        self._next = min(self._next * 2, self._cap)


async def _json(response: Any) -> Any:
    """The JSON of a raw (not preloaded) response, or ApiException as the client raises it."""
    body = await response.read()  # always read: it releases the pooled connection
    if response.status >= 400:
        raise ApiException(status=response.status, reason=response.reason)
    return json.loads(body)


def _namespaced(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


class _Lease(LeaseLock):
    """The client's LeaseLock, fixed to survive a real apiserver and a flaky network.

    kubernetes 37's ``create`` passes ``pretty=True``, which its own request validation rejects,
    so a controller on a fresh cluster could never create the Lease and never lead. And a network
    error in ``get`` or ``update`` escaped the election loop without cancelling the leader's work.
    Here both report failure, which the election retries each period.
    """

    async def get(self, name: str, namespace: str) -> Any:
        try:
            return await super().get(name, namespace)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return False, ApiException(status=0, reason=type(exc).__name__)

    async def create(self, name: str, namespace: str, election_record: Any) -> bool:
        body = V1Lease(metadata=V1ObjectMeta(name=name), spec=self.update_lease(election_record))
        try:
            await self.api_instance.create_namespaced_lease(namespace, body)
        except ApiException as exc:
            log.warning("could not create the Lease %s/%s: %s", namespace, name, exc.status)
            return False
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
        return True

    async def update(self, name: str, namespace: str, updated_record: Any) -> bool:
        try:
            return bool(await super().update(name, namespace, updated_record))
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False


class KamusSecretController:
    def __init__(
        self,
        api: ApiClient,
        keys: KeyManager,
        settings: ControllerSettings,
        metrics: ControllerMetrics,
        *,
        lease_namespace: str,
    ) -> None:
        self._api = api
        self._core = CoreV1Api(api)
        self._custom = CustomObjectsApi(api)
        self._keys = keys
        self._settings = settings
        self._policy = Policy(
            deny_default_service_account=settings.deny_default_service_account,
            denied_types=tuple(settings.denied_secret_types),
            denied_metadata_domains=tuple(settings.denied_metadata_prefixes),
        )
        self._metrics = metrics
        self._lease_namespace = lease_namespace
        self.identity = settings.identity or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self._bucket = TokenBucket(settings.qps, settings.burst)
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._pending: set[Key] = set()
        self._known: set[Key] = set()
        self.leading = False

    async def call(self, request: Callable[[], Awaitable[T]]) -> T:
        """Every API call of the reconciler passes the rate limit."""
        await self._bucket.take()
        return await request()

    # -- leadership ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Forever: wait to lead, reconcile while leading, then stand by again."""
        s = self._settings
        while True:
            election = LeaderElection(
                ElectionConfig(
                    _Lease(s.lease_name, self._lease_namespace, self.identity, self._api),
                    lease_duration=s.lease_duration_seconds,
                    renew_deadline=s.renew_deadline_seconds,
                    retry_period=s.retry_period_seconds,
                    onstarted_leading=self._lead,
                    onstopped_leading=self._stopped_leading,
                )
            )
            try:
                await election.run()
            except (ApiException, aiohttp.ClientError, OSError, TimeoutError, ValueError):
                log.warning("leader election failed; retrying", exc_info=True)
            finally:
                if self.leading:  # the election ended abnormally while leading: stand down
                    await self._stopped_leading()
            await asyncio.sleep(s.retry_period_seconds)

    async def release(self) -> None:
        """Hand the Lease over on shutdown, so a standby takes over now, not at its expiry.

        Call it after ``run`` is cancelled, or the election would renew the Lease again."""
        leases = CoordinationV1Api(self._api)
        name, namespace = self._settings.lease_name, self._lease_namespace
        try:
            lease = await leases.read_namespaced_lease(name, namespace)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            await leases.replace_namespaced_lease(name, namespace, lease)
            log.info("%s released the lease", self.identity)
        except (ApiException, aiohttp.ClientError, OSError, TimeoutError):
            log.warning("could not release the lease; a standby takes over when it expires")

    async def _lead(self) -> None:
        self.leading = True
        self._metrics_leader(True)
        log.info("leading as %s: reconciling KamusSecrets", self.identity)
        tasks = [
            asyncio.create_task(self._inform_kamus_secrets()),
            asyncio.create_task(self._inform_secrets()),
            asyncio.create_task(self._resync()),
            *(asyncio.create_task(self._work()) for _ in range(self._settings.workers)),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _stopped_leading(self) -> None:
        self.leading = False
        self._metrics_leader(False)
        self._known.clear()
        log.warning("%s lost the lease; standing by", self.identity)

    def _metrics_leader(self, leading: bool) -> None:
        self._metrics.controller_leader.set(1 if leading else 0)

    # -- informers -----------------------------------------------------------------------------

    async def _inform(
        self,
        what: str,
        list_call: Callable[..., Awaitable[Any]],
        list_raw: Callable[[], Awaitable[Any]],
        on_event: Callable[[str, Mapping[str, Any]], None],
        on_list: Callable[[list[Mapping[str, Any]]], None],
        *args: str,
        label_selector: str | None = None,
    ) -> None:
        """List, then watch from the list's resourceVersion; resume, relist or back off."""
        backoff = Backoff()
        while True:
            try:
                body = await _json(await self.call(lambda: list_raw()))
                on_list(body.get("items") or [])
                version = body["metadata"]["resourceVersion"]
                while True:  # each pass is one watch request; a closed stream just resumes
                    watch = Watch()
                    stream = watch.stream(
                        list_call,
                        *args,
                        resource_version=version,
                        timeout_seconds=self._settings.watch_timeout_seconds,
                        **({"label_selector": label_selector} if label_selector else {}),
                    )
                    async for event in stream:
                        backoff.reset()
                        on_event(event["type"], event["raw_object"])
                    version = watch.resource_version or version
            except ApiException as exc:
                if exc.status == 410:
                    log.info("%s watch expired (410 Gone); listing again", what)
                    continue
                log.warning("%s watch failed: %s %s; retrying", what, exc.status, exc.reason)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as exc:
                log.warning("%s watch failed (%s); retrying", what, type(exc).__name__)
            await backoff.wait()

    async def _inform_kamus_secrets(self) -> None:
        def on_list(items: list[Mapping[str, Any]]) -> None:
            self._known = {_namespaced(item) for item in items}
            for key in self._known:
                self.enqueue(key)
            self._metrics.controller_kamus_secrets.set(len(self._known))

        def on_event(kind: str, obj: Mapping[str, Any]) -> None:
            key = _namespaced(obj)
            if kind == "DELETED":
                self._known.discard(key)  # its Secret goes with it, by ownerReference
            elif kind in ("ADDED", "MODIFIED"):
                self._known.add(key)
                self.enqueue(key)
            self._metrics.controller_kamus_secrets.set(len(self._known))

        await self._inform(
            "KamusSecret",
            self._custom.list_cluster_custom_object,
            lambda: self._custom.list_cluster_custom_object_without_preload_content(
                GROUP, VERSION, PLURAL
            ),
            on_event,
            on_list,
            GROUP,
            VERSION,
            PLURAL,
        )

    async def _inform_secrets(self) -> None:
        """Owned Secrets changed or deleted by hand are put back at once, not at the resync.

        Only the Secrets this controller wrote (by their label): listing every Secret of the
        cluster would stream every value in it to this process. A Secret whose label is removed
        by hand leaves the selection, which a watch reports as DELETED: it is put back too."""

        def on_event(kind: str, obj: Mapping[str, Any]) -> None:
            owner = reconcile.owner_of(obj)
            if owner is not None and kind in ("MODIFIED", "DELETED"):
                self.enqueue(owner)

        selector = reconcile.MANAGED_SELECTOR
        await self._inform(
            "Secret",
            self._core.list_secret_for_all_namespaces,
            lambda: self._core.list_secret_for_all_namespaces_without_preload_content(
                label_selector=selector
            ),
            on_event,
            lambda items: None,
            label_selector=selector,
        )

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reconciliation_interval_seconds)
            for key in list(self._known):
                self.enqueue(key)

    # -- the queue -----------------------------------------------------------------------------

    def enqueue(self, key: Key) -> None:
        if key not in self._pending:
            self._pending.add(key)
            self._queue.put_nowait(key)

    def _retry_later(self, key: Key, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.enqueue, key)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._pending.discard(key)
            start = time.perf_counter()
            try:
                outcome = await self.reconcile(*key)
            except KeyManagerUnavailable as exc:
                outcome = "unavailable"
                log.warning("%s/%s: key manager unavailable (%s)", *key, exc.reason)
                self._retry_later(key, self._settings.retry_period_seconds * 2)
            except ApiException as exc:
                outcome = "error"
                log.warning("%s/%s: apiserver answered %s %s", *key, exc.status, exc.reason)
                self._retry_later(key, 1.0 if exc.status == 409 else 5.0)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                outcome = "error"
                log.warning("%s/%s: apiserver unreachable (%s)", *key, type(exc).__name__)
                self._retry_later(key, 5.0)
            self._metrics.controller_reconciles.labels(outcome).inc()
            self._metrics.controller_reconcile_duration.observe(time.perf_counter() - start)

    # -- one KamusSecret -----------------------------------------------------------------------

    async def reconcile(self, namespace: str, name: str) -> str:
        """Bring the Secret of one KamusSecret in line; the outcome, for the metrics."""
        try:
            kamus_secret: dict[str, Any] = await _json(
                await self.call(
                    lambda: self._custom.get_namespaced_custom_object_without_preload_content(
                        GROUP, VERSION, namespace, PLURAL, name
                    )
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return "gone"
            raise
        refused = reconcile.refusal(kamus_secret, self._policy)
        if refused is not None:  # before anything is decrypted
            withdrawn = refused.reason in reconcile.WITHDRAWN_ON and await self._withdraw(
                kamus_secret
            )
            if withdrawn:
                refused = Condition(
                    False,
                    refused.reason,
                    f"{refused.message}. The Secret {name} it wrote earlier was deleted",
                )
            await self._set_status(kamus_secret, refused, event_type="Warning")
            audit(
                "controller secret",
                service="controller",
                action="deleted" if withdrawn else "refused",
                namespace=namespace,
                name=name,
                service_account=kamus_secret.get("serviceAccount"),
                outcome="denied",
                reason=refused.reason,
            )
            return "refused"
        identity = f"{namespace}:{kamus_secret.get('serviceAccount', '')}"
        plaintexts, failed, malformed = await self._decrypt(kamus_secret, identity)
        data, invalid = reconcile.secret_values(plaintexts)
        failed += invalid
        if failed or malformed:
            # All or nothing: Kamus wrote partial Secrets; here the Secret is left as it was.
            condition = reconcile.decryption_failed(identity, failed, malformed)
            await self._set_status(kamus_secret, condition, event_type="Warning")
            return "decryption_failed"
        desired, not_copied = reconcile.desired_secret(kamus_secret, data, self._policy)
        action, condition = await self._apply(kamus_secret, desired, not_copied)
        # Labels left out are a refusal too, of those labels: a Warning, with the Secret written.
        normal = condition.ready and condition.reason == "Synced"
        await self._set_status(
            kamus_secret, condition, event_type="Normal" if normal else "Warning"
        )
        if action in ("created", "updated"):
            audit(
                "controller secret",
                service="controller",
                action=action,
                namespace=namespace,
                name=name,
                service_account=kamus_secret.get("serviceAccount"),
                outcome="success",
                keys=sorted(data),
            )
        return action

    async def _decrypt(
        self, kamus_secret: Mapping[str, Any], identity: str
    ) -> tuple[dict[str, bytes], list[str], dict[str, str]]:
        """The plaintexts by item, the items that do not open, and those that are no
        ciphertext at all (with the fact that says so)."""
        items = reconcile.encrypted_items(kamus_secret)
        plaintexts: dict[str, bytes] = {}
        failed: list[str] = []
        malformed: dict[str, str] = {}

        async def one(item: str, ciphertext: str) -> None:
            try:
                plaintexts[item] = await self._keys.decrypt(ciphertext, identity)
            except DecryptionError as exc:
                log.info("%s: %s", item, exc.reason, extra=log_fields(identity=identity))
                if isinstance(exc, MalformedCiphertext):
                    malformed[item] = exc.fact
                else:
                    failed.append(item)

        await asyncio.gather(*(one(item, value) for item, value in items.items()))
        return plaintexts, failed, malformed

    async def _withdraw(self, kamus_secret: Mapping[str, Any]) -> bool:
        """Delete the Secret of a refused KamusSecret if this KamusSecret wrote it; whether it
        did. Anyone else's Secret of that name is left alone."""
        namespace, name = _namespaced(kamus_secret)
        existing = await self._read_secret(namespace, name)
        if existing is None or not reconcile.owned_by(existing, kamus_secret):
            return False
        await self._delete_secret(existing)
        return True

    async def _read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            secret: dict[str, Any] = await _json(
                await self.call(
                    lambda: self._core.read_namespaced_secret_without_preload_content(
                        name, namespace
                    )
                )
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            return None
        return secret

    async def _delete_secret(self, existing: Mapping[str, Any]) -> None:
        """Delete exactly the Secret that was read: one recreated meanwhile (by someone else, not
        owned) fails the preconditions (409) and is retried from a fresh read."""
        meta = existing["metadata"]
        options = V1DeleteOptions(
            preconditions=V1Preconditions(uid=meta["uid"], resource_version=meta["resourceVersion"])
        )
        await self.call(
            lambda: self._core.delete_namespaced_secret(
                meta["name"], meta["namespace"], body=options
            )
        )

    async def _apply(
        self, kamus_secret: Mapping[str, Any], desired: dict[str, Any], not_copied: list[str]
    ) -> tuple[str, Condition]:
        namespace, name = _namespaced(kamus_secret)
        existing = await self._read_secret(namespace, name)
        synced = Condition(True, "Synced", f"Secret {name} is up to date")
        if not_copied:
            synced = Condition(
                True,
                "ReservedMetadataNotCopied",
                f"Secret {name} is up to date, without {', '.join(not_copied)}: labels and "
                "annotations that other controllers act on (Kubernetes, Argo CD, Flux, Helm, "
                "Kamus, Controller__DeniedMetadataPrefixes) are never copied",
            )
        body = V1Secret.from_dict(desired)
        assert body is not None
        if existing is None:
            await self.call(lambda: self._core.create_namespaced_secret(namespace, body))
            return "created", synced
        if not (
            reconcile.owned_by(existing, kamus_secret) or reconcile.consents_to_adoption(existing)
        ):
            ignored = (
                f" ({reconcile.ADOPT_ANNOTATION} on the KamusSecret no longer takes over a "
                "Secret: its owner must agree)"
                if reconcile.asks_to_adopt(kamus_secret)
                else ""
            )
            return "not_owned", Condition(
                False,
                "SecretNotOwned",
                f"a Secret {name} exists that this KamusSecret does not own, so it was left "
                f"alone{ignored}; delete it, or let the controller take it over with `kubectl "
                f"annotate secret {name} {reconcile.MANAGED_ANNOTATION}=true` (by someone "
                "allowed to update that Secret)",
            )
        if not reconcile.differs(existing, desired):
            return "unchanged", synced
        if existing.get("type", "Opaque") != desired["type"]:
            # A Secret's type is immutable: replace the object.
            await self._delete_secret(existing)
            await self.call(lambda: self._core.create_namespaced_secret(namespace, body))
            return "updated", synced
        assert body.metadata is not None
        body.metadata.resource_version = existing["metadata"]["resourceVersion"]
        await self.call(lambda: self._core.replace_namespaced_secret(name, namespace, body))
        return "updated", synced

    async def _set_status(
        self, kamus_secret: Mapping[str, Any], condition: Condition, *, event_type: str
    ) -> None:
        patch = reconcile.status_patch(kamus_secret, condition)
        if patch is None:
            return  # already says so: no write, no event, no watch churn
        namespace, name = _namespaced(kamus_secret)
        await self.call(
            lambda: self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, patch
            )
        )
        await self._event(kamus_secret, event_type, condition)

    async def _event(
        self, kamus_secret: Mapping[str, Any], event_type: str, condition: Condition
    ) -> None:
        namespace, name = _namespaced(kamus_secret)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": name,
                "namespace": namespace,
                "uid": kamus_secret["metadata"]["uid"],
            },
            "reason": condition.reason,
            "message": condition.message,
            "type": event_type,
            "source": {"component": "kamus-controller"},
            "reportingComponent": "kamus-controller",
            "reportingInstance": self.identity,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        body = CoreV1Event.from_dict(event)
        assert body is not None
        try:
            await self.call(lambda: self._core.create_namespaced_event(namespace, body))
        except ApiException as exc:  # an event is best effort: never fail a reconcile for it
            log.warning("could not record an event for %s/%s: %s", namespace, name, exc.status)
