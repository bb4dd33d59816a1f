"""JSON-lines logging and the audit trail.

Audit events go to the ``kamus.audit`` logger with ``log_type: audit``. Callers pass identities,
outcomes and reasons only: never a plaintext, ciphertext, token or key.
"""

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

AUDIT_LOGGER = logging.getLogger("kamus.audit")
_FIELDS = "kamus_fields"


_ENCODER = json.JSONEncoder(default=str)


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
        entry: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, _FIELDS, {}))
        if record.exc_info and record.exc_info[0] is not None:
            # The type and the code path only: exception messages can quote request data.
            entry["exception"] = record.exc_info[0].__name__
            entry["stack"] = "".join(traceback.format_tb(record.exc_info[2]))
        return _ENCODER.encode(entry)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
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


def audit(event: str, **fields: Any) -> None:
    AUDIT_LOGGER.info(event, extra={_FIELDS: {"log_type": "audit", **fields}})


def log_fields(**fields: Any) -> dict[str, Any]:
    """``extra=`` for an ordinary log line with structured fields."""
    return {_FIELDS: fields}
