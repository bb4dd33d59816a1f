"""The registry of services: what ``kamus serve`` and the ASGI factories (kamus/server/asgi.py)
start, by name. Each service's package is imported only when it is started, so the public
encryptor's process never even loads the decryption endpoint."""

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, get_args

# Only for types: `kamus init` reads this registry's names at every pod start.
if TYPE_CHECKING:
    from fastapi import FastAPI

    from kamus.server.settings import Settings

ServiceName = Literal["encryptor", "decryptor", "controller", "injector"]
NAMES: tuple[ServiceName, ...] = get_args(ServiceName)


class _AppModule(Protocol):
    def create_app(self, settings: "Settings") -> "FastAPI": ...


@dataclass(frozen=True)
class Service:
    name: ServiceName
    module: str  # holds create_app(settings)
    default_port: int  # as the images and the chart run it, so that two on a machine differ
    # The controller elects a leader among replicas; two workers in one pod would only contend.
    multi_worker: bool
    # The encryptor alone trusts proxies (Encryptor__TrustedProxies) for the client address.
    http_protocol: str
    # "module:Class" of the uvicorn ssl_context_factory the service serves with when no
    # certificate files are configured (the injector's own CA); None: plain http then.
    built_in_tls: str | None = None

    def create_app(self, settings: "Settings") -> "FastAPI":
        """The service's app, in a process that writes no core dump (``kamus serve`` and each
        of its workers come through here; tests build apps directly)."""
        from kamus.server.process import no_core_dumps

        no_core_dumps()
        module: _AppModule = importlib.import_module(self.module)
        return module.create_app(settings)


SERVICES: dict[ServiceName, Service] = {
    "encryptor": Service("encryptor", "encryptor.app", 9090, True, "EncryptorProtocol"),
    "decryptor": Service("decryptor", "decryptor.app", 9091, True, "SlowClientProtocol"),
    "controller": Service("controller", "controller.app", 9092, False, "SlowClientProtocol"),
    # The apiserver is its only client; the chart maps 443 to this port.
    "injector": Service(
        "injector", "injector.app", 8443, False, "SlowClientProtocol", "injector.tls:BuiltInTls"
    ),
}
