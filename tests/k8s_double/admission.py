"""Admission control in the Kubernetes API double, as kube-apiserver runs it on pod creation.

On every pod CREATE (``?dryRun=All`` or not), after decoding and defaulting:

* **Mutating admission webhooks**, from the stored MutatingWebhookConfigurations in name order,
  each configuration's webhooks in order. A webhook is called when one of its ``rules`` matches
  (operations, apiGroups, apiVersions, resources with the apiserver's ``*``, ``*/*`` and
  ``pods/*`` forms, scope), its ``namespaceSelector`` matches the namespace's labels (every
  namespace exists, labelled ``kubernetes.io/metadata.name`` plus what a test sets in
  :attr:`AdmissionControl.namespace_labels`), its ``objectSelector`` matches the pod's labels,
  and its ``matchConditions`` (CEL, see ``cel.py``) hold. The call is an ``admission.k8s.io/v1``
  AdmissionReview POSTed over HTTPS to ``clientConfig.url``, or for ``clientConfig.service`` to
  the address a test registers in :attr:`AdmissionControl.service_endpoints` (the Service and its
  endpoints), with the server name ``<name>.<namespace>.svc`` sent as SNI and checked against the
  certificate, which must chain to the base64 ``caBundle`` (the system's roots without one), within
  ``timeoutSeconds`` (default 10). A failed call (refused, TLS, timeout, a non-2xx answer, an
  answer that is no AdmissionReview for the request's uid) is an error
  ``failed calling webhook "<name>": ...`` worded as the apiserver words it: with
  ``failurePolicy: Fail`` (the default) the create fails with 500 InternalError, with ``Ignore``
  it goes on without that webhook. ``allowed: false`` fails the create with the webhook's
  ``status`` (its code if 400 or more, else 400), ``admission webhook "<name>" denied the
  request: <message>``. A ``JSONPatch`` is applied and the pod defaulted again. A dry run calls
  only webhooks whose ``sideEffects`` is None or NoneOnDryRun (else 400, as the apiserver
  answers). ``reinvocationPolicy: IfNeeded`` webhooks are called once more, after the others, when
  a later webhook changed the pod. Every call is recorded in :attr:`AdmissionControl.calls`.
* **Pod validation** (``resources.py``): 422 Invalid, before validating admission.
* **ValidatingAdmissionPolicies**, for each ValidatingAdmissionPolicyBinding whose
  ``validationActions`` include Deny: the policy's ``matchConstraints`` (resourceRules,
  excludeResourceRules, namespaceSelector, objectSelector) and the binding's ``matchResources``,
  ``matchConditions``, ``variables``, then ``validations`` in CEL with ``object``, ``oldObject``
  (null), ``request``, ``namespaceObject`` and ``params`` (null). The first failing validation
  fails the create: ``<reason>`` (default Invalid, 422; Forbidden is 403) and
  ``pods "<name>" is forbidden: ValidatingAdmissionPolicy '<policy>' with binding '<binding>'
  denied request: <message>``; an expression that errs follows the policy's ``failurePolicy``.

Not modelled: admission of anything but pod creation (other writes, other types, and the
``CONNECT``/``UPDATE``/``DELETE`` operations), validating admission webhooks, the AdmissionReview
``v1beta1`` version, ``matchPolicy: Equivalent`` (only ``v1`` pods exist), in-tree admission
plugins but the ServiceAccount plugin's ``serviceAccountName`` (no token volume, no
LimitRanger, no PodSecurity), ``auditAnnotations`` and ``warnings``, policies' ``paramKind``
(``params`` is always null), the Warn and Audit validation actions, and the ``authorizer`` CEL
variable. A policy or webhook configuration is stored as written, not validated.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import http.client
import json
import socket
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from fastapi import Request

from tests.k8s_double import cel
from tests.k8s_double.resources import (
    PODS,
    AdmissionAttributes,
    ApiError,
    Object,
    PatchError,
    ResourceStore,
    ResourceType,
    json_patch,
    status_body,
)

ADMISSION_REVIEW_VERSION = "admission.k8s.io/v1"
NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass
class AdmissionCall:
    """One call of a mutating webhook (for assertions in tests).

    ``outcome`` is ``patched`` (it answered a non-empty patch), ``allowed`` (without one),
    ``denied`` (``allowed: false``), ``failed`` (the call failed and so did the create: a
    failurePolicy Fail, a dry run it does not support, a patch that does not apply) or
    ``failed-open`` (the call failed and failurePolicy Ignore let the create go on)."""

    webhook: str
    configuration: str
    namespace: str
    dry_run: bool
    outcome: str
    round: int = 0  # 1 for a reinvocation
    message: str = ""  # why it failed or was denied
    request: Object | None = None  # the AdmissionReview's request, if one was sent


class _CallFailed(Exception):
    """The apiserver's ErrCallingWebhook: subject to the webhook's failurePolicy."""


@dataclass(frozen=True)
class _Hook:
    configuration: str
    index: int
    spec: Object

    @property
    def name(self) -> str:
        return str(self.spec.get("name") or "")

    @property
    def key(self) -> tuple[str, int]:
        return (self.configuration, self.index)


# -- matching ----------------------------------------------------------------------------------


def selector_matches(label_selector: Any, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector: absent or empty matches everything."""
    if not isinstance(label_selector, dict):
        return True
    for key, value in (label_selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in label_selector.get("matchExpressions") or ():
        key, operator = expression.get("key"), expression.get("operator")
        values = expression.get("values") or []
        present = key in labels
        holds = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }.get(operator, False)
        if not holds:
            return False
    return True


