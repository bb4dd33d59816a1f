"""Google Cloud KMS for tests: the v1 REST API the real client speaks with ``transport="rest"``.

Key rings, crypto keys with versions (real AES-256-GCM, additional authenticated data and CRC32C
checks), protection level and rotation settings stored and returned, and Google's error documents.
Callers authenticate as a service account from a key file that :meth:`write_credentials` writes;
the double accepts the self-signed JWTs google-auth makes from it, or tokens from its own
``/token`` endpoint (the OAuth JWT-bearer grant), as Google does.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import google_crc32c
import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.support.servers import Faults, Quota, ThreadedServer, install_faults

PROTECTION = {0: "PROTECTION_LEVEL_UNSPECIFIED", 1: "SOFTWARE", 2: "HSM"}
PURPOSE = {1: "ENCRYPT_DECRYPT"}
STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}
STATUS |= {404: "NOT_FOUND", 409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED"}
STATUS |= {500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}

_RING = r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/keyRings"
_KEY = _RING + r"/(?P<ring>[^/:]+)/cryptoKeys"


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status)


def error_body(status: int, message: str = "injected by the test double") -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "status": STATUS.get(status, "UNKNOWN")}}


def is_crypto_call(request: Request) -> bool:
    """encrypt and decrypt: what Cloud KMS's "cryptographic requests" quota counts."""
    return request.url.path.endswith((":encrypt", ":decrypt"))


def quota(per_second: float | None) -> Quota:
    """Cloud KMS's per-project quota on cryptographic requests: over it, HTTP 429 with Google's
    RESOURCE_EXHAUSTED error (and its ErrorInfo), which the REST client raises as
    TooManyRequests."""
    body = error_body(
        429,
        "Quota exceeded for quota metric 'Cryptographic requests' and limit 'Cryptographic "
        "requests per minute' of service 'cloudkms.googleapis.com'.",
    )
    body["error"]["details"] = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "RATE_LIMIT_EXCEEDED",
            "domain": "googleapis.com",
            "metadata": {
                "service": "cloudkms.googleapis.com",
                "quota_metric": "cloudkms.googleapis.com/crypto_requests",
            },
        }
    ]
    return Quota(per_second, status=429, body=body, when=is_crypto_call)


def crc(data: bytes) -> str:
    return str(google_crc32c.value(data))  # int64 fields travel as JSON strings


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def enum_name(value: Any, names: dict[int, str]) -> str:
    return names.get(value, str(value)) if isinstance(value, int) else str(value)


@dataclass
class CryptoKey:
    name: str
    body: dict[str, Any]
    versions: list[bytes] = field(default_factory=list)  # AES keys; version n is versions[n-1]
    disabled: set[int] = field(default_factory=set)  # version numbers no longer ENABLED

    def resource(self) -> dict[str, Any]:
        template = self.body.get("versionTemplate", {})
        level = enum_name(template.get("protectionLevel", 1), PROTECTION)
        primary = f"{self.name}/cryptoKeyVersions/{len(self.versions)}"
        out = {
            "name": self.name,
            "purpose": enum_name(self.body.get("purpose", 1), PURPOSE),
            "createTime": self.body["createTime"],
            "versionTemplate": {
                "protectionLevel": level,
                "algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION",
            },
            "primary": {"name": primary, "state": "ENABLED", "protectionLevel": level},
            "labels": self.body.get("labels", {}),
        }
        for name in ("rotationPeriod", "nextRotationTime"):
            if name in self.body:
                out[name] = self.body[name]
        return out


