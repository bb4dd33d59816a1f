"""AWS KMS for tests: moto's server, behind a proxy that can make it slow, failing or throttled.

boto3 reaches it through the standard endpoint override (``AWS_ENDPOINT_URL_KMS``), exactly as a
private VPC endpoint would be configured in production.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

import boto3
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response
from moto.kms.utils import _deserialize_ciphertext_blob
from moto.server import ThreadedMotoServer

from tests.support.servers import Faults, Quota, ThreadedServer, install_faults

REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def failing(operation: str, code: str, status: int = 400) -> Faults:
    """Only ``operation`` (e.g. "EnableKeyRotation") answers the AWS error ``code``."""
    return Faults(
        fail_status=status,
        fail_body={"__type": code, "message": "injected by the test double"},
        when=lambda request: request.headers.get("x-amz-target") == f"TrentService.{operation}",
    )


# What AWS answers a Decrypt (or ReEncrypt) whose KeyId is not the blob's key, where moto answers
# AccessDeniedException: https://docs.aws.amazon.com/kms/latest/APIReference/API_Decrypt.html
INCORRECT_KEY = {
    "__type": "IncorrectKeyException",
    "message": "The key ID in the request does not identify a CMK that can perform this operation.",
}

DISABLED = {
    "__type": "DisabledException",
    "message": "The request was rejected because the specified KMS key is not enabled.",
}
JSON_1_1 = "application/x-amz-json-1.1"

THROTTLED = Faults(
    fail_status=400, fail_body={"__type": "ThrottlingException", "message": "Rate exceeded"}
)


# What the shared "cryptographic operations" request quota counts (AWS KMS quotas page); key
# management calls (CreateKey, DescribeKey, aliases) have quotas of their own, not modelled.
CRYPTO_OPERATIONS = frozenset(
    {"Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncrypt"}
)


def is_crypto_call(request: Request) -> bool:
    target = request.headers.get("x-amz-target", "")
    return target.removeprefix("TrentService.") in CRYPTO_OPERATIONS


def quota(per_second: float | None) -> Quota:
    """AWS KMS's request quota on cryptographic operations: over it, the ``ThrottlingException``
    of ``THROTTLED`` (HTTP 400), which botocore retries and then raises as a ClientError."""
    return Quota(per_second, status=400, body=THROTTLED.fail_body, when=is_crypto_call)


def _aws_error(status: int) -> dict[str, str]:
    kind = "KMSInternalException" if status < 503 else "ServiceUnavailableException"
    return {"__type": kind, "message": "injected by the test double"}


class AwsKmsDouble:
    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.faults = Faults()
        self.requests: list[str] = []  # the X-Amz-Target of every call, e.g. "TrentService.Decrypt"
        self._upstream = ""
        self._http: httpx.AsyncClient | None = None
        self._lookups: Any = None
        self._disabled: set[str] = set()  # key ids disable_key() turned off
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        install_faults(
            app,
            lambda: self.faults,
            error_body=_aws_error,
            on_request=lambda request: self.requests.append(
                request.headers.get("x-amz-target", "")
            ),
            exempt_prefix="/moto-api/",
        )

        @app.api_route("/{path:path}", methods=["GET", "POST"])
        async def forward(path: str, request: Request) -> Response:
            if self._http is None:  # one pool, on the proxy's own event loop
                self._http = httpx.AsyncClient()
            body = await request.body()
            target = request.headers.get("x-amz-target", "")
            disabled = bool(self._disabled) and await asyncio.to_thread(
                self._under_disabled_key, target, body
            )
            if disabled:
                return Response(json.dumps(DISABLED), status_code=400, media_type=JSON_1_1)
            upstream = await self._http.request(
                request.method,
                f"{self._upstream}/{path}",
                content=body,
                headers={k: v for k, v in request.headers.items() if k != "host"},
            )
            headers = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            }
            content = upstream.content
            if upstream.status_code == 400 and await asyncio.to_thread(
                self._another_key, target, body, content
            ):
                content = json.dumps(INCORRECT_KEY).encode()
            return Response(content, status_code=upstream.status_code, headers=headers)

        self._proxy = ThreadedServer(app)

    def disable_key(self, key_id: str) -> None:
        """``DisableKey``, with what AWS then answers a Decrypt of a blob under the key (moto
        decrypts it regardless): ``DisabledException``."""
        self.client().disable_key(KeyId=key_id)
        self._disabled.add(self.client().describe_key(KeyId=key_id)["KeyMetadata"]["KeyId"])

    def _under_disabled_key(self, target: str, request: bytes) -> bool:
        if target not in ("TrentService.Decrypt", "TrentService.ReEncrypt"):
            return False
        try:
            blob = _deserialize_ciphertext_blob(
                base64.b64decode(json.loads(request)["CiphertextBlob"])
            )
        except Exception:  # not a moto blob: moto answers it
            return False
        return blob.key_id in self._disabled

    def _another_key(self, target: str, request: bytes, answer: bytes) -> bool:
        """Whether moto's AccessDenied is what AWS answers IncorrectKeyException: the blob is
        under an existing key, other than the one the request names (moto tells the two cases
        apart in its message only)."""
        named = {"TrentService.Decrypt": "KeyId", "TrentService.ReEncrypt": "SourceKeyId"}
        field = named.get(target)
        if field is None or b"AccessDeniedException" not in answer:
            return False
        body = json.loads(request)
        if not body.get(field):
            return False
        try:
            blob = _deserialize_ciphertext_blob(base64.b64decode(body["CiphertextBlob"]))
            client = self._lookups = self._lookups or self.client()  # boto3 clients are costly
            actual = client.describe_key(KeyId=blob.key_id)["KeyMetadata"]["KeyId"]
            requested = client.describe_key(KeyId=body[field])["KeyMetadata"]["KeyId"]
        except Exception:  # no such key, or not a moto blob: AccessDenied it stays
            return False
        return bool(actual != requested)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._proxy.port}"

    @property
    def running(self) -> bool:
        return self._proxy.running

    def start(self) -> AwsKmsDouble:
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self._upstream = f"http://{host}:{port}"
        self._proxy.start()
        return self

    def stop(self) -> None:
        """The KMS becomes unreachable (moto keeps its keys: :meth:`start_again` restores it)."""
        self._proxy.stop()

    def start_again(self) -> None:
        self._proxy.start()

    def shutdown(self) -> None:
        self._proxy.stop()
        self._moto.stop()

    def reset(self) -> None:
        httpx.post(f"{self._upstream}/moto-api/reset").raise_for_status()
        self._disabled.clear()
        self.faults = Faults()
        self.requests.clear()

    def env(self) -> dict[str, str]:
        """What a process needs to reach this KMS with the standard AWS configuration."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL_KMS": self.url, "AWS_REGION": REGION}

    def client(self) -> Any:
        """A boto3 client straight to moto, for tests to arrange and inspect state."""
        return boto3.client(
            "kms",
            region_name=REGION,
            endpoint_url=self._upstream,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
