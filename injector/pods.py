"""What the injector does to a pod: read its annotations, then add Kamus's init container.

Pure functions of the pod and the settings, so that every decision has a golden-file test. The
webhook (injector/app.py) only carries them over HTTP.

The patch is a JSON patch of ``add`` operations only: it never replaces what the pod already has
(an injector that overwrote init containers is aws-secret-sidecar-injector's #47). A pod already
injected, by its status annotation or by an init container named ``kamus-init``, gets no patch,
so a reinvocation (``reinvocationPolicy: IfNeeded``) changes nothing.
"""

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kamus.cli.formats import FORMATS, TEMPLATE_FILE
from kamus.server.settings import Settings

PREFIX = "kamus.soluto.com/"
INJECT = PREFIX + "inject"  # the opt-in label (the webhook's objectSelector)
STATUS = PREFIX + "inject-status"
INJECTED = "injected"
SECRETS_FROM = PREFIX + "secrets-from"
OUTPUT_FORMAT = PREFIX + "output-format"
OUTPUT_FILE = PREFIX + "output-file"
TEMPLATE_CONFIGMAP = PREFIX + "template-configmap"
MOUNT_PATH = PREFIX + "mount-path"
CONTAINERS = PREFIX + "containers"
INIT_FIRST = PREFIX + "init-first"
FILE_MODE = PREFIX + "file-mode"
RUN_AS_USER = PREFIX + "run-as-user"
ANNOTATIONS = frozenset(
    {
        INJECT,
        STATUS,
        SECRETS_FROM,
        OUTPUT_FORMAT,
        OUTPUT_FILE,
        TEMPLATE_CONFIGMAP,
        MOUNT_PATH,
        CONTAINERS,
        INIT_FIRST,
        FILE_MODE,
        RUN_AS_USER,
    }
)

INIT_CONTAINER = "kamus-init"
SECRETS_VOLUME = "kamus-secrets"
TOKEN_VOLUME = "kamus-token"  # noqa: S105 (a volume name)
TEMPLATE_VOLUME = "kamus-template"
ENCRYPTED_VOLUME = "kamus-encrypted-{}"
# Where kamus-init finds its inputs: outside any path a user may choose for the output.
INPUTS = "/var/run/kamus"
TOKEN_DIR = "/var/run/secrets/kamus.soluto.com/serviceaccount"  # noqa: S105 (a path)
DEFAULT_MOUNT_PATH = "/kamus"
# kamus init needs a file name for every format but files; custom has no sensible default.
DEFAULT_FILES = {"json": "secrets.json", "cfg": "secrets.cfg", "cfg-strict": "secrets.cfg"}
DEFAULT_FILES["env"] = ".env"
# Kubernetes never runs a pod in these with a webhook's help; an opted-in pod there is a mistake.
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public"})

_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_FILE_NAME = re.compile(r"[-._a-zA-Z0-9]+")
_MODE = re.compile(r"0?[0-7]{3}")

Pod = Mapping[str, Any]
Operation = dict[str, Any]


class Denied(Exception):
    """The pod asks for something the injector cannot do; the message says what to change."""


@dataclass(frozen=True)
class Request:
    """What one opted-in pod asks for, checked."""

    config_maps: tuple[str, ...]
    output_format: str
    output_file: str | None
    template_config_map: str | None
    mount_path: str
    containers: tuple[str, ...]  # names, in spec.containers or, with init_first, initContainers
    init_first: bool
    file_mode: str
    run_as_user: int | None


@dataclass(frozen=True)
class Decision:
    """The webhook's answer: a patch (or none), or a denial; ``reason`` goes to the audit log."""

    outcome: str  # injected | skipped | denied
    reason: str
    patch: list[Operation] | None = None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _names(items: Sequence[Any]) -> list[str]:
    return [str(_mapping(item).get("name", "")) for item in items]


def opted_in(pod: Pod) -> bool:
    return _mapping(_mapping(pod.get("metadata")).get("labels")).get(INJECT) == "true"


def already_injected(pod: Pod) -> bool:
    annotations = _mapping(_mapping(pod.get("metadata")).get("annotations"))
    init = _names(_list(_mapping(pod.get("spec")).get("initContainers")))
    return annotations.get(STATUS) == INJECTED or INIT_CONTAINER in init


