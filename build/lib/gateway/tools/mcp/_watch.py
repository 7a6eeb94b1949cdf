"""The one boundary between a transport's read stream and the session.

``Watched`` wraps the stream the SDK hands the session: its end (the server exited or hung
up) is reported through ``Signals`` at once, and the transport's error items (a stdout line
or SSE event that is not JSON-RPC) become one throttled warning each, without traceback,
instead of reaching the session. Past ``MAX_BAD_MESSAGES`` in a row the stream is taken as
unusable and ends, so the server is restarted as after a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import mcp_types as types
from mcp.client.session import IncomingMessage
from pydantic import ValidationError

from gateway.redact import SECRETS
from gateway.tools.mcp._convert import connection_gone, describe
from gateway.tools.mcp._throttle import Throttle

logger = logging.getLogger("toolgate.mcp")

MAX_BAD_MESSAGES = 50  # in a row; a banner or a stray print stays well below
WARN_BURST = 10
WARN_PER_S = 1.0
_SNIPPET = 200


class Signals:
    """What the serving loop wakes up for: the tool list changed, or the connection is gone."""

    def __init__(self, on_lost: Callable[[], None]) -> None:
        self.changed = False
        self.lost = False
        self._on_lost = on_lost
        self._wake = anyio.Event()

    def change(self) -> None:
        self.changed = True
        self._wake.set()

    def lose(self) -> None:
        if not self.lost:
            self.lost = True
            self._on_lost()  # at once: calls must not reach a dead session while it closes
        self._wake.set()

    async def wait(self) -> None:
        await self._wake.wait()
        self._wake = anyio.Event()

    async def on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self.change()


def _snippet(exc: Exception) -> str | None:
    """What the bad message said, cut to a line; None for a blank line, which is harmless."""
    if isinstance(exc, ValidationError) and exc.error_count():
        said = exc.errors(include_url=False)[0].get("input")
        if isinstance(said, str):
            return repr(said[: 2 * _SNIPPET]) if said.strip() else None
        return repr(said)
    return describe(exc)


class Watched:
    """The transport's read stream as the session reads it (see the module docstring)."""

    def __init__(self, stream: Any, signals: Signals, server: str, secrets: Sequence[str] = ()) -> None:
        self._stream = stream
        self._signals = signals
        self._server = server
        self._secrets = tuple(secrets)
        self._bad = 0  # in a row
        self._ended = False
        self.warnings = Throttle(burst=WARN_BURST, per_s=WARN_PER_S, report=self._report)

    def __getattr__(self, name: str) -> Any:  # e.g. last_context, read by the dispatcher
        return getattr(self._stream, name)

    async def receive(self) -> Any:
        for _ in range(MAX_BAD_MESSAGES + 1):
            if self._ended:
                break
            try:
                item = await self._stream.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._end()
                raise
            if not isinstance(item, Exception):
                self._bad = 0
                return item
            if connection_gone(item):
                continue  # the transport's own failure, handed over before it ends the stream (SSE)
            self._bad += 1
            self._warn(item)
            if self._bad > MAX_BAD_MESSAGES:
                logger.warning("MCP server %r: %d bad messages in a row; restarting it", self._server, self._bad)
                break
        # Ended as a hang-up ends: calls in flight fail as closed, the supervisor reconnects.
        self._end()
        raise anyio.EndOfStream

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.warnings.flush()
        self._signals.lose()

    def _warn(self, exc: Exception) -> None:
        said = _snippet(exc)
        if said is not None and self.warnings.admit():
            said = SECRETS.scrub(said[: 2 * _SNIPPET], *self._secrets)[:_SNIPPET]
            logger.warning("MCP server %r sent a message that is not JSON-RPC, ignored: %s", self._server, said)

    def _report(self, dropped: int) -> None:
        logger.warning("dropped %d warnings about bad messages of server %r", dropped, self._server)

    def __aiter__(self) -> Watched:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> Watched:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