def rule_matches(rule: Object, rt: ResourceType, operation: str, name: str = "") -> bool:
    """A RuleWithOperations (or a policy's NamedRuleWithOperations) against a request."""

    def has(key: str, value: str) -> bool:
        listed = rule.get(key) or []
        return "*" in listed or value in listed

    if not (
        has("operations", operation)
        and has("apiGroups", rt.group)
        and has("apiVersions", rt.version)
    ):
        return False
    scope = rule.get("scope") or "*"
    if (scope == "Namespaced" and not rt.namespaced) or (scope == "Cluster" and rt.namespaced):
        return False
    names = rule.get("resourceNames") or []
    if names and name not in names:
        return False
    for resource in rule.get("resources") or ():
        plural, _, sub = str(resource).partition("/")
        # "pods" and "pods/*" match the pod itself (no subresource); "*" every resource; "*/*"
        # every resource and subresource.
        if plural in ("*", rt.plural) and sub in ("*", ""):
            return True
    return False


def _labels(obj: Object) -> dict[str, str]:
    labels = (obj.get("metadata") or {}).get("labels")
    return dict(labels) if isinstance(labels, dict) else {}


def _forbidden(rt: ResourceType, name: str, text: str, code: int, reason: str) -> ApiError:
    """admission.NewForbidden's Status, with the code and reason the caller gives it."""
    subject = f'{rt.qualified} "{name}"' if name else rt.qualified
    error = ApiError(code, reason, f"{subject} is forbidden: {text}", **rt.details(name))
    error.body["details"]["causes"] = [{"message": text}]
    return error


# -- the HTTPS call ----------------------------------------------------------------------------


class _Connection(http.client.HTTPSConnection):
    """HTTPS to ``address`` while naming (SNI, certificate check, Host) ``server_name``: what
    the apiserver does when it dials a Service's endpoint."""

    def __init__(
        self,
        address: tuple[str, int],
        server_name: str,
        port: int,
        context: ssl.SSLContext,
        timeout: float,
    ) -> None:
        super().__init__(server_name, port, context=context, timeout=timeout)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection(self._address, self.timeout)
        try:
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def _peer_names(address: tuple[str, int], timeout: float) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses of the certificate the server at ``address`` presents
    (unverified)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(address, timeout) as sock,
            context.wrap_socket(sock) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return [], []
    if der is None:
        return [], []
    try:
        names = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except (ValueError, x509.ExtensionNotFound):
        return [], []
    return (
        [str(n) for n in names.value.get_values_for_type(x509.DNSName)],
        [str(n) for n in names.value.get_values_for_type(x509.IPAddress)],
    )


