"""What a KamusSecret means: the Secret it should produce and the status it should show.

Pure functions on the typed objects of objects.py (what the apiserver sends is plain JSON), so
every rule is easy to read and to test, apart from the runtime that acts on them.

Whoever may create a KamusSecret must not gain more than the Secret it describes: the controller
writes Secrets with its own, broad rights, so it is a confused deputy unless it refuses what
other parts of the cluster would trust. :func:`refusal` and :func:`copied` hold those rules:

* the ``default`` service account is refused, as at the decryptor;
* Secret types under ``kubernetes.io`` and ``k8s.io`` (and their subdomains) are allowed only
  from a short list: a ``kubernetes.io/service-account-token`` Secret would have Kubernetes mint
  a token for any service account of the namespace, ``bootstrap.kubernetes.io/token`` would
  join nodes. Types outside those domains stay allowed (Kamus users write ``TlsSecret``);
* nothing Helm reads as a release (type ``helm.sh/release.v1``, label ``owner: helm``);
* labels and annotations under domains that other controllers trust (Kubernetes itself, Argo
  CD, Flux, Helm, Kamus) are never copied;
* an existing Secret that no KamusSecret owns is taken over only when the Secret itself says so
  (``kamus.soluto.com/managed: "true"``), set by someone who may update that Secret.
"""

import base64
import binascii
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from controller.objects import (
    KamusSecret,
    Key,
    OwnerReference,
    Secret,
    SecretMetadata,
    StatusCondition,
    StatusPatch,
)

GROUP = "soluto.com"
VERSION = "v1alpha2"
PLURAL = "kamussecrets"
KIND = "KamusSecret"
API_VERSION = f"{GROUP}/{VERSION}"

# Set on an existing Secret by whoever may update it: this controller may take it over.
MANAGED_ANNOTATION = "kamus.soluto.com/managed"
# Kamus's KamusSecret-side adoption: no longer has any effect (the Secret's owner never agreed).
ADOPT_ANNOTATION = "kamus.soluto.com/adopt"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# On every Secret this controller writes, so that it watches only those.
MANAGED_BY_LABEL = "kamus.soluto.com/managed-by"
MANAGED_BY = "kamus-controller"
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"

# Under these domains (and their subdomains) only ALLOWED_KUBERNETES_TYPES may be written.
KUBERNETES_TYPE_DOMAINS = ("kubernetes.io", "k8s.io")
ALLOWED_KUBERNETES_TYPES = frozenset(
    {
        "Opaque",
        "kubernetes.io/tls",
        "kubernetes.io/dockerconfigjson",
        "kubernetes.io/dockercfg",
        "kubernetes.io/basic-auth",
        "kubernetes.io/ssh-auth",
    }
)
HELM_RELEASE_TYPE_PREFIX = "helm.sh/release"
HELM_OWNER_LABEL = ("owner", "helm")
# Label and annotation domains that controllers act on: Kubernetes' own, Argo CD's
# (argocd.argoproj.io/secret-type: cluster registers a cluster), Flux's, Helm's
# (meta.helm.sh/release-name lets a release adopt the object) and Kamus's own.
RESERVED_METADATA_DOMAINS = (
    "kubernetes.io",
    "k8s.io",
    "argocd.argoproj.io",
    "fluxcd.io",
    "helm.sh",
    "kamus.soluto.com",
)


@dataclass(frozen=True)
class Condition:
    ready: bool
    reason: str
    message: str


def owner_reference(kamus_secret: KamusSecret) -> OwnerReference:
    meta = kamus_secret["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owner_of(obj: Secret) -> Key | None:
    """The (namespace, name) of the KamusSecret controlling ``obj``, if one does."""
    meta = obj.get("metadata") or {}
    for ref in meta.get("ownerReferences") or ():
        ours = ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(GROUP + "/")
        if ours and ref.get("controller"):
            return meta.get("namespace", ""), ref["name"]
    return None


def owned_by(secret: Secret, kamus_secret: KamusSecret) -> bool:
    uid = kamus_secret["metadata"]["uid"]
    refs = (secret.get("metadata") or {}).get("ownerReferences") or ()
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def consents_to_adoption(secret: Secret) -> bool:
    """Whether an existing Secret says this controller may take it over."""
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(MANAGED_ANNOTATION, "")).lower() == "true"


