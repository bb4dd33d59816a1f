"""API objects for the Kubernetes API double, stored and watched as kube-apiserver does.

One generic store serves every resource in :data:`RESOURCE_TYPES` over the apiserver's REST URLs,
so a controller can be tested with the official client only: create, get, list, replace, patch
(JSON patch, merge patch, and strategic merge patch for built-in types), delete, a ``status``
subresource, watch, and ``?dryRun=All`` on every write. Namespaced: Secrets, ConfigMaps, Events,
Leases, KamusSecrets and Pods, at ``/api[s]/.../namespaces/{namespace}/{plural}[/{name}]`` (and
listed or watched across namespaces at ``.../{plural}``). Cluster-scoped:
MutatingWebhookConfigurations, ValidatingAdmissionPolicies (with ``status``) and their bindings,
at ``/apis/{group}/{version}/{plural}[/{name}]``. Pod creation goes through admission
(``admission.py``).

What the apiserver does that clients depend on, and so does the double:

* ``metadata.resourceVersion`` is one cluster-wide counter (etcd's revision), bumped by every
  write; a replace or patch whose ``resourceVersion`` differs from the stored one is a 409
  Conflict (optimistic concurrency: leader election on a Lease relies on it). A write that changes
  nothing bumps nothing and sends no watch event. A dry run stores nothing and answers what it
  would have stored (a create without a resourceVersion).
* A watch replays the history after its ``resourceVersion``, then streams live changes; a
  ``resourceVersion`` older than the retained history (see :meth:`ResourceStore.compact`) is
  answered with 200 and a single ``ERROR`` event carrying a 410 Status, as after an etcd
  compaction.
* Custom resources (``ResourceType.custom``) and the admission configuration types have
  ``metadata.generation``, bumped only by changes outside ``metadata`` and ``status``; with a
  status subresource, writes to the resource ignore ``status`` and writes to ``/status`` change
  only ``status``.
* A strategic merge patch merges the lists that have a merge key (containers, volumes, env,
  volumeMounts, webhooks, ownerReferences...: see ``_MERGE_KEYS``) item by item, with the
  ``$patch`` and ``$deleteFromPrimitiveList`` directives.
* Pods are defaulted (a subset: restartPolicy, dnsPolicy, the containers' imagePullPolicy...,
  and the service account ``default``) and validated as the apiserver validates them, for
  what tests need: containers required, with names and images; container names unique across
  containers and initContainers; volume names unique; every volumeMount naming a volume, at a
  mountPath unique in its container. A refusal is 422 Invalid, worded as the apiserver's.
* Deleting an object deletes its dependents (``metadata.ownerReferences``), standing in for the
  garbage collector, synchronously.

Not modelled: namespaces as objects (any namespace exists; admission reads labels a test gives
them), schema validation of custom resources and of the admission configuration types, the rest
of pod validation and the immutability of a pod's spec, server-side apply, pagination (``limit``
is ignored: a list is always complete), bookmarks, finalizers and graceful deletion.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import re
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

Object = dict[str, Any]


def status_body(code: int, reason: str, message: str, **details: Any) -> Object:
    """A ``metav1.Status`` failure, as the apiserver sends with every error."""
    body: Object = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


class ApiError(Exception):
    """An error answer: the HTTP status and the Status document the apiserver sends with it."""

    def __init__(self, code: int, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.body = status_body(code, reason, message, **details)


# -- resource types ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core API
    version: str
    plural: str
    kind: str
    # A CustomResourceDefinition's resource, which the apiserver serves unstructured: it has a
    # metadata.generation, its list items keep kind and apiVersion, a delete answers with the
    # object rather than a Status, and a strategic merge patch is refused (415).
    custom: bool = False
    status_subresource: bool = False
    # Cluster-scoped types (namespaced False) are stored under the namespace "" and served at
    # /apis/{group}/{version}/{plural}[/{name}], their objects without metadata.namespace.
    namespaced: bool = True
    # A built-in type with metadata.generation (custom resources always have one).
    generation: bool = False
    # Defaulting and validation on every write of the whole object (not of /status).
    normalize: Callable[[Object], None] | None = field(default=None, compare=False)
    # Defaulting alone, as the apiserver applies it when it decodes a body: before admission, and
    # again after each mutating webhook's patch.
    default: Callable[[Object], None] | None = field(default=None, compare=False)

    @property
    def tracks_generation(self) -> bool:
        return self.custom or self.generation

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How error messages name the resource: ``secrets``, ``leases.coordination.k8s.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def details(self, name: str) -> dict[str, str]:
        """A Status's details; ``group`` is omitted when empty, as Go's ``omitempty`` does."""
        details = {"name": name, "group": self.group, "kind": self.plural}
        return {k: v for k, v in details.items() if v}


_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def _normalize_secret(secret: Object) -> None:
    """``stringData`` is write-only: merged into ``data`` as base64 (winning over a ``data`` key
    of the same name) and dropped; ``type`` defaults to Opaque. Validated as the apiserver does,
    so a controller writing plain text into ``data`` fails here as it would in a cluster."""
    data = secret.get("data") or {}
    for key, value in data.items():
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise ApiError(
                400,
                "BadRequest",
                f'Secret in version "v1" cannot be handled as a Secret: illegal base64 data in '
                f"data[{key}]",
            ) from None
    for key, value in (secret.pop("stringData", None) or {}).items():
        if not isinstance(value, str):
            raise ApiError(
                400,
                "BadRequest",
                f'Secret in version "v1" cannot be handled as a Secret: stringData[{key}] is '
                "not a string",
            )
        data[key] = base64.b64encode(value.encode()).decode()
    for key in data:
        if not _SECRET_KEY.fullmatch(key):
            name = secret.get("metadata", {}).get("name", "")
            raise ApiError(
                422,
                "Invalid",
                f'Secret "{name}" is invalid: data[{key}]: Invalid value: "{key}": a valid config '
                "key must consist of alphanumeric characters, '-', '_' or '.'",
                name=name,
                kind="Secret",
            )
    if data:
        secret["data"] = data
    secret["type"] = secret.get("type") or "Opaque"


def _normalize_config_map(config_map: Object) -> None:
    """``data`` holds strings under valid config keys, as the apiserver validates them."""
    name = config_map.get("metadata", {}).get("name", "")
    for key, value in (config_map.get("data") or {}).items():
        if not isinstance(value, str):
            raise ApiError(
                400,
                "BadRequest",
                f'ConfigMap in version "v1" cannot be handled as a ConfigMap: data[{key}] is not '
                "a string",
            )
        if not _SECRET_KEY.fullmatch(key):
            raise ApiError(
                422,
                "Invalid",
                f'ConfigMap "{name}" is invalid: data[{key}]: Invalid value: "{key}": a valid '
                "config key must consist of alphanumeric characters, '-', '_' or '.'",
                name=name,
                kind="ConfigMap",
            )


_CONTAINER_LISTS = ("initContainers", "containers")


def _default_pod(pod: Object) -> None:
    """The defaults the apiserver gives a pod that its tests may see (a subset: no resources, no
    probes' defaults, no priority), and the ServiceAccount admission plugin's service account
    (but not its ``kube-api-access-*`` token volume)."""
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return
    for key, value in (
        ("restartPolicy", "Always"),
        ("terminationGracePeriodSeconds", 30),
        ("dnsPolicy", "ClusterFirst"),
        ("schedulerName", "default-scheduler"),
        ("enableServiceLinks", True),
    ):
        spec.setdefault(key, value)
    if not isinstance(spec.get("securityContext"), dict):
        spec["securityContext"] = {}
    account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    spec["serviceAccountName"] = spec["serviceAccount"] = account
    for list_name in _CONTAINER_LISTS:
        for container in spec.get(list_name) or ():
            if not isinstance(container, dict):
                continue
            image = str(container.get("image") or "")
            tag = image.rpartition("/")[2].partition("@")[0]
            latest = ":" not in tag or tag.endswith(":latest")
            pull = "Always" if latest and "@" not in image else "IfNotPresent"
            container.setdefault("imagePullPolicy", pull)
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")


FieldError = tuple[str, str, str]  # field path, the cause's reason, its message


def _pod_errors(pod: Object) -> list[FieldError]:
    """The apiserver's pod validation, in its order, for what tests need: required containers,
    names and images; container names unique across containers and initContainers; volume names
    unique; every volumeMount naming a volume, at a mountPath unique within its container."""
    errors: list[FieldError] = []
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return [("spec.containers", "FieldValueRequired", "Required value")]

    def duplicate(path: str, value: object) -> None:
        errors.append((path, "FieldValueDuplicate", f"Duplicate value: {json.dumps(value)}"))

    volumes: set[str] = set()
    for i, volume in enumerate(spec.get("volumes") or ()):
        name = volume.get("name") if isinstance(volume, dict) else None
        path = f"spec.volumes[{i}].name"
        if not name:
            errors.append((path, "FieldValueRequired", "Required value"))
        elif name in volumes:
            duplicate(path, name)
        else:
            volumes.add(name)
    if not spec.get("containers"):
        errors.append(("spec.containers", "FieldValueRequired", "Required value"))
    names: set[str] = set()
    # The regular containers are validated first; an init container clashing with one of them
    # is the duplicate.
    for list_name in ("containers", "initContainers"):
        for i, container in enumerate(spec.get(list_name) or ()):
            base = f"spec.{list_name}[{i}]"
            if not isinstance(container, dict):
                errors.append((base, "FieldValueInvalid", "Invalid value: not an object"))
                continue
            name = container.get("name")
            if not name:
                errors.append((f"{base}.name", "FieldValueRequired", "Required value"))
            elif name in names:
                duplicate(f"{base}.name", name)
            else:
                names.add(name)
            if not container.get("image"):
                errors.append((f"{base}.image", "FieldValueRequired", "Required value"))
            paths: set[str] = set()
            for j, mount in enumerate(container.get("volumeMounts") or ()):
                at = f"{base}.volumeMounts[{j}]"
                mount = mount if isinstance(mount, dict) else {}
                volume_name = mount.get("name")
                if not volume_name:
                    errors.append((f"{at}.name", "FieldValueRequired", "Required value"))
                elif volume_name not in volumes:
                    errors.append(
                        (
                            f"{at}.name",
                            "FieldValueNotFound",
                            f"Not found: {json.dumps(volume_name)}",
                        )
                    )
                mount_path = mount.get("mountPath")
                if not mount_path:
                    errors.append((f"{at}.mountPath", "FieldValueRequired", "Required value"))
                elif mount_path in paths:
                    errors.append(
                        (
                            f"{at}.mountPath",
                            "FieldValueInvalid",
                            f"Invalid value: {json.dumps(mount_path)}: must be unique",
                        )
                    )
                else:
                    paths.add(mount_path)
    return errors


def invalid(kind: str, name: str, errors: list[FieldError]) -> ApiError:
    """422 Invalid, worded as the apiserver words a field error list."""
    texts = [f"{path}: {message}" for path, _, message in errors]
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    causes = [{"reason": r, "message": m, "field": f} for f, r, m in errors]
    return ApiError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {summary}',
        name=name,
        kind=kind,
        causes=causes,
    )


def _normalize_pod(pod: Object) -> None:
    _default_pod(pod)
    errors = _pod_errors(pod)
    if errors:
        raise invalid("Pod", (pod.get("metadata") or {}).get("name", ""), errors)
    if not isinstance(pod.get("status"), dict):
        pod["status"] = {"phase": "Pending"}  # what the apiserver gives a new pod


SECRETS = ResourceType("", "v1", "secrets", "Secret", normalize=_normalize_secret)
CONFIG_MAPS = ResourceType("", "v1", "configmaps", "ConfigMap", normalize=_normalize_config_map)
EVENTS = ResourceType("", "v1", "events", "Event")
LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "Lease")
KAMUS_SECRETS = ResourceType(
    "soluto.com", "v1alpha2", "kamussecrets", "KamusSecret", custom=True, status_subresource=True
)
PODS = ResourceType(
    "", "v1", "pods", "Pod", status_subresource=True, normalize=_normalize_pod, default=_default_pod
)
ADMISSION_GROUP = "admissionregistration.k8s.io"
MUTATING_WEBHOOK_CONFIGURATIONS = ResourceType(
    ADMISSION_GROUP,
    "v1",
    "mutatingwebhookconfigurations",
    "MutatingWebhookConfiguration",
    namespaced=False,
    generation=True,
)
VALIDATING_ADMISSION_POLICIES = ResourceType(
    ADMISSION_GROUP,
    "v1",
    "validatingadmissionpolicies",
    "ValidatingAdmissionPolicy",
    namespaced=False,
    generation=True,
    status_subresource=True,
)
VALIDATING_ADMISSION_POLICY_BINDINGS = ResourceType(
    ADMISSION_GROUP,
    "v1",
    "validatingadmissionpolicybindings",
    "ValidatingAdmissionPolicyBinding",
    namespaced=False,
    generation=True,
)
RESOURCE_TYPES: dict[tuple[str, str, str], ResourceType] = {
    (t.group, t.version, t.plural): t
    for t in (
        SECRETS,
        CONFIG_MAPS,
        EVENTS,
        LEASES,
        KAMUS_SECRETS,
        PODS,
        MUTATING_WEBHOOK_CONFIGURATIONS,
        VALIDATING_ADMISSION_POLICIES,
        VALIDATING_ADMISSION_POLICY_BINDINGS,
    )
}


# -- patches -----------------------------------------------------------------------------------


class PatchError(ValueError):
    pass


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, ``null`` deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path.split("/")[1:]]


def _child(container: Any, token: str) -> Any:
    if isinstance(container, dict) and token in container:
        return container[token]
    if isinstance(container, list) and token.isdigit() and int(token) < len(container):
        return container[int(token)]
    raise PatchError(f"path element {token!r} not found")


def _walk(doc: Any, tokens: list[str]) -> Any:
    for token in tokens:
        doc = _child(doc, token)
    return doc


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent, last = _walk(doc, tokens[:-1]), tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list) and last == "-":
        parent.append(value)
    elif isinstance(parent, list) and last.isdigit() and int(last) <= len(parent):
        parent.insert(int(last), value)
    else:
        raise PatchError(f"cannot add at element {last!r}")
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent, last = _walk(doc, tokens[:-1]), tokens[-1]
    _child(parent, last)  # must exist
    if isinstance(parent, dict):
        del parent[last]
    else:
        del parent[int(last)]
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch: a list of add/remove/replace/move/copy/test operations."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch is a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict):
            raise PatchError(f"invalid operation {op!r}")
        kind, path = op.get("op"), _pointer(op.get("path"))
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"{kind} needs a value")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            value = copy.deepcopy(op["value"])
            doc = _add(_remove(doc, path), path, value) if path else value
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from"))
            value = copy.deepcopy(_walk(doc, source))
            if kind == "move":
                doc = _remove(doc, source)
            doc = _add(doc, path, value)
        elif kind == "test":
            if _walk(doc, path) != op["value"]:
                raise PatchError(f"test failed at {op['path']}")
        else:
            raise PatchError(f"unknown operation {kind!r}")
    return doc


# Strategic merge: the merge key of each list field that has one, by field name (unambiguous
# for the types the double serves). Lists without one are replaced, but for ``finalizers``, whose
# strategy is a merge of values.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "resourceClaims": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "webhooks": "name",
}
_MERGED_VALUE_LISTS = {"finalizers"}


def _directive(value: Any) -> Any:
    return value.get("$patch") if isinstance(value, dict) else None


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch: a merge patch but for lists with a merge key (merged item by
    item; ``$patch: delete`` removes one, ``$patch: replace`` replaces the list or map) and the
    ``$deleteFromPrimitiveList/`` directive. ``$setElementOrder`` and ``$retainKeys`` are
    accepted and ignored."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if _directive(patch) == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.partition("/")[2]
            if isinstance(result.get(name), list) and isinstance(value, list):
                result[name] = [v for v in result[name] if v not in value]
            continue
        if value is None or _directive(value) == "delete":
            result.pop(key, None)
        elif isinstance(value, list) and key in _MERGE_KEYS:
            current = result.get(key)
            result[key] = _merge_list(current if isinstance(current, list) else [], value, key)
        elif isinstance(value, list) and key in _MERGED_VALUE_LISTS:
            kept = result.get(key)
            values: list[Any] = kept if isinstance(kept, list) else []
            result[key] = [*values, *(v for v in value if v not in values)]
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _merge_list(current: list[Any], patch: list[Any], field_name: str) -> list[Any]:
    key = _MERGE_KEYS[field_name]
    if any(_directive(item) == "replace" for item in patch):
        return [
            {k: v for k, v in item.items() if k != "$patch"} if isinstance(item, dict) else item
            for item in copy.deepcopy(patch)
            if _directive(item) != "replace" or len(item) > 1
        ]
    items = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"map: {item!r} does not contain declared merge key: {key}")
        index = next(
            (n for n, e in enumerate(items) if isinstance(e, dict) and e.get(key) == item[key]),
            None,
        )
        if _directive(item) == "delete":
            if index is not None:
                del items[index]
        elif index is None:
            items.append(strategic_merge_patch({}, item))
        else:
            items[index] = strategic_merge_patch(items[index], item)
    return items


MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def apply_patch(rt: ResourceType, current: Object, content_type: str, patch: Any) -> Any:
    if content_type == JSON_PATCH:
        return json_patch(current, patch)
    if content_type == MERGE_PATCH or (content_type == STRATEGIC_MERGE_PATCH and not rt.custom):
        if not isinstance(patch, dict):
            raise PatchError("a merge patch is a JSON object")
        if content_type == MERGE_PATCH:
            return merge_patch(current, patch)
        return strategic_merge_patch(current, patch)
    # Custom resources have no Go struct to carry strategic merge keys: the apiserver refuses
    # that patch type for them (the python client's CoreV1Api sends it for dict bodies).
    raise ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{JSON_PATCH}, {MERGE_PATCH}" + ("" if rt.custom else f", {STRATEGIC_MERGE_PATCH}"),
    )


# -- selectors ---------------------------------------------------------------------------------

Selector = Callable[[Object], bool]


Requirement = tuple[str, str, str]  # key, operator ("=", "!=", "exists", "!exists"), value


def _requirements(text: str) -> list[Requirement]:
    """``a=b``, ``a==b``, ``a!=b``, ``a`` and ``!a`` terms; set-based terms (``a in (b)``) are
    not supported by the double and answered 400 rather than matched wrongly."""
    requirements: list[Requirement] = []
    for term in (t.strip() for t in text.split(",")):
        match = re.fullmatch(r"(!?)([\w./-]+)(?:\s*(==|=|!=)\s*([\w.-]*))?", term)
        if term and (match is None or (match[1] and match[3])):
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
        if match is not None:
            negate, key, op, value = match.groups()
            op = {None: "!exists" if negate else "exists", "==": "="}.get(op, op)
            requirements.append((key, op, value or ""))
    return requirements


def _holds(actual: object, op: str, value: str) -> bool:
    return {
        "=": actual == value,
        "!=": actual != value,
        "exists": actual is not None,
        "!exists": actual is None,
    }[op]


def selector(label_selector: str | None, field_selector: str | None) -> Selector:
    """A ``labelSelector`` and ``fieldSelector`` (``metadata.name``/``metadata.namespace``)."""
    labels = _requirements(label_selector or "")
    fields = _requirements(field_selector or "")
    for key, _, _ in fields:
        if key not in ("metadata.name", "metadata.namespace"):
            raise ApiError(400, "BadRequest", f'field label not supported: "{key}"')

    def matches(obj: Object) -> bool:
        meta = obj.get("metadata") or {}
        values = meta.get("labels") or {}
        return all(_holds(values.get(k), op, v) for k, op, v in labels) and all(
            _holds(meta.get(k.removeprefix("metadata.")), op, v) for k, op, v in fields
        )

    return matches


# -- the store ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One write, as etcd's watch reports it; ``old`` is the object before a MODIFIED."""

    rv: int
    type: str  # ADDED, MODIFIED or DELETED
    rt: ResourceType
    obj: Object
    old: Object | None = None


@dataclass(eq=False)
class _Watcher:
    rt: ResourceType
    namespace: str | None
    matches: Selector
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Change | None]

    def event(self, change: Change) -> bytes | None:
        """The line this watcher sends for ``change``, if any.

        With a selector, an object that starts matching is ADDED and one that stops matching is
        DELETED (in its last matching state, at the change's resourceVersion), as the apiserver's
        watch cache reports them."""
        obj = change.obj
        if change.rt != self.rt or (
            self.namespace and obj["metadata"].get("namespace") != self.namespace
        ):
            return None
        now = self.matches(obj)
        before = change.old is not None and self.matches(change.old)
        kind = change.type
        if kind == "MODIFIED" and now != before:
            kind = "ADDED" if now else "DELETED"
            if not now:
                assert change.old is not None
                obj = copy.deepcopy(change.old)
                obj["metadata"]["resourceVersion"] = str(change.rv)
        elif not now:
            return None
        return _line(kind, obj)