def _why(exc: BaseException, address: tuple[str, int], server_name: str, timeout: float) -> str:
    """What Go's HTTP client says for a failure, after ``Post "<url>": ``."""
    dial = f"dial tcp {address[0]}:{address[1]}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code == 64:  # X509_V_ERR_IP_ADDRESS_MISMATCH
            _, ips = _peer_names(address, timeout)
            if ips:
                valid = f"x509: certificate is valid for {', '.join(ips)}, not {server_name}"
            else:
                valid = (
                    f"x509: cannot validate certificate for {server_name} because it doesn't "
                    "contain any IP SANs"
                )
            return f"tls: failed to verify certificate: {valid}"
        if exc.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            names, _ = _peer_names(address, timeout)
            if names:
                valid = f"x509: certificate is valid for {', '.join(names)}, not {server_name}"
            else:
                valid = (
                    "x509: certificate is not valid for any names, but wanted to match "
                    + server_name
                )
            return f"tls: failed to verify certificate: {valid}"
        if exc.verify_code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
            return (
                "tls: failed to verify certificate: x509: certificate has expired or is not yet "
                "valid"
            )
        return "tls: failed to verify certificate: x509: certificate signed by unknown authority"
    if isinstance(exc, TimeoutError):
        return "context deadline exceeded"
    if isinstance(exc, ConnectionRefusedError):
        return f"{dial}: connect: connection refused"
    if isinstance(
        exc,
        http.client.RemoteDisconnected
        | http.client.IncompleteRead
        | ConnectionResetError
        | ssl.SSLEOFError,
    ):
        return "EOF"
    if isinstance(exc, ssl.SSLError):
        return f"remote error: tls: {(exc.reason or str(exc)).lower().replace('_', ' ')}"
    if isinstance(exc, http.client.HTTPException):
        return f"net/http: {exc}"
    if isinstance(exc, OSError):
        return f"{dial}: {exc.strerror or exc}"
    return str(exc)


# client-go's wording for an error status without a Status body (errors.NewGenericServerResponse)
_STATUS_TEXT = {
    400: "the server rejected our request for an unknown reason",
    401: "the server has asked for the client to provide credentials",
    404: "the server could not find the requested resource",
    405: "the server does not allow this method on the requested resource",
    406: "the server was unable to respond with a content type that the client supports",
    409: "the server reported a conflict",
    410: "the server has asked for the client to provide a newer version",
    415: "the server was unable to handle the media type requested",
    422: "the server rejected our request due to an error in our request",
    429: "the server has received too many requests and has asked us to try again later",
    503: "the server is currently unable to handle the request",
    504: (
        "the server was unable to return a response in the time allotted, but may still be "
        "processing the request"
    ),
}


def _status_error(code: int, content_type: str, data: bytes) -> str:
    """What client-go's ``Do().Into()`` says of a non-2xx answer."""
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status" and body.get("message"):
        return str(body["message"])
    text = "unknown"
    if content_type.split(";")[0].strip().lower() == "text/plain":
        text = data[:1024].decode(errors="replace").strip()
    if code == 403:
        return text
    if code in _STATUS_TEXT:
        return _STATUS_TEXT[code]
    if code >= 500:
        return (
            f"an error on the server ({json.dumps(text)}) has prevented the request from succeeding"
        )
    return f"the server responded with the status code {code} but did not return more information"


@dataclass
class _Target:
    url: str  # as the error messages show it, with ?timeout=
    address: tuple[str, int] | None  # where to connect; None: the Service is unknown
    server_name: str
    port: int
    path: str  # path and query, as sent
    context: ssl.SSLContext
    timeout: float


# -- admission ---------------------------------------------------------------------------------


