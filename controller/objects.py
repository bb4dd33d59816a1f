"""The objects the controller reads and writes, typed, and the one place the apiserver's JSON
gets those types.

Kubernetes leaves out fields that are empty, so the shapes are ``total=False``; a field is
``Required`` where the apiserver always sends it and the rules rely on it. The JSON is trusted,
not validated: the apiserver checked it against its own schema and the KamusSecret CRD's
(deploy/helm/kamus/crds/kamussecret.yaml). :func:`narrow` is where it gets its type and
:func:`to_json` where a typed object becomes the client's body again, so ``Any`` stops here: the
rules (reconcile.py) and the runtime around them see only these shapes.
"""

import json
from typing import Any, Generic, Required, TypedDict, TypeVar

from aiohttp import ClientResponse
from kubernetes.aio.client.exceptions import ApiException

T = TypeVar("T")
Key = tuple[str, str]  # (namespace, name): what the work queue holds


class OwnerReference(TypedDict, total=False):
    apiVersion: Required[str]
    kind: Required[str]
    name: Required[str]
    uid: Required[str]
    controller: bool
    blockOwnerDeletion: bool


class _Metadata(TypedDict, total=False):
    resourceVersion: str
    generation: int
    labels: dict[str, str]
    annotations: dict[str, str]
    ownerReferences: list[OwnerReference]


class KamusSecretMetadata(_Metadata, total=False):
    name: Required[str]
    namespace: Required[str]
    uid: Required[str]  # the Secret's ownerReference and the Event name the KamusSecret by it


class SecretMetadata(_Metadata, total=False):
    name: Required[str]
    namespace: Required[str]
    uid: str  # absent from the Secret the rules want, which is not written yet


class StatusCondition(TypedDict, total=False):
    type: Required[str]
    status: Required[str]  # "True", "False" or "Unknown"
    reason: str
    message: str
    observedGeneration: int | None
    lastTransitionTime: str


class KamusSecretStatus(TypedDict, total=False):
    observedGeneration: int | None
    conditions: list[StatusCondition]


class KamusSecret(TypedDict, total=False):
    """``soluto.com/v1alpha2`` KamusSecret: ciphertexts, and what the Secret should be."""

    apiVersion: str
    kind: str
    metadata: Required[KamusSecretMetadata]
    serviceAccount: Required[str]  # required by the CRD
    type: str
    propagateAnnotations: bool
    stringData: dict[str, str]  # ciphertexts of the values
    data: dict[str, str]  # ciphertexts of base64 text, for binary values
    status: KamusSecretStatus


class Secret(TypedDict, total=False):
    """A ``v1`` Secret: what the controller writes, and what it finds."""

    apiVersion: str
    kind: str
    metadata: Required[SecretMetadata]
    type: str
    data: dict[str, str]  # base64


class StatusPatch(TypedDict):
    status: KamusSecretStatus


class ListMetadata(TypedDict, total=False):
    resourceVersion: Required[str]  # where the watch that follows the list starts


class ObjectList(TypedDict, Generic[T], total=False):
    metadata: Required[ListMetadata]
    items: list[T]


def narrow(parsed: Any, shape: type[T]) -> T:
    """``parsed`` (the apiserver's JSON) as the object ``shape`` describes.

    ``shape`` only names the type: the apiserver validated the object, and the rules still guard
    the optional fields an object written before a schema change could lack."""
    typed: T = parsed
    return typed


async def read_json(response: ClientResponse, shape: type[T]) -> T:
    """The JSON of a raw (not preloaded) response, or ApiException as the client raises it."""
    body = await response.read()  # always read: it releases the pooled connection
    if response.status >= 400:
        raise ApiException(status=response.status, reason=response.reason)
    return narrow(json.loads(body), shape)


def to_json(obj: Secret | StatusPatch) -> dict[str, Any]:
    """A typed object as the client takes a body (its models' ``from_dict``, a patch)."""
    return dict(obj)


def key_of(obj: KamusSecret | Secret) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")
