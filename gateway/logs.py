"""JSON log lines: one per request, plus the library's warnings, all on stderr.

Message contents and keys are never logged unless `log_content = true`, and
then only messages, never keys.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

access = logging.getLogger("toolgate.access")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger("toolgate")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def request_line(fields: dict[str, Any]) -> None:
    if access.isEnabledFor(logging.INFO):
        access.info("request", extra={"fields": {"event": "request", **fields}})


def now() -> float:
    return time.perf_counter()
