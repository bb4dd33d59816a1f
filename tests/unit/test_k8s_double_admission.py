"""Admission in the Kubernetes API double, through the official client only: mutating webhooks
called over real HTTPS, pod validation and ValidatingAdmissionPolicies, on pod creation as
kube-apiserver runs them, and the cluster-scoped objects that configure them."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from kubernetes import client, config, watch

from tests.k8s_double import KubeApiDouble
from tests.support.kubeclient import close
from tests.support.ports import free_port
from tests.support.servers import ThreadedServer

NS = "team-a"

SERVICE = ("kamus", "kamus-injector")
SERVICE_NAME = "kamus-injector.kamus.svc"
HOOK = "inject.kamus.soluto.com"
CONFIG = "kamus-injector"
INJECT = {"kamus.soluto.com/inject": "true"}
MERGE = "application/merge-patch+json"

Handler = Callable[[dict[str, Any]], dict[str, Any] | Response]


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def patched(*operations: dict[str, Any]) -> dict[str, Any]:
    """An AdmissionResponse that allows with a JSON patch."""
    return {"allowed": True, "patchType": "JSONPatch", "patch": b64(json.dumps(list(operations)))}


INIT = {
    "op": "add",
    "path": "/spec/initContainers",
    "value": [{"name": "kamus-init", "image": "kamus-init:1"}],
}
STATUS = {
    "op": "add",
    "path": "/metadata/annotations",
    "value": {"kamus.soluto.com/inject-status": "injected"},
}


def allow(request: dict[str, Any]) -> dict[str, Any]:
    return {"allowed": True}


class Webhook:
    """A webhook server over HTTPS, its certificate for the Service's names. ``handlers`` map a
    path to what answers an AdmissionReview's request: an AdmissionResponse (its uid filled in)
    or a whole HTTP response."""

    def __init__(
        self,
        ca: trustme.CA,
        workdir: Path,
        names: tuple[str, ...] = (SERVICE_NAME, "kamus-injector.kamus", "kamus-injector"),
    ) -> None:
        self.ca = ca
        self.reviews: list[tuple[str, dict[str, Any]]] = []
        self.handlers: dict[str, Handler] = {}
        self.delay = 0.0
        app = FastAPI()

        @app.post("/{path:path}")
        async def review(path: str, request: Request) -> Response:
            body = await request.json()
            self.reviews.append(("/" + path, body))
            if self.delay:
                time.sleep(self.delay)  # noqa: ASYNC251 - a webhook that hangs, thread and all
            handler = self.handlers.get("/" + path, allow)
            answer = handler(body["request"])
            if isinstance(answer, Response):
                return answer
            answer = {"uid": body["request"]["uid"], **answer}
            return JSONResponse(
                {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": answer}
            )

        pem = workdir / "webhook.pem"
        ca.issue_cert(*names).private_key_and_cert_chain_pem.write_to_path(str(pem))
        self.server = ThreadedServer(app)
        self.server.ssl_certfile = str(pem)

    @property
    def ca_bundle(self) -> str:
        return b64(self.ca.cert_pem.bytes())

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.server.port)


@pytest.fixture(scope="module")
def _webhook_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    webhook = Webhook(trustme.CA(), tmp_path_factory.mktemp("webhook"))
    webhook.server.start()
    yield webhook
    webhook.server.stop()


@pytest.fixture
def webhook(_webhook_server: Webhook, kube_api: KubeApiDouble) -> Webhook:
    """The webhook server, answering "allowed" at every path, behind the Service
    kamus/kamus-injector."""
    _webhook_server.reviews.clear()
    _webhook_server.handlers.clear()
    _webhook_server.delay = 0.0
    kube_api.service_endpoints[SERVICE] = _webhook_server.address
    return _webhook_server


@pytest.fixture
def api(kube_api: KubeApiDouble, tmp_path: Path) -> Iterator[client.ApiClient]:
    api_client: client.ApiClient = config.new_client_from_config(
        config_file=str(kube_api.write_kubeconfig(tmp_path / "kubeconfig"))
    )
    yield api_client
    close(api_client)


class Json:
    """One of the official client's API classes, answering JSON (what a webhook sees, in the
    API's own field names) rather than the client's models; bodies may be plain dicts."""

    def __init__(self, api: object, api_client: client.ApiClient) -> None:
        self._api = api
        self._client = api_client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._api, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._client.sanitize_for_serialization(method(*args, **kwargs))

        return call


@pytest.fixture
def core(api: client.ApiClient) -> Json:
    return Json(client.CoreV1Api(api), api)


@pytest.fixture
def admission(api: client.ApiClient) -> Json:
    return Json(client.AdmissionregistrationV1Api(api), api)


def hook(webhook: Webhook, name: str = HOOK, **fields: Any) -> dict[str, Any]:
    """A MutatingWebhook like the chart's: opted-in pods, through the Service."""
    return {
        "name": name,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "clientConfig": {
            "service": {"namespace": SERVICE[0], "name": SERVICE[1], "path": "/mutate"},
            "caBundle": webhook.ca_bundle,
        },
        "rules": [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ],
        "objectSelector": {"matchLabels": INJECT},
        **fields,
    }