@dataclass
class AdmissionControl:
    """The double's admission chain for pod creation; see the module docstring."""

    store: ResourceStore
    # The calling user's authentication.k8s.io/v1 UserInfo (the caller is authenticated).
    user_info: Callable[[Request], Object]
    # Labels a test gives a namespace, besides kubernetes.io/metadata.name.
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    # (namespace, name) of a Service -> (host, port) of the endpoint that serves it.
    service_endpoints: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    calls: list[AdmissionCall] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def reset(self) -> None:
        self.namespace_labels.clear()
        self.service_endpoints.clear()
        self.calls.clear()

    def labels_of_namespace(self, namespace: str) -> dict[str, str]:
        return {**self.namespace_labels.get(namespace, {}), NAME_LABEL: namespace}

    def _record(self, call: AdmissionCall) -> None:
        with self._lock:
            self.calls.append(call)

    @staticmethod
    def _applies(attrs: AdmissionAttributes) -> bool:
        return attrs.rt == PODS and attrs.operation == "CREATE"

    def _request(self, attrs: AdmissionAttributes, obj: Object, user: Object, uid: str) -> Object:
        """An AdmissionRequest (also the CEL ``request`` variable)."""
        rt = attrs.rt
        kind = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        resource = {"group": rt.group, "version": rt.version, "resource": rt.plural}
        options: Object = {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        if attrs.dry_run:
            options["dryRun"] = ["All"]
        if attrs.field_manager:
            options["fieldManager"] = attrs.field_manager
        request: Object = {
            "uid": uid,
            "kind": kind,
            "resource": resource,
            "requestKind": dict(kind),
            "requestResource": dict(resource),
        }
        name = (obj.get("metadata") or {}).get("name")
        if name:
            request["name"] = name
        if attrs.namespace:
            request["namespace"] = attrs.namespace
        request.update(
            operation=attrs.operation,
            userInfo=copy.deepcopy(user),
            object=copy.deepcopy(obj),
            oldObject=None,
            dryRun=attrs.dry_run,
            options=options,
        )
        return request

    def _namespace_object(self, namespace: str) -> Object | None:
        if not namespace:
            return None
        return {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "labels": self.labels_of_namespace(namespace)},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }

    # -- mutating webhooks ---------------------------------------------------------------------

    def _hooks(self) -> list[_Hook]:
        hooks = []
        for config in self.store.objects("mutatingwebhookconfigurations"):
            for index, spec in enumerate(config.get("webhooks") or ()):
                if isinstance(spec, dict):
                    hooks.append(_Hook(config["metadata"]["name"], index, spec))
        return sorted(hooks, key=lambda h: h.key)

    async def mutate(self, attrs: AdmissionAttributes, obj: Object) -> Object:
        if not self._applies(attrs):
            return obj
        user = self.user_info(attrs.request)
        hooks = self._hooks()
        # The apiserver's webhookReinvokeContext: IfNeeded webhooks called since the last change,
        # and the ones a later change requires calling again.
        previously: set[tuple[str, int]] = set()
        reinvoke: set[tuple[str, int]] = set()
        for round_ in (0, 1):
            if round_ == 1 and not reinvoke:
                break
            for hook in hooks:
                if not self._should_call(hook, attrs, obj, user):
                    continue
                # A reinvocation never calls a webhook for the first time.
                if round_ == 1 and hook.key not in reinvoke:
                    continue
                changed, obj = await self._call(hook, attrs, obj, user, round_)
                if changed:
                    reinvoke |= previously
                    previously = set()
                if hook.spec.get("reinvocationPolicy") == "IfNeeded":
                    previously.add(hook.key)
        return obj

    def _should_call(
        self, hook: _Hook, attrs: AdmissionAttributes, obj: Object, user: Object
    ) -> bool:
        spec = hook.spec
        if not any(
            isinstance(rule, dict) and rule_matches(rule, attrs.rt, attrs.operation)
            for rule in spec.get("rules") or ()
        ):
            return False
        if attrs.rt.namespaced and not selector_matches(
            spec.get("namespaceSelector"), self.labels_of_namespace(attrs.namespace)
        ):
            return False
        if not selector_matches(spec.get("objectSelector"), _labels(obj)):
            return False
        conditions = spec.get("matchConditions") or []
        if not conditions:
            return True
        activation = {
            "object": cel.to_cel(obj),
            "oldObject": cel.to_cel(None),
            "request": cel.to_cel(self._request(attrs, obj, user, "")),
        }
        errors = []
        for condition in conditions:
            try:
                if not cel.evaluate_bool(condition.get("expression") or "", activation):
                    return False  # any false condition skips the webhook, errors or not
            except cel.CelError as exc:
                errors.append(f"matchCondition '{condition.get('name')}': {exc}")
        if not errors:
            return True
        if (spec.get("failurePolicy") or "Fail") == "Ignore":
            return False
        name = (obj.get("metadata") or {}).get("name") or ""
        text = f'failed calling webhook "{hook.name}": ' + "; ".join(errors)
        raise _forbidden(attrs.rt, name, text, 403, "Forbidden")

    async def _call(
        self, hook: _Hook, attrs: AdmissionAttributes, obj: Object, user: Object, round_: int
    ) -> tuple[bool, Object]:
        """Call one webhook; answer whether it changed the object, and the object."""
        spec, name = hook.spec, hook.name
        call = AdmissionCall(name, hook.configuration, attrs.namespace, attrs.dry_run, "", round_)
        try:
            try:
                response = await self._review(call, hook, attrs, obj, user)
                return self._answer(call, hook, attrs, obj, response)
            except _CallFailed as failure:
                message = f'failed calling webhook "{name}": {failure}'
                call.message = message
                if (spec.get("failurePolicy") or "Fail") == "Ignore":
                    call.outcome = "failed-open"
                    return False, obj
                call.outcome = "failed"
                raise ApiError(
                    500,
                    "InternalError",
                    f"Internal error occurred: {message}",
                    causes=[{"message": message}],
                ) from None
            except ApiError as error:
                call.outcome = call.outcome or "failed"
                call.message = call.message or str(error)
                raise
        finally:
            self._record(call)

    async def _review(
        self,
        call: AdmissionCall,
        hook: _Hook,
        attrs: AdmissionAttributes,
        obj: Object,
        user: Object,
    ) -> Object:
        """Send the AdmissionReview; answer the response (verified) or raise _CallFailed."""
        spec = hook.spec
        if attrs.dry_run:
            side_effects = spec.get("sideEffects")
            if side_effects is None:
                raise _CallFailed("Webhook SideEffects is nil")
            if side_effects not in ("None", "NoneOnDryRun"):
                raise ApiError(
                    400, "BadRequest", f'admission webhook "{hook.name}" does not support dry run'
                )
        if "v1" not in (spec.get("admissionReviewVersions") or []):
            raise _CallFailed(
                "could not create admission objects: webhook does not accept known "
                "AdmissionReview versions (v1, v1beta1)"
            )
        target = self._target(spec)
        uid = str(uuid.uuid4())
        request = self._request(attrs, obj, user, uid)
        call.request = request
        review = {
            "apiVersion": ADMISSION_REVIEW_VERSION,
            "kind": "AdmissionReview",
            "request": request,
        }
        status, content_type, data = await asyncio.to_thread(_post, target, review)
        if not 200 <= status < 300:
            raise _CallFailed(
                f"failed to call webhook: {_status_error(status, content_type, data)}"
            )
        try:
            answer = json.loads(data)
        except ValueError as exc:
            raise _CallFailed(
                f"failed to call webhook: couldn't get version/kind; json parse error: {exc}"
            ) from None
        if not isinstance(answer, dict) or not answer.get("kind"):
            raise _CallFailed(
                "failed to call webhook: Object 'Kind' is missing in "
                f"'{data[:200].decode(errors='replace')}'"
            )
        got = f"{answer.get('apiVersion')}, Kind={answer.get('kind')}"
        if (answer.get("apiVersion"), answer.get("kind")) != (
            ADMISSION_REVIEW_VERSION,
            "AdmissionReview",
        ):
            raise _CallFailed(
                "received invalid webhook response: expected webhook response of "
                f"{ADMISSION_REVIEW_VERSION}, Kind=AdmissionReview, got {got}"
            )
        response = answer.get("response")
        if not isinstance(response, dict):
            raise _CallFailed("received invalid webhook response: webhook response was absent")
        if response.get("uid") != uid:
            raise _CallFailed(
                f'received invalid webhook response: expected response.uid="{uid}", got '
                f'"{response.get("uid") or ""}"'
            )
        if response.get("patch") and response.get("patchType") is None:
            raise _CallFailed(
                "received invalid webhook response: webhook returned response.patch but not "
                "response.patchType"
            )
        if not response.get("patch") and response.get("patchType") is not None:
            raise _CallFailed(
                "received invalid webhook response: webhook returned response.patchType but not "
                "response.patch"
            )
        return response

    def _answer(
        self,
        call: AdmissionCall,
        hook: _Hook,
        attrs: AdmissionAttributes,
        obj: Object,
        response: Object,
    ) -> tuple[bool, Object]:
        if not response.get("allowed"):
            call.outcome = "denied"
            error = _denial(hook.name, response.get("status"))
            call.message = str(error.body["message"])
            raise error
        if not response.get("patch"):
            call.outcome = "allowed"
            return False, obj
        try:
            operations = json.loads(base64.b64decode(response["patch"], validate=True))
        except (binascii.Error, ValueError, TypeError) as exc:
            raise _CallFailed(f"received undecodable patch in webhook response: {exc}") from None
        if not isinstance(operations, list):
            raise _CallFailed(
                "received undecodable patch in webhook response: a JSON patch is a list of "
                "operations"
            )
        if not operations:
            call.outcome = "allowed"
            return False, obj
        if response.get("patchType") != "JSONPatch":
            raise _CallFailed(f'unsupported patch type "{response.get("patchType")}"')
        try:
            patched = json_patch(obj, operations)
        except PatchError as exc:
            raise ApiError(500, "InternalError", f"Internal error occurred: {exc}") from None
        if not isinstance(patched, dict):
            raise ApiError(
                500, "InternalError", "Internal error occurred: the patch does not leave an object"
            )
        if attrs.rt.default is not None:
            attrs.rt.default(patched)
        call.outcome = "patched"
        return patched != obj, patched

    def _target(self, spec: Object) -> _Target:
        client = spec.get("clientConfig") or {}
        timeout = int(spec.get("timeoutSeconds") or 10)
        bundle = client.get("caBundle")
        try:
            if bundle:
                pem = base64.b64decode(bundle, validate=True).decode()
                context = ssl.create_default_context(cadata=pem)
            else:
                context = ssl.create_default_context()
        except (binascii.Error, ValueError, ssl.SSLError):
            raise _CallFailed(
                "could not get REST client: unable to load root certificates: unable to parse "
                "bytes as PEM block"
            ) from None
        if client.get("url"):
            parts = urlsplit(str(client["url"]))
            host, port = parts.hostname or "", parts.port or 443
            query = f"{parts.query}&timeout={timeout}s" if parts.query else f"timeout={timeout}s"
            path = f"{parts.path or '/'}?{query}"
            url = f"{parts.scheme}://{parts.netloc}{path}"
            return _Target(url, (host, port), host, port, path, context, timeout)
        service = client.get("service") or {}
        namespace, name = str(service.get("namespace") or ""), str(service.get("name") or "")
        port = int(service.get("port") or 443)
        server_name = f"{name}.{namespace}.svc"
        path = f"{service.get('path') or '/'}?timeout={timeout}s"
        url = f"https://{server_name}:{port}{path}"
        address = self.service_endpoints.get((namespace, name))
        return _Target(url, address, server_name, port, path, context, timeout)

    # -- ValidatingAdmissionPolicies -----------------------------------------------------------

    def validate(self, attrs: AdmissionAttributes, obj: Object) -> None:
        if not self._applies(attrs):
            return
        policies = {
            p["metadata"]["name"]: p for p in self.store.objects("validatingadmissionpolicies")
        }
        bindings = self.store.objects("validatingadmissionpolicybindings")
        if not bindings:
            return
        user = self.user_info(attrs.request)
        activation = {
            "object": cel.to_cel(obj),
            "oldObject": cel.to_cel(None),
            "request": cel.to_cel(self._request(attrs, obj, user, str(uuid.uuid4()))),
            "params": cel.to_cel(None),
            "namespaceObject": cel.to_cel(self._namespace_object(attrs.namespace)),
        }
        for policy_name in sorted(policies):
            policy = policies[policy_name]
            for binding in bindings:
                spec = binding.get("spec") or {}
                if spec.get("policyName") != policy_name:
                    continue
                if "Deny" not in (spec.get("validationActions") or []):
                    continue  # Warn and Audit are not modelled
                denial = self._evaluate(policy, binding, attrs, obj, activation)
                if denial is not None:
                    raise denial

    def _resources_match(
        self, match: Object, attrs: AdmissionAttributes, obj: Object, *, rules_required: bool
    ) -> bool:
        name = (obj.get("metadata") or {}).get("name") or ""
        rules = match.get("resourceRules") or []
        if (rules or rules_required) and not any(
            rule_matches(r, attrs.rt, attrs.operation, name) for r in rules
        ):
            return False
        if any(
            rule_matches(r, attrs.rt, attrs.operation, name)
            for r in match.get("excludeResourceRules") or ()
        ):
            return False
        if attrs.rt.namespaced and not selector_matches(
            match.get("namespaceSelector"), self.labels_of_namespace(attrs.namespace)
        ):
            return False
        return selector_matches(match.get("objectSelector"), _labels(obj))

    def _evaluate(
        self,
        policy: Object,
        binding: Object,
        attrs: AdmissionAttributes,
        obj: Object,
        base: dict[str, Any],
    ) -> ApiError | None:
        """The binding's denial, if its policy denies the object."""
        spec = policy.get("spec") or {}
        fail = (spec.get("failurePolicy") or "Fail") != "Ignore"
        if not self._resources_match(
            spec.get("matchConstraints") or {}, attrs, obj, rules_required=True
        ):
            return None
        binding_match = (binding.get("spec") or {}).get("matchResources")
        if isinstance(binding_match, dict) and not self._resources_match(
            binding_match, attrs, obj, rules_required=False
        ):
            return None
        definitions = [
            (str(v.get("name")), str(v.get("expression") or ""))
            for v in spec.get("variables") or ()
        ]
        activation = {**base, "variables": cel.lazy_variables(definitions, base)}
        policy_name, binding_name = policy["metadata"]["name"], binding["metadata"]["name"]
        name = (obj.get("metadata") or {}).get("name") or ""

        def deny(message: str, reason: str = "Invalid") -> ApiError:
            text = (
                f"ValidatingAdmissionPolicy '{policy_name}' with binding '{binding_name}' denied "
                f"request: {message}"
            )
            code = {"Forbidden": 403, "Unauthorized": 401, "RequestEntityTooLarge": 413}
            return _forbidden(attrs.rt, name, text, code.get(reason, 422), reason)

        for condition in spec.get("matchConditions") or ():
            try:
                if not cel.evaluate_bool(condition.get("expression") or "", activation):
                    return None
            except cel.CelError as exc:
                if fail:
                    return deny(f"matchCondition '{condition.get('name')}': {exc}")
                return None
        for validation in spec.get("validations") or ():
            expression = str(validation.get("expression") or "")
            try:
                if cel.evaluate_bool(expression, activation):
                    continue
            except cel.CelError as exc:
                if fail:
                    return deny(f"expression '{expression}' resulted in error: {exc}")
                continue
            message = str(validation.get("message") or "") or f"failed expression: {expression}"
            if validation.get("messageExpression"):
                # An expression that fails falls back to message, as in the apiserver.
                with contextlib.suppress(cel.CelError):
                    expressed = cel.evaluate_string(validation["messageExpression"], activation)
                    message = expressed or message
            return deny(message, str(validation.get("reason") or "Invalid"))
        return None


