"""Thin handlers: parse, resolve the alias, run the loop, hand its events to the writer."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import gateway
from gateway import drain, logs, metrics, tracing
from gateway.backoff import Patience
from gateway.chat_render import ChatJSON, ChatSSE, ChatView
from gateway.codecs import open_model
from gateway.config import ModelAlias, Settings, Upstream
from gateway.errors import BodyTimeout, ClientGone, InvalidRequest, ModelNotFound, Overloaded, RequestTooLarge, error_json
from gateway.events import Delta, Event, Opening
from gateway.loop import LoopJob, run_loop
from gateway.pump import Outcome, Renderer, Timing, client_left, pump
from gateway.redact import SECRETS
from gateway.tools.toolbox import Offer, Toolbox
from gateway.upstream import Reachability, UpstreamClient
from gateway.wire import ChatRequest, lead_messages, parse_request, upstream_params

_NO_TOOLS = Offer()
PROBE_EVERY_S = 30.0


@dataclass(eq=False)
class Generation:
    """One config as served: its settings and the toolbox over its sources. A reload
    (`gateway/reload.py`) makes the next one; a request keeps the one it began on."""

    settings: Settings
    toolbox: Toolbox
    number: int = 1
    users: int = 0  # requests pinned to it, from their first byte to their last
    retired: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set once retired and unused


class Runtime:
    """What the handlers share in one process: settings, the upstream client, the toolbox.

    `settings` and `toolbox` are the current generation's, or, inside a request wrapped in
    `Pinned`, the generation that request began on: a reload never changes them under it.
    """

    def __init__(self, settings: Settings, toolbox: Toolbox) -> None:
        self.current = Generation(settings, toolbox)
        self._pinned: ContextVar[Generation | None] = ContextVar(f"toolgate-generation-{id(self)}", default=None)
        self.last_reload: dict[str, Any] | None = None  # the outcome of the last reload, for /readyz
        self.upstream: UpstreamClient  # set in the lifespan, before any request
        self.started = False  # every tool source has started, or failed to
        self.starting: asyncio.Future[None] | None = None  # the lifespan's task that starts them
        self.demo = False  # the default upstream is the scripted demo model
        self.in_flight = 0
        self.reachability: dict[str, Reachability] = {}  # upstream name -> last probe
        self.probe: Callable[[], Awaitable[None]] | None = None  # set in the lifespan
        self._probing: asyncio.Future[None] | None = None
        self._probed = 0.0
        tracing.setup(settings.environ or os.environ, content=settings.server.log_content)
        metrics.build_info(gateway.__version__)
        metrics.watch_sources(lambda: [(s.name, s.status().ready) for s in toolbox.sources])

    @property
    def settings(self) -> Settings:
        return (self._pinned.get() or self.current).settings

    @property
    def toolbox(self) -> Toolbox:
        return (self._pinned.get() or self.current).toolbox

    def swap(self, settings: Settings, toolbox: Toolbox) -> Generation:
        """Serve `settings` from the next request on; returns the generation it retires."""
        old = self.current
        self.current = Generation(settings, toolbox, old.number + 1)
        old.retired = True
        if not old.users:
            old.idle.set()
        return old

    def loop_job(
        self,
        alias: ModelAlias,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        offer: Offer,
        *,
        scope: dict[str, Any],
        request_id: str,
        client_tools: list[dict[str, Any]] | None = None,
        **job: Any,
    ) -> LoopJob:
        """One request's loop job, with the alias's and the config's bounds (any ingress)."""
        upstream = self.settings.upstreams[alias.upstream]
        loop = self.settings.loop
        offered = bool(offer.tools or client_tools)
        return LoopJob(
            upstream=upstream,
            model=alias.upstream_model,
            messages=lead_messages(messages, alias.system_prompt, loop.tool_instruction if offered else ""),
            params=params,
            offer=offer,
            client_tools=client_tools,
            max_rounds=alias.max_rounds if alias.max_rounds is not None else loop.max_rounds,
            on_max_rounds=alias.on_max_rounds or loop.on_max_rounds,
            repeat_limit=loop.repeat_limit,
            max_tool_calls=loop.max_tool_calls,
            max_repeated_deltas=loop.max_repeated_deltas,
            max_output_tokens=alias.max_output_tokens if alias.max_output_tokens is not None else upstream.max_output_tokens,
            request_id=request_id,
            client_auth=forwarded_key(upstream, scope),
            **job,
        )

    async def serve(self, send: Any, receive: Any, scope: dict[str, Any], started: float, job: LoopJob, renderer: Any, *, model: str, **fields: Any) -> Outcome | None:
        """Run `job` through the pump with `renderer`, under the concurrency cap (None: refused,
        and logged as such). The cap counts requests being served, not clients still sending a body."""
        server = self.settings.server
        if self.in_flight >= server.max_concurrency:
            await reject(send, Overloaded("The gateway is at its concurrency limit; retry shortly.", headers={"retry-after": "1"}), scope, started, model=model, **fields)
            return None
        timing = Timing(deadline_s=server.request_timeout_s, keepalive_s=server.keepalive_s, secrets=(job.client_auth,) if job.client_auth else (), left=client_left(scope))
        if renderer.streaming:
            timing.patience = job.patience = Patience()
        self.in_flight += 1
        metrics.IN_FLIGHT.inc()
        if renderer.streaming:
            metrics.STREAMS.inc()
            renderer = _FirstToken(renderer, scope, started)
        span = tracing.Request(scope, started, model) if tracing.ON else None
        outcome = None
        try:
            outcome = await pump(send, receive, run_loop(job, open_model(self.upstream, job), self.toolbox), renderer, timing)
            return outcome
        finally:
            self.in_flight -= 1
            metrics.IN_FLIGHT.dec()
            if renderer.streaming:
                metrics.STREAMS.dec()
            if span is not None:
                span.end(outcome or Outcome(status=500, ended="error"), timing.secrets)

    def record(
        self, started: float, job: LoopJob, outcome: Outcome, alias: str, *, model: str, stream: bool, request_id: str, scope: dict[str, Any] | None = None, **extra: Any
    ) -> None:
        """Count the request, and write its one log line (`scope`: the client, the key, the first token)."""
        final = outcome.final
        seconds = time.perf_counter() - started
        metrics.request_done(alias, outcome.status, seconds, final.rounds if final else 0, outcome.usage, extra.get("api", "chat"))
        first = scope.get(FIRST_TOKEN) if scope is not None else None
        if first is not None:
            metrics.first_token(alias, first)
        server = self.settings.server
        if not server.log_requests:
            return
        line = {
            "request_id": request_id,
            **{k: v for k, v in extra.items() if k == "api"},
            "model": model,
            "upstream": job.upstream.name,
            "upstream_model": job.model,
            "stream": stream,
            "status": outcome.status,
            "ended": outcome.ended,
            "duration_ms": round(seconds * 1000, 2),
            "ttft_ms": round(first * 1000, 2) if first is not None else None,
            "rounds": final.rounds if final else None,
            "tool_calls": final.tool_calls if final else None,
            "usage": outcome.usage,
            **({"client": _client(scope), "key": scope.get("key_name")} if scope is not None else {}),
            **{k: v for k, v in extra.items() if k != "api"},
        }
        if final and final.trace:
            line["tools"] = [{k: t[k] for k in ("name", "outcome", "duration_ms")} for t in final.trace]
        if outcome.error is not None:
            line["error"] = SECRETS.scrub(str(outcome.error), job.client_auth)[:300]
        if server.log_content:
            line["messages"] = job.messages
        logs.request_line(line)

    def probe_soon(self) -> None:
        """Probe the upstreams in the background when the last probe is older than PROBE_EVERY_S:
        the readiness checker's own polling paces it, and nobody asking costs the host nothing."""
        now = time.monotonic()
        if self.probe is None or (self._probing is not None and not self._probing.done()):
            return
        if self._probed and now - self._probed < PROBE_EVERY_S:
            return
        self._probed = now
        self._probing = asyncio.ensure_future(self.probe())

    async def stop_probing(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
            await asyncio.gather(self._probing, return_exceptions=True)

    def alias(self, name: str) -> ModelAlias:
        alias = self.settings.models.get(name)
        if alias is not None:
            return alias
        if self.settings.server.passthrough_unknown_models:
            default = self.settings.server.default_upstream
            return ModelAlias(name=name, upstream=default, upstream_model=name, tools=("*",))
        raise ModelNotFound(f"The model {name!r} does not exist on this gateway.", param="model")


class Pinned:
    """A handler whose every request sees one config generation, the current one when it
    began, until its last byte; the generation counts it, so a reload knows when it is unused."""

    def __init__(self, runtime: Runtime, app: Any) -> None:
        self.runtime, self.app = runtime, app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        runtime = self.runtime
        generation = runtime.current
        generation.users += 1
        token = runtime._pinned.set(generation)
        try:
            await self.app(scope, receive, send)
        finally:
            runtime._pinned.reset(token)
            generation.users -= 1
            if generation.retired and not generation.users:
                generation.idle.set()


async def _read_body(scope: dict[str, Any], receive: Any, limit: int, timeout_s: float) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise RequestTooLarge(f"The request body is larger than {limit} bytes.")
    pieces: list[bytes] = []
    size = 0
    more = True
    try:
        async with asyncio.timeout(timeout_s):
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone("The client went away before sending the request body.")
                piece = message.get("body", b"")
                size += len(piece)
                if size > limit:
                    raise RequestTooLarge(f"The request body is larger than {limit} bytes.")
                pieces.append(piece)
                more = message.get("more_body", False)
    except TimeoutError:
        raise BodyTimeout(f"The request body did not arrive within {timeout_s:g} s.") from None
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _header(scope: dict[str, Any], wanted: bytes) -> str:
    value: bytes
    for name, value in scope["headers"]:
        if name == wanted:
            return value.decode("latin-1")
    return ""


async def reject(send: Any, exc: BaseException, scope: dict[str, Any], started: float, **fields: Any) -> int:
    """Answer with the error, and log and count it like any other request."""
    status, payload, headers = error_json(exc)
    if not isinstance(exc, ClientGone):
        raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        if isinstance(exc, (BodyTimeout, RequestTooLarge)):
            # The rest of the body is still coming (or never will): the connection ends with
            # this answer, rather than take whatever follows as that body.
            raw.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})
    metrics.rejected(status, fields.get("model", ""), fields.get("api") or metrics.api_of(scope.get("path", "")))
    if tracing.ON:
        tracing.rejected(scope, started, status, exc, fields.get("model", ""))
    logs.request_line(
        {
            "request_id": scope.get("request_id", ""),
            "path": scope.get("path", ""),
            "client": _client(scope),
            "key": scope.get("key_name"),
            **fields,
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "error": SECRETS(str(exc))[:300],
        }
    )
    return status


