"""The fake LLM host: wire formats, quirks, host paths, demo brain, recording, disconnects.

Everything goes over a real loopback connection (httpx or the openai SDK); no httpx_mock here,
it would intercept that traffic.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakellm import QUIRKS, Calls, Fail, FakeLLM, Raw, Reply, demo_turn

TOOLS = [
    {"type": "function", "function": {"name": "calculate", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "current_time", "parameters": {"type": "object"}}},
]
USER = [{"role": "user", "content": "hi"}]
TWO_CALLS = Calls([("calculate", {"expression": "12*(3+4)"}), ("current_time", {"timezone": "UTC"})])


@pytest.fixture
async def fake():
    async with FakeLLM() as fake:
        yield fake


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


def sse(data: bytes) -> list[Any]:
    """Data payloads of an SSE body: parsed JSON, or the string "[DONE]"; comments dropped."""
    out = []
    for block in data.decode().replace("\r\n", "\n").split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                out.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
    return out


def deltas(events: list[Any]) -> list[dict[str, Any]]:
    return [e["choices"][0]["delta"] for e in events if isinstance(e, dict) and e.get("choices")]


def call_deltas(events: list[Any]) -> list[dict[str, Any]]:
    return [tc for d in deltas(events) for tc in d.get("tool_calls") or ()]


async def exchange(turn, *, quirks=(), stream=False, **fake_options) -> tuple[bytes, list[bytes], httpx.Response]:
    """One scripted turn through a fresh fake: (body, raw pieces as received, response)."""
    async with FakeLLM(quirks=quirks, **fake_options) as fake, httpx.AsyncClient(timeout=5) as client:
        fake.push(turn)
        request = {"model": "m", "messages": USER, "stream": stream}
        async with client.stream("POST", fake.url + "/chat/completions", json=request) as response:
            pieces = [piece async for piece in response.aiter_raw()]
    return b"".join(pieces), pieces, response


# -- plain OpenAI wire ---------------------------------------------------------------------


async def test_reply_non_streamed_through_the_sdk(fake):
    fake.push(Reply("Hello there.", reasoning="thinking"))
    async with openai.AsyncOpenAI(base_url=fake.url, api_key="x") as sdk:
        completion = await sdk.chat.completions.create(model="my-model", messages=USER)
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "my-model"
    choice = completion.choices[0]
    assert (choice.message.content, choice.finish_reason, choice.message.tool_calls) == ("Hello there.", "stop", None)
    assert choice.message.model_extra["reasoning_content"] == "thinking"
    assert completion.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
    }
    assert fake.pending == 0


async def test_reply_streamed_through_the_sdk(fake):
    fake.push(Reply("one two three", reasoning="let me think"))
    async with openai.AsyncOpenAI(base_url=fake.url, api_key="x") as sdk:
        stream = await sdk.chat.completions.create(
            model="m", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert len({(c.id, c.created, c.model, c.object) for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert content == ["one", " two", " three"]
    reasoning = [c.choices[0].delta.model_extra.get("reasoning_content") for c in chunks if c.choices]
    assert [r for r in reasoning if r] == ["let", " me", " think"]
    assert reasoning.index("let") < next(i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.content)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 15


async def test_stream_framing_on_the_wire():
    body, _, response = await exchange(Reply("a b"), stream=True)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["transfer-encoding"] == "chunked"
    events = sse(body)
    assert body.endswith(b"data: [DONE]\n\n")
    assert deltas(events) == [{"role": "assistant", "content": ""}, {"content": "a"}, {"content": " b"}, {}]
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in e for e in events[:-1])  # not asked for


@pytest.mark.parametrize(
    ("chunks", "text", "expected"),
    [
        (5, "a b", ["a", " b", " a", " b", " a"]),  # too few words: repeated, N really sent
        (2, "one two three four five", ["one two three", " four five"]),
    ],
)
async def test_chunks_gives_exactly_n_content_deltas(chunks, text, expected):
    body, _, _ = await exchange(Reply(text), stream=True, chunks=chunks)
    assert [d["content"] for d in deltas(sse(body)) if d.get("content")] == expected


async def test_calls_non_streamed(fake, client):
    fake.push(TWO_CALLS, Calls([("calculate", '{"expression": ')], content="Let me see."))
    first = (await client.post(fake.url + "/chat/completions", json={"model": "m", "messages": USER})).json()
    second = (await client.post(fake.url + "/chat/completions", json={"model": "m", "messages": USER})).json()
    message = first["choices"][0]["message"]
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    assert message["content"] is None
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "calculate", "arguments": '{"expression":"12*(3+4)"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "current_time", "arguments": '{"timezone":"UTC"}'}},
    ]
    assert second["choices"][0]["message"]["content"] == "Let me see."
    assert second["choices"][0]["message"]["tool_calls"][0]["id"] == "call_3"  # unique per fake
    assert second["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"expression": '


async def test_calls_streamed_through_the_sdk(fake):
    fake.push(TWO_CALLS)
    async with openai.AsyncOpenAI(base_url=fake.url, api_key="x") as sdk:
        stream = await sdk.chat.completions.create(model="m", messages=USER, stream=True)
        chunks = [chunk async for chunk in stream]
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for tc in chunk.choices[0].delta.tool_calls or ():
            call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += tc.id or ""
            call["name"] += (tc.function.name or "") if tc.function else ""
            call["arguments"] += (tc.function.arguments or "") if tc.function else ""
    assert calls == {
        0: {"id": "call_1", "name": "calculate", "arguments": '{"expression":"12*(3+4)"}'},
        1: {"id": "call_2", "name": "current_time", "arguments": '{"timezone":"UTC"}'},
    }
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_streamed_call_deltas_follow_openai():
    body, _, _ = await exchange(TWO_CALLS, stream=True)
    tool_deltas = call_deltas(sse(body))
    heads = [d for d in tool_deltas if "id" in d]
    assert heads == [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "calculate", "arguments": ""}},
        {"index": 1, "id": "call_2", "type": "function", "function": {"name": "current_time", "arguments": ""}},
    ]
    fragments = [d for d in tool_deltas if "id" not in d]
    assert len(fragments) > 2 and all(set(d) == {"index", "function"} and set(d["function"]) == {"arguments"} for d in fragments)
    assert [d["index"] for d in tool_deltas] == sorted(d["index"] for d in tool_deltas)  # one call after the other


@pytest.mark.parametrize("stream", [False, True])
async def test_refusal(stream):
    body, _, _ = await exchange(Reply("", refusal="I can't help with that."), stream=stream)
    if stream:
        assert {"refusal": "I can't help with that."} in deltas(sse(body))
    else:
        assert _message(body)["refusal"] == "I can't help with that." and _message(body)["content"] == ""


# -- quirks: each one visibly changes the wire ---------------------------------------------


def _message(body: bytes) -> dict[str, Any]:
    return json.loads(body)["choices"][0]["message"]


def _check_stop_with_tools(base, quirked, pieces):
    assert json.loads(base)["choices"][0]["finish_reason"] == "tool_calls"
    assert json.loads(quirked)["choices"][0]["finish_reason"] == "stop"
    assert _message(quirked)["tool_calls"]


def _check_args_object(base, quirked, pieces):
    assert _message(base)["tool_calls"][0]["function"]["arguments"] == '{"expression":"12*(3+4)"}'
    assert _message(quirked)["tool_calls"][0]["function"]["arguments"] == {"expression": "12*(3+4)"}


def _check_no_ids(base, quirked, pieces):
    assert all("id" in call for call in _message(base)["tool_calls"])
    assert not any("id" in call for call in _message(quirked)["tool_calls"])


def _check_no_index(base, quirked, pieces):
    assert all("index" in d for d in call_deltas(sse(base)))
    assert call_deltas(sse(quirked)) and not any("index" in d for d in call_deltas(sse(quirked)))


def _check_whole_call(base, quirked, pieces):
    assert len(call_deltas(sse(base))) > 2
    assert call_deltas(sse(quirked)) == [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "calculate", "arguments": '{"expression":"12*(3+4)"}'}},
        {"index": 1, "id": "call_2", "type": "function", "function": {"name": "current_time", "arguments": '{"timezone":"UTC"}'}},
    ]


def _check_interleaved(base, quirked, pieces):
    fragments = [d for d in call_deltas(sse(quirked)) if "id" not in d]
    indices = [d["index"] for d in fragments]
    assert indices[:4] == [0, 1, 0, 1]
    assert all(len(d["function"]["arguments"]) <= 3 for d in fragments)
    joined = {i: "".join(d["function"]["arguments"] for d in fragments if d["index"] == i) for i in (0, 1)}
    assert joined == {0: '{"expression":"12*(3+4)"}', 1: '{"timezone":"UTC"}'}
    base_indices = [d["index"] for d in call_deltas(sse(base))]
    assert base_indices == sorted(base_indices)  # by default one call after the other


def _check_null_content(base, quirked, pieces):
    assert _message(base)["content"] == ""
    assert _message(quirked)["content"] is None


def _check_null_content_streamed(base, quirked, pieces):
    assert deltas(sse(base))[0] == {"role": "assistant", "content": ""}
    assert deltas(sse(quirked))[0] == {"role": "assistant"}


def _check_crlf(base, quirked, pieces):
    assert b"\r\n" not in base
    assert quirked.count(b"\r\n\r\n") == len(sse(quirked)) and b"\n\n" not in quirked.replace(b"\r\n", b"")
    assert _strip_ids(sse(quirked)) == _strip_ids(sse(base))


def _check_comments(base, quirked, pieces):
    assert b"\n:" not in base
    assert quirked.startswith(b": OPENROUTER PROCESSING\n\n")
    assert quirked.count(b": OPENROUTER PROCESSING\n\n") == len(sse(quirked))


def _check_byte_split(base, quirked, pieces):
    assert len(pieces) >= len(quirked) // 7 and max(map(len, pieces)) <= 7
    assert any(not _decodes(piece) for piece in pieces)  # some piece ends inside a character
    assert _strip_ids(sse(quirked)) == _strip_ids(sse(base))


def _check_no_done(base, quirked, pieces):
    assert base.endswith(b"data: [DONE]\n\n")
    assert b"[DONE]" not in quirked and sse(quirked)[-1]["choices"][0]["finish_reason"] == "stop"


def _check_usage_always(base, quirked, pieces):
    assert "usage" not in sse(base)[-2]
    assert sse(quirked)[-2]["choices"] == [] and sse(quirked)[-2]["usage"]["total_tokens"] == 15


def _check_extra_fields(base, quirked, pieces):
    assert "sources" not in json.loads(base)
    body = json.loads(quirked)
    assert body["sources"] and body["system_fingerprint"]
    assert "provider_specific_fields" in body["choices"][0]["message"]


def _check_extra_fields_streamed(base, quirked, pieces):
    events = sse(quirked)
    assert set(events[0]) == {"sources"}  # Open WebUI's own first event, no choices at all
    assert all(d["tool_calls"] is None for d in deltas(events))
    assert "tool_calls" not in deltas(sse(base))[1]


def _decodes(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _strip_ids(events):
    return [{k: v for k, v in e.items() if k not in ("id", "created")} if isinstance(e, dict) else e for e in events]


UNICODE = Reply("héllo wörld ✓ 🎉 — done")
QUIRK_CASES = [
    ("stop_with_tools", TWO_CALLS, False, _check_stop_with_tools),
    ("args_object", TWO_CALLS, False, _check_args_object),
    ("no_ids", TWO_CALLS, False, _check_no_ids),
    ("no_index", TWO_CALLS, True, _check_no_index),
    ("whole_call", TWO_CALLS, True, _check_whole_call),
    ("interleaved", TWO_CALLS, True, _check_interleaved),
    ("null_content", Reply(""), False, _check_null_content),
    ("null_content", UNICODE, True, _check_null_content_streamed),
    ("crlf", UNICODE, True, _check_crlf),
    ("comments", UNICODE, True, _check_comments),
    ("byte_split", UNICODE, True, _check_byte_split),
    ("no_done", UNICODE, True, _check_no_done),
    ("usage_always", UNICODE, True, _check_usage_always),
    ("extra_fields", UNICODE, False, _check_extra_fields),
    ("extra_fields", UNICODE, True, _check_extra_fields_streamed),
]


@pytest.mark.parametrize(("quirk", "turn", "stream", "check"), QUIRK_CASES, ids=[f"{c[0]}-{'sse' if c[2] else 'json'}" for c in QUIRK_CASES])
async def test_quirk_changes_the_wire(quirk, turn, stream, check):
    base, base_pieces, _ = await exchange(turn, stream=stream)
    quirked, pieces, _ = await exchange(turn, quirks=[quirk], stream=stream)
    assert (base, base_pieces) != (quirked, pieces)
    check(base, quirked, pieces)


def test_every_quirk_is_tested_and_documented():
    assert {case[0] for case in QUIRK_CASES} == set(QUIRKS)
    from tests.fakellm.wire import Quirks

    assert all(f"- {name}:" in Quirks.__doc__ for name in QUIRKS)
    with pytest.raises(ValueError, match="unknown quirk"):
        FakeLLM(quirks=["nope"])
    with pytest.raises(ValueError, match="unknown host type"):
        FakeLLM(host_type="nope")


async def test_no_done_closes_the_connection():
    _, _, response = await exchange(UNICODE, quirks=["no_done"], stream=True)
    assert response.headers["connection"] == "close"


# -- host types -----------------------------------------------------------------------------


async def test_openwebui_paths(client):
    async with FakeLLM(host_type="openwebui") as fake:
        assert not fake.url.endswith("/v1")
        wrong = await client.post(fake.url + "/v1/chat/completions", json={"model": "m", "messages": USER})
        assert (wrong.status_code, wrong.json()) == (404, {"detail": "Not Found"})
        assert (await client.get(fake.url + "/v1/models")).status_code == 404
        async with openai.AsyncOpenAI(base_url=fake.url + "/api", api_key="x") as sdk:
            completion = await sdk.chat.completions.create(model="m", messages=USER)
        assert completion.choices[0].message.content == "You said: hi"
        models = (await client.get(fake.url + "/api/models")).json()
        assert models["data"][0]["id"] == "fake-model"


async def test_ollama_paths(client):
    async with FakeLLM(host_type="ollama") as fake:
        assert fake.url == fake.origin
        assert (await client.post(fake.url + "/v1/chat/completions", json={"messages": USER})).status_code == 200
        assert (await client.post(fake.url + "/api/chat", json={"messages": USER})).status_code == 404
        assert (await client.get(fake.url + "/v1/models")).json()["object"] == "list"


async def test_azure_path_query_and_key(client):
    async with FakeLLM(host_type="azure", api_key="k") as fake:
        async with openai.AsyncAzureOpenAI(
            azure_endpoint=fake.url, api_key="k", api_version="2024-10-21", max_retries=0
        ) as sdk:
            completion = await sdk.chat.completions.create(model="my-deployment", messages=USER)
        assert completion.choices[0].message.content == "You said: hi"
        recorded = fake.requests[0]
        assert recorded.path == "/openai/deployments/my-deployment/chat/completions"
        assert recorded.query == {"api-version": "2024-10-21"}
        assert recorded.headers["api-key"] == "k"
        chat = fake.url + "/openai/deployments/d/chat/completions"
        no_version = await client.post(chat, json={"messages": USER}, headers={"api-key": "k"})
        assert no_version.status_code == 404
        wrong_key = await client.post(chat, params={"api-version": "1"}, json={"messages": USER}, headers={"api-key": "no"})
        assert wrong_key.status_code == 401
        ok = await client.post(chat, params={"api-version": "1"}, json={"messages": USER}, headers={"api-key": "k"})
        assert ok.json()["model"] == "d"  # no model in the body: the deployment's
        assert (await client.get(fake.url + "/v1/models")).status_code == 404


async def test_openai_key_and_wrong_method(client):
    async with FakeLLM(api_key="sk-right") as fake:
        async with openai.AsyncOpenAI(base_url=fake.url, api_key="sk-wrong", max_retries=0) as sdk:
            with pytest.raises(openai.AuthenticationError):
                await sdk.chat.completions.create(model="m", messages=USER)
        assert (await client.get(fake.url + "/chat/completions")).status_code == 405


# -- demo brain ------------------------------------------------------------------------------


def _user(text: str, tools=TOOLS, **extra) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "tools": tools, **extra}


@pytest.mark.parametrize(
    ("text", "calls"),
    [
        ("What is 12*(3+4)?", [("calculate", {"expression": "12*(3+4)"})]),
        ("What time is it in Europe/Paris?", [("current_time", {"timezone": "Europe/Paris"})]),
        ("Compute 3.5 / 7 and tell me the date", [("calculate", {"expression": "3.5 / 7"}), ("current_time", {"timezone": "UTC"})]),
    ],
)
def test_demo_brain_calls_fitting_tools(text, calls):
    turn = demo_turn(_user(text))
    assert isinstance(turn, Calls) and list(turn.calls) == calls


def test_demo_brain_only_calls_offered_tools():
    assert demo_turn(_user("What is 2+2?", tools=TOOLS[1:])) == Reply("You said: What is 2+2?")
    assert demo_turn(_user("What is 2+2?", tool_choice="none")) == Reply("You said: What is 2+2?")
    assert demo_turn(_user("In 2024 we had 3 cats")).content == "You said: In 2024 we had 3 cats"


async def test_demo_brain_loop_over_the_wire(fake, client):
    request = _user("What is 12*(3+4), and what time is it?", model="m")
    first = (await client.post(fake.url + "/chat/completions", json=request)).json()["choices"][0]["message"]
    assert [c["function"]["name"] for c in first["tool_calls"]] == ["calculate", "current_time"]
    request["messages"] += [
        first,
        {"role": "tool", "tool_call_id": first["tool_calls"][0]["id"], "content": "84"},
        {"role": "tool", "tool_call_id": first["tool_calls"][1]["id"], "content": "2026-11-24T10:00:00+00:00"},
    ]
    second = (await client.post(fake.url + "/chat/completions", json=request)).json()["choices"][0]
    assert second["message"]["content"] == "The result of 12*(3+4) is 84. It is 2026-11-24T10:00:00+00:00 in UTC."
    assert second["finish_reason"] == "stop"


def test_demo_brain_reads_failures_and_other_tools():
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "fetch_url", "arguments": "{}"}},
            {"id": "b", "type": "function", "function": {"name": "calculate", "arguments": "not json"}},
        ]},
        {"role": "tool", "tool_call_id": "a", "content": [{"type": "text", "text": "<h1>hi</h1>"}]},
        {"role": "tool", "tool_call_id": "b", "content": "Error: division by zero"},
    ]
    assert demo_turn({"messages": messages}).content == (
        "fetch_url returned: <h1>hi</h1>. calculate failed: Error: division by zero"
    )


# -- Fail, Raw, callables, script end --------------------------------------------------------


async def test_fail_and_raw(fake, client):
    fake.push(
        Fail(429, headers={"retry-after": "2"}),
        Fail(503, b"<html>busy</html>", content_type="text/html"),
        Raw(b"<html>login</html>", "text/html"),
        Raw(b'{"choices": [', status=200),
        Raw(b'data: {"choices": []}\n\n', "text/event-stream", close=True),
    )
    url = fake.url + "/chat/completions"
    body = {"model": "m", "messages": USER}
    limited = await client.post(url, json=body)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
    assert limited.json()["error"]["message"] == "fakellm: 429 Too Many Requests"
    busy = await client.post(url, json=body)
    assert (busy.status_code, busy.headers["content-type"], busy.text) == (503, "text/html", "<html>busy</html>")
    assert (await client.post(url, json=body)).text == "<html>login</html>"
    assert (await client.post(url, json=body)).content == b'{"choices": ['
    truncated = await client.post(url, json=body)
    assert "content-length" not in truncated.headers and truncated.content == b'data: {"choices": []}\n\n'
    await fake.wait_until(lambda: fake.open_connections == 0)


async def test_callable_turns_and_errors(fake, client):
    fake.push(lambda body: Reply(body["messages"][-1]["content"].upper()), lambda body: 1 / 0)
    url = fake.url + "/chat/completions"
    assert (await client.post(url, json={"messages": USER})).json()["choices"][0]["message"]["content"] == "HI"
    broken = await client.post(url, json={"messages": USER})
    assert broken.status_code == 500 and "ZeroDivisionError" in broken.json()["error"]["message"]
    assert isinstance(fake.errors[0], ZeroDivisionError)
    bad = await client.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    fake.push(Calls([("calculate", {"expression": object()})]))  # cannot be encoded
    assert (await client.post(url, json={"messages": USER})).status_code == 500
    assert len(fake.errors) == 2


async def test_script_exhausted_without_demo(client):
    async with FakeLLM(demo=False) as fake:
        response = await client.post(fake.url + "/chat/completions", json={"messages": USER})
        assert response.status_code == 500 and "script exhausted" in response.text


# -- recording, connections, disconnects -----------------------------------------------------


async def test_requests_are_recorded(fake, client):
    await client.post(fake.url + "/chat/completions", json={"model": "m", "messages": USER}, headers={"X-Request-ID": "r1"})
    await client.get(fake.url + "/models")
    chat, models = fake.requests
    assert (chat.method, chat.path, chat.query) == ("POST", "/v1/chat/completions", {})
    assert chat.headers["x-request-id"] == "r1" and chat.headers["content-type"] == "application/json"
    assert chat.body == {"model": "m", "messages": USER} and json.loads(chat.raw) == chat.body
    assert (models.method, models.path, models.body, models.raw) == ("GET", "/v1/models", None, b"")
    assert fake.request_count == 2


async def test_record_false_keeps_nothing(client):
    async with FakeLLM(record=False) as fake:
        for _ in range(3):
            await client.post(fake.url + "/chat/completions", json={"messages": USER})
        assert fake.requests == [] and fake.request_count == 3


async def test_chunked_request_body_and_keep_alive(fake, client):
    async def body():
        yield b'{"messages": [{"role": "user",'
        yield b' "content": "chunked"}]}'

    response = await client.post(fake.url + "/chat/completions", content=body())
    assert fake.requests[0].headers["transfer-encoding"] == "chunked"
    assert response.json()["choices"][0]["message"]["content"] == "You said: chunked"
    await client.post(fake.url + "/chat/completions", json={"messages": USER})
    assert fake.open_connections == 1  # one keep-alive connection served both
    await client.aclose()
    await fake.wait_until(lambda: fake.open_connections == 0)


async def test_client_leaving_mid_stream_is_counted(fake, client):
    fake.push(Reply("one two three four five six seven eight", chunk_delay_s=0.05))
    request = {"model": "m", "messages": USER, "stream": True}
    async with client.stream("POST", fake.url + "/chat/completions", json=request) as response:
        async for _ in response.aiter_raw():
            break  # the first event arrived; leave mid-stream
    await fake.wait_disconnects(1)
    assert fake.disconnects == 1
    await fake.wait_until(lambda: fake.open_connections == 0)


@pytest.mark.parametrize(("turn", "latency_s"), [(Reply("late", delay_s=5), 0.0), (Reply("late"), 5.0)])
async def test_client_timing_out_during_delay_is_counted(turn, latency_s):
    async with FakeLLM(latency_s=latency_s) as fake, httpx.AsyncClient(timeout=0.2) as client:
        fake.push(turn)
        with pytest.raises(httpx.ReadTimeout):
            await client.post(fake.url + "/chat/completions", json={"messages": USER})
        await fake.wait_disconnects(1)


async def test_requests_sent_back_to_back_are_answered_in_order(fake):
    fake.push(Reply("first", delay_s=0.05), Reply("second"))
    body = json.dumps({"messages": USER}).encode()
    request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    writer.write(request + request)  # the second arrives while the first is still waiting
    answers = []
    for _ in range(2):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        answers.append(json.loads(await reader.readexactly(length))["choices"][0]["message"]["content"])
    writer.close()
    await writer.wait_closed()
    assert answers == ["first", "second"]
    await fake.wait_requests(2)


async def test_stop_during_a_stream_is_no_disconnect(client):
    fake = FakeLLM()
    await fake.start()
    fake.push(Reply("one two three", chunk_delay_s=10))
    request = {"model": "m", "messages": USER, "stream": True}
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream("POST", fake.url + "/chat/completions", json=request) as response:
            async for _ in response.aiter_raw():
                await fake.stop()
    assert (fake.disconnects, fake.open_connections) == (0, 0)


async def test_wait_until_times_out(fake):
    with pytest.raises(TimeoutError, match="disconnects=0"):
        await fake.wait_disconnects(1, timeout=0.05)


# -- standalone ------------------------------------------------------------------------------


async def test_command_line(client):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakellm", "--host-type", "openwebui", "--port", "0", "--quirk", "crlf",
        "--chunks", "3", "--no-record", stdout=asyncio.subprocess.PIPE, env=env,
    )
    try:
        url = (await asyncio.wait_for(process.stdout.readline(), 10)).decode().strip()
        assert url.startswith("http://127.0.0.1:") and not url.endswith("/v1")
        response = await client.post(url + "/api/chat/completions", json={"messages": USER, "stream": True})
        assert response.content.count(b"\r\n\r\n") == 6  # role, 3 content pieces, finish, [DONE]
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0


# -- every scripted turn is used (tests/conftest.py) ---------------------------------------

CHECKED = '''
import pytest
from tests.fakellm import FakeLLM, Reply

def test_spare_turn():
    FakeLLM().push(Reply("spare"))

@pytest.mark.fakellm(assert_all_used=False)
def test_spare_on_purpose():
    FakeLLM().push(Reply("spare"))

def test_all_used():
    FakeLLM()

def test_failing_for_its_own_reason():
    FakeLLM().push(Reply("spare"))
    assert False, "its own reason"
'''


def test_a_test_leaving_scripted_turns_fails_at_teardown(tmp_path):
    (tmp_path / "test_checked.py").write_text(CHECKED)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    argv = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", "-rA", "-W", "ignore::pytest.PytestUnknownMarkWarning", "test_checked.py"]
    run = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    out = run.stdout
    assert "1 failed, 3 passed, 1 error" in out, out
    assert "ERROR test_checked.py::test_spare_turn" in out and "FAILED test_checked.py::test_failing_for_its_own_reason" in out
    assert "ERROR at teardown of test_spare_turn" in out and out.count("ERROR at teardown") == 1
    assert "scripted turns were never requested:\n  FakeLLM('openai') got 0 request(s); never used: [Reply(content='spare'" in out
