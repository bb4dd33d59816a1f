"""A stand-in for kube-apiserver: a real HTTPS server on 127.0.0.1 for the official client.

It serves what Kamus needs from a cluster, the way kube-apiserver does:

* ``POST /apis/authentication.k8s.io/v1/tokenreviews`` for tokens it issued itself: RS256 JWTs
  shaped like bound projected tokens (``iss``, ``sub``, ``aud``, ``exp``, ``nbf``, ``jti`` and the
  ``kubernetes.io`` claims), verified for signature, issuer, expiry, audience and whether the
  service account still exists.
* ``POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`` for "may I create TokenReviews"
  and "may I <verb> <resource>" for the objects below: the admin's RBAC (less
  :attr:`KubeApiDouble.denied_access`), or what :meth:`KubeApiDouble.grant` gives another caller.
* ``GET /version``.
* Secrets, ConfigMaps, Events, Leases, KamusSecrets, Pods, and the cluster-scoped
  MutatingWebhookConfigurations, ValidatingAdmissionPolicies and their bindings: create, get,
  list, watch, replace, patch, delete and the ``status`` subresource, from the store in
  ``resources.py``; tests inspect and disturb it with :meth:`KubeApiDouble.objects`,
  :meth:`~KubeApiDouble.drop_watches`, :meth:`~KubeApiDouble.compact` and
  :meth:`~KubeApiDouble.reset_resources`.
* Admission on pod creation (``admission.py``): mutating webhooks called over HTTPS, pod
  validation, ValidatingAdmissionPolicies. Tests label namespaces in
  :attr:`KubeApiDouble.namespace_labels`, say where a webhook's Service is in
  :attr:`~KubeApiDouble.service_endpoints`, and read the calls in
  :attr:`~KubeApiDouble.admission_calls`.

Callers authenticate with a bearer token, as against a real apiserver. Tokens in ``reviewers``
(the admin, ``kubernetes-admin`` in ``system:masters``) may create TokenReviews (the
``system:auth-delegator`` binding) and use the objects, but not for what ``denied_access`` lists
(missing RBAC); other valid tokens may do what :meth:`KubeApiDouble.grant` gives them, the RBAC
that SubjectAccessReviews answer from too. Faults can be injected: a delay (slow), a status code
(failing), or :meth:`stop` (unreachable).
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import trustme
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.k8s_double.admission import AdmissionCall, AdmissionControl
from tests.k8s_double.resources import (
    ResourceStore,
    install_resource_routes,
    served,
    status_body,
)
from tests.support.leaks import register, register_token
from tests.support.servers import Faults, ThreadedServer, install_faults

DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SA_PREFIX = "system:serviceaccount:"
ADMIN_USER = "kubernetes-admin"  # who the admin token (and an unauthenticated proxy) acts as
ADMIN_GROUPS = ["system:masters", "system:authenticated"]


def status_object(code: int, reason: str, message: str, **details: Any) -> JSONResponse:
    return JSONResponse(status_body(code, reason, message, **details), status_code=code)


def review_object(
    kind: str, api_version: str, spec: dict[str, Any], status: dict[str, Any]
) -> JSONResponse:
    """A created review, echoing its spec, as the apiserver answers one."""
    body = {
        "kind": kind,
        "apiVersion": api_version,
        "metadata": {"creationTimestamp": None},
        "spec": spec,
        "status": status,
    }
    return JSONResponse(body, status_code=201)


@dataclass
class ReviewRecord:
    """A TokenReview the double answered (for assertions in tests)."""

    audiences: list[str] | None
    authenticated: bool
    username: str | None


@dataclass
class KubeApiDouble:
    host: str = "127.0.0.1"
    listen_port: int = 0
    tls: bool = True
    require_auth: bool = True
    issuer: str = DEFAULT_ISSUER
    api_audiences: list[str] = field(default_factory=lambda: [DEFAULT_ISSUER])
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix="k8s-double-"))
        # It outlives stop() (start() listens again), so it goes with the double itself.
        weakref.finalize(self, shutil.rmtree, self._workdir, ignore_errors=True)
        self.ca = trustme.CA()
        self.ca_file = self._workdir / "ca.crt"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._server_pem = self._workdir / "server.pem"
        self.ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
            str(self._server_pem)
        )
        self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._key_id = secrets.token_hex(8)
        self.admin_token = secrets.token_urlsafe(32)
        register(self.admin_token)
        self.reviewers: set[str] = {self.admin_token}
        # RBAC the admin lacks: (group, resource, verb) triples, "plural/status" for the status
        # subresource; requests and SelfSubjectAccessReviews for them are refused.
        self.denied_access: set[tuple[str, str, str]] = set()
        self.reviews: list[ReviewRecord] = []
        # RBAC for SubjectAccessReviews and for callers other than the admin: (subject, group,
        # resource, verb, namespace), where the subject is a user name or "group:<name>" and the
        # namespace "*" stands for a ClusterRoleBinding. See grant().
        self.grants: set[tuple[str, str, str, str, str]] = set()
        self.access_reviews: list[dict[str, Any]] = []  # the SubjectAccessReview specs asked
        self.received = 0  # API requests that arrived, answered or not
        self.deleted_service_accounts: set[tuple[str, str]] = set()
        self._sa_uids: dict[tuple[str, str], str] = {}
        self.resources = ResourceStore()
        self.admission = AdmissionControl(self.resources, self._request_user)
        self.app = self._build_app()
        self._server = ThreadedServer(self.app, host=self.host, port=self.listen_port)
        if self.tls:
            self._server.ssl_certfile = str(self._server_pem)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server.running

    def start(self) -> KubeApiDouble:
        """Listen (again, on the same port); :meth:`stop` makes the apiserver unreachable."""
        self._server.start()
        return self

    def stop(self) -> None:
        # uvicorn's shutdown waits for open responses, and a watch is one until it ends: end them,
        # and the ones a client opens again meanwhile, so that stopping does not hang.
        self.resources.drop_watches(refuse_new=True)
        self._server.stop()
        self.resources.accept_watches()

    def __enter__(self) -> KubeApiDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path, token: str | None = None) -> Path:
        """A kubeconfig that reaches this double, trusting its CA, as ``token`` (admin default)."""
        cluster: dict[str, Any] = {"server": self.url}
        if self.tls:
            cluster["certificate-authority"] = str(self.ca_file)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "double", "cluster": cluster}],
            "users": [{"name": "kamus", "user": {"token": token or self.admin_token}}],
            "contexts": [{"name": "double", "context": {"cluster": "double", "user": "kamus"}}],
            "current-context": "double",
        }
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    # -- API objects (test controls; safe to call from any thread) -----------------------------

    def reset_resources(self) -> None:
        """An empty cluster: no objects, no history, no open watches (they are ended), no
        :attr:`denied_access`, no :attr:`namespace_labels`, :attr:`service_endpoints` or
        :attr:`admission_calls`."""
        self.resources.reset()
        self.denied_access.clear()
        self.admission.reset()

    # -- admission (see admission.py) ----------------------------------------------------------

    @property
    def namespace_labels(self) -> dict[str, dict[str, str]]:
        """Labels of namespaces, for webhooks' and policies' namespaceSelectors: every namespace
        exists and has ``kubernetes.io/metadata.name``; a test adds more here."""
        return self.admission.namespace_labels

    @namespace_labels.setter
    def namespace_labels(self, value: dict[str, dict[str, str]]) -> None:
        self.admission.namespace_labels = value

    @property
    def service_endpoints(self) -> dict[tuple[str, str], tuple[str, int]]:
        """Services for webhooks' ``clientConfig.service``: (namespace, name) -> (host, port)
        where the double connects, naming ``<name>.<namespace>.svc`` in TLS."""
        return self.admission.service_endpoints

    @service_endpoints.setter
    def service_endpoints(self, value: dict[tuple[str, str], tuple[str, int]]) -> None:
        self.admission.service_endpoints = value

    @property
    def admission_calls(self) -> list[AdmissionCall]:
        """The mutating webhook calls made so far, in order."""
        return self.admission.calls

    def objects(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Copies of the stored ``plural`` objects (``"secrets"``, ``"kamussecrets"``...)."""
        return self.resources.objects(plural, namespace)

    @property
    def events(self) -> list[dict[str, Any]]:
        """The core v1 Events created so far, in every namespace."""
        return self.resources.objects("events")

    def drop_watches(self) -> None:
        """End every open watch stream now, as an apiserver restart or a proxy timeout does."""
        self.resources.drop_watches()

    def compact(self) -> None:
        """Forget the change history: a watch from any earlier resourceVersion gets 410 Gone."""
        self.resources.compact()

    @property
    def watch_count(self) -> int:
        """Watch streams open now."""
        return self.resources.watch_count

    @property
    def watches_started(self) -> int:
        """Watch streams opened since the last :meth:`reset_resources`."""
        return self.resources.watches_started

    def wait_for_watches(self, count: int, timeout: float = 10.0) -> None:
        """Block until at least ``count`` watch streams are open (a controller is watching)."""
        deadline = time.monotonic() + timeout
        while self.watch_count < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.watch_count} watches open, not {count}")
            time.sleep(0.01)

    # -- tokens ------------------------------------------------------------------------------

    def service_account_uid(self, namespace: str, name: str) -> str:
        return self._sa_uids.setdefault((namespace, name), str(uuid.uuid4()))

    def issue_token(
        self,
        namespace: str,
        service_account: str,
        *,
        audiences: list[str] | None = None,
        expires_in: float = 3600,
        not_before: float | None = None,
        issuer: str | None = None,
    ) -> str:
        """A bound service-account token, as the kubelet would mount in a pod."""
        now = int(time.time())
        pod = f"{service_account}-7d4b9c-x2k4p"
        claims = {
            "aud": audiences if audiences is not None else self.api_audiences,
            "exp": int(now + expires_in),
            "iat": now,
            "nbf": int(not_before) if not_before is not None else now,
            "iss": issuer or self.issuer,
            "jti": str(uuid.uuid4()),
            "sub": f"{SA_PREFIX}{namespace}:{service_account}",
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": "node-1", "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, "node-1"))},
                "pod": {"name": pod, "uid": str(uuid.uuid4())},
                "serviceaccount": {
                    "name": service_account,
                    "uid": self.service_account_uid(namespace, service_account),
                },
                "warnafter": now + 3607,
            },
        }
        return self._sign(claims)

    def issue_user_token(
        self,
        username: str,
        *,
        audiences: list[str] | None = None,
        groups: list[str] | None = None,
    ) -> str:
        """A token for an identity that is not a service account (say, an OIDC user)."""
        now = int(time.time())
        claims = {
            "aud": audiences if audiences is not None else self.api_audiences,
            "exp": now + 3600,
            "iat": now,
            "nbf": now,
            "iss": self.issuer,
            "jti": str(uuid.uuid4()),
            "sub": username,
            "groups": groups or [],
        }
        return self._sign(claims)

    def grant(
        self, subject: str, *, group: str, resource: str, verb: str, namespace: str = "*"
    ) -> None:
        """RBAC for SubjectAccessReviews, and for requests by a caller other than the admin:
        ``subject`` (a user name, or ``group:<name>``) may
        ``verb`` ``resource`` (``plural/subresource`` for a subresource, ``*`` for every
        resource) in ``namespace`` (``*``: a ClusterRoleBinding, the only grant that answers a
        review without a namespace)."""
        self.grants.add((subject, group, resource, verb, namespace))

    def forge_token(self, namespace: str, service_account: str) -> str:
        """A well-formed token signed by a key the apiserver does not trust."""
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = int(time.time())
        claims = {
            "aud": self.api_audiences,
            "exp": now + 3600,
            "nbf": now,
            "iss": self.issuer,
            "sub": f"{SA_PREFIX}{namespace}:{service_account}",
        }
        return register_token(
            jwt.encode(claims, other, algorithm="RS256", headers={"kid": self._key_id})
        )

    def _sign(self, claims: dict[str, Any]) -> str:
        return register_token(
            jwt.encode(claims, self._signing_key, algorithm="RS256", headers={"kid": self._key_id})
        )

    def _verify(self, token: str, audiences: list[str]) -> tuple[dict[str, Any], list[str]]:
        """The token's claims and the audiences it was accepted for, or ``ValueError``."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._signing_key.public_key(),
                algorithms=["RS256"],
                issuer=self.issuer,
                options={"verify_aud": False, "require": ["exp", "iss", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise ValueError("[invalid bearer token, service account token has expired]") from None
        except jwt.PyJWTError as exc:
            raise ValueError(f"[invalid bearer token, {type(exc).__name__}]") from None
        token_aud = claims.get("aud", [])
        token_aud = [token_aud] if isinstance(token_aud, str) else list(token_aud)
        accepted = [a for a in audiences if a in token_aud]
        if not accepted:
            raise ValueError(
                f"[invalid bearer token, token audiences {token_aud} is invalid for the target "
                f"audiences {audiences}]"
            )
        sa = claims.get("kubernetes.io", {}).get("serviceaccount")
        if sa is not None:
            namespace = claims["kubernetes.io"]["namespace"]
            if (namespace, sa["name"]) in self.deleted_service_accounts:
                raise ValueError(
                    f"[invalid bearer token, service account {namespace}/{sa['name']} has been "
                    "deleted]"
                )
        return claims, accepted

    def _caller(self, request: Request) -> str | None:
        """The calling user's token, if the Authorization header carries one."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def _identity(self, request: Request) -> tuple[dict[str, Any], bool] | None:
        """The caller's UserInfo and whether it is the admin, or None if not authenticated.
        Without ``require_auth`` (``kubectl proxy``) the caller is the admin."""
        admin = {"username": ADMIN_USER, "groups": list(ADMIN_GROUPS)}
        if not self.require_auth:
            return admin, True
        token = self._caller(request)
        if token is None:
            return None
        if token in self.reviewers:
            return admin, True
        try:
            claims, _ = self._verify(token, self.api_audiences)
        except ValueError:
            return None
        return self._user_info(claims), False

    def _request_user(self, request: Request) -> dict[str, Any]:
        """The UserInfo of an authorized caller (for AdmissionReviews)."""
        identity = self._identity(request)
        assert identity is not None, "admission runs for authenticated callers only"
        return identity[0]

    def _granted(
        self, subjects: set[str], group: str, resource: str, verb: str, namespace: str | None
    ) -> bool:
        """Whether :attr:`grants` let one of ``subjects`` ``verb`` ``resource`` in
        ``namespace`` (None: at the cluster scope, which only a ClusterRoleBinding covers)."""
        resources = {resource, "*"}  # RBAC's resources: ["*"] also covers subresources
        scopes = (namespace or "*", "*")
        return any(
            (s, group, r, verb, ns) in self.grants
            for s in subjects
            for r in resources
            for ns in scopes
        )

    @staticmethod
    def _subjects(user: dict[str, Any]) -> set[str]:
        return {user["username"]} | {f"group:{g}" for g in user.get("groups") or ()}

    def _authorize(
        self,
        request: Request,
        resource: str,
        group: str,
        *,
        verb: str = "create",
        namespace: str | None = None,
        name: str | None = None,
    ) -> Response | None:
        """None if the caller may ``verb`` the ``resource``, else the apiserver's 401/403.

        Tokens in ``reviewers`` (the admin) may do anything the double serves but
        :attr:`denied_access`; other valid tokens what :meth:`grant` gives them (their user
        name or one of their groups); anything else is not authenticated."""
        identity = self._identity(request)
        if identity is None:
            return status_object(401, "Unauthorized", "Unauthorized")
        info, is_admin = identity
        user = info["username"]
        if is_admin and (group, resource, verb) not in self.denied_access:
            return None
        if not is_admin and self._granted(self._subjects(info), group, resource, verb, namespace):
            return None
        plural = resource.partition("/")[0]
        qualified = f"{plural}.{group}" if group else plural
        subject = f'{qualified} "{name}"' if name else qualified
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        details = {"name": name, "group": group, "kind": plural}
        return status_object(
            403,
            "Forbidden",
            f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource}" in API '
            f'group "{group}" {scope}',
            **{k: v for k, v in details.items() if v},
        )

    def _may(self, group: str, resource: str, verb: str) -> bool:
        """What the admin's RBAC allows: TokenReviews and the API objects, but denied_access."""
        if (group, resource, verb) in self.denied_access:
            return False
        # system:auth-delegator: TokenReviews and SubjectAccessReviews.
        reviews = (group, resource, verb) in {
            ("authentication.k8s.io", "tokenreviews", "create"),
            ("authorization.k8s.io", "subjectaccessreviews", "create"),
        }
        return reviews or served(group, resource, verb)

    # -- HTTP --------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        def count(request: Request) -> None:
            self.received += 1

        install_faults(
            app,
            lambda: self.faults,
            on_request=count,
            error_body=lambda status: status_body(
                status, "InternalError", "Internal error occurred: injected by the double"
            ),
        )

        @app.get("/version")
        async def version() -> dict[str, str]:
            return {
                "major": "1",
                "minor": "32",
                "gitVersion": "v1.32.4-double",
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.23.7",
                "compiler": "gc",
                "platform": "linux/amd64",
            }

        @app.post("/apis/authentication.k8s.io/v1/tokenreviews")
        async def token_review(request: Request) -> Response:
            denied = self._authorize(request, "tokenreviews", "authentication.k8s.io")
            if denied is not None:
                return denied
            body = await request.json()
            spec = body.get("spec") or {}
            token = spec.get("token") or ""
            requested = spec.get("audiences") or None
            status: dict[str, Any] = {"user": {}}
            try:
                claims, accepted = self._verify(token, requested or self.api_audiences)
            except ValueError as exc:
                status["error"] = str(exc)
                self.reviews.append(ReviewRecord(requested, False, None))
            else:
                status = {
                    "authenticated": True,
                    "user": self._user_info(claims),
                    "audiences": accepted,
                }
                self.reviews.append(ReviewRecord(requested, True, claims["sub"]))
            return review_object("TokenReview", "authentication.k8s.io/v1", spec, status)

        @app.post("/apis/authorization.k8s.io/v1/subjectaccessreviews")
        async def subject_access_review(request: Request) -> Response:
            denied = self._authorize(request, "subjectaccessreviews", "authorization.k8s.io")
            if denied is not None:
                return denied
            body = await request.json()
            spec = body.get("spec") or {}
            self.access_reviews.append(spec)
            attrs = spec.get("resourceAttributes") or {}
            subjects = {spec.get("user") or ""} | {f"group:{g}" for g in spec.get("groups") or ()}
            resource = attrs.get("resource") or ""
            if attrs.get("subresource"):
                resource += "/" + attrs["subresource"]  # as RBAC rules name it: "plural/sub"
            allowed = self._granted(
                subjects,
                attrs.get("group") or "",
                resource,
                attrs.get("verb") or "",
                attrs.get("namespace") or None,
            )
            status: dict[str, Any] = {"allowed": allowed}
            if allowed:
                status["reason"] = "RBAC: allowed by a binding the test granted"
            return review_object("SubjectAccessReview", "authorization.k8s.io/v1", spec, status)

        @app.post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
        async def self_subject_access_review(request: Request) -> Response:
            token = self._caller(request)
            if self.require_auth and token is None:
                return status_object(401, "Unauthorized", "Unauthorized")
            body = await request.json()
            spec = body.get("spec") or {}
            attrs = spec.get("resourceAttributes") or {}
            may_review = not self.require_auth or token in self.reviewers
            group, verb = attrs.get("group") or "", attrs.get("verb") or ""
            resource = "/".join(filter(None, [attrs.get("resource"), attrs.get("subresource")]))
            allowed = may_review and self._may(group, resource, verb)
            identity = None if may_review else self._identity(request)
            if identity is not None:  # another caller: what grant() gives it
                allowed = self._granted(
                    self._subjects(identity[0]),
                    group,
                    resource,
                    verb,
                    attrs.get("namespace") or None,
                )
            status: dict[str, Any] = {"allowed": allowed}
            if allowed and identity is not None:
                status["reason"] = "RBAC: allowed by a binding the test granted"
            elif allowed:
                binding = "kamus-auth-delegator" if resource == "tokenreviews" else "kamus"
                status["reason"] = f'RBAC: allowed by ClusterRoleBinding "{binding}"'
            return review_object("SelfSubjectAccessReview", "authorization.k8s.io/v1", spec, status)

        # Every type of resources.py, with admission on pod creation (admission.py). The reviews'
        # routes above come first, so their POSTs reach them, not the generic collection route.
        install_resource_routes(
            app,
            self.resources,
            lambda request, verb, group, resource, namespace, name: self._authorize(
                request, resource, group, verb=verb, namespace=namespace, name=name
            ),
            self.admission,
        )

        # Control endpoints, for the standalone double (tests call the methods directly).
        @app.post("/_double/tokens")
        async def control_issue_token(request: Request) -> dict[str, str]:
            body = await request.json()
            return {
                "token": self.issue_token(
                    body["namespace"],
                    body["serviceAccount"],
                    audiences=body.get("audiences"),
                    expires_in=float(body.get("expiresIn", 3600)),
                )
            }

        @app.put("/_double/faults")
        async def control_faults(request: Request) -> dict[str, Any]:
            body = await request.json()
            self.faults = Faults(
                delay_seconds=float(body.get("delaySeconds", 0)), fail_status=body.get("failStatus")
            )
            return {
                "delaySeconds": self.faults.delay_seconds,
                "failStatus": self.faults.fail_status,
            }

        return app

    def _user_info(self, claims: dict[str, Any]) -> dict[str, Any]:
        k8s = claims.get("kubernetes.io")
        if k8s is None:
            groups = [*claims.get("groups", []), "system:authenticated"]
            return {"username": claims["sub"], "uid": f"uid-{claims['sub']}", "groups": groups}
        namespace = k8s["namespace"]
        return {
            "username": claims["sub"],
            "uid": k8s["serviceaccount"]["uid"],
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{namespace}",
                "system:authenticated",
            ],
            "extra": {
                "authentication.kubernetes.io/credential-id": [f"JTI={claims.get('jti')}"],
                "authentication.kubernetes.io/node-name": [k8s["node"]["name"]],
                "authentication.kubernetes.io/node-uid": [k8s["node"]["uid"]],
                "authentication.kubernetes.io/pod-name": [k8s["pod"]["name"]],
                "authentication.kubernetes.io/pod-uid": [k8s["pod"]["uid"]],
            },
        }
