"""Traces: the span tree of a tool loop, what reaches the upstream, OTLP export, and nothing when off."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import textwrap

import httpx
import orjson
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from gateway import tracing  # noqa: E402
from gateway.redact import SECRETS  # noqa: E402
from tests.support import ScriptedUpstream, call, chunk, completion, gateway, settings, sse_body  # noqa: E402

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    tracing.setup({}, exporter=exporter)
    yield exporter
    tracing.shutdown()


def _two_rounds() -> ScriptedUpstream:
    return ScriptedUpstream(
        completion(None, tool_calls=[call("calculate", {"expression": "6*7"}, "call_a"), call("current_time", {}, "call_b")]),
        completion("42, and it is now.", usage={"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37}),
    )


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


async def test_a_two_round_two_tool_request_is_one_span_tree(spans):
    upstream = _two_rounds()
    async with gateway(settings(), upstream) as client:
        reply = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "secret plans"}], "temperature": 0.2},
            headers={"traceparent": TRACEPARENT},
        )
    assert reply.status_code == 200
    finished = spans.get_finished_spans()
    by_name: dict[str, list] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)
    assert sorted(by_name) == ["POST /v1/chat/completions", "chat up-model", "execute_tool calculate", "execute_tool current_time"]
    (server,) = by_name["POST /v1/chat/completions"]
    rounds = sorted(by_name["chat up-model"], key=lambda s: s.start_time)
    tools = [*by_name["execute_tool calculate"], *by_name["execute_tool current_time"]]
    assert len(rounds) == 2 and len(tools) == 2

    # One trace, the client's: the server span's parent is the client's span.
    assert {_hex(s.context.trace_id, 32) for s in finished} == {CLIENT_TRACE}
    assert server.kind == SpanKind.SERVER
    assert _hex(server.parent.span_id, 16) == CLIENT_PARENT
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/v1/chat/completions"
    assert server.attributes["toolgate.rounds"] == 1  # tool rounds, as in the log line
    assert server.attributes["toolgate.tool_calls"] == 2
    for child in (*rounds, *tools):
        assert child.parent.span_id == server.context.span_id

    first, second = rounds
    assert first.kind == SpanKind.CLIENT
    assert first.attributes["gen_ai.operation.name"] == "chat"
    assert first.attributes["gen_ai.provider.name"] == "openai"
    assert first.attributes["gen_ai.request.model"] == "up-model"
    assert first.attributes["gen_ai.request.temperature"] == 0.2
    assert first.attributes["gen_ai.response.model"] == "up-model"
    assert first.attributes["gen_ai.response.id"] == "chatcmpl-up"
    assert first.attributes["gen_ai.response.finish_reasons"] == ("tool_calls",)
    assert first.attributes["server.address"] == "upstream.test"
    assert second.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert (second.attributes["gen_ai.usage.input_tokens"], second.attributes["gen_ai.usage.output_tokens"]) == (30, 7)
    # The tools ran between the rounds.
    assert all(first.end_time <= t.start_time and t.end_time <= second.start_time for t in tools)

    calc = by_name["execute_tool calculate"][0]
    assert calc.kind == SpanKind.INTERNAL
    assert calc.attributes["gen_ai.operation.name"] == "execute_tool"
    assert calc.attributes["gen_ai.tool.name"] == "calculate"
    assert calc.attributes["gen_ai.tool.call.id"] == "call_a"
    assert calc.attributes["toolgate.tool.source"] == "builtin"
    assert calc.attributes["toolgate.tool.outcome"] == "ok"
    assert calc.status.status_code != StatusCode.ERROR

    # log_content is off: no message, argument or result is on any span.
    text = orjson.dumps([dict(s.attributes) for s in finished]).decode()
    assert "secret plans" not in text and "6*7" not in text
    assert not any(k in text for k in ("gen_ai.input.messages", "gen_ai.tool.call.arguments", "gen_ai.tool.call.result"))

    # Each upstream request carried its own round's context, in the client's trace.
    sent = [r.headers["traceparent"].split("-")[1:3] for r in upstream.requests]
    assert sent == [[CLIENT_TRACE, _hex(r.context.span_id, 16)] for r in rounds]


async def test_a_streamed_round_reads_its_facts_from_the_chunks(spans):
    upstream = ScriptedUpstream(
        sse_body(
            chunk({"role": "assistant", "content": "Hel"}),
            chunk({"content": "lo"}, finish="stop"),
            chunk(usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}),
        )
    )
    async with gateway(settings(), upstream) as client:
        reply = await client.post("/v1/chat/completions", json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200
    (round_,) = [s for s in spans.get_finished_spans() if s.name == "chat up-model"]
    assert round_.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert round_.attributes["gen_ai.usage.output_tokens"] == 2
    assert round_.attributes["gen_ai.response.id"] == "c"
    assert "traceparent" in upstream.requests[0].headers  # a new trace, since the client sent none


async def test_contents_only_with_log_content_and_a_failed_tool_is_an_error(spans):
    upstream = ScriptedUpstream(
        completion(None, tool_calls=[call("calculate", "{not json", "call_x")]),
        completion("sorry"),
    )
    canary = "sk-canary-5f0c2a9e7d"
    SECRETS.add(canary)
    async with gateway(settings({"server": {"log_content": True}}), upstream) as client:
        reply = await client.post(
            "/v1/chat/completions", json={"model": "m", "messages": [{"role": "system", "content": f"key {canary}"}, {"role": "user", "content": "plans"}]}
        )
    assert reply.status_code == 200
    assert canary not in orjson.dumps([dict(s.attributes) for s in spans.get_finished_spans()]).decode()
    finished = {s.name: s for s in spans.get_finished_spans()}
    tool = finished["execute_tool calculate"]
    assert tool.status.status_code == StatusCode.ERROR
    assert tool.attributes["error.type"] == "bad_arguments"
    assert tool.attributes["gen_ai.tool.call.arguments"] == "{not json"
    first, second = sorted((s for s in spans.get_finished_spans() if s.name == "chat up-model"), key=lambda s: s.start_time)
    # The GenAI conventions' message shape: role and parts, tool calls and their results as parts.
    assert orjson.loads(first.attributes["gen_ai.input.messages"])[-1] == {"role": "user", "parts": [{"type": "text", "content": "plans"}]}
    assert orjson.loads(first.attributes["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_x", "name": "calculate", "arguments": "{not json"}], "finish_reason": "tool_calls"}
    ]
    sent = orjson.loads(second.attributes["gen_ai.input.messages"])
    assert sent[-1]["role"] == "tool" and sent[-1]["parts"][0]["type"] == "tool_call_response" and sent[-1]["parts"][0]["id"] == "call_x"


async def test_an_upstream_failure_and_its_retries_are_on_the_round(spans):
    upstream = ScriptedUpstream(httpx.Response(503, json={"error": {"message": "busy"}}), httpx.Response(502, text="no"))
    config = settings({"upstreams": {"default": {"url": "http://upstream.test/v1", "retries": 1}}})
    async with gateway(config, upstream) as client:
        reply = await client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 502
    finished = {s.name: s for s in spans.get_finished_spans()}
    round_ = finished["chat up-model"]
    assert round_.status.status_code == StatusCode.ERROR
    assert [(e.name, e.attributes["toolgate.retry.reason"]) for e in round_.events] == [("retry", "503")]
    server = finished["POST /v1/chat/completions"]
    assert server.status.status_code == StatusCode.ERROR and server.attributes["http.response.status_code"] == 502


async def test_a_rejected_request_is_a_server_span_too(spans):
    async with gateway(settings(), ScriptedUpstream()) as client:
        reply = await client.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, headers={"traceparent": TRACEPARENT})
    assert reply.status_code == 404
    (span,) = spans.get_finished_spans()
    assert span.attributes["http.response.status_code"] == 404
    assert span.attributes["error.type"] == "model_not_found"
    assert _hex(span.context.trace_id, 32) == CLIENT_TRACE


def test_when_to_trace_follows_the_otel_variables():
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"})
    assert not tracing.wanted({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"})


def test_with_tracing_off_no_sdk_or_exporter_is_imported():
    code = textwrap.dedent(
        """
        import asyncio, sys
        from gateway import tracing
        from gateway.app import create_app
        from tests.support import settings
        app = create_app(settings())
        async def main():
            async with app.router.lifespan_context(app):
                await app.state.runtime.starting
        asyncio.run(main())
        loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter", "google.protobuf")))
        print(tracing.ON, loaded)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False []"


