"""End to end: toolgate under a real uvicorn on 127.0.0.1, a scripted fake LLM on
another port, and the real OpenAI SDK as the client."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import subprocess
import sys
from contextlib import asynccontextmanager

import httpx
import openai
import pytest
from prometheus_client import REGISTRY
from gateway.app import create_app
from gateway.config import Settings
from tests.fakellm import Calls, FakeLLM, Reply
from gateway.server import Server, server_config
from gateway.tools.base import StaticSource, Tool
from gateway.tools.registry import ready
from tests.support import settings as make_settings
from tests.support import sse_events


class Sleeper(Tool):
    """A slow tool that records whether it was cancelled."""

    def __init__(self, seconds: float) -> None:
        super().__init__("sleeper", "Sleeps.", {"type": "object", "properties": {}})
        self.seconds = seconds
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def call(self, arguments):
        self.started.set()
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return "slept"


def settings_for(fake: FakeLLM, *, host_type: str = "openai", extra_tools: tuple[Tool, ...] = (), **server) -> Settings:
    config = make_settings(
        {
            "upstreams": {"default": {"url": fake.url, "type": host_type, "retries": 0}},
            "models": [{"name": "m", "upstream_model": "fake-model", "tools": ["*"]}],
            "server": server,
        }
    )
    if extra_tools:
        config = dataclasses.replace(config, sources=(*config.sources, ready(StaticSource("test", extra_tools))))
    return config


def sdk(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)


@asynccontextmanager
async def serve(config: Settings):
    """The gateway on a pre-bound loopback socket; yields its /v1 base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    app = create_app(config)
    server = Server(server_config(app, config, lifespan="on"), grace_s=config.server.grace_s)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.005)
        await app.state.runtime.starting
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", app
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_sync_sdk_multi_round_with_parallel_calls():
    async with FakeLLM() as fake:
        fake.push(
            Calls([("calculate", {"expression": "6*7"}), ("current_time", {"timezone": "Europe/Oslo"})]),
            Calls([("calculate", {"expression": "42+1"})]),
            Reply("43, and it is late in Oslo."),
        )
        async with serve(settings_for(fake)) as (base, _):
            with openai.OpenAI(base_url=base, api_key="unused", max_retries=0) as client:
                reply = await asyncio.to_thread(
                    client.chat.completions.create, model="m", messages=[{"role": "user", "content": "go"}]
                )
        assert reply.choices[0].message.content == "43, and it is late in Oslo."
        assert reply.model == "m"
        assert len(fake.requests) == 3
        second = fake.requests[1].body["messages"]
        assert [m["role"] for m in second[-3:]] == ["assistant", "tool", "tool"]
        assert second[-2]["content"] == "42"
        assert "Europe/Oslo" in second[-1]["content"] or "CET" in second[-1]["content"] or "+01:00" in second[-1]["content"]
        assert fake.requests[2].body["messages"][-1]["content"] == "43"


async def test_async_sdk_streams_the_final_answer():
    async with FakeLLM() as fake:
        fake.push(Calls([("calculate", {"expression": "2**8"})]), Reply("The answer is 256, exactly."))
        async with serve(settings_for(fake)) as (base, _):
            async with sdk(base) as client:
                stream = await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "2**8?"}], stream=True, stream_options={"include_usage": True}
                )
                chunks = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "The answer is 256, exactly."
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
        assert all(not c.choices or not c.choices[0].delta.tool_calls for c in chunks)
        assert all(r.body["stream"] is True for r in fake.requests)


async def test_a_reply_past_max_reply_bytes_is_cut_off_at_the_limit():
    # The real transport (aiohttp): a non-streamed reply read no further than the limit, and a
    # stream stopped where its bytes pass it.
    async with FakeLLM(chunks=200) as fake:
        fake.push(Reply("x" * 300_000), Reply("y" * 300_000, chunk_delay_s=0.002), Reply("fits"))
        config = settings_for(fake)
        config = dataclasses.replace(config, upstreams={"default": dataclasses.replace(config.upstreams["default"], max_reply_bytes=100_000)})
        async with serve(config) as (base, _), httpx.AsyncClient(timeout=10) as client:
            whole = await client.post(f"{base}/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            streamed = await client.post(f"{base}/chat/completions", json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
            after = await client.post(f"{base}/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert whole.status_code == 502 and whole.json()["error"]["code"] == "upstream_reply_too_large"
    if streamed.headers["content-type"].startswith("text/event-stream"):
        events = sse_events(streamed.text)
        assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "upstream_reply_too_large"
    else:
        assert streamed.status_code == 502 and streamed.json()["error"]["code"] == "upstream_reply_too_large"
    assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"] == "fits"


async def test_openwebui_upstream_only_answers_at_api_path():
    async with FakeLLM(host_type="openwebui") as fake:
        fake.push(Calls([("calculate", {"expression": "1+2"})]), Reply("3"))
        async with serve(settings_for(fake, host_type="openwebui")) as (base, _):
            async with sdk(base) as client:
                reply = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "1+2"}])
        assert reply.choices[0].message.content == "3"
        assert [r.path for r in fake.requests] == ["/api/chat/completions"] * 2


QUIRKS = ["stop_with_tools", "args_object", "no_ids", "no_index", "whole_call", "interleaved", "null_content", "crlf", "comments", "byte_split", "extra_fields"]


