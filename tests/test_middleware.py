"""The gateway's middleware on a real socket (uvicorn on 127.0.0.1): a bug that escapes a handler
is the one 500 in OpenAI shape, logged, never a traceback; the concurrency cap is a 429."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from starlette.responses import StreamingResponse
from starlette.routing import Route

from gateway.app import create_app
from gateway.config import Settings
from gateway.server import Server, server_config
from tests.support import completion, settings

USER = [{"role": "user", "content": "hi"}]


class Bug(Exception):
    pass


async def broken(request):
    raise Bug("detail from /srv/internal/path")


async def broken_midway(request):
    async def body() -> AsyncIterator[bytes]:
        yield b'{"partial": '
        raise Bug("detail from /srv/internal/path")

    return StreamingResponse(body(), media_type="application/json")


@asynccontextmanager
async def serving(config: Settings, upstream: httpx.AsyncBaseTransport | None = None) -> AsyncIterator[str]:
    """The gateway under uvicorn on a pre-bound loopback socket, with two handlers that have a bug."""
    app = create_app(config, transport=upstream or httpx.MockTransport(lambda r: httpx.Response(500)))
    app.router.routes += [Route("/v1/broken", broken), Route("/v1/broken-midway", broken_midway)]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = Server(server_config(app, config, lifespan="on"), grace_s=1)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.005)
            await app.state.runtime.starting
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


async def test_a_bug_escaping_a_handler_is_a_500_in_openai_shape_and_the_gateway_serves_on(caplog):
    caplog.set_level(logging.INFO, logger="toolgate")
    async with serving(settings()) as base, httpx.AsyncClient(base_url=base, timeout=5) as client:
        failed = await client.get("/v1/broken", headers={"x-request-id": "req-bug-1"})
        after = await client.get("/v1/models")
    assert failed.status_code == 500 and failed.headers["content-type"] == "application/json"
    assert failed.headers["x-request-id"] == "req-bug-1"
    error = failed.json()["error"]
    assert (error["message"], error["type"], error["code"]) == ("The gateway failed to handle this request.", "internal_error", "internal_error")
    assert "srv" not in failed.text and "Traceback" not in failed.text and "Bug" not in failed.text
    assert after.status_code == 200
    logged = [r for r in caplog.records if r.name == "toolgate.access" and r.fields.get("path") == "/v1/broken"]
    assert [(r.fields["status"], r.fields["request_id"]) for r in logged] == [(500, "req-bug-1")]
    assert any(r.getMessage() == "unhandled error serving /v1/broken" and r.exc_info for r in caplog.records)


async def test_a_bug_after_the_response_started_ends_the_connection_without_a_second_answer():
    async with serving(settings()) as base, httpx.AsyncClient(base_url=base, timeout=5) as client:
        async with client.stream("GET", "/v1/broken-midway") as response:
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):  # cut short: no 500 after a 200
                await response.aread()
        assert (await client.get("/healthz")).status_code == 200


async def test_the_concurrency_cap_is_a_429_with_retry_after_on_a_real_socket():
    reached, release = asyncio.Event(), asyncio.Event()

    async def held(request: httpx.Request) -> httpx.Response:
        reached.set()
        await asyncio.wait_for(release.wait(), 10)
        return httpx.Response(200, json=completion("ok"))

    config = settings({"server": {"max_concurrency": 1}})
    async with serving(config, httpx.MockTransport(held)) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        body = {"model": "m", "messages": USER}
        first = asyncio.ensure_future(client.post("/v1/chat/completions", json=body))
        await asyncio.wait_for(reached.wait(), 5)  # the first request holds the one slot
        second = await client.post("/v1/chat/completions", json=body)
        release.set()
        assert (await first).status_code == 200
    assert second.status_code == 429 and second.headers["retry-after"] == "1"
    assert second.json()["error"]["type"] == "rate_limit_error"
