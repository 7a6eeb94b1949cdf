"""JSON log lines, written by a thread: one per request, plus every library's own lines.

    logs.setup("INFO")              # once per process; every logger then goes through it
    logs.request_line({...})        # the request log line

Records go through a bounded queue to a listener thread that formats, redacts
and writes them, so a log pipe nobody reads (a stuck log shipper) never blocks
the event loop: when the queue is full, lines are dropped and counted, and one
line says how many once the pipe drains. Once the process stops, what the pipe
does not take within STOP_WAIT_S is dropped (`_Pipe`), so a stuck pipe never
holds the exit. Message contents and keys are never logged unless
`log_content = true`, and then only messages, never keys: every line passes
through the redactor (`gateway.redact.SECRETS`) at every level.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
import select
import socket
import stat
import sys
import threading
import time
from typing import Any

import orjson

from gateway import metrics
from gateway.redact import SECRETS

access = logging.getLogger("toolgate.access")

QUEUE_LINES = 10_000
STOP_WAIT_S = 2.0  # what is queued when the process stops gets this long to be written
POLL_S = 0.5  # a writer waiting on a stuck pipe looks at the deadline this often


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


class _Pipe:
    """A stream over a file descriptor whose writes end when the process stops: a pipe or a
    terminal is written through a non-blocking description of its own (the process's stays as
    it is), a socket with MSG_DONTWAIT. While the process runs, a line waits for a reader that
    stopped reading as long as it takes (the queue in front drops what does not fit); once
    stop() sets the deadline, the rest of a line the pipe does not take by then is dropped (the
    next line starts on a line of its own). A regular file is written as it is: it has no
    reader to wait for."""

    def __init__(self, fd: int) -> None:
        self.deadline = float("inf")  # set by stop(): past it, nothing waits
        self.torn = False  # the last line was cut short
        self._socket: socket.socket | None = None
        self._fd = fd
        self._own = False
        mode = os.fstat(fd).st_mode
        if stat.S_ISSOCK(mode):
            self._socket = socket.socket(fileno=os.dup(fd))
        elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            try:
                self._fd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                self._own = True
            except OSError:
                pass  # no /proc: written as it is, blocking

    def write(self, text: str) -> int:
        data = memoryview(("\n" + text if self.torn else text).encode("utf-8", "backslashreplace"))
        whole = len(data)
        self.torn = False
        while data:
            try:
                sent = self._socket.send(data, socket.MSG_DONTWAIT) if self._socket is not None else os.write(self._fd, data)
                data = data[sent:]
                continue
            except BlockingIOError:
                pass
            except InterruptedError:
                continue
            except OSError:
                return 0  # the reader is gone (EPIPE): nothing more to do with this line
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.torn = len(data) < whole
                metrics.LOG_LINES_DROPPED.inc()
                return 0
            self._wait(min(left, POLL_S))
        return len(text)

    def _wait(self, timeout_s: float) -> None:
        poller = select.poll()
        poller.register(self._socket.fileno() if self._socket is not None else self._fd, select.POLLOUT)
        poller.poll(timeout_s * 1000)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
        elif self._own:
            os.close(self._fd)


def _stream_for(stream: Any) -> Any:
    """`stream` itself, unless it is a real file descriptor: then a `_Pipe` over it."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream
    stream.flush()
    return _Pipe(fd)


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
    writer = _Writer(_stream_for(stream or sys.stderr), _handler)
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


def stop() -> None:
    """Write what is queued and stop the listener, in at most about `STOP_WAIT_S` (the pipe may
    be stuck: what it has not taken by then is dropped, and the writer lets go of it)."""
    global _listener
    listener, _listener = _listener, None
    if listener is None or listener._thread is None:
        return
    deadline = time.monotonic() + STOP_WAIT_S
    for handler in listener.handlers:
        stream = getattr(handler, "stream", None)
        if isinstance(stream, _Pipe):
            stream.deadline = deadline
    try:
        # The queue is setup()'s queue.Queue; typeshed knows neither its put() here nor the sentinel.
        listener.queue.put(listener._sentinel, timeout=STOP_WAIT_S)  # type: ignore[attr-defined]
    except queue.Full:
        pass  # past the deadline the writer drops at once: it takes the sentinel soon
    listener._thread.join(STOP_WAIT_S + 1.0)
    if not listener._thread.is_alive():
        for handler in listener.handlers:
            stream = getattr(handler, "stream", None)
            if isinstance(stream, _Pipe):
                stream.close()


atexit.register(stop)


def request_line(fields: dict[str, Any]) -> None:
    if access.isEnabledFor(logging.INFO):
        # The record made directly, not through access.info(): that first walks the stack for
        # the caller's file and line, which no line shows. Handlers and filters run as ever.
        extra = {"fields": {"event": "request", **fields}}
        access.handle(access.makeRecord(access.name, logging.INFO, __file__, 0, "request", (), None, extra=extra))
