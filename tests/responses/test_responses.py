"""The Responses API in-process: every body and event checked against the SDK's own models,
and what reached the upstream."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import httpx
import orjson
import pytest
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.config import ResponsesSettings
from gateway.errors import ConfigError
from gateway.responses import slot as store_slot
from gateway.responses.conversation import to_messages
from gateway.store import StoreUnavailable, _sqlite, open_store
from gateway.tools.base import StaticSource, Tool, ToolError
from gateway.tools.registry import ready
from tests.support import ScriptedUpstream, call, chunk, completion, gateway, settings, sse_body, write_locked_elsewhere

EVENT = TypeAdapter(ResponseStreamEvent)
ITEM = TypeAdapter(ResponseItem)


class Add(Tool):
    def __init__(self) -> None:
        super().__init__("add", "Adds a and b.", {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}})
        self.calls: list[dict] = []

    async def call(self, arguments):
        self.calls.append(arguments)
        return str(arguments["a"] + arguments["b"])


def config(tmp_path, extra=None, environ=None, sources=()):
    env = {"TOOLGATE_STORE_URL": f"sqlite:///{tmp_path}/responses.db", **(environ or {})}
    cfg = settings({"upstreams": {"default": {"url": "http://upstream.test/v1", "retries": 0}}, **(extra or {})}, env)
    if sources:
        cfg = dataclasses.replace(cfg, sources=(*cfg.sources, *map(ready, sources)))
    return cfg


def valid(body: dict) -> Response:
    return Response.model_validate(body)


def events(text: str) -> list[dict]:
    out = []
    for block in text.split("\n\n"):
        if not block.strip() or block.startswith(":"):
            continue
        kind, data = block.split("\n")
        event = orjson.loads(data.removeprefix("data: "))
        assert kind == f"event: {event['type']}"
        EVENT.validate_python(event)
        out.append(event)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


def types(body: dict) -> list[str]:
    return [item["type"] for item in body["output"]]


async def create(client: httpx.AsyncClient, **body) -> httpx.Response:
    body.setdefault("model", "m")
    headers = body.pop("headers", {})
    return await client.post("/v1/responses", json=body, headers=headers)


async def test_parallel_server_calls_over_two_rounds(tmp_path):
    up = ScriptedUpstream(
        completion(None, tool_calls=[call("calculate", {"expression": "6*7"}, "a"), call("calculate", {"expression": "1+1"}, "b")]),
        completion(None, tool_calls=[call("calculate", {"expression": "42+2"}, "c")]),
        completion("44", usage={"prompt_tokens": 30, "completion_tokens": 1, "total_tokens": 31, "prompt_tokens_details": {"cached_tokens": 8}}),
    )
    async with gateway(config(tmp_path), up) as client:
        r = await create(client, input="6*7 + 1+1?", instructions="Be brief.", temperature=0.2, max_output_tokens=100, metadata={"k": "v"})
    assert r.status_code == 200
    body = r.json()
    valid(body)
    assert body["id"].startswith("resp_") and body["status"] == "completed" and body["model"] == "m"
    assert types(body) == ["mcp_list_tools", "mcp_call", "mcp_call", "mcp_call", "message"]
    calls = body["output"][1:4]
    assert [c["arguments"] for c in calls] == ['{"expression":"6*7"}', '{"expression":"1+1"}', '{"expression":"42+2"}']
    assert [c["output"] for c in calls] == ["42", "2", "44"]
    assert all(c["server_label"] == "builtin" and c["status"] == "completed" and c["id"].startswith("mcp_") for c in calls)
    assert body["output"][-1]["content"][0]["text"] == "44"
    assert body["usage"] == {
        "input_tokens": 50,
        "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 55,
    }
    assert body["metadata"] == {"k": "v"} and body["temperature"] == 0.2 and body["instructions"] == "Be brief."
    first = up.bodies[0]
    assert first["messages"][0]["role"] == "system" and first["messages"][0]["content"].endswith("Be brief.")
    assert first["messages"][1] == {"role": "user", "content": "6*7 + 1+1?"}
    assert first["max_tokens"] == 100 and first["temperature"] == 0.2
    assert "metadata" not in first and "store" not in first
    assert [m["role"] for m in up.bodies[1]["messages"][-3:]] == ["assistant", "tool", "tool"]


async def test_streamed_events_and_a_rounds_text_before_its_calls(tmp_path):
    up = ScriptedUpstream(
        sse_body(
            chunk({"role": "assistant", "content": "Let me "}),
            chunk({"content": "look."}),
            chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "calculate", "arguments": '{"expression":"2**8"}'}}]}),
            chunk(finish="tool_calls"),
            chunk(usage={"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}),
        ),
        sse_body(chunk({"reasoning_content": "easy"}), chunk({"content": "256"}), chunk(finish="stop"), chunk(usage={"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10})),
    )
    async with gateway(config(tmp_path), up) as client:
        r = await create(client, input="2**8?", stream=True)
        seen = events(r.text)
        kinds = [e["type"] for e in seen]
        assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
        assert "response.mcp_list_tools.completed" in kinds and "response.mcp_call.completed" in kinds
        assert "response.reasoning_text.delta" in kinds and "response.mcp_call_arguments.done" in kinds
        final = seen[-1]["response"]
        valid(final)
        assert types(final) == ["mcp_list_tools", "message", "mcp_call", "reasoning", "message"]
        assert final["output"][1]["content"][0]["text"] == "Let me look."
        assert final["output"][-1]["content"][0]["text"] == "256"
        assert final["usage"]["total_tokens"] == 18
        deltas = [e["delta"] for e in seen if e["type"] == "response.output_text.delta"]
        assert "".join(deltas) == "Let me look.256"
        # Stored as the client saw it.
        again = await client.get(f"/v1/responses/{final['id']}")
        assert again.json()["output"] == final["output"]
    assert r.headers["content-type"].startswith("text/event-stream")


async def test_client_function_call_is_handed_back_and_continued_by_previous_response_id(tmp_path):
    weather = {"type": "function", "name": "weather", "description": "Weather in a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    up = ScriptedUpstream(
        completion("Checking.", tool_calls=[call("calculate", {"expression": "1+1"}, "s1"), call("weather", {"city": "Oslo"}, "w1")]),
        completion("Sunny in Oslo, and 1+1 is 2."),
    )
    async with gateway(config(tmp_path), up) as client:
        r = await create(client, input="weather?", tools=[weather])
        body = r.json()
        valid(body)
        assert types(body) == ["mcp_list_tools", "message", "mcp_call", "function_call"]
        fc = body["output"][-1]
        assert fc["call_id"] == "w1" and fc["name"] == "weather" and fc["status"] == "completed" and fc["id"].startswith("fc_")
        assert body["output"][1]["content"][0]["text"] == "Checking."
        assert up.bodies[0]["tools"][-1] == {"type": "function", "function": {"name": "weather", "description": "Weather in a city.", "parameters": weather["parameters"]}}
        r2 = await create(client, previous_response_id=body["id"], input=[{"type": "function_call_output", "call_id": "w1", "output": "sunny"}], tools=[weather])
        body2 = r2.json()
        valid(body2)
        assert types(body2) == ["message"]  # the source was listed earlier in this conversation
        items = (await client.get(f"/v1/responses/{body2['id']}/input_items", params={"order": "asc"})).json()
        assert [i["type"] for i in items["data"]][:2] == ["message", "mcp_list_tools"]
        for item in items["data"]:
            ITEM.validate_python(item)
    messages = up.bodies[1]["messages"]
    assert [m["role"] for m in messages[1:]] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in messages[2]["tool_calls"]][1] == "w1"
    assert messages[2]["content"] == "Checking."
    assert messages[3]["content"] == "2" and messages[4] == {"role": "tool", "tool_call_id": "w1", "content": "sunny"}


async def test_continued_by_full_input_without_a_store(tmp_path):
    up = ScriptedUpstream(completion("Done."))
    history = [
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": "w1", "name": "weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "w1", "output": [{"type": "input_text", "text": "sunny"}]},
        {"type": "mcp_call", "id": "mcp_1", "server_label": "builtin", "name": "calculate", "arguments": "{}", "output": "2"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "and this?"}, {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
    ]
    cfg = config(tmp_path, environ={"TOOLGATE_STORE_URL": "sqlite:////nonexistent/dir/x.db"})
    async with gateway(cfg, up) as client:
        r = await create(client, input=history, store=False, tools=[{"type": "function", "name": "weather"}])
    assert r.status_code == 200, r.text
    valid(r.json())
    sent = up.bodies[0]["messages"][1:]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "assistant", "tool", "assistant", "user"]
    assert sent[2]["content"] == "sunny" and sent[4]["content"] == "2"
    assert sent[-1]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "auto"}}


async def test_an_mcp_call_sent_without_an_id_gets_one_as_its_chat_call_id_even_unstored(tmp_path):
    # Unstored input items get no ids, except the calls whose id is their chat call id.
    up = ScriptedUpstream(completion("Done."))
    history = [
        {"role": "user", "content": "1+1?"},
        {"type": "mcp_call", "server_label": "builtin", "name": "calculate", "arguments": '{"expression":"1+1"}', "output": "2"},
        {"role": "user", "content": "and again?"},
    ]
    async with gateway(config(tmp_path), up) as client:
        r = await create(client, input=history, store=False)
    assert r.status_code == 200, r.text
    sent = up.bodies[0]["messages"][1:]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]
    (called,) = sent[1]["tool_calls"]
    assert called["id"].startswith("mcp_") and sent[2] == {"role": "tool", "tool_call_id": called["id"], "content": "2"}
    assert sent[0] == {"role": "user", "content": "1+1?"}  # the message itself goes as it came


async def test_store_false_stores_nothing_and_another_owner_sees_404(tmp_path):
    up = ScriptedUpstream(completion("a"), completion("b"))
    cfg = config(tmp_path, environ={"TOOLGATE_API_KEYS": "key-one,key-two"})
    one = {"authorization": "Bearer key-one"}
    two = {"authorization": "Bearer key-two"}
    async with gateway(cfg, up) as client:
        kept = (await create(client, input="x", headers=one)).json()["id"]
        gone = (await create(client, input="x", store=False, headers=one)).json()["id"]
        assert (await client.get(f"/v1/responses/{kept}", headers=one)).status_code == 200
        missing = await client.get(f"/v1/responses/{gone}", headers=one)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        other = await client.get(f"/v1/responses/{kept}", headers=two)
        assert other.status_code == 404 and other.json()["error"]["type"] == "invalid_request_error"
        assert (await client.get(f"/v1/responses/{kept}/input_items", headers=two)).status_code == 404
        assert (await client.delete(f"/v1/responses/{kept}", headers=two)).status_code == 404
        chained = await create(client, input="y", previous_response_id=kept, headers=two)
        assert chained.status_code == 404 and chained.json()["error"]["param"] == "previous_response_id"
        deleted = await client.delete(f"/v1/responses/{kept}", headers=one)
        assert deleted.json() == {"id": kept, "object": "response", "deleted": True}
        assert (await client.get(f"/v1/responses/{kept}", headers=one)).status_code == 404


async def test_input_items_pages(tmp_path):
    up = ScriptedUpstream(completion("ok"))
    items = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    async with gateway(config(tmp_path), up) as client:
        rid = (await create(client, input=items, tool_choice="none")).json()["id"]
        first = (await client.get(f"/v1/responses/{rid}/input_items", params={"limit": 2, "order": "asc"})).json()
        assert [i["content"][0]["text"] for i in first["data"]] == ["m0", "m1"] and first["has_more"] is True
        rest = (await client.get(f"/v1/responses/{rid}/input_items", params={"after": first["last_id"], "order": "asc"})).json()
        assert [i["content"][0]["text"] for i in rest["data"]] == ["m2", "m3", "m4"] and rest["has_more"] is False
        newest = (await client.get(f"/v1/responses/{rid}/input_items", params={"limit": 1})).json()
        assert newest["data"][0]["content"][0]["text"] == "m4"
        bad = await client.get(f"/v1/responses/{rid}/input_items", params={"limit": 0})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"
        bad = await client.get(f"/v1/responses/{rid}/input_items", params={"order": "up"})
        assert bad.json()["error"]["param"] == "order"
    assert "tools" not in up.bodies[0]


async def test_item_reference_resolves_within_the_previous_conversation(tmp_path):
    up = ScriptedUpstream(completion("first"), completion("second"))
    async with gateway(config(tmp_path), up) as client:
        body = (await create(client, input="hello", tool_choice="none")).json()
        items = (await client.get(f"/v1/responses/{body['id']}/input_items")).json()["data"]
        ref = [{"type": "item_reference", "id": items[0]["id"]}]
        r = await create(client, input=ref, previous_response_id=body["id"], tool_choice="none")
        assert r.status_code == 200
        bad = await create(client, input=[{"type": "item_reference", "id": "msg_nope"}], previous_response_id=body["id"])
        assert bad.status_code == 404 and bad.json()["error"]["param"] == "input[0].id"
    assert [m["content"] for m in up.bodies[1]["messages"]] == ["hello", "first", "hello"]


def calc_source() -> tuple[StaticSource, Add]:
    add = Add()
    return StaticSource("calc", [add]), add


class Mul(Tool):
    def __init__(self) -> None:
        super().__init__("mul", "Multiplies a and b.", {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}})

    async def call(self, arguments):
        return str(arguments["a"] * arguments["b"])


async def test_the_tools_listing_follows_a_source_whose_tools_change(tmp_path):
    # The listing of the alias's tools is kept between requests; a source whose tools change
    # is listed anew from the next request on.
    add = Add()
    source = StaticSource("calc", [add, Mul()])
    up = ScriptedUpstream(completion("one"), completion("two"), completion("three"))
    cfg = config(tmp_path, extra={"models": [{"name": "m", "upstream_model": "up", "tools": ["*"]}]}, sources=(source,))

    def listed(body: dict) -> list[str]:
        valid(body)
        (listing,) = [item for item in body["output"] if item["type"] == "mcp_list_tools" and item["server_label"] == "calc"]
        return [tool["name"] for tool in listing["tools"]]

    async with gateway(cfg, up) as client:
        first = (await create(client, input="hi", store=False)).json()
        second = (await create(client, input="hi", store=False)).json()
        source._tools = [add]  # a new list: the toolbox sees a change (mul is gone)
        third = (await create(client, input="hi", store=False)).json()
    assert listed(first) == listed(second) == ["add", "mul"]
    assert listed(third) == ["add"]
    ids = [next(i["id"] for i in body["output"] if i["type"] == "mcp_list_tools" and i["server_label"] == "calc") for body in (first, second, third)]
    assert len(set(ids)) == 3  # each response's listing is an item of its own
    assert "mul" in [t["function"]["name"] for t in up.bodies[1]["tools"]]
    assert "mul" not in [t["function"]["name"] for t in up.bodies[2]["tools"]]


async def test_mcp_tool_by_label_waits_for_approval_then_runs(tmp_path):
    source, add = calc_source()
    up = ScriptedUpstream(
        completion(None, tool_calls=[call("add", {"a": 2, "b": 3}, "x1")]),
        completion("5"),
    )
    cfg = config(tmp_path, extra={"models": [{"name": "m", "upstream_model": "up", "tools": ["calculate"]}]}, sources=(source,))
    mcp = {"type": "mcp", "server_label": "calc", "require_approval": "always"}
    async with gateway(cfg, up) as client:
        body = (await create(client, input="2+3 with add", tools=[mcp])).json()
        valid(body)
        assert types(body) == ["mcp_list_tools", "mcp_list_tools", "mcp_approval_request"]
        assert {i["server_label"] for i in body["output"][:2]} == {"builtin", "calc"}
        request = body["output"][-1]
        assert request["id"].startswith("mcpr_") and request["name"] == "add" and request["server_label"] == "calc"
        assert add.calls == []
        answer = [{"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": True}]
        r = await create(client, previous_response_id=body["id"], input=answer, tools=[mcp], stream=True)
        seen = events(r.text)
    final = seen[-1]["response"]
    valid(final)
    assert types(final) == ["mcp_call", "message"]
    assert final["output"][0]["approval_request_id"] == request["id"] and final["output"][0]["output"] == "5"
    assert add.calls == [{"a": 2, "b": 3}]
    names = [t["function"]["name"] for t in up.bodies[0]["tools"]]
    assert names == ["calculate", "add"]
    messages = up.bodies[1]["messages"]
    assert messages[-2]["tool_calls"][0]["id"] == request["id"]
    assert messages[-1] == {"role": "tool", "tool_call_id": request["id"], "content": "5"}


async def test_mcp_approval_denied_and_never_policies(tmp_path):
    source, add = calc_source()
    up = ScriptedUpstream(
        completion(None, tool_calls=[call("add", {"a": 1, "b": 1}, "x1")]),
        completion("Not allowed."),
        completion(None, tool_calls=[call("add", {"a": 1, "b": 2}, "x2")]),
        completion("3"),
    )
    cfg = config(tmp_path, extra={"models": [{"name": "m", "upstream_model": "up", "tools": []}]}, sources=(source,))
    async with gateway(cfg, up) as client:
        held = (await create(client, input="1+1", tools=[{"type": "mcp", "server_label": "calc"}])).json()
        request = held["output"][-1]
        assert request["type"] == "mcp_approval_request"
        answer = [{"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": False}]
        denied = (await create(client, previous_response_id=held["id"], input=answer, tools=[{"type": "mcp", "server_label": "calc"}])).json()
        assert types(denied) == ["message"]
        policy = {"never": {"tool_names": ["add"]}}
        ran = (await create(client, input="1+2", tools=[{"type": "mcp", "server_label": "calc", "require_approval": policy, "allowed_tools": ["add"]}])).json()
        valid(ran)
        assert types(ran) == ["mcp_list_tools", "mcp_call", "message"]
    assert add.calls == [{"a": 1, "b": 2}]
    assert up.bodies[1]["messages"][-1]["content"] == "Error: the user did not approve this call."


async def test_allowed_tools_filter_and_unknown_label(tmp_path):
    source, _ = calc_source()
    up = ScriptedUpstream(completion("ok"))
    cfg = config(tmp_path, extra={"models": [{"name": "m", "upstream_model": "up", "tools": []}]}, sources=(source,))
    async with gateway(cfg, up) as client:
        r = await create(client, input="x", tools=[{"type": "mcp", "server_label": "calc", "allowed_tools": ["nothing"]}])
        assert r.status_code == 200 and "tools" not in up.bodies[0]
        r = await create(client, input="x", tools=[{"type": "mcp", "server_label": "nope"}])
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools[0].server_label"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": []}]}, "tools[0].type"),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0].type"),
        ({"tools": [{"type": "image_generation"}]}, "tools[0].type"),
        ({"tools": [{"type": "local_shell"}]}, "tools[0].type"),
        ({"tools": [{"type": "computer_use_preview"}]}, "tools[0].type"),
        ({"tools": [{"type": "mcp", "server_label": "calc", "server_url": "https://mcp.example"}]}, "tools[0].server_url"),
        ({"background": True}, "background"),
        ({"truncation": "auto"}, "truncation"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"include": ["nonsense"]}, "include[0]"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"input": [{"type": "web_search_call", "id": "x"}]}, "input[0].type"),
        ({"input": 3}, "input"),
        ({"model": ""}, "model"),
        ({"tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]}, "input[0].content[0].image_url"),
        ({"input": []}, "input"),
    ],
)
async def test_unsupported_or_bad_parameters_are_400_naming_the_param(tmp_path, body, param):
    async with gateway(config(tmp_path), ScriptedUpstream()) as client:
        r = await create(client, **{"input": "x", **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"


async def test_parameters_mapped_for_the_upstream(tmp_path):
    up = ScriptedUpstream(completion('{"a": 1}'), completion("x"))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    async with gateway(config(tmp_path), up) as client:
        r = await create(
            client,
            input="json",
            text={"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}},
            reasoning={"effort": "low"},
            top_p=0.5,
            user="u1",
            tool_choice="none",
            include=["reasoning.encrypted_content"],
            store=False,
        )
        valid(r.json())
        await create(client, input="o", text={"format": {"type": "json_object"}}, tools=[{"type": "function", "name": "f"}], tool_choice={"type": "function", "name": "f"}, store=False)
    sent = up.bodies[0]
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}}
    assert sent["reasoning_effort"] == "low" and sent["top_p"] == 0.5 and sent["user"] == "u1"
    assert "tools" not in sent and "tool_choice" not in sent
    assert up.bodies[1]["response_format"] == {"type": "json_object"}
    assert up.bodies[1]["tool_choice"] == {"type": "function", "function": {"name": "f"}}


async def test_length_is_incomplete_and_the_round_cap_too(tmp_path):
    up = ScriptedUpstream(
        completion("cut sho", finish="length"),
        completion(None, tool_calls=[call("calculate", {"expression": "1"})]),
        completion("from what I have"),
    )
    cfg = config(tmp_path, extra={"models": [{"name": "m", "upstream_model": "up", "tools": ["calculate"], "max_rounds": 1}]})
    async with gateway(cfg, up) as client:
        cut = (await create(client, input="long", max_output_tokens=3)).json()
        capped = (await create(client, input="loop")).json()
    valid(cut)
    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {"reason": "max_output_tokens"}
    assert cut["max_output_tokens"] == 3
    valid(capped)
    assert capped["status"] == "incomplete" and capped["output"][-1]["content"][0]["text"] == "from what I have"
    assert up.bodies[2]["tool_choice"] == "none"


async def test_upstream_error_before_the_first_event_keeps_its_status(tmp_path):
    limited = httpx.Response(429, json={"error": {"message": "slow down", "type": "rate_limit_error"}}, headers={"retry-after": "1"})
    up = ScriptedUpstream(limited, httpx.Response(429, json={"error": {"message": "slow down"}}))
    async with gateway(config(tmp_path), up) as client:
        r = await create(client, input="x")
        s = await create(client, input="x", stream=True)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert s.status_code == 429 and s.headers["content-type"] == "application/json"


async def test_upstream_error_after_the_first_event_is_an_error_then_failed(tmp_path):
    up = ScriptedUpstream(
        sse_body(chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "calculate", "arguments": '{"expression":"1+1"}'}}]}), chunk(finish="tool_calls")),
        httpx.Response(500, json={"error": {"message": "boom"}}),
    )
    async with gateway(config(tmp_path), up) as client:
        r = await create(client, input="x", stream=True)
        seen = events(r.text)
        assert r.status_code == 200
        assert [e["type"] for e in seen[-2:]] == ["error", "response.failed"]
        failed = seen[-1]["response"]
        valid(failed)
        assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
        assert types(failed) == ["mcp_list_tools", "mcp_call"]
        stored = await client.get(f"/v1/responses/{failed['id']}")
        assert stored.json()["status"] == "failed"


async def test_a_store_that_cannot_open_is_503_for_store_true_only(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    up = ScriptedUpstream(completion("fine"))
    async with gateway(config(tmp_path, environ={"TOOLGATE_STORE_URL": f"sqlite:///{blocker}/x.db"}), up) as client:
        r = await create(client, input="x")
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
        again = await create(client, input="x")
        assert again.status_code == 503
        ok = await create(client, input="x", store=False)
        assert ok.status_code == 200
        assert (await client.get("/v1/responses/resp_1")).status_code == 503


def slow_migrations(monkeypatch, seconds: float) -> list[int]:
    """Every open's migration takes `seconds` on the store's thread (a large file's); the list
    counts the migrations run."""
    ran: list[int] = []
    migrate = _sqlite.migrate

    def slow(conn):
        ran.append(1)
        time.sleep(seconds)
        return migrate(conn)

    monkeypatch.setattr(_sqlite, "migrate", slow)
    monkeypatch.setattr(store_slot, "OPEN_S", 0.5)
    return ran


async def test_a_slow_open_goes_on_once_while_requests_get_503(tmp_path, monkeypatch):
    ran = slow_migrations(monkeypatch, 2.0)
    up = ScriptedUpstream(completion("unstored"), completion("stored"))
    async with gateway(config(tmp_path), up) as client:
        started = time.monotonic()
        first = await create(client, input="x")
        waited = time.monotonic() - started
        assert first.status_code == 503 and first.headers["retry-after"] == "5"
        assert first.json()["error"]["code"] == "store_unavailable" and "still opening" in first.json()["error"]["message"]
        assert 0.45 < waited < 1.5  # the request waited its own while (OPEN_S), not the open
        assert (await client.get("/healthz")).status_code == 200
        assert (await create(client, input="x", store=False)).status_code == 200
        started = time.monotonic()
        again = await create(client, input="x")
        assert again.status_code == 503 and "still opening" in again.json()["error"]["message"]
        assert time.monotonic() - started < 0.4  # past the open's first while, told at once
        await asyncio.sleep(2.0)
        stored = await create(client, input="x")
        assert stored.status_code == 200
        assert (await client.get(f"/v1/responses/{stored.json()['id']}")).json()["output"][-1]["content"][0]["text"] == "stored"
    assert ran == [1]  # one open, however many requests asked while it ran
    assert len(up.requests) == 2  # the 503s asked the model nothing


async def test_another_worker_migrating_the_file_is_still_opening_not_a_lock_error(tmp_path, monkeypatch):
    monkeypatch.setattr(store_slot, "OPEN_S", 0.5)
    up = ScriptedUpstream(completion("stored"))
    conf = config(tmp_path, {"store": {"timeout_s": 0.5}})  # an operation's busy timeout: 0.4 s
    with write_locked_elsewhere(tmp_path / "responses.db", 2.0) as holder:
        async with gateway(conf, up) as client:
            first = await create(client, input="x")
            assert first.status_code == 503 and first.headers["retry-after"] == "5"
            assert "still opening" in first.json()["error"]["message"], first.json()
            assert (await client.get("/healthz")).status_code == 200
            await asyncio.to_thread(holder.wait, 10)
            for _ in range(50):  # the open finds the lock gone within SQLite's busy backoff
                stored = await create(client, input="x")
                if stored.status_code != 503:
                    break
                assert "still opening" in stored.json()["error"]["message"], stored.json()
                await asyncio.sleep(0.1)
            assert stored.status_code == 200, stored.text
            assert (await client.get(f"/v1/responses/{stored.json()['id']}")).status_code == 200


async def test_a_gateway_stopping_during_a_slow_open_does_not_wait_for_it(tmp_path, monkeypatch):
    slow_migrations(monkeypatch, 2.0)
    slot = store_slot.StoreSlot(lambda: open_store(f"sqlite:///{tmp_path}/r.db", ttl_s=60, max_bytes=1 << 20))
    with pytest.raises(StoreUnavailable, match="still opening"):
        await slot.get()
    await asyncio.wait_for(slot.close(), 1.0)  # well before the migration ends
    assert slot.store is None


async def test_reasoning_and_refusal_non_streamed(tmp_path):
    reply = completion("", usage={"prompt_tokens": 1, "completion_tokens": 9, "total_tokens": 10, "completion_tokens_details": {"reasoning_tokens": 7}})
    reply["choices"][0]["message"].update({"reasoning_content": "hmm", "refusal": "I can't."})
    up = ScriptedUpstream(reply)
    async with gateway(config(tmp_path), up) as client:
        body = (await create(client, input="x", tool_choice="none", store=False)).json()
    valid(body)
    assert types(body) == ["reasoning", "message"]
    assert body["output"][1]["content"] == [{"type": "refusal", "refusal": "I can't."}]
    assert body["usage"]["output_tokens_details"]["reasoning_tokens"] == 7


async def test_streamed_refusal_and_logprobs(tmp_path):
    lp = [{"token": "No", "logprob": -0.1, "bytes": [78, 111], "top_logprobs": []}]
    up = ScriptedUpstream(
        sse_body(
            {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up", "choices": [{"index": 0, "delta": {"content": "No"}, "logprobs": {"content": lp}, "finish_reason": None}]},
            chunk({"refusal": "nope"}),
            chunk(finish="stop"),
        )
    )
    async with gateway(config(tmp_path), up) as client:
        r = await create(client, input="x", stream=True, tool_choice="none", include=["message.output_text.logprobs"], store=False)
    seen = events(r.text)
    final = seen[-1]["response"]
    valid(final)
    content = final["output"][0]["content"]
    assert content[0]["text"] == "No" and content[0]["logprobs"][0]["token"] == "No"
    assert up.bodies[0]["logprobs"] is True


async def test_an_approved_call_must_be_the_last_turn(tmp_path):
    items = [
        {"role": "user", "content": "x"},
        {"type": "mcp_approval_request", "id": "mcpr_1", "server_label": "calc", "name": "add", "arguments": "{}"},
        {"role": "user", "content": "and more"},
        {"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": True},
    ]
    async with gateway(config(tmp_path), ScriptedUpstream()) as client:
        r = await create(client, input=items, store=False)
        unknown = await create(client, input=[{"type": "mcp_approval_response", "approval_request_id": "mcpr_9", "approve": True}], store=False)
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "input[0].approval_request_id"


async def test_a_failed_store_write_is_logged_never_a_late_error(tmp_path, caplog):
    up = ScriptedUpstream(completion("a long enough answer to pass the tiny cap"))
    async with gateway(config(tmp_path, extra={"store": {"max_bytes": 64}}), up) as client:
        r = await client.post("/responses", json={"model": "m", "input": "x"})
        assert r.status_code == 200
        assert (await client.get(f"/v1/responses/{r.json()['id']}")).status_code == 404
    assert any("was not stored" in rec.getMessage() for rec in caplog.records)


async def test_tool_choice_required_holds_for_the_first_round_only(tmp_path):
    up = ScriptedUpstream(completion(None, tool_calls=[call("calculate", {"expression": "6*7"})]), completion("42"))
    async with gateway(config(tmp_path), up) as client:
        r = await create(client, input="x", tool_choice="required", store=False)
    assert r.status_code == 200 and r.json()["output"][-1]["type"] == "message"
    assert up.bodies[0]["tool_choice"] == "required" and "tool_choice" not in up.bodies[1]


def test_a_function_call_the_client_never_answered_gets_a_placeholder_reply():
    items = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c2", "output": "two"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "never mind"}]},
    ]
    messages = to_messages(items).messages
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "user"]
    assert messages[3] == {"role": "tool", "tool_call_id": "c1", "content": "Error: the client sent no output for this call."}


async def test_max_tool_calls_lowers_the_loops_cap(tmp_path):
    calls = [call("calculate", {"expression": f"{i}+1"}, f"c{i}") for i in range(3)]
    up = ScriptedUpstream(completion(None, tool_calls=calls), completion("done"))
    async with gateway(config(tmp_path), up) as client:
        r = await create(client, input="x", max_tool_calls=1, store=False)
    assert r.status_code == 200 and r.json()["max_tool_calls"] == 1
    replies = [m["content"] for m in up.bodies[1]["messages"] if m["role"] == "tool"]
    assert replies[0] == "1" and all("limit of 1 tool calls" in text for text in replies[1:])


async def test_prompt_cache_settings_the_agents_sdk_sends_are_accepted_and_echoed(tmp_path):
    async with gateway(config(tmp_path), ScriptedUpstream(completion("hi"))) as client:
        r = await create(client, input="x", prompt_cache_retention="24h", store=False)
    assert r.status_code == 200 and r.json()["prompt_cache_retention"] == "24h"
    valid(r.json())


async def test_item_reference_resolves_from_any_stored_response_of_the_key(tmp_path):
    up = ScriptedUpstream(completion("the first answer"), completion("second"))
    cfg = config(tmp_path, environ={"TOOLGATE_API_KEYS": "key-a-123456,key-b-123456"})
    a, b = {"authorization": "Bearer key-a-123456"}, {"authorization": "Bearer key-b-123456"}
    async with gateway(cfg, up) as client:
        first = (await create(client, input="hello", tool_choice="none", headers=a)).json()
        answer = first["output"][-1]["id"]
        # No previous_response_id: the store finds the output item by its id alone.
        r = await create(client, input=[{"type": "item_reference", "id": answer}, {"role": "user", "content": "and?"}], tool_choice="none", headers=a)
        assert r.status_code == 200, r.text
        valid(r.json())
        other = await create(client, input=[{"type": "item_reference", "id": answer}], headers=b)  # another key's item
        unknown = await create(client, input=[{"role": "user", "content": "x"}, {"type": "item_reference", "id": "msg_nope"}], headers=a)
        unstored = await create(client, input=[{"type": "item_reference", "id": "msg_nope"}], store=False, headers=a)
    assert up.bodies[1]["messages"] == [{"role": "assistant", "content": "the first answer"}, {"role": "user", "content": "and?"}]
    for bad, at in ((other, 0), (unknown, 1), (unstored, 0)):
        assert bad.status_code == 404, bad.text
        error = bad.json()["error"]
        assert error["param"] == f"input[{at}].id" and error["type"] == "invalid_request_error"
        assert "msg_nope" in error["message"] or answer in error["message"]
    assert len(up.requests) == 2


def tool_stream(name: str) -> bytes:
    function = {"name": name, "arguments": "{}"}
    return sse_body(chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": function}]}), chunk(finish="tool_calls"))


class Broken(Tool):
    def __init__(self) -> None:
        super().__init__("broken", "Always fails.", {"type": "object", "properties": {}})

    async def call(self, arguments):
        raise ToolError("the disk is full")


async def test_a_failing_server_tool_is_an_mcp_call_failed_event(tmp_path):
    up = ScriptedUpstream(tool_stream("broken"), sse_body(chunk({"content": "Sorry."}), chunk(finish="stop")))
    tools = [{"type": "mcp", "server_label": "bad", "require_approval": "never"}]
    async with gateway(config(tmp_path, sources=(StaticSource("bad", [Broken()]),)), up) as client:
        r = await create(client, input="try", tools=tools, stream=True)
    seen = events(r.text)
    kinds = [e["type"] for e in seen]
    assert "response.mcp_call.failed" in kinds and "response.mcp_call.completed" not in kinds
    done = seen[-1]["response"]
    valid(done)
    failed = [i for i in done["output"] if i["type"] == "mcp_call"]
    assert failed[0]["status"] == "failed" and failed[0]["output"] is None
    assert failed[0]["error"]["type"] == "mcp_tool_execution_error" and "the disk is full" in failed[0]["error"]["content"][0]["text"]
    # Sent back as input, the failed call reads as its error to the model.
    conversation = to_messages([{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "try"}]}, failed[0]])
    assert "the disk is full" in conversation.messages[-1]["content"]


class Slow(Tool):
    def __init__(self) -> None:
        super().__init__("slow", "Takes a while.", {"type": "object", "properties": {}})

    async def call(self, arguments):
        await asyncio.sleep(0.35)
        return "done"


async def test_keepalives_while_a_tool_runs_and_the_events_still_validate(tmp_path):
    up = ScriptedUpstream(tool_stream("slow"), sse_body(chunk({"content": "Finished."}), chunk(finish="stop")))
    cfg = config(tmp_path, extra={"server": {"keepalive_s": 0.1}}, sources=(StaticSource("slowpoke", [Slow()]),))
    tools = [{"type": "mcp", "server_label": "slowpoke", "require_approval": "never"}]
    async with gateway(cfg, up) as client:
        r = await create(client, input="wait", tools=tools, stream=True)
    assert r.text.count(": keepalive") >= 2
    seen = events(r.text)  # comments skipped; every event validates, sequence numbers unbroken
    assert seen[-1]["type"] == "response.completed"


async def test_a_sources_approval_default_from_the_config(tmp_path):
    source, add = calc_source()
    up = ScriptedUpstream(completion(None, tool_calls=[call("add", {"a": 2, "b": 2}, "x")]), completion("4"), completion(None, tool_calls=[call("add", {"a": 1, "b": 1}, "y")]))
    cfg = config(tmp_path, extra={"models": [{"name": "m", "upstream_model": "up", "tools": []}]}, sources=(source,))
    cfg = dataclasses.replace(cfg, responses=ResponsesSettings(require_approval={"calc": "never"}))
    async with gateway(cfg, up) as client:
        ran = (await create(client, input="2+2", tools=[{"type": "mcp", "server_label": "calc"}])).json()
        asked = (await create(client, input="1+1", tools=[{"type": "mcp", "server_label": "calc", "require_approval": "always"}])).json()
    assert types(ran) == ["mcp_list_tools", "mcp_call", "message"]  # no require_approval sent: the config's "never"
    assert types(asked)[-1] == "mcp_approval_request"  # the request's own policy wins
    assert add.calls == [{"a": 2, "b": 2}]


def test_the_responses_config_table_is_checked():
    with pytest.raises(ConfigError) as caught:
        settings({"responses": {"require_approval": {"calc": "sometimes", "nope": "never"}, "mcp_server_urls": ["mcp.example.com"], "mcp_sessions": 0}})
    text = str(caught.value)
    assert "responses.require_approval.calc: expected one of always, never" in text
    assert "responses.require_approval.nope: no tool source of that name is configured" in text
    assert "responses.mcp_server_urls: 'mcp.example.com': expected an http(s) URL pattern" in text
    assert "responses.mcp_sessions: expected an integer of at least 1" in text