def _line(kind: str, obj: Object) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _prune_nulls(value: Any) -> Any:
    """A ``null`` field is an unset one: typed objects (and structural schemas) drop them."""
    if isinstance(value, dict):
        return {k: _prune_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_prune_nulls(v) for v in value]
    return value


def _spec_of(obj: Object) -> Object:
    """Everything ``metadata.generation`` tracks: the object but its metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


def check_namespace(rt: ResourceType, meta: Object, namespace: str) -> None:
    """A namespaced object's ``metadata.namespace``, if set, must be the request's (a
    cluster-scoped object's is ignored and dropped, as the apiserver does)."""
    if rt.namespaced and meta.get("namespace") not in (None, "", namespace):
        raise ApiError(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        )


# The fields of metadata that only the apiserver sets; a write cannot change them.
_SYSTEM_METADATA = ("uid", "creationTimestamp", "generation", "deletionTimestamp")


class ResourceStore:
    """Objects by (type, namespace, name), the change history, and the open watches.

    Thread-safe: HTTP handlers run on uvicorn's loop while tests call in from their own thread.
    Each watch owns an asyncio queue on the server's loop; changes reach it through
    ``call_soon_threadsafe``, in resourceVersion order."""

    def __init__(self, history_limit: int = 10_000) -> None:
        self._lock = threading.RLock()
        self._objects: dict[tuple[ResourceType, str, str], Object] = {}
        self._history: list[Change] = []
        self._history_limit = history_limit
        self._rv = 1  # never "0": that resourceVersion means "any" to a watch or list
        self._compacted = 1  # a watch from below this resourceVersion has lost events: 410
        self._watchers: set[_Watcher] = set()
        self._accepting_watches = True
        self.watches_started = 0
        # Every list and watch: (verb, plural, namespace or None, labelSelector or None), so a
        # test can tell what a client asked to see.
        self.collection_reads: list[tuple[str, str, str | None, str | None]] = []

    # -- test controls ---------------------------------------------------------------------

    def reset(self) -> None:
        """An empty cluster. The resourceVersion counter keeps counting, as etcd's revision
        would, so a client still holding an older one is told 410 rather than silently
        resuming in a different history."""
        self.drop_watches()
        with self._lock:
            self._objects.clear()
            self._history.clear()
            self._compacted = self._rv
            self.watches_started = 0
            self._accepting_watches = True

    def compact(self) -> None:
        """Forget the history: a watch from any resourceVersion before now is told 410 Gone."""
        with self._lock:
            self._history.clear()
            self._compacted = self._rv

    def drop_watches(self, *, refuse_new: bool = False) -> None:
        """End every open watch stream now (the client sees its stream end and resumes).
        ``refuse_new`` also ends new watches at once, until :meth:`accept_watches`: uvicorn
        waits for open responses when it shuts down, so a watch must not start during that."""
        with self._lock:
            self._accepting_watches = not refuse_new
            for watcher in self._watchers:
                self._deliver(watcher, None)
            # Forgotten now, not when each stream ends on its loop: watch_count is exact at once.
            self._watchers.clear()

    def accept_watches(self) -> None:
        with self._lock:
            self._accepting_watches = True

    @property
    def watch_count(self) -> int:
        """Watch streams open now."""
        with self._lock:
            return len(self._watchers)

    def objects(self, plural: str, namespace: str | None = None) -> list[Object]:
        """Copies of the stored objects of a resource, by namespace and name."""
        with self._lock:
            found = [
                copy.deepcopy(obj)
                for (rt, ns, _), obj in self._objects.items()
                if rt.plural == plural and namespace in (None, ns)
            ]
        return sorted(
            found, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])
        )

    # -- verbs -----------------------------------------------------------------------------

    def create(
        self,
        rt: ResourceType,
        namespace: str,
        body: Object,
        *,
        dry_run: bool = False,
        validate: Callable[[Object], None] | None = None,
    ) -> Object:
        """Store a new object (``namespace`` "" for a cluster-scoped type). ``validate`` is
        validating admission: it sees the object as it would be stored and raises to refuse it.
        A ``dry_run`` does everything but store: it answers the object, without a
        resourceVersion, as the apiserver does."""
        obj = _prune_nulls(body)
        meta = obj.get("metadata") or {}
        check_namespace(rt, meta, namespace)
        name = meta.get("name") or ""
        if not name and meta.get("generateName"):
            name = meta["generateName"] + secrets.token_hex(3)[:5]
        if not name:
            raise ApiError(
                422,
                "Invalid",
                f'{rt.kind} "" is invalid: metadata.name: Required value: name or generateName '
                "is required",
                kind=rt.kind,
            )
        if meta.get("resourceVersion"):
            # etcd3's store refuses this with a plain error, which the apiserver answers as 500.
            raise ApiError(
                500,
                "InternalError",
                "Internal error occurred: resourceVersion should not be set on objects to be "
                "created",
            )
        for key in _SYSTEM_METADATA:
            meta.pop(key, None)
        meta.pop("namespace", None)
        meta["name"] = name
        if rt.namespaced:
            meta["namespace"] = namespace
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now())
        if rt.tracks_generation:
            meta["generation"] = 1
        obj["metadata"] = meta
        if rt.status_subresource:
            obj.pop("status", None)  # the status is written through /status only
        if rt.normalize is not None:
            rt.normalize(obj)
        obj.update(kind=rt.kind, apiVersion=rt.api_version)
        if validate is not None:
            validate(copy.deepcopy(obj))
        with self._lock:
            if (rt, namespace, name) in self._objects:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{rt.qualified} "{name}" already exists',
                    **rt.details(name),
                )
            if dry_run:
                return copy.deepcopy(obj)
            return self._commit(rt, "ADDED", obj)

    def get(self, rt: ResourceType, namespace: str, name: str) -> Object:
        with self._lock:
            return copy.deepcopy(self._current(rt, namespace, name))

    def list(self, rt: ResourceType, namespace: str | None, matches: Selector) -> Object:
        with self._lock:
            items = [
                copy.deepcopy(obj)
                for (t, ns, _), obj in sorted(self._objects.items(), key=lambda kv: kv[0][1:])
                if t == rt and namespace in (None, ns) and matches(obj)
            ]
            version = str(self._rv)
        if not rt.custom:
            # A typed list encodes its items without kind and apiVersion; an unstructured one
            # (custom resources) keeps them.
            for item in items:
                item.pop("kind", None)
                item.pop("apiVersion", None)
        return {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": version},
            "items": items,
        }

    def replace(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: Object,
        *,
        status: bool = False,
        dry_run: bool = False,
    ) -> Object:
        with self._lock:
            current = self._current(rt, namespace, name)
            return self._update(rt, current, body, status=status, dry_run=dry_run)

    def patch(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        content_type: str,
        patch: Any,
        *,
        status: bool = False,
        dry_run: bool = False,
    ) -> Object:
        with self._lock:
            current = self._current(rt, namespace, name)
            try:
                candidate = apply_patch(rt, current, content_type, patch)
            except PatchError as exc:
                raise ApiError(422, "Invalid", f"the patch could not be applied: {exc}") from None
            if not isinstance(candidate, dict):
                raise ApiError(422, "Invalid", "the patch does not leave an object")
            # A patch that sets metadata.resourceVersion is a precondition, as in a replace.
            return self._update(rt, current, candidate, status=status, dry_run=dry_run)

    def delete(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        options: Object | None = None,
        *,
        dry_run: bool = False,
    ) -> Object:
        preconditions = (options or {}).get("preconditions") or {}
        with self._lock:
            current = self._current(rt, namespace, name)
            for key in ("uid", "resourceVersion"):
                wanted = preconditions.get(key)
                if wanted and wanted != current["metadata"][key]:
                    raise ApiError(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on {rt.qualified} "{name}": Precondition '
                        f"failed: {key} in precondition: {wanted}, {key} in object meta: "
                        f"{current['metadata'][key]}",
                        **rt.details(name),
                    )
            deleted = copy.deepcopy(current) if dry_run else self._delete(rt, current)
        if rt.custom:
            return deleted  # the custom resource store answers with the deleted object
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {**rt.details(name), "uid": current["metadata"]["uid"]},
        }

    async def watch(
        self,
        rt: ResourceType,
        namespace: str | None,
        since: int | None,
        matches: Selector,
        timeout_seconds: float | None,
    ) -> AsyncIterator[bytes]:
        """The events of a watch request, as lines of JSON; ends on timeout or when dropped."""
        loop = asyncio.get_running_loop()
        watcher = _Watcher(rt, namespace, matches, loop, asyncio.Queue())
        expired: Object | None = None
        backlog: list[Change] = []
        with self._lock:
            if not self._accepting_watches:
                return
            if since is not None and since < self._compacted:
                expired = status_body(
                    410, "Expired", f"too old resource version: {since} ({self._compacted})"
                )
            elif since is None:
                # No (or "0") resourceVersion: the current state as synthetic ADDED events.
                backlog = [
                    Change(int(obj["metadata"]["resourceVersion"]), "ADDED", t, obj)
                    for (t, _, _), obj in self._objects.items()
                    if t == rt
                ]
            else:
                backlog = [c for c in self._history if c.rv > since]
            if expired is None:
                # Registered under the lock that orders writes: no change is missed or repeated.
                self._watchers.add(watcher)
                self.watches_started += 1
        if expired is not None:
            yield _line("ERROR", expired)
            return
        try:
            for change in sorted(backlog, key=lambda c: c.rv):
                if line := watcher.event(change):
                    yield line
            deadline = None if timeout_seconds is None else loop.time() + timeout_seconds
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                try:
                    change_or_end = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    return  # timeoutSeconds: the apiserver ends the stream cleanly
                if change_or_end is None:
                    return
                if line := watcher.event(change_or_end):
                    yield line
        finally:
            with self._lock:
                self._watchers.discard(watcher)

    # -- internals (called with the lock held) ---------------------------------------------

    def _current(self, rt: ResourceType, namespace: str, name: str) -> Object:
        obj = self._objects.get((rt, namespace, name))
        if obj is None:
            raise ApiError(
                404, "NotFound", f'{rt.qualified} "{name}" not found', **rt.details(name)
            )
        return obj

    def _update(
        self, rt: ResourceType, current: Object, body: Object, *, status: bool, dry_run: bool
    ) -> Object:
        candidate = _prune_nulls(body)
        meta = candidate.get("metadata") or {}
        name = current["metadata"]["name"]
        if meta.get("name") not in (None, "", name):
            raise ApiError(
                400,
                "BadRequest",
                f"the name of the object ({meta['name']}) does not match the name on the URL "
                f"({name})",
            )
        check_namespace(rt, meta, current["metadata"].get("namespace", ""))
        conflict = f'Operation cannot be fulfilled on {rt.qualified} "{name}": '
        if meta.get("resourceVersion") not in (None, "", current["metadata"]["resourceVersion"]):
            raise ApiError(
                409,
                "Conflict",
                conflict + "the object has been modified; please apply your changes to the "
                "latest version and try again",
                **rt.details(name),
            )
        if meta.get("uid") not in (None, "", current["metadata"]["uid"]):
            # The name was deleted and created again since the client read it.
            raise ApiError(
                409,
                "Conflict",
                conflict + f"Precondition failed: UID in precondition: {meta['uid']}, UID in "
                f"object meta: {current['metadata']['uid']}",
                **rt.details(name),
            )
        if status:
            # The status subresource: everything but the status stays as stored.
            new = copy.deepcopy(current)
            if "status" in candidate:
                new["status"] = candidate["status"]
            else:
                new.pop("status", None)
        else:
            new = candidate
            new["metadata"] = {
                **{k: v for k, v in meta.items() if k != "namespace"},
                **{k: current["metadata"][k] for k in _SYSTEM_METADATA if k in current["metadata"]},
                "name": name,
                "resourceVersion": current["metadata"]["resourceVersion"],
            }
            if rt.namespaced:
                new["metadata"]["namespace"] = current["metadata"]["namespace"]
            if rt.status_subresource:
                new.pop("status", None)
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
            if rt.normalize is not None:
                rt.normalize(new)
            if rt.tracks_generation and _spec_of(new) != _spec_of(current):
                new["metadata"]["generation"] = current["metadata"]["generation"] + 1
        new.update(kind=rt.kind, apiVersion=rt.api_version)
        if new == current or dry_run:
            # A no-op write: no new resourceVersion, no event. A dry run answers what it would
            # have stored, at the current resourceVersion.
            return copy.deepcopy(new)
        return self._commit(rt, "MODIFIED", new, old=current)

    def _delete(self, rt: ResourceType, obj: Object) -> Object:
        """Delete ``obj``, then what it owns: a dependent goes when none of its owners is left,
        else only loses the dangling reference (what the garbage collector does)."""
        meta = obj["metadata"]
        deleted = self._commit(rt, "DELETED", obj)
        for key in list(self._objects):
            dependent = self._objects.get(key)  # re-read: a recursive delete may have changed it
            if dependent is None:
                continue
            refs = dependent["metadata"].get("ownerReferences") or []
            # A namespaced owner owns only in its namespace; a cluster-scoped one in any.
            owner_namespace = meta.get("namespace")
            if owner_namespace not in (None, dependent["metadata"].get("namespace")) or not any(
                ref.get("uid") == meta["uid"] for ref in refs
            ):
                continue
            remaining = [ref for ref in refs if ref.get("uid") != meta["uid"]]
            if any(self._exists(ref.get("uid")) for ref in remaining):
                updated = copy.deepcopy(dependent)
                updated["metadata"]["ownerReferences"] = remaining
                self._commit(key[0], "MODIFIED", updated, old=dependent)
            else:
                self._delete(key[0], dependent)
        return deleted

    def _exists(self, uid: str | None) -> bool:
        return any(obj["metadata"]["uid"] == uid for obj in self._objects.values())

    @staticmethod
    def _key(rt: ResourceType, obj: Object) -> tuple[ResourceType, str, str]:
        return (rt, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])

    def _commit(
        self, rt: ResourceType, kind: str, obj: Object, old: Object | None = None
    ) -> Object:
        """Store a write at the next resourceVersion, record it and tell the watches."""
        self._rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._rv)
        obj.update(kind=rt.kind, apiVersion=rt.api_version)
        if kind == "DELETED":
            del self._objects[self._key(rt, obj)]
        else:
            self._objects[self._key(rt, obj)] = obj
        change = Change(self._rv, kind, rt, obj, old)
        self._history.append(change)
        if len(self._history) > self._history_limit:
            self._compacted = self._history.pop(0).rv
        for watcher in list(self._watchers):
            if watcher.rt == rt:
                self._deliver(watcher, change)
        return copy.deepcopy(obj)

    def _deliver(self, watcher: _Watcher, change: Change | None) -> None:
        try:
            watcher.loop.call_soon_threadsafe(watcher.queue.put_nowait, change)
        except RuntimeError:  # the server's loop is gone: so is the stream
            self._watchers.discard(watcher)


