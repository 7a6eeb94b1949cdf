"""Upstream faults and what the client, the log and /metrics see of them (in-process, scripted upstream)."""

from __future__ import annotations

import asyncio
import logging

import httpx
import orjson
import pytest

from gateway.app import create_app
from tests.support import ScriptedUpstream, chunk, completion, gateway, settings, sse_body, sse_events

USER = [{"role": "user", "content": "hi"}]


async def post(client: httpx.AsyncClient, **body):
    body.setdefault("model", "m")
    body.setdefault("messages", USER)
    headers = body.pop("headers", {})
    return await client.post("/v1/chat/completions", json=body, headers=headers)


def upstream(**options) -> dict:
    return {"upstreams": {"default": {"url": "http://up.test/v1", **options}}}


def _error(status: int, body: bytes = b"{}", **headers: str) -> httpx.Response:
    return httpx.Response(status, content=body, headers={"content-type": "application/json", **headers})


# -- retries ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("fault", [httpx.ReadError("reset by peer"), httpx.RemoteProtocolError("server disconnected"), httpx.ReadTimeout("slow")])
async def test_a_call_the_host_may_have_processed_is_never_sent_again(fault, stream):
    up = ScriptedUpstream(fault)
    async with gateway(settings(upstream(retries=2)), up) as client:
        r = await post(client, stream=stream)
    assert r.status_code in (502, 504)
    assert len(up.requests) == 1  # one paid call, not three


async def test_a_refused_connection_is_retried():
    up = ScriptedUpstream(httpx.ConnectError("refused"), httpx.ConnectTimeout("no syn-ack"), completion("third time"))
    async with gateway(settings(upstream(retries=2)), up) as client:
        r = await post(client)
    assert r.status_code == 200 and len(up.requests) == 3


async def test_retries_cannot_multiply_an_outage():
    """An upstream answering 503 to everything: retries stay within the budget (20 % of
    requests in flight, at least `retry_budget_min`), not 3x the traffic."""
    attempts = 0

    async def always_503(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.01)
        return _error(503)

    config = settings(upstream(retries=2, retry_budget_percent=20, retry_budget_min=1))
    async with gateway(config, httpx.MockTransport(always_503)) as client:
        replies = await asyncio.gather(*(post(client) for _ in range(30)))
    assert {r.status_code for r in replies} == {502}
    assert 30 <= attempts <= 30 * 1.5, attempts


async def test_connections_per_upstream_are_bounded_and_a_long_wait_is_a_503():
    in_flight = peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.5)
        in_flight -= 1
        return httpx.Response(200, json=completion("ok"))

    config = settings(upstream(max_connections=2, pool_timeout_s=0.1, retries=0))
    async with gateway(config, httpx.MockTransport(slow)) as client:
        replies = await asyncio.gather(*(post(client) for _ in range(5)))
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200, 200, 503, 503, 503] and peak == 2
    busy = next(r for r in replies if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and busy.json()["error"]["code"] == "upstream_busy"


# -- what the client sees ----------------------------------------------------------------------


async def test_an_upstream_422_stays_a_422():
    up = ScriptedUpstream(_error(422, b'{"error": {"message": "unknown field"}}'))
    async with gateway(settings(upstream(retries=0)), up) as client:
        r = await post(client)
    assert r.status_code == 422 and "unknown field" in r.json()["error"]["message"]


async def test_the_upstreams_address_never_reaches_the_client():
    config = settings({"upstreams": {"default": {"url": "http://10.9.8.7:8123/v1", "retries": 0}}})
    up = ScriptedUpstream(_error(503, b'{"error": {"message": "no healthy backend behind 10.9.8.7:8123"}}'))
    async with gateway(config, up) as client:
        r = await post(client)
    assert r.status_code == 502 and "10.9.8.7:8123" not in r.text


@pytest.mark.parametrize("depth", [300, 1000, 5000])
async def test_json_nested_too_deep_to_forward_is_a_400(depth):
    deep = b"[" * depth + b'"x"' + b"]" * depth
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "metadata": {"a": ' + deep + b"}}"
    async with gateway(settings(), ScriptedUpstream()) as client:
        r = await client.post("/v1/chat/completions", content=body)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


async def test_a_body_sent_in_thousands_of_pieces_is_read_whole():
    app = create_app(settings())
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * (4 << 20)}]})
    pieces = [body[i : i + 4096] for i in range(0, len(body), 4096)]
    up = ScriptedUpstream(completion("read it"))
    app = create_app(settings(), transport=up.transport())
    sent: list[dict] = []

    async def receive():
        if pieces:
            return {"type": "http.request", "body": pieces.pop(0), "more_body": bool(pieces)}
        await asyncio.sleep(30)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    async with app.router.lifespan_context(app):
        await app.state.runtime.starting
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "query_string": b""}
        await app(scope, receive, send)
    assert sent[0]["status"] == 200
    assert len(orjson.loads(up.requests[0].content)["messages"][-1]["content"]) == 4 << 20


