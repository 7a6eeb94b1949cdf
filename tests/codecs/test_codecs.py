"""The codec seam: every host row names a codec, and a second wire format (Ollama's native
`/api/chat`) runs the same loop, end to end in-process, against a fake that speaks it."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from gateway.codecs import CODECS, open_model
from gateway.codecs.ollama import LineDecoder, OllamaChat
from gateway.config import Upstream
from gateway.events import Delta, Final
from gateway.hosts import HOST_TYPES
from gateway.loop import run_loop
from gateway.model import Turn
from gateway.tools.base import StaticSource
from gateway.tools.toolbox import Toolbox
from gateway.transports import AiohttpTransport
from gateway.upstream import UpstreamClient
from tests.support import gateway, settings, sse_events
from tests.test_loop import Echo, job
from tests.test_transports import Host, _request

USER = [{"role": "user", "content": "What is 6*7?"}]


class OllamaFake:
    """An httpx.MockTransport handler that speaks `/api/chat`: scripted replies (each a list of
    reply objects: NDJSON lines streamed, the last one whole when not), every request recorded."""

    def __init__(self, *replies: list[dict[str, Any]], pieces: int = 7) -> None:
        self.replies = list(replies)
        self.pieces = pieces  # streamed bytes go out in pieces of this size, cut mid-line
        self.requests: list[httpx.Request] = []

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.content) for r in self.requests]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"models": []})
        self.requests.append(request)
        assert request.url.path == "/api/chat", request.url
        assert self.replies, f"unexpected upstream call #{len(self.requests)}"
        lines = self.replies.pop(0)
        if not orjson.loads(request.content)["stream"]:
            return httpx.Response(200, json=lines[-1])
        raw = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        body = [raw[i : i + self.pieces] for i in range(0, len(raw), self.pieces)]
        return httpx.Response(200, content=_Pieces(body), headers={"content-type": "application/x-ndjson"})

    def assert_all_used(self) -> None:
        assert not self.replies, f"{len(self.replies)} scripted replies were never requested"


class _Pieces(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self):
        for piece in self.pieces:
            yield piece


def says(content: str = "", *, thinking: str = "", calls: list | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = calls
    return {"model": "llama3", "created_at": "2025-01-01T00:00:00Z", "message": message, "done": False}


def done(line: dict[str, Any] | None = None, *, reason: str = "stop", prompt: int = 10, completion: int = 4) -> dict[str, Any]:
    last = {**(line or says()), "done": True, "done_reason": reason, "prompt_eval_count": prompt, "eval_count": completion}
    return last


CALC = {"function": {"name": "calculate", "arguments": {"expression": "6*7"}}}


def config(**upstream: Any):
    return settings({"upstreams": {"default": {"url": "http://ollama.test:11434", "type": "ollama-native", **upstream}}})


async def post(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/v1/chat/completions", json={"model": "m", "messages": USER, **body})


def test_every_host_row_names_a_known_codec():
    assert {host.codec for host in HOST_TYPES.values()} <= set(CODECS)
    assert HOST_TYPES["ollama-native"].codec == "ollama" and HOST_TYPES["openai"].codec == "openai-chat"


async def test_a_tool_round_on_ollama_native_returns_the_openai_answer():
    fake = OllamaFake([done(says(calls=[CALC]), prompt=10, completion=4)], [done(says("It is 42."), prompt=20, completion=3)])
    async with gateway(config(), httpx.MockTransport(fake)) as client:
        r = await post(client, max_tokens=100, temperature=0.2, top_p=0.9)
    fake.assert_all_used()
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "It is 42."}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37}
    assert r.headers["x-toolgate-tool-calls"] == "1"

    first, second = fake.bodies
    assert first["model"] == "up-model" and first["stream"] is False
    assert first["options"] == {"num_predict": 100, "temperature": 0.2, "top_p": 0.9}
    assert "max_tokens" not in first and "temperature" not in first
    assert {t["function"]["name"] for t in first["tools"]} >= {"calculate"}
    assert first["messages"][-1] == {"role": "user", "content": "What is 6*7?"}
    assistant, tool = second["messages"][-2:]
    # Arguments go back as the object they came as; the reply names its tool.
    assert assistant == {"role": "assistant", "content": "", "tool_calls": [CALC]}
    assert tool == {"role": "tool", "content": "42", "tool_name": "calculate"}
    assert second["options"] == {"num_predict": 96, "temperature": 0.2, "top_p": 0.9}  # the budget left


async def test_streamed_ndjson_cut_mid_line_becomes_the_openai_stream():
    fake = OllamaFake(
        [says(thinking="Let me compute."), done(says(calls=[CALC]))],
        [says("It "), says("is "), done(says("42."), prompt=20, completion=3)],
        pieces=5,
    )
    async with gateway(config(), httpx.MockTransport(fake)) as client:
        r = await post(client, stream=True, stream_options={"include_usage": True})
    fake.assert_all_used()
    assert r.status_code == 200
    chunks = sse_events(r.text)
    assert chunks[-1] == "[DONE]"
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1] if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "It is 42."
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "Let me compute."
    assert chunks[-2]["usage"] == {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37}
    assert all(b["stream"] is True and "stream_options" not in b for b in fake.bodies)
    # The thinking stays with the gateway; the call goes back with object arguments.
    assert fake.bodies[1]["messages"][-2] == {"role": "assistant", "content": "", "tool_calls": [CALC]}


async def test_the_last_round_sends_no_tools_since_ollama_has_no_tool_choice():
    fake = OllamaFake([done(says(calls=[CALC]))], [done(says("42"))])
    async with gateway(settings({
        "upstreams": {"default": {"url": "http://ollama.test", "type": "ollama-native"}},
        "loop": {"max_rounds": 1},
    }), httpx.MockTransport(fake)) as client:  # fmt: skip
        r = await post(client)
    assert r.json()["choices"][0]["message"]["content"] == "42"
    assert "tools" in fake.bodies[0] and "tools" not in fake.bodies[1]


@pytest.mark.parametrize(
    ("lines", "says_"),
    [
        ([says("It is")], "truncated"),  # the stream ended before its `done` line
        ([says("It is"), {"error": "model runner crashed"}], "model runner crashed"),
    ],
)
async def test_a_broken_ndjson_stream_ends_in_an_error(lines, says_):
    fake = OllamaFake(lines)
    async with gateway(config(retries=0), httpx.MockTransport(fake)) as client:
        r = await post(client, stream=True)
    error = [e for e in sse_events(r.text) if isinstance(e, dict) and "error" in e][-1]["error"]
    assert error["type"] == "upstream_error" and says_ in error["message"], error


async def test_a_cut_reply_is_finish_reason_length():
    fake = OllamaFake([done(says("It is"), reason="length")])
    async with gateway(config(), httpx.MockTransport(fake)) as client:
        r = await post(client)
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_the_line_decoder_keeps_a_line_split_anywhere():
    decoder = LineDecoder()
    assert decoder.feed(b'{"a"') == []
    assert decoder.feed(b': 1}\n\n{"b": 2}\n{"c"') == [b'{"a": 1}', b'{"b": 2}']
    assert decoder.close() == [b'{"c"']
    assert decoder.close() == []


def test_ollama_request_images_format_and_no_unknown_params():
    j = job(None, params={}, stream=False)
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
    ]
    params = {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}, "logit_bias": {"1": 2}, "user": "u1"}
    body = OllamaChat(None, j).payload(messages, [], params)
    assert body == {
        "model": "up-model",
        "messages": [{"role": "user", "content": "What is this?", "images": ["iVBORw0KGgo="]}],
        "stream": False,
        "format": {"type": "object"},
    }
    assert OllamaChat(None, j).payload(USER, [], {"response_format": {"type": "json_object"}})["format"] == "json"


async def test_the_loop_runs_on_any_model():
    # The seam itself: the loop needs nothing but turn(); here a model written in ten lines.
    class Parrot:
        def __init__(self) -> None:
            self.asked: list[tuple[list, dict]] = []

        async def turn(self, messages, tools, params):
            self.asked.append((list(messages), params))
            yield Delta("po")
            yield Delta("lly")
            yield Turn({"role": "assistant", "content": "polly"}, "stop", {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})

    toolbox = Toolbox([])
    parrot = Parrot()
    events = [e async for e in run_loop(job(toolbox.select(["*"]), params={"temperature": 0}), parrot, toolbox)]
    assert [e.content for e in events if isinstance(e, Delta)] == ["po", "lly"]
    final = events[-1]
    assert isinstance(final, Final) and final.message["content"] == "polly" and final.usage["total_tokens"] == 3
    assert parrot.asked == [([{"role": "user", "content": "hi"}], {"temperature": 0})]


async def test_the_loop_on_ollama_native_over_real_sockets_and_aiohttp():
    # Production's path: the aiohttp transport reads the NDJSON as it arrives on loopback.

    script = [
        [says(calls=[{"function": {"name": "echo", "arguments": {"text": "hi"}}}]), done()],
        [says("You said "), says("HI."), done(prompt=20, completion=3)],
    ]
    bodies: list[dict[str, Any]] = []

    async def ollama(reader, writer):
        for lines in script:
            bodies.append(orjson.loads(await _request(reader)))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n")
            for line in lines:
                data = orjson.dumps(line) + b"\n"
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    transport = AiohttpTransport.create()
    try:
        async with Host(ollama) as url:
            upstream = Upstream(name="local", url=url.removesuffix("/v1/chat/completions"), type="ollama-native")
            toolbox = Toolbox([StaticSource("test", [Echo()])])
            j = job(toolbox.select(["*"]), stream=True)
            j.upstream = upstream
            events = [e async for e in run_loop(j, open_model(UpstreamClient(transport), j), toolbox)]
    finally:
        await transport.aclose()
    assert "".join(e.content for e in events if isinstance(e, Delta)) == "You said HI."
    final = events[-1]
    assert isinstance(final, Final) and final.message["content"] == "You said HI." and final.tool_calls == 1
    assert final.usage == {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37}
    assert bodies[1]["messages"][-1] == {"role": "tool", "content": "HI", "tool_name": "echo"}
    assert all(b["stream"] is True for b in bodies)