@pytest.mark.parametrize("quirk", QUIRKS)
@pytest.mark.parametrize("stream", [True, False])
async def test_host_quirks_are_normalised(quirk, stream):
    async with FakeLLM(quirks=[quirk]) as fake:
        fake.push(
            Calls([("calculate", {"expression": "12*(3+4)"}), ("calculate", {"expression": "100/8"})]),
            Reply("84 and 12.5 — ünïcödé ✓"),
        )
        async with serve(settings_for(fake)) as (base, _):
            async with sdk(base) as client:
                messages = [{"role": "user", "content": "x"}]
                if stream:
                    chunks = [c async for c in await client.chat.completions.create(model="m", messages=messages, stream=True)]
                    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                else:
                    reply = await client.chat.completions.create(model="m", messages=messages)
                    text = reply.choices[0].message.content
        assert text == "84 and 12.5 — ünïcödé ✓"
        tool_messages = [m for m in fake.requests[1].body["messages"] if m["role"] == "tool"]
        assert [m["content"] for m in tool_messages] == ["84", "12.5"]
        ids = [c["id"] for c in fake.requests[1].body["messages"][-3]["tool_calls"]]
        assert len(set(ids)) == 2 and [m["tool_call_id"] for m in tool_messages] == ids


async def test_keepalive_comments_while_a_slow_tool_runs():
    sleeper = Sleeper(0.5)
    async with FakeLLM() as fake:
        fake.push(Calls([("sleeper", {})]), Reply("rested"))
        config = settings_for(fake, extra_tools=(sleeper,), keepalive_s=0.05)
        async with serve(config) as (base, _):
            async with httpx.AsyncClient(timeout=10) as client:
                body = {"model": "m", "messages": [{"role": "user", "content": "sleep"}], "stream": True}
                async with client.stream("POST", f"{base}/chat/completions", json=body) as r:
                    raw = b"".join([part async for part in r.aiter_raw()])
        assert r.status_code == 200
        assert raw.count(b": keepalive\n\n") >= 3
        assert b'"content":"rested"' in raw and raw.endswith(b"data: [DONE]\n\n")


async def _left_tasks(app, before: set) -> set:
    runtime = app.state.runtime
    async with asyncio.timeout(5):
        while [t for t in asyncio.all_tasks() if not t.done() and t not in before and t is not asyncio.current_task()]:
            await asyncio.sleep(0.01)
    return {t for t in asyncio.all_tasks() if not t.done() and t not in before} - {asyncio.current_task()}, runtime


async def test_client_disconnect_mid_stream_cancels_the_upstream_call():
    async with FakeLLM() as fake:
        fake.push(Reply(" ".join(f"word{i}" for i in range(200)), chunk_delay_s=0.02))
        async with serve(settings_for(fake)) as (base, app):
            before = set(asyncio.all_tasks())
            async with httpx.AsyncClient(timeout=10) as client:
                body = {"model": "m", "messages": [{"role": "user", "content": "talk"}], "stream": True}
                async with client.stream("POST", f"{base}/chat/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if "word3" in line:
                            break
            await fake.wait_disconnects(1, timeout=5)
            left, _ = await _left_tasks(app, before)
            assert left == set()
        assert fake.disconnects == 1


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_mid_tool_cancels_the_tool(stream):
    sleeper = Sleeper(30)
    cancelled = {"source": "test", "tool": "sleeper", "outcome": "cancelled"}
    counted = REGISTRY.get_sample_value("toolgate_tool_calls_total", cancelled) or 0.0
    async with FakeLLM() as fake:
        fake.push(Calls([("sleeper", {})]))
        async with serve(settings_for(fake, extra_tools=(sleeper,))) as (base, app):
            before = set(asyncio.all_tasks())
            async with httpx.AsyncClient(timeout=10) as client:
                body = {"model": "m", "messages": [{"role": "user", "content": "sleep"}], "stream": stream}
                request = asyncio.create_task(client.post(f"{base}/chat/completions", json=body))
                async with asyncio.timeout(5):
                    await sleeper.started.wait()
                request.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await request
            async with asyncio.timeout(5):
                await sleeper.cancelled.wait()
            left, _ = await _left_tasks(app, before)
            assert left == set()
        assert len(fake.requests) == 1  # the second round never happened
    assert REGISTRY.get_sample_value("toolgate_tool_calls_total", cancelled) == counted + 1  # the call ran: it counts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_toolgate_serve_without_upstream_runs_the_labelled_demo():
    """README command (a) on a machine with no LLM: the demo upstream answers through the real loop."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient() as probe, asyncio.timeout(20):
            while True:
                try:
                    if (await probe.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        async with sdk(f"http://127.0.0.1:{port}/v1") as client:
            reply = await client.chat.completions.with_raw_response.create(
                model="toolgate", messages=[{"role": "user", "content": "What is 12*(3+4)?"}]
            )
        assert reply.headers["x-toolgate-tool-calls"] == "1"
        assert "84" in reply.parse().choices[0].message.content
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert b"DEMO MODE" in err


async def test_request_deadline_is_a_504_naming_it():
    sleeper = Sleeper(30)
    async with FakeLLM() as fake:
        fake.push(Calls([("sleeper", {})]))
        config = settings_for(fake, extra_tools=(sleeper,), request_timeout_s=0.3)
        async with serve(config) as (base, _):
            async with httpx.AsyncClient(timeout=10) as client:
                r = await client.post(f"{base}/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "request_timeout"
        assert sleeper.cancelled.is_set()
