"""uvicorn, with the limits a gateway in front of paid hosts needs and a shutdown that tells.

    config = server_config(app, settings, host="127.0.0.1", port=8080)
    Server(config).run()

`GuardedHttp` is uvicorn's httptools protocol with three bounds uvicorn does not
set: the request head (request line and headers) must arrive within
`header_timeout_s`, in at most `max_header_bytes` and `max_headers` fields
(else 408 or 431 and the connection closes, before any app code or key check
runs); and a client that reads nothing for `send_timeout_s` while a response is
being written is dropped (its write buffer never grows past uvicorn's high-water
mark, and the request's task learns of the disconnect); one that reads slowly is
not.

`Server` lets running requests finish for `grace_s` after SIGTERM or SIGINT,
then ends each one that is still open with an error (an SSE error event and
`[DONE]`, or a 503) through `drain.end_all()`, and exits 0: a stop that was
asked for is not a crash. SIGHUP reloads the config (`gateway/reload.py`);
`serve_workers` forwards it to every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import multiprocessing
import os
import signal
import socket
import struct
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway import drain, heap, logs, metrics
from gateway.config import Settings
from gateway.errors import error_body
from gateway.pump import CLIENT_LEFT, ClientLeft
from gateway.reload import reload_all

log = logging.getLogger("toolgate")
access = logging.getLogger("toolgate.access")

# After the grace period, what ended requests get to write their last event.
LAST_WORDS_S = 2.0
# After the grace period, how often requests that started late are ended too.
LATE_CHECK_S = 0.1
# Allocations between two young-generation collections while serving (CPython's default: 700).
# Every request allocates a few hundred containers and frees nearly all of them by refcount;
# at 700, the collector ran every few requests and its older generations (the ~50,000 objects
# of the loaded gateway) often enough to cost 10-20 % of a pass-through's CPU (bench/README.md).
GC_YOUNG = 10_000


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    send_timeout_s: float = 30.0


def _refusal(status: int, reason: bytes, message: str, code: str) -> bytes:
    body = orjson.dumps(error_body(message, "invalid_request_error", None, code))
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return head % (status, reason, len(body)) + body


_TOO_LARGE = (431, b"Request Header Fields Too Large", "The request head is too large.", "headers_too_large")
_TOO_MANY = (431, b"Request Header Fields Too Large", "The request has too many header fields.", "too_many_headers")
_TOO_SLOW = (408, b"Request Timeout", "The request head did not arrive in time.", "header_timeout")


class GuardedHttp(HttpToolsProtocol):
    """httptools with bounded request heads and bounded write stalls."""

    # uvicorn's protocol has 28 attributes; six more in its __dict__ would pass CPython's
    # 30 shared keys and give every connection a dict of its own (~1.5 KiB).
    __slots__ = ("_limits", "_head_bytes", "_head_fields", "_head_timer", "_stall_timer", "_got_bytes", "_left")

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._limits: Limits = getattr(config, "toolgate_limits", None) or Limits()
        self._head_bytes = -1  # -1: not inside a request head
        self._head_fields = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._got_bytes = False
        self._left = ClientLeft()  # the request being served hears of a lost connection here

    @property
    def _refused(self) -> bool:
        return self._head_bytes > self._limits.max_header_bytes

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that sends nothing is a head that does not arrive.
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)
        callback = self._left.callback
        if callback is not None and self.cycle is not None and not self.cycle.response_complete:
            callback()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # refused already; the rest is not parsed
        self._got_bytes = True
        super().data_received(data)
        if self._head_bytes >= 0:
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.max_header_bytes:
                self._refuse(_TOO_LARGE)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {CLIENT_LEFT: self._left}  # type: ignore[dict-item]  # ASGI types extensions as dicts
        if self._head_bytes < 0:
            self._start_head()

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._head_fields += 1
        if self._head_fields > self._limits.max_headers:
            self._refuse(_TOO_MANY)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._head_bytes, self._head_fields = -1, 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = _HeadFirst(self.transport, self.loop)  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(self._limits.send_timeout_s, self._stalled, self._unsent())

    def resume_writing(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        super().resume_writing()

    def _start_head(self) -> None:
        self._head_bytes, self._head_fields = 0, 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._limits.header_timeout_s, self._head_late)

    def _head_late(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request's head waits behind a response still being written: its
            # time starts when that one ends, not now (a 408 here would cut the response).
            self._head_timer = self.loop.call_later(self._limits.header_timeout_s, self._head_late)
            return
        self._refuse(_TOO_SLOW)

    def _refuse(self, why: tuple[int, bytes, str, str]) -> None:
        status, reason, message, code = why
        self._head_bytes = self._limits.max_header_bytes + 1
        self._cancel_timers()
        if self.transport.is_closing():
            return
        if status == 408 and not self._got_bytes:
            # Never sent a byte (an idle or pre-opened connection): close quietly.
            self.transport.close()
            return
        self.transport.write(_refusal(status, reason, message, code))
        self.transport.close()
        metrics.rejected(status)
        access.info("request", extra={"fields": {"event": "request", "status": status, "error": message, "client": _peer(self.client)}})

    def _unsent(self) -> int:
        """Bytes written that the client has not yet taken: the transport's buffer, and the
        kernel's send queue (which drains as the client reads; the buffer only in bursts)."""
        unsent = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                unsent += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        return unsent

    def _stalled(self, unsent_before: int) -> None:
        # Paused past send_timeout_s: a client that took some meanwhile is still reading (one
        # large write stays above the high-water mark until nearly all of it is gone), and
        # gets another while; one that took nothing has stopped.
        self._stall_timer = None
        unsent = self._unsent()
        if unsent < unsent_before:
            self._stall_timer = self.loop.call_later(self._limits.send_timeout_s, self._stalled, unsent)
            return
        sent_all = self.cycle is not None and self.cycle.response_complete
        log.warning(
            "client %s stopped reading for %g s; dropping the connection%s",
            _peer(self.client),
            self._limits.send_timeout_s,
            f" with {unsent} bytes of a finished response unsent" if sent_all else "",
        )
        self.transport.abort()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._stall_timer = None


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _HeadFirst:
    """The transport one response is written through: the status line and headers wait for
    the first piece of the body, so a whole response goes out in one write (one system call,
    where uvicorn makes two); a head with nothing after it in the same turn of the loop (a
    stream waiting for its first token) goes out on its own at the end of that turn."""

    __slots__ = ("transport", "loop", "head")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport, self.loop = transport, loop
        self.head: bytes | None = b""  # b"": nothing written yet; None: the head is out

    def write(self, data: bytes) -> None:
        head = self.head
        if head is None:
            self.transport.write(data)
        elif head:
            self.head = None
            self.transport.write(head + data)
        elif data == _CONTINUE:  # the client waits for it before sending the body
            self.transport.write(data)
        else:
            self.head = data
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        head, self.head = self.head, None
        if head and not self.transport.is_closing():
            self.transport.write(head)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


