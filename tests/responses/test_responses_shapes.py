"""What a typed client and a strict host see: every part a request sends reaches the model,
both renderings hold the same items, and what the Response repeats is what its types allow."""

from __future__ import annotations

import pytest

from gateway.tools.base import SourceStatus
from tests.responses.test_responses import config, create, events, types, valid
from tests.support import ScriptedUpstream, call, chunk, completion, gateway, sse_body


async def test_text_parts_of_either_kind_reach_the_model(tmp_path):
    up = ScriptedUpstream(completion("ok"), completion("ok"))
    quoted = [{"role": "user", "content": [{"type": "input_text", "text": "quote:"}, {"type": "output_text", "text": "earlier answer"}]}]
    image = {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}
    mixed = [
        {"role": "user", "content": [{"type": "output_text", "text": "look"}, image]},
        {"role": "assistant", "content": [{"type": "input_text", "text": "b"}]},
        {"role": "user", "content": "and?"},
    ]
    async with gateway(config(tmp_path), up) as client:
        assert (await create(client, input=quoted, store=False)).status_code == 200
        assert (await create(client, input=mixed, store=False)).status_code == 200
    sent = [[m for m in body["messages"] if m["role"] != "system"] for body in up.bodies]
    assert sent[0] == [{"role": "user", "content": "quote:\nearlier answer"}]
    assert sent[1] == [
        {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": image["image_url"], "detail": "auto"}}]},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "and?"},
    ]


def _said_then_called() -> tuple[dict, dict]:
    return completion("Let me compute that.", tool_calls=[call("calculate", {"expression": "9*9"}, "c1")]), completion("Result: 81")


async def test_a_rounds_text_before_its_calls_is_an_item_streamed_or_not(tmp_path):
    first, second = _said_then_called()
    streamed = ScriptedUpstream(
        sse_body(
            chunk({"role": "assistant", "content": "Let me compute that."}),
            chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "calculate", "arguments": '{"expression":"9*9"}'}}]}),
            chunk(finish="tool_calls"),
        ),
        sse_body(chunk({"content": "Result: 81"}), chunk(finish="stop")),
    )
    async with gateway(config(tmp_path), ScriptedUpstream(first, second)) as client:
        body = (await create(client, input="9*9?")).json()
        stored = (await client.get(f"/v1/responses/{body['id']}")).json()
    async with gateway(config(tmp_path), streamed) as client:
        final = events((await create(client, input="9*9?", stream=True)).text)[-1]["response"]
    valid(body)
    assert types(body) == types(final) == ["mcp_list_tools", "message", "mcp_call", "message"]
    texts = [[item["content"][0]["text"] for item in b["output"] if item["type"] == "message"] for b in (body, final)]
    assert texts[0] == texts[1] == ["Let me compute that.", "Result: 81"]
    assert body["output"][1]["status"] == "completed"
    assert stored["output"] == body["output"]


async def test_a_refusal_alone_is_one_part_streamed_or_not(tmp_path):
    reply = completion("")
    reply["choices"][0]["message"] = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    streamed = ScriptedUpstream(sse_body(chunk({"role": "assistant", "refusal": "I can't "}), chunk({"refusal": "help with that."}), chunk(finish="stop")))
    async with gateway(config(tmp_path), ScriptedUpstream(reply)) as client:
        body = (await create(client, input="x", tool_choice="none", store=False)).json()
    async with gateway(config(tmp_path), streamed) as client:
        seen = events((await create(client, input="x", tool_choice="none", store=False, stream=True)).text)
    final = seen[-1]["response"]
    valid(body)
    valid(final)
    refusal = [{"type": "refusal", "refusal": "I can't help with that."}]
    assert body["output"][-1]["content"] == final["output"][-1]["content"] == refusal
    kinds = [e["type"] for e in seen]
    assert "response.output_text.done" not in kinds and "response.refusal.done" in kinds
    added = next(e for e in seen if e["type"] == "response.content_part.added")
    assert added["part"]["type"] == "refusal" and added["content_index"] == 0


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"metadata": {f"k{n}": "v" for n in range(17)}}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"metadata": {"k" * 65: "v"}}, "metadata." + "k" * 64),
        ({"metadata": "abc"}, "metadata"),
        ({"max_tool_calls": "abc"}, "max_tool_calls"),
        ({"max_tool_calls": -1}, "max_tool_calls"),
        ({"service_tier": "bogus"}, "service_tier"),
        ({"reasoning": {"effort": "bogus"}}, "reasoning.effort"),
        ({"reasoning": {"summary": "bogus"}}, "reasoning.summary"),
        ({"text": {"verbosity": "loud"}}, "text.verbosity"),
        ({"prompt_cache_retention": "forever"}, "prompt_cache_retention"),
        ({"prompt_cache_options": {"ttl": "1y"}}, "prompt_cache_options.ttl"),
        ({"prompt_cache_options": {"other": 1}}, "prompt_cache_options"),
        ({"prompt_cache_key": 5}, "prompt_cache_key"),
        ({"safety_identifier": 5}, "safety_identifier"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": -3}, "top_logprobs"),
        ({"temperature": 5}, "temperature"),
        ({"top_p": 2}, "top_p"),
    ],
)
async def test_what_the_response_repeats_is_checked_as_its_types_say(tmp_path, extra, param):
    up = ScriptedUpstream()
    async with gateway(config(tmp_path), up) as client:
        r = await create(client, input="x", store=False, **extra)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"
    assert not up.requests  # nothing went upstream


