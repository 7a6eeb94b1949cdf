"""One MCP server as a tool source: one long-lived session, supervised and restarted.

A background task owns the connection (transport, ``ClientSession``, handshake, listing)
and reconnects with capped, jittered backoff when it drops. Tools hold no session: each
call goes through whatever session is live, so a restart never leaves tools pointing at
a dead one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import random
from collections.abc import Mapping, Sequence
from contextlib import suppress
from fnmatch import fnmatchcase
from typing import Any

import anyio
import mcp_types as types
from mcp.client.session import ClientSession

from gateway.tools.base import SourceContext, SourceStatus, Tool, ToolError, ToolOutput
from gateway.tools.mcp._config import ServerSpec, secret_values
from gateway.tools.mcp._convert import connection_gone, describe, to_output, tool_error
from gateway.tools.mcp._transport import TRANSPORTS
from gateway.tools.mcp._watch import Signals, Watched

logger = logging.getLogger("toolgate.mcp")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_S = 10.0  # a connection that lasted this long resets the backoff
STOP_TIMEOUT_S = 10.0  # the SDK's own shutdown escalation takes at most about 6.5 s
# An idle HTTP session has no other way to notice that its server died or forgot it.
KEEPALIVE_S = 15.0
MAX_LIST_PAGES = 100
CLIENT_INFO = types.Implementation(name="toolgate", version="0.1.0")


class McpTool(Tool):
    """A tool of an MCP server; ``remote_name`` survives ``renamed()``.

    ``annotations`` holds the hints the server stated, under their wire names; an absent hint
    means the protocol's default (``destructiveHint`` and ``openWorldHint``: true, the others false).
    """

    def __init__(self, source: McpSource, remote: types.Tool, timeout_s: float) -> None:
        super().__init__(remote.name, remote.description or "", remote.input_schema, timeout_s=timeout_s)
        self.remote_name = remote.name
        self.annotations = _annotations(remote)
        self._source = source

    async def call(self, arguments: dict[str, Any]) -> ToolOutput:
        return await self._source.call_tool(self.remote_name, arguments)


def _annotations(tool: types.Tool) -> dict[str, Any] | None:
    if tool.annotations is None:
        return None
    return tool.annotations.model_dump(by_alias=True, exclude_none=True, mode="json") or None


def _digest(tool: types.Tool) -> str:
    # Annotations count: a tool listed read-only, then destructive, is a changed tool.
    definition = {"description": tool.description or "", "inputSchema": tool.input_schema, "annotations": _annotations(tool)}
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()


async def _list_tools(session: ClientSession) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(MAX_LIST_PAGES):
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


async def _ping(session: ClientSession, signals: Signals) -> None:
    # Only a dead connection counts: a busy server may answer late, an old one not at all.
    with anyio.move_on_after(KEEPALIVE_S):
        try:
            await session.send_ping()
        except Exception as exc:
            if connection_gone(exc):
                signals.lose()


class McpSource:
    """The tools of one MCP server (see the package docstring for configuration)."""

    def __init__(self, spec: ServerSpec) -> None:
        self.name = spec.name
        self.prefix = spec.prefix
        self.spec = spec
        self._tools: list[Tool] = []
        self._digests: dict[str, str] = {}  # first definition seen, per tool name
        self._disabled: set[str] = set()
        self._status = SourceStatus(False, "not started")
        self._live: tuple[ClientSession, Signals] | None = None
        self._task: asyncio.Task[None] | None = None
        self._scope: anyio.CancelScope | None = None
        self._settled = asyncio.Event()  # the first attempt ended, either way
        self._stopping = False
        self._environ: Mapping[str, str] | None = None  # what start() was given

    def tools(self) -> Sequence[Tool]:
        return self._tools

    def status(self) -> SourceStatus:
        return self._status

    def secrets(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """The values of the ``env`` and ``headers`` tables, expanded, for the redaction layer::

            SECRETS.add(*source.secrets())

        Expanded against ``environ``, else what ``start()`` was given, else the process's.
        """
        return secret_values(self.spec, environ or self._environ or os.environ)

    async def start(self, ctx: SourceContext) -> None:
        """Connects, or records why not and keeps trying in the background; never raises."""
        if self._task is not None:
            return
        environ: Mapping[str, str] = ctx.environ or os.environ
        self._environ = environ
        self._stopping = False
        self._settled = asyncio.Event()
        self._status = SourceStatus(False, "starting")
        self._task = asyncio.create_task(self._supervise(environ), name=f"toolgate-mcp-{self.name}")
        try:
            await asyncio.wait_for(asyncio.shield(self._settled.wait()), self.spec.startup_timeout_s + 0.5)
        except TimeoutError:
            if not self._status.ready:
                self._status = SourceStatus(False, f"no answer within {self.spec.startup_timeout_s:g} s; retrying")

    async def stop(self) -> None:
        """Closes the session; a stdio server gets stdin closed, then SIGTERM, then SIGKILL."""
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        if self._scope is not None:
            self._scope.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT_S)
        except TimeoutError:
            logger.warning("MCP server %r did not shut down in time", self.name)
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        self._down("stopped")

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> ToolOutput:
        live = self._live
        if live is None:
            raise ToolError(f"MCP server {self.name!r} is not available: {self._status.detail}")
        session, signals = live
        try:
            result = await session.call_tool(name, arguments)
        except Exception as exc:
            if connection_gone(exc):
                signals.lose()
            raise tool_error(self.name, exc) from exc
        return to_output(result)

    # The supervisor: the only task that opens, owns and closes connections.

    async def _supervise(self, environ: Mapping[str, str]) -> None:
        delay = BACKOFF_MIN_S
        with anyio.CancelScope() as self._scope:
            while not self._stopping:
                began = anyio.current_time()
                try:
                    await self._connect(environ)
                    detail = "connection lost"
                except Exception as exc:
                    detail = describe(exc)
                if anyio.current_time() - began >= STABLE_S:
                    delay = BACKOFF_MIN_S
                pause = delay * random.uniform(0.8, 1.2)
                delay = min(delay * 2, BACKOFF_MAX_S)
                logger.warning("MCP server %r: %s; retrying in %.1f s", self.name, detail, pause)
                self._down(f"{detail}; retrying")
                await anyio.sleep(pause)

    async def _connect(self, environ: Mapping[str, str]) -> None:
        """One connection: open, handshake and list within the startup timeout, then serve."""
        signals = Signals(on_lost=lambda: self._lost(signals))
        open_transport = TRANSPORTS[self.spec.transport]
        with anyio.CancelScope(deadline=anyio.current_time() + self.spec.startup_timeout_s) as startup:
            async with open_transport(self.spec, environ) as (read_stream, write_stream):
                async with ClientSession(
                    Watched(read_stream, signals, self.name, self.secrets(environ)),
                    write_stream,
                    message_handler=signals.on_message,
                    client_info=CLIENT_INFO,
                ) as session:
                    await session.initialize()
                    listing = await _list_tools(session)
                    startup.deadline = math.inf
                    self._up(session, signals, listing)
                    await self._serve(session, signals)
        if startup.cancelled_caught:
            raise TimeoutError(f"no answer within {self.spec.startup_timeout_s:g} s")

    async def _serve(self, session: ClientSession, signals: Signals) -> None:
        while not signals.lost:
            with anyio.move_on_after(KEEPALIVE_S) as idle:
                await signals.wait()
            if signals.lost:
                break
            if signals.changed:
                signals.changed = False
                await self._refresh(session)
            elif idle.cancelled_caught:
                await _ping(session, signals)

    async def _refresh(self, session: ClientSession) -> None:
        try:
            listing = await _list_tools(session)
        except Exception as exc:
            if connection_gone(exc):
                raise
            # Keep offering the old list rather than drop the calls in flight.
            logger.warning("MCP server %r: listing tools failed: %s", self.name, describe(exc))
            return
        self._offer(listing)

    def _up(self, session: ClientSession, signals: Signals, listing: list[types.Tool]) -> None:
        self._offer(listing)
        self._live = (session, signals)
        self._status = SourceStatus(True, f"{len(self._tools)} tools")
        self._settled.set()
        logger.info("MCP server %r is up with %d tools", self.name, len(self._tools))

    def _lost(self, signals: Signals) -> None:
        if self._live is not None and self._live[1] is signals:
            self._down("connection lost")

    def _down(self, detail: str) -> None:
        self._live = None
        self._tools = []
        self._status = SourceStatus(False, detail)
        self._settled.set()

    def _offer(self, listing: list[types.Tool]) -> None:
        """Rebuilds the tool list; a tool whose definition changed since first seen stays out."""
        tools: list[Tool] = []
        for remote in listing:
            if self.spec.tools is not None and not any(fnmatchcase(remote.name, g) for g in self.spec.tools):
                continue
            first = self._digests.setdefault(remote.name, _digest(remote))
            if first != _digest(remote) and remote.name not in self._disabled:
                self._disabled.add(remote.name)
                logger.warning(
                    "MCP server %r changed the definition of tool %r after first listing it; "
                    "the tool is disabled until the gateway restarts",
                    self.name,
                    remote.name,
                )
            if remote.name not in self._disabled:
                tools.append(McpTool(self, remote, self.spec.timeout_s))
        self._tools = tools
