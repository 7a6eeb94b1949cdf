"""The app in-process: what the client gets and what reached the upstream."""

from __future__ import annotations

import httpx
import orjson
import pytest

from tests.support import ScriptedUpstream, call, chunk, completion, gateway, settings, sse_body, sse_events

USER = [{"role": "user", "content": "What is 6*7?"}]


async def post(client: httpx.AsyncClient, **body):
    body.setdefault("model", "m")
    body.setdefault("messages", USER)
    headers = body.pop("headers", {})
    return await client.post("/v1/chat/completions", json=body, headers=headers)


async def test_one_tool_round_returns_only_the_final_answer():
    up = ScriptedUpstream(
        completion(None, tool_calls=[call("calculate", {"expression": "6*7"})]),
        completion("It is 42.", usage={"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24}),
    )
    async with gateway(settings(environ={}), up) as client:
        r = await post(client, temperature=0.1, headers={"x-request-id": "req-123"})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "m"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "It is 42."}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 30, "completion_tokens": 6, "total_tokens": 36}
    assert r.headers["x-toolgate-rounds"] == "1"
    assert r.headers["x-toolgate-tool-calls"] == "1"
    assert r.headers["x-request-id"] == "req-123"
    assert "toolgate" not in body

    first, second = up.bodies
    assert str(up.requests[0].url) == "http://upstream.test/v1/chat/completions"
    assert up.requests[0].headers["x-request-id"] == "req-123"
    assert first["model"] == "up-model" and first["temperature"] == 0.1
    assert {t["function"]["name"] for t in first["tools"]} == {"calculate", "current_time"}
    assert "stream" not in first and "tool_choice" not in first
    assert second["messages"][-2]["tool_calls"][0]["id"] == "call_1"
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "42"}


async def test_parallel_calls_answered_once_each_in_the_models_order():
    calls = [
        call("calculate", {"expression": "1+1"}, "a"),
        call("no_such_tool", {}, "b"),
        call("calculate", "{not json", "c"),
        call("calculate", {"expr": "1"}, "d"),
    ]
    up = ScriptedUpstream(completion(None, tool_calls=calls), completion("done"))
    async with gateway(settings(), up) as client:
        r = await post(client, headers={"x-toolgate-trace": "1"})
    assert r.status_code == 200
    tool_messages = [m for m in up.bodies[1]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_messages] == ["a", "b", "c", "d"]
    assert tool_messages[0]["content"] == "2"
    assert "no tool named 'no_such_tool'" in tool_messages[1]["content"]
    assert "not valid JSON" in tool_messages[2]["content"]
    assert "expression" in tool_messages[3]["content"] and tool_messages[3]["content"].startswith("Error")
    trace = r.json()["toolgate"]
    assert [t["outcome"] for t in trace["tools"]] == ["ok", "unknown_tool", "bad_arguments", "bad_arguments"]
    assert trace["rounds"] == 1 and trace["tool_calls"] == 4


async def test_tool_calls_found_by_presence_even_when_finish_reason_says_stop():
    up = ScriptedUpstream(
        completion(None, tool_calls=[call("calculate", {"expression": "2**10"})], finish="stop"),
        completion("1024"),
    )
    async with gateway(settings(), up) as client:
        r = await post(client)
    assert r.json()["choices"][0]["message"]["content"] == "1024"
    assert up.bodies[1]["messages"][-1]["content"] == "1024"


async def test_max_rounds_then_one_last_call_without_tools():
    loop_call = lambda i: completion(None, tool_calls=[call("calculate", {"expression": f"{i}+1"})])  # noqa: E731
    up = ScriptedUpstream(loop_call(1), loop_call(2), completion("best effort"))
    config = settings({"loop": {"max_rounds": 2}})
    async with gateway(config, up) as client:
        r = await post(client)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "best effort"
    assert r.headers["x-toolgate-rounds"] == "2"
    assert [b.get("tool_choice") for b in up.bodies] == [None, None, "none"]


async def test_max_rounds_as_error():
    up = ScriptedUpstream(completion(None, tool_calls=[call("calculate", {"expression": "1"})]))
    config = settings({"loop": {"max_rounds": 1, "on_max_rounds": "error"}})
    async with gateway(config, up) as client:
        r = await post(client)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "max_rounds_exceeded"


