"""``kamus doctor``: is injection going to work for a namespace, and if not, why.

Each check ends in a verdict, PASS, FAIL, WARN or SKIP, with what it saw and what to do:

* **injector**: a server-side dry-run create of an opted-in pod in the namespace, as the
  given service account. The apiserver runs admission exactly as for a real pod, stores
  nothing, and answers the pod as it would be created: whether the webhook was reached, and what
  it patched. A webhook the apiserver cannot reach (a firewall, most often a private cluster's)
  fails every opted-in pod, so that is said plainly.
* **encryptor** and **decryptor**: do they answer ``/api/v1/isAlive``.
* **encrypt**: may the caller encrypt for the namespace: the RBAC an encryptor with
  authentication asks (create ``kamussecrets.soluto.com``), then a real encryption of a probe
  value by the encryptor, with the kubeconfig's token when it has one.

The probe pod names a ConfigMap that need not exist and an image that is never pulled: a dry
run creates nothing.
"""

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from kubernetes.aio.client import ApiClient

Verdict = Literal["PASS", "FAIL", "WARN", "SKIP"]
PROBE_CONFIGMAP = "kamus-doctor-probe"


@dataclass(frozen=True)
class Check:
    verdict: Verdict
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.verdict:<5} {self.name:<10} {self.detail}"


def probe_pod(service_account: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "kamus-doctor-",
            "labels": {"kamus.soluto.com/inject": "true", "app.kubernetes.io/name": "kamus-doctor"},
            "annotations": {"kamus.soluto.com/secrets-from": PROBE_CONFIGMAP},
        },
        "spec": {
            "serviceAccountName": service_account,
            "restartPolicy": "Never",
            "containers": [
                {"name": "probe", "image": "registry.invalid/kamus-doctor-probe:never-pulled"}
            ],
        },
    }


