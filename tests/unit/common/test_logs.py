"""JSON log lines and the process log set-up."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem.common.logs import JsonFormatter, configure_logging


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