def configure(admission: Json, *hooks: dict[str, Any], name: str = CONFIG) -> None:
    admission.create_mutating_webhook_configuration(
        {"metadata": {"name": name}, "webhooks": list(hooks)}
    )


def pod(name: str = "app", labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": INJECT if labels is None else labels},
        "spec": {"containers": [{"name": "app", "image": "app:1"}], **spec},
    }


def error(exc: pytest.ExceptionInfo[client.ApiException]) -> dict[str, Any]:
    assert exc.value.body is not None
    body: dict[str, Any] = json.loads(exc.value.body)
    return body


# -- mutating webhooks -------------------------------------------------------------------------


def test_a_dry_run_answers_the_patched_pod_and_stores_nothing(
    core: Json,
    admission: Json,
    kube_api: KubeApiDouble,
    webhook: Webhook,
) -> None:
    webhook.handlers["/mutate"] = lambda request: patched(INIT, STATUS)
    configure(admission, hook(webhook))

    answer = core.create_namespaced_pod(NS, pod(), dry_run="All")

    assert [c["name"] for c in answer["spec"]["initContainers"]] == ["kamus-init"]
    # The apiserver defaults what a webhook added, as it does the pod it was sent.
    assert answer["spec"]["initContainers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert answer["metadata"]["annotations"] == {"kamus.soluto.com/inject-status": "injected"}
    assert answer["metadata"]["uid"]
    assert "resourceVersion" not in answer["metadata"]  # never stored
    assert kube_api.objects("pods") == []

    [(path, review)] = webhook.reviews
    assert path == "/mutate"
    request = review["request"]
    assert review["apiVersion"] == "admission.k8s.io/v1"
    assert review["kind"] == "AdmissionReview"
    assert request["kind"] == {"group": "", "version": "v1", "kind": "Pod"}
    assert request["resource"] == {"group": "", "version": "v1", "resource": "pods"}
    assert request["requestKind"] == request["kind"]
    assert request["requestResource"] == request["resource"]
    assert (request["name"], request["namespace"]) == ("app", NS)
    assert request["operation"] == "CREATE"
    assert request["dryRun"] is True
    assert request["oldObject"] is None
    assert request["options"] == {
        "kind": "CreateOptions",
        "apiVersion": "meta.k8s.io/v1",
        "dryRun": ["All"],
    }
    assert request["userInfo"]["username"] == "kubernetes-admin"
    sent = request["object"]
    assert (sent["kind"], sent["apiVersion"]) == ("Pod", "v1")
    assert sent["metadata"]["namespace"] == NS
    assert sent["spec"]["serviceAccountName"] == "default"  # the ServiceAccount plugin's
    assert "uid" not in sent["metadata"]  # set after mutating admission

    [call] = kube_api.admission_calls
    assert (call.webhook, call.configuration, call.namespace) == (HOOK, CONFIG, NS)
    assert (call.dry_run, call.outcome, call.round) == (True, "patched", 0)
    assert call.request == request


def test_a_create_stores_the_patched_pod(
    core: Json,
    admission: Json,
    kube_api: KubeApiDouble,
    webhook: Webhook,
) -> None:
    webhook.handlers["/mutate"] = lambda request: patched(INIT, STATUS)
    configure(admission, hook(webhook))

    created = core.create_namespaced_pod(NS, pod())

    [stored] = kube_api.objects("pods", NS)
    assert [c["name"] for c in stored["spec"]["initContainers"]] == ["kamus-init"]
    assert stored["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert stored["status"] == {"phase": "Pending"}
    assert core.read_namespaced_pod("app", NS)["spec"]["initContainers"][0]["name"] == "kamus-init"
    assert [(c.outcome, c.dry_run) for c in kube_api.admission_calls] == [("patched", False)]
    # generateName: the webhook sees no name yet, the stored pod has one.
    core.create_namespaced_pod(NS, {**pod(), "metadata": {"generateName": "w-", "labels": INJECT}})
    assert "name" not in webhook.reviews[-1][1]["request"]
    assert len(kube_api.objects("pods", NS)) == 2


def test_a_webhook_that_denies_fails_the_create_with_its_status(
    core: Json,
    admission: Json,
    kube_api: KubeApiDouble,
    webhook: Webhook,
) -> None:
    webhook.handlers["/mutate"] = lambda request: {
        "allowed": False,
        "status": {"code": 403, "message": "no secrets-from annotation"},
    }
    configure(admission, hook(webhook))

    with pytest.raises(client.ApiException) as denied:
        core.create_namespaced_pod(NS, pod())
    assert denied.value.status == 403
    assert error(denied)["message"] == (
        f'admission webhook "{HOOK}" denied the request: no secrets-from annotation'
    )
    assert kube_api.objects("pods") == []
    assert kube_api.admission_calls[-1].outcome == "denied"

    # Without a code (or one under 400) the apiserver answers 400, as ToStatusErr does.
    webhook.handlers["/mutate"] = lambda request: {"allowed": False}
    with pytest.raises(client.ApiException) as bare:
        core.create_namespaced_pod(NS, pod(), dry_run="All")
    assert bare.value.status == 400
    assert (
        error(bare)["message"]
        == f'admission webhook "{HOOK}" denied the request without explanation'
    )
    assert error(bare)["status"] == "Failure"


def test_an_unreachable_webhook_fails_the_create_unless_its_failure_policy_is_ignore(
    core: Json,
    admission: Json,
    kube_api: KubeApiDouble,
    webhook: Webhook,
) -> None:
    port = free_port()
    kube_api.service_endpoints[SERVICE] = ("127.0.0.1", port)
    configure(admission, hook(webhook))

    with pytest.raises(client.ApiException) as failed:
        core.create_namespaced_pod(NS, pod(), dry_run="All")
    assert failed.value.status == 500
    body = error(failed)
    why = (
        f'failed calling webhook "{HOOK}": failed to call webhook: Post '
        f'"https://{SERVICE_NAME}:443/mutate?timeout=10s": dial tcp 127.0.0.1:{port}: connect: '
        "connection refused"
    )
    assert body["reason"] == "InternalError"
    assert body["message"] == f"Internal error occurred: {why}"
    assert body["details"]["causes"] == [{"message": why}]
    assert kube_api.admission_calls[-1].outcome == "failed"

    # An unknown Service fails the same way.
    del kube_api.service_endpoints[SERVICE]
    with pytest.raises(client.ApiException) as unknown:
        core.create_namespaced_pod(NS, pod())
    assert error(unknown)["message"].endswith(
        f'/mutate?timeout=10s": service "{SERVICE[1]}" not found'
    )

    admission.delete_mutating_webhook_configuration(CONFIG)
    configure(admission, hook(webhook, failurePolicy="Ignore", timeoutSeconds=3))
    created = core.create_namespaced_pod(NS, pod())
    assert "initContainers" not in created["spec"]  # admitted without the webhook
    call = kube_api.admission_calls[-1]
    assert call.outcome == "failed-open"
    assert "timeout=3s" in call.message
    assert webhook.reviews == []


def test_the_server_certificate_must_chain_to_the_ca_bundle_and_name_the_service(
    core: Json,
    admission: Json,
    kube_api: KubeApiDouble,
    webhook: Webhook,
) -> None:
    other_ca = b64(trustme.CA().cert_pem.bytes())
    configure(
        admission,
        hook(webhook, clientConfig={**hook(webhook)["clientConfig"], "caBundle": other_ca}),
    )
    with pytest.raises(client.ApiException) as untrusted:
        core.create_namespaced_pod(NS, pod(), dry_run="All")
    assert error(untrusted)["message"].endswith(
        '/mutate?timeout=10s": tls: failed to verify certificate: x509: certificate signed by '
        "unknown authority"
    )
    admission.delete_mutating_webhook_configuration(CONFIG)

    # The right CA, but the certificate does not name the Service the webhook calls.
    kube_api.service_endpoints[("kamus", "elsewhere")] = webhook.address
    service = {"namespace": "kamus", "name": "elsewhere", "path": "/mutate", "port": 8443}
    configure(
        admission,
        hook(webhook, clientConfig={"service": service, "caBundle": webhook.ca_bundle}),
    )
    with pytest.raises(client.ApiException) as misnamed:
        core.create_namespaced_pod(NS, pod(), dry_run="All")
    assert error(misnamed)["message"].endswith(
        'Post "https://elsewhere.kamus.svc:8443/mutate?timeout=10s": tls: failed to verify '
        f"certificate: x509: certificate is valid for {SERVICE_NAME}, kamus-injector.kamus, "
        "kamus-injector, not elsewhere.kamus.svc"
    )
    assert webhook.reviews == []


def test_a_url_webhook_is_called_at_its_url(
    tmp_path: Path,
    core: Json,
    admission: Json,
    webhook: Webhook,
) -> None:
    # This certificate names the Service, not the address the URL names.
    url = f"https://127.0.0.1:{webhook.server.port}/by-url"
    configure(admission, hook(webhook, clientConfig={"url": url, "caBundle": webhook.ca_bundle}))
    with pytest.raises(client.ApiException) as misnamed:
        core.create_namespaced_pod(NS, pod(), dry_run="All")
    assert error(misnamed)["message"].endswith(
        f'Post "{url}?timeout=10s": tls: failed to verify certificate: x509: cannot validate '
        "certificate for 127.0.0.1 because it doesn't contain any IP SANs"
    )
    admission.delete_mutating_webhook_configuration(CONFIG)

    by_address = Webhook(trustme.CA(), tmp_path, names=("127.0.0.1",))
    by_address.handlers["/by-url"] = lambda request: patched(STATUS)
    by_address.server.start()
    try:
        url = f"https://127.0.0.1:{by_address.server.port}/by-url?from=test"
        client_config = {"url": url, "caBundle": by_address.ca_bundle}
        configure(admission, hook(webhook, clientConfig=client_config))
        assert core.create_namespaced_pod(NS, pod(), dry_run="All")["metadata"].get("annotations")
    finally:
        by_address.server.stop()
    assert [path for path, _ in by_address.reviews] == ["/by-url"]


def test_selectors_and_rules_decide_which_pods_a_webhook_sees(
    core: Json,
    admission: Json,
    kube_api: KubeApiDouble,
    webhook: Webhook,
) -> None:
    webhook.handlers["/mutate"] = lambda request: patched(STATUS)
    configure(
        admission,
        hook(
            webhook,
            namespaceSelector={
                "matchExpressions": [
                    {"key": "kamus.soluto.com/injection", "operator": "NotIn", "values": ["off"]},
                    {
                        "key": "kubernetes.io/metadata.name",
                        "operator": "NotIn",
                        "values": ["kube-system"],
                    },
                ]
            },
            objectSelector={
                "matchLabels": INJECT,
                "matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}],
            },
        ),
    )
    kube_api.namespace_labels["team-off"] = {"kamus.soluto.com/injection": "off"}

    def annotated(namespace: str, labels: dict[str, str]) -> bool:
        answer = core.create_namespaced_pod(namespace, pod(labels=labels), dry_run="All")
        return bool(answer["metadata"].get("annotations"))

    assert annotated(NS, INJECT)
    assert not annotated(NS, {})  # not opted in
    assert not annotated(NS, {**INJECT, "skip": "yes"})
    assert not annotated("team-off", INJECT)  # the namespace opted out
    assert not annotated("kube-system", INJECT)
    assert len(webhook.reviews) == 1

    # Rules: a webhook for other operations or resources is not called.
    admission.delete_mutating_webhook_configuration(CONFIG)
    rules = [
        {"operations": ["UPDATE"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]},
        {"operations": ["*"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["secrets"]},
        {"operations": ["*"], "apiGroups": ["apps"], "apiVersions": ["*"], "resources": ["*"]},
    ]
    configure(admission, hook(webhook, rules=rules))
    assert not annotated(NS, INJECT)
    admission.delete_mutating_webhook_configuration(CONFIG)
    everything = [
        {"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*/*"]}
    ]
    configure(admission, hook(webhook, rules=everything))
    assert annotated(NS, INJECT)


def test_match_conditions_are_cel(
    core: Json,
    admission: Json,
    webhook: Webhook,
) -> None:
    webhook.handlers["/mutate"] = lambda request: patched(STATUS)
    conditions = [
        {
            "name": "not-injected-yet",
            "expression": "!has(object.metadata.annotations) || "
            "!('kamus.soluto.com/inject-status' in object.metadata.annotations)",
        },
        {"name": "not-a-dry-run-by-bob", "expression": "request.userInfo.username != 'bob'"},
    ]
    configure(admission, hook(webhook, matchConditions=conditions))
    assert core.create_namespaced_pod(NS, pod(), dry_run="All")["metadata"].get("annotations")
    done = pod()
    done["metadata"]["annotations"] = {"kamus.soluto.com/inject-status": "injected"}
    core.create_namespaced_pod(NS, done, dry_run="All")
    assert len(webhook.reviews) == 1

    # A condition that errs fails the create (403) under failurePolicy Fail, skips under Ignore.
    admission.delete_mutating_webhook_configuration(CONFIG)
    broken = [{"name": "broken", "expression": "object.spec.nothing.here == 1"}]
    configure(admission, hook(webhook, matchConditions=broken))
    with pytest.raises(client.ApiException) as erred:
        core.create_namespaced_pod(NS, pod(), dry_run="All")
    assert erred.value.status == 403
    assert error(erred)["message"].startswith(
        f'pods "app" is forbidden: failed calling webhook "{HOOK}": matchCondition \'broken\':'
    )
    admission.delete_mutating_webhook_configuration(CONFIG)
    configure(admission, hook(webhook, matchConditions=broken, failurePolicy="Ignore"))
    assert not core.create_namespaced_pod(NS, pod(), dry_run="All")["metadata"].get("annotations")


def test_the_ca_bundle_patched_on_the_cluster_scoped_configuration_is_used_next(
    core: Json,
    admission: Json,
    webhook: Webhook,
) -> None:
    webhook.handlers["/mutate"] = lambda request: patched(STATUS)
    without_bundle = hook(
        webhook, clientConfig={"service": hook(webhook)["clientConfig"]["service"]}
    )
    configure(admission, without_bundle)
    with pytest.raises(client.ApiException) as untrusted:
        core.create_namespaced_pod(NS, pod(), dry_run="All")
    assert "x509: certificate signed by unknown authority" in error(untrusted)["message"]

    # A JSON merge patch replaces the webhooks list: it carries the whole webhook.
    with_bundle = hook(webhook)
    patched_config = admission.patch_mutating_webhook_configuration(
        CONFIG, {"webhooks": [with_bundle]}, _content_type=MERGE
    )
    assert patched_config["metadata"]["generation"] == 2
    assert patched_config["webhooks"][0]["clientConfig"]["caBundle"] == webhook.ca_bundle
    assert core.create_namespaced_pod(NS, pod(), dry_run="All")["metadata"].get("annotations")

    # The injector's JSON patch, guarded by a test of the webhook's name.
    other = b64(trustme.CA().cert_pem.bytes())
    operations = [
        {"op": "test", "path": "/webhooks/0/name", "value": HOOK},
        {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": other},
    ]
    admission.patch_mutating_webhook_configuration(CONFIG, operations)
    with pytest.raises(client.ApiException):
        core.create_namespaced_pod(NS, pod(), dry_run="All")
    wrong_name = [{"op": "test", "path": "/webhooks/0/name", "value": "moved"}, operations[1]]
    with pytest.raises(client.ApiException) as guarded:
        admission.patch_mutating_webhook_configuration(CONFIG, wrong_name)
    assert guarded.value.status == 422

    # The client's default patch for a dict is a strategic merge: webhooks merge by name.
    admission.patch_mutating_webhook_configuration(
        CONFIG, {"webhooks": [{"name": HOOK, "clientConfig": {"caBundle": webhook.ca_bundle}}]}
    )
    stored = admission.read_mutating_webhook_configuration(CONFIG)
    assert stored["webhooks"][0]["rules"] == with_bundle["rules"]  # kept
    assert core.create_namespaced_pod(NS, pod(), dry_run="All")["metadata"].get("annotations")
    assert stored["metadata"]["generation"] == 4


def test_if_needed_webhooks_are_called_again_after_a_later_change(
    core: Json,
    admission: Json,
    kube_api: KubeApiDouble,
    webhook: Webhook,
) -> None:
    def service(path: str) -> dict[str, Any]:
        config = hook(webhook)["clientConfig"]
        return {**config, "service": {**config["service"], "path": path}}

    seen: list[dict[str, str]] = []

    def first(request: dict[str, Any]) -> dict[str, Any]:
        seen.append(dict(request["object"]["metadata"].get("labels") or {}))
        return (
            patched(INIT)
            if "initContainers" not in request["object"]["spec"]
            else {"allowed": True}
        )

    webhook.handlers["/first"] = first
    webhook.handlers["/second"] = lambda request: patched(
        {"op": "add", "path": "/metadata/labels/sidecar", "value": "added"}
    )
    webhook.handlers["/never"] = lambda request: {"allowed": True}
    configure(
        admission,
        hook(
            webhook,
            "first.example.com",
            clientConfig=service("/first"),
            reinvocationPolicy="IfNeeded",
        ),
        hook(
            webhook, "never.example.com", clientConfig=service("/never"), reinvocationPolicy="Never"
        ),
        name="a-first",
    )
    configure(
        admission,
        hook(webhook, "second.example.com", clientConfig=service("/second")),
        name="b-second",
    )

    created = core.create_namespaced_pod(NS, pod())

    calls = [(c.webhook, c.round, c.outcome) for c in kube_api.admission_calls]
    assert calls == [
        ("first.example.com", 0, "patched"),
        ("never.example.com", 0, "allowed"),
        ("second.example.com", 0, "patched"),
        ("first.example.com", 1, "allowed"),  # saw the sidecar label the later webhook added
    ]
    assert seen == [INJECT, {**INJECT, "sidecar": "added"}]
    assert created["metadata"]["labels"]["sidecar"] == "added"

    # Nothing changed after it: no reinvocation.
    kube_api.admission_calls.clear()
    webhook.handlers["/second"] = lambda request: {"allowed": True}
    core.create_namespaced_pod(NS, pod("again"))
    assert [c.round for c in kube_api.admission_calls] == [0, 0, 0]


def test_dry_runs_call_only_webhooks_without_side_effects(
    core: Json,
    admission: Json,
    webhook: Webhook,
) -> None:
    configure(admission, hook(webhook, sideEffects="Some"))
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod(NS, pod(), dry_run="All")
    assert refused.value.status == 400
    assert error(refused)["message"] == f'admission webhook "{HOOK}" does not support dry run'
    assert webhook.reviews == []
    core.create_namespaced_pod(NS, pod())  # a real create calls it
    assert len(webhook.reviews) == 1


def test_bad_answers_are_failures_worded_as_the_apiserver_words_them(
    core: Json,
    admission: Json,
    kube_api: KubeApiDouble,
    webhook: Webhook,
) -> None:
    configure(admission, hook(webhook, timeoutSeconds=1))
    prefix = f'Internal error occurred: failed calling webhook "{HOOK}": '

    def failure(handler: Handler) -> str:
        webhook.handlers["/mutate"] = handler
        with pytest.raises(client.ApiException) as failed:
            core.create_namespaced_pod(NS, pod(), dry_run="All")
        assert failed.value.status == 500
        message: str = error(failed)["message"]
        assert message.startswith(prefix)
        return message.removeprefix(prefix)

    assert failure(lambda request: {"uid": "another", "allowed": True}).startswith(
        'received invalid webhook response: expected response.uid="'
    )
    assert failure(lambda request: PlainTextResponse("boom", status_code=500)) == (
        'failed to call webhook: an error on the server ("boom") has prevented the request from '
        "succeeding"
    )
    assert failure(lambda request: {"allowed": True, "patch": b64("[]")}) == (
        "received invalid webhook response: webhook returned response.patch but not "
        "response.patchType"
    )
    assert failure(lambda request: JSONResponse({"hello": "world"})).startswith(
        "failed to call webhook: Object 'Kind' is missing"
    )
    webhook.delay = 1.5
    assert failure(lambda request: {"allowed": True}) == (
        f'failed to call webhook: Post "https://{SERVICE_NAME}:443/mutate?timeout=1s": context '
        "deadline exceeded"
    )
    webhook.delay = 0
    assert kube_api.objects("pods") == []


# -- pod validation ----------------------------------------------------------------------------


def test_pods_are_validated_as_the_apiserver_validates_them(
    core: Json, kube_api: KubeApiDouble
) -> None:
    def invalid(body: dict[str, Any]) -> dict[str, Any]:
        with pytest.raises(client.ApiException) as refused:
            core.create_namespaced_pod(NS, body, dry_run="All")
        assert refused.value.status == 422
        return error(refused)

    clash = pod(initContainers=[{"name": "app", "image": "init:1"}])
    body = invalid(clash)
    assert (
        body["message"]
        == 'Pod "app" is invalid: spec.initContainers[0].name: Duplicate value: "app"'
    )
    assert body["reason"] == "Invalid"
    assert body["details"] == {
        "name": "app",
        "kind": "Pod",
        "causes": [
            {
                "reason": "FieldValueDuplicate",
                "message": 'Duplicate value: "app"',
                "field": "spec.initContainers[0].name",
            }
        ],
    }
    mounts = pod(
        volumes=[{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}],
        containers=[
            {
                "name": "app",
                "image": "app:1",
                "volumeMounts": [
                    {"name": "v", "mountPath": "/data"},
                    {"name": "missing", "mountPath": "/data"},
                ],
            }
        ],
    )
    assert invalid(mounts)["message"] == (
        'Pod "app" is invalid: [spec.volumes[1].name: Duplicate value: "v", '
        'spec.containers[0].volumeMounts[1].name: Not found: "missing", '
        'spec.containers[0].volumeMounts[1].mountPath: Invalid value: "/data": must be unique]'
    )
    assert (
        invalid(pod(containers=[]))["message"]
        == 'Pod "app" is invalid: spec.containers: Required value'
    )
    assert kube_api.objects("pods") == []


def test_a_webhook_patch_that_breaks_the_pod_fails_its_validation(
    core: Json,
    admission: Json,
    webhook: Webhook,
) -> None:
    mount = {
        "op": "add",
        "path": "/spec/containers/0/volumeMounts",
        "value": [{"name": "kamus-secrets", "mountPath": "/secrets"}],
    }
    webhook.handlers["/mutate"] = lambda request: patched(mount)  # but no volume
    configure(admission, hook(webhook))
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod(NS, pod(), dry_run="All")
    assert refused.value.status == 422
    assert error(refused)["message"] == (
        'Pod "app" is invalid: spec.containers[0].volumeMounts[0].name: Not found: "kamus-secrets"'
    )


# -- ValidatingAdmissionPolicies ---------------------------------------------------------------


def policy(name: str, *validations: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["pods"],
                    }
                ],
                "objectSelector": {"matchLabels": INJECT},
            },
            "validations": list(validations),
            **spec,
        },
    }


