"""``kamus recover``: open values with the break-glass age key, on this machine, for the
disaster-recovery runbook (docs/disaster-recovery.md), as ``kubeseal --recovery-unseal`` does.

A raw ciphertext comes back as its plaintext; a KamusSecret as the Secret it stands for; a
ConfigMap of ciphertexts with its values opened. Each value's identity comes from inside its age
stanza and must be the identity its manifest names, so a value moved into another manifest is
refused rather than recovered into the wrong namespace.
"""

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from crypto import m1
from crypto.errors import DecryptionError, MalformedCiphertext
from crypto.formats import CiphertextFormat, classify
from crypto.recipients import AgeIdentities, open_offline
from kamus.cli.client import UsageError
from kamus.cli.inputs import yaml_documents
from kamus.cli.tree import KAMUS_SECRET_API_VERSIONS, looks_like_ciphertext
from kamus.server.identity import SERVICE_ACCOUNT_ANNOTATION


def open_value(ciphertext: str, identities: AgeIdentities, where: str) -> tuple[str, bytes]:
    """The identity and plaintext of one value, or a :class:`UsageError` naming ``where``."""
    ciphertext = ciphertext.strip()
    try:
        fmt = classify(ciphertext)
    except MalformedCiphertext:
        fmt = None
    if fmt is not CiphertextFormat.SEALED_V1:
        raise UsageError(
            f"{where}: not an m1 value, so it has no break-glass stanza (only values sealed "
            "with --recipient age:… have one: move older values to m1 with kamus rewrap, then "
            "kamus recipients add the break-glass key)"
        )
    try:
        value = m1.parse(ciphertext)
        opened = open_offline(value, identities)
        return opened.sa_id, m1.open_value(value, opened.data_key, opened.sa_id)
    except MalformedCiphertext as exc:  # and the threshold and no-stanza facts
        raise UsageError(f"{where}: {exc.fact}") from None
    except DecryptionError as exc:
        shown = str(exc) if type(exc) is not DecryptionError else exc.reason
        raise UsageError(f"{where}: {shown}") from None


def _check(identity: str, namespace: str | None, service_account: str | None, where: str) -> None:
    ns, _, sa = identity.partition(":")
    if (namespace and ns != namespace) or (service_account and sa != service_account):
        raise UsageError(
            f"{where}: the value was made for {identity}, but its manifest names "
            f"{namespace or '?'}:{service_account or '?'}; it was moved between manifests, so it "
            "is not recovered"
        )


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise UsageError(f"{where} must be a mapping of strings")
    return value


def _kamus_secret(doc: Mapping[str, Any], identities: AgeIdentities, n: int) -> dict[str, Any]:
    metadata = _mapping_any(doc.get("metadata"))
    name = str(metadata.get("name", f"document {n}"))
    namespace = metadata.get("namespace")
    service_account = doc.get("serviceAccount")
    secret: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {k: v for k, v in metadata.items() if k in ("name", "namespace", "labels")},
        "type": doc.get("type", "Opaque"),
    }
    for section in ("stringData", "data"):
        out = {}
        for key, ciphertext in _mapping(doc.get(section), f"{name}.{section}").items():
            where = f"KamusSecret {name}, {section}.{key}"
            identity, plaintext = open_value(ciphertext, identities, where)
            _check(identity, namespace, service_account, where)
            # A manifest without them (a kustomize overlay sets the namespace): the first value's
            # identity names them, and every other value must agree with it.
            namespace, _, service_account = identity.partition(":")
            secret["metadata"]["namespace"] = namespace
            if section == "data":  # the controller base64-decodes these: check they are
                try:
                    base64.b64decode(plaintext, validate=True)
                except binascii.Error:
                    raise UsageError(f"{where}: the value is not base64, as data must be") from None
            out[key] = plaintext.decode("utf-8", "replace")
        if out:
            secret[section] = out
    return secret


def _configmap(doc: Mapping[str, Any], identities: AgeIdentities, n: int) -> dict[str, Any]:
    metadata = _mapping_any(doc.get("metadata"))
    name = str(metadata.get("name", f"document {n}"))
    annotations = _mapping_any(metadata.get("annotations"))
    namespace, service_account = (
        metadata.get("namespace"),
        annotations.get(SERVICE_ACCOUNT_ANNOTATION),
    )
    out = {}
    for key, ciphertext in _mapping(doc.get("data"), f"{name}.data").items():
        if not looks_like_ciphertext(ciphertext.strip()):
            out[key] = ciphertext  # a plain setting beside the ciphertexts: kept as it is
            continue
        where = f"ConfigMap {name}, data.{key}"
        identity, plaintext = open_value(ciphertext, identities, where)
        _check(identity, namespace, service_account, where)
        namespace, _, service_account = identity.partition(":")  # as for a KamusSecret
        out[key] = plaintext.decode("utf-8", "replace")
    if namespace is None:
        return {**doc, "data": out}
    return {**doc, "metadata": {**metadata, "namespace": namespace}, "data": out}


def _mapping_any(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def recover(
    text: str, identities: AgeIdentities, source: str, warn: Callable[[str], None]
) -> bytes:
    """What ``text`` (one raw value, or YAML manifests) holds, opened with ``identities``.
    Documents other than KamusSecrets and ConfigMaps (a Deployment beside them) are left out,
    each said on ``warn``."""
    stripped = text.strip()
    if stripped.startswith("kamus$") and "\n" not in stripped:
        return open_value(stripped, identities, source)[1]
    docs = [d for d in yaml_documents(text, source) if d is not None]
    out = []
    for n, doc in enumerate(docs, 1):
        kind = doc.get("kind") if isinstance(doc, dict) else None
        if kind == "KamusSecret" and doc.get("apiVersion") in KAMUS_SECRET_API_VERSIONS:
            out.append(_kamus_secret(doc, identities, n))
        elif kind == "ConfigMap":
            out.append(_configmap(doc, identities, n))
        else:
            warn(f"{source}, document {n}: left out: not a KamusSecret or a ConfigMap")
    if not out:
        raise UsageError(
            f"{source} holds no KamusSecret, ConfigMap of ciphertexts or single ciphertext"
        )
    return yaml.safe_dump_all(out, sort_keys=False, width=1_000_000).encode("utf-8")
