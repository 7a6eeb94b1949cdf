"""One MCP server as a tool source: one long-lived connection, supervised and restarted.

A background task owns the connection (transport, the SDK's ``Client``, the era's
negotiation, listing, keeping the list fresh) and reconnects with capped, jittered backoff
when it drops. Tools hold no session: each call goes through whatever connection is live,
so a restart never leaves tools pointing at a dead one. What differs between the handshake
era and the stateless 2026-07-28 revision is in ``_era``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from fnmatch import fnmatchcase
from typing import Any

import anyio
import mcp_types as types
from mcp.client import Client
from mcp.client.session import ClientSession
from mcp.shared.dispatcher import ProgressFnT

from gateway.backoff import backoff
from gateway.tools.base import Progress, ServerSource, SourceContext, SourceStatus, Tool, ToolError, ToolOutput, progress_listener
from gateway.tools.mcp import _era
from gateway.tools.mcp._config import ServerSpec, secret_values
from gateway.tools.mcp._convert import connection_gone, describe, to_output, tool_error
from gateway.tools.mcp._guard import Guard, stated_hints
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

    reports_progress = True

    def __init__(self, source: McpSource, remote: types.Tool, timeout_s: float | None) -> None:
        super().__init__(remote.name, remote.description or "", remote.input_schema, timeout_s=timeout_s)
        self.remote_name = remote.name
        self.annotations = stated_hints(remote)
        self._source = source

    async def call(self, arguments: dict[str, Any]) -> ToolOutput:
        return await self._source.call_tool(self.remote_name, arguments)


async def _list_tools(client: Client) -> tuple[list[types.Tool], int]:
    """Every page of the listing, and the first page's ``ttlMs`` (0 in the handshake era)."""
    tools: list[types.Tool] = []
    cursor: str | None = None
    ttl_ms = 0
    for page_no in range(MAX_LIST_PAGES):
        page = await client.list_tools(cursor=cursor, cache_mode="bypass")
        tools.extend(page.tools)
        ttl_ms = page.ttl_ms if page_no == 0 else ttl_ms
        cursor = page.next_cursor
        if not cursor:
            break
    return tools, ttl_ms


def _progress_callback(listener: Progress) -> ProgressFnT:
    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        listener(progress, total, message)

    return on_progress


async def _ping(session: ClientSession, signals: Signals) -> None:
    # Only a dead connection counts: a busy server may answer late, an old one not at all.
    with anyio.move_on_after(KEEPALIVE_S):
        try:
            await session.send_ping()
        except Exception as exc:
            if connection_gone(exc):
                signals.lose()