def binding(name: str, policy_name: str, actions: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"policyName": policy_name, "validationActions": actions, **spec},
    }


NEEDS_INIT = {
    "expression": "has(object.spec.initContainers) && "
    "object.spec.initContainers.exists(c, c.name == 'kamus-init')",
    "message": "opted-in pods need the kamus-init container",
}


def test_validating_admission_policies_deny_after_mutation(
    core: Json,
    admission: Json,
    kube_api: KubeApiDouble,
    webhook: Webhook,
) -> None:
    admission.create_validating_admission_policy(policy("kamus-init", NEEDS_INIT))
    admission.create_validating_admission_policy_binding(
        binding("kamus-init-binding", "kamus-init", ["Deny"])
    )

    with pytest.raises(client.ApiException) as denied:
        core.create_namespaced_pod(NS, pod(), dry_run="All")
    assert denied.value.status == 422
    text = (
        "ValidatingAdmissionPolicy 'kamus-init' with binding 'kamus-init-binding' denied request: "
        "opted-in pods need the kamus-init container"
    )
    assert error(denied)["message"] == f'pods "app" is forbidden: {text}'
    assert error(denied)["reason"] == "Invalid"
    assert error(denied)["details"] == {
        "name": "app",
        "kind": "pods",
        "causes": [{"message": text}],
    }
    core.create_namespaced_pod(NS, pod("plain", labels={}))  # not matched by the policy

    # The webhook's init container satisfies it: validation sees the mutated pod.
    webhook.handlers["/mutate"] = lambda request: patched(INIT)
    configure(admission, hook(webhook))
    core.create_namespaced_pod(NS, pod())
    assert [p["metadata"]["name"] for p in kube_api.objects("pods", NS)] == ["app", "plain"]


