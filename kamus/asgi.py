"""The services as ASGI application factories, for uvicorn's worker processes.

``kamus serve --workers N`` hands uvicorn an import string (``kamus.asgi:encryptor``), and each
worker process calls the factory: settings are read again from the environment (the parent has
validated them) and logging is set up again, since a spawned worker inherits neither.
"""

from fastapi import FastAPI

from kamus.logs import configure_logging
from kamus.settings import Settings


def _settings() -> Settings:
    settings = Settings()
    configure_logging(settings.logging.level)
    return settings


def encryptor() -> FastAPI:
    from encryptor.app import create_app

    return create_app(_settings())


def decryptor() -> FastAPI:
    from decryptor.app import create_app

    return create_app(_settings())
