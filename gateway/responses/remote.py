"""Remote MCP servers a request names by `server_url`: allowlisted, SSRF-checked, pooled.

    remote = RemoteServers(settings.responses, tool_timeout_s=30)
    remote.admits("https://mcp.example.com/mcp")            # [responses] mcp_server_urls
    async with remote.session(tool, param="tools[0]") as tools:   # 400 / 424 / 429 otherwise
        ...                                                  # the server's tools, for this request
    await remote.close()                                     # at shutdown

A server runs as `McpSource(ServerSpec(transport="http", ...))` (streamable HTTP),
one per (url, headers): sessions are reused by requests that send the same URL
and headers, at most `mcp_sessions` at once (the least recently used idle one
makes room), and one unused for `mcp_idle_s` is closed. The URL goes through the
same guard as `fetch_url` (`netguard`: http(s), ports 80/443, public addresses
only, `mcp_network_allow` opens holes) before the SDK connects; the SDK then
resolves the name again, so a DNS answer that changes in between (rebinding) is
the remaining window, as for any client that cannot pin the address.

The request's `headers` and `authorization` are secrets: they reach the server and
nothing else. Tool results and errors are scrubbed of them before the model, the
client or a log line sees them; the echoed tools and the store never hold them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.config import ResponsesSettings
from gateway.errors import InvalidRequest, McpServerFailed, Overloaded, Problems
from gateway.redact import SECRETS
from gateway.responses.tools import McpTool
from gateway.tools.base import SourceContext, Tool, ToolError, ToolOutput
from gateway.tools.builtin.netguard import Guard, Refused

if TYPE_CHECKING:
    from gateway.tools.mcp import McpSource

log = logging.getLogger("toolgate")

REAP_EVERY_S = 30.0  # how often idle sessions are looked for, at most
# server_label of a remote server: also the prefix of its tools' names on a clash.
_LABEL = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The environment headers are expanded against: a client's header never names a variable
# (they are refused), and this keeps the SDK from falling back to the gateway's own.
_NO_ENVIRON = {"TOOLGATE_REMOTE_MCP": "1"}


# The loggers that see what goes to and comes from a remote server (the SDK logs whole
# messages at debug); their records lose the live sessions' secrets before any handler.
_WIRE_LOGGERS = ("mcp", "mcp.client", "mcp.client.streamable_http", "mcp.client.session", "httpx2", "httpcore2.http11")


class _Scrub(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.secrets: dict[str, int] = {}  # value -> sessions holding it

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            text = record.getMessage()
            clean = SECRETS.scrub(text, *self.secrets)
            if clean != text:
                record.msg, record.args = clean, None
        return True

    def hold(self, secrets: tuple[str, ...]) -> None:
        if not self.secrets:
            for name in _WIRE_LOGGERS:
                logging.getLogger(name).addFilter(self)
        for value in secrets:
            self.secrets[value] = self.secrets.get(value, 0) + 1

    def drop(self, secrets: tuple[str, ...]) -> None:
        for value in secrets:
            left = self.secrets.get(value, 0) - 1
            if left > 0:
                self.secrets[value] = left
            else:
                self.secrets.pop(value, None)
        if not self.secrets:
            for name in _WIRE_LOGGERS:
                logging.getLogger(name).removeFilter(self)


_SCRUB = _Scrub()


def _pattern(url_pattern: str) -> re.Pattern[str]:
    # `*` is the one wildcard; the config allows it only after the host.
    return re.compile(".*".join(re.escape(part) for part in url_pattern.split("*")))


class _Scrubbed(Tool):
    """A remote server's tool whose results and errors never carry the request's secrets."""

    def __init__(self, inner: Tool, secrets: tuple[str, ...]) -> None:
        super().__init__(inner.name, inner.description, inner.parameters, timeout_s=inner.timeout_s)
        self.annotations = inner.annotations
        self._inner = inner
        self._secrets = secrets

    async def call(self, arguments: dict[str, Any]) -> ToolOutput:
        try:
            output = await self._inner.call(arguments)
        except ToolError as exc:
            raise ToolError(SECRETS.scrub(str(exc), *self._secrets)) from None
        scrubbed: ToolOutput = _scrub(output, self._secrets)
        return scrubbed


def _scrub(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return SECRETS.scrub(value, *secrets)
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, secrets) for k, v in value.items()}
    return value


@dataclass(eq=False)
class _Session:
    source: McpSource
    secrets: tuple[str, ...]
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    problem: str = ""  # why it is not usable (once `ready` is set)
    users: int = 0
    used: float = field(default_factory=time.monotonic)


class RemoteServers:
    def __init__(self, settings: ResponsesSettings, *, tool_timeout_s: float = 30.0, guard: Guard | None = None) -> None:
        self.settings = settings
        self.tool_timeout_s = tool_timeout_s
        self._patterns = [_pattern(p) for p in settings.mcp_server_urls]
        self.guard = guard or Guard.from_config(settings.mcp_network_allow, Problems("[responses]"), "mcp_network_allow") or Guard()
        self._sessions: dict[tuple[str, tuple[tuple[str, str], ...]], _Session] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def admits(self, url: str) -> bool:
        return any(p.fullmatch(url) for p in self._patterns)

    def check(self, mcp: McpTool, param: str) -> None:
        """The checks a request can fail before anything connects (400 naming the parameter)."""
        assert mcp.url is not None
        if not self._patterns:
            raise InvalidRequest("server_url is not enabled on this gateway: mcp tools select its configured tool sources by server_label.", param=f"{param}.server_url")
        if not self.admits(mcp.url):
            raise InvalidRequest("This server_url is not one the gateway's config allows ([responses] mcp_server_urls).", param=f"{param}.server_url")
        if not _LABEL.fullmatch(mcp.label):
            raise InvalidRequest("A server_label for a server_url is 1 to 64 letters, digits, '_' or '-'.", param=f"{param}.server_label")
        if any("${" in value for value in mcp.headers.values()):
            raise InvalidRequest("headers must not contain '${'.", param=f"{param}.headers")

    @asynccontextmanager
    async def session(self, mcp: McpTool, *, param: str) -> AsyncIterator[list[Tool]]:
        """The server's tools while the block runs (the session is not closed under it)."""
        assert mcp.url is not None
        try:
            await self.guard.check(mcp.url)
        except Refused as exc:
            raise InvalidRequest(f"server_url is not allowed: {exc}.", param=f"{param}.server_url") from None
        except ToolError as exc:  # the name does not resolve
            raise self._failed(mcp, str(exc)) from None
        session = await self._acquire(mcp)
        try:
            yield [_Scrubbed(tool, session.secrets) for tool in session.source.tools()]
        finally:
            session.users -= 1
            session.used = time.monotonic()

    async def _acquire(self, mcp: McpTool) -> _Session:
        key = (mcp.url or "", tuple(sorted(mcp.headers.items())))
        session = self._sessions.get(key)
        if session is None or (session.ready.is_set() and (session.problem or not session.source.status().ready)):
            if session is not None:
                self._forget(key, session)
            session = await self._open(key, mcp)
        session.users += 1
        try:
            async with asyncio.timeout(self.settings.mcp_connect_timeout_s + 1.0):
                await session.ready.wait()
        except TimeoutError:
            session.users -= 1
            raise self._failed(mcp, f"no answer within {self.settings.mcp_connect_timeout_s:g} s") from None
        except BaseException:
            session.users -= 1
            raise
        if session.problem:
            session.users -= 1
            raise self._failed(mcp, session.problem)
        session.used = time.monotonic()
        return session

    async def _open(self, key: tuple[str, tuple[tuple[str, str], ...]], mcp: McpTool) -> _Session:
        if self._closed:
            raise Overloaded("The gateway is shutting down.", headers={"retry-after": "1"})
        if len(self._sessions) >= self.settings.mcp_sessions:
            idle = [(s.used, k) for k, s in self._sessions.items() if s.users == 0]
            if not idle:
                raise Overloaded(f"All {self.settings.mcp_sessions} remote MCP sessions are in use; retry shortly.", headers={"retry-after": "1"})
            oldest = min(idle)[1]
            self._forget(oldest, self._sessions[oldest])
        # Imported on first use: the MCP SDK takes most of a second to import, which a
        # gateway (and each of its workers) would otherwise pay at every start.
        from gateway.tools.mcp import McpSource, ServerSpec

        spec = ServerSpec(
            name=f"remote:{mcp.label}",
            transport="http",
            url=key[0],
            headers=dict(key[1]),
            timeout_s=self.tool_timeout_s,
            startup_timeout_s=self.settings.mcp_connect_timeout_s,
        )
        source = McpSource(spec)
        secrets = tuple(v for v in (*mcp.headers.values(), *(v.partition(" ")[2] for v in mcp.headers.values())) if v)
        session = self._sessions[key] = _Session(source, secrets)
        _SCRUB.hold(secrets)
        starting = asyncio.ensure_future(self._start(key, session))
        self._tasks.add(starting)  # awaited at close too
        starting.add_done_callback(self._tasks.discard)
        if self._reaper is None:
            self._reaper = asyncio.ensure_future(self._reap())
        return session

    async def _start(self, key: tuple[str, tuple[tuple[str, str], ...]], session: _Session) -> None:
        # In a task of its own: a request that gives up waiting does not cancel a start others wait on.
        try:
            await session.source.start(SourceContext(environ=_NO_ENVIRON))
            status = session.source.status()
            if not status.ready:
                session.problem = SECRETS.scrub(status.detail.removesuffix("; retrying"), *session.secrets) or "no answer"
        except Exception as exc:  # start() never raises; this is a last line
            session.problem = SECRETS.scrub(str(exc), *session.secrets) or type(exc).__name__
        finally:
            session.ready.set()
        if session.problem:
            log.warning("remote MCP server %s: %s", key[0], session.problem)
            self._forget(key, session)

    def _forget(self, key: tuple[str, tuple[tuple[str, str], ...]], session: _Session) -> None:
        if self._sessions.get(key) is session:
            del self._sessions[key]
        task = asyncio.ensure_future(_stop(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reap(self) -> None:
        every = min(REAP_EVERY_S, self.settings.mcp_idle_s / 2)
        while not self._closed:
            await asyncio.sleep(every)
            now = time.monotonic()
            for key, session in list(self._sessions.items()):
                if session.users == 0 and now - session.used >= self.settings.mcp_idle_s:
                    self._forget(key, session)

    def _failed(self, mcp: McpTool, detail: str) -> McpServerFailed:
        # As the hosted API says it: 424, external_connector_error, param "tools".
        return McpServerFailed(f"Error retrieving tool list from MCP server: {mcp.label!r}. {detail}".strip(), param="tools")

    async def close(self) -> None:
        """Stop every session (at shutdown); later requests naming a server_url are refused."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with suppress(asyncio.CancelledError):
                await self._reaper
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(_stop(s) for s in sessions), *self._tasks, return_exceptions=True)


async def _stop(session: _Session) -> None:
    try:
        await session.source.stop()  # bounded by the source itself
    except Exception as exc:
        log.warning("a remote MCP session did not stop cleanly: %s", type(exc).__name__)
    finally:
        _SCRUB.drop(session.secrets)
