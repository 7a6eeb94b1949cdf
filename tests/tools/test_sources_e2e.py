"""One alias whose tools come from all four source kinds, called in one round."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.config import settings_from_dict
from tests.support import ScriptedUpstream, call, completion, gateway
from tests.tool_servers import serve

ROOT = Path(__file__).resolve().parents[2]

SPEC = {
    "openapi": "3.1.0",
    "info": {"title": "stock", "version": "1"},
    "paths": {
        "/stock/{sku}": {
            "get": {
                "operationId": "get_stock",
                "summary": "Units in stock for a SKU.",
                "parameters": [{"name": "sku", "in": "path", "required": True, "schema": {"type": "string"}}],
            }
        }
    },
}


async def stock(request: Request) -> JSONResponse:
    return JSONResponse({"sku": request.path_params["sku"], "units": 7, "token": request.headers.get("x-token")})


STOCK_APP = Starlette(routes=[Route("/openapi.json", lambda r: JSONResponse(SPEC)), Route("/stock/{sku}", stock)])


async def test_one_round_calls_tools_of_every_source_kind(tmp_path):
    async with serve(STOCK_APP) as base:
        raw = {
            "upstreams": {"default": {"url": "http://upstream.test/v1"}},
            "models": [{"name": "m", "upstream_model": "u", "tools": ["calculate", "get_stock", "mcp_*", "forecast"]}],
            "tools": {
                "builtin": {"calculate": {}},
                "openapi": {"stock": {"url": f"{base}/openapi.json", "headers": {"x-token": "${STOCK_TOKEN}"}}},
                "mcp": {"mcp": {"command": sys.executable, "args": [str(ROOT / "tests/mcp_server.py"), "--transport", "stdio"], "prefix": True}},
                "python": {"fn": {"functions": ["tests.sample_functions:forecast"]}},
            },
        }
        settings = settings_from_dict(raw, {"STOCK_TOKEN": "t0k"})
        calls = [
            call("calculate", {"expression": "6*7"}, "a"),
            call("get_stock", {"sku": "A-1"}, "b"),
            call("mcp_add", {"a": 2, "b": 3}, "c"),
            call("forecast", {"city": "Oslo", "days": 2}, "d"),
        ]
        up = ScriptedUpstream(completion(None, tool_calls=calls), completion("All done."))
        async with gateway(settings, up) as client:
            ready = await client.get("/readyz")
            r = await client.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "go"}]},
                headers={"x-toolgate-trace": "1"},
            )
    assert ready.json()["status"] == "ready"
    assert r.status_code == 200, r.text
    offered = {t["function"]["name"] for t in up.bodies[0]["tools"]}
    assert {"calculate", "get_stock", "mcp_add", "mcp_echo", "forecast"} <= offered
    results = {m["tool_call_id"]: m["content"] for m in up.bodies[1]["messages"] if m["role"] == "tool"}
    assert results["a"] == "42"
    assert orjson.loads(results["b"]) == {"sku": "A-1", "units": 7, "token": "t0k"}
    assert results["c"] == "5"
    assert results["d"].startswith("Oslo: sunny for 2 days")
    assert [t["outcome"] for t in r.json()["toolgate"]["tools"]] == ["ok"] * 4


async def test_a_source_that_fails_to_start_leaves_the_gateway_serving_and_readyz_degraded():
    raw = {
        "upstreams": {"default": {"url": "http://upstream.test/v1"}},
        "models": [{"name": "m", "upstream_model": "u", "tools": ["*"]}],
        "tools": {
            "builtin": {"calculate": {}},
            "mcp": {"broken": {"command": "/nonexistent/mcp-server", "startup_timeout_s": 2}},
        },
    }
    up = ScriptedUpstream(completion("fine"))
    async with gateway(settings_from_dict(raw, {}), up) as client:
        ready = await client.get("/readyz")
        r = await client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded" and "broken" in ready.json()["sources"]
    assert r.status_code == 200
    assert [t["function"]["name"] for t in up.bodies[0]["tools"]] == ["calculate"]
