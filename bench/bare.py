"""The baselines, served by uvicorn exactly as ``kamus serve`` is (the same loop and HTTP
implementations, no access log, no Server header), answering a fixed ciphertext-sized body:

* ``app``: a raw ASGI callable that reads the request body. Encrypt throughput is measured
  against it: what the server alone costs.
* ``fastapi_app``: the least a FastAPI service does for ``/api/v1/encrypt`` (route, pydantic
  model of Kamus's body, plain-text answer), as a reference that shows how much of the gap is the
  framework's.
* ``floor_app``: the work no encrypt request can skip, as raw ASGI: the JSON body, the encryptor's
  request model and an AES-GCM encryption, but no audit line, metrics or rate limit. It shows
  how much of the bare server any Python encryptor keeps on this machine.
"""

import json
import os

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

from crypto.aes import AESKeyManager
from encryptor.models import EncryptRequest as KamusEncryptRequest

BODY = b"kamus$a1$" + b"x" * 100
HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(BODY)).encode()),
]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


class EncryptRequest(BaseModel):
    data: str
    service_account: str = Field(alias="service-account")
    namespace: str


fastapi_app = FastAPI()


@fastapi_app.post("/api/v1/encrypt")
async def encrypt(body: EncryptRequest) -> PlainTextResponse:
    return PlainTextResponse(BODY.decode())


@fastapi_app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


_FLOOR_KEYS = AESKeyManager(os.urandom(32))


async def floor_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http" or scope["method"] != "POST":  # the readiness probe's GET
        await app(scope, receive, send)
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    request = KamusEncryptRequest.model_validate(json.loads(b"".join(chunks)))
    identity = f"{request.namespace}:{request.service_account}"
    body = (await _FLOOR_KEYS.encrypt(request.data.encode("utf-8"), identity)).encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