# -- OTLP/HTTP to a receiver on loopback, from a real `toolgate serve` --------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_spans_reach_an_otlp_receiver_and_the_upstream_shares_the_trace(tmp_path):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route
    import uvicorn

    from tests.fakellm import Calls, FakeLLM, Reply

    posts: list[bytes] = []

    async def traces(request):
        posts.append(await request.body())
        return Response(ExportTraceServiceRequest().SerializeToString(), media_type="application/x-protobuf")

    receiver = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])]), log_config=None, lifespan="off"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    receiver_task = asyncio.create_task(receiver.serve(sockets=[sock]))
    config = tmp_path / "toolgate.toml"
    config.write_text(
        '[upstreams.default]\nurl = "${URL}"\nretries = 0\n[[models]]\nname = "m"\nupstream_model = "fake-model"\ntools = ["*"]\n'
        "[tools.builtin.calculate]\n[tools.builtin.current_time]\n".replace("${URL}", "http://127.0.0.1:1/v1")
    )
    port = _free_port()
    async with FakeLLM() as fake:
        fake.push(Calls([("calculate", {"expression": "6*7"}), ("current_time", {})]), Reply("42."))
        config.write_text(config.read_text().replace("http://127.0.0.1:1/v1", fake.url))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TOOLGATE_", "OTEL_"))}
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sock.getsockname()[1]}",
            OTEL_BSP_SCHEDULE_DELAY="50",
            OTEL_SERVICE_NAME="toolgate-test",
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            async with httpx.AsyncClient(timeout=10) as client, asyncio.timeout(30):
                while True:
                    try:
                        if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
                reply = await client.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": "go"}]},
                    headers={"traceparent": TRACEPARENT},
                )
                assert reply.status_code == 200
                received: list = []
                while len(received) < 5:
                    await asyncio.sleep(0.05)
                    received = []
                    for raw in posts:
                        request = ExportTraceServiceRequest.FromString(raw)
                        for resource in request.resource_spans:
                            service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
                            assert service == "toolgate-test"
                            for scope in resource.scope_spans:
                                received += scope.spans
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=15)
            receiver.should_exit = True
            await receiver_task
            sock.close()
        names = sorted(span.name for span in received)
        assert names == ["POST /v1/chat/completions", "chat fake-model", "chat fake-model", "execute_tool calculate", "execute_tool current_time"]
        assert {span.trace_id.hex() for span in received} == {CLIENT_TRACE}
        (server,) = [span for span in received if span.name.startswith("POST")]
        assert server.parent_span_id.hex() == CLIENT_PARENT
        assert all(span.parent_span_id == server.span_id for span in received if span is not server)
        attributes = {span.name: {a.key: a.value for a in span.attributes} for span in received}
        assert attributes["chat fake-model"]["gen_ai.operation.name"].string_value == "chat"
        assert attributes["execute_tool calculate"]["toolgate.tool.outcome"].string_value == "ok"
        assert proc.returncode == 0, err.decode()[-2000:]
        # The fake upstream saw the client's trace id on both rounds.
        rounds = [r for r in fake.requests if r.method == "POST"]
        assert [r.headers["traceparent"].split("-")[1] for r in rounds] == [CLIENT_TRACE, CLIENT_TRACE]


