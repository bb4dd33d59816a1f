"""Leader election on a ``coordination.k8s.io`` Lease: only one replica does the work.

Shared by the controller (one replica reconciles) and the decryptor (one replica publishes the
public key bundle). It knows nothing of either: it runs a coroutine while it holds the Lease,
stops it when the Lease is lost, and hands the Lease over on shutdown.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import aiohttp
from kubernetes.aio.client import ApiClient, CoordinationV1Api, V1Lease, V1ObjectMeta
from kubernetes.aio.client.exceptions import ApiException
from kubernetes.aio.leaderelection.electionconfig import Config as ElectionConfig
from kubernetes.aio.leaderelection.leaderelection import LeaderElection
from kubernetes.aio.leaderelection.leaderelectionrecord import LeaderElectionRecord
from kubernetes.aio.leaderelection.resourcelock.leaselock import LeaseLock

log = logging.getLogger(__name__)


class LeaseSettings(Protocol):
    """Which Lease, and its timing (``ControllerSettings`` is one)."""

    @property
    def lease_name(self) -> str: ...
    @property
    def lease_duration_seconds(self) -> int: ...
    @property
    def renew_deadline_seconds(self) -> int: ...
    @property
    def retry_period_seconds(self) -> int: ...


class ResilientLeaseLock(LeaseLock):
    """The client's LeaseLock, fixed to survive a real apiserver and a flaky network.

    kubernetes 37's ``create`` passes ``pretty=True``, which its own request validation rejects,
    so a controller on a fresh cluster could never create the Lease and never lead. And a network
    error in ``get`` or ``update`` escaped the election loop without cancelling the leader's work.
    Here both report failure, which the election retries each period.
    """

    async def get(
        self, name: str, namespace: str
    ) -> tuple[bool, LeaderElectionRecord] | tuple[bool, Exception] | tuple[bool, None]:
        try:
            return await super().get(name, namespace)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return False, ApiException(status=0, reason=type(exc).__name__)

    async def create(
        self, name: str, namespace: str, election_record: LeaderElectionRecord
    ) -> bool:
        body = V1Lease(metadata=V1ObjectMeta(name=name), spec=self.update_lease(election_record))
        try:
            await self.api_instance.create_namespaced_lease(namespace, body)
        except ApiException as exc:
            log.warning("could not create the Lease %s/%s: %s", namespace, name, exc.status)
            return False
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
        return True

    async def update(self, name: str, namespace: str, updated_record: LeaderElectionRecord) -> bool:
        try:
            return bool(await super().update(name, namespace, updated_record))
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False


class LeaderElector:
    """Forever: wait for the Lease, run ``lead`` while holding it, ``stand_down`` when it is
    lost, then wait again."""

    def __init__(
        self,
        api: ApiClient,
        settings: LeaseSettings,
        *,
        identity: str,
        namespace: str,
        lead: Callable[[], Awaitable[None]],
        stand_down: Callable[[], None],
    ) -> None:
        self._api = api
        self._settings = settings
        self.identity = identity
        self._namespace = namespace
        self._lead = lead
        self._stand_down = stand_down
        self.leading = False

    async def run(self) -> None:
        s = self._settings
        while True:
            election = LeaderElection(
                ElectionConfig(
                    ResilientLeaseLock(s.lease_name, self._namespace, self.identity, self._api),
                    lease_duration=s.lease_duration_seconds,
                    renew_deadline=s.renew_deadline_seconds,
                    retry_period=s.retry_period_seconds,
                    onstarted_leading=self._started,
                    onstopped_leading=self._stopped,
                )
            )
            try:
                await election.run()
            except (ApiException, aiohttp.ClientError, OSError, TimeoutError, ValueError):
                log.warning("leader election failed; retrying", exc_info=True)
            finally:
                if self.leading:  # the election ended abnormally while leading: stand down
                    await self._stopped()
            await asyncio.sleep(s.retry_period_seconds)

    async def release(self) -> None:
        """Hand the Lease over on shutdown, so a standby takes over now, not at its expiry.

        Call it after ``run`` is cancelled, or the election would renew the Lease again."""
        leases = CoordinationV1Api(self._api)
        name, namespace = self._settings.lease_name, self._namespace
        try:
            lease = await leases.read_namespaced_lease(name, namespace)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            await leases.replace_namespaced_lease(name, namespace, lease)
            log.info("%s released the lease", self.identity)
        except (ApiException, aiohttp.ClientError, OSError, TimeoutError):
            log.warning("could not release the lease; a standby takes over when it expires")

    async def _started(self) -> None:
        self.leading = True
        await self._lead()

    async def _stopped(self) -> None:
        self.leading = False
        self._stand_down()
