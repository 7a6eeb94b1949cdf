"""CORS: off by default; the configured origins may call the API from a browser."""

from __future__ import annotations

import pytest
from gateway.errors import ConfigError
from tests.support import ScriptedUpstream, completion, gateway, settings

ORIGIN = "https://chat.example.com"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def preflight(origin: str = ORIGIN, headers: str = "authorization, content-type, x-stainless-os") -> dict[str, str]:
    return {"origin": origin, "access-control-request-method": "POST", "access-control-request-headers": headers}


async def test_off_by_default_no_cors_headers_and_no_preflight():
    async with gateway(settings(), ScriptedUpstream(completion("hi"))) as client:
        reply = await client.post("/v1/chat/completions", json=CHAT, headers={"origin": ORIGIN})
        pre = await client.options("/v1/chat/completions", headers=preflight())
    assert reply.status_code == 200
    assert not [h for h in reply.headers if h.startswith("access-control-")]
    assert pre.status_code == 405 and "access-control-allow-origin" not in pre.headers


async def test_configured_origin_preflight_and_request_pass_even_with_keys():
    config = settings({"server": {"cors_origins": [ORIGIN, "http://localhost:3000"]}}, {"TOOLGATE_API_KEYS": "client-key-0123456789"})
    async with gateway(config, ScriptedUpstream(completion("hi"))) as client:
        pre = await client.options("/v1/chat/completions", headers=preflight())
        reply = await client.post("/v1/chat/completions", json=CHAT, headers={"origin": ORIGIN, "authorization": "Bearer client-key-0123456789"})
        refused = await client.post("/v1/chat/completions", json=CHAT, headers={"origin": ORIGIN})
        other = await client.options("/v1/chat/completions", headers=preflight("https://evil.example"))
        evil_headers = await client.options("/v1/models", headers=preflight(headers="x-a\r\nx-b: 1"))
    # The preflight carries no key and needs none.
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert pre.headers["access-control-allow-headers"] == "authorization, content-type, x-stainless-os"
    assert pre.headers["access-control-max-age"] == "600"
    assert "access-control-allow-credentials" not in pre.headers
    assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in reply.headers["access-control-expose-headers"]
    assert reply.headers["vary"] == "origin"
    # An error is readable by the page too, so it can show it.
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN
    # Another origin: no CORS headers, so the browser refuses; its preflight meets the key check.
    assert other.status_code == 401 and "access-control-allow-origin" not in other.headers
    assert evil_headers.status_code == 204 and "access-control-allow-headers" not in evil_headers.headers


async def test_any_origin():
    config = settings({"server": {"cors_origins": ["*"]}})
    async with gateway(config, ScriptedUpstream()) as client:
        pre = await client.options("/v1/models", headers=preflight("http://anything.test:8000"))
        models = await client.get("/v1/models", headers={"origin": "http://anything.test:8000"})
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "*"
    assert models.status_code == 200 and models.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("https://chat.example.com", "expected a list of strings"),
        (["https://chat.example.com/app"], "no path"),
        (["chat.example.com"], "http:// or https://"),
        (["https://"], "host name"),
        ([""], "non-empty"),
    ],
)
def test_bad_origins_are_config_problems(value, complaint):
    with pytest.raises(ConfigError) as error:
        settings({"server": {"cors_origins": value}})
    assert len(error.value.problems) == 1
    assert "server.cors_origins" in error.value.problems[0] and complaint in error.value.problems[0]