def test_policy_reasons_variables_messages_and_actions(
    core: Json, admission: Json, kube_api: KubeApiDouble
) -> None:
    kube_api.namespace_labels[NS] = {"tier": "prod"}
    admission.create_validating_admission_policy(
        policy(
            "named",
            {
                "expression": "variables.prod ? variables.name.startsWith('prod-') : true",
                "messageExpression": "'in ' + request.namespace + ', ' + variables.name + "
                "' must start with prod-'",
                "reason": "Forbidden",
            },
            variables=[
                {"name": "name", "expression": "object.metadata.name"},
                {
                    "name": "prod",
                    "expression": "'tier' in namespaceObject.metadata.labels && "
                    "namespaceObject.metadata.labels['tier'] == 'prod'",
                },
            ],
            matchConditions=[{"name": "not-dry", "expression": "!request.dryRun"}],
        )
    )
    admission.create_validating_admission_policy_binding(binding("named", "named", ["Deny"]))
    admission.create_validating_admission_policy_binding(binding("audit", "named", ["Audit"]))

    core.create_namespaced_pod(NS, pod(), dry_run="All")  # its matchCondition excludes dry runs
    with pytest.raises(client.ApiException) as denied:
        core.create_namespaced_pod(NS, pod())
    assert denied.value.status == 403
    assert error(denied)["message"].endswith(
        "ValidatingAdmissionPolicy 'named' with binding 'named' denied request: in team-a, app "
        "must start with prod-"
    )
    core.create_namespaced_pod(NS, pod("prod-app"))
    core.create_namespaced_pod("team-b", pod())  # not a prod namespace

    # A binding's matchResources narrows the policy; an expression that errs follows the
    # failurePolicy.
    admission.delete_validating_admission_policy_binding("named")
    admission.create_validating_admission_policy_binding(
        binding(
            "named",
            "named",
            ["Deny"],
            matchResources={"namespaceSelector": {"matchLabels": {"tier": "staging"}}},
        )
    )
    core.create_namespaced_pod(NS, pod("app-2"))
    admission.create_validating_admission_policy(
        policy("broken", {"expression": "object.spec.nothing == 1"})
    )
    admission.create_validating_admission_policy_binding(binding("broken", "broken", ["Deny"]))
    with pytest.raises(client.ApiException) as erred:
        core.create_namespaced_pod(NS, pod("app-3"))
    assert error(erred)["message"].startswith(
        "pods \"app-3\" is forbidden: ValidatingAdmissionPolicy 'broken' with binding 'broken' "
        "denied request: expression 'object.spec.nothing == 1' resulted in error:"
    )
    admission.patch_validating_admission_policy(
        "broken", {"spec": {"failurePolicy": "Ignore"}}, _content_type=MERGE
    )
    core.create_namespaced_pod(NS, pod("app-3"))


