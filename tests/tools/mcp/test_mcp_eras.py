"""Both MCP protocol eras against real servers: one that speaks only the stateless 2026-07-28
revision over streamable HTTP (the SDK's server in stateless mode), handshake-only ones over
stdio and HTTP, and one that speaks both. Negotiation, pins, the ttlMs-driven tool list,
the guard, progress and death mid-call."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.errors import Problems
from gateway.tools.base import SourceContext, ToolError, listening
from gateway.tools.mcp import McpSource, build
from gateway.tools.mcp import _source as mcp_source
from tests.tools.mcp.test_mcp import SERVER, Factory, HttpServer, call, make_source, tool, wait_until  # noqa: F401

MODERN = "2026-07-28"


@pytest.fixture
async def servers() -> AsyncIterator[Any]:
    """Starts test servers with the given arguments; kills them all afterwards."""
    started: list[HttpServer] = []

    async def start(*args: str, transport: str = "http") -> HttpServer:
        server = HttpServer(transport, *args)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


def stdio(era: str, **extra: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [SERVER, "--transport", "stdio", "--era", era], **extra}


# Negotiation


@pytest.mark.parametrize(
    ("era", "protocol"),
    [("modern", MODERN), ("legacy", "2025-11-25"), ("dual", MODERN)],
)
async def test_auto_speaks_the_newest_era_the_server_has(make_source: Factory, servers, era: str, protocol: str) -> None:
    server = await servers("--era", era)
    source = await make_source(server.table())
    assert source.status().ready, source.status()
    assert source.status().detail.endswith(f"protocol {protocol}")
    assert await call(source, "add", a=2, b=3) == "5"
    assert await call(source, "echo", text="hi") == "hi"


@pytest.mark.parametrize(("era", "protocol"), [("legacy", "2025-11-25"), ("dual", MODERN)])
async def test_auto_over_stdio(make_source: Factory, era: str, protocol: str) -> None:
    source = await make_source(stdio(era))
    assert source.status().detail.endswith(f"protocol {protocol}"), source.status()
    assert await call(source, "add", a=1, b=1) == "2"


async def test_sse_speaks_the_handshake_era_without_a_probe(make_source: Factory, servers) -> None:
    server = await servers("--era", "dual", transport="sse")
    source = await make_source(server.table())
    assert source.status().detail.endswith("protocol 2025-11-25"), source.status()


@pytest.mark.parametrize(("era", "pin", "protocol"), [("dual", "legacy", "2025-11-25"), ("dual", MODERN, MODERN), ("modern", MODERN, MODERN)])
async def test_a_pin_is_kept(make_source: Factory, servers, era: str, pin: str, protocol: str) -> None:
    server = await servers("--era", era)
    source = await make_source(server.table(protocol=pin))
    assert source.status().detail.endswith(f"protocol {protocol}"), source.status()
    assert await call(source, "add", a=2, b=2) == "4"
    if pin == MODERN:
        assert await call(source, "requests", method="server/discover") == "0"  # adopted, not probed


async def test_a_pin_the_server_does_not_speak_is_a_clear_not_ready(make_source: Factory, servers) -> None:
    modern = await servers("--era", "modern")
    legacy = await servers("--era", "legacy")
    wrong = [
        await make_source(modern.table(protocol="legacy", startup_timeout_s=10), name="modern"),
        await make_source(legacy.table(protocol=MODERN, startup_timeout_s=10), name="legacy_http"),
        await make_source(stdio("legacy", protocol=MODERN, startup_timeout_s=10), name="legacy_stdio"),
    ]
    for source in wrong:
        status = source.status()
        assert not status.ready
        assert "protocol pinned to" in status.detail and status.detail.endswith("; retrying"), status
        assert source.tools() == []
    assert "Unsupported protocol version" in wrong[0].status().detail


async def test_the_era_is_remembered_across_reconnects(make_source: Factory, servers) -> None:
    server = await servers("--era", "dual")
    source = await make_source(server.table(list_ttl_min_s=0.2))  # an idle stateless server is re-listed, so missed, this soon
    assert await call(source, "requests", method="server/discover") == "1"
    await server.stop()
    await wait_until(lambda: not source.status().ready)
    await server.start()  # the same port, a new process that has seen nothing
    await wait_until(lambda: source.status().ready, 20)
    assert source.status().detail.endswith(f"protocol {MODERN}")
    assert await call(source, "requests", method="server/discover") == "0"


# The stateless server's tool list


async def test_stateless_list_is_served_from_cache_within_its_ttl(make_source: Factory, servers) -> None:
    server = await servers("--era", "modern", "--ttl-ms", "3600000")
    source = await make_source(server.table(list_ttl_max_s=3600))
    for _ in range(5):
        assert "echo" in {t.name for t in source.tools()}
        assert await call(source, "echo", text="x") == "x"
    assert await call(source, "grow") == "grown"
    assert "grown" not in {t.name for t in source.tools()}
    assert await call(source, "requests", method="tools/list") == "1"


async def test_stateless_list_is_refreshed_after_its_ttl(make_source: Factory, servers) -> None:
    server = await servers("--era", "modern", "--ttl-ms", "300")
    source = await make_source(server.table(list_ttl_min_s=0.1))
    assert await call(source, "grow") == "grown"
    await wait_until(lambda: "grown" in {t.name for t in source.tools()})
    assert await call(source, "grown") == "I am new"
    assert await call(source, "requests", method="tools/list") != "1"


async def test_the_ttl_is_bounded_by_the_config(make_source: Factory, servers) -> None:
    long = await servers("--era", "modern", "--ttl-ms", "3600000")
    zero = await servers("--era", "modern", "--ttl-ms", "0")
    capped = await make_source(long.table(list_ttl_min_s=0.1, list_ttl_max_s=0.3), name="capped")
    floored = await make_source(zero.table(list_ttl_min_s=3600, list_ttl_max_s=3600), name="floored")
    assert await call(capped, "grow") == "grown"
    await wait_until(lambda: "grown" in {t.name for t in capped.tools()})
    for _ in range(3):
        await call(floored, "echo", text="x")
    assert await call(floored, "requests", method="tools/list") == "1"  # ttlMs 0 is not a busy loop


async def test_stateless_changed_definition_is_disabled(make_source: Factory, servers, caplog: pytest.LogCaptureFixture) -> None:
    server = await servers("--era", "modern", "--ttl-ms", "200")
    source = await make_source(server.table(list_ttl_min_s=0.1))
    with caplog.at_level(logging.WARNING, "toolgate.mcp"):
        assert await call(source, "mutate") == "mutated"
        await wait_until(lambda: "echo" not in {t.name for t in source.tools()})
    assert "changed the definition of tool 'echo'" in caplog.text
    assert "add" in {t.name for t in source.tools()}


async def test_stateless_server_is_never_pinged(make_source: Factory, servers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mcp_source, "KEEPALIVE_S", 0.05)
    server = await servers("--era", "dual", "--ttl-ms", "3600000")
    source = await make_source(server.table(list_ttl_max_s=3600))
    before = [await call(source, "requests", method=m) for m in ("", "ping")]
    assert before[1] == "0"
    await asyncio.sleep(0.5)  # ten keepalive periods of a handshake-era session
    assert [await call(source, "requests", method=m) for m in ("", "ping")] == before
    assert await call(source, "requests", method="tools/list") == "1"


# Death mid-call, and progress


async def test_stateless_server_killed_mid_call_is_a_tool_error(make_source: Factory, servers) -> None:
    server = await servers("--era", "modern")
    source = await make_source(server.table())
    echo = tool(source, "echo")  # as a request's offer holds it
    sleeping = asyncio.ensure_future(call(source, "sleep", seconds=30))
    await asyncio.sleep(0.3)
    await server.stop()
    with pytest.raises(ToolError, match="srv"):
        await asyncio.wait_for(sleeping, 5)
    await wait_until(lambda: not source.status().ready)
    with pytest.raises(ToolError, match="not available"):
        await asyncio.wait_for(echo.call({"text": "x"}), 5)
    await server.start()
    await wait_until(lambda: source.status().ready, 20)
    assert await call(source, "echo", text="back") == "back"


@pytest.mark.parametrize("kind", ["modern", "legacy_http", "legacy_stdio", "sse"])
async def test_progress_reaches_the_listener(make_source: Factory, servers, kind: str) -> None:
    if kind == "legacy_stdio":
        source = await make_source(stdio("legacy"))
    else:
        era, transport = {"modern": ("modern", "http"), "legacy_http": ("legacy", "http"), "sse": ("legacy", "sse")}[kind]
        server = await servers("--era", era, transport=transport)
        source = await make_source(server.table())
    heard: list[tuple[float, float | None, str | None]] = []
    with listening(lambda *report: heard.append(report)):
        assert await call(source, "count", steps=3, pause=0.01) == "counted 3"
    assert heard == [(1.0, 3.0, "step 1 of 3"), (2.0, 3.0, "step 2 of 3"), (3.0, 3.0, "step 3 of 3")]


async def test_config_problems_of_the_era_keys() -> None:
    problems = Problems("t.toml")
    build("a", {"url": "http://x/mcp", "protocol": "2025-06-18"}, problems, "tools.mcp.a")
    build("b", {"url": "http://x/sse", "transport": "sse", "protocol": MODERN}, problems, "tools.mcp.b")
    build("c", {"url": "http://x/mcp", "list_ttl_min_s": 60, "list_ttl_max_s": 10}, problems, "tools.mcp.c")
    build("d", {"url": "http://x/mcp", "list_ttl_max_s": 0}, problems, "tools.mcp.d")
    assert problems.lines == [
        "t.toml: tools.mcp.a.protocol: expected auto or legacy or 2026-07-28, got '2025-06-18'",
        "t.toml: tools.mcp.b.protocol: 2026-07-28 has no HTTP+SSE transport; expected auto or legacy",
        "t.toml: tools.mcp.c.list_ttl_min_s: 60 s is above list_ttl_max_s (10 s)",
        "t.toml: tools.mcp.d.list_ttl_max_s: expected a number of seconds above 0, got 0",
    ]
    source = build("e", {"command": "x", "protocol": "legacy", "list_ttl_min_s": 1, "list_ttl_max_s": 2}, problems, "k")
    assert isinstance(source, McpSource)
    assert (source.spec.protocol, source.spec.list_ttl_min_s, source.spec.list_ttl_max_s) == ("legacy", 1.0, 2.0)
