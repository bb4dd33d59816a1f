"""The baselines, served by uvicorn exactly as ``kamus serve`` is (the same loop and HTTP
implementations, no access log, no Server header), answering a fixed ciphertext-sized body:

* ``app``: a raw ASGI callable that reads the request body. Encrypt throughput is measured
  against it: what the server alone costs.
* ``fastapi_app``: the least a FastAPI service does for ``/api/v1/encrypt`` (route, pydantic
  model of Kamus's body, plain-text answer), as a reference that shows how much of the gap is the
  framework's.
"""

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

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