# -- tool servers: the tool call's context travels with it ------------------------------------


async def _run_one(toolbox, name: str, arguments: dict):
    from gateway.tools.toolbox import Toolbox

    assert isinstance(toolbox, Toolbox)
    offer = toolbox.select(["*"])
    with tracing._tracer.start_as_current_span("test request"):
        return [o async for o in toolbox.run_round([call(name, arguments, "call_t")], offer)][0]


def _tool_span(spans, name: str):
    return next(s for s in spans.get_finished_spans() if s.name == f"execute_tool {name}")


async def test_an_http_mcp_server_gets_the_tool_calls_traceparent(spans):
    from gateway.errors import Problems
    from gateway.tools.base import SourceContext
    from gateway.tools.mcp import build
    from gateway.tools.toolbox import Toolbox
    from tests.tools.mcp.test_mcp import HttpServer

    server = HttpServer("http")
    await server.start()
    source = build("srv", server.table(), Problems("test.toml"), "tools.mcp.srv")
    try:
        await source.start(SourceContext(environ=dict(os.environ)))
        outcome = await _run_one(Toolbox([source]), "header", {"name": "traceparent"})
    finally:
        await asyncio.wait_for(source.stop(), 15)
        await server.stop()
    assert outcome.outcome == "ok", outcome.content
    span = _tool_span(spans, "header")
    # The MCP SDK's own client span is unrecorded (toolgate installs no global provider): it passes ours on.
    assert outcome.content.split("-")[1:3] == [_hex(span.context.trace_id, 32), _hex(span.context.span_id, 16)]
    assert span.attributes["toolgate.tool.source"] == "srv"