async def test_what_the_response_repeats_validates_with_the_sdk(tmp_path):
    up = ScriptedUpstream(completion("ok"))
    sent = {
        "metadata": {f"k{n}": "v" * 512 for n in range(16)},
        "max_tool_calls": 0,
        "service_tier": "flex",
        "reasoning": {"effort": "low", "summary": "auto"},
        "text": {"verbosity": "low"},
        "prompt_cache_retention": "24h",
        "prompt_cache_options": {"ttl": "12h"},
        "prompt_cache_key": "k",
        "safety_identifier": "s",
        "top_logprobs": 20,
        "temperature": 2,
        "top_p": 0,
    }
    async with gateway(config(tmp_path), up) as client:
        body = (await create(client, input="x", store=False, **sent)).json()
    response = valid(body)
    assert response.prompt_cache_options is not None and (response.prompt_cache_options.mode, response.prompt_cache_options.ttl) == ("implicit", "12h")
    assert body["metadata"] == sent["metadata"] and body["reasoning"] == {"effort": "low", "summary": "auto"}
    assert isinstance(body["created_at"], int) and isinstance(body["completed_at"], int)
    upstream = up.bodies[0]
    assert upstream["service_tier"] == "flex" and upstream["reasoning_effort"] == "low" and upstream["verbosity"] == "low"


async def test_no_tool_parameters_go_upstream_without_tools(tmp_path):
    plain = {"models": [{"name": "m", "upstream_model": "up"}, {"name": "t", "upstream_model": "up", "tools": ["calculate"]}]}
    up = ScriptedUpstream(completion("a"), completion("b"))
    async with gateway(config(tmp_path, plain), up) as client:
        none = await create(client, model="t", input="x", store=False, tool_choice="none", parallel_tool_calls=True)
        bare = await create(client, input="x", store=False, parallel_tool_calls=False)
        required = await create(client, input="x", store=False, tool_choice="required")
    assert none.status_code == bare.status_code == 200
    assert none.json()["tool_choice"] == "none" and none.json()["parallel_tool_calls"] is True  # repeated as sent
    assert bare.json()["parallel_tool_calls"] is False
    for body in up.bodies:
        assert not {"tools", "tool_choice", "parallel_tool_calls"} & body.keys(), body
    assert required.status_code == 400 and required.json()["error"]["param"] == "tool_choice"
    assert len(up.requests) == 2


async def test_a_function_call_output_without_its_call_is_a_400(tmp_path):
    up = ScriptedUpstream()
    orphan = [{"role": "user", "content": "hi"}, {"type": "function_call_output", "call_id": "c", "output": "x"}]
    async with gateway(config(tmp_path), up) as client:
        r = await create(client, input=orphan, store=False)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "input[1].call_id" and "'c'" in r.json()["error"]["message"]
    assert not up.requests


async def test_retrieving_a_stored_response_as_a_stream_is_a_400(tmp_path):
    async with gateway(config(tmp_path), ScriptedUpstream(completion("ok"))) as client:
        body = (await create(client, input="x", tool_choice="none")).json()
        streamed = await client.get(f"/v1/responses/{body['id']}", params={"stream": "true"})
        plain = await client.get(f"/v1/responses/{body['id']}", params={"stream": "false"})
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "stream"
    assert plain.status_code == 200 and plain.json()["id"] == body["id"]


async def test_allowed_tools_narrow_the_alias_own_tools_of_that_source(tmp_path):
    up = ScriptedUpstream(completion("ok"))
    mcp = {"type": "mcp", "server_label": "builtin", "allowed_tools": ["calculate"], "require_approval": "never"}
    async with gateway(config(tmp_path), up) as client:
        body = (await create(client, input="x", store=False, tools=[mcp])).json()
    valid(body)
    (listing,) = [item for item in body["output"] if item["type"] == "mcp_list_tools"]
    assert listing["server_label"] == "builtin" and [t["name"] for t in listing["tools"]] == ["calculate"]
    assert [t["function"]["name"] for t in up.bodies[0]["tools"]] == ["calculate"]


class _Down:
    """A configured source that is not up (an MCP server that does not answer)."""

    name, prefix = "down", False

    async def start(self, ctx):
        return None

    async def stop(self):
        return None

    def tools(self):
        return []

    def status(self):
        return SourceStatus(False, "no answer within 3 s; retrying")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_named_source_that_is_down_lists_its_error(tmp_path, stream):
    up = ScriptedUpstream(sse_body(chunk({"content": "ok"}), chunk(finish="stop")) if stream else completion("ok"))
    mcp = {"type": "mcp", "server_label": "down", "require_approval": "never"}
    async with gateway(config(tmp_path, sources=(_Down(),)), up) as client:
        r = await create(client, input="x", store=False, tools=[mcp], stream=stream)
    if stream:
        seen = events(r.text)
        body = seen[-1]["response"]
        kinds = [e["type"] for e in seen]
        failed = [e for e in seen if e["type"] == "response.mcp_list_tools.failed"]
        assert len(failed) == 1 and "response.mcp_list_tools.completed" in kinds  # the alias's own source listed fine
    else:
        body = r.json()
    valid(body)
    listings = {item["server_label"]: item for item in body["output"] if item["type"] == "mcp_list_tools"}
    assert listings["down"]["tools"] == [] and "not available: no answer within 3 s" in listings["down"]["error"]
    assert listings["builtin"]["error"] is None
    if stream:
        assert failed[0]["item_id"] == listings["down"]["id"]
