"""kamus/server/logs.py: the JSON lines the services write, the audit line written without a
LogRecord, and the handler that writes a loop iteration's lines together."""

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from kamus.server.logs import AUDIT_LOGGER, JsonLinesHandler, audit, log_fields
from tests.support.served_logs import served_logging


class Stream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.records = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines()]


@pytest.fixture
def stream() -> Iterator[Stream]:
    """A stream for :func:`served_logging`, counting the LogRecords made meanwhile."""
    out = Stream()
    make_record = logging.getLogRecordFactory()

    def counted(*args: Any, **kwargs: Any) -> logging.LogRecord:
        out.records += 1
        return make_record(*args, **kwargs)

    logging.setLogRecordFactory(counted)
    try:
        yield out
    finally:
        logging.setLogRecordFactory(make_record)


def without_time(line: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in line.items() if k != "time"}


def test_an_audit_line_is_the_same_with_and_without_a_record(stream: Stream) -> None:
    fields = {"service": "encryptor", "status": 200, "namespace": "team-a", "reason": None}

    def every_record(record: logging.LogRecord) -> bool:
        return True

    with served_logging(stream):
        audit("encryptor request", **fields)  # configure_logging's handler alone: no record
        assert stream.records == 0
        AUDIT_LOGGER.addFilter(every_record)  # a filter needs the record: the logging way
        try:
            audit("encryptor request", **fields)
        finally:
            AUDIT_LOGGER.removeFilter(every_record)
        assert stream.records == 1
    direct, through_logging = stream.lines()
    assert without_time(direct) == without_time(through_logging)
    assert without_time(direct) == {
        "level": "INFO",
        "logger": "kamus.audit",
        "message": "encryptor request",
        "log_type": "audit",
        **fields,
    }
    assert direct["time"].endswith("+00:00")


def test_the_audit_line_follows_what_logging_is_told(
    stream: Stream, caplog: pytest.LogCaptureFixture
) -> None:
    with served_logging(stream):
        AUDIT_LOGGER.setLevel(logging.WARNING)
        try:
            audit("not written")
        finally:
            AUDIT_LOGGER.setLevel(logging.NOTSET)
        assert stream.getvalue() == ""
        with caplog.at_level(logging.INFO):  # another handler: each gets the record
            logging.getLogger().addHandler(caplog.handler)
            audit("seen by both", status=403)
    assert [getattr(r, "kamus_fields", {}).get("status") for r in caplog.records] == [403]
    assert [line["message"] for line in stream.lines()] == ["seen by both"]


def test_a_line_stays_ascii_and_reads_back_as_written(stream: Stream) -> None:
    odd = "é\u202e\x1b[31m\ud800"  # accented, a bidi override, a terminal escape, a lone surrogate
    with served_logging(stream):
        logging.getLogger("kamus.test").warning("odd %s", odd, extra=log_fields(name=odd))
        audit("odd", reason=odd)
    text = stream.getvalue()
    assert text.isascii()
    first, second = stream.lines()
    assert (first["message"], first["name"], second["reason"]) == (f"odd {odd}", odd, odd)


def test_an_exception_is_logged_as_its_type_and_code_path_only(stream: Stream) -> None:
    value = "-".join(["the", "value", "being", "parsed"])
    with served_logging(stream):
        try:
            raise ValueError(value)
        except ValueError:
            logging.getLogger("kamus.test").exception("failed", extra=log_fields(item="a"))
    [line] = stream.lines()
    assert (line["exception"], line["item"]) == ("ValueError", "a")
    assert "raise ValueError(value)" in line["stack"]
    assert value not in stream.getvalue()


def test_in_an_event_loop_the_audit_lines_of_one_iteration_are_written_together(
    stream: Stream,
) -> None:
    log = logging.getLogger("kamus.test")

    async def requests() -> list[int]:
        seen = []
        for i in range(3):
            audit("request", i=i)
        seen.append(len(stream.lines()))  # none of them written yet in this iteration
        log.info("a log line")  # written at once, after the audit lines waiting
        seen.append(len(stream.lines()))
        audit("request", i=3)
        seen.append(len(stream.lines()))
        await asyncio.sleep(0)  # the loop runs its next iteration: the flush
        seen.append(len(stream.lines()))
        return seen

    with served_logging(stream):
        log.info("before the loop")  # no loop: written at once
        audit("no loop")  # nor for an audit line
        assert (stream.writes, len(stream.lines())) == (2, 2)
        assert asyncio.run(requests()) == [2, 6, 6, 7]
    assert stream.writes == 4  # seven lines, four writes
    assert [(line["message"], line.get("i")) for line in stream.lines()] == [
        ("before the loop", None),
        ("no loop", None),
        *[("request", i) for i in range(3)],
        ("a log line", None),
        ("request", 3),
    ]


def left_to_a_loop_that_stops(event: str) -> None:
    loop = asyncio.new_event_loop()
    loop.call_soon(audit, event)  # schedules its flush for the next iteration,
    loop.call_soon(loop.stop)  # which never comes
    loop.run_forever()
    loop.close()


def test_a_long_iteration_writes_as_it_goes_and_nothing_is_left_behind(stream: Stream) -> None:
    async def burst() -> int:
        for i in range(JsonLinesHandler._max_pending + 10):
            audit("request", i=i)
        return len(stream.lines())

    async def next_loop() -> None:
        audit("in the next loop")
        await asyncio.sleep(0)

    def messages() -> list[str]:
        return [line["message"] for line in stream.lines()[JsonLinesHandler._max_pending + 10 :]]

    with served_logging(stream):
        assert asyncio.run(burst()) == JsonLinesHandler._max_pending
        assert len(stream.lines()) == JsonLinesHandler._max_pending + 10
        left_to_a_loop_that_stops("left by a loop")
        assert messages() == []
        asyncio.run(next_loop())  # its flush writes what the stopped loop left, too
        assert messages() == ["left by a loop", "in the next loop"]
        left_to_a_loop_that_stops("the last line")
        [handler] = logging.getLogger().handlers
        handler.flush()  # what logging.shutdown, which runs at exit, does to every handler
    assert messages() == ["left by a loop", "in the next loop", "the last line"]


def test_a_stream_that_fails_is_reported_by_logging_not_raised_to_the_request(
    stream: Stream, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(text: str) -> int:
        raise OSError("no space left on device")

    with served_logging(stream):
        stream.write = broken  # type: ignore[method-assign]
        audit("encryptor request", status=200)  # the request goes on
    # The direct way failed, so the line went the logging way, whose handler reports it.
    assert stream.records == 1
    assert "--- Logging error ---" in capsys.readouterr().err