def service_account(pod: Pod) -> str:
    spec = _mapping(pod.get("spec"))
    return str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")


def _comma_list(annotation: str, text: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(","))
    if not text.strip() or any(not item for item in items):
        raise Denied(f"{annotation} has an empty name: {text!r}; list names, comma-separated")
    duplicates = sorted({item for item in items if items.count(item) > 1})
    if duplicates:
        raise Denied(f"{annotation} names {', '.join(duplicates)} twice")
    return items


def _config_map_name(annotation: str, name: str) -> str:
    if len(name) > 253 or not _SUBDOMAIN.fullmatch(name):
        raise Denied(
            f"{annotation}: {name!r} is not a ConfigMap name (lower-case letters, digits, '-' "
            "and '.', at most 253)"
        )
    return name


def _mount_path(text: str) -> str:
    if not text.startswith("/") or posixpath.normpath(text) != text or text == "/":
        raise Denied(
            f"{MOUNT_PATH}: {text!r} is not an absolute, normalised directory other than /, "
            f"e.g. {DEFAULT_MOUNT_PATH}"
        )
    for reserved in (INPUTS, TOKEN_DIR):
        if posixpath.commonpath([text, reserved]) in (text, reserved):
            raise Denied(f"{MOUNT_PATH}: {text} overlaps {reserved}, where kamus-init reads")
    return text


def parse(pod: Pod, namespace: str, settings: Settings) -> Request:
    """The pod's request, or :class:`Denied` naming the annotation to fix."""
    metadata = _mapping(pod.get("metadata"))
    annotations = {str(k): str(v) for k, v in _mapping(metadata.get("annotations")).items()}
    unknown = sorted(a for a in annotations if a.startswith(PREFIX) and a not in ANNOTATIONS)
    if unknown:
        raise Denied(
            f"unknown annotation {', '.join(unknown)}; the injector reads "
            + ", ".join(sorted(ANNOTATIONS - {STATUS}))
        )
    if namespace in SYSTEM_NAMESPACES:
        raise Denied(f"kamus injects no pod in {namespace}; remove the {INJECT} label")
    account = service_account(pod)
    if account == "default" and settings.decryptor.deny_default_service_account:
        raise Denied(
            "the pod runs as the default service account, whose values the decryptor refuses; "
            "set spec.serviceAccountName to the service account the values were encrypted for"
        )
    if SECRETS_FROM not in annotations:
        raise Denied(
            f"the pod has the {INJECT} label but no {SECRETS_FROM} annotation; name the "
            "ConfigMaps of ciphertexts, comma-separated"
        )
    config_maps = tuple(
        _config_map_name(SECRETS_FROM, name)
        for name in _comma_list(SECRETS_FROM, annotations[SECRETS_FROM])
    )

    output_format = annotations.get(OUTPUT_FORMAT, "files")
    if output_format not in FORMATS:
        raise Denied(f"{OUTPUT_FORMAT}: {output_format!r} is not one of {', '.join(FORMATS)}")
    output_file = annotations.get(OUTPUT_FILE)
    if output_format == "files":
        if output_file is not None:
            raise Denied(
                f"{OUTPUT_FILE} has no meaning with the files format (one file per value); "
                f"remove it or set {OUTPUT_FORMAT}"
            )
    elif output_file is None:
        output_file = DEFAULT_FILES.get(output_format)
        if output_file is None:
            raise Denied(f"the {output_format} format needs {OUTPUT_FILE}, e.g. config.yaml")
    if output_file is not None and (
        not _FILE_NAME.fullmatch(output_file) or output_file in (".", "..")
    ):
        raise Denied(f"{OUTPUT_FILE}: {output_file!r} is not a file name (no '/')")

    template = annotations.get(TEMPLATE_CONFIGMAP)
    if output_format == "custom" and template is None:
        raise Denied(
            f"the custom format needs {TEMPLATE_CONFIGMAP}: a ConfigMap with the key "
            f"{TEMPLATE_FILE} holding the Jinja2 template"
        )
    if output_format != "custom" and template is not None:
        raise Denied(f"{TEMPLATE_CONFIGMAP} is only read with {OUTPUT_FORMAT}: custom")
    if template is not None:
        _config_map_name(TEMPLATE_CONFIGMAP, template)

    mount_path = _mount_path(annotations.get(MOUNT_PATH, DEFAULT_MOUNT_PATH))

    init_first_text = annotations.get(INIT_FIRST, "false")
    if init_first_text not in ("true", "false"):
        raise Denied(f'{INIT_FIRST}: {init_first_text!r} is not "true" or "false"')
    init_first = init_first_text == "true"

    spec = _mapping(pod.get("spec"))
    app_containers = _names(_list(spec.get("containers")))
    init_containers = _names(_list(spec.get("initContainers")))
    if CONTAINERS in annotations:
        containers = _comma_list(CONTAINERS, annotations[CONTAINERS])
        for name in containers:
            if name in init_containers and not init_first:
                raise Denied(
                    f"{CONTAINERS}: {name} is an init container, which runs before kamus-init; "
                    f'set {INIT_FIRST}: "true" to run kamus-init first'
                )
            if name not in app_containers and name not in init_containers:
                raise Denied(
                    f"{CONTAINERS}: the pod has no container {name} "
                    f"(it has {', '.join(app_containers + init_containers) or 'none'})"
                )
    else:  # every container, and with init-first the init containers it runs before
        containers = tuple(app_containers + (init_containers if init_first else []))

    default_mode = "0440" if _mapping(spec.get("securityContext")).get("fsGroup") else "0444"
    file_mode = annotations.get(FILE_MODE, default_mode)
    if not _MODE.fullmatch(file_mode):
        raise Denied(f"{FILE_MODE}: {file_mode!r} is not an octal mode like 0440")

    run_as_user: int | None = None
    if RUN_AS_USER in annotations:
        text = annotations[RUN_AS_USER]
        if not text.isdigit() or int(text) == 0 or int(text) > 2**31 - 1:
            raise Denied(
                f"{RUN_AS_USER}: {text!r} is not a user id above 0 (kamus-init never runs as root)"
            )
        run_as_user = int(text)

    return Request(
        config_maps=config_maps,
        output_format=output_format,
        output_file=output_file,
        template_config_map=template,
        mount_path=mount_path,
        containers=containers,
        init_first=init_first,
        file_mode=file_mode if file_mode.startswith("0") else "0" + file_mode,
        run_as_user=run_as_user,
    )


