"""Canaries: one distinct value per kind of secret, every path that could carry one driven once,
and every log line (debug level, through the real log pipeline), every response body and every
message sent to the model searched for them."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway import logs
from gateway.config import settings_from_dict
from tests.support import ScriptedUpstream, call, chunk, completion, gateway, sse_body
from tests.tool_servers import serve

ROOT = Path(__file__).parent.parent

CANARIES = {
    "UP_KEY": "canary-upstream-key-7f3a91d0",
    "FWD_KEY": "canary-forwarding-upstream-key-2c81",
    "TOOLGATE_API_KEYS": "canary-gateway-key-51bd02e4",
    "HEADER_VALUE": "canary-header-value-c93e77aa",
    "MCP_TOKEN": "canary-mcp-env-0a7d55f1",
    "OPENAPI_TOKEN": "canary-openapi-token-9e1c44b7",
}

SPEC = {
    "openapi": "3.1.0",
    "info": {"title": "echo", "version": "1"},
    "paths": {"/whoami": {"get": {"operationId": "whoami", "summary": "Echo the caller's credentials."}}},
}


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"authorization": request.headers.get("authorization")})


ECHO_APP = Starlette(routes=[Route("/openapi.json", lambda r: JSONResponse(SPEC)), Route("/whoami", whoami)])


class Sink(io.TextIOBase):
    """A log stream that keeps everything written to it."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            self.parts.append(text)
        return len(text)

    def text(self) -> str:
        with self.lock:
            return "".join(self.parts)


def config(openapi_base: str):
    raw = {
        "upstreams": {
            "default": {"url": "http://upstream.test/v1", "api_key_env": "UP_KEY", "retries": 0, "headers": {"X-Custom-Auth": "${HEADER_VALUE}"}},
            "fwd": {"url": "http://forward.test/v1", "api_key_env": "FWD_KEY", "retries": 0, "forward_client_auth": True},
        },
        "models": [
            {"name": "m", "upstream_model": "u", "tools": ["*"]},
            {"name": "f", "upstream": "fwd", "upstream_model": "u"},
        ],
        "tools": {
            "openapi": {"echo": {"url": f"{openapi_base}/openapi.json", "headers": {"Authorization": "Bearer ${OPENAPI_TOKEN}"}}},
            "mcp": {"box": {"command": sys.executable, "args": [str(ROOT / "tests/mcp_server.py"), "--transport", "stdio"], "env": {"MCP_TOKEN": "${MCP_TOKEN}"}, "prefix": True}},
            "python": {"py": {"functions": ["tests.canary_tools:leak_upstream_key"]}},
        },
    }
    # Header values are written `${VAR}` only where the source kind expands them; upstream headers are literal.
    raw["upstreams"]["default"]["headers"] = {"X-Custom-Auth": CANARIES["HEADER_VALUE"]}
    return settings_from_dict(raw, {**CANARIES, "PATH": "/usr/bin:/bin"})


def echo_auth(request: httpx.Request) -> httpx.Response:
    # A host that echoes the credentials it got, as some do in their 401s.
    said = f"Invalid key {request.headers.get('authorization')} (custom {request.headers.get('x-custom-auth')})"
    return httpx.Response(401, json={"error": {"message": said}})


LOGGERS = ("", "toolgate", "uvicorn", "uvicorn.error", "uvicorn.access")


async def test_no_secret_reaches_a_log_a_client_or_the_model():
    sink = Sink()
    saved = {name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers), logging.getLogger(name).propagate) for name in LOGGERS}
    logs.setup("DEBUG", stream=sink)
    try:
        async with serve(ECHO_APP) as openapi_base:
            settings = config(openapi_base)
            calls = [
                call("box_say", {"text": "token is ", "env": "MCP_TOKEN"}, "a"),
                call("box_env", {"name": "MCP_TOKEN"}, "b"),
                call("whoami", {}, "c"),
                call("leak_upstream_key", {}, "d"),
            ]
            in_band = sse_body(chunk({"content": "Hel"}), {"error": {"message": f"upstream rejected key {CANARIES['UP_KEY']} / {CANARIES['HEADER_VALUE']}"}}, done=False)
            up = ScriptedUpstream(completion(None, tool_calls=calls), completion("done"), in_band, echo_auth, echo_auth)
            auth = {"authorization": f"Bearer {CANARIES['TOOLGATE_API_KEYS']}"}
            async with gateway(settings, up) as client:
                bodies = [
                    await client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "go"}]}, headers={**auth, "x-toolgate-trace": "1"}),
                    await client.post("/v1/chat/completions", json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "go"}]}, headers=auth),
                    await client.post("/v1/chat/completions", json={"model": "f", "messages": [{"role": "user", "content": "go"}]}, headers=auth),
                    await client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "go"}]}, headers=auth),
                    await client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "go"}]}),
                ]
                statuses = [r.status_code for r in bodies]
    finally:
        logging.getLogger("toolgate").debug("end of the canary run")
        logs.stop()
        for name, (level, handlers, propagate) in saved.items():  # leave logging as the other tests expect it
            logger = logging.getLogger(name)
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate = propagate
    text = sink.text()
    assert statuses == [200, 502, 502, 502, 401], statuses
    # The paths were driven: the tools ran, the stderr line and the errors were logged.
    results = {m["tool_call_id"]: m["content"] for m in up.bodies[1]["messages"] if m["role"] == "tool"}
    assert set(results) == {"a", "b", "c", "d"}
    assert "***" in results["b"] and "***" in results["c"]
    assert "token is ***" in text
    assert "Invalid key" in text and "upstream rejected key" in text
    model_saw = orjson.dumps(up.bodies).decode()
    replies = "".join(r.text for r in bodies)
    for name, value in CANARIES.items():
        assert value not in text, f"{name} in the log"
        assert value not in replies, f"{name} in a response"
        assert value not in model_saw, f"{name} in what the model read"


def test_check_prints_no_secret(tmp_path):
    toml = tmp_path / "toolgate.toml"
    toml.write_text(
        "[upstreams.default]\n"
        f'url = "https://host.test/v1?api-key={CANARIES["UP_KEY"]}"\n'
        'api_key_env = "FWD_KEY"\n'
        f'headers = {{ X-Custom-Auth = "{CANARIES["HEADER_VALUE"]}" }}\n'
        "[[models]]\nname = 'm'\n"
        f"system_prompt = 'never say {CANARIES['FWD_KEY']}'\n"
    )
    env = {"PATH": "/usr/bin:/bin", "FWD_KEY": CANARIES["FWD_KEY"], "TOOLGATE_API_KEYS": CANARIES["TOOLGATE_API_KEYS"]}
    result = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(toml)], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    for value in CANARIES.values():
        assert value not in result.stdout + result.stderr