class CloudKmsDouble:
    def __init__(self) -> None:
        self.faults = Faults()
        self.requests: list[str] = []  # "METHOD path" of every API call, for assertions
        self.allow_anonymous = True  # the in-process client may send no credentials at all
        self.rings: set[str] = set()
        self.keys: dict[str, CryptoKey] = {}
        self._sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._sa_email = "kamus@test-project.iam.gserviceaccount.com"
        self._tokens: set[str] = set()
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        install_faults(
            app,
            lambda: self.faults,
            error_body=error_body,
            on_request=lambda r: self.requests.append(f"{r.method} {r.url.path}"),
            exempt_prefix="/token",
        )
        app.add_api_route("/token", self._token, methods=["POST"])
        app.add_api_route("/v1/{path:path}", self._api, methods=["GET", "POST"])
        self._server = ThreadedServer(app)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    @property
    def running(self) -> bool:
        return self._server.running

    def start(self) -> CloudKmsDouble:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def start_again(self) -> None:
        self._server.start()

    def reset(self) -> None:
        self.faults = Faults()
        self.requests.clear()
        self.rings.clear()
        self.keys.clear()
        self.allow_anonymous = True

    def env(self, credentials: Path) -> dict[str, str]:
        """What a process needs to reach this double: a key file and the endpoint override."""
        return {
            "GOOGLE_APPLICATION_CREDENTIALS": str(self.write_credentials(credentials)),
            "KeyManagement__GoogleKms__Endpoint": self.url,
            "KeyManagement__GoogleKms__Transport": "rest",
        }

    def client(self) -> Any:
        """A real client straight to the double, for tests to arrange and inspect state."""
        from google.api_core.client_options import ClientOptions
        from google.cloud import kms
        from google.oauth2 import service_account

        credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            self._credentials_info(), scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
        return kms.KeyManagementServiceClient(
            credentials=credentials,
            transport="rest",
            client_options=ClientOptions(api_endpoint=self.url),
        )

    def rotate(self, key_name: str) -> None:
        """A new primary version, as scheduled rotation makes."""
        self.keys[key_name].versions.append(AESGCM.generate_key(256))

    def disable(self, key_name: str, version: int) -> None:
        """The version's state becomes DISABLED: Cloud KMS then refuses to decrypt with it."""
        self.keys[key_name].disabled.add(version)

    def write_credentials(self, path: Path) -> Path:
        """A service-account key file, as ``GOOGLE_APPLICATION_CREDENTIALS`` names."""
        path.write_text(json.dumps(self._credentials_info()))
        return path

    def _credentials_info(self) -> dict[str, str]:
        pem = self._sa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        info = {
            "type": "service_account",
            "project_id": "test-project",
            "private_key_id": "double-key",
            "private_key": pem.decode(),
            "client_email": self._sa_email,
            "client_id": "1234567890",
            "token_uri": f"{self.url}/token",
        }
        return info

    # -- authentication ----------------------------------------------------------------------

    def _signed_by_service_account(self, token: str) -> bool:
        try:
            claims = jwt.decode(
                token,
                self._sa_key.public_key(),
                algorithms=["RS256"],
                options={"verify_aud": False, "require": ["exp", "iss"]},
            )
        except jwt.PyJWTError:
            return False
        return bool(claims["iss"] == self._sa_email)

    async def _token(self, request: Request) -> Response:
        form = await request.form()
        assertion = str(form.get("assertion", ""))
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        if not self._signed_by_service_account(assertion):
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        token = secrets.token_urlsafe(24)
        self._tokens.add(token)
        return JSONResponse({"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    def _authenticated(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if not token:
            return self.allow_anonymous
        return scheme.lower() == "bearer" and (
            token in self._tokens or self._signed_by_service_account(token)
        )

    # -- the API -----------------------------------------------------------------------------

    async def _api(self, path: str, request: Request) -> Response:
        if not self._authenticated(request):
            return error(401, "Request had invalid authentication credentials.")
        body = await request.json() if request.method == "POST" else {}
        query = request.query_params
        if match := re.fullmatch(r"projects/[^/]+/locations/(?P<location>[^/]+)", path):
            # locations.get: what the provider's readiness check asks.
            return JSONResponse({"name": path, "locationId": match["location"]})
        if match := re.fullmatch(_RING + r"/(?P<ring>[^/]+)", path):
            return self._get_ring(path) if request.method == "GET" else error(404, "Not found")
        if match := re.fullmatch(_RING, path):
            return self._create_ring(f"{path}/{query.get('keyRingId')}")
        if match := re.fullmatch(_KEY, path):
            return self._create_key(path.rsplit("/cryptoKeys", 1)[0], query, body)
        if match := re.fullmatch(_KEY + r"/(?P<key>[^/:]+)(?::(?P<verb>encrypt|decrypt))?", path):
            name = path.split(":")[0]
            key = self.keys.get(name)
            if key is None:
                return error(404, f"CryptoKey {name} not found.")
            verb = match.group("verb")
            if verb == "encrypt":
                return self._encrypt(key, body)
            if verb == "decrypt":
                return self._decrypt(key, body)
            return JSONResponse(key.resource())
        return error(404, f"no such API path {path}")

    def _get_ring(self, name: str) -> Response:
        if name not in self.rings:
            return error(404, f"KeyRing {name} not found.")
        return JSONResponse({"name": name, "createTime": _now()})

    def _create_ring(self, name: str) -> Response:
        if name in self.rings:
            return error(409, f"KeyRing {name} already exists.")
        self.rings.add(name)
        return JSONResponse({"name": name, "createTime": _now()})

    def _create_key(self, ring: str, query: Any, body: dict[str, Any]) -> Response:
        if ring not in self.rings:
            return error(404, f"KeyRing {ring} not found.")
        name = f"{ring}/cryptoKeys/{query.get('cryptoKeyId')}"
        if name in self.keys:
            return error(409, f"CryptoKey {name} already exists.")
        if "rotationPeriod" in body and "nextRotationTime" not in body:
            return error(400, "next_rotation_time must be set with rotation_period.")
        key = CryptoKey(name, {**body, "createTime": _now()}, [AESGCM.generate_key(256)])
        self.keys[name] = key
        return JSONResponse(key.resource())

    def _encrypt(self, key: CryptoKey, body: dict[str, Any]) -> Response:
        plaintext = base64.b64decode(body.get("plaintext", ""))
        aad = base64.b64decode(body.get("additionalAuthenticatedData", ""))
        if "plaintextCrc32c" in body and body["plaintextCrc32c"] != crc(plaintext):
            return error(400, "The checksum in field plaintext_crc32c did not match the data.")
        version = len(key.versions)
        nonce = os.urandom(12)
        sealed = AESGCM(key.versions[-1]).encrypt(nonce, plaintext, aad)
        ciphertext = struct.pack(">I", version) + nonce + sealed
        return JSONResponse(
            {
                "name": f"{key.name}/cryptoKeyVersions/{version}",
                "ciphertext": b64(ciphertext),
                "ciphertextCrc32c": crc(ciphertext),
                "verifiedPlaintextCrc32c": "plaintextCrc32c" in body,
                "verifiedAdditionalAuthenticatedDataCrc32c": (
                    "additionalAuthenticatedDataCrc32c" in body
                ),
                "protectionLevel": key.resource()["primary"]["protectionLevel"],
            }
        )

    def _decrypt(self, key: CryptoKey, body: dict[str, Any]) -> Response:
        ciphertext = base64.b64decode(body.get("ciphertext", ""))
        aad = base64.b64decode(body.get("additionalAuthenticatedData", ""))
        if "ciphertextCrc32c" in body and body["ciphertextCrc32c"] != crc(ciphertext):
            return error(400, "The checksum in field ciphertext_crc32c did not match the data.")
        failed = error(400, "Decryption failed: the ciphertext is invalid.")
        if len(ciphertext) < 4 + 12 + 16:
            return failed
        (version,) = struct.unpack(">I", ciphertext[:4])
        if not 1 <= version <= len(key.versions):
            return failed
        if version in key.disabled:
            # Cloud KMS's answer: 400 with the gRPC status FAILED_PRECONDITION.
            body = error_body(
                400,
                f"{key.name}/cryptoKeyVersions/{version} is not enabled, "
                "current state is: DISABLED.",
            )
            body["error"]["status"] = "FAILED_PRECONDITION"
            return JSONResponse(body, status_code=400)
        try:
            plaintext = AESGCM(key.versions[version - 1]).decrypt(
                ciphertext[4:16], ciphertext[16:], aad
            )
        except InvalidTag:
            return failed
        return JSONResponse(
            {
                "plaintext": b64(plaintext),
                "plaintextCrc32c": crc(plaintext),
                "usedPrimary": version == len(key.versions),
                "protectionLevel": key.resource()["primary"]["protectionLevel"],
            }
        )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
