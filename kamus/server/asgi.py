"""The services as ASGI application factories, for uvicorn's worker processes.

``kamus serve --workers N`` hands uvicorn an import string (``kamus.server.asgi:encryptor``),
and each worker process calls the factory: settings are read again from the environment (the
parent has validated them) and logging is set up again, since a spawned worker inherits neither.
"""

from fastapi import FastAPI

from kamus.server.logs import configure_logging
from kamus.server.services import SERVICES, ServiceName
from kamus.server.settings import Settings


def _create(name: ServiceName) -> FastAPI:
    settings = Settings()
    configure_logging(settings.logging.level)
    return SERVICES[name].create_app(settings)


def encryptor() -> FastAPI:
    return _create("encryptor")


def decryptor() -> FastAPI:
    return _create("decryptor")