# -- the cluster-scoped objects and RBAC -------------------------------------------------------


def test_cluster_scoped_objects_are_served_at_the_apiservers_urls(
    api: client.ApiClient, admission: Json, kube_api: KubeApiDouble
) -> None:
    created = admission.create_validating_admission_policy(
        {"metadata": {"name": "p", "namespace": "ignored"}, **{"spec": policy("p")["spec"]}}
    )
    assert "namespace" not in created["metadata"]
    assert created["metadata"]["generation"] == 1
    assert [
        p["metadata"]["name"] for p in admission.list_validating_admission_policy()["items"]
    ] == ["p"]
    assert kube_api.objects("validatingadmissionpolicies")[0]["metadata"]["name"] == "p"

    current = admission.read_validating_admission_policy("p")
    current["spec"]["failurePolicy"] = "Ignore"
    replaced = admission.replace_validating_admission_policy("p", current)
    assert replaced["metadata"]["generation"] == 2
    with pytest.raises(client.ApiException) as conflict:
        admission.replace_validating_admission_policy("p", current)  # its resourceVersion is old
    assert conflict.value.status == 409

    # Dry runs of other writes store nothing either.
    admission.patch_validating_admission_policy(
        "p", {"spec": {"failurePolicy": "Fail"}}, _content_type=MERGE, dry_run="All"
    )
    assert admission.read_validating_admission_policy("p")["spec"]["failurePolicy"] == "Ignore"
    admission.delete_validating_admission_policy("p", dry_run="All")
    admission.read_validating_admission_policy("p")

    events = watch.Watch().stream(
        client.AdmissionregistrationV1Api(api).list_validating_admission_policy,
        resource_version="0",
        timeout_seconds=1,
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "p")]

    admission.delete_validating_admission_policy("p")
    with pytest.raises(client.ApiException) as gone:
        admission.read_validating_admission_policy("p")
    assert gone.value.status == 404
    # A cluster-scoped type in a namespace, and a namespaced one without, are not found.
    for path in (
        "/apis/admissionregistration.k8s.io/v1/namespaces/x/mutatingwebhookconfigurations",
        "/api/v1/pods/app",
    ):
        answer = api.call_api(*api.param_serialize("GET", path, auth_settings=["BearerToken"]))
        # Read: call_api leaves the body unread, its connection checked out of the pool, where
        # close() cannot reach it (a TLS socket left to the collector).
        answer.read()
        assert answer.status == 404, path


