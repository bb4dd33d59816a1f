"""The decryptor's public key publisher (decryptor/publish.py) in-process, against the Kubernetes
API double through the real asyncio client: what it writes, when it does not, what it restores,
and how a master key rotation reaches pinned users."""

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.aio.client import ApiClient

from crypto import bundle
from decryptor.publish import (
    ANCHOR_ANNOTATION,
    DATA_KEY,
    Publisher,
    PublisherLease,
    publish_namespace,
    publishing,
)
from kamus.server.kube import create_api_client
from kamus.server.metrics import Metrics
from kamus.server.sealing import export_bundle
from kamus.server.settings import Settings
from tests.k8s_double import KubeApiDouble
from tests.support.kubeclient import sync_client
from tests.support.settings import SettingsFactory, new_key

NAME, NAMESPACE = "kamus-public-keys", "kamus"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
FAST_LEASE = PublisherLease(
    f"{NAME}-publisher",
    lease_duration_seconds=3,
    renew_deadline_seconds=2,
    retry_period_seconds=1,
)


@pytest.fixture
def settings(make_settings: SettingsFactory, kubeconfig: Path) -> Settings:
    return make_settings(
        Decryptor__PublicKeysConfigMap=NAME,
        Decryptor__PublicKeysNamespace=NAMESPACE,
        Decryptor__PublicKeysIntervalSeconds="0.2",
    )


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[ApiClient]:
    client = await create_api_client(settings.kubernetes)
    yield client
    await client.close()


@pytest.fixture
def core(kubeconfig: Path) -> Iterator[k8s.CoreV1Api]:
    """The test's own view of the cluster (the synchronous client, as a user's kubectl)."""
    with sync_client(kubeconfig) as client:
        yield k8s.CoreV1Api(client)


def publisher(
    api: ApiClient, settings: Settings, *, identity: str = "a", now: datetime = NOW
) -> Publisher:
    counter = Metrics().public_keys_published
    return Publisher(
        api, settings, NAMESPACE, counter, identity=identity, lease=FAST_LEASE, clock=lambda: now
    )


def stored(kube_api: KubeApiDouble) -> dict[str, Any] | None:
    found = [m for m in kube_api.objects("configmaps", NAMESPACE) if m["metadata"]["name"] == NAME]
    return found[0] if found else None


def count(p: Publisher, outcome: str) -> float:
    """Rounds of ``p`` that ended in ``outcome``."""
    return sum(
        s.value
        for metric in p.counter.collect()
        for s in metric.samples
        if s.name.endswith("_total") and s.labels == {"outcome": outcome}
    )


