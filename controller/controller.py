"""One KamusSecret → its Secret: the reconcile of one key, and the Secret writes it makes.

Each reconcile reads the KamusSecret afresh, asks the rules (reconcile.py) what it means, then
refuses it, or decrypts its values and creates, replaces or leaves its Secret, and writes the
status and an Event. All or nothing: a value that does not decrypt leaves the Secret as it was.
When to reconcile (leadership, watches, the queue, retries) is runner.py's business.
"""

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

from kubernetes.aio.client import (
    ApiClient,
    CoreV1Api,
    CoreV1Event,
    CustomObjectsApi,
    V1DeleteOptions,
    V1Preconditions,
    V1Secret,
)
from kubernetes.aio.client.exceptions import ApiException

from controller import reconcile
from controller.objects import KamusSecret, Secret, key_of, read_json, to_json
from controller.pacing import TokenBucket
from controller.reconcile import GROUP, KIND, PLURAL, VERSION, Condition, Policy
from crypto import DecryptionError, KeyManager, MalformedCiphertext
from kamus.server.logs import audit, log_fields
from kamus.server.settings import ControllerSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class KamusSecretController:
    def __init__(
        self,
        api: ApiClient,
        keys: KeyManager,
        settings: ControllerSettings,
        *,
        pace: TokenBucket,
        identity: str,
    ) -> None:
        self._core = CoreV1Api(api)
        self._custom = CustomObjectsApi(api)
        self._keys = keys
        self._policy = Policy(
            deny_default_service_account=settings.deny_default_service_account,
            denied_types=tuple(settings.denied_secret_types),
            denied_metadata_domains=tuple(settings.denied_metadata_prefixes),
        )
        self._pace = pace
        self.identity = identity  # the reportingInstance of its Events

    async def call(self, request: Callable[[], Awaitable[T]]) -> T:
        """Every API call of the reconciler passes the rate limit."""
        await self._pace.take()
        return await request()

    async def reconcile(self, namespace: str, name: str) -> str:
        """Bring the Secret of one KamusSecret in line; the outcome, for the metrics."""
        try:
            kamus_secret = await read_json(
                await self.call(
                    lambda: self._custom.get_namespaced_custom_object_without_preload_content(
                        GROUP, VERSION, namespace, PLURAL, name
                    )
                ),
                KamusSecret,
            )
        except ApiException as exc:
            if exc.status == 404:
                return "gone"
            raise
        refused = reconcile.refusal(kamus_secret, self._policy)
        if refused is not None:  # before anything is decrypted
            await self._refuse(kamus_secret, refused)
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

    async def _refuse(self, kamus_secret: KamusSecret, refused: Condition) -> None:
        """Say why in the status, and withdraw a Secret that must not stay."""
        namespace, name = key_of(kamus_secret)
        withdrawn = refused.reason in reconcile.WITHDRAWN_ON and await self._withdraw(kamus_secret)
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

    async def _decrypt(
        self, kamus_secret: KamusSecret, identity: str
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

    async def _withdraw(self, kamus_secret: KamusSecret) -> bool:
        """Delete the Secret of a refused KamusSecret if this KamusSecret wrote it; whether it
        did. Anyone else's Secret of that name is left alone."""
        namespace, name = key_of(kamus_secret)
        existing = await self._read_secret(namespace, name)
        if existing is None or not reconcile.owned_by(existing, kamus_secret):
            return False
        await self._delete_secret(existing)
        return True

    async def _read_secret(self, namespace: str, name: str) -> Secret | None:
        try:
            secret = await read_json(
                await self.call(
                    lambda: self._core.read_namespaced_secret_without_preload_content(
                        name, namespace
                    )
                ),
                Secret,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            return None
        return secret

    async def _delete_secret(self, existing: Secret) -> None:
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
        self, kamus_secret: KamusSecret, desired: Secret, not_copied: list[str]
    ) -> tuple[str, Condition]:
        namespace, name = key_of(kamus_secret)
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
        body = V1Secret.from_dict(to_json(desired))
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
        self, kamus_secret: KamusSecret, condition: Condition, *, event_type: str
    ) -> None:
        patch = reconcile.status_patch(kamus_secret, condition)
        if patch is None:
            return  # already says so: no write, no event, no watch churn
        namespace, name = key_of(kamus_secret)
        body = to_json(patch)
        await self.call(
            lambda: self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body
            )
        )
        await self._event(kamus_secret, event_type, condition)

    async def _event(
        self, kamus_secret: KamusSecret, event_type: str, condition: Condition
    ) -> None:
        namespace, name = key_of(kamus_secret)
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
