"""`mcp` tools with a `server_url`: a real MCP server over streamable HTTP on 127.0.0.1,
allowlisted by `[responses]`, its secrets kept from the model, the client, the store and the logs."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from openai.types.responses import Response

from gateway.config import ResponsesSettings
from gateway.errors import McpServerFailed, Overloaded
from gateway.responses.remote import RemoteServers
from gateway.responses.tools import McpTool
from tests.support import ScriptedUpstream, call, completion, gateway, settings
from tests.tools.mcp.test_mcp import HttpServer, http_server  # noqa: F401 (a fixture)

TOKEN = "tok-5ecret-value-123"


@pytest.fixture
async def mcp_http(http_server: HttpServer) -> HttpServer:
    """The MCP test server over streamable HTTP (tests/tools/mcp/test_mcp.py's), for `server_url`."""
    return http_server


def config(tmp_path, server: HttpServer | None, **responses):
    port = server.port if server else 9
    table = {"mcp_server_urls": [f"http://127.0.0.1:{port}/*"], "mcp_network_allow": [f"127.0.0.1:{port}"], "mcp_connect_timeout_s": 3, **responses}
    return settings(
        {"upstreams": {"default": {"url": "http://upstream.test/v1", "retries": 0}}, "responses": table},
        {"TOOLGATE_STORE_URL": f"sqlite:///{tmp_path}/responses.db"},
    )


def remote_tool(server: HttpServer, **extra):
    return {"type": "mcp", "server_label": "calc", "server_url": server.url, "require_approval": "never", **extra}


async def test_a_remote_server_runs_its_tools_and_its_token_stays_with_it(tmp_path, mcp_http, caplog):
    caplog.set_level(logging.DEBUG)
    up = ScriptedUpstream(
        completion(None, tool_calls=[call("add", {"a": 2, "b": 3}, "a"), call("header", {"name": "authorization"}, "b")]),
        completion("5, and the header is hidden."),
    )
    async with gateway(config(tmp_path, mcp_http), up) as client:
        tools = [remote_tool(mcp_http, authorization=TOKEN, allowed_tools=["add", "header"])]
        r = await client.post("/v1/responses", json={"model": "m", "input": "2+3?", "tools": tools})
        assert r.status_code == 200, r.text
        stored = await client.get(f"/v1/responses/{r.json()['id']}")
    body = r.json()
    Response.model_validate(body)
    ours = [i for i in body["output"] if i.get("server_label") == "calc"]
    assert [i["type"] for i in ours] == ["mcp_list_tools", "mcp_call", "mcp_call"] and body["output"][-1]["type"] == "message"
    listing = ours[0]
    assert {t["name"] for t in listing["tools"]} == {"add", "header"}
    calls = {i["name"]: i for i in ours[1:]}
    assert calls["add"]["output"] == "5" and calls["add"]["server_label"] == "calc"
    assert calls["header"]["output"] == "***"  # the server saw it; nobody else does
    offered = {t["function"]["name"] for t in up.bodies[0]["tools"]}
    assert {"add", "header"} <= offered and "echo" not in offered  # allowed_tools
    seen_by_model = "".join(r.content.decode() for r in up.requests)
    assert "***" in seen_by_model and TOKEN not in seen_by_model
    assert body["tools"] == [{k: v for k, v in tools[0].items() if k != "authorization"}]
    assert stored.status_code == 200 and TOKEN not in stored.text
    assert TOKEN not in caplog.text


async def test_sessions_are_reused_by_url_and_headers(tmp_path, mcp_http):
    replies = []
    for n in range(3):
        replies += [completion(None, tool_calls=[call("echo", {"text": f"hi {n}"}, f"e{n}")]), completion("ok")]
    replies += [completion(None, tool_calls=[call("session_count", {}, "s")]), completion("done")]
    up = ScriptedUpstream(*replies)
    async with gateway(config(tmp_path, mcp_http), up) as client:
        for n in range(4):
            tool = remote_tool(mcp_http, headers={"X-Team": "blue"})
            r = await client.post("/v1/responses", json={"model": "m", "input": "go", "tools": [tool], "store": False})
            assert r.status_code == 200, r.text
    outputs = [i["output"] for i in r.json()["output"] if i["type"] == "mcp_call"]
    assert outputs == ["1"]  # four requests, one MCP session


@pytest.mark.parametrize(
    ("tool", "param", "says"),
    [
        ({"server_url": "http://127.0.0.2:1/mcp"}, "tools[0].server_url", "not one the gateway's config allows"),
        ({"headers": {"X-Key": "${OPENAI_API_KEY}"}}, "tools[0].headers", "must not contain"),
        ({"headers": {"Bad Name": "x"}}, "tools[0].headers", "not a valid HTTP header"),
        ({"server_label": "a label"}, "tools[0].server_label", "letters, digits"),
        ({"connector_id": "connector_gmail"}, "tools[0].connector_id", "not supported"),
    ],
)
async def test_bad_remote_tools_are_400_before_anything_connects(tmp_path, tool, param, says):
    server = HttpServer()
    server.port = 1
    up = ScriptedUpstream()
    async with gateway(config(tmp_path, server), up) as client:
        r = await client.post("/v1/responses", json={"model": "m", "input": "x", "tools": [{**remote_tool(server), **tool}]})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and says in r.json()["error"]["message"]
    assert up.requests == []


async def test_a_private_address_needs_the_network_allowlist(tmp_path):
    server = HttpServer()
    server.port = 8123
    cfg = config(tmp_path, server, mcp_network_allow=[])
    async with gateway(cfg, ScriptedUpstream()) as client:
        r = await client.post("/v1/responses", json={"model": "m", "input": "x", "tools": [remote_tool(server)]})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tools[0].server_url" and "not allowed" in r.json()["error"]["message"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_an_unreachable_server_is_424_as_the_hosted_api_says_it(tmp_path):
    server = HttpServer()
    server.port = _closed_port()
    async with gateway(config(tmp_path, server, mcp_connect_timeout_s=1), ScriptedUpstream()) as client:
        r = await client.post("/v1/responses", json={"model": "m", "input": "x", "tools": [remote_tool(server, authorization=TOKEN)]})
    assert r.status_code == 424, r.text
    error = r.json()["error"]
    assert error["type"] == "external_connector_error" and error["param"] == "tools" and error["code"] == "http_error"
    assert error["message"].startswith("Error retrieving tool list from MCP server: 'calc'. cannot reach the server")
    assert not error["message"].endswith("retrying")
    assert TOKEN not in r.text


async def test_a_server_that_accepts_and_never_answers_is_424_in_bounded_time_and_healthz_answers_meanwhile(tmp_path):
    held: list[asyncio.StreamWriter] = []

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # read nothing, answer nothing, keep the connection open

    listener = await asyncio.start_server(stall, "127.0.0.1", 0)
    server = HttpServer()
    server.port = listener.sockets[0].getsockname()[1]
    try:
        async with gateway(config(tmp_path, server, mcp_connect_timeout_s=1), ScriptedUpstream()) as client:
            body = {"model": "m", "input": "x", "tools": [remote_tool(server, authorization=TOKEN)]}
            pending = asyncio.ensure_future(client.post("/v1/responses", json=body))
            while not held:
                await asyncio.sleep(0.01)
            health = await asyncio.wait_for(client.get("/healthz"), 2)
            assert not pending.done()  # the stall is still on
            r = await asyncio.wait_for(pending, 10)
    finally:
        for writer in held:
            writer.close()
        listener.close()
        await listener.wait_closed()
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert r.status_code == 424, r.text
    error = r.json()["error"]
    assert error["type"] == "external_connector_error" and error["message"].startswith("Error retrieving tool list from MCP server: 'calc'.")
    assert TOKEN not in r.text


def _mcp(server: HttpServer, team: str) -> McpTool:
    return McpTool("calc", None, frozenset(), url=server.url, headers={"X-Team": team})


async def test_the_pool_is_capped_reaps_idle_sessions_and_stops_at_close(mcp_http):
    remote = RemoteServers(ResponsesSettings(mcp_server_urls=(f"{mcp_http.url}",), mcp_network_allow=(f"127.0.0.1:{mcp_http.port}",), mcp_sessions=1, mcp_idle_s=0.2, mcp_connect_timeout_s=3))
    try:
        async with remote.session(_mcp(mcp_http, "blue"), param="tools[0]") as tools:
            assert "add" in {t.name for t in tools}
            with pytest.raises(Overloaded, match="All 1 remote MCP sessions are in use"):
                async with remote.session(_mcp(mcp_http, "red"), param="tools[0]"):
                    pass
        async with remote.session(_mcp(mcp_http, "red"), param="tools[0]"):  # the idle blue one makes room
            assert len(remote._sessions) == 1
        for _ in range(100):
            if not remote._sessions:
                break
            await asyncio.sleep(0.05)
        assert remote._sessions == {}  # idle past mcp_idle_s: closed
        async with remote.session(_mcp(mcp_http, "blue"), param="tools[0]"):
            pass
    finally:
        await remote.close()
    assert remote._sessions == {}
    with pytest.raises(Overloaded, match="shutting down"):
        async with remote.session(_mcp(mcp_http, "green"), param="tools[0]"):
            pass


async def test_a_server_that_refuses_the_handshake_is_424(tmp_path):
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(refuse, "127.0.0.1", 0)
    server = HttpServer()
    server.port = listener.sockets[0].getsockname()[1]
    try:
        remote = RemoteServers(ResponsesSettings(mcp_server_urls=(server.url,), mcp_network_allow=(f"127.0.0.1:{server.port}",), mcp_connect_timeout_s=2))
        with pytest.raises(McpServerFailed, match="Error retrieving tool list from MCP server: 'calc'"):
            async with remote.session(_mcp(server, "blue"), param="tools[0]"):
                pass
        await remote.close()
    finally:
        listener.close()
        await listener.wait_closed()


async def test_a_remote_call_waits_for_approval_by_default_then_runs(tmp_path, mcp_http):
    up = ScriptedUpstream(completion(None, tool_calls=[call("add", {"a": 20, "b": 22}, "a")]), completion("It is 42."))
    tools = [{"type": "mcp", "server_label": "calc", "server_url": mcp_http.url, "authorization": TOKEN}]
    async with gateway(config(tmp_path, mcp_http), up) as client:
        first = (await client.post("/v1/responses", json={"model": "m", "input": "20+22?", "tools": tools})).json()
        Response.model_validate(first)
        ask = first["output"][-1]
        assert ask["type"] == "mcp_approval_request" and ask["server_label"] == "calc" and ask["name"] == "add"
        answer = [{"type": "mcp_approval_response", "approval_request_id": ask["id"], "approve": True}]
        second = (await client.post("/v1/responses", json={"model": "m", "input": answer, "tools": tools, "previous_response_id": first["id"]})).json()
    Response.model_validate(second)
    ran = [i for i in second["output"] if i["type"] == "mcp_call"]
    assert ran[0]["output"] == "42" and ran[0]["approval_request_id"] == ask["id"]
    assert second["output"][-1]["content"][0]["text"] == "It is 42."
    assert len(up.requests) == 2