async def test_publishes_a_bundle_pinned_users_verify(
    api: ApiClient, settings: Settings, kube_api: KubeApiDouble
) -> None:
    p = publisher(api, settings)
    assert await p.publish_once() == "created"
    config_map = stored(kube_api)
    assert config_map is not None
    exported = bundle.load(export_bundle(settings, NOW))  # what `kamus keys export` prints
    published = bundle.load(config_map["data"][DATA_KEY], trust_anchor=exported.anchor)
    assert published.anchor == exported.anchor
    assert [k.kid for k in published.keys] == [k.kid for k in exported.keys]
    assert config_map["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "kamus-decryptor"}
    assert config_map["metadata"]["annotations"] == {ANCHOR_ANNOTATION: exported.anchor}
    assert published.sealing_key(NOW)  # it seals
    assert count(p, "created") == 1


async def test_unchanged_keys_are_not_written_again(
    api: ApiClient, settings: Settings, kube_api: KubeApiDouble
) -> None:
    assert await publisher(api, settings).publish_once() == "created"
    first = stored(kube_api)
    assert first is not None
    # An hour later the bundle is issued (and signed) anew, but says the same: no write.
    later = publisher(api, settings, now=NOW + timedelta(hours=1))
    for _ in range(3):
        assert await later.publish_once() == "unchanged"
    again = stored(kube_api)
    assert again is not None
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert again["data"] == first["data"]
    assert count(later, "unchanged") == 3
    # When a new generation starts, the keys' states change: that is written.
    renewed = publisher(api, settings, now=NOW + timedelta(days=91))
    assert await renewed.publish_once() == "updated"
    after = stored(kube_api)
    assert after is not None
    assert after["metadata"]["resourceVersion"] != first["metadata"]["resourceVersion"]


def _tampered(text: str) -> str:
    document = json.loads(text)
    document["cluster"] = "somewhere-else"  # after signing: the signature no longer holds
    return json.dumps(document)


def _bad_signature(text: str) -> str:
    """The same content under a signature that does not hold: only verifying tells."""
    document = json.loads(text)
    sig = document["sig"]
    document["sig"] = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    return json.dumps(document)


@pytest.mark.parametrize(
    "damage", ["deleted", "tampered", "bad-signature", "not-json", "key-removed", "label-removed"]
)
async def test_a_deleted_or_damaged_config_map_is_restored(
    api: ApiClient,
    settings: Settings,
    kube_api: KubeApiDouble,
    core: k8s.CoreV1Api,
    damage: str,
) -> None:
    p = publisher(api, settings)
    assert await p.publish_once() == "created"
    good = stored(kube_api)
    assert good is not None
    if damage == "deleted":
        core.delete_namespaced_config_map(NAME, NAMESPACE)
    else:
        current = core.read_namespaced_config_map(NAME, NAMESPACE)
        assert current.data is not None
        assert current.metadata is not None
        text = current.data[DATA_KEY]
        if damage == "tampered":
            current.data[DATA_KEY] = _tampered(text)
        elif damage == "bad-signature":
            current.data[DATA_KEY] = _bad_signature(text)
        elif damage == "not-json":
            current.data[DATA_KEY] = "<html>edited by hand</html>"
        elif damage == "key-removed":
            current.data = {"other": "kept"}
        else:
            current.metadata.labels = {}
        core.replace_namespaced_config_map(NAME, NAMESPACE, current)
    assert await p.publish_once() == ("created" if damage == "deleted" else "updated")
    restored = stored(kube_api)
    assert restored is not None
    loaded = bundle.load(
        restored["data"][DATA_KEY], trust_anchor=bundle.load(good["data"][DATA_KEY]).anchor
    )
    assert loaded.cluster == ""
    assert restored["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kamus-decryptor"
    if damage == "key-removed":
        assert restored["data"]["other"] == "kept"  # what else is in it is left alone


async def test_a_master_key_rotation_reaches_the_old_pin_through_its_link(
    api: ApiClient,
    make_settings: SettingsFactory,
    settings: Settings,
    aes_key: str,
    kube_api: KubeApiDouble,
) -> None:
    assert await publisher(api, settings).publish_once() == "created"
    before = stored(kube_api)
    assert before is not None
    old_pin = before["metadata"]["annotations"][ANCHOR_ANNOTATION]
    rotated = make_settings(
        KeyManagement__AES__Key=new_key(), KeyManagement__AES__PreviousKeys=aes_key
    )
    assert await publisher(api, rotated).publish_once() == "updated"
    after = stored(kube_api)
    assert after is not None
    new_anchor = after["metadata"]["annotations"][ANCHOR_ANNOTATION]
    assert new_anchor != old_pin
    loaded = bundle.load(after["data"][DATA_KEY], trust_anchor=old_pin)
    assert loaded.anchor == new_anchor
    assert loaded.via == (old_pin,)  # reached through the old anchor's link
    assert {k.kid for k in loaded.keys}.isdisjoint(
        k.kid for k in bundle.load(before["data"][DATA_KEY]).keys
    )
    # And a foreign pin still refuses it.
    foreign = bundle.load(export_bundle(make_settings(KeyManagement__AES__Key=new_key()), NOW))
    with pytest.raises(bundle.BundleError, match="not by the pinned"):
        bundle.load(after["data"][DATA_KEY], trust_anchor=foreign.anchor)


async def test_missing_rbac_is_logged_with_the_fix_and_retried(
    api: ApiClient,
    settings: Settings,
    kube_api: KubeApiDouble,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kube_api.denied_access.add(("", "configmaps", "create"))
    p = publisher(api, settings)
    with caplog.at_level(logging.ERROR, logger="decryptor.publish"):
        assert await p.publish_once() == "error"
    assert stored(kube_api) is None
    assert "may not write ConfigMap kamus/kamus-public-keys" in caplog.text
    kube_api.denied_access.clear()
    assert await p.publish_once() == "created"  # the next round
    assert count(p, "error") == 1


async def test_an_unreachable_apiserver_is_an_error_round_not_a_crash(
    api: ApiClient, settings: Settings, kube_api: KubeApiDouble
) -> None:
    p = publisher(api, settings)
    kube_api.stop()
    try:
        assert await p.publish_once() == "error"
    finally:
        kube_api.start()
    assert await p.publish_once() == "created"


async def test_two_publishers_only_the_lease_holder_writes(
    settings: Settings, kube_api: KubeApiDouble
) -> None:
    clients = [await create_api_client(settings.kubernetes) for _ in range(2)]
    publishers = [publisher(c, settings, identity=i) for c, i in zip(clients, "ab", strict=True)]
    tasks = [asyncio.create_task(p.run()) for p in publishers]
    try:
        for _ in range(100):
            if stored(kube_api) is not None and any(p.leading for p in publishers):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)  # several rounds of both
        [leader] = [p for p in publishers if p.leading]
        [follower] = [p for p in publishers if not p.leading]
        [lease] = kube_api.objects("leases", NAMESPACE)
        assert lease["metadata"]["name"] == "kamus-public-keys-publisher"
        assert lease["spec"]["holderIdentity"] == leader.identity
        assert count(leader, "created") == 1
        assert count(leader, "unchanged") >= 2
        assert sum(count(follower, o) for o in ("created", "updated", "unchanged", "error")) == 0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in publishers:
            await p.release()
        for c in clients:
            await c.close()


async def test_publishing_is_off_unless_a_config_map_is_named(
    make_settings: SettingsFactory, kubeconfig: Path, kube_api: KubeApiDouble
) -> None:
    async with publishing(make_settings(), Metrics()) as p:
        assert p is None
        await asyncio.sleep(0.3)
    assert stored(kube_api) is None
    assert kube_api.objects("leases") == []


async def test_publishing_runs_in_the_background_and_hands_the_lease_over(
    settings: Settings, kube_api: KubeApiDouble
) -> None:
    metrics = Metrics()
    async with publishing(settings, metrics) as p:
        assert p is not None
        for _ in range(100):
            if stored(kube_api) is not None:
                break
            await asyncio.sleep(0.05)
        assert stored(kube_api) is not None
    [lease] = kube_api.objects("leases", NAMESPACE)
    assert lease["spec"].get("holderIdentity") is None  # released on shutdown
    assert (
        metrics.registry.get_sample_value(
            "kamus_public_keys_published_total", {"outcome": "created"}
        )
        == 1
    )


def test_the_namespace_is_the_setting_else_the_pods(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    namespace_file = tmp_path / "namespace"
    plain = make_settings()
    assert publish_namespace(plain, namespace_file=namespace_file, environ={}) is None
    env = {"POD_NAMESPACE": "from-env"}
    assert publish_namespace(plain, namespace_file=namespace_file, environ=env) == "from-env"
    namespace_file.write_text("mounted\n")
    assert publish_namespace(plain, namespace_file=namespace_file, environ=env) == "mounted"
    given = make_settings(Decryptor__PublicKeysNamespace="given")
    assert publish_namespace(given, namespace_file=namespace_file, environ=env) == "given"


def refused(call: Callable[[], object]) -> int | None:
    """The status an API call is refused with (None: it was not). The exception is not kept:
    it holds the response, whose connection would then outlive the client."""
    try:
        call()
    except k8s.ApiException as exc:
        return int(exc.status)
    return None


def test_the_double_serves_config_maps_as_the_apiserver_does(
    core: k8s.CoreV1Api, kube_api: KubeApiDouble
) -> None:
    """What the publisher relies on: optimistic concurrency and the apiserver's validation."""
    body = k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="cm"), data={"keys.json": "{}"})
    stale = core.create_namespaced_config_map(NAMESPACE, body)
    assert refused(lambda: core.create_namespaced_config_map(NAMESPACE, body)) == 409
    core.patch_namespaced_config_map("cm", NAMESPACE, {"data": {"other": "x"}})
    stale.data = {"keys.json": "lost update"}  # read before the patch
    assert refused(lambda: core.replace_namespaced_config_map("cm", NAMESPACE, stale)) == 409
    current = core.read_namespaced_config_map("cm", NAMESPACE)
    assert current.data == {"keys.json": "{}", "other": "x"}
    current.data = {"bad/key": "x"}
    assert refused(lambda: core.replace_namespaced_config_map("cm", NAMESPACE, current)) == 422
    kube_api.denied_access.add(("", "configmaps", "update"))
    current.data = {"keys.json": "x"}
    assert refused(lambda: core.replace_namespaced_config_map("cm", NAMESPACE, current)) == 403
