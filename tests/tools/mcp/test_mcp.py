"""MCP servers as a tool source, against real servers (tests/mcp_server.py) over stdio and HTTP."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
import pytest_asyncio

from gateway.errors import Problems
from gateway.redact import SECRETS
from gateway.tools.base import SourceContext, ToolError
from gateway.tools.mcp import McpSource, McpTool, build
from gateway.tools.mcp import _source as mcp_source
from gateway.tools.mcp import _stderr, _watch
from gateway.tools.mcp._throttle import Throttle
from gateway.tools.mcp._convert import to_output

SERVER = str(Path(__file__).resolve().parents[2] / "mcp_server.py")
ROOT = str(Path(__file__).resolve().parents[3])
SECRET = "sk-secret-0123456789"


# Helpers: every wait is bounded.


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, or gone between open and read (ESRCH)
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def tool(source: McpSource, name: str) -> McpTool:
    found = {t.name: t for t in source.tools()}
    assert name in found, f"{name} not in {sorted(found)}"
    return found[name]  # type: ignore[return-value]


async def call(source: McpSource, name: str, /, **arguments: Any) -> Any:
    return await tool(source, name).call(arguments)


class HttpServer:
    """tests/mcp_server.py over streamable HTTP, or over HTTP+SSE with ``transport="sse"``."""

    def __init__(self, transport: str = "http", *args: str) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.transport = transport
        self.args = args  # e.g. "--era", "modern", "--ttl-ms", "500"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{'mcp' if self.transport == 'http' else 'sse'}"

    def table(self, **extra: Any) -> dict[str, Any]:
        """The ``[tools.mcp.NAME]`` table that reaches this server."""
        transport = {"transport": "sse"} if self.transport == "sse" else {}
        return {"url": self.url, **transport, **extra}

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            SERVER,
            "--transport",
            self.transport,
            "--port",
            str(self.port),
            *self.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 20)
        assert line.startswith(b"READY "), line
        self.port = int(line.split()[1])

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
        if self.proc is not None:
            await asyncio.wait_for(self.proc.wait(), 10)


@pytest.fixture
async def http_server() -> AsyncIterator[HttpServer]:
    server = HttpServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


Factory = Callable[..., Awaitable[McpSource]]


@pytest.fixture
async def make_source() -> AsyncIterator[Factory]:
    """Builds and starts sources; stops them all afterwards."""
    started: list[McpSource] = []

    async def make(table: dict[str, Any], name: str = "srv", environ: dict[str, str] | None = None) -> McpSource:
        problems = Problems("test.toml")
        source = build(name, table, problems, f"tools.mcp.{name}")
        assert problems.lines == []
        assert isinstance(source, McpSource)
        started.append(source)
        await source.start(SourceContext(environ=dict(os.environ) if environ is None else environ))
        return source

    yield make
    for source in started:
        await asyncio.wait_for(source.stop(), 15)


def stdio_table(**extra: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [SERVER, "--transport", "stdio"], **extra}


async def open_source(transport: str) -> tuple[McpSource, HttpServer | None]:
    server = None
    if transport != "stdio":
        server = HttpServer(transport)
        await server.start()
    table = stdio_table() if server is None else server.table()
    source = build("srv", table, Problems("test.toml"), "tools.mcp.srv")
    assert isinstance(source, McpSource)
    await source.start(SourceContext(environ=dict(os.environ)))
    return source, server


async def close_source(source: McpSource, server: HttpServer | None) -> None:
    await asyncio.wait_for(source.stop(), 15)
    if server is not None:
        await server.stop()


@pytest_asyncio.fixture(params=["stdio", "http"])
async def fresh(request: pytest.FixtureRequest) -> AsyncIterator[McpSource]:
    """A server of its own, for tests that change it."""
    source, server = await open_source(request.param)
    yield source
    await close_source(source, server)


@pytest_asyncio.fixture(params=["stdio", "http", "sse"], scope="module", loop_scope="module")
async def source(request: pytest.FixtureRequest) -> AsyncIterator[McpSource]:
    """One server per transport for the tests that leave it as it was."""
    source, server = await open_source(request.param)
    yield source
    await close_source(source, server)


shares_loop = pytest.mark.asyncio(loop_scope="module")


# Both transports


@shares_loop
async def test_start_lists_tools(source: McpSource) -> None:
    assert source.status().ready, source.status()
    names = {t.name for t in source.tools()}
    assert {"echo", "add", "sleep", "crash", "fail", "image", "resource", "grow"} <= names
    echo = tool(source, "echo")
    assert echo.description == "Say the text back."
    assert echo.parameters["properties"]["text"]["type"] == "string"
    assert echo.timeout_s is None  # the toolbox bounds it by loop.tool_timeout_s
    assert source.tools() is source.tools()  # prebuilt, no round trip


@shares_loop
async def test_concurrent_calls_share_one_session(source: McpSource) -> None:
    pid = await call(source, "pid")
    echoes = [call(source, "echo", text=f"m{i}") for i in range(40)]
    sums = [call(source, "add", a=i, b=1) for i in range(40)]
    results = await asyncio.wait_for(asyncio.gather(*echoes, *sums), 20)
    assert results[:40] == [f"m{i}" for i in range(40)]
    assert results[40:] == [str(i + 1) for i in range(40)]
    assert await call(source, "pid") == pid
    assert await call(source, "session_count") == "1"


@shares_loop
async def test_is_error_raises_tool_error(source: McpSource) -> None:
    with pytest.raises(ToolError, match="it broke"):
        await call(source, "fail")


@shares_loop
async def test_image_becomes_content_part(source: McpSource) -> None:
    output = await call(source, "image")
    assert isinstance(output, list) and len(output) == 1
    assert output[0]["type"] == "image_url"
    assert output[0]["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")


@shares_loop
async def test_embedded_resources_become_text(source: McpSource) -> None:
    output = await call(source, "resource")
    assert output == "resource text\n[resource file:///pixel.png (image/png), 70 bytes]"


@shares_loop
async def test_cancelled_call_leaves_no_stuck_state(source: McpSource) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(call(source, "sleep", seconds=30), 0.3)
    # The courtesy cancel reached the server, and the session still works.
    for _ in range(100):
        if await asyncio.wait_for(call(source, "active"), 5) == "0":
            break
        await asyncio.sleep(0.02)
    assert await call(source, "active") == "0"
    assert await asyncio.wait_for(call(source, "echo", text="after"), 5) == "after"
    assert source.status().ready


@shares_loop
async def test_annotations_are_kept_as_stated(source: McpSource) -> None:
    add = tool(source, "add")
    assert add.annotations == {"title": "Adder", "readOnlyHint": True, "idempotentHint": True, "openWorldHint": False}
    assert add.renamed("srv_add").annotations == add.annotations
    assert tool(source, "crash").annotations == {"destructiveHint": True}
    assert tool(source, "echo").annotations is None


async def test_changed_annotations_disable_the_tool(make_source: Factory, caplog: pytest.LogCaptureFixture) -> None:
    source = await make_source(stdio_table())
    caplog.set_level(logging.WARNING, "toolgate.mcp")
    assert await call(source, "turn") == "turned"
    await wait_until(lambda: "add" not in {t.name for t in source.tools()})
    assert "changed the definition of tool 'add'" in caplog.text


async def test_list_changed_adds_tools(fresh: McpSource) -> None:
    source = fresh
    assert "grown" not in {t.name for t in source.tools()}
    assert await call(source, "grow") == "grown"
    await wait_until(lambda: "grown" in {t.name for t in source.tools()})
    assert await call(source, "grown") == "I am new"


async def test_changed_definition_disables_tool(fresh: McpSource, caplog: pytest.LogCaptureFixture) -> None:
    source = fresh
    caplog.set_level(logging.WARNING, "toolgate.mcp")
    assert await call(source, "mutate") == "mutated"
    await wait_until(lambda: "echo" not in {t.name for t in source.tools()})
    assert "add" in {t.name for t in source.tools()}
    assert "changed the definition of tool 'echo'" in caplog.text
    await call(source, "grow")  # later listings keep it out
    await wait_until(lambda: "grown" in {t.name for t in source.tools()})
    assert "echo" not in {t.name for t in source.tools()}


async def test_prefix_and_renamed_tools_call_the_remote_name(make_source: Factory) -> None:
    source = await make_source(stdio_table(prefix=True, timeout_s=7), name="files")
    assert source.prefix is True
    echo = tool(source, "echo")
    offered = echo.renamed("files_echo")
    assert offered.name == "files_echo" and offered.timeout_s == 7
    assert await offered.call({"text": "through"}) == "through"


async def test_tool_globs_filter(make_source: Factory) -> None:
    source = await make_source(stdio_table(tools=["ec*", "add"]))
    assert sorted(t.name for t in source.tools()) == ["add", "echo"]


# Crashes and restarts


async def test_stdio_crash_fails_in_flight_calls_then_restarts(make_source: Factory, spawned: list[int]) -> None:
    source = await make_source(stdio_table())
    pid = int(await call(source, "pid"))
    spawned.append(grandchild := int(await call(source, "spawn")))
    sleeping = asyncio.ensure_future(call(source, "sleep", seconds=30))
    await asyncio.sleep(0)  # let the sleep request go out first
    began = time.monotonic()
    results = await asyncio.wait_for(
        asyncio.gather(sleeping, call(source, "crash"), return_exceptions=True), 5
    )
    assert all(isinstance(r, ToolError) for r in results), results
    assert time.monotonic() - began < 3
    assert not source.status().ready
    assert source.tools() == []
    with pytest.raises(ToolError, match="not available"):
        await McpTool(source, types.Tool(name="echo", input_schema={"type": "object"}), 1).call({"text": "x"})
    await wait_until(lambda: source.status().ready, 15)
    assert await call(source, "echo", text="back") == "back"
    assert int(await call(source, "pid")) != pid
    await wait_until(lambda: not alive(pid) and not alive(grandchild), 5)


async def test_http_crash_fails_in_flight_calls_then_reconnects(make_source: Factory, http_server: HttpServer) -> None:
    source = await make_source({"url": http_server.url})
    sleeping = asyncio.ensure_future(call(source, "sleep", seconds=30))
    await asyncio.sleep(0.05)
    began = time.monotonic()
    results = await asyncio.wait_for(
        asyncio.gather(sleeping, call(source, "crash"), return_exceptions=True), 5
    )
    assert all(isinstance(r, ToolError) for r in results), results
    assert time.monotonic() - began < 3
    assert http_server.proc is not None
    await asyncio.wait_for(http_server.proc.wait(), 5)
    await wait_until(lambda: not source.status().ready, 5)
    await http_server.start()  # same port
    await wait_until(lambda: source.status().ready, 20)
    assert await call(source, "echo", text="back") == "back"


async def test_http_idle_server_death_is_noticed(
    make_source: Factory, http_server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mcp_source, "KEEPALIVE_S", 0.2)
    source = await make_source({"url": http_server.url})
    assert source.status().ready
    await http_server.stop()  # no call in flight: only the keepalive ping can tell
    await wait_until(lambda: not source.status().ready, 5)
    assert source.tools() == []


# stdio specifics


async def test_child_gets_no_gateway_secrets(
    make_source: Factory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TOOLGATE_UPSTREAM_API_KEY", SECRET)
    plain = await make_source(stdio_table(), name="plain")
    assert await call(plain, "env", name="TOOLGATE_UPSTREAM_API_KEY") == "<unset>"
    assert await call(plain, "env", name="PATH") == os.environ["PATH"]
    named = await make_source(stdio_table(env={"API_KEY": "${TOOLGATE_UPSTREAM_API_KEY}", "MODE": "x-${HOME}"}))
    assert await call(named, "env", name="API_KEY") == SECRET
    assert await call(named, "env", name="MODE") == "x-" + os.environ["HOME"]
    assert await call(named, "env", name="TOOLGATE_UPSTREAM_API_KEY") == "<unset>"
    assert SECRET not in caplog.text


async def test_unset_variable_is_a_startup_failure(make_source: Factory) -> None:
    source = await make_source(stdio_table(env={"K": "${TOOLGATE_NOT_SET_ANYWHERE}"}), environ={"PATH": "/usr/bin"})
    assert not source.status().ready
    assert "TOOLGATE_NOT_SET_ANYWHERE is not set" in source.status().detail


async def test_stop_leaves_no_child(make_source: Factory, spawned: list[int]) -> None:
    source = await make_source(stdio_table())
    pid = int(await call(source, "pid"))
    spawned.append(grandchild := int(await call(source, "spawn")))
    assert alive(pid) and alive(grandchild)
    began = time.monotonic()
    await source.stop()
    assert time.monotonic() - began < 5
    assert not alive(pid) and not alive(grandchild)
    assert not source.status().ready and source.tools() == []
    await source.stop()  # idempotent


async def test_stop_of_a_server_deaf_to_eof_and_sigterm(make_source: Factory, spawned: list[int]) -> None:
    source = await make_source(stdio_table(args=[SERVER, "--stubborn"]))
    pid = int(await call(source, "pid"))
    spawned.append(grandchild := int(await call(source, "spawn")))
    began = time.monotonic()
    await source.stop()  # stdin closed, 2 s; SIGTERM, then SIGKILL from the supervisor
    assert time.monotonic() - began < 5
    assert not alive(pid) and not alive(grandchild)


async def test_missing_command_is_not_ready_and_start_returns(make_source: Factory) -> None:
    began = time.monotonic()
    source = await make_source({"command": "toolgate-no-such-server-xyz", "startup_timeout_s": 2})
    assert time.monotonic() - began < 3
    status = source.status()
    assert not status.ready
    assert "command not found: toolgate-no-such-server-xyz" in status.detail
    assert "\n" not in status.detail
    assert source.tools() == []


async def test_silent_server_times_out_at_startup(make_source: Factory) -> None:
    table = {"command": sys.executable, "args": ["-c", "import time; time.sleep(60)"], "startup_timeout_s": 0.3}
    began = time.monotonic()
    source = await make_source(table)
    assert time.monotonic() - began < 2
    assert not source.status().ready
    assert "no answer within 0.3 s" in source.status().detail


def stderr_records(caplog: pytest.LogCaptureFixture, server: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "toolgate.mcp" and r.getMessage().startswith(f"[{server}] ")]


def dropped(caplog: pytest.LogCaptureFixture, server: str) -> int:
    pattern = re.compile(rf"dropped (\d+) stderr lines of server '{server}'")
    return sum(int(m.group(1)) for r in caplog.records if (m := pattern.fullmatch(r.getMessage())))


async def test_stderr_flood_is_drained_and_throttled(make_source: Factory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "toolgate.mcp")
    source = await make_source(stdio_table())
    # 20 MiB is far past a pipe's buffer: an undrained stderr would block the server.
    assert await asyncio.wait_for(call(source, "shout", kib=20 * 1024), 30) == "done"
    assert await call(source, "echo", text="still here") == "still here"
    await source.stop()  # reports what the throttle dropped
    logged = [line for line in stderr_records(caplog, "srv") if line.startswith("[srv] xxxx")]
    assert 0 < len(logged) <= _stderr.BURST + 20
    assert all(len(line) <= len("[srv] ") + _stderr.LINE_MAX for line in logged)
    assert len(logged) + dropped(caplog, "srv") >= 20 * 1024


async def test_stderr_drops_are_reported_once_the_flood_stops(
    make_source: Factory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, "toolgate.mcp")
    monkeypatch.setattr(_stderr, "PER_S", 100.0)  # reopens half a second after the flood
    source = await make_source(stdio_table())
    assert await asyncio.wait_for(call(source, "shout", kib=2048), 10) == "done"
    await wait_until(lambda: dropped(caplog, "srv") > 0, 5)  # no new line, no stop: the timer
    assert source.status().ready


async def test_stderr_is_redacted(make_source: Factory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "toolgate.mcp")
    canary, known = "canary-7f3a9c1e5d", "gateway-known-4b2e8d"
    SECRETS.add(known)  # what the app registers at start
    environ = {**os.environ, "TOOLGATE_TEST_CANARY": canary}
    source = await make_source(stdio_table(env={"TOKEN": "${TOOLGATE_TEST_CANARY}"}), environ=environ)
    assert canary in source.secrets()
    await asyncio.wait_for(call(source, "say", text="Traceback: KeyError token=", env="TOKEN"), 5)
    await asyncio.wait_for(call(source, "say", text=f"upstream said: bad key {known}"), 5)
    await wait_until(lambda: "upstream said" in caplog.text)
    assert "[srv] Traceback: KeyError token=***" in caplog.text
    assert "[srv] upstream said: bad key ***" in caplog.text
    assert canary not in caplog.text and known not in caplog.text


def test_secrets_are_the_expanded_env_and_header_values() -> None:
    environ = {"T": "sk-token-123456", "U": "user-abcdef"}
    stdio = build("s", {"command": "x", "env": {"A": "${T}", "B": "${U}:${NOPE}", "C": "plain-literal"}}, Problems("x"), "k")
    assert isinstance(stdio, McpSource)
    assert stdio.secrets(environ) == ["sk-token-123456", "user-abcdef", "plain-literal"]
    url = "http://me:pass-word-9@h/mcp?token=url-token-42"
    http = build("s", {"url": url, "headers": {"Authorization": "Bearer ${T}"}}, Problems("x"), "k")
    assert isinstance(http, McpSource)
    assert http.secrets(environ) == ["Bearer sk-token-123456", "sk-token-123456", "me", "pass-word-9", "url-token-42"]


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


async def test_stray_stdout_lines_are_warned_about_and_skipped(
    make_source: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    banner = f"echo 'Server starting...'; echo; echo '{{\"hello\": 1}}'; exec {sys.executable} {SERVER}"
    source = await make_source({"command": "sh", "args": ["-c", banner]})
    assert source.status().ready
    pid = await call(source, "pid")
    assert await asyncio.wait_for(call(source, "garbage", lines=2), 5) == "dumped"
    # Not UTF-8: the SDK's strict decoding used to stop reading, and every later call hung.
    assert await asyncio.wait_for(call(source, "garbage", lines=1, binary=True), 5) == "dumped"
    assert await call(source, "pid") == pid  # no restart
    warnings = [r.getMessage() for r in caplog.records if "not JSON-RPC" in r.getMessage()]
    assert warnings == [
        "MCP server 'srv' sent a message that is not JSON-RPC, ignored: 'Server starting...'",
        "MCP server 'srv' sent a message that is not JSON-RPC, ignored: {'hello': 1}",
        "MCP server 'srv' sent a message that is not JSON-RPC, ignored: 'this is not JSON'",
        "MCP server 'srv' sent a message that is not JSON-RPC, ignored: 'this is not JSON'",
        "MCP server 'srv' sent a message that is not JSON-RPC, ignored: '\ufffd\ufffd not text'",
    ]
    no_tracebacks(caplog)


async def test_a_stdout_full_of_garbage_is_a_crash(make_source: Factory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    source = await make_source(stdio_table())
    pid = await call(source, "pid")
    with pytest.raises(ToolError, match="connection closed"):
        await asyncio.wait_for(call(source, "garbage", lines=5000), 10)
    await wait_until(lambda: source.status().ready, 15)
    assert await call(source, "pid") != pid
    assert "MCP server 'srv': 51 bad messages in a row; restarting it" in caplog.text
    warnings = [r for r in caplog.records if "not JSON-RPC" in r.getMessage()]
    assert len(warnings) == _watch.WARN_BURST
    assert "dropped 41 warnings about bad messages of server 'srv'" in caplog.text
    no_tracebacks(caplog)


def gone(*pids: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not any(alive(pid) for pid in pids)


@pytest.fixture
def spawned() -> Iterator[list[int]]:
    """Pids of processes a test's servers started: killed afterwards should the test fail."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_the_process_tree_dies_with_the_gateway(spawned: list[int]) -> None:
    """SIGKILL the gateway: neither its MCP server nor the server's own children outlive it."""
    script = f"""
import asyncio, os, sys
sys.path.insert(0, {ROOT!r})
from gateway.errors import Problems
from gateway.tools.base import SourceContext
from gateway.tools.mcp import build

async def main():
    source = build("t", {{"command": sys.executable, "args": [{SERVER!r}]}}, Problems("x"), "k")
    await source.start(SourceContext(environ=dict(os.environ)))
    tools = {{t.name: t for t in source.tools()}}
    print(await asyncio.wait_for(tools["pid"].call({{}}), 10), flush=True)
    print(await asyncio.wait_for(tools["spawn"].call({{}}), 10), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""
    gateway = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert gateway.stdout is not None
        server = int(gateway.stdout.readline())  # bounded by the source's startup timeout
        spawned.append(server)
        grandchild = int(gateway.stdout.readline())
        spawned.append(grandchild)
        assert alive(server) and alive(grandchild)
    finally:
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(10)
        gateway.stdout.close()  # type: ignore[union-attr]
    assert gone(server, grandchild)


# stderr lines and their throttle, with a clock of the test's own


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttle_bursts_then_stays_shut_until_half_full() -> None:
    clock, reports = Clock(), []
    throttle = Throttle(burst=4, per_s=2, report=reports.append, clock=clock)
    assert [throttle.admit() for _ in range(6)] == [True] * 4 + [False] * 2
    assert throttle.due() == 1.0  # two tokens at two per second
    clock.now = 0.5
    assert not throttle.admit()  # one token back, but shut until half full
    assert throttle.due() == 0.5
    throttle.refuse(10)
    assert reports == []
    clock.now = 1.0
    assert throttle.admit() and reports == [13]  # reopened: the drops reported first
    assert throttle.due() == math.inf
    throttle.flush()
    assert reports == [13]  # nothing dropped since


def test_stderr_lines_are_cut_redacted_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "toolgate.mcp")
    clock = Clock()
    secret = "sk-stderr-secret-0123"
    lines = _stderr.StderrLines("s", secrets=[secret], clock=clock)
    for byte in b"one\n\n  \ntw":  # split anywhere, blank lines skipped
        lines.feed(bytes([byte]))
    lines.feed(b"o\n" + b"a" * (_stderr.LINE_MAX - 5) + secret.encode() + b" tail\n")
    lines.feed(b"b" * 3 * _stderr.LINE_MAX)  # no end yet: its start is logged, the rest skipped
    lines.feed(b"bbb\nafter\nunfinished")
    lines.close()
    logged = stderr_records(caplog, "s")
    assert logged[:2] == ["[s] one", "[s] two"]
    assert logged[2] == "[s] " + ("a" * (_stderr.LINE_MAX - 5) + "*** tail")[: _stderr.LINE_MAX]
    assert logged[3] == "[s] " + "b" * _stderr.LINE_MAX
    assert logged[4:] == ["[s] after", "[s] unfinished"]
    assert secret[:5] not in caplog.text


def test_stderr_lines_beyond_the_burst_are_counted_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "toolgate.mcp")
    clock = Clock()
    lines = _stderr.StderrLines("s", clock=clock)
    flood = b"".join(b"line %d\n" % i for i in range(1000))
    for start in range(0, len(flood), 777):
        lines.feed(flood[start : start + 777])
    assert len(stderr_records(caplog, "s")) == _stderr.BURST
    assert dropped(caplog, "s") == 0  # reported when the bucket reopens
    clock.now = lines.throttle.due()
    lines.feed(b"later\n")
    assert dropped(caplog, "s") == 1000 - _stderr.BURST
    assert stderr_records(caplog, "s")[-1] == "[s] later"
    lines.feed(b"x\n" * 1000)
    lines.close()  # at the end, whatever the bucket holds
    assert dropped(caplog, "s") == (1000 - _stderr.BURST) + (1000 - (_stderr.BURST // 2 - 1))


# HTTP specifics


async def test_http_headers_are_sent_with_variables(
    make_source: Factory, http_server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLGATE_MCP_TOKEN", SECRET)
    source = await make_source({"url": http_server.url, "headers": {"Authorization": "Bearer ${TOOLGATE_MCP_TOKEN}"}})
    assert await call(source, "header", name="authorization") == f"Bearer {SECRET}"


async def test_http_unreachable_is_not_ready(make_source: Factory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "toolgate.mcp")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    source = await make_source({"url": f"http://127.0.0.1:{port}/mcp?token={SECRET}", "startup_timeout_s": 2})
    assert not source.status().ready
    assert "cannot reach the server" in source.status().detail
    assert SECRET not in source.status().detail
    # Ours only: the SDK logs the URL at debug, for the redaction layer to mask (see secrets()).
    assert not [r for r in caplog.records if r.name.startswith("toolgate") and SECRET in r.getMessage()]
    assert SECRET in source.secrets()


# SSE specifics


@pytest.fixture
async def sse_server() -> AsyncIterator[HttpServer]:
    server = HttpServer("sse")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_sse_headers_are_sent_with_variables(
    make_source: Factory, sse_server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLGATE_MCP_TOKEN", SECRET)
    source = await make_source(sse_server.table(headers={"Authorization": "Bearer ${TOOLGATE_MCP_TOKEN}"}))
    assert await call(source, "header", name="authorization") == f"Bearer {SECRET}"
    assert SECRET in source.secrets()


async def test_sse_server_killed_mid_call_is_a_tool_error_then_reconnects(
    make_source: Factory, sse_server: HttpServer
) -> None:
    source = await make_source(sse_server.table())
    assert source.status().ready
    sleeping = asyncio.ensure_future(call(source, "sleep", seconds=30))
    await asyncio.sleep(0.1)
    began = time.monotonic()
    assert sse_server.proc is not None
    sse_server.proc.kill()
    with pytest.raises(ToolError):
        await asyncio.wait_for(sleeping, 5)
    assert time.monotonic() - began < 3
    await wait_until(lambda: not source.status().ready, 5)
    await sse_server.start()  # same port
    await wait_until(lambda: source.status().ready, 20)
    assert await call(source, "add", a=2, b=3) == "5"


async def test_sse_unset_variable_is_a_startup_failure(make_source: Factory, sse_server: HttpServer) -> None:
    source = await make_source(sse_server.table(headers={"X-Key": "${TOOLGATE_NOT_SET_ANYWHERE}"}), environ={})
    assert not source.status().ready
    assert "TOOLGATE_NOT_SET_ANYWHERE" in source.status().detail


# Configuration


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({}, ["tools.mcp.s: expected exactly one of command (stdio) or url (streamable HTTP or SSE)"]),
        (
            {"command": "x", "url": "http://h/mcp"},
            ["tools.mcp.s: expected exactly one of command (stdio) or url (streamable HTTP or SSE)"],
        ),
        ({"command": ""}, ["tools.mcp.s.command: expected a non-empty string, got ''"]),
        ({"command": ["x"]}, ["tools.mcp.s.command: expected a non-empty string, got an array of strings"]),
        ({"url": "ftp://h"}, ["tools.mcp.s.url: expected an http:// or https:// URL, got a string"]),
        (
            {"command": "x", "args": "a b", "env": {"A": 1}, "cwd": 3},
            [
                "tools.mcp.s.args: expected a list of strings, got a string",
                "tools.mcp.s.env: expected a table of strings, got a table of integers",
                "tools.mcp.s.cwd: expected a non-empty string, got 3",
            ],
        ),
        (
            {"command": "x", "prefix": "yes", "timeout_s": 0, "startup_timeout_s": True, "tools": "e*"},
            [
                "tools.mcp.s.prefix: expected true or false, got 'yes'",
                "tools.mcp.s.timeout_s: expected a number of seconds above 0, got 0",
                "tools.mcp.s.startup_timeout_s: expected a number of seconds above 0, got True",
                "tools.mcp.s.tools: expected a list of tool name globs, got 'e*'",
            ],
        ),
        ({"command": "x", "headers": {"A": "b"}}, ["tools.mcp.s.headers: only applies to http or sse servers"]),
        ({"command": "x", "transport": "sse"}, ["tools.mcp.s.transport: sse servers need url"]),
        ({"url": "http://h/sse", "transport": "stdio"}, ["tools.mcp.s.transport: stdio servers need command"]),
        ({"url": "http://h/sse", "transport": "websocket", "args": []}, ["tools.mcp.s.transport: expected stdio, http or sse, got 'websocket'"]),
        ({"url": "http://h/sse", "transport": "sse", "cwd": "/"}, ["tools.mcp.s.cwd: only applies to stdio servers"]),
        ({"url": "http://h/mcp", "args": ["a"]}, ["tools.mcp.s.args: only applies to stdio servers"]),
        ({"command": "x", "colour": "red"}, ["tools.mcp.s.colour: unknown key; expected one of args, command, cwd, enabled, env, headers, list_ttl_max_s, list_ttl_min_s, prefix, protocol, startup_timeout_s, timeout_s, tools, transport, url"]),
        ({"command": "x", "enabled": "no"}, ["tools.mcp.s.enabled: expected true or false, got 'no'"]),
        ({"command": "x", "env": {"A": "${1BAD}"}}, ["tools.mcp.s.env.A: expected ${VAR}"]),
        ({"url": "http://h/mcp", "headers": {"A": "${OPEN"}}, ["tools.mcp.s.headers.A: unclosed ${"]),
    ],
)
def test_config_problems(table: dict[str, Any], expected: list[str]) -> None:
    problems = Problems("gw.toml")
    assert build("s", table, problems, "tools.mcp.s") is None
    assert len(problems.lines) == len(expected), problems.lines
    for line, want in zip(problems.lines, expected):
        assert line.startswith(f"gw.toml: {want}"), line


def test_config_valid_and_disabled() -> None:
    problems = Problems("gw.toml")
    source = build(
        "s",
        {"url": "https://h/mcp", "headers": {"A": "Bearer ${T}"}, "prefix": True, "timeout_s": 5, "tools": ["a*"]},
        problems,
        "k",
    )
    assert problems.lines == []
    assert isinstance(source, McpSource)
    assert source.name == "s" and source.prefix is True
    assert source.spec.transport == "http" and source.spec.timeout_s == 5.0 and source.spec.tools == ("a*",)
    assert not source.status().ready and source.tools() == []
    assert build("s", {"command": "x", "enabled": False}, problems, "k") is None
    sse = build("s", {"url": "https://h/sse", "transport": "sse", "headers": {"A": "b"}}, problems, "k")
    assert isinstance(sse, McpSource) and sse.spec.transport == "sse"
    http = build("s", {"url": "https://h/mcp", "transport": "http"}, problems, "k")
    assert isinstance(http, McpSource) and http.spec.transport == "http"
    assert problems.lines == []


# Result mapping


def result(*content: Any, **fields: Any) -> types.CallToolResult:
    return types.CallToolResult(content=list(content), **fields)


def test_results_map_to_outputs() -> None:
    text = types.TextContent(type="text", text="hi")
    image = types.ImageContent(type="image", data="AAAA", mime_type="image/gif")
    assert to_output(result(text, text)) == "hi\nhi"
    assert to_output(result()) == ""
    assert to_output(result(structured_content={"n": 1})) == '{"n": 1}'
    assert to_output(result(text, structured_content={"n": 1})) == "hi"
    assert to_output(result(text, image)) == [
        {"type": "text", "text": "hi"},
        {"type": "image_url", "image_url": {"url": "data:image/gif;base64,AAAA"}},
    ]
    audio = types.AudioContent(type="audio", data="AAAAAA==", mime_type="audio/wav")
    assert to_output(result(audio)) == "[audio (audio/wav), 4 bytes]"
    link = types.ResourceLink(type="resource_link", uri="file:///a.txt", name="a")
    assert to_output(result(link)) == "[resource link file:///a.txt (a)]"
    with pytest.raises(ToolError, match="^the tool reported an error$"):
        to_output(result(image, is_error=True))


def test_config_problems_never_show_a_secret_value() -> None:
    problems = Problems("gw.toml")
    build("s", {"url": "ftp://user:sk-in-url@h/mcp"}, problems, "tools.mcp.s")
    build("t", {"url": "http://h/mcp", "headers": {"Authorization": "Bearer sk-in-header", "N": 1}}, problems, "tools.mcp.t")
    build("u", {"command": "x", "env": {"TOKEN": "sk-in-env", "N": 2}, "args": ["--token=sk-in-args", 3]}, problems, "tools.mcp.u")
    assert problems.lines == [
        "gw.toml: tools.mcp.s.url: expected an http:// or https:// URL, got a string",
        "gw.toml: tools.mcp.t.headers: expected a table of strings, got a table of strings and integers",
        "gw.toml: tools.mcp.u.env: expected a table of strings, got a table of strings and integers",
        "gw.toml: tools.mcp.u.args: expected a list of strings, got an array of strings and integers",
    ]
