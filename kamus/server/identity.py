"""Kubernetes names and service-account identities, checked by Kubernetes's own rules."""

import re
from typing import Annotated

from pydantic import AfterValidator

SERVICE_ACCOUNT_USER_PREFIX = "system:serviceaccount:"
# On a ConfigMap of ciphertexts: the service account its values are bound to (its namespace is
# the ConfigMap's). `kamus seal --format configmap` writes it; `kamus rewrap` reads it.
SERVICE_ACCOUNT_ANNOTATION = "kamus.soluto.com/service-account"

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL = re.compile(_LABEL)
_DNS1123_SUBDOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*")


def check_namespace(value: str) -> str:
    """A namespace is a DNS-1123 label."""
    if len(value) > 63 or not _DNS1123_LABEL.fullmatch(value):
        raise ValueError(
            "must be a Kubernetes namespace name: at most 63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value


def check_service_account(value: str) -> str:
    """A service-account name is a DNS-1123 subdomain."""
    if len(value) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(value):
        raise ValueError(
            "must be a Kubernetes service account name: at most 253 lowercase letters, digits, "
            "'-' and '.', starting and ending with a letter or digit"
        )
    return value


Namespace = Annotated[str, AfterValidator(check_namespace)]
ServiceAccountName = Annotated[str, AfterValidator(check_service_account)]


# Every pod without a service account of its own runs as `default`, so a value for it would be
# readable by all of them: the encryptor and offline sealing refuse it before any crypto.
DEFAULT_SERVICE_ACCOUNT_REFUSAL = (
    "the 'default' service account cannot be used; create a dedicated service account for the "
    "workload and encrypt for it"
)


def sa_id(namespace: str, service_account: str) -> str:
    """The identity a ciphertext is bound to, as Kamus spells it."""
    return f"{namespace}:{service_account}"


def parse_service_account_user(username: str) -> tuple[str, str] | None:
    """``system:serviceaccount:<ns>:<sa>`` → ``(ns, sa)``; anything else → ``None``."""
    if not username.startswith(SERVICE_ACCOUNT_USER_PREFIX):
        return None
    parts = username[len(SERVICE_ACCOUNT_USER_PREFIX) :].split(":")
    if len(parts) != 2:
        return None
    namespace, name = parts
    try:
        return check_namespace(namespace), check_service_account(name)
    except ValueError:
        return None