def asks_to_adopt(kamus_secret: KamusSecret) -> bool:
    annotations = kamus_secret["metadata"].get("annotations") or {}
    return str(annotations.get(ADOPT_ANNOTATION, "")).lower() == "true"


@dataclass(frozen=True)
class Policy:
    """What the controller refuses to write, on top of the built-in rules."""

    deny_default_service_account: bool = True
    denied_types: tuple[str, ...] = ()  # exact types, or "domain/" for a domain and subdomains
    denied_metadata_domains: tuple[str, ...] = ()  # "domain" (and subdomains), or "domain/key"


def _domain(key: str) -> str | None:
    """The ``example.com`` of ``example.com/name``; None for a key without a prefix."""
    prefix, slash, _ = key.partition("/")
    return prefix.lower() if slash else None


def _within(domain: str | None, roots: tuple[str, ...]) -> bool:
    return domain is not None and any(
        domain == root or domain.endswith("." + root) for root in roots
    )


def reserved_metadata(key: str, policy: Policy) -> bool:
    """Under a reserved domain or one of the setting's: ``example.org`` (or ``example.org/``)
    covers that domain and its subdomains, ``example.org/name`` that key and the keys it
    starts."""
    domain = _domain(key)
    if _within(domain, RESERVED_METADATA_DOMAINS):
        return True
    for denied in policy.denied_metadata_domains:
        root, _, rest = denied.strip().lower().partition("/")
        if (rest and key.lower().startswith(f"{root}/{rest}")) or (
            not rest and _within(domain, (root,))
        ):
            return True
    return False


def copied(
    metadata: Mapping[str, str], policy: Policy, *, silent: frozenset[str] = frozenset()
) -> tuple[dict[str, str], list[str]]:
    """The entries that may be copied to the Secret, and the keys that may not (except
    ``silent`` ones, which are dropped without being reported)."""
    kept: dict[str, str] = {}
    dropped: list[str] = []
    for key, value in metadata.items():
        if not reserved_metadata(key, policy):
            kept[key] = value
        elif key not in silent:
            dropped.append(key)
    return kept, sorted(dropped)


def secret_type(kamus_secret: KamusSecret) -> str:
    return str(kamus_secret.get("type") or "Opaque")


# Refusals for which a Secret this KamusSecret wrote earlier (before these rules, or before a
# setting changed) must not stay: a service-account-token Secret holds a live token, a forged
# Helm release record misleads Helm. Deleted, not left "as it was".
WITHDRAWN_ON = frozenset({"SecretTypeNotAllowed", "HelmReleaseNotAllowed"})


def refusal(kamus_secret: KamusSecret, policy: Policy) -> Condition | None:
    """Why this KamusSecret must not become a Secret at all, or None. Checked before anything
    is decrypted."""
    service_account = kamus_secret.get("serviceAccount", "")
    if service_account == "default" and policy.deny_default_service_account:
        return Condition(
            False,
            "DefaultServiceAccountDenied",
            "the 'default' service account may not be used (Controller__DenyDefaultServiceAccount"
            "): encrypt the values for a dedicated service account and name it in "
            "serviceAccount",
        )
    kind = secret_type(kamus_secret)
    if kind.lower().startswith(HELM_RELEASE_TYPE_PREFIX):
        return Condition(
            False,
            "HelmReleaseNotAllowed",
            f"type {kind!r} is how Helm stores its releases, which a KamusSecret may not forge; "
            "use Opaque or your own type",
        )
    labels = kamus_secret["metadata"].get("labels") or {}
    if labels.get(HELM_OWNER_LABEL[0]) == HELM_OWNER_LABEL[1]:
        return Condition(
            False,
            "HelmReleaseNotAllowed",
            "the label owner=helm marks Helm's release records, which a KamusSecret may not "
            "forge; remove that label",
        )
    if _within(_domain(kind), KUBERNETES_TYPE_DOMAINS) and kind not in ALLOWED_KUBERNETES_TYPES:
        return Condition(
            False,
            "SecretTypeNotAllowed",
            f"type {kind!r} is not allowed: Kubernetes acts on it (a service-account-token "
            "Secret gets a token minted into it). Allowed Kubernetes types: "
            f"{', '.join(sorted(ALLOWED_KUBERNETES_TYPES))}; types outside kubernetes.io and "
            "k8s.io are allowed",
        )
    for denied in policy.denied_types:
        if kind == denied or (denied.endswith("/") and _within(_domain(kind), (denied[:-1],))):
            return Condition(
                False,
                "SecretTypeNotAllowed",
                f"type {kind!r} is refused by Controller__DeniedSecretTypes; use another type",
            )
    return None