class ChatCompletions:
    """`POST /v1/chat/completions` as a raw ASGI app: the hot path skips Request objects."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        rt = self.rt
        server = rt.settings.server
        request_id = scope.get("request_id", "")
        try:
            body = await _read_body(scope, receive, server.max_body_bytes, server.body_timeout_s)
            request = parse_request(body, max_messages=server.max_messages)
            job, alias = self._job(request, scope, request_id)
        except Exception as exc:
            await reject(send, exc, scope, started)
            return
        model, stream = request.model, request.stream
        view = ChatView(
            alias=model,
            trace=server.trace or _header(scope, b"x-toolgate-trace") in ("1", "true"),
            include_usage=request.include_usage,
            progress=(_header(scope, b"x-toolgate-progress") or server.progress) == "reasoning",
        )
        # The job has what the loop needs: the body and its parse are not kept for the whole stream.
        del body, request
        job.trace = view.trace or server.log_requests  # the log line names each tool's outcome
        renderer = ChatSSE(view) if stream else ChatJSON(view)
        outcome = await rt.serve(send, receive, scope, started, job, renderer, model=model)
        if outcome is not None:
            rt.record(started, job, outcome, alias, model=model, stream=stream, request_id=request_id, scope=scope)

    def _job(self, request: ChatRequest, scope: dict[str, Any], request_id: str) -> tuple[LoopJob, str]:
        rt = self.rt
        alias = rt.alias(request.model)
        upstream = rt.settings.upstreams[alias.upstream]
        offer = _NO_TOOLS if request.tool_choice == "none" else rt.toolbox.select(alias.tools)
        if request.client_tools:
            clash = {t["function"]["name"] for t in request.client_tools} & offer.tools.keys()
            if clash:
                raise InvalidRequest(f"Client tool names clash with server tools: {', '.join(sorted(clash))}.", param="tools")
        job = rt.loop_job(
            alias,
            request.messages,
            upstream_params(request, alias.defaults, alias.overrides, upstream.accepted_extras),
            offer,
            scope=scope,
            request_id=request_id,
            stream=request.stream,
            client_tools=request.client_tools if request.tool_choice != "none" else None,
            # "required" or a named function: the first round's; later rounds are the loop's.
            first_tool_choice=request.tool_choice if request.tool_choice not in (None, "none", "auto") else None,
        )
        known = alias.name if alias.name in rt.settings.models else "(passthrough)"
        return job, known


FIRST_TOKEN = "toolgate.first_token_s"  # scope key: seconds from arrival to the first token sent


class _FirstToken:
    """A streamed renderer, seen by the pump: notes in `scope` when the first token goes out,
    then hands every later event straight to the renderer's own `feed`."""

    __slots__ = ("streaming", "keepalive", "headers", "failure", "feed", "_feed", "_scope", "_started")

    def __init__(self, renderer: Renderer, scope: dict[str, Any], started: float) -> None:
        self.streaming, self.keepalive = renderer.streaming, renderer.keepalive
        self.headers, self.failure = renderer.headers, renderer.failure
        self._feed, self._scope, self._started = renderer.feed, scope, started
        self.feed = self._first

    def _first(self, event: Event | Opening) -> bytes:
        if type(event) is Delta:
            self._scope[FIRST_TOKEN] = time.perf_counter() - self._started
            self.feed = self._feed
        return self._feed(event)


