"""Opening one connection to an MCP server: a stdio subprocess, a streamable HTTP session,
or an HTTP+SSE one (the transport before streamable HTTP, which many servers still speak).

``TRANSPORTS[spec.transport](spec, environ)`` is an async context manager yielding the SDK's
stream pair; leaving it stops the subprocess (the SDK closes stdin, waits, terminates the
process group, then kills it; ``_supervisor`` makes that reach the server's whole tree) or
closes the HTTP session (for SSE: its event stream). A server's stderr goes to the log through ``_stderr``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import httpx2
from mcp.client.sse import sse_client
from mcp.client.stdio import FORCE_KILL_TIMEOUT, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from gateway import tracing
from gateway.tools.mcp._convert import describe
from gateway.tools.mcp._config import ServerSpec, secret_values
from gateway.tools.mcp import _supervisor
from gateway.tools.mcp._stderr import StderrLines, drain
from gateway.tools.variables import UnsetVariable, expand

# What a child inherits from the gateway: enough to run, nothing secret. Anything else
# must be named in the server's `env` table.
INHERITED = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ")


class StartError(Exception):
    """The server cannot be started as configured; the message is one line, without secrets."""


def child_environment(spec: ServerSpec, environ: Mapping[str, str]) -> dict[str, str]:
    env = {key: environ[key] for key in INHERITED if key in environ}
    try:
        env.update({key: expand(value, environ) for key, value in spec.env.items()})
    except UnsetVariable as exc:
        raise StartError(f"env: {exc}") from None
    return env


def resolve_command(command: str, path: str | None, cwd: str | None) -> str:
    """The executable's absolute path, looked up as the child would, or StartError."""
    if os.sep in command:
        candidate = os.path.join(cwd or os.getcwd(), command)
        found = candidate if os.path.isfile(candidate) and os.access(candidate, os.X_OK) else None
    else:
        found = shutil.which(command, path=path)
    if found is None:
        raise StartError(f"command not found: {command}")
    return os.path.abspath(found)


def command_line(executable: str, args: Sequence[str]) -> tuple[str, list[str]]:
    """What the SDK runs: on Linux the server under ``_supervisor``, elsewhere the server itself.

    Elsewhere a server learns of the gateway's death only from stdin's EOF.
    """
    if sys.platform.startswith("linux") and sys.executable:
        # Half the SDK's SIGTERM-to-SIGKILL wait: the supervisor must kill the tree first.
        grace = str(FORCE_KILL_TIMEOUT / 2)
        script = os.path.abspath(_supervisor.__file__)
        return sys.executable, ["-I", "-S", script, str(os.getpid()), grace, executable, *args]
    return executable, list(args)


class _QuietParseErrors(logging.Filter):
    """Drops the SDK's traceback for a stdout line that is not JSON-RPC.

    The read-stream watcher (``_watch``) logs one line for it instead, naming the server.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Failed to parse JSONRPC message from server"


_QUIET = _QuietParseErrors()


class _OneLineSseErrors(logging.Filter):
    """Makes the SDK's SSE-client tracebacks (a server that died, a POST refused) one line.

    The source logs the consequence itself, naming the server; the cause stays, shortened
    and without the URL (which may carry a token).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {describe(record.exc_info[1])}"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


_ONE_LINE = _OneLineSseErrors()


@asynccontextmanager
async def open_stdio(spec: ServerSpec, environ: Mapping[str, str]) -> AsyncIterator[tuple[Any, ...]]:
    env = child_environment(spec, environ)
    if spec.cwd is not None and not os.path.isdir(spec.cwd):
        raise StartError(f"cwd is not a directory: {spec.cwd}")
    executable = resolve_command(spec.command, env.get("PATH"), spec.cwd)
    command, args = command_line(executable, spec.args)
    # "replace": with the default "strict", bytes that are not UTF-8 kill the SDK's stdout
    # reader while its shielded drain keeps the stream open, and every call hangs. Replaced,
    # they make a line that is not JSON-RPC, which the read-stream watcher handles.
    params = StdioServerParameters(command=command, args=args, env=env, cwd=spec.cwd, encoding_error_handler="replace")
    logging.getLogger("mcp.client.stdio").addFilter(_QUIET)  # once: addFilter skips a repeat
    lines = StderrLines(spec.name, secrets=secret_values(spec, environ))
    read_fd, write_fd = os.pipe()
    async with anyio.create_task_group() as tg:
        tg.start_soon(drain, read_fd, lines)
        try:
            with open(write_fd, "w") as errlog:
                async with stdio_client(params, errlog=errlog) as streams:
                    errlog.close()  # the child holds its own copy; EOF comes when it exits
                    yield streams
        finally:
            tg.cancel_scope.cancel()


def _http_client(spec: ServerSpec, environ: Mapping[str, str]) -> httpx2.AsyncClient:
    try:
        headers = {key: expand(value, environ) for key, value in spec.headers.items()}
    except UnsetVariable as exc:
        raise StartError(f"headers: {exc}") from None
    # The SDK speaks httpx2, so this client is its own, not the gateway's httpx one. Reads
    # are left long: the GET stream idles, and tool calls are timed by the toolbox.
    timeout = httpx2.Timeout(spec.startup_timeout_s, read=300.0, pool=None)
    # The hook sends the current span's traceparent: the SDK posts in the caller's context.
    return httpx2.AsyncClient(headers=headers, timeout=timeout, event_hooks={"request": [tracing.httpx_hook]}, trust_env=False)


@asynccontextmanager
async def open_http(spec: ServerSpec, environ: Mapping[str, str]) -> AsyncIterator[tuple[Any, ...]]:
    async with _http_client(spec, environ) as client:
        async with streamable_http_client(spec.url, http_client=client) as streams:
            yield streams


@asynccontextmanager
async def open_sse(spec: ServerSpec, environ: Mapping[str, str]) -> AsyncIterator[tuple[Any, ...]]:
    client = _http_client(spec, environ)  # before the SDK's task group: StartError stays bare

    def factory(headers: object = None, timeout: object = None, auth: object = None) -> httpx2.AsyncClient:
        # The SDK asks for a client with its own timeouts (5 s, then 300 s between events);
        # ours keeps the configured startup timeout and the headers, expanded once above.
        return client

    logging.getLogger("mcp.client.sse").addFilter(_ONE_LINE)
    async with sse_client(spec.url, httpx_client_factory=factory) as streams:
        yield streams


TRANSPORTS: dict[str, Callable[[ServerSpec, Mapping[str, str]], AbstractAsyncContextManager[tuple[Any, ...]]]] = {
    "stdio": open_stdio,
    "http": open_http,
    "sse": open_sse,
}
