"""The ASGI application.

    app = create_app(load_config("config/toolgate.toml", os.environ))
    app = create_app(settings, transport=httpx.MockTransport(handler))   # in tests

The lifespan opens the process's one upstream transport (aiohttp, or the
injected httpx transport) and its one httpx client for tools, starts every
tool source concurrently in the background (the port is open meanwhile), and
closes all of it on shutdown, in reverse. Every secret the config knows is
registered with the redactor when the app is created. SIGHUP reloads the config
(`gateway/reload.py`): each request keeps the config it began on (`routes.Pinned`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.routing import Route

from gateway import passthrough, routes
from gateway.config import Settings
from gateway.demo import DemoTransport
from gateway.middleware import CORSMiddleware, GatewayMiddleware
from gateway.redact import SECRETS
from gateway.reload import Reloader, register, toolbox_for, unregister
from gateway.responses.routes import CreateResponse, store_routes
from gateway.responses.slot import StoreSlot
from gateway.store import ResponseStore, open_store
from gateway.tools.base import SourceContext, ToolSource
from gateway.tools.workers import WORKERS
from gateway.transports import Transport, create_transport
from gateway.upstream import Reachability, UpstreamClient, probe

log = logging.getLogger("toolgate")


def create_app(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    tool_transport: httpx.AsyncBaseTransport | None = None,
    demo: bool = False,
) -> Starlette:
    runtime = routes.Runtime(settings, toolbox_for(settings))  # creates the sources from their specs
    sources = runtime.toolbox.sources
    store = StoreSlot(store_opener(settings))

    SECRETS.add(*settings.secrets())
    WORKERS.threads = settings.loop.tool_threads

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            upstream = create_transport(transport)
            if demo:  # the default upstream is the demo model, answered in this process
                upstream = DemoTransport(upstream)
            stack.push_async_callback(upstream.aclose)
            tool_http = await stack.enter_async_context(
                httpx.AsyncClient(transport=tool_transport, timeout=httpx.Timeout(30.0), follow_redirects=False, trust_env=False)
            )
            runtime.upstream = UpstreamClient(upstream)
            context = SourceContext(http=tool_http, environ=settings.environ)
            # The reloader stops every source at shutdown, those of later configs too; each is
            # registered before its start, so a start cancelled midway (shutdown during
            # startup) still stops what it began, children included.
            reloader = app.state.reloader = Reloader(runtime, context)
            stack.push_async_callback(reloader.close)
            reloader.own(sources)
            register(reloader)  # SIGHUP reloads this app's config
            stack.callback(unregister, reloader)
            # Sources start behind the open port: /healthz answers from the first second,
            # /readyz says "starting" until every source is up or has given up.
            runtime.starting = asyncio.ensure_future(_start_sources(sources, context, runtime))
            stack.push_async_callback(_cancel, runtime.starting)
            runtime.probe = lambda: _probe_upstreams(upstream, runtime)
            stack.push_async_callback(runtime.stop_probing)
            stack.push_async_callback(store.close)
            stack.push_async_callback(create.remote.close)  # remote MCP sessions of /v1/responses
            yield
            runtime.started = False

    # Each request sees the config of the moment it began, through its last byte.
    chat = routes.Pinned(runtime, routes.ChatCompletions(runtime))
    create = CreateResponse(runtime, store)
    responses = routes.Pinned(runtime, create)
    stored = store_routes(store)
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/chat/completions", chat, methods=["POST"]),
            Route("/v1/responses", responses, methods=["POST"]),
            Route("/responses", responses, methods=["POST"]),
            Route("/v1/responses/{response_id}", stored["retrieve"], methods=["GET"]),
            Route("/v1/responses/{response_id}", stored["delete"], methods=["DELETE"]),
            Route("/v1/responses/{response_id}/input_items", stored["input_items"], methods=["GET"]),
            Route("/v1/models", routes.models(runtime), methods=["GET"]),
            Route("/models", routes.models(runtime), methods=["GET"]),
            *passthrough.routes(runtime),
            Route("/healthz", routes.healthz, methods=["GET"]),
            Route("/readyz", routes.readyz(runtime), methods=["GET"]),
            Route("/metrics", routes.metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={404: routes.not_found_json, 405: routes.not_found_json},
    )
    app.state.runtime = runtime
    app.state.responses_store = store
    runtime.demo = demo
    keys = tuple(k.value for k in settings.api_keys)
    direct = {"/v1/chat/completions": chat, "/chat/completions": chat, "/v1/responses": responses, "/responses": responses}
    app.add_middleware(GatewayMiddleware, api_keys=keys, direct=direct)
    if settings.server.cors_origins:
        app.add_middleware(CORSMiddleware, origins=settings.server.cors_origins)  # outermost
    return app


def store_opener(settings: Settings) -> Callable[[], Awaitable[ResponseStore]]:
    """How to open the response store (`[store]`), on first use."""
    store = settings.store
    return lambda: open_store(store.url, ttl_s=store.ttl_s, max_bytes=store.max_bytes, timeout_s=store.timeout_s)


async def _start_sources(sources: Sequence[ToolSource], context: SourceContext, runtime: routes.Runtime) -> None:
    results = await asyncio.gather(*(source.start(context) for source in sources), return_exceptions=True)
    for source, result in zip(sources, results):
        if isinstance(result, Exception):
            log.error("tool source %s failed to start: %s", source.name, type(result).__name__)
    runtime.started = True
    log.info("ready: %d models, %d tools", len(runtime.settings.models), len(runtime.toolbox.all_tools()))


async def _probe_upstreams(transport: Transport, runtime: routes.Runtime) -> None:
    """Refresh /readyz's view of each upstream (in the background; never on the request path)."""
    upstreams = [u for u in runtime.settings.upstreams.values() if u.url]
    results = await asyncio.gather(*(probe(transport, u) for u in upstreams))
    for upstream, (reachable, detail) in zip(upstreams, results):
        seen = runtime.reachability.setdefault(upstream.name, Reachability())
        if seen.reachable is not False and not reachable:
            log.warning("upstream %s cannot be reached: %s", upstream.name, detail)
        seen.reachable, seen.detail, seen.checked = reachable, detail, time.time()


async def _cancel(task: asyncio.Future[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