async def test_same_call_three_times_in_a_row_ends_the_loop():
    same = lambda: completion(None, tool_calls=[call("calculate", {"expression": "1+1"})])  # noqa: E731
    up = ScriptedUpstream(same(), same(), same(), completion("stopping"))
    async with gateway(settings(), up) as client:
        r = await post(client)
    assert r.json()["choices"][0]["message"]["content"] == "stopping"
    assert [b.get("tool_choice") for b in up.bodies] == [None, None, None, "none"]


async def test_client_tools_are_offered_and_handed_back():
    client_tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    calls = [call("calculate", {"expression": "3*3"}, "s1"), call("get_weather", {"city": "Oslo"}, "c1")]
    up = ScriptedUpstream(completion("Checking.", tool_calls=calls))
    async with gateway(settings(), up) as client:
        r = await post(client, tools=[client_tool])
    body = r.json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert [c["id"] for c in choice["message"]["tool_calls"]] == ["c1"]
    assert choice["message"]["content"] == "Checking."
    offered = [t["function"]["name"] for t in up.bodies[0]["tools"]]
    assert "get_weather" in offered and "calculate" in offered
    assert r.headers["x-toolgate-tool-calls"] == "1"


async def test_client_tool_name_clash_is_a_400():
    clash = {"type": "function", "function": {"name": "calculate"}}
    async with gateway(settings(), ScriptedUpstream()) as client:
        r = await post(client, tools=[clash])
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tools"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"n": 2}, 400, "n"),
        ({"model": "nope"}, 404, "model"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
        ({"messages": []}, 400, "messages"),
    ],
)
async def test_bad_requests_get_openai_errors(body, status, param):
    async with gateway(settings(), ScriptedUpstream()) as client:
        r = await post(client, **body)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}


async def test_unknown_model_passthrough_routes_to_the_default_upstream():
    up = ScriptedUpstream(completion("hi"))
    async with gateway(settings({"server": {"passthrough_unknown_models": True}}), up) as client:
        r = await post(client, model="llama3")
    assert r.status_code == 200
    assert r.json()["model"] == "llama3"
    assert up.bodies[0]["model"] == "llama3"


async def test_invalid_json_and_oversized_bodies():
    async with gateway(settings({"server": {"max_body_bytes": 200}}), ScriptedUpstream()) as client:
        bad = await client.post("/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
        big = await post(client, messages=[{"role": "user", "content": "x" * 500}])
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert big.status_code == 413


async def test_only_allowlisted_fields_and_params_reach_the_upstream():
    up = ScriptedUpstream(completion("ok"))
    messages = [
        {"role": "system", "content": "Be brief.", "id": "1"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}], "timestamp": 5, "backend": "x", "host": "h"},
    ]
    config = settings({"models": [{"name": "m", "upstream_model": "u", "tools": ["calculate"], "system_prompt": "From config."}]})
    async with gateway(config, up) as client:
        await post(
            client, messages=messages, seed=7, api_base="http://evil", mock_response="x",
            extra_headers={"a": "b"}, top_k=3, stream_options={"include_usage": True},
        )  # fmt: skip
    sent = up.bodies[0]
    assert sent["seed"] == 7
    for key in ("api_base", "mock_response", "extra_headers", "top_k", "stream_options"):
        assert key not in sent
    system, user = sent["messages"]
    assert system["role"] == "system"
    assert system["content"].startswith("From config.") and system["content"].endswith("Be brief.")
    assert "tools" in system["content"]  # the tool instruction sits between
    assert user == {"role": "user", "content": [{"type": "text", "text": "hi"}]}


async def test_openwebui_upstream_path_and_auth(monkeypatch):
    config = settings(
        {"upstreams": {"default": {"url": "http://webui.test/", "type": "openwebui", "api_key_env": "WEBUI_KEY"}}},
        environ={"WEBUI_KEY": "sk-webui-secret"},
    )
    up = ScriptedUpstream(completion("hi"))
    async with gateway(config, up) as client:
        await post(client)
    assert str(up.requests[0].url) == "http://webui.test/api/chat/completions"
    assert up.requests[0].headers["authorization"] == "Bearer sk-webui-secret"


def _error(status: int, body: bytes, content_type: str = "application/json", **headers: str) -> httpx.Response:
    return httpx.Response(status, content=body, headers={"content-type": content_type, **headers})


