"""JSON log lines and the process log set-up."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tandem.common.logs import JsonFormatter, _JsonStreamHandler, _timestamp, configure_logging, log_line


def _record(msg: str = "hello %s", args: tuple = ("world",), **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("tandem.test", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_a_record_is_one_json_line_with_its_extra_fields() -> None:
    line = JsonFormatter().format(_record(status=200, path=Path("/x"), note="two\nlines"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "hello world" and entry["level"] == "INFO" and entry["logger"] == "tandem.test"
    assert entry["status"] == 200 and entry["path"] == "/x" and entry["note"] == "two\nlines"
    assert entry["ts"].endswith("+00:00")
    assert not {"args", "msg_args", "levelno", "pathname", "process"} & set(entry)


def test_exceptions_are_kept_on_the_same_line() -> None:
    try:
        raise ValueError("broken on purpose")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: broken on purpose" in json.loads(line)["exc"]


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def test_configure_logging_replaces_the_handlers(root_logger: logging.Logger, monkeypatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root_logger.setLevel(logging.WARNING)
    configure_logging(json=True)
    assert len(root_logger.handlers) == 1 and root_logger.level == logging.WARNING  # configured: level kept
    logging.getLogger("tandem.x").warning("careful", extra={"n": 1})
    assert json.loads(stream.getvalue())["n"] == 1

    configure_logging(logging.DEBUG, json=False)
    logging.getLogger("tandem.x").debug("plain")
    assert stream.getvalue().splitlines()[-1].endswith("DEBUG tandem.x: plain")


def test_an_unconfigured_process_logs_at_info(root_logger: logging.Logger) -> None:
    for handler in list(root_logger.handlers):
        root_logger.removeHandler(handler)
    configure_logging(json=True)
    assert root_logger.level == logging.INFO


REQUEST_FIELDS = {"request_id": "r-1", "method": "POST", "status": 200, "latency_ms": 1.5, "api_key": None}


@pytest.fixture
def json_stderr(root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging(logging.INFO, json=True)
    return stream


def only_the_json_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop the handlers pytest adds to the root logger around each test's call, for its duration."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [h for h in root.handlers if isinstance(h, _JsonStreamHandler)])


def test_a_direct_line_is_the_line_logging_writes(json_stderr: io.StringIO, monkeypatch) -> None:
    logger = logging.getLogger("tandem.test.requests")
    # One clock for the line and the record (LogRecord reads time_ns from Python 3.13 on).
    monkeypatch.setattr(time, "time", lambda: 1_765_000_000.25)
    monkeypatch.setattr(time, "time_ns", lambda: 1_765_000_000_250_000_000)
    records: list[logging.LogRecord] = []
    make_record = logger.makeRecord
    monkeypatch.setattr(
        logger, "makeRecord", lambda *args, **kw: records.append(make_record(*args, **kw)) or records[-1]
    )
    only_the_json_handler(monkeypatch)
    log_line(logger, logging.INFO, "POST /x 200 100%", REQUEST_FIELDS)
    assert records == []  # straight to the stream
    logger.addFilter(lambda record: True)  # a filter: now the record goes through logging
    try:
        log_line(logger, logging.INFO, "POST /x 200 100%", REQUEST_FIELDS)
    finally:
        logger.filters.clear()
    assert len(records) == 1
    direct, through_logging = json_stderr.getvalue().splitlines()
    assert direct == through_logging
    assert json.loads(direct) == {
        "ts": "2025-12-06T05:46:40.250+00:00", "level": "INFO", "logger": "tandem.test.requests",
        "msg": "POST /x 200 100%", **REQUEST_FIELDS,
    }  # fmt: skip


def test_another_handler_gets_the_record_with_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tandem.test.requests"):
        log_line(logging.getLogger("tandem.test.requests"), logging.INFO, "POST /x 200", REQUEST_FIELDS)
    (record,) = caplog.records
    assert record.getMessage() == "POST /x 200" and record.request_id == "r-1" and record.status == 200


@pytest.mark.parametrize("change", ["no propagation", "own handler", "level"])
def test_the_line_goes_through_logging_or_nowhere_as_logging_would_send_it(
    json_stderr: io.StringIO, change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = logging.getLogger("tandem.test.elsewhere")
    only_the_json_handler(monkeypatch)
    own = io.StringIO()
    if change == "no propagation":
        logger.propagate = False
    elif change == "own handler":
        logger.addHandler(logging.StreamHandler(own))
    else:
        logger.setLevel(logging.WARNING)
    try:
        log_line(logger, logging.INFO, "POST /x 200", REQUEST_FIELDS)
    finally:
        logger.propagate = True
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)
    expected_own = "POST /x 200\n" if change == "own handler" else ""
    expected_root = 1 if change == "own handler" else 0  # an own handler, then the root's, as logging does
    assert own.getvalue() == expected_own
    assert len(json_stderr.getvalue().splitlines()) == expected_root


@pytest.mark.parametrize("created", [0.0, 1_765_000_000.0004, 1_765_000_000.9994999, 1_765_000_000.9999996, 2.5])
def test_timestamps_match_datetime_to_the_millisecond(created: float) -> None:
    expected = datetime.fromtimestamp(created, tz=timezone.utc).isoformat(timespec="milliseconds")
    assert _timestamp(created) == expected
    assert _timestamp(created) == expected  # the cached second gives the same


def test_a_formatter_set_on_the_handler_is_used(json_stderr: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    only_the_json_handler(monkeypatch)
    (handler,) = logging.getLogger().handlers
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log_line(logging.getLogger("tandem.test.requests"), logging.INFO, "POST /x 200", REQUEST_FIELDS)
    assert json_stderr.getvalue() == "INFO POST /x 200\n"
