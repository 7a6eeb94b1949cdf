"""MCP servers of every era and transport through the whole gateway: a real uvicorn, the fake
LLM, the real OpenAI SDK. Tool calls, progress on both APIs, annotations in the trace and in
an alias's tool selection."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai.types.responses import ResponseMcpCallInProgressEvent

from gateway.config import StoreSettings, settings_from_dict
from gateway.errors import ConfigError
from tests.fakellm import Calls, FakeLLM, Reply
from tests.test_e2e import sdk, serve
from tests.tools.mcp.test_mcp import SERVER, HttpServer, wait_until

KINDS = {  # name -> (era, transport)
    "stateless_http": ("modern", "http"),
    "handshake_http": ("legacy", "http"),
    "handshake_stdio": ("legacy", "stdio"),
    "sse": ("legacy", "sse"),
}


@pytest.fixture
async def mcp_table() -> AsyncIterator[Any]:
    started: list[HttpServer] = []

    async def table(kind: str, **extra: Any) -> dict[str, Any]:
        era, transport = KINDS[kind]
        if transport == "stdio":
            return {"command": sys.executable, "args": [SERVER, "--transport", "stdio", "--era", era], **extra}
        server = HttpServer(transport, "--era", era)
        await server.start()
        started.append(server)
        return server.table(**extra)

    yield table
    for server in started:
        await server.stop()


def config(fake: FakeLLM, table: dict[str, Any], tools: list[str], tmp_path=None):
    raw = {
        "upstreams": {"default": {"url": fake.url, "retries": 0}},
        "models": [{"name": "m", "upstream_model": "fake-model", "tools": tools}],
        "tools": {"builtin": {"calculate": {}}, "mcp": {"srv": table}},
    }
    settings = settings_from_dict(raw, {})
    if tmp_path is not None:
        settings = dataclasses.replace(settings, store=StoreSettings(url=f"sqlite:///{tmp_path}/responses.db"))
    return settings


def _tool_messages(request: Any) -> list[str]:
    return [m["content"] for m in request.body["messages"] if m["role"] == "tool"]


@pytest.mark.parametrize("kind", list(KINDS))
async def test_each_era_and_transport_lists_and_calls_through_the_loop(mcp_table, kind: str) -> None:
    table = await mcp_table(kind)
    async with FakeLLM() as fake:
        # count reports progress: a non-streamed reply shows none of it
        fake.push(Calls([("add", {"a": 2, "b": 3}), ("echo", {"text": "hi"}), ("count", {"steps": 2, "pause": 0.01})]), Reply("5, and hi."))
        async with serve(config(fake, table, ["*"])) as (base, app):
            status = app.state.runtime.toolbox.sources[1].status()
            async with sdk(base) as client:
                reply = await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "go"}], extra_headers={"x-toolgate-trace": "1"}
                )
    assert status.ready, status
    protocol = "2026-07-28" if KINDS[kind][0] == "modern" else "2025-11-25"
    assert status.detail.endswith(f"protocol {protocol}")
    assert reply.choices[0].message.content == "5, and hi."
    offered = {t["function"]["name"] for t in fake.requests[0].body["tools"]}
    assert {"add", "echo", "count", "calculate"} <= offered
    assert _tool_messages(fake.requests[1]) == ["5", "hi", "counted 2"]
    assert set(reply.choices[0].message.model_extra or {}) <= {"reasoning_content"} and not getattr(reply.choices[0].message, "reasoning_content", None)
    trace = {t["name"]: t for t in reply.model_extra["toolgate"]["tools"]}
    assert trace["add"]["annotations"] == {"title": "Adder", "readOnlyHint": True, "idempotentHint": True, "openWorldHint": False}
    assert "annotations" not in trace["echo"]  # it states none


async def test_progress_shows_in_a_streamed_chat_completion(mcp_table) -> None:
    table = await mcp_table("stateless_http")
    async with FakeLLM() as fake:
        fake.push(Calls([("count", {"steps": 3, "pause": 0.5})]), Reply("Counted."))
        async with serve(config(fake, table, ["*"])) as (base, _):
            async with sdk(base) as client:
                stream = await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "count"}], stream=True,
                    extra_headers={"x-toolgate-progress": "reasoning"},
                )
                reasoning = content = ""
                async for chunk in stream:
                    if chunk.choices:
                        delta = chunk.choices[0].delta
                        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
                        content += delta.content or ""
    assert content == "Counted."
    lines = reasoning.splitlines()
    assert lines[0] == 'Calling count({"steps":3,"pause":0.5})'
    assert "count: 1/3 step 1 of 3" in lines and "count: 3/3 step 3 of 3" in lines
    assert lines.index("count: 1/3 step 1 of 3") < lines.index("count: 3/3 step 3 of 3")
    assert re.fullmatch(r"count: ok in \d+ ms", lines[-1])


async def test_a_progress_flood_is_coalesced(mcp_table) -> None:
    table = await mcp_table("handshake_stdio")
    async with FakeLLM() as fake:
        fake.push(Calls([("count", {"steps": 3000, "pause": 0})]), Reply("Done."))
        async with serve(config(fake, table, ["*"])) as (base, _):
            async with sdk(base) as client:
                stream = await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "count"}], stream=True,
                    extra_headers={"x-toolgate-progress": "reasoning"},
                )
                reasoning = ""
                async for chunk in stream:
                    if chunk.choices:
                        reasoning += (chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
    shown = [line for line in reasoning.splitlines() if re.fullmatch(r"count: \d+/3000 step \d+ of 3000", line)]
    assert 1 <= len(shown) < 300  # 3000 reports, a few lines a second
    numbers = [int(line.split()[1].split("/")[0]) for line in shown]
    assert numbers == sorted(numbers)
    assert _tool_messages(fake.requests[1]) == ["counted 3000"]


async def test_progress_is_an_mcp_call_in_progress_event_on_the_responses_api(mcp_table, tmp_path) -> None:
    table = await mcp_table("handshake_http")
    async with FakeLLM() as fake:
        fake.push(Calls([("count", {"steps": 3, "pause": 0.5})]), Reply("Counted."))
        async with serve(config(fake, table, ["*"], tmp_path)) as (base, _):
            async with sdk(base) as client:
                async with client.responses.stream(model="m", input="count") as stream:
                    events = [event async for event in stream]
                    final = await stream.get_final_response()
    call = next(item for item in final.output if item.type == "mcp_call")
    assert call.output == "counted 3" and call.status == "completed"
    alive = [e for e in events if e.type == "response.mcp_call.in_progress"]
    # The SDK builds its event objects without validating them: validate what came over the wire.
    assert all(ResponseMcpCallInProgressEvent.model_validate(e.to_dict()).item_id == call.id for e in alive)
    assert all(set(e.to_dict()) == {"type", "sequence_number", "item_id", "output_index"} for e in alive)
    assert len(alive) >= 3  # the call's start, then its progress
    kinds = [e.type for e in events]
    assert kinds.index("response.mcp_call.completed") > max(i for i, k in enumerate(kinds) if k == "response.mcp_call.in_progress")


async def test_an_alias_can_leave_out_destructive_and_open_world_tools(mcp_table) -> None:
    table = await mcp_table("handshake_stdio")
    raw_tools = ["*", "!destructive", "!open_world"]
    async with FakeLLM() as fake:
        fake.push(Calls([("add", {"a": 1, "b": 2})]), Reply("3."))
        async with serve(config(fake, table, raw_tools)) as (base, _):
            async with sdk(base) as client:
                await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "1+2"}])
    offered = {t["function"]["name"] for t in fake.requests[0].body["tools"]}
    # add states readOnlyHint and openWorldHint false; calculate is a built-in that states them;
    # the server's other tools state nothing, and the protocol's defaults make them both.
    assert offered == {"add", "calculate"}
    assert _tool_messages(fake.requests[1]) == ["3"]


def test_an_unknown_exclusion_is_a_config_problem() -> None:
    raw = {
        "upstreams": {"default": {"url": "http://upstream.test/v1"}},
        "models": [{"name": "m", "upstream_model": "u", "tools": ["*", "!dangerous"]}],
        "tools": {"builtin": {"calculate": {}}},
    }
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(raw, {})
    assert "models[0].tools: '!dangerous' names no annotation; expected one of !destructive, !open_world" in str(caught.value)


@pytest.mark.parametrize("kind", ["stateless_http", "handshake_http", "sse"])
async def test_a_server_killed_mid_call_is_a_tool_message_not_a_hang(kind: str) -> None:
    era, transport = KINDS[kind]
    server = HttpServer(transport, "--era", era)
    await server.start()
    try:
        async with FakeLLM() as fake:
            fake.push(Calls([("sleep", {"seconds": 60})]), Reply("It broke."))
            async with serve(config(fake, server.table(), ["*"])) as (base, _):
                async with sdk(base) as client:
                    asked = asyncio.ensure_future(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "nap"}]))
                    await wait_until(lambda: len(fake.requests) == 1)
                    await asyncio.sleep(0.3)  # the call is on the wire
                    await server.stop()
                    reply = await asyncio.wait_for(asked, 10)
    finally:
        await server.stop()
    assert reply.choices[0].message.content == "It broke."
    [message] = _tool_messages(fake.requests[1])
    assert message.startswith("Error: MCP server 'srv': "), message


@pytest.mark.parametrize(("own", "bound"), [(None, 0.5), (0.3, 0.3)])
async def test_an_mcp_call_is_bounded_by_the_loops_tool_timeout_unless_its_server_sets_one(mcp_table, own, bound) -> None:
    # A server table without timeout_s took 30 s whatever loop.tool_timeout_s said.
    table = await mcp_table("handshake_stdio", **({"timeout_s": own} if own is not None else {}))
    async with FakeLLM() as fake:
        fake.push(Calls([("sleep", {"seconds": 20})]), Reply("Too slow."))
        settings = config(fake, table, ["*"])
        settings = dataclasses.replace(settings, loop=dataclasses.replace(settings.loop, tool_timeout_s=0.5))
        async with serve(settings) as (base, _):
            async with sdk(base) as client:
                reply = await asyncio.wait_for(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "nap"}]), 10)
    assert reply.choices[0].message.content == "Too slow."
    assert _tool_messages(fake.requests[1]) == [f"Error: sleep did not finish within {bound:g} s."]


def test_a_server_timeout_past_the_request_deadline_is_a_warning() -> None:
    raw = {
        "upstreams": {"default": {"url": "http://up.test/v1"}},
        "server": {"request_timeout_s": 20},
        "tools": {"mcp": {"srv": {"command": sys.executable, "args": [SERVER], "timeout_s": 25}}},
    }
    warnings = settings_from_dict(raw, {}).warnings
    assert any("tools.mcp.srv.timeout_s: 25 s is not below server.request_timeout_s (20 s)" in line for line in warnings), warnings
