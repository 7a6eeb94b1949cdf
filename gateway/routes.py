"""Thin handlers: parse, resolve the alias, run the loop, hand its events to the writer."""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import logs, metrics
from gateway.config import ModelAlias, Settings
from gateway.errors import InvalidRequest, ModelNotFound, RequestTooLarge, error_json
from gateway.loop import LoopJob, run_loop
from gateway.tools.toolbox import Offer, Toolbox
from gateway.upstream import UpstreamClient
from gateway.wire import ChatRequest, lead_messages, parse_request, upstream_params
from gateway.writer import Rendering, write_json, write_sse

_NO_TOOLS = Offer()


class Runtime:
    """What the handlers share in one process: settings, the upstream client, the toolbox."""

    def __init__(self, settings: Settings, toolbox: Toolbox) -> None:
        self.settings = settings
        self.toolbox = toolbox
        self.upstream: UpstreamClient | None = None  # set in the lifespan
        self.started = False

    def alias(self, name: str) -> ModelAlias:
        alias = self.settings.models.get(name)
        if alias is not None:
            return alias
        if self.settings.server.passthrough_unknown_models:
            default = self.settings.server.default_upstream
            return ModelAlias(name=name, upstream=default, upstream_model=name, tools=("*",))
        raise ModelNotFound(f"The model {name!r} does not exist on this gateway.", param="model")


async def _read_body(scope: dict, receive: Any, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise RequestTooLarge(f"The request body is larger than {limit} bytes.")
    body = b""
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("The client went away before sending the request body.")
        body += message.get("body", b"")
        if len(body) > limit:
            raise RequestTooLarge(f"The request body is larger than {limit} bytes.")
        more = message.get("more_body", False)
    return body


def _header(scope: dict, wanted: bytes) -> str:
    for name, value in scope["headers"]:
        if name == wanted:
            return value.decode("latin-1")
    return ""


class ChatCompletions:
    """`POST /v1/chat/completions` as a raw ASGI app: the hot path skips Request objects."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        started = time.perf_counter()
        settings = self.rt.settings
        request_id = scope.get("request_id", "")
        try:
            body = await _read_body(scope, receive, settings.server.max_body_bytes)
            request = parse_request(body, max_messages=settings.server.max_messages)
            job, alias = self._job(request, scope, request_id)
        except Exception as exc:
            status, payload, headers = error_json(exc)
            raw = [(b"content-type", b"application/json"), *((k.encode(), v.encode()) for k, v in headers.items())]
            await send({"type": "http.response.start", "status": status, "headers": raw})
            await send({"type": "http.response.body", "body": payload})
            if settings.server.log_requests:
                logs.request_line({"request_id": request_id, "status": status, "error": str(exc)[:300]})
            return
        server = settings.server
        rendering = Rendering(
            alias=request.model,
            deadline_s=server.request_timeout_s,
            trace=server.trace or _header(scope, b"x-toolgate-trace") in ("1", "true"),
            include_usage=request.include_usage,
            progress=(_header(scope, b"x-toolgate-progress") or server.progress) == "reasoning",
            keepalive_s=server.keepalive_s,
        )
        job.trace = rendering.trace or server.log_requests  # the log line names each tool's outcome
        events = run_loop(job, self.rt.upstream, self.rt.toolbox)
        if request.stream:
            metrics.STREAMS.inc()
            try:
                outcome = await write_sse(send, receive, events, rendering)
            finally:
                metrics.STREAMS.dec()
        else:
            outcome = await write_json(send, receive, events, rendering)
        final = outcome.final
        seconds = time.perf_counter() - started
        metrics.request_done(alias, outcome.status, seconds, final.rounds if final else 0, final.usage if final else None)
        if server.log_requests:
            line = {
                "request_id": request_id,
                "model": request.model,
                "upstream": job.upstream.name,
                "stream": request.stream,
                "status": outcome.status,
                "duration_ms": round(seconds * 1000, 2),
                "rounds": final.rounds if final else None,
                "tool_calls": final.tool_calls if final else None,
                "usage": final.usage if final else None,
            }
            if final and final.trace:
                line["tools"] = [{k: t[k] for k in ("name", "outcome", "duration_ms")} for t in final.trace]
            if outcome.error is not None:
                line["error"] = str(outcome.error)[:300]
            if outcome.disconnected:
                line["disconnected"] = True
            if server.log_content:
                line["messages"] = job.messages
            logs.request_line(line)

    def _job(self, request: ChatRequest, scope: dict, request_id: str) -> tuple[LoopJob, str]:
        settings = self.rt.settings
        alias = self.rt.alias(request.model)
        upstream = settings.upstreams[alias.upstream]
        offer = _NO_TOOLS if request.tool_choice == "none" else self.rt.toolbox.select(alias.tools)
        if request.client_tools:
            clash = {t["function"]["name"] for t in request.client_tools} & offer.tools.keys()
            if clash:
                raise InvalidRequest(f"Client tool names clash with server tools: {', '.join(sorted(clash))}.", param="tools")
        offered = bool(offer.tools or request.client_tools)
        loop = settings.loop
        job = LoopJob(
            upstream=upstream,
            model=alias.upstream_model,
            messages=lead_messages(request.messages, alias.system_prompt, loop.tool_instruction if offered else ""),
            params=upstream_params(request, alias.defaults, alias.overrides, upstream.accepted_extras),
            offer=offer,
            client_tools=request.client_tools if request.tool_choice != "none" else None,
            stream=request.stream,
            max_rounds=alias.max_rounds if alias.max_rounds is not None else loop.max_rounds,
            on_max_rounds=alias.on_max_rounds or loop.on_max_rounds,
            repeat_limit=loop.repeat_limit,
            request_id=request_id,
            client_auth=_bearer(_header(scope, b"authorization")) if upstream.forward_client_auth else "",
        )
        known = alias.name if alias.name in settings.models else "(passthrough)"
        return job, known


def _bearer(value: str) -> str:
    return value[7:].strip() if value[:7].lower() == "bearer " else value.strip()


def models(runtime: Runtime):
    created = int(time.time())

    async def endpoint(request: Request) -> Response:
        data = [{"id": name, "object": "model", "created": created, "owned_by": "toolgate"} for name in runtime.settings.models]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    return endpoint


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def readyz(runtime: Runtime):
    async def endpoint(request: Request) -> Response:
        if not runtime.started:
            return JSONResponse({"status": "starting", "reason": "tool sources are starting"}, status_code=503)
        degraded = {
            source.name: status.detail
            for source in runtime.toolbox.sources
            if not (status := source.status()).ready
        }
        if degraded:
            # Still serving: a tool source that is down leaves its tools out, nothing more.
            return JSONResponse({"status": "degraded", "reason": "some tool sources are not ready", "sources": degraded})
        return JSONResponse({"status": "ready"})

    return endpoint


async def metrics_endpoint(request: Request) -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


def not_found_json(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    message = "Method not allowed." if status == 405 else f"No route for {request.url.path}."
    code = "method_not_allowed" if status == 405 else "not_found"
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}, status_code=status)