@pytest.mark.parametrize(
    "reply",
    [
        httpx.Response(200, json={"object": "chat.completion"}),
        httpx.Response(200, content=b"data: [DONE]\n\n", headers={"content-type": "text/event-stream"}),
    ],
    ids=["json-without-choices", "only-done"],
)
async def test_a_stream_without_an_answer_is_a_502(reply):
    async with gateway(settings(upstream(retries=0)), ScriptedUpstream(reply)) as client:
        r = await post(client, stream=True)
    assert r.status_code == 502


async def test_no_usage_from_the_host_means_no_usage_chunk_not_an_empty_one():
    answer = sse_body(chunk({"content": "hi"}), chunk({}, "stop"))
    async with gateway(settings(), ScriptedUpstream(answer)) as client:
        r = await post(client, stream=True, stream_options={"include_usage": True})
    payloads = [p for p in sse_events(r.text) if p != "[DONE]"]
    assert all(p.get("usage") != {} for p in payloads)
    assert not any(p["choices"] == [] for p in payloads)


@pytest.mark.parametrize("stream", [True, False])
async def test_truncation_by_length_stays_visible(stream):
    reply = sse_body(chunk({"content": "cut"}), chunk({}, "length")) if stream else completion("cut", finish="length")
    async with gateway(settings(), ScriptedUpstream(reply)) as client:
        r = await post(client, stream=stream)
    if stream:
        finishes = [p["choices"][0]["finish_reason"] for p in sse_events(r.text) if p != "[DONE]" and p["choices"]]
        assert finishes[-1] == "length"
    else:
        assert r.json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("stream", [True, False])
async def test_logprobs_asked_for_reach_the_client(stream):
    lp = [{"token": "hi", "logprob": -0.25, "bytes": [104, 105], "top_logprobs": []}]
    if stream:
        piece = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "x", "choices": [{"index": 0, "delta": {"content": "hi"}, "logprobs": {"content": lp}, "finish_reason": None}]}
        reply = sse_body(piece, chunk({}, "stop"))
    else:
        reply = completion("hi")
        reply["choices"][0]["logprobs"] = {"content": lp}
    async with gateway(settings(), ScriptedUpstream(reply)) as client:
        r = await post(client, stream=stream, logprobs=True)
    if stream:
        first = next(p for p in sse_events(r.text) if p != "[DONE]" and p["choices"] and p["choices"][0]["delta"].get("content"))
        assert first["choices"][0]["logprobs"] == {"content": lp}
    else:
        assert r.json()["choices"][0]["logprobs"] == {"content": lp}


# -- every request is logged and counted ------------------------------------------------------------


