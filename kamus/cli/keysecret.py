"""``kamus create-key-secret``: the AES master key, made once, inside the cluster.

The Helm chart runs this command as a hook Job before each install and upgrade (Argo CD runs it
as a PreSync hook, Flux as Helm does), so that no generated key ever appears in a rendered
manifest, a GitOps tool's manifest cache, a CI log or ``helm get manifest``.

It only ever *creates* the Secret. When the Secret already exists (409), it is read, checked and
left exactly as it is: never updated, patched or replaced, so upgrades, re-syncs and two runs at
once all keep the one key. That is also all the RBAC it needs: ``create`` on Secrets and ``get``
on this one Secret. The Secret carries no Helm or Argo CD tracking metadata, so neither ever
deletes or prunes it, and uninstalling leaves it in place.

The key itself is never printed or logged; only its key id (:func:`crypto.aes.key_id`, public by
design) is, so that an operator can match it against the ``kid`` of ciphertexts.
"""

import asyncio
import base64
import binascii
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import click

from kamus.cli.client import FailureKind, failure_kind, failure_reason

# The Kubernetes client loads only when the command runs: every `kamus` command, `kamus init` at
# each pod start included, imports this module.
if TYPE_CHECKING:
    from kubernetes.aio.client import V1Secret
    from kubernetes.aio.client.exceptions import ApiException

KEY_ENTRY = "aes-key"  # the file name the chart mounts and KeyManagement__AES__KeyFile reads
KEY_BYTES = 32
LABELS = {
    "app.kubernetes.io/part-of": "kamus",
    "app.kubernetes.io/component": "master-key",
    "app.kubernetes.io/managed-by": "kamus-create-key-secret",
}
# A create can meet a Secret deleted before the read that follows: try the pair again.
ATTEMPTS = 3

Outcome = Literal["created", "exists"]


class KeySecretError(Exception):
    """The Secret could not be made or checked; the message says what to do."""


def new_key_secret(name: str, namespace: str, key: bytes) -> "V1Secret":
    """A Secret holding ``key`` as the file text the services read: the key's base64."""
    from kubernetes.aio.client import V1ObjectMeta, V1Secret

    text = base64.b64encode(key)
    return V1Secret(
        api_version="v1",
        kind="Secret",
        metadata=V1ObjectMeta(
            name=name,
            namespace=namespace,
            labels=LABELS,
            annotations={
                "kamus.soluto.com/backup": "losing this Secret loses every value encrypted "
                "with it: keep an offline copy (kubectl get secret -o yaml)",
            },
        ),
        type="Opaque",
        data={KEY_ENTRY: base64.b64encode(text).decode("ascii")},
    )


def existing_key(data: Mapping[str, str | bytes] | None, where: str) -> bytes:
    """The master key an existing Secret holds, or :class:`KeySecretError` saying what to do.
    Never quotes the Secret's content."""
    from crypto import KAMUS_PUBLIC_DEFAULT_KEY
    from crypto.aes import KEY_SIZES

    remedy = (
        f"It was left unchanged. If the key is in it under another entry, move it to "
        f"'{KEY_ENTRY}'; if no value was ever encrypted with it, delete it "
        f"({_kubectl_delete(where)}) and run this again (helm upgrade, or a sync) to have a "
        "new key made; or name a Secret you manage in keyManagement.secretName."
    )
    encoded = (data or {}).get(KEY_ENTRY)
    if encoded is None:
        raise KeySecretError(f"Secret {where} exists but has no '{KEY_ENTRY}' entry. {remedy}")
    try:
        text = base64.b64decode(encoded, validate=True).decode("ascii").strip()
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeySecretError(
            f"Secret {where}: '{KEY_ENTRY}' is not a base64 key (openssl rand -base64 32). {remedy}"
        ) from None
    if len(key) not in KEY_SIZES:
        raise KeySecretError(
            f"Secret {where}: '{KEY_ENTRY}' decodes to {len(key)} bytes, not an AES key of 16, "
            f"24 or 32 bytes. {remedy}"
        )
    if text == KAMUS_PUBLIC_DEFAULT_KEY:
        raise KeySecretError(
            f"Secret {where} holds Kamus's published default key, which anyone can use to read "
            "and forge values. Make it a key of your own; to keep reading values made with the "
            "old one, put it in keyManagement.AES.previousKeys with migration.fromKamus=true."
        )
    return key


