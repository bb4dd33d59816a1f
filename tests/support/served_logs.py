"""Logging as ``kamus serve`` configures it, inside a test, and put back afterwards."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO
from unittest.mock import patch

from kamus.server.logs import SDK_LOGGERS, configure_logging


@contextmanager
def sdk_loggers_as_served() -> Iterator[None]:
    """The SDK loggers at the level ``configure_logging`` holds them to in every ``kamus``
    process (INFO at most), for a test that drives a provider in its own process: at DEBUG,
    botocore writes each request body, such as a Decrypt's wrapped seed, which ``kamus`` never
    logs."""
    saved = {name: logging.getLogger(name).level for name in SDK_LOGGERS}
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@contextmanager
def served_logging(stream: TextIO, level: str = "INFO") -> Iterator[None]:
    """``configure_logging(level)`` as ``kamus serve`` runs it, writing to ``stream``, alone on
    the root logger; what it changed (pytest's handlers, such as caplog and the leak detector,
    logging's switches, the SDK loggers' levels) is put back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    uvicorn = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "uvicorn.access")]
    saved_uvicorn = [(log.handlers[:], log.propagate) for log in uvicorn]
    switches = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")
    saved_switches = {name: getattr(logging, name) for name in switches}
    saved_sdk = {name: logging.getLogger(name).level for name in SDK_LOGGERS}
    with patch("sys.stderr", stream):
        configure_logging(level)
    try:
        yield
    finally:
        root.handlers[:], root.level = saved
        for log, (handlers, propagate) in zip(uvicorn, saved_uvicorn, strict=True):
            log.handlers[:], log.propagate = handlers, propagate
        for name, value in saved_switches.items():
            setattr(logging, name, value)
        for name, sdk_level in saved_sdk.items():
            logging.getLogger(name).setLevel(sdk_level)
