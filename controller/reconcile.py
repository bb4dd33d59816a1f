"""What a KamusSecret means: the Secret it should produce and the status it should show.

Pure functions on plain dicts, so every rule is easy to read and to test.
"""

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GROUP = "soluto.com"
VERSION = "v1alpha2"
PLURAL = "kamussecrets"
KIND = "KamusSecret"
API_VERSION = f"{GROUP}/{VERSION}"

ADOPT_ANNOTATION = "kamus.soluto.com/adopt"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


@dataclass(frozen=True)
class Condition:
    ready: bool
    reason: str
    message: str


def owner_reference(kamus_secret: Mapping[str, Any]) -> dict[str, Any]:
    meta = kamus_secret["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owner_of(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (namespace, name) of the KamusSecret controlling ``obj``, if one does."""
    meta = obj.get("metadata") or {}
    for ref in meta.get("ownerReferences") or ():
        ours = ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(GROUP + "/")
        if ours and ref.get("controller"):
            return meta.get("namespace", ""), ref["name"]
    return None


def owned_by(secret: Mapping[str, Any], kamus_secret: Mapping[str, Any]) -> bool:
    uid = kamus_secret["metadata"]["uid"]
    refs = (secret.get("metadata") or {}).get("ownerReferences") or ()
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def may_adopt(kamus_secret: Mapping[str, Any]) -> bool:
    annotations = kamus_secret["metadata"].get("annotations") or {}
    return str(annotations.get(ADOPT_ANNOTATION, "")).lower() == "true"


def encrypted_items(kamus_secret: Mapping[str, Any]) -> dict[str, str]:
    """Every ciphertext, keyed ``stringData.<k>`` or ``data.<k>``."""
    items = {}
    for field in ("stringData", "data"):
        for key, value in (kamus_secret.get(field) or {}).items():
            items[f"{field}.{key}"] = value
    return items


def secret_values(plaintexts: Mapping[str, bytes]) -> tuple[dict[str, str], list[str]]:
    """The Secret's ``data`` (base64) from the decrypted items, and the items that are invalid.

    ``data`` values decrypt to base64 text, decoded into the Secret's bytes; ``stringData``
    values are the bytes themselves. A key in both takes the ``stringData`` value, as the
    apiserver merges them."""
    data: dict[str, str] = {}
    invalid = []
    for item, plaintext in sorted(plaintexts.items()):
        field, _, key = item.partition(".")
        if field == "data":
            try:
                raw = base64.b64decode(plaintext, validate=True)
            except (binascii.Error, ValueError):
                invalid.append(f"{item} (not base64 after decryption)")
                continue
            data.setdefault(key, base64.b64encode(raw).decode())
        else:
            data[key] = base64.b64encode(plaintext).decode()
    return data, invalid


def desired_secret(kamus_secret: Mapping[str, Any], data: Mapping[str, str]) -> dict[str, Any]:
    meta = kamus_secret["metadata"]
    metadata: dict[str, Any] = {
        "name": meta["name"],
        "namespace": meta["namespace"],
        "labels": dict(meta.get("labels") or {}),
        "annotations": {},
        "ownerReferences": [owner_reference(kamus_secret)],
    }
    if kamus_secret.get("propagateAnnotations"):
        metadata["annotations"] = {
            k: v
            for k, v in (meta.get("annotations") or {}).items()
            if k != LAST_APPLIED and k != ADOPT_ANNOTATION
        }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": kamus_secret.get("type") or "Opaque",
        "data": dict(data),
    }


def differs(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether the existing Secret must be rewritten (labels, annotations, type, data, owner)."""
    have, want = existing.get("metadata") or {}, desired["metadata"]
    return bool(
        (existing.get("data") or {}) != desired["data"]
        or existing.get("type", "Opaque") != desired["type"]
        or (have.get("labels") or {}) != want["labels"]
        or (have.get("annotations") or {}) != want["annotations"]
        or (have.get("ownerReferences") or []) != want["ownerReferences"]
    )


def status_patch(
    kamus_secret: Mapping[str, Any], condition: Condition, now: datetime | None = None
) -> dict[str, Any] | None:
    """The status to write, or None when it already says this (no write, no watch event)."""
    generation = kamus_secret["metadata"].get("generation")
    status = kamus_secret.get("status") or {}
    current = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), None)
    wanted_status = "True" if condition.ready else "False"
    if (
        current is not None
        and current.get("status") == wanted_status
        and current.get("reason") == condition.reason
        and current.get("message") == condition.message
        and status.get("observedGeneration") == generation
    ):
        return None
    transition = (
        current["lastTransitionTime"]
        if current is not None
        and current.get("status") == wanted_status
        and current.get("lastTransitionTime")
        else (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    ready = {
        "type": "Ready",
        "status": wanted_status,
        "reason": condition.reason,
        "message": condition.message,
        "observedGeneration": generation,
        "lastTransitionTime": transition,
    }
    return {"status": {"observedGeneration": generation, "conditions": [ready]}}
