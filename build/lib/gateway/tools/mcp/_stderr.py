"""A stdio server's stderr into the log: drained always, logged cut, redacted and throttled.

    lines = StderrLines("files", secrets=["sk-..."])
    await drain(read_fd, lines)   # until EOF or cancellation; closes read_fd

The pipe is read as fast as the child writes, whatever the log admits, so a chatty server
never blocks on a full pipe; what the throttle refuses is only counted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

import anyio

from gateway.redact import SECRETS
from gateway.tools.mcp._throttle import Throttle

logger = logging.getLogger("toolgate.mcp")

LINE_MAX = 2000
# Redaction sees this much of a line before it is cut to LINE_MAX, so a secret that
# straddles the cut is still masked whole; an endless line waits for as much.
_WINDOW = 2 * LINE_MAX
BURST = 100
PER_S = 10.0
_CHUNK = 65536


class StderrLines:
    """Bytes of one child's stderr in, log lines out."""

    def __init__(self, server: str, secrets: Sequence[str] = (), clock: Callable[[], float] = time.monotonic) -> None:
        self._server = server
        self._secrets = tuple(secrets)
        self.throttle = Throttle(burst=BURST, per_s=PER_S, report=self._report, clock=clock)
        self._pending = b""
        self._skipping = False  # inside the unlogged rest of an overlong line

    def feed(self, data: bytes) -> None:
        if self._skipping:
            end = data.find(b"\n")
            if end < 0:
                return
            data, self._skipping = data[end + 1 :], False
        head, newline, rest = (self._pending + data).rpartition(b"\n")
        if newline:
            self._lines(head)
        if len(rest) >= _WINDOW:  # a line without end: log its start, skip the rest of it
            self._lines(rest)
            rest, self._skipping = b"", True
        self._pending = rest

    def close(self) -> None:
        """Logs an unfinished last line and reports what was dropped."""
        if self._pending:
            self._lines(self._pending)
            self._pending = b""
        self.throttle.flush()

    def _lines(self, block: bytes) -> None:
        if self.throttle.shut():  # counted without splitting: a flood costs one pass in C
            self.throttle.refuse(block.count(b"\n") + 1)
            return
        lines = block.split(b"\n")
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            if not self.throttle.admit():
                self.throttle.refuse(len(lines) - index - 1)
                return
            text = SECRETS.scrub(line[:_WINDOW].decode(errors="replace"), *self._secrets)
            logger.info("[%s] %s", self._server, text[:LINE_MAX].rstrip())

    def _report(self, dropped: int) -> None:
        logger.warning("dropped %d stderr lines of server %r", dropped, self._server)


async def _read(fd: int, timeout: float) -> bytes | None:
    """The next chunk, b"" at the end, or None when nothing came within the timeout."""
    with anyio.move_on_after(timeout):
        for _ in range(100):  # wakeups with nothing to read are rare; b"" ends the drain
            await anyio.wait_readable(fd)
            try:
                return os.read(fd, _CHUNK)
            except BlockingIOError:
                continue
        return b""
    return None


async def drain(fd: int, lines: StderrLines) -> None:
    """Reads the pipe into ``lines`` until EOF; cancelled, takes what the dead child left."""
    os.set_blocking(fd, False)
    try:
        # Quiet after a flood: wake when the throttle reopens, so the drop count is not
        # held back until the next line or the stop.
        while (chunk := await _read(fd, lines.throttle.due())) != b"":
            if chunk is None:
                lines.throttle.shut()
            else:
                lines.feed(chunk)
    finally:
        for _ in range(64):
            try:
                chunk = os.read(fd, _CHUNK)
            except OSError:
                break
            if not chunk:
                break
            lines.feed(chunk)
        lines.close()
        os.close(fd)