@pytest.mark.parametrize(
    ("reply", "status", "says"),
    [
        (_error(401, b'{"error": {"message": "Incorrect API key sk-up-secret"}}'), 502, "Incorrect API key ***"),
        (_error(400, b'{"error": {"message": "max_tokens too large"}}'), 400, "max_tokens too large"),
        (_error(429, b'{"error": {"message": "slow down"}}', **{"retry-after": "120"}), 429, "slow down"),
        (_error(500, b"<html><body>oops</body></html>", "text/html"), 502, "HTML"),
        (httpx.Response(200, content=b'{"choices": [', headers={"content-type": "application/json"}), 502, "truncated"),
        (httpx.Response(200, content=b"<html></html>", headers={"content-type": "text/html"}), 502, "HTML page"),
        (httpx.Response(200, json={"object": "chat.completion"}), 502, "no choices"),
        (httpx.ConnectError("refused"), 502, "Could not connect"),
        (httpx.ReadTimeout("slow"), 504, "did not answer in time"),
    ],
)
async def test_upstream_failures_become_clear_errors(reply, status, says):
    config = settings(
        {"upstreams": {"default": {"url": "http://10.1.2.3:9999/v1", "retries": 0, "api_key_env": "UP_KEY"}}},
        environ={"UP_KEY": "sk-up-secret"},
    )
    async with gateway(config, ScriptedUpstream(reply)) as client:
        r = await post(client)
    assert r.status_code == status
    error = r.json()["error"]
    assert says in error["message"]
    assert "sk-up-secret" not in r.text and "10.1.2.3" not in r.text and "Traceback" not in r.text
    if status == 429:
        assert r.headers["retry-after"] == "120"


async def test_a_reply_past_max_reply_bytes_is_a_502_not_read_further():
    config = settings({"upstreams": {"default": {"url": "http://up.test/v1", "retries": 0, "max_reply_bytes": 2000}}})
    big = completion("x" * 3000)
    stream = sse_body(chunk({"role": "assistant", "content": "y" * 1500}), chunk({"content": "y" * 1500}), chunk({}, "stop"))
    fits = completion("x" * 1000)
    async with gateway(config, ScriptedUpstream(big, stream, fits)) as client:
        whole = await post(client)
        streamed = await post(client, stream=True)
        small = await post(client)
    for r in (whole, streamed):
        assert r.status_code == 502, r.text
        error = r.json()["error"]
        assert error["code"] == "upstream_reply_too_large" and "2000 bytes" in error["message"]
    assert small.status_code == 200 and small.json()["choices"][0]["message"]["content"] == "x" * 1000


async def test_retries_transient_upstream_errors():
    up = ScriptedUpstream(_error(503, b"{}"), httpx.ConnectError("refused"), completion("third time"))
    config = settings({"upstreams": {"default": {"url": "http://up.test/v1", "retries": 2}}})
    async with gateway(config, up) as client:
        r = await post(client)
    assert r.status_code == 200
    assert len(up.requests) == 3


