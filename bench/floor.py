"""The floor: the least a Python pass-through proxy on toolgate's stack can cost.

    python -m bench.floor --port 8181 --upstream http://127.0.0.1:9100/v1            # httpx + aiohttp transport
    python -m bench.floor --port 8181 --upstream ... --client aiohttp                # aiohttp directly (reference)
    python -m bench.floor --port 8181 --upstream ... --workers 2

Starlette under uvicorn (uvloop, httptools, no access log: what ``toolgate serve`` runs),
and the upstream client toolgate's ``gateway/upstream.py`` uses: one ``httpx.AsyncClient``
over ``httpx_aiohttp.AiohttpTransport`` per process. ``POST /v1/chat/completions`` sends
the body upstream as it came and the answer back as it comes (an event stream chunk by
chunk): no loop, no validation, no re-encoding. Every toolgate figure is a ratio to this.
"""

from __future__ import annotations

import argparse
import os
from contextlib import asynccontextmanager

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

_JSON = {"content-type": "application/json"}


def create_app(upstream: str, client: str = "httpx") -> Starlette:
    url = upstream.rstrip("/") + "/chat/completions"
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app: Starlette):
        if client == "aiohttp":
            import aiohttp

            connector = aiohttp.TCPConnector(limit=1000)
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
                state["session"] = session
                yield
        else:
            from httpx_aiohttp import AiohttpTransport

            transport = AiohttpTransport(limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000))
            async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(300.0, connect=10.0)) as http:
                state["http"] = http
                yield

    async def chat_httpx(request: Request) -> Response:
        http: httpx.AsyncClient = state["http"]
        body = await request.body()
        upstream_response = await http.send(http.build_request("POST", url, content=body, headers=_JSON), stream=True)
        content_type = upstream_response.headers.get("content-type", "application/json")
        if content_type.startswith("text/event-stream"):

            async def relay():
                try:
                    async for chunk in upstream_response.aiter_raw():
                        yield chunk
                finally:
                    await upstream_response.aclose()

            return StreamingResponse(relay(), upstream_response.status_code, media_type=content_type)
        data = await upstream_response.aread()
        await upstream_response.aclose()
        return Response(data, upstream_response.status_code, media_type=content_type)

    async def chat_aiohttp(request: Request) -> Response:
        session = state["session"]
        body = await request.body()
        upstream_response = await session.post(url, data=body, headers=_JSON)
        content_type = upstream_response.headers.get("content-type", "application/json")
        if content_type.startswith("text/event-stream"):

            async def relay():
                try:
                    async for chunk in upstream_response.content.iter_any():
                        yield chunk
                finally:
                    upstream_response.release()

            return StreamingResponse(relay(), upstream_response.status, media_type=content_type)
        data = await upstream_response.read()
        upstream_response.release()
        return Response(data, upstream_response.status, media_type=content_type)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    chat = chat_aiohttp if client == "aiohttp" else chat_httpx
    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def app_from_env() -> Starlette:
    """For ``--workers``: uvicorn imports this in every worker."""
    return create_app(os.environ["BENCH_FLOOR_UPSTREAM"], os.environ.get("BENCH_FLOOR_CLIENT", "httpx"))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9100/v1")
    parser.add_argument("--client", choices=("httpx", "aiohttp"), default="httpx")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    options = dict(host="127.0.0.1", port=args.port, log_config=None, access_log=False, server_header=False,
                   timeout_graceful_shutdown=2)  # fmt: skip
    if args.workers > 1:
        os.environ["BENCH_FLOOR_UPSTREAM"] = args.upstream
        os.environ["BENCH_FLOOR_CLIENT"] = args.client
        uvicorn.run("bench.floor:app_from_env", factory=True, workers=args.workers, **options)
    else:
        uvicorn.run(create_app(args.upstream, args.client), **options)


if __name__ == "__main__":
    main()
