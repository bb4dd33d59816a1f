"""``kamus create-key-secret``: the cluster's root key, made once, inside the cluster.

In AES mode that is the AES master key (entry ``aes-key``). In the KMS modes it is a random
sealing seed, wrapped by the KMS for the reserved identity ``kamus_sealing:seed`` (entry
``sealing-seeds``, read through ``KeyManagement__Sealing__WrappedSeedsFile``): the key the KMS
custodies, which only whoever may decrypt with that KMS key can unwrap (docs/providers.md).

The Helm chart runs this command as a hook Job before each install and upgrade (Argo CD runs it
as a PreSync hook, Flux as Helm does), so that no generated key ever appears in a rendered
manifest, a GitOps tool's manifest cache, a CI log or ``helm get manifest``.

It only ever *creates* the Secret. When the Secret already exists (409), it is read, checked and
left exactly as it is: never updated, patched or replaced, so upgrades, re-syncs and two runs at
once all keep the one key. That is also all the RBAC it needs: ``create`` on Secrets and ``get``
on this one Secret. The Secret carries no Helm or Argo CD tracking metadata, so neither ever
deletes or prunes it, and uninstalling leaves it in place.

The key itself is never printed or logged; only its key id (:func:`crypto.aes.key_id`, public by
design) is, so that an operator can match it against the ``kid`` of ciphertexts. Of a wrapped
seed, only the KMS and the key version that wrapped it are.
"""

import asyncio
import base64
import binascii
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import click

from kamus.cli.client import FailureKind, failure_kind, failure_reason

# The Kubernetes client loads only when the command runs: every `kamus` command, `kamus init` at
# each pod start included, imports this module.
if TYPE_CHECKING:
    from kubernetes.aio.client import V1Secret
    from kubernetes.aio.client.exceptions import ApiException

    from crypto.cloud import WrappedSeed
    from kamus.server.settings import Settings

KEY_ENTRY = "aes-key"  # the file name the chart mounts and KeyManagement__AES__KeyFile reads
# ... and in the KMS modes, what KeyManagement__Sealing__WrappedSeedsFile reads.
SEED_ENTRY = "sealing-seeds"
KEY_BYTES = 32
# A create can meet a Secret deleted before the read that follows: try the pair again.
ATTEMPTS = 3

Outcome = Literal["created", "exists"]


class KeySecretError(Exception):
    """The Secret could not be made or checked; the message says what to do."""


@dataclass(frozen=True)
class KeyKind:
    """What one provider's key Secret holds: how a new one is made and an existing one checked.
    Both answer what may be shown of the key (a key id, a KMS key version), never the key."""

    entry: str
    component: str  # the Secret's app.kubernetes.io/component label
    backup: str  # why to keep a copy (the Secret's annotation)
    new: Callable[[], Awaitable[tuple[str, str]]]  # the entry's text, and what may be shown
    check: Callable[[Mapping[str, str | bytes] | None, str], str]
    created: str  # "... created Secret X with {created}", {} being what may be shown
    held: str  # "... Secret X already holds {held}"
    # Making one calls the KMS: look for the Secret first, so that upgrades and re-syncs need
    # neither the KMS nor a new data key.
    look_first: bool


def aes_key_kind() -> KeyKind:
    from crypto.aes import key_id

    async def new() -> tuple[str, str]:
        key = os.urandom(KEY_BYTES)
        return base64.b64encode(key).decode("ascii"), key_id(key)

    return KeyKind(
        entry=KEY_ENTRY,
        component="master-key",
        backup="losing this Secret loses every value encrypted with it: keep an offline copy "
        "(kubectl get secret -o yaml)",
        new=new,
        check=lambda data, where: key_id(existing_key(data, where)),
        created="a new AES key (key id {})",
        held="a key (key id {})",
        look_first=False,
    )


