"""The Kubernetes API double's objects, through the official clients only: what a controller sees
of Secrets, Events, Leases and KamusSecrets must be what kube-apiserver would show it."""

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.aio import client as aio_client
from kubernetes.aio import config as aio_config
from kubernetes.aio.client.exceptions import ApiException as AioApiException
from kubernetes.aio.leaderelection.leaderelectionrecord import LeaderElectionRecord
from kubernetes.aio.leaderelection.resourcelock.leaselock import LeaseLock
from kubernetes.aio.watch import Watch
from pydantic import ValidationError

from tests.k8s_double import Faults, KubeApiDouble
from tests.support.kubeclient import close

GROUP, VERSION, PLURAL = "soluto.com", "v1alpha2", "kamussecrets"
NS = "team-a"


@pytest.fixture
def api(kube_api: KubeApiDouble, tmp_path: Path) -> Iterator[client.ApiClient]:
    """The synchronous client, as the admin, from a kubeconfig."""
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "kubeconfig")
    api_client: client.ApiClient = config.new_client_from_config(config_file=str(kubeconfig))
    yield api_client
    close(api_client)


@pytest.fixture
async def aio_api(kube_api: KubeApiDouble, tmp_path: Path) -> AsyncIterator[aio_client.ApiClient]:
    """The asyncio client, as the admin, from a kubeconfig (what the controller uses)."""
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "kubeconfig")
    api_client: aio_client.ApiClient = await aio_config.new_client_from_config(
        config_file=str(kubeconfig)
    )
    async with api_client:
        yield api_client


def secret_body(
    name: str,
    *,
    labels: dict[str, str] | None = None,
    owners: tuple[dict[str, Any], ...] = (),
    **fields: Any,
) -> dict[str, Any]:
    """A Secret; ``owners`` are KamusSecrets as read, for ``metadata.ownerReferences``."""
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if owners:
        meta["ownerReferences"] = [
            {
                "apiVersion": o["apiVersion"],
                "kind": o["kind"],
                "name": o["metadata"]["name"],
                "uid": o["metadata"]["uid"],
            }
            for o in owners
        ]
    return {"metadata": meta, **fields}


def secret(name: str, **kwargs: Any) -> client.V1Secret:
    body = client.V1Secret.from_dict(secret_body(name, **kwargs))
    assert body is not None
    return body


def aio_secret(name: str, **kwargs: Any) -> aio_client.V1Secret:
    body = aio_client.V1Secret.from_dict(secret_body(name, **kwargs))
    assert body is not None
    return body


