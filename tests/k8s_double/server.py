"""A stand-in for kube-apiserver: a real HTTPS server on 127.0.0.1 for the official client.

It serves what Kamus needs from a cluster, the way kube-apiserver does:

* ``POST /apis/authentication.k8s.io/v1/tokenreviews`` for tokens it issued itself: RS256 JWTs
  shaped like bound projected tokens (``iss``, ``sub``, ``aud``, ``exp``, ``nbf``, ``jti`` and the
  ``kubernetes.io`` claims), verified for signature, issuer, expiry, audience and whether the
  service account still exists.
* ``POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`` for "may I create TokenReviews".
* ``GET /version``.

Callers authenticate with a bearer token, as against a real apiserver; only tokens in
``reviewers`` may create TokenReviews (the ``system:auth-delegator`` binding). Faults can be
injected: a delay (slow), a status code (failing), or :meth:`stop` (unreachable).
"""

from __future__ import annotations

import secrets
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import trustme
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.servers import Faults, ThreadedServer, install_faults

DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SA_PREFIX = "system:serviceaccount:"


def status_object(code: int, reason: str, message: str, **details: Any) -> JSONResponse:
    return JSONResponse(status_body(code, reason, message, **details), status_code=code)


def status_body(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    """A ``metav1.Status`` failure, as the apiserver sends with every error."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


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
        self.reviewers: set[str] = {self.admin_token}
        self.reviews: list[ReviewRecord] = []
        self.received = 0  # API requests that arrived, answered or not
        self.deleted_service_accounts: set[tuple[str, str]] = set()
        self._sa_uids: dict[tuple[str, str], str] = {}
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
        self._server.stop()

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

    def issue_user_token(self, username: str, *, audiences: list[str] | None = None) -> str:
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
        }
        return self._sign(claims)

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
        return jwt.encode(claims, other, algorithm="RS256", headers={"kid": self._key_id})

    def _sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(
            claims, self._signing_key, algorithm="RS256", headers={"kid": self._key_id}
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

    def _authorize(self, request: Request, resource: str, group: str) -> Response | None:
        """None if the caller may create ``resource``, else the apiserver's 401/403."""
        if not self.require_auth:
            return None
        token = self._caller(request)
        if token is None:
            return status_object(401, "Unauthorized", "Unauthorized")
        if token in self.reviewers:
            return None
        try:
            claims, _ = self._verify(token, self.api_audiences)
        except ValueError:
            return status_object(401, "Unauthorized", "Unauthorized")
        return status_object(
            403,
            "Forbidden",
            f'{resource}.{group} is forbidden: User "{claims["sub"]}" cannot create resource '
            f'"{resource}" in API group "{group}" at the cluster scope',
            group=group,
            kind=resource,
        )

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

        @app.post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
        async def self_subject_access_review(request: Request) -> Response:
            token = self._caller(request)
            if self.require_auth and token is None:
                return status_object(401, "Unauthorized", "Unauthorized")
            body = await request.json()
            spec = body.get("spec") or {}
            attrs = spec.get("resourceAttributes") or {}
            may_review = not self.require_auth or token in self.reviewers
            allowed = (
                may_review
                and attrs.get("group") == "authentication.k8s.io"
                and attrs.get("resource") == "tokenreviews"
                and attrs.get("verb") == "create"
            )
            status: dict[str, Any] = {"allowed": allowed}
            if allowed:
                status["reason"] = 'RBAC: allowed by ClusterRoleBinding "kamus-auth-delegator"'
            return review_object("SelfSubjectAccessReview", "authorization.k8s.io/v1", spec, status)

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
            return {"username": claims["sub"], "groups": ["system:authenticated"]}
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