def _kubectl_delete(where: str) -> str:
    namespace, name = where.split("/", 1)
    return f"kubectl -n {namespace} delete secret {name}"


async def ensure_key_secret(name: str, namespace: str) -> tuple[Outcome, str]:
    """Create the Secret unless it exists; the outcome and the key id of the key it holds."""
    import aiohttp
    from kubernetes.aio.client import CoreV1Api
    from kubernetes.aio.client.exceptions import ApiException

    from crypto.aes import key_id
    from kamus.cli.settings import load_settings
    from kamus.server.errors import ConfigurationError
    from kamus.server.kube import create_api_client

    settings = load_settings().kubernetes
    where = f"{namespace}/{name}"
    try:
        api = await create_api_client(settings)
    except ConfigurationError as exc:
        raise KeySecretError(str(exc)) from None
    timeout = settings.request_timeout_seconds
    try:
        core = CoreV1Api(api)
        for _ in range(ATTEMPTS):
            key = os.urandom(KEY_BYTES)
            body = new_key_secret(name, namespace, key)
            try:
                await core.create_namespaced_secret(namespace, body, _request_timeout=timeout)
            except ApiException as exc:
                if exc.status != 409:
                    raise KeySecretError(_refused("create", where, exc)) from None
            else:
                return "created", key_id(key)
            try:
                secret = await core.read_namespaced_secret(
                    name, namespace, _request_timeout=timeout
                )
            except ApiException as exc:
                if exc.status == 404:
                    continue  # deleted since the create: create it again
                raise KeySecretError(_refused("get", where, exc)) from None
            return "exists", key_id(existing_key(secret.data, where))
        raise KeySecretError(f"Secret {where} kept appearing and disappearing; run again")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        source = _configured_by(settings.proxy_url)
        url = str(api.configuration.host)
        raise KeySecretError(_unreachable(exc, url, timeout, source)) from None
    finally:
        await api.close()


def _configured_by(proxy_url: str | None) -> str:
    """Where the apiserver's URL, CA and credentials came from (kamus/server/kube.py's order)."""
    from kubernetes.aio.config.incluster_config import SERVICE_HOST_ENV_NAME

    if proxy_url:
        return "Kubernetes__ProxyUrl"
    if os.environ.get(SERVICE_HOST_ENV_NAME):
        return (
            "the in-cluster configuration (KUBERNETES_SERVICE_HOST, the service account's ca.crt)"
        )
    return f"the kubeconfig {os.environ.get('KUBECONFIG') or '~/.kube/config'}"


# Each: what happened. What to try. Fields: see _unreachable.
_UNREACHABLE: dict[FailureKind, str] = {
    "refused": "cannot reach the Kubernetes API at {url}: nothing listens on {address} "
    "(connection refused). Check the server {source} names, and that the apiserver (or kubectl "
    "proxy) is running, then run again",
    "unknown-host": "cannot reach the Kubernetes API at {url}: the host {host} is not known "
    "({reason}). Check the server {source} names, and this machine's DNS",
    "timeout": "no answer from the Kubernetes API at {url} within {timeout:g} s. Is a network "
    "policy or firewall dropping the packets, or the apiserver overloaded? Run again, or raise "
    "Kubernetes__RequestTimeoutSeconds",
    "untrusted": "the Kubernetes API's certificate at {url} is not trusted ({reason}). Check "
    "the certificate authority {source} gives",
    "wrong-host": "the Kubernetes API's certificate is not valid for {host} ({reason}). Check "
    "the server {source} names: it must be a name the certificate was issued for",
    "expired": "the Kubernetes API's certificate at {url} is not valid now ({reason}). Check "
    "this machine's clock, or have the apiserver's certificate renewed",
    "not-tls": "the Kubernetes API at {url} does not speak TLS on this port ({reason}). Is it "
    "plain http (kubectl proxy)? Then check the server {source} names",
    "tls": "the TLS connection to the Kubernetes API at {url} failed ({reason}). Check the "
    "server, certificate authority and client certificate {source} gives",
    "closed": "the Kubernetes API at {url} closed the connection without answering. Check that "
    "the server {source} names is the apiserver (an https URL, unless kubectl proxy), then run "
    "again",
    "not-http": "the Kubernetes API at {url} answered something that is not HTTP. Check that "
    "the server {source} names is the apiserver (an https URL, unless kubectl proxy)",
    "other": "cannot reach the Kubernetes API at {url} ({reason}). Check the server {source} "
    "names and the network policies of the namespace, then run again",
}


