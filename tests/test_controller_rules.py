"""The controller's rules, as pure functions: what Secret a KamusSecret means, and its status."""

import asyncio
import base64
import time
from datetime import UTC, datetime
from typing import Any

from controller import reconcile
from controller.controller import TokenBucket
from controller.reconcile import Condition


def kamus_secret(**fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "soluto.com/v1alpha2",
        "kind": "KamusSecret",
        "metadata": {
            "name": "db",
            "namespace": "team-a",
            "uid": "uid-1",
            "generation": 3,
            "labels": {"app": "api"},
            "annotations": {
                "team": "payments",
                reconcile.LAST_APPLIED: '{"big": "blob"}',
                reconcile.ADOPT_ANNOTATION: "true",
            },
        },
        "serviceAccount": "app",
        **fields,
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_string_data_and_binary_data_become_secret_data() -> None:
    plaintexts = {
        "stringData.username": b"admin",
        "data.key.bin": b64(b"\x00\xff binary").encode(),
    }
    data, invalid = reconcile.secret_values(plaintexts)
    assert invalid == []
    assert data == {"username": b64(b"admin"), "key.bin": b64(b"\x00\xff binary")}


def test_data_that_is_not_base64_after_decryption_is_invalid() -> None:
    data, invalid = reconcile.secret_values({"data.x": b"not base64!"})
    assert data == {}
    assert invalid == ["data.x (not base64 after decryption)"]


def test_string_data_wins_over_data_for_the_same_key_as_the_apiserver_merges() -> None:
    data, _ = reconcile.secret_values({"data.k": b64(b"from data").encode(), "stringData.k": b"s"})
    assert data == {"k": b64(b"s")}


def test_the_secret_copies_type_and_labels_and_owns_nothing_else() -> None:
    secret = reconcile.desired_secret(kamus_secret(type="kubernetes.io/tls"), {"a": "Yg=="})
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["labels"] == {"app": "api"}
    assert secret["metadata"]["annotations"] == {}
    assert secret["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "soluto.com/v1alpha2",
            "kind": "KamusSecret",
            "name": "db",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert reconcile.desired_secret(kamus_secret(), {})["type"] == "Opaque"


def test_annotations_propagate_only_when_asked_and_without_kubectl_or_kamus_ones() -> None:
    secret = reconcile.desired_secret(kamus_secret(propagateAnnotations=True), {})
    assert secret["metadata"]["annotations"] == {"team": "payments"}


def test_owner_detection_and_adoption() -> None:
    ks = kamus_secret()
    secret = reconcile.desired_secret(ks, {})
    assert reconcile.owned_by(secret, ks)
    assert reconcile.owner_of(secret) == ("team-a", "db")
    stranger = {"metadata": {"name": "db", "namespace": "team-a"}}
    assert not reconcile.owned_by(stranger, ks)
    assert reconcile.owner_of(stranger) is None
    assert reconcile.may_adopt(ks)
    assert not reconcile.may_adopt(kamus_secret() | {"metadata": {"name": "x", "uid": "u"}})


def test_differs_sees_every_field_the_controller_owns() -> None:
    ks = kamus_secret()
    desired = reconcile.desired_secret(ks, {"a": "Yg=="})
    same: dict[str, Any] = {
        **desired,
        "metadata": {**desired["metadata"], "resourceVersion": "7", "uid": "s"},
    }
    assert not reconcile.differs(same, desired)
    changes: list[dict[str, Any]] = [
        {"data": {"a": "Yw=="}},
        {"type": "kubernetes.io/tls"},
        {"metadata": {**same["metadata"], "labels": {}}},
        {"metadata": {**same["metadata"], "annotations": {"x": "y"}}},
        {"metadata": {**same["metadata"], "ownerReferences": []}},
    ]
    for change in changes:
        assert reconcile.differs({**same, **change}, desired)


def test_status_is_written_only_when_it_changes() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    ks = kamus_secret()
    ready = Condition(True, "Synced", "Secret db is up to date")
    patch = reconcile.status_patch(ks, ready, now)
    assert patch == {
        "status": {
            "observedGeneration": 3,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Synced",
                    "message": "Secret db is up to date",
                    "observedGeneration": 3,
                    "lastTransitionTime": "2026-11-26T12:00:00Z",
                }
            ],
        }
    }
    ks["status"] = patch["status"]
    assert reconcile.status_patch(ks, ready) is None
    ks["metadata"]["generation"] = 4  # an edit: observedGeneration must follow
    bumped = reconcile.status_patch(ks, ready)
    assert bumped is not None
    # Same status, so the transition time stays.
    assert bumped["status"]["conditions"][0]["lastTransitionTime"] == "2026-11-26T12:00:00Z"
    failed = reconcile.status_patch(ks, Condition(False, "DecryptionFailed", "m"))
    assert failed is not None
    assert failed["status"]["conditions"][0]["status"] == "False"
    assert failed["status"]["conditions"][0]["lastTransitionTime"] != "2026-11-26T12:00:00Z"


def test_encrypted_items_cover_both_fields() -> None:
    ks = kamus_secret(stringData={"a": "c1"}, data={"b": "c2"})
    assert reconcile.encrypted_items(ks) == {"stringData.a": "c1", "data.b": "c2"}


async def test_the_token_bucket_allows_a_burst_then_holds_to_the_rate() -> None:
    bucket = TokenBucket(qps=20, burst=5)
    sleeps: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(seconds)

    bucket.sleep = recording_sleep
    start = time.monotonic()
    for _ in range(5):
        await bucket.take()
    assert sleeps == []  # the burst goes through at once
    for _ in range(4):
        await bucket.take()
    assert len(sleeps) == 4
    # A lower bound only: four calls past the burst wait at least 4/20 s, on any machine.
    assert time.monotonic() - start >= 4 / 20 - 0.01