class McpSource(ServerSource):
    """The tools of one MCP server (see the package docstring for configuration)."""

    def __init__(self, spec: ServerSpec) -> None:
        super().__init__(spec.name, spec.prefix, functools.partial(secret_values, spec))
        self.spec = spec
        self._guard = Guard(spec.name)
        self._live: tuple[Client, Signals] | None = None
        self._learned: str | None = None  # the mode that reached the server last time (protocol = "auto")
        self._discovered: types.DiscoverResult | None = None  # its server/discover answer, reused on reconnect
        self._task: asyncio.Task[None] | None = None
        self._scope: anyio.CancelScope | None = None
        self._settled = asyncio.Event()  # the first attempt ended, either way
        self._stopping = False

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
        client, signals = live
        listener = progress_listener()  # the SDK calls back from its own task: take it here
        on_progress = _progress_callback(listener) if listener is not None else None
        try:
            result = await client.call_tool(name, arguments, progress_callback=on_progress)
        except Exception as exc:
            if connection_gone(exc):
                signals.lose()
            raise tool_error(self.name, exc) from exc
        return to_output(result)

    # The supervisor: the only task that opens, owns and closes connections.

    async def _supervise(self, environ: Mapping[str, str]) -> None:
        attempt = 0  # failures since the last connection that held for STABLE_S
        with anyio.CancelScope() as self._scope:
            while not self._stopping:
                began = anyio.current_time()
                try:
                    await self._connect(environ)
                    detail = "connection lost"
                except Exception as exc:
                    detail = describe(exc)
                    if self.spec.protocol != "auto":
                        detail = f"{detail} (protocol pinned to {self.spec.protocol})"
                if anyio.current_time() - began >= STABLE_S:
                    attempt = 0
                pause = backoff(attempt, first_s=BACKOFF_MIN_S, cap_s=BACKOFF_MAX_S, jitter=0.2)
                attempt += 1
                logger.warning("MCP server %r: %s; retrying in %.1f s", self.name, detail, pause)
                self._down(f"{detail}; retrying")
                await anyio.sleep(pause)

    @asynccontextmanager
    async def _transport(self, environ: Mapping[str, str], signals: Signals) -> AsyncIterator[tuple[Any, Any]]:
        async with TRANSPORTS[self.spec.transport](self.spec, environ) as (read_stream, write_stream):
            yield Watched(read_stream, signals, self.name, self.secrets(environ)), write_stream

    def _client(self, environ: Mapping[str, str], signals: Signals) -> Client:
        mode = _era.mode(self.spec, self._learned)
        return Client(
            self._transport(environ, signals),
            mode=mode,
            prior_discover=self._discovered if mode not in ("auto", "legacy") else None,
            message_handler=signals.on_message,
            client_info=CLIENT_INFO,
            cache=None,  # freshness is ours: the listing is re-read in the background, see _serve
        )

    async def _connect(self, environ: Mapping[str, str]) -> None:
        """One connection: open, negotiate and list within the startup timeout, then serve."""
        signals = Signals(on_lost=lambda: self._lost(signals))
        up = False
        with anyio.CancelScope(deadline=anyio.current_time() + self.spec.startup_timeout_s) as startup:
            try:
                async with self._client(environ, signals) as client:
                    listing, ttl_ms = await _list_tools(client)
                    startup.deadline = math.inf
                    up = True
                    self._learned = _era.learned(client.protocol_version)
                    self._discovered = client.session.discover_result or self._discovered
                    self._up(client, signals, listing)
                    await self._serve(client, signals, ttl_ms)
            except Exception as exc:
                if not up and not connection_gone(exc):
                    # It answered, but not as before: perhaps it changed era. The next attempt asks afresh.
                    self._learned = self._discovered = None
                raise
        if startup.cancelled_caught:
            self._learned = self._discovered = None
            raise TimeoutError(f"no answer within {self.spec.startup_timeout_s:g} s")

    async def _serve(self, client: Client, signals: Signals, ttl_ms: int) -> None:
        era = _era.era_of(client.protocol_version)
        while not signals.lost:
            wait = _era.stale_after_s(self.spec, ttl_ms) if era.poll else KEEPALIVE_S
            with anyio.move_on_after(wait) as idle:
                await signals.wait()
            if signals.lost:
                break
            if signals.changed or (idle.cancelled_caught and era.poll):
                signals.changed = False
                ttl_ms = await self._refresh(client, ttl_ms)
            elif idle.cancelled_caught and era.ping:
                await _ping(client.session, signals)

    async def _refresh(self, client: Client, ttl_ms: int) -> int:
        try:
            with anyio.fail_after(self.spec.startup_timeout_s):
                listing, ttl_ms = await _list_tools(client)
        except Exception as exc:
            if connection_gone(exc):
                raise
            # Keep offering the old list rather than drop the calls in flight.
            logger.warning("MCP server %r: listing tools failed: %s", self.name, describe(exc))
            return ttl_ms
        self._offer(listing)
        return ttl_ms

    def _up(self, client: Client, signals: Signals, listing: list[types.Tool]) -> None:
        self._offer(listing)
        self._live = (client, signals)
        version = client.protocol_version
        self._status = SourceStatus(True, f"{len(self._tools)} tools, protocol {version}")
        self._settled.set()
        logger.info("MCP server %r is up with %d tools (protocol %s)", self.name, len(self._tools), version)

    def _lost(self, signals: Signals) -> None:
        if self._live is not None and self._live[1] is signals:
            self._down("connection lost")

    def _down(self, detail: str) -> None:
        self._live = None
        self._tools = []
        self._status = SourceStatus(False, detail)
        self._settled.set()

    def _offer(self, listing: list[types.Tool]) -> None:
        """Rebuilds the tool list: the configured globs, then the guard (see ``_guard``)."""
        if self.spec.tools is not None:
            listing = [t for t in listing if any(fnmatchcase(t.name, g) for g in self.spec.tools)]
        self._tools = [McpTool(self, remote, self.spec.timeout_s) for remote in self._guard.admit(listing)]