async def test_rejected_requests_are_logged_and_counted(caplog):
    caplog.set_level(logging.INFO, logger="toolgate.access")
    config = settings({"server": {"max_body_bytes": 2000}}, environ={"TOOLGATE_API_KEYS": "key-for-the-gateway"})
    auth = {"authorization": "Bearer key-for-the-gateway"}
    async with gateway(config, ScriptedUpstream()) as client:
        statuses = [
            (await post(client)).status_code,
            (await post(client, headers=auth, model="nope")).status_code,
            (await client.post("/v1/chat/completions", content=b"{", headers=auth)).status_code,
            (await post(client, headers=auth, messages=[{"role": "user", "content": "x" * 5000}])).status_code,
        ]
        metrics = (await client.get("/metrics")).text
    assert statuses == [401, 404, 400, 413]
    logged = [r.fields["status"] for r in caplog.records if r.name == "toolgate.access"]
    assert logged == statuses
    for status in statuses:
        assert f'status="{status}"' in metrics
    assert "key-for-the-gateway" not in caplog.text


async def test_the_concurrency_cap_is_a_logged_429(caplog):
    caplog.set_level(logging.INFO, logger="toolgate.access")
    release = asyncio.Event()

    async def held(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, json=completion("ok"))

    async with gateway(settings({"server": {"max_concurrency": 1}}), httpx.MockTransport(held)) as client:
        first = asyncio.ensure_future(post(client))
        await asyncio.sleep(0.05)
        second = await post(client)
        release.set()
        assert (await first).status_code == 200
    assert second.status_code == 429 and second.headers["retry-after"] == "1"
    assert sorted(r.fields["status"] for r in caplog.records if r.name == "toolgate.access") == [200, 429]


async def test_annotations_and_audio_reach_the_client():
    cites = [{"type": "url_citation", "url_citation": {"url": "https://example.org", "title": "E", "start_index": 0, "end_index": 2}}]
    reply = completion("hi")
    reply["choices"][0]["message"] |= {"annotations": cites, "audio": {"id": "a1", "data": "UklGRg==", "transcript": "hi", "expires_at": 1}}
    streamed = sse_body(chunk({"content": "hi"}), chunk({"annotations": cites}), chunk({}, "stop"))
    async with gateway(settings(), ScriptedUpstream(reply, streamed)) as client:
        plain = await post(client, modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"})
        stream = await post(client, stream=True)
        refused = await post(client, stream=True, audio={"voice": "alloy", "format": "wav"})
    message = plain.json()["choices"][0]["message"]
    assert message["annotations"] == cites and message["audio"]["transcript"] == "hi"
    deltas = [p["choices"][0]["delta"] for p in sse_events(stream.text) if p != "[DONE]" and p["choices"]]
    assert {"annotations": cites} in deltas
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "audio"


async def test_a_reload_that_changes_an_upstream_never_resets_its_connection_bound():
    """Requests of the old config still running (a later round, a retry) and new requests
    alternate on one upstream name: each config keeps its own bounded pool."""
    from dataclasses import replace

    from gateway.errors import UpstreamBusy
    from gateway.transports import create_transport
    from gateway.upstream import UpstreamClient

    release = asyncio.Event()
    in_flight = {"old": 0, "new": 0}
    peak = dict(in_flight)

    async def handler(request: httpx.Request) -> httpx.Response:
        gen = request.headers["x-config"]
        in_flight[gen] += 1
        peak[gen] = max(peak[gen], in_flight[gen])
        if gen == "new":
            await asyncio.wait_for(release.wait(), 5)
        in_flight[gen] -= 1
        return httpx.Response(200, json=completion("ok"))

    running = settings(upstream(max_connections=1, pool_timeout_s=0.2, retries=0)).upstreams["default"]
    old, new = replace(running, headers={"x-config": "old"}), replace(running, headers={"x-config": "new"})
    client = UpstreamClient(create_transport(httpx.MockTransport(handler)))
    payload = {"model": "m", "messages": USER}
    first = asyncio.ensure_future(client.complete(new, payload))
    while not in_flight["new"]:
        await asyncio.sleep(0.01)
    await client.complete(old, payload)  # the old config's next round, on its own pool
    with pytest.raises(UpstreamBusy):
        await client.complete(new, payload)  # the new config's one connection is still taken
    release.set()
    await first
    assert peak == {"old": 1, "new": 1}