def sealing_seed_kind(settings: "Settings") -> KeyKind:
    """The KMS modes: a sealing seed, wrapped by this provider (which makes its KMS key for the
    reserved sealing identity when KeyManagement__CreateKeys allows)."""
    from crypto.cloud import CloudKeyManager
    from crypto.errors import KeyManagerUnavailable, KeyNotFoundError
    from kamus.server.errors import ConfigurationError
    from kamus.server.providers import build_key_manager

    try:
        manager = build_key_manager(settings)
    except ConfigurationError as exc:
        provider = settings.key_management.provider
        raise KeySecretError(f"cannot use the {provider} KMS: {exc}") from None
    assert isinstance(manager, CloudKeyManager)  # every provider but AESKey

    async def new() -> tuple[str, str]:
        try:
            seed = await manager.new_sealing_seed()
        except KeyNotFoundError as exc:
            raise KeySecretError(f"cannot make the sealing seed: {exc}") from None
        except KeyManagerUnavailable as exc:
            raise KeySecretError(
                f"cannot make the sealing seed: {exc.reason}. This command needs to create and "
                "use the KMS key of the identity kamus_sealing:seed, as the encryptor does for a "
                "service account (docs/providers.md, the key Job's permissions); run again"
            ) from None
        return str(seed), _shown(seed)

    return KeyKind(
        entry=SEED_ENTRY,
        component="sealing-seed",
        backup="losing this Secret loses every value sealed offline to its keys (values "
        "encrypted online keep opening with their KMS keys): keep a copy (kubectl get secret "
        "-o yaml). It is wrapped by the KMS: the copy opens only with decrypt on that KMS key",
        new=new,
        check=lambda data, where: _shown(existing_seed(data, where, manager.kind)),
        created="a new sealing seed ({})",
        held="a sealing seed ({})",
        look_first=True,
    )


def _shown(seed: "WrappedSeed") -> str:
    return f"wrapped by {seed.kind}, KMS key version {seed.key_version}"