def test_rbac_covers_the_new_types_and_the_caller_is_in_the_review(
    tmp_path: Path,
    api: client.ApiClient,
    admission: Json,
    kube_api: KubeApiDouble,
    webhook: Webhook,
) -> None:
    configure(admission, hook(webhook))
    token = kube_api.issue_token("kamus", "kamus-doctor")
    as_sa: client.ApiClient = config.new_client_from_config(
        config_file=str(kube_api.write_kubeconfig(tmp_path / "sa", token=token))
    )
    try:
        sa_core = Json(client.CoreV1Api(as_sa), as_sa)
        with pytest.raises(client.ApiException) as refused:
            sa_core.create_namespaced_pod(NS, pod(), dry_run="All")
        assert refused.value.status == 403
        assert error(refused)["message"] == (
            'pods is forbidden: User "system:serviceaccount:kamus:kamus-doctor" cannot create '
            'resource "pods" in API group "" in the namespace "team-a"'
        )
        kube_api.grant(
            "system:serviceaccount:kamus:kamus-doctor",
            group="",
            resource="pods",
            verb="create",
            namespace=NS,
        )
        sa_core.create_namespaced_pod(NS, pod(), dry_run="All")
        user = webhook.reviews[-1][1]["request"]["userInfo"]
        assert user["username"] == "system:serviceaccount:kamus:kamus-doctor"
        assert "system:serviceaccounts:kamus" in user["groups"]
        review = Json(client.AuthorizationV1Api(as_sa), as_sa).create_self_subject_access_review(
            {
                "spec": {
                    "resourceAttributes": {"verb": "create", "resource": "pods", "namespace": NS}
                }
            }
        )
        assert review["status"]["allowed"]
        with pytest.raises(client.ApiException):
            sa_core.create_namespaced_pod("team-b", pod(), dry_run="All")
    finally:
        close(as_sa)

    # The admin: all but denied_access, at the cluster scope for cluster-scoped types.
    authz = Json(client.AuthorizationV1Api(api), api)

    def may(verb: str, resource: str) -> bool:
        attrs = {"group": "admissionregistration.k8s.io", "resource": resource, "verb": verb}
        answer = authz.create_self_subject_access_review({"spec": {"resourceAttributes": attrs}})
        return bool(answer["status"]["allowed"])

    assert may("patch", "mutatingwebhookconfigurations")
    assert may("create", "validatingadmissionpolicybindings")
    assert may("update", "validatingadmissionpolicies/status")
    kube_api.denied_access.add(
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch")
    )
    assert not may("patch", "mutatingwebhookconfigurations")
    with pytest.raises(client.ApiException) as forbidden:
        admission.patch_mutating_webhook_configuration(CONFIG, {"metadata": {"labels": {"a": "b"}}})
    assert error(forbidden)["message"] == (
        f'mutatingwebhookconfigurations.admissionregistration.k8s.io "{CONFIG}" is forbidden: '
        'User "kubernetes-admin" cannot patch resource "mutatingwebhookconfigurations" in API '
        'group "admissionregistration.k8s.io" at the cluster scope'
    )


def test_strategic_merge_patches_merge_pod_lists_by_their_keys(core: Json) -> None:
    core.create_namespaced_pod(
        NS,
        pod(
            labels={},
            containers=[
                {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}]},
                {"name": "side", "image": "side:1"},
            ],
        ),
    )
    core.patch_namespaced_pod(
        "app",
        NS,
        {
            "spec": {
                "containers": [
                    {"name": "app", "image": "app:2", "env": [{"name": "B", "value": "2"}]},
                    {"name": "side", "$patch": "delete"},
                ]
            }
        },
    )
    stored = core.read_namespaced_pod("app", NS)
    [container] = stored["spec"]["containers"]
    assert (container["name"], container["image"]) == ("app", "app:2")
    assert container["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]


def test_namespace_labels_and_endpoints_are_reset_with_the_cluster(kube_api: KubeApiDouble) -> None:
    kube_api.namespace_labels["x"] = {"a": "b"}
    kube_api.service_endpoints[("x", "y")] = ("127.0.0.1", 1)
    kube_api.reset_resources()
    assert kube_api.namespace_labels == {}
    assert kube_api.service_endpoints == {}
    assert kube_api.admission_calls == []
