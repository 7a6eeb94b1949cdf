"""Startup and shutdown as a probe sees them: the port opens first, sources start behind it."""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import httpx

from gateway.app import create_app
from gateway.server import Server, server_config
from gateway.tools.base import SourceStatus
from gateway.tools import registry
from tests.support import settings


class SlowSource:
    """A tool source that takes its time to start (an MCP server that never answers)."""

    name = "slow"
    prefix = False

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.began = asyncio.Event()
        self.stopped = False
        self.up = False

    async def start(self, ctx) -> None:
        self.began.set()
        await asyncio.sleep(self.seconds)
        self.up = True

    async def stop(self) -> None:
        self.stopped = True

    def tools(self):
        return []

    def status(self) -> SourceStatus:
        return SourceStatus(self.up, "" if self.up else "starting")


async def _serve(config):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(config)
    server = Server(server_config(app, config, lifespan="on"), grace_s=1)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.005)
    return server, task, f"http://127.0.0.1:{sock.getsockname()[1]}", sock


async def test_healthz_answers_while_sources_start_and_readyz_says_starting():
    source = SlowSource(30)
    config = dataclasses.replace(settings(), sources=(registry.ready(source),))
    server, task, base, sock = await _serve(config)
    try:
        await asyncio.wait_for(source.began.wait(), 5)
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            health = await asyncio.wait_for(client.get("/healthz"), 0.5)
            ready = await client.get("/readyz")
        assert health.status_code == 200
        assert ready.status_code == 503 and ready.json()["status"] == "starting"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
    # Shut down during startup: the source's start was cancelled, and it was stopped all the same.
    assert source.stopped and not source.up


async def test_readyz_names_the_demo_upstream():
    app = create_app(settings(), demo=True)
    async with app.router.lifespan_context(app):
        await app.state.runtime.starting
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
            ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["demo"] is True


async def test_readyz_reports_an_upstream_that_cannot_be_reached():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = settings({"upstreams": {"default": {"url": f"http://127.0.0.1:{port}/v1", "connect_timeout_s": 1}}})
    server, task, base, sock = await _serve(config)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client, asyncio.timeout(10):
            while "upstreams" not in (ready := (await client.get("/readyz")).json()):
                await asyncio.sleep(0.02)
        assert ready["status"] == "degraded"
        assert ready["upstreams"]["default"]["reachable"] is False
        assert str(port) not in str(ready)  # no address in what a probe shows
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
