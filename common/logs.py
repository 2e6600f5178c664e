"""Log set-up of the gateway and worker processes: one JSON object per line, or plain text.

``configure_logging`` replaces the root logger's handlers with one stderr handler, so every library that logs
through ``logging`` (uvicorn, mlflow, ``warnings`` via ``logging.captureWarnings``) comes out in one format.
A JSON line holds::

    {"ts": "2025-01-31T12:00:00.123+00:00", "level": "INFO", "logger": "tandem.gateway.requests",
     "msg": "POST /v2/models/{model}/infer 200", ...the record's ``extra`` fields..., "exc": "Traceback ..."}

Fields passed as ``logger.info(..., extra={"status": 200})`` become top-level keys (values JSON-encoded, or
``str()`` when they are not JSON types). Newlines inside values are escaped, so a record is always one line.
What goes into a record is the caller's responsibility: identifiers are hashed first (``common/privacy.py``)
and request bodies are never logged.

``log_line`` is for lines written once per request: where only this set-up's JSON handler would see the record,
it writes the same line straight to that handler's stream, without a ``LogRecord`` and the handler chain. On the
gateway at saturation that chain cost a sixth of the requests it could answer (ranker, 64 clients, eight
interleaved rounds: 2,167 req/s with the request log on, 2,582 with it off; written straight, 2,532 against
2,236). Anywhere else (another handler or formatter, a filter, a logger that does not propagate) the record goes
through ``logging`` as usual.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULT_LEVEL = logging.INFO
# Attributes every LogRecord has: anything else on a record came from ``extra=`` and is written as a field.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line (see the module docstring for its keys)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single-line JSON object."""
        fields = {key: value for key, value in record.__dict__.items() if key not in _RECORD_ATTRIBUTES}
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        return json_line(record.created, record.levelname, record.name, record.getMessage(), fields)


def json_line(created: float, level: str, logger: str, msg: str, fields: Mapping[str, Any]) -> str:
    """One JSON log line (no newline): ``ts``, ``level``, ``logger``, ``msg``, then ``fields`` not named so."""
    entry: dict[str, Any] = {"ts": _timestamp(created), "level": level, "logger": logger, "msg": msg}
    for key, value in fields.items():
        if key not in entry:
            entry[key] = value
    return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


_last_second: tuple[int, str] = (-1, "")
"""The last whole second formatted, and its text: most lines of a busy process share the second of the line
before. One tuple, replaced whole, so a thread never pairs one second with another's text."""


def _timestamp(created: float) -> str:
    """``created`` in UTC as ISO 8601 to the millisecond, as ``datetime.isoformat(timespec="milliseconds")``."""
    global _last_second
    second = int(created)
    micros = round((created - second) * 1_000_000)  # datetime.fromtimestamp rounds to the microsecond too
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    cached_second, text = _last_second
    if second != cached_second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, text)
    return f"{text}.{micros // 1000:03d}+00:00"


class _JsonStreamHandler(logging.StreamHandler):
    """The handler ``configure_logging(json=True)`` installs: ``log_line`` may write to its stream itself."""


def log_line(logger: logging.Logger, level: int, msg: str, fields: dict[str, Any]) -> None:
    """``logger.log(level, msg, extra=fields)``: the same line, written straight to stderr when nothing else
    would see the record (see the module docstring). ``msg`` is not %-formatted."""
    if not logger.isEnabledFor(level):
        return
    handler = _sole_json_handler(logger, level)
    if handler is None:
        logger.log(level, msg, extra=fields)  # no args: the message is not %-formatted
        return
    line = json_line(time.time(), logging.getLevelName(level), logger.name, msg, fields)
    handler.acquire()
    try:
        handler.stream.write(line + handler.terminator)
        handler.flush()
    except Exception:  # as ``StreamHandler.emit``: a failed write is reported, not raised into the request
        handler.handleError(logging.makeLogRecord({"name": logger.name, "levelno": level, "msg": msg}))
    finally:
        handler.release()


def _sole_json_handler(logger: logging.Logger, level: int) -> _JsonStreamHandler | None:
    """The handler a record of ``logger`` at ``level`` would reach, if it is the only one and nothing filters."""
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        if current.handlers:
            if current.parent is not None or len(current.handlers) != 1:
                return None  # a handler below the root's, or beside it: logging decides
            handler = current.handlers[0]
            sole = (
                type(handler) is _JsonStreamHandler
                and type(handler.formatter) is JsonFormatter
                and not handler.filters
                and level >= handler.level
            )
            return handler if sole else None  # type: ignore[return-value]
        if not current.propagate:
            return None
        current = current.parent
    return None


def configure_logging(level: int | str | None = None, *, json: bool = True) -> None:
    """Send every log record to stderr, as JSON lines (``json``) or as text, at ``level`` and above.

    ``level`` None keeps the root logger's level when logging was already set up (the ``tandem`` command sets
    it from ``--log-level``), else INFO. Call once, from a process's entry point.
    """
    # The logging HOWTO's "Optimization" switches: no formatter here writes the caller's file and line, thread,
    # process or task, and finding them is a third of a request log line's cost.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # type: ignore[attr-defined]  # Python 3.12+; ignored before
    root = logging.getLogger()
    if level is None:
        level = root.level if root.handlers else DEFAULT_LEVEL
    handler = _JsonStreamHandler(sys.stderr) if json else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json else logging.Formatter(TEXT_FORMAT))
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