STREAM_TOOL_ROUND = sse_body(
    chunk({"role": "assistant", "content": ""}),
    chunk({"tool_calls": [{"index": 0, "id": "t1", "type": "function", "function": {"name": "calculate", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"expression"'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': "6*7"}'}}]}),
    chunk({}, "tool_calls"),
    chunk(usage={"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}),
)
STREAM_ANSWER = sse_body(
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "It is "}),
    chunk({"content": "42."}),
    chunk({}, "stop"),
    chunk(usage={"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}),
)


async def test_streaming_forwards_content_and_hides_tool_call_deltas():
    up = ScriptedUpstream(STREAM_TOOL_ROUND, STREAM_ANSWER)
    async with gateway(settings(), up) as client:
        r = await post(client, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "m" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "It is 42."
    assert not any("tool_calls" in c["choices"][0]["delta"] for c in chunks if c["choices"])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 20
    assert all(b["stream"] is True and b["stream_options"] == {"include_usage": True} for b in up.bodies)
    assert up.bodies[1]["messages"][-1]["content"] == "42"


async def test_streaming_progress_shows_tool_activity_as_reasoning():
    up = ScriptedUpstream(STREAM_TOOL_ROUND, STREAM_ANSWER)
    async with gateway(settings(), up) as client:
        r = await post(client, stream=True, headers={"x-toolgate-progress": "reasoning"})
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in sse_events(r.text)[:-1] if c["choices"])
    assert 'Calling calculate({"expression": "6*7"})' in reasoning
    assert "calculate: ok" in reasoning


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
async def test_a_stream_does_not_wait_out_a_retry_after_past_its_first_keepalive(path):
    # The first keepalive would send a 200: a 429 asking for longer goes to the client as it
    # is, with its Retry-After; one asking for less is waited out and retried.
    config = settings({"upstreams": {"default": {"url": "http://up.test/v1", "retries": 2}}, "server": {"keepalive_s": 1}})
    body = {"model": "m", "stream": True, "store": False, "input": "hi"} if path == "/v1/responses" else {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    long_wait = ScriptedUpstream(_error(429, b'{"error": {"message": "slow down"}}', **{"retry-after": "5"}))
    async with gateway(config, long_wait) as client:
        r = await client.post(path, json=body)
    assert r.status_code == 429 and r.headers["retry-after"] == "5", r.text
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert len(long_wait.requests) == 1
    short_wait = ScriptedUpstream(_error(429, b'{"error": {"message": "slow down"}}', **{"retry-after": "0.1"}), STREAM_ANSWER)
    async with gateway(config, short_wait) as client:
        r = await client.post(path, json=body)
    assert r.status_code == 200 and len(short_wait.requests) == 2


async def test_streaming_error_before_any_event_keeps_its_status():
    up = ScriptedUpstream(_error(401, b'{"error": {"message": "bad key"}}'))
    async with gateway(settings({"upstreams": {"default": {"url": "http://u.test/v1", "retries": 0}}}), up) as client:
        r = await post(client, stream=True)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_auth_failed"


async def test_streaming_error_after_start_is_an_error_chunk_then_done():
    truncated = sse_body(chunk({"role": "assistant", "content": ""}), chunk({"content": "Half an ans"}), done=False)
    async with gateway(settings(), ScriptedUpstream(truncated)) as client:
        r = await post(client, stream=True)
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    assert "before [DONE]" in events[-2]["error"]["message"]
    assert events[-3]["choices"][0]["delta"]["content"] == "Half an ans"


async def test_streaming_client_tools_handed_back_as_tool_call_deltas():
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    stream = sse_body(
        chunk({"tool_calls": [{"index": 0, "id": "k1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}}]}),
        chunk({}, "tool_calls"),
    )
    async with gateway(settings(), ScriptedUpstream(stream)) as client:
        r = await post(client, stream=True, tools=[tool])
    chunks = [c for c in sse_events(r.text)[:-1] if c["choices"]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert {"index": 0, "id": "k1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}} in (
        d["tool_calls"][0] for d in deltas if "tool_calls" in d
    )
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_gateway_api_keys():
    config = settings(environ={"TOOLGATE_API_KEYS": "k1, k2"})
    async with gateway(config, ScriptedUpstream(completion("hi"))) as client:
        missing = await post(client)
        wrong = await post(client, headers={"authorization": "Bearer nope"})
        good = await post(client, headers={"authorization": "Bearer k2"})
        health = await client.get("/healthz")
    assert missing.status_code == 401 and wrong.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert good.status_code == 200
    assert health.status_code == 200


async def test_models_ready_metrics_and_unknown_routes():
    async with gateway(settings(), ScriptedUpstream(completion("hi"))) as client:
        await post(client)
        models = await client.get("/v1/models")
        ready = await client.get("/readyz")
        metrics = await client.get("/metrics")
        missing = await client.get("/v2/nothing")
    assert [m["id"] for m in models.json()["data"]] == ["m"]
    assert models.json()["object"] == "list"
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert 'toolgate_requests_total{api="chat",model="m",status="200"}' in metrics.text
    assert missing.status_code == 404 and "error" in missing.json()


async def test_no_upstream_call_leaves_the_gateway_without_a_body_encoded_by_orjson():
    # The upstream body is valid JSON even with non-ASCII text and nested parts.
    up = ScriptedUpstream(completion("ok"))
    async with gateway(settings(), up) as client:
        await post(client, messages=[{"role": "user", "content": "Grüße, 世界"}])
    assert orjson.loads(up.requests[0].content)["messages"][-1]["content"] == "Grüße, 世界"


async def test_streaming_error_after_a_silent_tool_round_keeps_its_status():
    up = ScriptedUpstream(STREAM_TOOL_ROUND, _error(400, b'{"error": {"message": "context too long"}}'))
    async with gateway(settings(), up) as client:
        r = await post(client, stream=True)
    assert r.status_code == 400
    assert "context too long" in r.json()["error"]["message"]


async def test_a_client_tool_choice_holds_for_the_first_round_only():
    up = ScriptedUpstream(completion(None, tool_calls=[call("calculate", {"expression": "1+1"})]), completion("2"))
    async with gateway(settings(), up) as client:
        r = await post(client, tool_choice="required")
    assert r.status_code == 200
    assert up.bodies[0]["tool_choice"] == "required" and "tool_choice" not in up.bodies[1]
