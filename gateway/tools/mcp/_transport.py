"""Opening one connection to an MCP server: a stdio subprocess or a streamable HTTP session.

``TRANSPORTS[spec.transport](spec, environ)`` is an async context manager yielding the SDK's
stream pair; leaving it stops the subprocess (the SDK closes stdin, waits, terminates the
process group, then kills it) or closes the HTTP session.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import httpx2
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from gateway.tools.mcp._config import ServerSpec, UnsetVariable, expand

logger = logging.getLogger("toolgate.mcp")

# What a child inherits from the gateway: enough to run, nothing secret. Anything else
# must be named in the server's `env` table.
INHERITED = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ")

# Runs in the child between fork and the server's exec: asks Linux to SIGKILL the child
# when the gateway dies (even by SIGKILL), then execs the server in the same process, so
# no extra process stays around. The SDK spawns children itself and takes no preexec_fn,
# hence this trampoline. The ppid check closes the race where the gateway died before
# prctl ran.
_LAUNCHER = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
try:
    os.execv(sys.argv[2], sys.argv[2:])
except OSError as exc:
    sys.stderr.write(f"cannot start {sys.argv[2]}: {exc.strerror}\\n")
    sys.exit(127)
"""

_STDERR_LINE_MAX = 2000


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


async def _read(fd: int) -> bytes:
    for _ in range(100):  # wakeups with nothing to read are rare; b"" ends the drain
        await anyio.wait_readable(fd)
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            continue
    return b""


def _log_lines(server: str, data: bytes, final: bool) -> bytes:
    """Logs the complete lines in data; returns the unfinished rest."""
    lines = data.split(b"\n")
    rest = b"" if final else lines.pop()
    if len(rest) > _STDERR_LINE_MAX:  # a line without end: log what there is
        lines.append(rest)
        rest = b""
    for line in lines:
        if line.strip():
            logger.info("[%s] %s", server, line[:_STDERR_LINE_MAX].decode(errors="replace").rstrip())
    return rest


async def _log_stderr(fd: int, server: str) -> None:
    """Reads the child's stderr into the log, so a chatty server never blocks on a full pipe."""
    os.set_blocking(fd, False)
    pending = b""
    try:
        while chunk := await _read(fd):
            pending = _log_lines(server, pending + chunk, final=False)
    finally:
        # Cancelled when the connection closes: take what the dead child left in the pipe.
        for _ in range(64):
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            pending = _log_lines(server, pending + chunk, final=False)
        _log_lines(server, pending, final=True)
        os.close(fd)


@asynccontextmanager
async def open_stdio(spec: ServerSpec, environ: Mapping[str, str]) -> AsyncIterator[tuple]:
    env = child_environment(spec, environ)
    if spec.cwd is not None and not os.path.isdir(spec.cwd):
        raise StartError(f"cwd is not a directory: {spec.cwd}")
    executable = resolve_command(spec.command, env.get("PATH"), spec.cwd)
    if sys.platform.startswith("linux") and sys.executable:
        command = sys.executable
        args = ["-I", "-S", "-c", _LAUNCHER, str(os.getpid()), executable, *spec.args]
    else:  # elsewhere the child only learns of the gateway's death from stdin's EOF
        command, args = executable, list(spec.args)
    params = StdioServerParameters(command=command, args=args, env=env, cwd=spec.cwd)
    read_fd, write_fd = os.pipe()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_log_stderr, read_fd, spec.name)
        try:
            with open(write_fd, "w") as errlog:
                async with stdio_client(params, errlog=errlog) as streams:
                    errlog.close()  # the child holds its own copy; EOF comes when it exits
                    yield streams
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def open_http(spec: ServerSpec, environ: Mapping[str, str]) -> AsyncIterator[tuple]:
    try:
        headers = {key: expand(value, environ) for key, value in spec.headers.items()}
    except UnsetVariable as exc:
        raise StartError(f"headers: {exc}") from None
    # The SDK speaks httpx2, so this client is its own, not the gateway's httpx one. Reads
    # are left long: the GET stream idles, and tool calls are timed by the toolbox.
    timeout = httpx2.Timeout(spec.startup_timeout_s, read=300.0, pool=None)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as client:
        async with streamable_http_client(spec.url, http_client=client) as streams:
            yield streams


TRANSPORTS: dict[str, Callable[[ServerSpec, Mapping[str, str]], AbstractAsyncContextManager[tuple]]] = {
    "stdio": open_stdio,
    "http": open_http,
}