def _unreachable(exc: BaseException, url: str, timeout: float, source: str) -> str:
    """What went wrong between this command and the apiserver, and what to try."""
    import aiohttp

    # aiohttp wraps the socket's and the TLS layer's own errors.
    cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    kind = "closed" if isinstance(exc, aiohttp.ServerDisconnectedError) else failure_kind(cause)
    parts = urlsplit(url)
    # Rebuilt from its parts: a proxy URL's user:password@ must not be printed.
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    address = f"{host}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    return _UNREACHABLE[kind].format(
        url=f"{parts.scheme}://{address}{parts.path}",
        host=parts.hostname,
        address=address,
        reason=failure_reason(cause),
        timeout=timeout,
        source=source,
    )


def _refused(verb: str, where: str, exc: "ApiException") -> str:
    """What the apiserver's refusal means here. Its Status message names objects, never data."""
    namespace, name = where.split("/", 1)
    if exc.status == 401:
        return (
            f"the apiserver did not accept this command's credentials ({exc.status} {exc.reason} "
            f"to {verb} Secret {where}): its token or certificate has expired, or is not this "
            "cluster's. Check the kubeconfig's user (KUBECONFIG), or in a cluster the pod's "
            "service account token, then run again"
        )
    if exc.status == 403:
        grant = "create on secrets" if verb == "create" else f"get on the secret {name}"
        return (
            f"the apiserver refused to {verb} Secret {where} ({exc.status} {exc.reason}): this "
            f"command's service account needs {grant} in namespace {namespace} (the chart's "
            "key-secret Role grants exactly that)"
        )
    return (
        f"the apiserver answered {exc.status} {exc.reason} to {verb} Secret {where}; run again "
        "(a Job retries by itself)"
    )


@click.command("create-key-secret", short_help="Create the Secret holding the AES master key.")
@click.option("--name", required=True, help="The Secret to hold the AES master key.")
@click.option(
    "-n",
    "--namespace",
    required=True,
    envvar="POD_NAMESPACE",
    help="Its namespace (default: $POD_NAMESPACE).",
)
def create_key_secret(name: str, namespace: str) -> None:
    """Create the Secret NAME holding a new random AES master key, unless it exists.

    An existing Secret is checked and never changed: its 'aes-key' entry must hold a key. The
    key is never printed; back the Secret up yourself (kubectl get secret NAME -o yaml), offline:
    losing it loses every value encrypted with it."""
    try:
        outcome, kid = asyncio.run(ensure_key_secret(name, namespace))
    except KeySecretError as exc:
        raise click.ClickException(str(exc)) from None
    if outcome == "created":
        click.echo(
            f"kamus: created Secret {namespace}/{name} with a new AES key (key id {kid}). Back it "
            f"up now and keep the copy offline: kubectl -n {namespace} get secret {name} -o yaml"
        )
    else:
        click.echo(
            f"kamus: Secret {namespace}/{name} already holds a key (key id {kid}); left unchanged"
        )