# -- HTTP --------------------------------------------------------------------------------------

# (request, verb, group, resource, namespace, name): None if allowed, else the 401/403 to send.
# The resource is the plural, or "plural/status" for the status subresource, as RBAC names them.
Authorize = Callable[[Request, str, str, str, str | None, str | None], Response | None]

VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")


def served(group: str, resource: str, verb: str) -> bool:
    """Whether the double serves ``verb`` on ``resource`` (``plural`` or ``plural/status``)."""
    plural, _, sub = resource.partition("/")
    for rt in RESOURCE_TYPES.values():
        if (rt.group, rt.plural) == (group, plural):
            if not sub:
                return verb in VERBS
            return sub == "status" and rt.status_subresource and verb in ("get", "update", "patch")
    return False


@dataclass(frozen=True)
class AdmissionAttributes:
    """What admission knows of a write: the caller's request, the type, the namespace ("" for a
    cluster-scoped type), the operation and whether it is a dry run."""

    request: Request
    rt: ResourceType
    namespace: str
    operation: str
    dry_run: bool
    field_manager: str | None = None


class Admission(Protocol):
    """Admission control on creates: ``mutate`` before the object is defaulted and validated
    (it answers the object to store, or raises :class:`ApiError`), ``validate`` after (it
    raises to refuse the object as it would be stored)."""

    async def mutate(self, attrs: AdmissionAttributes, obj: Object) -> Object: ...

    def validate(self, attrs: AdmissionAttributes, obj: Object) -> None: ...