async def test_an_openapi_server_gets_the_tool_calls_traceparent(spans):
    from gateway.errors import Problems
    from gateway.tools import openapi
    from gateway.tools.base import SourceContext
    from gateway.tools.toolbox import Toolbox

    seen: list[httpx.Request] = []
    spec = {
        "openapi": "3.0.0",
        "info": {"title": "t", "version": "1"},
        "servers": [{"url": "http://tools.test"}],
        "paths": {"/ping": {"get": {"operationId": "ping", "responses": {"200": {"description": "ok"}}}}},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/openapi.json":
            return httpx.Response(200, json=spec)
        seen.append(request)
        return httpx.Response(200, json={"pong": True})

    problems = Problems("toolgate.toml")
    source = openapi.build("api", {"url": "http://tools.test/openapi.json"}, problems, "tools.openapi.api")
    assert problems.lines == []
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        await source.start(SourceContext(http=client, environ={}))
        outcome = await _run_one(Toolbox([source]), "ping", {})
        await source.stop()
    assert outcome.outcome == "ok", outcome.content
    span = _tool_span(spans, "ping")
    assert seen[0].headers["traceparent"].split("-")[1:3] == [_hex(span.context.trace_id, 32), _hex(span.context.span_id, 16)]


def test_exporters_from_the_environment(caplog):
    caplog.set_level(logging.WARNING, logger="toolgate")
    try:
        assert not tracing.setup({"OTEL_TRACES_EXPORTER": "zipkin"})  # named, not shipped: off, and said
        assert "OTEL_TRACES_EXPORTER=zipkin is not supported" in caplog.text
        assert not tracing.ON
        assert tracing.setup({"OTEL_TRACES_EXPORTER": "console"}) and tracing.ON
        assert tracing.setup({}) and tracing.ON  # a process keeps the provider it made
    finally:
        tracing.shutdown()
    try:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        assert tracing.setup(env) and tracing.ON
        assert "OTLP protocol grpc is not supported" in caplog.text
    finally:
        tracing.shutdown()
    assert not tracing.ON
