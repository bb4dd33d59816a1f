"""JSON-lines logging and the audit trail.

Audit events go to the ``kamus.audit`` logger with ``log_type: audit``. Callers pass identities,
outcomes and reasons only: never a plaintext, ciphertext, token or key.
"""

import asyncio
import json
import logging
import sys
import time
import traceback
from datetime import UTC, datetime
from typing import Any, TextIO, cast

import pydantic_core

AUDIT_LOGGER = logging.getLogger("kamus.audit")
_FIELDS = "kamus_fields"


# json's encoder took 3 µs for an audit line, pydantic-core's 0.7 µs. It writes non-ASCII text as
# is and refuses lone surrogates, so such a line is written again by json, which escapes both: a
# line stays ASCII, and a name holding a bidi control or a terminal escape cannot rearrange what
# a log viewer shows.
_ASCII_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))


def _json_line(entry: dict[str, Any]) -> str:
    try:
        line = pydantic_core.to_json(entry, fallback=str)
    except pydantic_core.PydanticSerializationError:  # a lone surrogate, which json escapes
        return _ASCII_ENCODER.encode(entry)
    return line.decode("ascii") if line.isascii() else _ASCII_ENCODER.encode(entry)


class JsonFormatter(logging.Formatter):
    _second = -1
    _second_text = ""

    def _time(self, created: float) -> str:
        # One datetime per second, not per line: the audit line is a large part of the cost of
        # an encrypt request (docs/performance.md).
        second = int(created)
        if second != self._second:
            stamp = datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")
            self._second, self._second_text = second, stamp.removesuffix("+00:00")
        return f"{self._second_text}.{int((created - second) * 1000):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, _FIELDS, {})
        if record.exc_info and record.exc_info[0] is not None:
            # The type and the code path only: exception messages can quote request data.
            fields = fields | {
                "exception": record.exc_info[0].__name__,
                "stack": "".join(traceback.format_tb(record.exc_info[2])),
            }
        return self.line(record.created, record.levelname, record.name, record.getMessage(), fields)

    def line(
        self, created: float, level: str, logger: str, message: str, fields: dict[str, Any]
    ) -> str:
        """One event's line: ``format`` for a record, and :func:`audit` without one."""
        head = {"time": self._time(created), "level": level, "logger": logger, "message": message}
        return _json_line(head | fields)


class JsonLinesHandler(logging.StreamHandler[TextIO]):
    """Writes each log line at once, and the audit lines of one event-loop iteration together.

    A write per audit line would be a large share of an encrypt request's time, so
    :func:`audit` hands its lines to :meth:`write_soon`: they are written at the start of the
    loop's next iteration, or sooner with any other line (which keeps the order). Shutting down
    logs lines (uvicorn's last is "Finished server process", just before the signal that stopped
    it is raised again), and exit flushes; a process killed outright (SIGKILL, the OOM killer)
    loses the audit lines of its last iteration.
    """

    _max_pending = 256  # lines: a long iteration writes as it goes

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # where a flush is scheduled

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(self.format(record))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def write(self, line: str) -> None:
        """Write one formatted line now, after the lines waiting."""
        self.acquire()
        try:
            self._pending.append(line + self.terminator)
            self.flush()
        finally:
            self.release()

    def write_soon(self, line: str) -> None:
        """Write one formatted line with the others of this loop iteration (now, without one)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.write(line)
            return
        self.acquire()
        try:
            self._pending.append(line + self.terminator)
            if len(self._pending) >= self._max_pending:
                self.flush()
            elif self._flush_on is not loop:  # a loop that stopped may never run its flush
                self._flush_on = loop
                loop.call_soon(self.flush)
        finally:
            self.release()

    def flush(self) -> None:
        self.acquire()  # an RLock: write() holds it already when it flushes
        try:
            self._flush_on = None
            if self._pending:
                lines, self._pending = "".join(self._pending), []
                self.stream.write(lines)
            self.stream.flush()
        finally:
            self.release()


SDK_LOGGERS = (
    "botocore",
    "boto3",
    "urllib3",
    "kubernetes",
    "azure",
    "google",
    "grpc",
    "httpx",
    "httpcore",
    "aiohttp",
)


def configure_logging(level: str = "INFO") -> None:
    handler = JsonLinesHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The lines carry none of these; the Logging HOWTO's "Optimization" section lists these
    # switches to skip computing them for every record.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # the caller's file, function and line
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # The SDKs write whole request and response bodies at DEBUG: botocore a KMS Decrypt's
    # Plaintext (every data key, the sealing seed), the Kubernetes client its TokenReviews. DEBUG
    # is for this project's own loggers, which never log a secret.
    quiet = max(root.getEffectiveLevel(), logging.INFO)
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(quiet)


def audit(event: str, **fields: Any) -> None:
    fields = {"log_type": "audit", **fields}
    handler = _sole_handler(AUDIT_LOGGER, logging.INFO)
    if handler is None:
        AUDIT_LOGGER.info(event, extra={_FIELDS: fields})
        return
    # The line that record would have become, without making the record: a LogRecord and
    # logging's dispatch would double the audit line's cost, and the encryptor writes one per
    # request. tests/unit/test_logs.py compares both ways' lines.
    try:
        formatter = cast(JsonFormatter, handler.formatter)
        handler.write_soon(formatter.line(time.time(), "INFO", AUDIT_LOGGER.name, event, fields))
    except Exception:
        AUDIT_LOGGER.info(event, extra={_FIELDS: fields})  # and logging reports the failure


def _sole_handler(logger: logging.Logger, level: int) -> JsonLinesHandler | None:
    """The handler of :func:`configure_logging`, if a record from ``logger`` at ``level`` would
    reach it and nothing else: no other handler, no filter (caplog, for one, adds a handler)."""
    if not logger.isEnabledFor(level):
        return None
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters or current.disabled:
            return None
        found += current.handlers
        current = current.parent if current.propagate else None
    if len(found) != 1:
        return None
    [handler] = found
    if (
        type(handler) is not JsonLinesHandler
        or type(handler.formatter) is not JsonFormatter
        or handler.filters
        or level < handler.level
    ):
        return None
    return handler


def log_fields(**fields: Any) -> dict[str, Any]:
    """``extra=`` for an ordinary log line with structured fields."""
    return {_FIELDS: fields}