def install_resource_routes(
    app: FastAPI, store: ResourceStore, authorize: Authorize, admission: Admission | None = None
) -> None:
    """The REST routes of every type in :data:`RESOURCE_TYPES`, on ``app``: namespaced types
    under ``.../namespaces/{namespace}/{plural}`` (and listed across namespaces at
    ``.../{plural}``), cluster-scoped ones at ``.../{plural}[/{name}]``."""

    def endpoint(status: bool) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            try:
                return await _serve(store, authorize, admission, request, status=status)
            except ApiError as exc:
                return JSONResponse(exc.body, status_code=exc.code)

        return serve

    for prefix in ("/api/{version}", "/apis/{group}/{version}"):  # core, and named groups
        namespaced = prefix + "/namespaces/{namespace}/{plural}"
        app.add_route(namespaced, endpoint(False), methods=["GET", "POST"])
        app.add_route(
            namespaced + "/{name}", endpoint(False), methods=["GET", "PUT", "PATCH", "DELETE"]
        )
        app.add_route(
            namespaced + "/{name}/status", endpoint(True), methods=["GET", "PUT", "PATCH"]
        )
        # All namespaces (list and watch), or a cluster-scoped type's collection.
        app.add_route(prefix + "/{plural}", endpoint(False), methods=["GET", "POST"])
        cluster = prefix + "/{plural}/{name}"
        app.add_route(cluster, endpoint(False), methods=["GET", "PUT", "PATCH", "DELETE"])
        app.add_route(cluster + "/status", endpoint(True), methods=["GET", "PUT", "PATCH"])


