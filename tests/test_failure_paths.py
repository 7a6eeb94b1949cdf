"""Failure paths a client and an operator see: forwarded client credentials, and a bug
inside the gateway (a 500 in OpenAI shape, no traceback, the request still logged)."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.support import ScriptedUpstream, chunk, completion, gateway, settings, sse_body, sse_events

USER = [{"role": "user", "content": "hi"}]


def forwarding(**extra):
    return settings(
        {
            "upstreams": {
                "default": {"url": "http://up.test/v1", "api_key_env": "UP_KEY"},
                "byok": {"url": "http://byok.test/v1", "api_key_env": "BYOK_KEY", "forward_client_auth": True, "retries": 0},
            },
            "models": [
                {"name": "m", "upstream_model": "u"},
                {"name": "b", "upstream": "byok", "upstream_model": "u"},
            ],
            **extra,
        },
        environ={"UP_KEY": "sk-gateway-own", "BYOK_KEY": "sk-gateway-byok"},
    )


async def test_forward_client_auth_sends_the_clients_key_instead_of_the_gateways():
    up = ScriptedUpstream(completion("mine"), completion("yours"), completion("fallback"))
    async with gateway(forwarding(), up) as client:
        own = await client.post("/v1/chat/completions", json={"model": "m", "messages": USER}, headers={"authorization": "Bearer sk-user-1"})
        byok = await client.post("/v1/chat/completions", json={"model": "b", "messages": USER}, headers={"authorization": "Bearer sk-user-1"})
        bare = await client.post("/v1/chat/completions", json={"model": "b", "messages": USER})
    assert [r.status_code for r in (own, byok, bare)] == [200, 200, 200]
    sent = [(r.url.host, r.headers.get("authorization")) for r in up.requests]
    assert sent == [
        ("up.test", "Bearer sk-gateway-own"),  # an upstream that does not forward never sees the client's key
        ("byok.test", "Bearer sk-user-1"),
        ("byok.test", "Bearer sk-gateway-byok"),  # no client key: the gateway's own
    ]


async def test_a_forwarded_key_echoed_by_the_host_is_masked():
    said = httpx.Response(401, json={"error": {"message": "Incorrect API key provided: sk-user-echoed-77"}})
    up = ScriptedUpstream(said)
    async with gateway(forwarding(), up) as client:
        r = await client.post("/v1/chat/completions", json={"model": "b", "messages": USER}, headers={"authorization": "Bearer sk-user-echoed-77"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_auth_failed"
    assert "sk-user-echoed-77" not in r.text


class Bug(Exception):
    pass


def buggy(request: httpx.Request) -> httpx.Response:
    raise Bug("internal detail /srv/secret/path")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_bug_is_a_500_in_openai_shape_without_its_detail(stream, caplog):
    caplog.set_level(logging.INFO, logger="toolgate.access")
    async with gateway(settings(), httpx.MockTransport(buggy)) as client:
        r = await client.post("/v1/chat/completions", json={"model": "m", "messages": USER, "stream": stream})
        after = await client.post("/v1/chat/completions", json={"model": "m", "messages": USER, "stream": stream})
    assert r.status_code == 500 and after.status_code == 500  # the process serves on
    # Streamed too: nothing was sent yet, so the error keeps its status and is one JSON body.
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("internal_error", "internal_error")
    assert "secret" not in r.text and "Traceback" not in r.text and "Bug" not in r.text
    lines = [rec for rec in caplog.records if rec.name == "toolgate.access"]
    assert [rec.fields["status"] for rec in lines] == [500, 500]


async def test_a_bug_after_the_stream_started_ends_it_with_an_error_event():
    first = sse_body(chunk({"content": "Let me look."}), chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "calculate", "arguments": '{"expression": "1+1"}'}}]}), chunk({}, "tool_calls"))
    up = ScriptedUpstream(first, buggy)
    async with gateway(settings(), up) as client:
        r = await client.post("/v1/chat/completions", json={"model": "m", "messages": USER, "stream": True})
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[-1] == "[DONE]" and events[-2]["error"]["type"] == "internal_error"
    assert "Let me look." in r.text and "secret" not in r.text and "Traceback" not in r.text
