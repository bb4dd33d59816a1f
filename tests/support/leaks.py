"""Secrets that must never reach a log: tests register them, and every log record of the test
run (and every ``kamus serve`` log file) is searched for them; a hit fails the test.

Registered: generated keys (``tests.conftest.new_key``), tokens issued by the Kubernetes API
double (their signature, the part that makes a token a credential), and plaintexts a test names
with :func:`register`.
"""

import logging
import re
import traceback

_SECRETS: set[str] = set()
MIN_LENGTH = 8  # shorter values would match by chance


_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def register(*values: str) -> None:
    """A value that could be base64url is also registered in the standard alphabet: a secret
    stored in one (a wrapped seed) travels in the other (a KMS request body), and without both
    the search would find it only when its text happens to hold neither ``-`` nor ``_``."""
    for value in values:
        if len(value) >= MIN_LENGTH:
            _SECRETS.add(value)
            if _BASE64URL.fullmatch(value):
                _SECRETS.add(value.replace("-", "+").replace("_", "/"))


def register_token(token: str) -> str:
    """Register a JWT's signature; returns the token."""
    register(token.rsplit(".", 1)[-1])
    return token


def found_in(text: str) -> list[str]:
    """The registered secrets in ``text``, shortened so the report does not repeat them."""
    return sorted(f"{secret[:4]}…({len(secret)} chars)" for secret in _SECRETS if secret in text)


class LeakDetector(logging.Handler):
    """Collects the log records that hold a registered secret, anywhere: message, arguments,
    structured fields or traceback."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        parts = [str(record.msg), repr(record.args), repr(getattr(record, "kamus_fields", ""))]
        if record.exc_info and record.exc_info[1] is not None:
            parts.append("".join(traceback.format_exception(record.exc_info[1])))
        if hits := found_in("\n".join(parts)):
            self.leaks.append(f"{record.name} {record.levelname}: {', '.join(hits)}")
