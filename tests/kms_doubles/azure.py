"""Azure Key Vault for tests: an HTTPS server on 127.0.0.1 that the real azure-keyvault-keys and
azure-identity clients accept, holding real RSA keys.

It speaks the Key Vault key API (create, get, encrypt/decrypt, wrapkey/unwrapkey with RSA-OAEP and
RSA-OAEP-256), answers unauthenticated calls with the bearer challenge, and serves an App Service
managed identity endpoint, so that ``DefaultAzureCredential`` finds its tokens from :meth:`env`.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import tempfile
import time
import uuid
import weakref
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import trustme
from azure.core.credentials import AccessToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.support.servers import Faults, Quota, ThreadedServer, install_faults

RESOURCE = "https://vault.azure.net"
DEFAULT_KEY_OPS = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]
# RSA-OAEP is OAEP with SHA-1, as Key Vault defines it: legacy ciphertexts depend on it.
OAEP_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "RSA-OAEP": hashes.SHA1,
    "RSA-OAEP-256": hashes.SHA256,
}


def throttled(remaining: int | None = None) -> Faults:
    """Key Vault's 429. A zero Retry-After leaves azure-core to its own backoff, whose first retry
    is immediate (the second waits 1.6 s by default)."""
    return Faults(fail_status=429, fail_headers={"Retry-After": "0"}, remaining=remaining)


KEY_OPERATIONS = ("/encrypt", "/decrypt", "/wrapkey", "/unwrapkey", "/sign", "/verify")


def is_crypto_call(request: Request) -> bool:
    """The cryptographic key operations, which Key Vault's service limits count apart from
    key management (create, get)."""
    return request.method == "POST" and request.url.path.endswith(KEY_OPERATIONS)


def quota(per_second: float | None, window_seconds: float = 1.0) -> Quota:
    """Key Vault's service limit on key operations (e.g. 2,000 RSA-HSM operations per 10 s:
    ``quota(200, 10)``): over it, HTTP 429 with ``Retry-After`` and Key Vault's error document,
    which azure-core retries after that wait and then raises as HttpResponseError."""
    body = {
        "error": {
            "code": "Throttled",
            "message": "Request was not processed because too many requests were received. "
            "Reason: A1",
        }
    }
    return Quota(
        per_second,
        status=429,
        body=body,
        retry_after=True,
        window_seconds=window_seconds,
        when=is_crypto_call,
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _uint(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _fault_body(status: int) -> dict[str, Any]:
    code = "Throttled" if status == 429 else HTTPStatus(status).phrase.replace(" ", "")
    return {"error": {"code": code, "message": "injected by the test double"}}


@dataclass
class _KeyVersion:
    version: str
    private_key: rsa.RSAPrivateKey
    kty: str
    key_ops: list[str]
    tags: dict[str, str]
    created: int = field(default_factory=lambda: int(time.time()))
    enabled: bool = True
    expires: int | None = None  # unix time


class DoubleCredential:
    """An in-process ``TokenCredential`` whose tokens the double accepts; records each request.
    Without ``get_token_info`` on purpose: azure-core then calls ``get_token``, the protocol."""

    def __init__(self, vault: KeyVaultDouble) -> None:
        self._vault = vault
        self.calls: list[tuple[tuple[str, ...], str | None]] = []  # (scopes, tenant_id)

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        self.calls.append((scopes, tenant_id))
        return AccessToken(self._vault.issue_token(), int(time.time()) + 3600)


class KeyVaultDouble:
    def __init__(self) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="keyvault-double-"))
        # It outlives stop() (start_again() listens again), so it goes with the double itself.
        weakref.finalize(self, shutil.rmtree, workdir, ignore_errors=True)
        ca = trustme.CA()
        self.ca_file = workdir / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        server_pem = workdir / "server.pem"
        ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
            str(server_pem)
        )
        self.tenant_id = str(uuid.uuid4())
        self.identity_header = secrets.token_urlsafe(24)
        self.faults = Faults()
        self.requests: list[str] = []  # "POST /keys/k/<version>/decrypt", authenticated calls only
        self._tokens: set[str] = set()
        self._keys: dict[str, list[_KeyVersion]] = {}
        self._server = ThreadedServer(self._build_app())
        self._server.ssl_certfile = str(server_pem)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.port}"

    @property
    def running(self) -> bool:
        return self._server.running

    def start(self) -> KeyVaultDouble:
        self._server.start()
        return self

    def stop(self) -> None:
        """The vault becomes unreachable; keys and issued tokens survive :meth:`start_again`."""
        self._server.stop()

    def start_again(self) -> None:
        self._server.start()

    def reset(self) -> None:
        self._keys.clear()
        self.requests.clear()
        self.faults = Faults()

    def env(self) -> dict[str, str]:
        """App Service managed identity settings: ``DefaultAzureCredential`` gets tokens here."""
        return {
            "IDENTITY_ENDPOINT": f"{self.url}/msi/token",
            "IDENTITY_HEADER": self.identity_header,
            "REQUESTS_CA_BUNDLE": str(self.ca_file),
        }

    # -- tokens and keys, test side ----------------------------------------------------------

    def issue_token(self) -> str:
        token = secrets.token_urlsafe(32)
        self._tokens.add(token)
        return token

    def credential(self) -> DoubleCredential:
        return DoubleCredential(self)

    def create_key(
        self,
        name: str,
        size: int = 2048,
        *,
        kty: str = "RSA",
        key_ops: list[str] | None = None,
        tags: dict[str, str] | None = None,
        enabled: bool = True,
        expires: int | None = None,
    ) -> str:
        """Add a new version of ``name``, as Key Vault does on every create; returns its kid."""
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=size)
        entry = _KeyVersion(
            uuid.uuid4().hex,
            private_key,
            kty,
            key_ops or DEFAULT_KEY_OPS,
            tags or {},
            enabled=enabled,
            expires=expires,
        )
        self._keys.setdefault(name, []).append(entry)
        return self._kid(name, entry)

    def disable(self, name: str, version: str) -> None:
        """The key version's ``enabled`` attribute turns false: no operation is allowed on it."""
        entry = self._find(name, version)
        if entry is None:
            raise KeyError(f"{name}/{version}")
        entry.enabled = False

    def public_key(self, name: str, version: str | None = None) -> rsa.RSAPublicKey:
        entry = self._find(name, version)
        if entry is None:
            raise KeyError(f"{name}/{version or ''}")
        return entry.private_key.public_key()

    def key_type(self, name: str) -> str:
        """The ``kty`` of the key's latest version (``RSA`` or ``RSA-HSM``)."""
        latest = self._find(name, None)
        assert latest is not None, f"no key {name}"
        return latest.kty

    def versions(self, name: str) -> list[str]:
        return [entry.version for entry in self._keys.get(name, [])]

    def _find(self, name: str, version: str | None) -> _KeyVersion | None:
        entries = self._keys.get(name, [])
        if not version:
            return entries[-1] if entries else None
        return next((entry for entry in entries if entry.version == version), None)

    def _kid(self, name: str, entry: _KeyVersion) -> str:
        return f"{self.url}/keys/{name}/{entry.version}"

    def _bundle(self, name: str, entry: _KeyVersion) -> dict[str, Any]:
        numbers = entry.private_key.public_key().public_numbers()
        bundle: dict[str, Any] = {
            "key": {
                "kid": self._kid(name, entry),
                "kty": entry.kty,
                "key_ops": entry.key_ops,
                "n": _uint(numbers.n),
                "e": _uint(numbers.e),
            },
            "attributes": {
                "enabled": entry.enabled,
                "created": entry.created,
                "updated": entry.created,
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
            },
        }
        if entry.expires is not None:
            bundle["attributes"]["exp"] = entry.expires
        if entry.tags:
            bundle["tags"] = entry.tags
        return bundle

    # -- HTTP --------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        vault = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        install_faults(
            vault,
            lambda: self.faults,
            error_body=_fault_body,
            on_request=lambda r: self.requests.append(f"{r.method} {r.url.path}"),
        )
        challenge = {
            "WWW-Authenticate": f'Bearer authorization="https://login.microsoftonline.com/'
            f'{self.tenant_id}", resource="{RESOURCE}"'
        }

        # Added after the faults, so it runs first: rejected calls are neither faulted nor
        # recorded, and the body is left unread (the SDK sends its first request without one).
        @vault.middleware("http")
        async def authenticate(request: Request, call_next: Any) -> Response:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or token.strip() not in self._tokens:
                unauthorized = _error(401, "Unauthorized", "AKV10000: Request is missing a Bearer")
                unauthorized.headers.update(challenge)
                return unauthorized
            response: Response = await call_next(request)
            return response

        @vault.post("/keys/{name}/create")
        async def create(name: str, request: Request) -> Response:
            body = await request.json()
            kty = body.get("kty")
            if kty not in ("RSA", "RSA-HSM"):
                return _error(400, "BadParameter", f"The double supports RSA keys only, not {kty}")
            self.create_key(
                name,
                int(body.get("key_size") or 2048),
                kty=kty,
                key_ops=body.get("key_ops"),
                tags=body.get("tags"),
            )
            return JSONResponse(self._bundle(name, self._keys[name][-1]))

        @vault.get("/keys/{name}/")
        @vault.get("/keys/{name}/{version}")
        async def get_key(name: str, version: str = "") -> Response:
            entry = self._find(name, version)
            if entry is None:
                return _error(404, "KeyNotFound", f"A key with (name/id) {name} was not found")
            return JSONResponse(self._bundle(name, entry))

        @vault.post("/keys/{name}//{operation}")  # the SDK's "latest" when it has no version
        @vault.post("/keys/{name}/{version}/{operation}")
        async def operate(
            name: str, operation: str, request: Request, version: str = ""
        ) -> Response:
            entry = self._find(name, version)
            if entry is None:
                return _error(404, "KeyNotFound", f"A key with (name/id) {name} was not found")
            if not entry.enabled:  # Key Vault's answer, as for a missing permission: 403
                return _error(
                    403, "Forbidden", f"Operation {operation} is not allowed on a disabled key."
                )
            body = await request.json()
            algorithm = OAEP_HASHES.get(body.get("alg", ""))
            if algorithm is None or operation not in ("encrypt", "decrypt", "wrapkey", "unwrapkey"):
                return _error(400, "BadParameter", f"Unsupported: {operation} {body.get('alg')}")
            oaep = padding.OAEP(padding.MGF1(algorithm()), algorithm(), None)
            value = _unb64(body.get("value", ""))
            try:
                if operation in ("encrypt", "wrapkey"):
                    result = entry.private_key.public_key().encrypt(value, oaep)
                else:
                    result = entry.private_key.decrypt(value, oaep)
            except ValueError:
                return _error(400, "BadParameter", "Error occurred while decrypting the value")
            return JSONResponse({"kid": self._kid(name, entry), "value": _b64(result)})

        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        # No keep-alive: uvicorn's shutdown waits for a TLS close_notify that an idle pooled
        # client connection never sends, which would make stop() hang.
        @app.middleware("http")
        async def close_connections(request: Request, call_next: Any) -> Response:
            response: Response = await call_next(request)
            response.headers["Connection"] = "close"
            return response

        # The managed identity lives beside the vault, outside its faults and its auth.
        @app.get("/msi/token")
        async def msi_token(request: Request, resource: str = "") -> Response:
            if request.headers.get("x-identity-header") != self.identity_header:
                return JSONResponse({"statusCode": 401, "message": "Unauthorized"}, 401)
            if not resource:
                return JSONResponse({"statusCode": 400, "message": "resource is required"}, 400)
            return JSONResponse(
                {
                    "access_token": self.issue_token(),
                    "expires_on": str(int(time.time()) + 3600),
                    "resource": resource,
                    "token_type": "Bearer",
                    "client_id": str(uuid.uuid5(uuid.NAMESPACE_URL, self.url)),
                }
            )

        app.mount("/", vault)
        return app