def describe_injection(pod: dict[str, Any]) -> Check:
    """What the webhook did to the dry-run pod."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = (meta.get("annotations") or {}).get("kamus.soluto.com/inject-status")
    inits = {c.get("name"): c for c in spec.get("initContainers") or []}
    if status != "injected" or "kamus-init" not in inits:
        return Check(
            "FAIL",
            "injector",
            "the webhook was not called: the pod came back unchanged. Is the injector installed "
            "(injector.enabled), and is this namespace not excluded (kube-system, kube-public "
            "and Kamus's own are)? kubectl get mutatingwebhookconfigurations",
        )
    init = inits["kamus-init"]
    added = [
        v.get("name", "")
        for v in spec.get("volumes") or []
        if str(v.get("name", "")).startswith("kamus-")
    ]
    mounted = [
        c.get("name", "")
        for c in spec.get("containers") or []
        if any(m.get("name") == "kamus-secrets" for m in c.get("volumeMounts") or [])
    ]
    labels = meta.get("labels") or {}
    client = [f"{k}={v}" for k, v in labels.items() if k == "kamus.soluto.com/client"]
    return Check(
        "PASS",
        "injector",
        f"the webhook injected {init.get('name')} (image {init.get('image')}, "
        f"{' '.join([*init.get('command', []), *init.get('args', [])])}), volumes "
        f"{', '.join(added)}, mounted into {', '.join(mounted) or 'no container'}"
        + (f", label {client[0]}" if client else ""),
    )


def describe_refusal(status: int, body: str) -> Check:
    """The apiserver refused the dry-run create: who refused, and what it means."""
    try:
        message = str(json.loads(body).get("message", body))
    except (ValueError, AttributeError):
        message = body
    if "failed calling webhook" in message:
        return Check(
            "FAIL",
            "injector",
            f"the apiserver cannot call the webhook, so every opted-in pod fails to create: "
            f"{message}. Check that an injector pod is ready (kubectl get endpoints) and that "
            "the control plane may reach the nodes on the injector's port (a private GKE "
            "cluster allows only 443 and 10250: set injector.port to 10250)",
        )
    if "denied the request" in message and "admission webhook" in message:
        return Check("FAIL", "injector", f"the webhook was reached and refused the pod: {message}")
    if "ValidatingAdmissionPolicy" in message:
        return Check(
            "FAIL",
            "injector",
            f"the pod was not injected and the policy refused it (failing closed): {message}",
        )
    if status in (401, 403):
        return Check(
            "SKIP",
            "injector",
            f"you may not create pods here, so the dry run cannot tell ({status}: {message})",
        )
    return Check("FAIL", "injector", f"the dry-run create failed ({status}): {message}")


async def check_injection(api: "ApiClient", namespace: str, service_account: str) -> Check:
    from kubernetes.aio.client.exceptions import ApiException

    from kamus.server.kube import request_json

    path = f"/api/v1/namespaces/{namespace}/pods?dryRun=All"
    try:
        pod = await request_json(api, "POST", path, probe_pod(service_account))
    except ApiException as exc:
        return describe_refusal(exc.status or 0, str(exc.body or exc.reason))
    return describe_injection(pod)


async def check_encrypt_rbac(api: "ApiClient", namespace: str) -> tuple[bool, str]:
    from kamus.server.kube import request_json

    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "group": "soluto.com",
                "resource": "kamussecrets",
                "verb": "create",
                "namespace": namespace,
            }
        },
    }
    answer = await request_json(
        api, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review
    )
    status = answer.get("status")
    allowed = isinstance(status, dict) and status.get("allowed") is True
    verb = "may" if allowed else "may not"
    return allowed, f"RBAC: you {verb} create kamussecrets.soluto.com in {namespace}"


def check_alive(name: str, url: str | None, *, verify: Any, option: str) -> Check:
    import httpx

    if not url:
        return Check("SKIP", name, f"not checked: give {option}")
    target = f"{url.rstrip('/')}/api/v1/isAlive"
    try:
        answer = httpx.get(target, timeout=10, verify=verify)
    except httpx.HTTPError as exc:
        hint = (
            " (the decryptor is internal: run this in the cluster, or through kubectl port-forward)"
            if name == "decryptor"
            else ""
        )
        return Check("FAIL", name, f"{target} does not answer: {type(exc).__name__}{hint}")
    if answer.status_code == 200 and answer.text.strip() == "true":
        return Check("PASS", name, f"{target} answers true")
    return Check("FAIL", name, f"{target} answered {answer.status_code}, not 200 true")


def check_encrypt(
    url: str | None,
    namespace: str,
    service_account: str,
    token: str | None,
    rbac: tuple[bool, str] | None,
    *,
    verify: Any,
) -> Check:
    import httpx

    said = f"{rbac[1]}; " if rbac else ""
    if not url:
        verdict: Verdict = "SKIP" if rbac is None else ("PASS" if rbac[0] else "WARN")
        return Check(verdict, "encrypt", f"{said}no --encryptor-url, so no probe encryption")
    body = {
        "data": "kamus doctor probe",
        "namespace": namespace,
        "service-account": service_account,
    }
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        answer = httpx.post(
            f"{url.rstrip('/')}/api/v1/encrypt",
            json=body,
            headers=headers,
            timeout=10,
            verify=verify,
        )
    except httpx.HTTPError as exc:
        return Check(
            "FAIL", "encrypt", f"{said}the encryptor does not answer: {type(exc).__name__}"
        )
    if answer.status_code == 200:
        return Check(
            "PASS",
            "encrypt",
            f"{said}the encryptor encrypted a probe value for {namespace}:{service_account}",
        )
    try:
        detail = str(answer.json().get("detail", ""))
    except ValueError:
        detail = answer.text[:200]
    return Check(
        "FAIL",
        "encrypt",
        f"{said}the encryptor refused to encrypt for {namespace}:{service_account} "
        f"({answer.status_code}: {detail})",
    )


def bearer_token(api: "ApiClient") -> str | None:
    """The kubeconfig's (or the pod's) bearer token, if it authenticates with one."""
    value = api.configuration.api_key.get("authorization") or api.configuration.api_key.get(
        "BearerToken"
    )
    if isinstance(value, str) and value.lower().startswith("bearer "):
        return value[7:]
    return None


async def diagnose(
    namespace: str,
    service_account: str,
    encryptor_url: str | None,
    decryptor_url: str | None,
    ca_bundle: str | None,
) -> list[Check]:
    import aiohttp

    from kamus.cli.keysecret import _configured_by, _unreachable
    from kamus.cli.settings import load_settings
    from kamus.server.errors import ConfigurationError
    from kamus.server.kube import create_api_client

    settings = load_settings()
    verify: Any = ca_bundle or True
    checks: list[Check] = []
    token: str | None = None
    rbac: tuple[bool, str] | None = None
    try:
        api = await create_api_client(settings.kubernetes)
    except ConfigurationError as exc:
        checks.append(Check("FAIL", "injector", str(exc)))
    else:
        try:
            token = bearer_token(api)
            checks.append(await check_injection(api, namespace, service_account))
            rbac = await check_encrypt_rbac(api, namespace)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            source = _configured_by(settings.kubernetes.proxy_url)
            reason = _unreachable(
                exc,
                str(api.configuration.host),
                settings.kubernetes.request_timeout_seconds,
                source,
            )
            checks.append(Check("FAIL", "injector", reason))
        finally:
            await api.close()
    checks.append(check_alive("encryptor", encryptor_url, verify=verify, option="--encryptor-url"))
    checks.append(check_alive("decryptor", decryptor_url, verify=verify, option="--decryptor-url"))
    checks.append(
        check_encrypt(encryptor_url, namespace, service_account, token, rbac, verify=verify)
    )
    return checks


def run_doctor(
    namespace: str,
    service_account: str,
    encryptor_url: str | None,
    decryptor_url: str | None,
    ca_bundle: str | None,
) -> list[Check]:
    return asyncio.run(
        diagnose(namespace, service_account, encryptor_url, decryptor_url, ca_bundle)
    )
