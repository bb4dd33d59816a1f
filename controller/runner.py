"""Runs the controller: leads, watches, queues, and reconciles each queued key.

Only the leader reconciles. It lists and watches KamusSecrets (and the Secrets they own, so a
Secret deleted by hand comes back at once), queues each changed KamusSecret once, and also
requeues every one each ``ReconciliationIntervalInSeconds``. Workers take keys from the queue to
:class:`~controller.controller.KamusSecretController` and queue a key again later when the key
manager or the apiserver failed. A failure never ends the process.

The parts (kamus/server/lease.py, informer.py, workqueue.py, pacing.py) know nothing of
KamusSecrets; this module is where they are put together for them.
"""

import asyncio
import logging
import socket
import time
import uuid

import aiohttp
from kubernetes.aio.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.aio.client.exceptions import ApiException

from controller import reconcile
from controller.controller import KamusSecretController
from controller.informer import Informer
from controller.objects import KamusSecret, Key, Secret, key_of
from controller.pacing import TokenBucket
from controller.reconcile import GROUP, PLURAL, VERSION
from controller.workqueue import WorkQueue
from crypto import KeyManager
from crypto.errors import KeyManagerUnavailable, KmsThrottled
from kamus.server.lease import LeaderElector
from kamus.server.metrics import ControllerMetrics
from kamus.server.settings import ControllerSettings

log = logging.getLogger(__name__)
UNEXPECTED_RETRY_SECONDS = 60.0


class ControllerRunner:
    def __init__(
        self,
        api: ApiClient,
        keys: KeyManager,
        settings: ControllerSettings,
        metrics: ControllerMetrics,
        *,
        lease_namespace: str,
    ) -> None:
        self._core = CoreV1Api(api)
        self._custom = CustomObjectsApi(api)
        self._settings = settings
        self._metrics = metrics
        self.identity = settings.identity or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self._pace = TokenBucket(settings.qps, settings.burst)
        self._controller = KamusSecretController(
            api, keys, settings, pace=self._pace, identity=self.identity
        )
        self._election = LeaderElector(
            api,
            settings,
            identity=self.identity,
            namespace=lease_namespace,
            lead=self._lead,
            stand_down=self._stand_down,
        )
        self._queue: WorkQueue[Key] = WorkQueue()
        self._known: set[Key] = set()

    @property
    def leading(self) -> bool:
        return self._election.leading

    async def run(self) -> None:
        """Forever: wait to lead, reconcile while leading, then stand by again."""
        await self._election.run()

    async def release(self) -> None:
        """Hand the Lease over on shutdown; call it after ``run`` is cancelled."""
        await self._election.release()

    # -- leadership ----------------------------------------------------------------------------

    async def _lead(self) -> None:
        self._metrics.controller_leader.set(1)
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

    def _stand_down(self) -> None:
        self._metrics.controller_leader.set(0)
        self._known.clear()
        log.warning("%s lost the lease; standing by", self.identity)

    # -- what is queued ------------------------------------------------------------------------

    async def _inform_kamus_secrets(self) -> None:
        def on_list(items: list[KamusSecret]) -> None:
            self._known = {key_of(item) for item in items}
            for key in self._known:
                self._queue.add(key)
            self._metrics.controller_kamus_secrets.set(len(self._known))

        def on_event(kind: str, obj: KamusSecret) -> None:
            key = key_of(obj)
            if kind == "DELETED":
                self._known.discard(key)  # its Secret goes with it, by ownerReference
            elif kind in ("ADDED", "MODIFIED"):
                self._known.add(key)
                self._queue.add(key)
            self._metrics.controller_kamus_secrets.set(len(self._known))

        await Informer(
            "KamusSecret",
            KamusSecret,
            list_raw=lambda: self._custom.list_cluster_custom_object_without_preload_content(
                GROUP, VERSION, PLURAL
            ),
            watch_call=self._custom.list_cluster_custom_object,
            watch_args=(GROUP, VERSION, PLURAL),
            on_list=on_list,
            on_event=on_event,
            pace=self._pace,
            watch_timeout_seconds=self._settings.watch_timeout_seconds,
        ).run()

    async def _inform_secrets(self) -> None:
        """Owned Secrets changed or deleted by hand are put back at once, not at the resync.

        Only the Secrets this controller wrote (by their label): listing every Secret of the
        cluster would stream every value in it to this process. A Secret whose label is removed
        by hand leaves the selection, which a watch reports as DELETED: it is put back too."""

        def on_event(kind: str, obj: Secret) -> None:
            owner = reconcile.owner_of(obj)
            if owner is not None and kind in ("MODIFIED", "DELETED"):
                self._queue.add(owner)

        selector = reconcile.MANAGED_SELECTOR
        await Informer(
            "Secret",
            Secret,
            list_raw=lambda: self._core.list_secret_for_all_namespaces_without_preload_content(
                label_selector=selector
            ),
            watch_call=self._core.list_secret_for_all_namespaces,
            label_selector=selector,
            on_list=lambda items: None,
            on_event=on_event,
            pace=self._pace,
            watch_timeout_seconds=self._settings.watch_timeout_seconds,
        ).run()

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reconciliation_interval_seconds)
            for key in list(self._known):
                self._queue.add(key)

    # -- the workers ---------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            start = time.perf_counter()
            try:
                outcome = await self._controller.reconcile(*key)
            except KeyManagerUnavailable as exc:
                outcome = "unavailable"
                log.warning("%s/%s: key manager unavailable (%s)", *key, exc.reason)
                delay: float = self._settings.retry_period_seconds * 2
                if isinstance(exc, KmsThrottled) and exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)  # no sooner than the KMS asked
                self._queue.add_after(key, delay)
            except ApiException as exc:
                outcome = "error"
                log.warning("%s/%s: apiserver answered %s %s", *key, exc.status, exc.reason)
                self._queue.add_after(key, 1.0 if exc.status == 409 else 5.0)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                outcome = "error"
                log.warning("%s/%s: apiserver unreachable (%s)", *key, type(exc).__name__)
                self._queue.add_after(key, 5.0)
            except Exception as exc:
                # A defect, or a value no rule foresaw: this KamusSecret waits, and the worker
                # goes on. Uncaught, it would end every task of the leader while the Lease kept
                # renewing, and nothing would be reconciled anywhere. The message is left out:
                # it may hold what the value held.
                outcome = "error"
                log.error("%s/%s: reconcile failed (%s); retried later", *key, type(exc).__name__)
                self._queue.add_after(key, UNEXPECTED_RETRY_SECONDS)
            self._metrics.controller_reconciles.labels(outcome).inc()
            self._metrics.controller_reconcile_duration.observe(time.perf_counter() - start)