def _peer(client: Any) -> str:
    return f"{client[0]}:{client[1]}" if client else "unknown"


class Server(uvicorn.Server):
    """uvicorn's server with the gateway's shutdown: grace, then last words, then exit 0."""

    def __init__(self, config: uvicorn.Config, *, grace_s: float = 30.0) -> None:
        # uvicorn's own wait gets the margin for last words; the grace period is ours.
        config.timeout_graceful_shutdown = int(grace_s + LAST_WORDS_S) + 1
        super().__init__(config)
        self.grace_s = grace_s
        self._gc: tuple[int, ...] | None = None  # the collector's thresholds before serving

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        heap.mmap_large_blocks()  # a request's large transient buffers leave no holes in the C heap
        self._gc = gc.get_threshold()
        gc.set_threshold(max(GC_YOUNG, self._gc[0]), *self._gc[1:])

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets)
        finally:
            if self._gc is not None:
                gc.set_threshold(*self._gc)

    def handle_exit(self, sig: int, frame: Any) -> None:
        drain.begin()
        super().handle_exit(sig, frame)

    async def _wait_tasks_to_complete(self) -> None:
        # (uvicorn's private step of shutdown(): the one place to act between
        # "connections still open" and "cancel them".)
        try:
            async with asyncio.timeout(self.grace_s):
                await super()._wait_tasks_to_complete()
            return
        except TimeoutError:
            pass
        ended = drain.end_all()
        log.warning("grace period of %g s over: ending %d open request(s)", self.grace_s, ended)
        # A request whose body was still arriving starts serving after that: end it too,
        # rather than let uvicorn cancel it mid-stream at its own timeout.
        waiting = asyncio.ensure_future(super()._wait_tasks_to_complete())
        try:
            while not waiting.done():
                await asyncio.wait({waiting}, timeout=LATE_CHECK_S)
                drain.end_all()
            await waiting
        finally:
            waiting.cancel()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals(), _hangup_reloads():
            yield
            # uvicorn re-raises a captured signal after shutdown (exit status -15);
            # a shutdown that was asked for and done is a clean exit.
            self._captured_signals.clear()