def _pointer(*tokens: object) -> str:
    return "".join("/" + str(t).replace("~", "~0").replace("/", "~1") for t in tokens)


def _append(
    spec: Mapping[str, Any], path: tuple[object, ...], key: str, items: list[Any]
) -> list[Operation]:
    """``add`` operations appending ``items`` to the list ``key`` under ``path``, creating it."""
    if not items:
        return []
    if key not in spec or spec[key] is None:
        return [{"op": "add", "path": _pointer(*path, key), "value": items}]
    return [{"op": "add", "path": _pointer(*path, key, "-"), "value": item} for item in items]


def _volumes(request: Request, settings: Settings) -> list[dict[str, Any]]:
    token: dict[str, Any] = {
        "path": "token",
        "expirationSeconds": settings.injector.token_expiration_seconds,
    }
    if settings.decryptor.audiences:
        token["audience"] = settings.decryptor.audiences[0]
    volumes: list[dict[str, Any]] = [
        {
            "name": SECRETS_VOLUME,
            "emptyDir": {"medium": "Memory", "sizeLimit": settings.injector.volume_size_limit},
        },
        {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": token}]}},
    ]
    for index, name in enumerate(request.config_maps):
        volumes.append({"name": ENCRYPTED_VOLUME.format(index), "configMap": {"name": name}})
    if request.template_config_map is not None:
        volumes.append(
            {
                "name": TEMPLATE_VOLUME,
                "configMap": {
                    "name": request.template_config_map,
                    "items": [{"key": TEMPLATE_FILE, "path": TEMPLATE_FILE}],
                },
            }
        )
    return volumes


def init_container(
    request: Request, settings: Settings, decryptor_ca: str | None = None
) -> dict[str, Any]:
    """``kamus init`` with the flags the annotations ask for, locked down; ``decryptor_ca``:
    the PEM an https decryptor's certificate chains to."""
    folders = [f"{INPUTS}/encrypted/{i}" for i in range(len(request.config_maps))]
    mounts: list[dict[str, Any]] = [
        {"name": SECRETS_VOLUME, "mountPath": request.mount_path},
        {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
    ]
    mounts += [
        {"name": ENCRYPTED_VOLUME.format(i), "mountPath": folder, "readOnly": True}
        for i, folder in enumerate(folders)
    ]
    if request.template_config_map is not None:
        folders.append(f"{INPUTS}/template")
        mounts.append({"name": TEMPLATE_VOLUME, "mountPath": folders[-1], "readOnly": True})
    args = ["init", "-e", ",".join(folders), "-d", request.mount_path]
    args += ["-f", request.output_format]
    if request.output_file is not None:
        args += ["-n", request.output_file]
    args += ["--file-mode", request.file_mode]
    s = settings.injector
    user = request.run_as_user or s.run_as_user
    return {
        "name": INIT_CONTAINER,
        "image": s.image,
        "imagePullPolicy": s.image_pull_policy,
        "command": ["kamus"],
        "args": args,
        "env": [
            {"name": "KAMUS_URL", "value": s.decryptor_url},
            {"name": "TOKEN_FILE_PATH", "value": f"{TOKEN_DIR}/token"},
            *([{"name": "KAMUS_CA_CERT", "value": decryptor_ca}] if decryptor_ca else []),
        ],
        "resources": {
            "requests": {"cpu": s.cpu_request, "memory": s.memory_request},
            "limits": {"memory": s.memory_limit},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": user,
            "runAsGroup": user,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }


def patch(
    pod: Pod, request: Request, settings: Settings, decryptor_ca: str | None = None
) -> list[Operation]:
    """The JSON patch that injects ``request`` into ``pod``; :class:`Denied` on a clash."""
    spec = _mapping(pod.get("spec"))
    existing = set(_names(_list(spec.get("volumes"))))
    volumes = _volumes(request, settings)
    clash = sorted(existing & {v["name"] for v in volumes})
    if clash:
        raise Denied(
            f"the pod already has a volume named {', '.join(clash)}, which the injector adds; "
            "rename it"
        )
    operations: list[Operation] = []
    init = init_container(request, settings, decryptor_ca)
    if not spec.get("initContainers"):
        operations.append({"op": "add", "path": "/spec/initContainers", "value": [init]})
    else:
        index = 0 if request.init_first else "-"
        operations.append(
            {"op": "add", "path": _pointer("spec", "initContainers", index), "value": init}
        )
    operations += _append(spec, ("spec",), "volumes", volumes)

    mount = {"name": SECRETS_VOLUME, "mountPath": request.mount_path, "readOnly": True}
    for kind in ("containers", "initContainers"):
        for index, container in enumerate(_list(spec.get(kind))):
            container = _mapping(container)
            if container.get("name") not in request.containers:
                continue
            paths = {_mapping(m).get("mountPath") for m in _list(container.get("volumeMounts"))}
            if request.mount_path in paths:
                raise Denied(
                    f"container {container.get('name')} already mounts {request.mount_path}; "
                    f"set {MOUNT_PATH} to another directory"
                )
            # With init-first, ours is inserted at 0: the others move up by one.
            at = index + 1 if kind == "initContainers" and request.init_first else index
            operations += _append(container, ("spec", kind, at), "volumeMounts", [mount])

    metadata = _mapping(pod.get("metadata"))
    key, _, value = settings.injector.client_label.partition("=")
    for field, name, text in (("annotations", STATUS, INJECTED), ("labels", key, value)):
        if not _mapping(metadata.get(field)):
            operations.append(
                {"op": "add", "path": _pointer("metadata", field), "value": {name: text}}
            )
        else:
            operations.append(
                {"op": "add", "path": _pointer("metadata", field, name), "value": text}
            )
    return operations


def decide(
    pod: Pod, namespace: str, settings: Settings, decryptor_ca: str | None = None
) -> Decision:
    """What the webhook answers for the creation of ``pod`` in ``namespace``."""
    if not opted_in(pod):
        return Decision("skipped", f"no {INJECT}=true label")
    if already_injected(pod):
        return Decision("skipped", "already injected")
    try:
        request = parse(pod, namespace, settings)
        return Decision("injected", "", patch(pod, request, settings, decryptor_ca))
    except Denied as exc:
        return Decision("denied", str(exc))