def _denial(webhook: str, result: Any) -> ApiError:
    """webhookerrors.ToStatusErr: the webhook's Status, its message prefixed, its code 400 at
    least."""
    result = copy.deepcopy(result) if isinstance(result, dict) else {}
    code = result.get("code") if isinstance(result.get("code"), int) else 0
    code = code if code >= 400 else 400
    denied_by = f'admission webhook "{webhook}" denied the request'
    if result.get("message"):
        message = f"{denied_by}: {result['message']}"
    elif result.get("reason"):
        message = f"{denied_by}: {result['reason']}"
    else:
        message = f"{denied_by} without explanation"
    status = result.get("status")
    error = ApiError(code, str(result.get("reason") or ""), message)
    body = status_body(code, str(result.get("reason") or ""), message)
    body["status"] = "Failure" if status in (None, "", "Success") else status
    if not body["reason"]:
        del body["reason"]  # omitempty
    if isinstance(result.get("details"), dict):
        body["details"] = result["details"]
    error.body = body
    return error


def _post(target: _Target, review: Object) -> tuple[int, str, bytes]:
    """POST the review (blocking: run it in a thread); answer status, content type, body, or
    raise _CallFailed worded as client-go's ``Post "<url>": <why>``."""
    if target.address is None:
        name = target.server_name.split(".")[0]
        raise _CallFailed(
            f'failed to call webhook: Post "{target.url}": service "{name}" not found'
        )
    connection = _Connection(
        target.address, target.server_name, target.port, target.context, target.timeout
    )
    body = json.dumps(review).encode()
    try:
        connection.request(
            "POST",
            target.path,
            body=body,
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json, */*",
                "User-Agent": "kube-apiserver-admission",
                "Connection": "close",
            },
        )
        response = connection.getresponse()
        data = response.read()
        return response.status, response.getheader("content-type") or "", data
    except (OSError, http.client.HTTPException) as exc:
        why = _why(exc, target.address, target.server_name, target.timeout)
        raise _CallFailed(f'failed to call webhook: Post "{target.url}": {why}') from None
    finally:
        connection.close()
