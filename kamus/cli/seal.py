"""``kamus seal``: a Kubernetes Secret manifest in, the equivalent KamusSecret (or a ConfigMap of
ciphertexts for the init container) out. Only ciphertexts ever leave this function."""

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from kamus.cli.client import UsageError
from kamus.cli.inputs import yaml_documents
from kamus.server.identity import SERVICE_ACCOUNT_ANNOTATION

# Server-set or tool-set metadata that must not travel into git.
_DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)

Encrypt = Callable[[str, Mapping[str, str]], dict[str, str]]  # (namespace, values) -> ciphertexts


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{where} must be a string")
    return value


def _mapping(value: object, where: str) -> dict[Any, Any]:
    """A mapping field (absent is empty); anything else is refused without being quoted."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a mapping")
    return value


def _secret_parts(doc: Any, index: int, namespace: str | None) -> tuple[dict[str, Any], str]:
    if not isinstance(doc, dict) or doc.get("kind") != "Secret" or doc.get("apiVersion") != "v1":
        raise UsageError(f"document {index + 1} is not a v1 Secret")
    metadata = _mapping(doc.get("metadata"), f"document {index + 1}: metadata")
    name = metadata.get("name")
    if not name or not isinstance(name, str):
        raise UsageError(f"document {index + 1}: the Secret has no metadata.name")
    ns = metadata.get("namespace")
    if ns is not None and not isinstance(ns, str):
        raise UsageError(f"Secret {name}: metadata.namespace must be a string")
    if ns and namespace and ns != namespace:
        raise UsageError(f"Secret {name} is in namespace {ns}, not --namespace {namespace}")
    ns = ns or namespace
    if not ns:
        raise UsageError(f"Secret {name} has no namespace: set metadata.namespace or --namespace")
    return metadata, ns


def _metadata(metadata: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    name = metadata["name"]
    out: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels := _mapping(metadata.get("labels"), f"{name}.metadata.labels"):
        out["labels"] = dict(labels)
    annotations = {
        k: v
        for k, v in _mapping(metadata.get("annotations"), f"{name}.metadata.annotations").items()
        if k not in _DROPPED_ANNOTATIONS
    }
    if annotations:
        out["annotations"] = annotations
    return out


def seal_documents(
    text: str,
    *,
    service_account: str,
    namespace: str | None,
    output_format: str,
    encrypt: Encrypt,
    source: str = "the input",
) -> str:
    """Seal every Secret in a (multi-document) YAML stream read from ``source`` (a file name, for
    errors)."""
    docs = yaml_documents(text, source)
    if not docs:
        raise UsageError("the input holds no Secret")
    out = []
    for index, doc in enumerate(docs):
        metadata, ns = _secret_parts(doc, index, namespace)
        name = metadata["name"]
        string_data = {
            _text(k, f"a key of {name}.stringData"): _text(v, f"{name}.stringData.{k}")
            for k, v in _mapping(doc.get("stringData"), f"{name}.stringData").items()
        }
        data = {
            _text(k, f"a key of {name}.data"): _text(v, f"{name}.data.{k}")
            for k, v in _mapping(doc.get("data"), f"{name}.data").items()
        }
        if output_format == "configmap":
            out.append(_configmap(doc, metadata, ns, service_account, string_data, data, encrypt))
            continue
        # The KamusSecret controller decrypts `data` values and base64-decodes them, so they are
        # encrypted as the base64 text they are.
        sealed = encrypt(
            ns,
            {
                **{f"s/{k}": v for k, v in string_data.items()},
                **{f"d/{k}": v for k, v in data.items()},
            },
        )
        kamus_secret: dict[str, Any] = {
            "apiVersion": "soluto.com/v1alpha2",
            "kind": "KamusSecret",
            "metadata": _metadata(metadata, ns),
            "type": doc.get("type", "Opaque"),
            "serviceAccount": service_account,
        }
        if string_data:
            kamus_secret["stringData"] = {k: sealed[f"s/{k}"] for k in string_data}
        if data:
            kamus_secret["data"] = {k: sealed[f"d/{k}"] for k in data}
        out.append(kamus_secret)
    return yaml.safe_dump_all(out, sort_keys=False, width=1_000_000)


def _configmap(
    doc: Mapping[str, Any],
    metadata: Mapping[str, Any],
    namespace: str,
    service_account: str,
    string_data: Mapping[str, str],
    data: Mapping[str, str],
    encrypt: Encrypt,
) -> dict[str, Any]:
    """The init-container flow: one ciphertext per key, mounted as files and decrypted at start."""
    values = dict(string_data)
    for key, encoded in data.items():
        try:
            values[key] = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise UsageError(
                f"{metadata['name']}.data.{key} is binary; the init container writes text, so "
                "seal it as a KamusSecret instead"
            ) from None
    out_metadata = _metadata(metadata, namespace)
    # Whom the values are bound to, so that `kamus rewrap` and `kamus verify` can find it.
    out_metadata["annotations"] = {
        **out_metadata.get("annotations", {}),
        SERVICE_ACCOUNT_ANNOTATION: service_account,
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": out_metadata,
        "data": encrypt(namespace, values),
    }