def _client(scope: dict[str, Any]) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def forwarded_key(upstream: Upstream, scope: dict[str, Any]) -> str:
    """The client's own key, for an upstream that forwards it (`forward_client_auth`); else ""."""
    return _bearer(_header(scope, b"authorization")) if upstream.forward_client_auth else ""


def _bearer(value: str) -> str:
    return value[7:].strip() if value[:7].lower() == "bearer " else value.strip()


def models(runtime: Runtime) -> Callable[[Request], Awaitable[Response]]:
    created = int(time.time())

    async def endpoint(request: Request) -> Response:
        data = [{"id": name, "object": "model", "created": created, "owned_by": "toolgate"} for name in runtime.settings.models]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    return endpoint


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def readyz(runtime: Runtime) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        if drain.draining():
            return JSONResponse({"status": "draining", "reason": "the gateway is shutting down"}, status_code=503)
        if not runtime.started:
            return JSONResponse({"status": "starting", "reason": "tool sources are starting"}, status_code=503)
        runtime.probe_soon()
        metrics.refresh_sources()
        body: dict[str, Any] = {"status": "ready"}
        degraded = {
            source.name: status.detail
            for source in runtime.toolbox.sources
            if not (status := source.status()).ready
        }
        if degraded:
            # Still serving: a tool source that is down leaves its tools out, nothing more.
            body = {"status": "degraded", "reason": "some tool sources are not ready", "sources": degraded}
        upstreams = {name: seen.as_dict() for name, seen in runtime.reachability.items()}
        if upstreams:
            body["upstreams"] = upstreams
            if any(seen["reachable"] is False for seen in upstreams.values()):
                # Reported, and still 200: every replica shares the upstream, so failing
                # readiness would take them all out of the load balancer at once.
                body["status"] = "degraded"
                body.setdefault("reason", "an upstream cannot be reached")
        if runtime.demo:
            # Ready, and never to be mistaken for a real upstream.
            body["demo"] = True
            body["reason"] = "the default upstream is the scripted demo model (no upstream URL is set)"
        body["config"] = {"generation": runtime.current.number, **({"last_reload": runtime.last_reload} if runtime.last_reload else {})}
        return JSONResponse(body)

    return endpoint


async def metrics_endpoint(request: Request) -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


def not_found_json(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    message = "Method not allowed." if status == 405 else f"No route for {request.url.path}."
    code = "method_not_allowed" if status == 405 else "not_found"
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}, status_code=status)