@contextlib.contextmanager
def _hangup_reloads() -> Iterator[None]:
    """SIGHUP reloads the config of every app this process serves (`gateway/reload.py`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous = signal.signal(signal.SIGHUP, lambda *_: loop.call_soon_threadsafe(reload_all))
    # A worker starts with SIGHUP blocked (see serve_workers): from here on it is handled.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


def server_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """uvicorn's Config with the gateway's limits from `[server]`."""
    server = settings.server
    config = uvicorn.Config(
        app,
        http=GuardedHttp,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_keep_alive=max(1, round(server.keep_alive_s)),
        **options,
    )
    config.toolgate_limits = Limits(  # type: ignore[attr-defined]
        max_header_bytes=server.max_header_bytes,
        max_headers=server.max_headers,
        header_timeout_s=server.header_timeout_s,
        send_timeout_s=server.send_timeout_s,
    )
    return config


def _worker(config: uvicorn.Config, grace_s: float, log_level: str) -> None:
    # A spawned process starts with bare logging: JSON at the supervisor's level from the
    # first line, before uvicorn or the app say anything (the app's factory sets it again).
    logs.setup(log_level)
    try:
        # Each worker listens on its own SO_REUSEPORT socket: the kernel spreads
        # connections evenly, where one shared socket lets the busiest worker take most.
        sock = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((config.host, config.port))
        sock.listen(config.backlog)
        Server(config, grace_s=grace_s).run(sockets=[sock])
    except Exception:
        log.exception("worker %d failed", os.getpid())
        logs.stop()
        raise SystemExit(1) from None
    logs.stop()


def serve_workers(config: uvicorn.Config, workers: int, grace_s: float) -> None:
    """Run `workers` processes until SIGTERM or SIGINT, restarting any that die; exits 0."""
    probe = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    probe.bind((config.host, config.port))  # a port in use fails here, once, not in every worker
    spawn = multiprocessing.get_context("spawn")
    log_level = logging.getLevelName(logging.getLogger().getEffectiveLevel())  # `--log-level`, as the CLI set it
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    processes: list[multiprocessing.process.BaseProcess] = []
    # SIGHUP: every worker reloads its config.
    signal.signal(signal.SIGHUP, lambda *_: _signal_all(processes, signal.SIGHUP))

    def start() -> multiprocessing.process.BaseProcess:
        process = spawn.Process(target=_worker, args=(config, grace_s, log_level), daemon=False)
        process.start()
        return process

    with _hangup_held():
        processes.extend(start() for _ in range(workers))
    restarts = 0
    while not stop.wait(0.5):
        for i, process in enumerate(processes):
            if not process.is_alive() and not stop.is_set():
                metrics.process_dead(process.pid)  # its in-flight and up gauges died with it
                restarts += 1
                log.error("worker %d exited with %s; starting another (%d restarts)", process.pid, process.exitcode, restarts)
                time.sleep(min(5.0, 0.2 * restarts))  # a worker that dies at start must not spin
                with _hangup_held():
                    processes[i] = start()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s + LAST_WORDS_S + 5
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(1)
        metrics.process_dead(process.pid)
    probe.close()


@contextlib.contextmanager
def _hangup_held() -> Iterator[None]:
    """SIGHUP blocked meanwhile. A worker started inside inherits it blocked and unblocks it once
    it can reload: one sent while it starts waits for that instead of killing it (SIGHUP's default)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def _signal_all(processes: list[multiprocessing.process.BaseProcess], sig: int) -> None:
    for process in processes:
        if process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)