def new_key_secret(name: str, namespace: str, kind: KeyKind, text: str) -> "V1Secret":
    """A Secret holding ``text`` as the file the services read (the key's base64, or the
    wrapped seed)."""
    from kubernetes.aio.client import V1ObjectMeta, V1Secret

    return V1Secret(
        api_version="v1",
        kind="Secret",
        metadata=V1ObjectMeta(
            name=name,
            namespace=namespace,
            labels={
                "app.kubernetes.io/part-of": "kamus",
                "app.kubernetes.io/component": kind.component,
                "app.kubernetes.io/managed-by": "kamus-create-key-secret",
            },
            annotations={"kamus.soluto.com/backup": kind.backup},
        ),
        type="Opaque",
        data={kind.entry: base64.b64encode(text.encode("ascii")).decode("ascii")},
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


def existing_seed(data: Mapping[str, str | bytes] | None, where: str, kms: str) -> "WrappedSeed":
    """The active seed of an existing Secret, checked to be wrapped by ``kms`` (this provider),
    or :class:`KeySecretError` saying what to do. Never quotes the Secret's content."""
    from crypto.cloud import WrappedSeed

    remedy = (
        f"It was left unchanged. If no value was ever sealed offline to its keys, delete it "
        f"({_kubectl_delete(where)}) and run this again (helm upgrade, or a sync) to have a new "
        "seed made."
    )
    encoded = (data or {}).get(SEED_ENTRY)
    if encoded is None:
        raise KeySecretError(f"Secret {where} exists but has no '{SEED_ENTRY}' entry. {remedy}")
    try:
        text = base64.b64decode(encoded, validate=True).decode("ascii")
        seeds = [WrappedSeed.parse(part) for part in text.split(",") if part.strip()]
    except (binascii.Error, ValueError):
        seeds = []
    if not seeds:
        raise KeySecretError(
            f"Secret {where}: '{SEED_ENTRY}' is not a list of wrapped sealing seeds "
            f"(<kms>$<key version>$<base64url>, the active one first, comma separated). {remedy}"
        )
    for seed in seeds:
        if seed.kind != kms:
            raise KeySecretError(
                f"Secret {where} holds a sealing seed wrapped by {seed.kind}, and this Kamus uses "
                f"{kms} (KeyManagement__Provider): its decryptor cannot unwrap that seed, and the "
                f"values sealed offline to its keys open only with {seed.kind}. {remedy}"
            )
    return seeds[0]


def _kubectl_delete(where: str) -> str:
    namespace, name = where.split("/", 1)
    return f"kubectl -n {namespace} delete secret {name}"


async def ensure_key_secret(name: str, namespace: str) -> tuple[Outcome, KeyKind, str]:
    """Create the Secret unless it exists: the outcome, the provider's kind of key, and what may
    be shown of the key the Secret holds."""
    import aiohttp
    from kubernetes.aio.client import CoreV1Api
    from kubernetes.aio.client.exceptions import ApiException

    from kamus.cli.settings import load_settings
    from kamus.server.errors import ConfigurationError
    from kamus.server.kube import create_api_client

    settings = load_settings()
    aes = settings.key_management.provider == "AESKey"
    kind = aes_key_kind() if aes else sealing_seed_kind(settings)
    kube = settings.kubernetes
    where = f"{namespace}/{name}"
    try:
        api = await create_api_client(kube)
    except ConfigurationError as exc:
        raise KeySecretError(str(exc)) from None
    timeout = kube.request_timeout_seconds
    core = CoreV1Api(api)

    async def read() -> "V1Secret | None":
        try:
            secret: V1Secret = await core.read_namespaced_secret(
                name, namespace, _request_timeout=timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise KeySecretError(_refused("get", where, exc)) from None
        return secret

    try:
        if kind.look_first and (secret := await read()) is not None:
            return "exists", kind, kind.check(secret.data, where)
        for _ in range(ATTEMPTS):
            text, shown = await kind.new()
            try:
                body = new_key_secret(name, namespace, kind, text)
                await core.create_namespaced_secret(namespace, body, _request_timeout=timeout)
            except ApiException as exc:
                if exc.status != 409:
                    raise KeySecretError(_refused("create", where, exc)) from None
            else:
                return "created", kind, shown
            secret = await read()
            if secret is None:
                continue  # deleted since the create: create it again
            return "exists", kind, kind.check(secret.data, where)
        raise KeySecretError(f"Secret {where} kept appearing and disappearing; run again")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        source = _configured_by(kube.proxy_url)
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


@click.command(
    "create-key-secret",
    short_help="Create the Secret holding the AES master key, or the KMS-wrapped sealing seed.",
)
@click.option("--name", required=True, help="The Secret to hold the key.")
@click.option(
    "-n",
    "--namespace",
    required=True,
    envvar="POD_NAMESPACE",
    help="Its namespace (default: $POD_NAMESPACE).",
)
def create_key_secret(name: str, namespace: str) -> None:
    """Create the Secret NAME holding a new random key, unless it exists.

    \b
    AES mode (KeyManagement__Provider=AESKey): the AES master key, in the entry 'aes-key'.
    The KMS modes: a sealing seed wrapped by the KMS (the KMS key of the identity
    kamus_sealing:seed, created if KeyManagement__CreateKeys allows), in the entry
    'sealing-seeds', which KeyManagement__Sealing__WrappedSeedsFile reads.

    An existing Secret is checked and never changed (in the KMS modes, no KMS call is then
    made). The key is never printed; back the Secret up yourself (kubectl get secret NAME -o
    yaml), offline: losing the AES key loses every value encrypted with it, losing the seed
    every value sealed offline."""
    try:
        outcome, kind, shown = asyncio.run(ensure_key_secret(name, namespace))
    except KeySecretError as exc:
        raise click.ClickException(str(exc)) from None
    if outcome == "created":
        click.echo(
            f"kamus: created Secret {namespace}/{name} with {kind.created.format(shown)}. Back it "
            f"up now and keep the copy offline: kubectl -n {namespace} get secret {name} -o yaml"
        )
    else:
        click.echo(
            f"kamus: Secret {namespace}/{name} already holds {kind.held.format(shown)}; "
            "left unchanged"
        )
