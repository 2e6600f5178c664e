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
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
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
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json else logging.Formatter(TEXT_FORMAT))
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
