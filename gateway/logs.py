"""JSON log lines, written by a thread: one per request, plus every library's own lines.

    logs.setup("INFO")              # once per process; every logger then goes through it
    logs.request_line({...})        # the request log line

Records go through a bounded queue to a listener thread that formats, redacts
and writes them, so a log pipe nobody reads (a stuck log shipper) never blocks
the event loop: when the queue is full, lines are dropped and counted, and one
line says how many once the pipe drains. Message contents and keys are never
logged unless `log_content = true`, and then only messages, never keys: every
line passes through the redactor (`gateway.redact.SECRETS`) at every level.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
import threading
from typing import Any

import orjson

from gateway import metrics
from gateway.redact import SECRETS

access = logging.getLogger("toolgate.access")

QUEUE_LINES = 10_000


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
        try:
            text = orjson.dumps(line, default=str).decode()
        except TypeError:  # nested past orjson's depth: say so rather than lose the line
            text = orjson.dumps({**{k: line[k] for k in ("ts", "level", "logger")}, "message": "(unencodable log fields)"}).decode()
        return SECRETS(text)


class _Dropping(logging.handlers.QueueHandler):
    """Enqueue without blocking; count what a full queue refuses."""

    def __init__(self, q: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(q)
        self.dropped = 0
        self._lock = threading.Lock()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Formatting (tracebacks read source files) happens in the listener thread.
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            with self._lock:
                self.dropped += 1
            metrics.LOG_LINES_DROPPED.inc()

    def take_dropped(self) -> int:
        with self._lock:
            dropped, self.dropped = self.dropped, 0
        return dropped


class _Writer(logging.StreamHandler[Any]):
    """The listener's handler: writes a record, and first the count of any dropped since."""

    def __init__(self, stream: Any, source: _Dropping) -> None:
        super().__init__(stream)
        self.source = source

    def emit(self, record: logging.LogRecord) -> None:
        dropped = self.source.take_dropped()
        if dropped:
            note = logging.LogRecord("toolgate", logging.WARNING, __file__, 0, "log queue was full: %d line(s) dropped", (dropped,), None)
            super().emit(note)
        super().emit(record)


_listener: logging.handlers.QueueListener | None = None
_handler: _Dropping | None = None


def setup(level: str = "INFO", stream: Any = None, *, queue_lines: int = QUEUE_LINES) -> _Dropping:
    """Route every logger (uvicorn's included) through one bounded queue to `stream` (stderr)."""
    global _listener, _handler
    stop()
    q: queue.Queue[logging.LogRecord] = queue.Queue(queue_lines)
    _handler = _Dropping(q)
    writer = _Writer(stream or sys.stderr, _handler)
    writer.setFormatter(JSONFormatter())
    _listener = logging.handlers.QueueListener(q, writer)
    _listener.start()
    root = logging.getLogger()
    root.handlers[:] = [_handler]
    root.setLevel(level)
    for name in ("toolgate", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
        logger.setLevel(level)
    # What nothing caught, in the main thread or another, is a JSON line too, not a bare traceback.
    # (Only over Python's own hooks: a host that installed its own, a test runner, keeps them.)
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _uncaught
    if threading.excepthook is threading.__excepthook__:
        threading.excepthook = _uncaught_in_thread
    return _handler


def _uncaught(kind: type[BaseException], error: BaseException, tb: Any) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, tb)
        return
    logging.getLogger("toolgate").critical("uncaught %s", kind.__name__, exc_info=(kind, error, tb))
    stop()  # the process is about to exit: write the line now


def _uncaught_in_thread(args: Any) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("toolgate").error("uncaught %s in thread %s", args.exc_type.__name__, name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


STOP_WAIT_S = 2.0


def stop() -> None:
    """Write what is queued and stop the listener, waiting at most `STOP_WAIT_S` (the pipe may be stuck)."""
    global _listener
    listener, _listener = _listener, None
    if listener is None or listener._thread is None:
        return
    try:
        # The queue is setup()'s queue.Queue; typeshed knows neither its put() here nor the sentinel.
        listener.queue.put(listener._sentinel, timeout=STOP_WAIT_S)  # type: ignore[attr-defined]
    except queue.Full:
        return  # a daemon thread, left to the exit
    listener._thread.join(STOP_WAIT_S)


atexit.register(stop)


def request_line(fields: dict[str, Any]) -> None:
    if access.isEnabledFor(logging.INFO):
        # The record made directly, not through access.info(): that first walks the stack for
        # the caller's file and line, which no line shows. Handlers and filters run as ever.
        extra = {"fields": {"event": "request", **fields}}
        access.handle(access.makeRecord(access.name, logging.INFO, __file__, 0, "request", (), None, extra=extra))