NOT_FOUND = "the server could not find the requested resource"


def _dry_run(request: Request) -> bool:
    values = request.query_params.getlist("dryRun")
    for value in values:
        if value != "All":
            raise ApiError(
                400,
                "BadRequest",
                f'dryRun: Unsupported value: "{value}": supported values: "All"',
            )
    return bool(values)


async def _serve(
    store: ResourceStore,
    authorize: Authorize,
    admission: Admission | None,
    request: Request,
    *,
    status: bool,
) -> Response:
    params = request.path_params
    rt = RESOURCE_TYPES.get((params.get("group", ""), params["version"], params["plural"]))
    if rt is None or (status and not rt.status_subresource):
        raise ApiError(404, "NotFound", NOT_FOUND)
    namespace: str | None = params.get("namespace")
    name: str | None = params.get("name")
    if namespace is not None and not rt.namespaced:
        raise ApiError(404, "NotFound", NOT_FOUND)  # a cluster-scoped type in a namespace
    if name is not None and namespace is None and rt.namespaced:
        raise ApiError(404, "NotFound", NOT_FOUND)  # a namespaced object needs its namespace
    if name is None and namespace is None and rt.namespaced and request.method == "POST":
        raise ApiError(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    query = request.query_params
    watching = query.get("watch", "").lower() in ("true", "1")
    resource = f"{rt.plural}/status" if status else rt.plural
    verb = _verb(request.method, name, watching)
    denied = authorize(request, verb, rt.group, resource, namespace, name)
    if denied is not None:
        return denied
    if name is None and request.method == "GET":
        store.collection_reads.append((verb, rt.plural, namespace, query.get("labelSelector")))
    if name is None and watching:
        return _watch(store, rt, namespace, request)
    if name is None and request.method == "GET":
        matches = selector(query.get("labelSelector"), query.get("fieldSelector"))
        return JSONResponse(store.list(rt, namespace, matches))
    scope = namespace or ""  # the store keeps cluster-scoped objects under ""
    dry_run = _dry_run(request)
    if name is None:
        return JSONResponse(
            await _create(store, admission, request, rt, scope, dry_run), status_code=201
        )
    if request.method == "GET":
        return JSONResponse(store.get(rt, scope, name))
    if request.method == "PUT":
        body = await _object(request)
        return JSONResponse(store.replace(rt, scope, name, body, status=status, dry_run=dry_run))
    if request.method == "PATCH":
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        patch = await _json(request)
        return JSONResponse(
            store.patch(rt, scope, name, content_type, patch, status=status, dry_run=dry_run)
        )
    options = await _json(request) if await request.body() else None  # DeleteOptions, if any
    options = options if isinstance(options, dict) else None
    if options is not None and options.get("dryRun"):
        dry_run = True
    return JSONResponse(store.delete(rt, scope, name, options, dry_run=dry_run))


async def _create(
    store: ResourceStore,
    admission: Admission | None,
    request: Request,
    rt: ResourceType,
    namespace: str,
    dry_run: bool,
) -> Object:
    """A create as the apiserver runs it: decode and default, mutating admission, then (in
    the store) validation, validating admission, and the write unless it is a dry run."""
    body = await _object(request)
    if admission is None:
        return store.create(rt, namespace, body, dry_run=dry_run)
    body = _prune_nulls(body)
    meta = body.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    check_namespace(rt, meta, namespace)
    if rt.namespaced:
        meta["namespace"] = namespace
    body["metadata"] = meta
    body.update(kind=rt.kind, apiVersion=rt.api_version)
    if rt.default is not None:
        rt.default(body)
    attrs = AdmissionAttributes(
        request, rt, namespace, "CREATE", dry_run, request.query_params.get("fieldManager")
    )
    body = await admission.mutate(attrs, body)
    return store.create(
        rt, namespace, body, dry_run=dry_run, validate=lambda obj: admission.validate(attrs, obj)
    )


def _verb(method: str, name: str | None, watching: bool) -> str:
    if name is None:
        return {"GET": "watch" if watching else "list", "POST": "create"}[method]
    return {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]


def _watch(
    store: ResourceStore, rt: ResourceType, namespace: str | None, request: Request
) -> Response:
    query = request.query_params
    matches = selector(query.get("labelSelector"), query.get("fieldSelector"))
    try:
        version = query.get("resourceVersion") or "0"
        since = int(version) or None  # "0" or unset: current state first, then changes
        timeout = float(query["timeoutSeconds"]) if "timeoutSeconds" in query else None
    except ValueError:
        raise ApiError(
            400, "BadRequest", f"invalid resource version or timeout: {dict(query)}"
        ) from None
    return StreamingResponse(
        store.watch(rt, namespace, since, matches, timeout), media_type="application/json"
    )


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        raise ApiError(400, "BadRequest", "the request body is not valid JSON") from None


async def _object(request: Request) -> Object:
    body = await _json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequest", "the request body is not a JSON object")
    return body