def encrypted_items(kamus_secret: KamusSecret) -> dict[str, str]:
    """Every ciphertext, keyed ``stringData.<k>`` or ``data.<k>``.

    Surrounding whitespace is never part of a ciphertext (a YAML ``|`` block ends in a newline),
    so it is stripped here, where values enter; ASCII whitespace only, as at the decryptor."""
    items = {}
    fields = (("stringData", kamus_secret.get("stringData")), ("data", kamus_secret.get("data")))
    for field, values in fields:
        for key, value in (values or {}).items():
            items[f"{field}.{key}"] = value.strip(string.whitespace)
    return items


def decryption_failed(
    identity: str, undecryptable: list[str], malformed: Mapping[str, str]
) -> Condition:
    """The condition for items that did not become Secret values: those that are no ciphertext
    at all (with the fact the decryptor would tell), apart from those that do not open."""
    problems = [
        f"{item} is not a Kamus ciphertext ({malformed[item]})" for item in sorted(malformed)
    ]
    if undecryptable:
        problems.append(f"cannot decrypt {', '.join(sorted(undecryptable))} as {identity}")
    return Condition(
        False,
        "DecryptionFailed",
        f"{'; '.join(problems)}; the Secret was left unchanged. Re-encrypt these values for this "
        "namespace and service account.",
    )


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


def desired_secret(
    kamus_secret: KamusSecret, data: Mapping[str, str], policy: Policy = Policy()
) -> tuple[Secret, list[str]]:
    """The Secret, and the labels and annotations that were not copied (reserved)."""
    meta = kamus_secret["metadata"]
    labels, dropped_labels = copied(meta.get("labels") or {}, policy)
    annotations: dict[str, str] = {}
    dropped_annotations: list[str] = []
    if kamus_secret.get("propagateAnnotations"):
        # kubectl's own bookkeeping and Kamus's adopt annotation are about the KamusSecret.
        annotations, dropped_annotations = copied(
            meta.get("annotations") or {},
            policy,
            silent=frozenset({LAST_APPLIED, ADOPT_ANNOTATION}),
        )
    metadata: SecretMetadata = {
        "name": meta["name"],
        "namespace": meta["namespace"],
        "labels": {**labels, MANAGED_BY_LABEL: MANAGED_BY},
        "annotations": annotations,
        "ownerReferences": [owner_reference(kamus_secret)],
    }
    secret: Secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": secret_type(kamus_secret),
        "data": dict(data),
    }
    not_copied = [f"label {k}" for k in dropped_labels]
    not_copied += [f"annotation {k}" for k in dropped_annotations]
    return secret, not_copied


def differs(existing: Secret, desired: Secret) -> bool:
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
    kamus_secret: KamusSecret, condition: Condition, now: datetime | None = None
) -> StatusPatch | None:
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
    ready: StatusCondition = {
        "type": "Ready",
        "status": wanted_status,
        "reason": condition.reason,
        "message": condition.message,
        "observedGeneration": generation,
        "lastTransitionTime": transition,
    }
    return {"status": {"observedGeneration": generation, "conditions": [ready]}}
