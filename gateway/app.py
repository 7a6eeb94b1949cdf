"""The ASGI application.

    app = create_app(load_config("config/toolgate.toml", os.environ))
    app = create_app(settings, transport=httpx.MockTransport(handler))   # in tests

The lifespan opens the process's one upstream transport (aiohttp, or the
injected httpx transport) and its one httpx client for tools, starts every
tool source concurrently, and closes all of it on shutdown, in reverse.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.routing import Route

from gateway import routes
from gateway.config import Settings
from gateway.middleware import GatewayMiddleware
from gateway.tools.base import SourceContext
from gateway.tools.toolbox import Toolbox
from gateway.transports import create_transport
from gateway.upstream import UpstreamClient

log = logging.getLogger("toolgate")


def create_app(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    tool_transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    loop = settings.loop
    toolbox = Toolbox(
        settings.sources,
        max_parallel=loop.max_parallel_tools,
        timeout_s=loop.tool_timeout_s,
        max_result_chars=loop.max_tool_result_chars,
        max_description_chars=loop.max_description_chars,
    )
    runtime = routes.Runtime(settings, toolbox)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        async with AsyncExitStack() as stack:
            upstream = create_transport(transport)
            stack.push_async_callback(upstream.aclose)
            tool_http = await stack.enter_async_context(
                httpx.AsyncClient(transport=tool_transport, timeout=httpx.Timeout(30.0), follow_redirects=False)
            )
            runtime.upstream = UpstreamClient(upstream)
            context = SourceContext(http=tool_http, environ=settings.environ)
            await asyncio.gather(*(source.start(context) for source in settings.sources))
            for source in reversed(settings.sources):
                stack.push_async_callback(source.stop)
            runtime.started = True
            log.info("ready: %d models, %d tools", len(settings.models), len(toolbox.all_tools()))
            yield
            runtime.started = False

    chat = routes.ChatCompletions(runtime)
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", routes.models(runtime), methods=["GET"]),
            Route("/models", routes.models(runtime), methods=["GET"]),
            Route("/healthz", routes.healthz, methods=["GET"]),
            Route("/readyz", routes.readyz(runtime), methods=["GET"]),
            Route("/metrics", routes.metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={404: routes.not_found_json, 405: routes.not_found_json},
    )
    app.state.runtime = runtime
    keys = tuple(k.value for k in settings.api_keys)
    direct = {"/v1/chat/completions": chat, "/chat/completions": chat}
    app.add_middleware(GatewayMiddleware, api_keys=keys, max_concurrency=settings.server.max_concurrency, direct=direct)
    return app