def kamus_secret(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "KamusSecret",
        "metadata": {"name": name},
        **fields,
    }


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def collect(watch: Watch, func: Any, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Every event of one watch request, until the double ends it."""
    async with watch:
        return [event async for event in watch.stream(func, *args, **kwargs)]


async def replay(
    kube_api: KubeApiDouble, watch: Watch, func: Any, *args: Any, **kwargs: Any
) -> list[dict[str, Any]]:
    """The events a new watch request is sent at once: open it, then end it by dropping it
    (quicker than waiting for a timeoutSeconds, and as exact: the replay precedes the end)."""
    stream = asyncio.create_task(collect(watch, func, *args, timeout_seconds=30, **kwargs))
    await asyncio.to_thread(kube_api.wait_for_watches, 1)
    kube_api.drop_watches()
    return await stream


# -- Secrets -----------------------------------------------------------------------------------


def test_secret_crud_merges_string_data_as_the_apiserver_does(
    api: client.ApiClient, kube_api: KubeApiDouble
) -> None:
    core = client.CoreV1Api(api)
    created = core.create_namespaced_secret(
        NS, secret("db", data={"user": b64("admin")}, stringData={"password": "s3cret"})
    )
    assert created.data == {"user": b64("admin"), "password": b64("s3cret")}
    assert created.string_data is None  # write-only: merged into data and dropped
    assert created.type == "Opaque"
    assert created.metadata is not None
    assert created.metadata.uid
    assert created.metadata.creation_timestamp is not None
    assert created.metadata.generation is None  # only custom resources count generations
    first_version = int(created.metadata.resource_version or "0")

    read = core.read_namespaced_secret("db", NS)
    assert read.data == created.data
    assert read.metadata is not None
    assert read.metadata.resource_version == str(first_version)

    read.string_data = {"password": "rotated"}
    replaced = core.replace_namespaced_secret("db", NS, read)
    assert replaced.data == {"user": b64("admin"), "password": b64("rotated")}
    assert replaced.metadata is not None
    assert int(replaced.metadata.resource_version or "0") > first_version

    patched = core.patch_namespaced_secret(
        "db", NS, {"stringData": {"host": "db.local"}, "metadata": {"labels": {"app": "db"}}}
    )
    assert patched.data == {
        "user": b64("admin"),
        "password": b64("rotated"),
        "host": b64("db.local"),
    }
    assert patched.metadata is not None
    assert patched.metadata.labels == {"app": "db"}

    listed = core.list_namespaced_secret(NS, label_selector="app=db")
    assert [s.metadata.name for s in listed.items if s.metadata] == ["db"]
    assert listed.metadata is not None
    assert listed.metadata.resource_version == patched.metadata.resource_version
    assert core.list_namespaced_secret(NS, label_selector="app!=db").items == []
    assert core.list_namespaced_secret("elsewhere").items == []
    assert kube_api.objects("secrets", NS)[0]["data"]["host"] == b64("db.local")

    status = core.delete_namespaced_secret("db", NS)
    assert isinstance(status, dict)
    assert status["status"] == "Success"
    assert status["details"]["name"] == "db"
    with pytest.raises(client.ApiException) as missing:
        core.read_namespaced_secret("db", NS)
    assert missing.value.status == 404
    assert missing.value.body is not None
    assert '"reason":"NotFound"' in missing.value.body
    assert kube_api.objects("secrets") == []


def test_secret_patches_a_json_patch_list_as_rfc_6902(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(NS, secret("tls", stringData={"crt": "a"}))

    patched = core.patch_namespaced_secret(
        "tls",
        NS,
        [
            {"op": "test", "path": "/data/crt", "value": b64("a")},
            {"op": "add", "path": "/metadata/labels", "value": {"rotated": "yes"}},
            {"op": "replace", "path": "/data/crt", "value": b64("b")},
        ],
    )
    assert patched.data == {"crt": b64("b")}
    assert patched.metadata is not None
    assert patched.metadata.labels == {"rotated": "yes"}

    with pytest.raises(client.ApiException) as failed:
        core.patch_namespaced_secret(
            "tls", NS, [{"op": "test", "path": "/data/crt", "value": b64("a")}]
        )
    assert failed.value.status == 422
    assert core.read_namespaced_secret("tls", NS).data == {"crt": b64("b")}


def test_invalid_writes_are_refused_as_the_apiserver_refuses_them(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(NS, secret("one", stringData={"k": "v"}))

    def status_of(call: Any) -> int:
        with pytest.raises(client.ApiException) as refused:
            call()
        return int(refused.value.status)

    assert status_of(lambda: core.create_namespaced_secret(NS, secret("one"))) == 409
    assert status_of(lambda: core.create_namespaced_secret(NS, secret("two", data={"k": "v"}))) == (
        400  # data is base64: plain text cannot be decoded
    )
    assert (
        status_of(
            lambda: core.create_namespaced_secret(NS, secret("three", stringData={"a b": "v"}))
        )
        == 422
    )
    assert status_of(lambda: core.replace_namespaced_secret("one", NS, secret("other"))) == 400
    assert (
        status_of(lambda: core.replace_namespaced_secret("missing", NS, secret("missing"))) == 404
    )
    assert status_of(lambda: core.delete_namespaced_secret("missing", NS)) == 404
    assert [s["metadata"]["name"] for s in core.list_namespaced_secret(NS).to_dict()["items"]] == [
        "one"
    ]


def test_a_replace_with_a_stale_resource_version_is_a_conflict(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(NS, secret("cfg", stringData={"mode": "a"}))
    mine = core.read_namespaced_secret("cfg", NS)
    theirs = core.read_namespaced_secret("cfg", NS)

    theirs.string_data = {"mode": "b"}
    core.replace_namespaced_secret("cfg", NS, theirs)
    mine.string_data = {"mode": "c"}
    with pytest.raises(client.ApiException) as conflict:
        core.replace_namespaced_secret("cfg", NS, mine)

    assert conflict.value.status == 409
    assert conflict.value.body is not None
    assert "the object has been modified" in conflict.value.body
    assert core.read_namespaced_secret("cfg", NS).data == {"mode": b64("b")}
    # Without a resourceVersion a replace is unconditional, as for every built-in resource.
    assert mine.metadata is not None
    mine.metadata.resource_version = None
    assert core.replace_namespaced_secret("cfg", NS, mine).data == {"mode": b64("c")}


def test_a_write_that_changes_nothing_keeps_the_resource_version(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    created = core.create_namespaced_secret(NS, secret("same", stringData={"k": "v"}))
    again = core.patch_namespaced_secret("same", NS, {"data": {"k": b64("v")}})
    assert created.metadata is not None
    assert again.metadata is not None
    assert again.metadata.resource_version == created.metadata.resource_version


# -- KamusSecrets ------------------------------------------------------------------------------


def test_kamus_secret_generation_and_status_subresource(
    api: client.ApiClient, kube_api: KubeApiDouble
) -> None:
    custom = client.CustomObjectsApi(api)
    created = custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        PLURAL,
        kamus_secret("db", data={"password": "ENC"}, status={"conditions": ["forged"]}),
    )
    assert isinstance(created, dict)
    assert created["kind"] == "KamusSecret"
    assert created["metadata"]["generation"] == 1
    assert "status" not in created  # written through /status only

    # A change of the spec bumps the generation; a change of metadata alone does not.
    created["data"] = {"password": "ENC2"}
    created["status"] = {"conditions": ["ignored"]}
    replaced = custom.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "db", created)
    assert isinstance(replaced, dict)
    assert replaced["metadata"]["generation"] == 2
    assert "status" not in replaced
    labelled = custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "db", {"metadata": {"labels": {"team": "a"}}}
    )
    assert isinstance(labelled, dict)
    assert labelled["metadata"]["generation"] == 2
    assert labelled["metadata"]["resourceVersion"] != replaced["metadata"]["resourceVersion"]
    patched = custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "db", {"type": "kubernetes.io/tls"}
    )
    assert isinstance(patched, dict)
    assert patched["metadata"]["generation"] == 3

    # /status changes the status only, and never the generation.
    status = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        NS,
        PLURAL,
        "db",
        {"status": {"observedGeneration": 3}, "data": {"password": "ignored"}},
    )
    assert isinstance(status, dict)
    assert status["status"] == {"observedGeneration": 3}
    assert status["data"] == {"password": "ENC2"}
    assert status["metadata"]["generation"] == 3
    read = custom.get_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "db")
    assert isinstance(read, dict)
    assert read["status"] == {"observedGeneration": 3}
    read["status"] = {"observedGeneration": 4}
    custom.replace_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "db", read)

    listed = custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
    assert isinstance(listed, dict)
    assert listed["kind"] == "KamusSecretList"
    assert listed["metadata"]["resourceVersion"]
    [item] = listed["items"]
    assert item["kind"] == "KamusSecret"  # unstructured list items keep their type
    assert item["status"] == {"observedGeneration": 4}
    assert kube_api.objects(PLURAL, NS)[0]["metadata"]["generation"] == 3

    every = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert isinstance(every, dict)
    assert [i["metadata"]["namespace"] for i in every["items"]] == [NS]


def test_a_strategic_merge_patch_of_a_custom_resource_is_unsupported(
    api: client.ApiClient,
) -> None:
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, kamus_secret("db", data={"a": "b"})
    )
    with pytest.raises(client.ApiException) as refused:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            NS,
            PLURAL,
            "db",
            {"data": {"a": "c"}},
            _content_type="application/strategic-merge-patch+json",
        )
    assert refused.value.status == 415


def test_deleting_an_owner_deletes_what_it_owns(api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    owner = custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, kamus_secret("db"))
    other = custom.create_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, kamus_secret("other")
    )
    assert isinstance(owner, dict)
    assert isinstance(other, dict)

    core.create_namespaced_secret(NS, secret("db", owners=(owner,)))
    core.create_namespaced_secret(NS, secret("shared", owners=(owner, other)))
    core.create_namespaced_secret(NS, secret("free"))

    deleted = custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "db")
    assert isinstance(deleted, dict)
    assert deleted["metadata"]["name"] == "db"  # a custom resource's delete returns the object

    remaining = {
        s.metadata.name: s.metadata for s in core.list_namespaced_secret(NS).items if s.metadata
    }
    assert set(remaining) == {"shared", "free"}
    shared_refs = remaining["shared"].owner_references or []
    assert [r.name for r in shared_refs] == ["other"]  # a surviving owner keeps it


# -- watches -----------------------------------------------------------------------------------


async def test_a_watch_replays_from_its_resource_version_then_streams_live(
    aio_api: aio_client.ApiClient, kube_api: KubeApiDouble
) -> None:
    core = aio_client.CoreV1Api(aio_api)
    listed = await core.list_namespaced_secret(NS)
    assert listed.metadata is not None
    since = listed.metadata.resource_version
    await core.create_namespaced_secret(NS, aio_secret("a", stringData={"k": "1"}))
    await core.patch_namespaced_secret("a", NS, {"stringData": {"k": "2"}})
    await core.delete_namespaced_secret("a", NS)
    await core.create_namespaced_secret("elsewhere", aio_secret("b"))  # another namespace

    watch = Watch()
    events = await replay(kube_api, watch, core.list_namespaced_secret, NS, resource_version=since)
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "a"),
        ("MODIFIED", "a"),
        ("DELETED", "a"),
    ]
    assert isinstance(events[1]["object"], aio_client.V1Secret)
    assert events[1]["object"].data == {"k": b64("2")}
    versions = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions)
    assert watch.resource_version == str(versions[-1])

    # Live: a change made while the stream is open reaches it.
    live = asyncio.create_task(
        collect(
            Watch(),
            core.list_secret_for_all_namespaces,
            resource_version=str(versions[-1]),
            timeout_seconds=5,
        )
    )
    await asyncio.to_thread(kube_api.wait_for_watches, 1)
    await core.create_namespaced_secret(NS, aio_secret("c"))
    kube_api.drop_watches()
    assert [(e["type"], e["raw_object"]["metadata"]["name"]) for e in await live] == [
        ("ADDED", "b"),
        ("ADDED", "c"),
    ]


async def test_a_watch_with_a_label_selector_sees_objects_enter_and_leave_it(
    aio_api: aio_client.ApiClient, kube_api: KubeApiDouble
) -> None:
    core = aio_client.CoreV1Api(aio_api)
    await core.create_namespaced_secret(NS, aio_secret("a", labels={"app": "x"}))
    await core.create_namespaced_secret(NS, aio_secret("b"))
    since = (await core.list_namespaced_secret(NS)).metadata
    assert since is not None
    await core.patch_namespaced_secret("b", NS, {"metadata": {"labels": {"app": "x"}}})
    await core.patch_namespaced_secret("a", NS, {"metadata": {"labels": {"app": "y"}}})

    # Without a resourceVersion, the current state comes first as ADDED events.
    current = await replay(
        kube_api, Watch(), core.list_namespaced_secret, NS, label_selector="app=x"
    )
    assert [(e["type"], e["object"].metadata.name) for e in current] == [("ADDED", "b")]
    changes = await replay(
        kube_api,
        Watch(),
        core.list_namespaced_secret,
        NS,
        label_selector="app=x",
        resource_version=since.resource_version,
    )
    assert [(e["type"], e["object"].metadata.name) for e in changes] == [
        ("ADDED", "b"),
        ("DELETED", "a"),
    ]


async def test_a_watch_from_before_a_compaction_is_gone(
    aio_api: aio_client.ApiClient, kube_api: KubeApiDouble
) -> None:
    core = aio_client.CoreV1Api(aio_api)
    listed = await core.list_namespaced_secret(NS)
    assert listed.metadata is not None
    await core.create_namespaced_secret(NS, aio_secret("a"))
    kube_api.compact()

    # With timeout_seconds the client does not retry the 410 itself: the informer must relist.
    with pytest.raises(AioApiException) as gone:
        await collect(
            Watch(),
            core.list_namespaced_secret,
            NS,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=5,
        )
    assert gone.value.status == 410
    assert "Expired" in str(gone.value.reason)

    relisted = await core.list_namespaced_secret(NS)
    assert relisted.metadata is not None
    # From the relist's resourceVersion the watch works, and ends when timeoutSeconds is up.
    started = time.monotonic()
    resumed = await collect(
        Watch(),
        core.list_namespaced_secret,
        NS,
        resource_version=relisted.metadata.resource_version,
        timeout_seconds=1,
    )
    assert resumed == []
    assert 1 <= time.monotonic() - started < 5


async def test_drop_watches_ends_open_streams_now(
    aio_api: aio_client.ApiClient, kube_api: KubeApiDouble
) -> None:
    custom = aio_client.CustomObjectsApi(aio_api)
    watches = [
        asyncio.create_task(
            collect(
                Watch(),
                custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                PLURAL,
                timeout_seconds=60,
            )
        )
        for _ in range(2)
    ]
    await asyncio.to_thread(kube_api.wait_for_watches, 2)
    assert kube_api.watches_started == 2

    started = time.monotonic()
    kube_api.drop_watches()
    assert await asyncio.wait_for(asyncio.gather(*watches), 5) == [[], []]
    assert time.monotonic() - started < 5
    assert kube_api.watch_count == 0


async def test_stopping_the_double_ends_watches_that_would_never_end(
    aio_api: aio_client.ApiClient, kube_api: KubeApiDouble
) -> None:
    core = aio_client.CoreV1Api(aio_api)
    # No timeout_seconds: the client reconnects whenever a stream ends, as an informer does.
    forever = asyncio.create_task(collect(Watch(), core.list_secret_for_all_namespaces))
    await asyncio.to_thread(kube_api.wait_for_watches, 1)

    started = time.monotonic()
    try:
        await asyncio.to_thread(kube_api.stop)
        assert time.monotonic() - started < 5
        with pytest.raises(Exception, match=r"Cannot connect|Connect"):
            await asyncio.wait_for(forever, 10)
    finally:  # never left to the garbage collector, which would log its error mid-test elsewhere
        forever.cancel()
        with contextlib.suppress(BaseException):
            await forever
    kube_api.start()
    assert (await core.list_secret_for_all_namespaces()).items == []


# -- Events, Leases, callers ---------------------------------------------------------------------


def test_events_are_created_and_listed(api: client.ApiClient, kube_api: KubeApiDouble) -> None:
    core = client.CoreV1Api(api)
    now = datetime.now(UTC).replace(microsecond=0)
    event = client.CoreV1Event.from_dict(
        {
            "metadata": {"name": "db.17a2b", "namespace": NS},
            "involvedObject": {"kind": "KamusSecret", "name": "db", "namespace": NS},
            "reason": "Synced",
            "message": "Secret db is up to date",
            "type": "Normal",
            "firstTimestamp": now.isoformat(),
            "count": 1,
        }
    )
    assert event is not None
    created = core.create_namespaced_event(NS, event)
    assert created.involved_object.name == "db"
    assert created.first_timestamp == now

    [listed] = core.list_namespaced_event(NS).items
    assert listed.reason == "Synced"
    assert [(e["reason"], e["involvedObject"]["kind"]) for e in kube_api.events] == [
        ("Synced", "KamusSecret")
    ]


def record(identity: str) -> LeaderElectionRecord:
    now = str(datetime.now(UTC).replace(tzinfo=None))
    return LeaderElectionRecord(identity, "15", now, now)


async def test_a_lease_lock_round_trip_and_a_conflicting_update(
    aio_api: aio_client.ApiClient, kube_api: KubeApiDouble
) -> None:
    first = LeaseLock("kamus-controller", NS, "pod-1", aio_api)
    second = LeaseLock("kamus-controller", NS, "pod-2", aio_api)

    found, missing = await first.get("kamus-controller", NS)
    assert not found
    assert isinstance(missing, AioApiException)
    assert missing.status == 404
    # kubernetes 37's LeaseLock.create passes pretty=True where the validated signature wants a
    # string, so it never reaches the apiserver: create the Lease it would have created.
    with pytest.raises(ValidationError, match="pretty"):
        await first.create("kamus-controller", NS, record("pod-1"))
    coordination = aio_client.CoordinationV1Api(aio_api)
    body = aio_client.V1Lease(
        metadata=aio_client.V1ObjectMeta(name="kamus-controller"),
        spec=first.update_lease(record("pod-1")),
    )
    await coordination.create_namespaced_lease(NS, body)
    with pytest.raises(AioApiException) as exists:
        await coordination.create_namespaced_lease(NS, body)
    assert exists.value.status == 409

    found, held = await first.get("kamus-controller", NS)
    assert found
    assert isinstance(held, LeaderElectionRecord)
    assert held.holder_identity == "pod-1"
    assert (await second.get("kamus-controller", NS))[0]

    # Both read the same resourceVersion; the first to write wins, the second is a conflict.
    assert await first.update("kamus-controller", NS, record("pod-1"))
    assert not await second.update("kamus-controller", NS, record("pod-2"))
    [lease] = kube_api.objects("leases", NS)
    assert lease["spec"]["holderIdentity"] == "pod-1"
    assert lease["spec"]["leaseDurationSeconds"] == 15

    # Having read the lease again, the second may take it over.
    assert (await second.get("kamus-controller", NS))[0]
    assert await second.update("kamus-controller", NS, record("pod-2"))
    assert kube_api.objects("leases", NS)[0]["spec"]["holderIdentity"] == "pod-2"


def test_resources_need_an_authorized_caller_and_suffer_faults(
    kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    def core_as(token: str) -> client.CoreV1Api:
        path = kube_api.write_kubeconfig(tmp_path / f"kubeconfig-{len(token)}", token=token)
        return client.CoreV1Api(config.new_client_from_config(config_file=str(path)))

    def refusal(api: client.CoreV1Api) -> client.ApiException:
        with pytest.raises(client.ApiException) as refused:
            api.list_namespaced_secret(NS)
        close(api.api_client)
        return refused.value

    assert refusal(core_as("not-a-token")).status == 401
    forbidden = refusal(core_as(kube_api.issue_token(NS, "app")))
    assert forbidden.status == 403
    assert forbidden.body is not None
    assert (
        'User \\"system:serviceaccount:team-a:app\\" cannot list resource \\"secrets\\" in API '
        'group \\"\\" in the namespace \\"team-a\\"'
    ) in forbidden.body

    # RBAC the admin lacks: refused, and a SelfSubjectAccessReview says so.
    kube_api.denied_access.add((GROUP, f"{PLURAL}/status", "patch"))
    admin = core_as(kube_api.admin_token)
    custom = client.CustomObjectsApi(admin.api_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, kamus_secret("db"))
    with pytest.raises(client.ApiException) as denied:
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, NS, PLURAL, "db", {"status": {"a": "b"}}
        )
    assert denied.value.status == 403
    assert denied.value.body is not None
    assert 'cannot patch resource \\"kamussecrets/status\\"' in denied.value.body
    authz = client.AuthorizationV1Api(admin.api_client)

    def may(resource: str, subresource: str | None, verb: str) -> bool:
        review = client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(
                    group=GROUP, resource=resource, subresource=subresource, verb=verb
                )
            )
        )
        status = authz.create_self_subject_access_review(review).status
        return status is not None and status.allowed

    assert may(PLURAL, None, "watch")
    assert may(PLURAL, "status", "update")
    assert not may(PLURAL, "status", "patch")
    assert not may("other", None, "get")

    kube_api.faults = Faults(fail_status=503)
    assert refusal(core_as(kube_api.admin_token)).status == 503
    kube_api.faults = Faults()
    assert admin.list_namespaced_secret(NS).items == []
    close(admin.api_client)
