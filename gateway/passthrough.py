"""Pass-through for what is not the loop: embeddings, moderations, one model's info.

    POST /v1/embeddings    {"model": ALIAS, ...}  -> the alias's upstream, as `upstream_model`
    POST /v1/moderations   the same
    GET  /v1/models/{id}   an alias: the object `GET /v1/models` lists for it; an unknown id
                           with `passthrough_unknown_models`: what the default upstream says

No tools and no loop, and otherwise what chat has: the middleware's auth, the body cap and
body timeout, the concurrency cap, the request deadline (the pump's: a client that leaves
cancels the upstream call), the upstream's slots, retries and error mapping, one log line
and the request metrics (labelled `api`). The upstream's answer is sent as it came, with
`model` renamed to the alias the client asked for, as chat does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import orjson
from starlette.routing import Route

from gateway import logs, metrics
from gateway.errors import InvalidRequest, ModelNotFound, Overloaded, UpstreamError
from gateway.events import Event, Final, Opening, RoundUsage
from gateway.pump import Timing, client_left, pump
from gateway.redact import SECRETS
from gateway.routes import Pinned, Runtime, _read_body, forwarded_key, reject
from gateway.transports import Reply

# The POST endpoints forwarded as they are: each one is the host's path segment and the `api` label.
FORWARDED = ("embeddings", "moderations")

Call = Callable[[], Awaitable[tuple[Reply, bytes]]]


def routes(runtime: Runtime) -> list[Route]:
    """The pass-through routes, under /v1 and bare (as the chat route is); each request keeps
    the config it began on (``Pinned``), as the loop's routes do."""
    out: list[Route] = []
    forwards = {api: Pinned(runtime, Forward(runtime, api)) for api in FORWARDED}
    info = Pinned(runtime, ModelInfo(runtime))
    for prefix in ("/v1", ""):
        out += [Route(f"{prefix}/{api}", forwards[api], methods=["POST"]) for api in FORWARDED]
        out.append(Route(f"{prefix}/models/{{model_id:path}}", info, methods=["GET"]))
    return out


class _Body:
    """The pump's renderer for one JSON body: the upstream's answer, already decided."""

    streaming = False
    keepalive = b""

    def __init__(self) -> None:
        self._length = 0

    def feed(self, event: Event | Opening) -> bytes:
        if not isinstance(event, Final):
            return b""
        payload = orjson.dumps(event.message)
        self._length = len(payload)
        return payload

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", b"application/json"), (b"content-length", b"%d" % self._length)]

    def failure(self, error: bytes) -> bytes:
        return error


async def _answer(call: Call, alias: str, not_found: str | None) -> AsyncGenerator[Event, None]:
    """The upstream call as loop events: its usage, then its body as the `Final` message."""
    try:
        reply, raw = await call()
    except UpstreamError as exc:
        if not_found is not None and exc.upstream_status == 404:
            raise ModelNotFound(not_found, param="model") from None
        raise
    content_type = reply.headers.get("content-type", "json")
    if "json" not in content_type:
        raise UpstreamError(f"The upstream answered with content of type {content_type.split(';')[0]!r} instead of JSON.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError("The upstream answered with malformed or truncated JSON.") from None
    if not isinstance(body, dict):
        raise UpstreamError("The upstream answered with JSON that is not an object.")
    if "model" in body:
        body["model"] = alias
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
    yield RoundUsage(1, usage)
    yield Final(message=body, finish_reason="", usage=usage, rounds=0, tool_calls=0)


async def _local(body: dict[str, Any]) -> AsyncGenerator[Event, None]:
    """An answer the gateway makes itself (an alias's model object), as loop events."""
    yield Final(message=body, finish_reason="", usage=None, rounds=0, tool_calls=0)


async def _serve(rt: Runtime, scope: dict[str, Any], receive: Any, send: Any, started: float, events: AsyncGenerator[Event, None], *, api: str, alias: str, upstream: str, client_auth: str = "") -> None:
    """Serve `events` under the concurrency cap and the pump, then count and log the request;
    a forwarded client key (`client_auth`) is masked like every known secret."""
    server = rt.settings.server
    if rt.in_flight >= server.max_concurrency:
        await reject(send, Overloaded("The gateway is at its concurrency limit; retry shortly.", headers={"retry-after": "1"}), scope, started, model=alias, api=api)
        return
    rt.in_flight += 1
    metrics.IN_FLIGHT.inc()
    try:
        outcome = await pump(send, receive, events, _Body(), Timing(deadline_s=server.request_timeout_s, secrets=(client_auth,) if client_auth else (), left=client_left(scope)))
    finally:
        rt.in_flight -= 1
        metrics.IN_FLIGHT.dec()
    seconds = time.perf_counter() - started
    metrics.request_done(alias, outcome.status, seconds, None, outcome.usage, api)
    if not server.log_requests:
        return
    line: dict[str, Any] = {
        "request_id": scope.get("request_id", ""),
        "api": api,
        "model": alias,
        "upstream": upstream,
        "status": outcome.status,
        "ended": outcome.ended,
        "duration_ms": round(seconds * 1000, 2),
        "usage": outcome.usage,
    }
    if outcome.error is not None:
        line["error"] = SECRETS.scrub(str(outcome.error), client_auth)[:300]
    logs.request_line(line)


class Forward:
    """`POST /v1/{api}`: the body's `model` resolved as an alias, the rest sent as it is."""

    def __init__(self, runtime: Runtime, api: str) -> None:
        self.rt = runtime
        self.api = api

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        rt, api = self.rt, self.api
        server = rt.settings.server
        try:
            body = await _read_body(scope, receive, server.max_body_bytes, server.body_timeout_s)
            payload = _payload(body)
            alias = rt.alias(payload["model"])
        except Exception as exc:
            await reject(send, exc, scope, started, api=api)
            return
        upstream = rt.settings.upstreams[alias.upstream]
        endpoint = upstream.host.endpoint
        if endpoint is None or not upstream.url:
            await reject(send, InvalidRequest(f"The upstream of model {alias.name!r} does not serve /{api}.", param="model"), scope, started, model=alias.name, api=api)
            return
        url = endpoint(upstream.url, alias.upstream_model, api)
        payload["model"] = alias.upstream_model
        client_auth = forwarded_key(upstream, scope)
        request_id = scope.get("request_id", "")

        def call() -> Awaitable[tuple[Reply, bytes]]:
            return rt.upstream.forward(upstream, url, payload, request_id=request_id, client_auth=client_auth)

        await _serve(rt, scope, receive, send, started, _answer(call, alias.name, None), api=api, alias=alias.name, upstream=upstream.name, client_auth=client_auth)


def _payload(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if not isinstance(payload.get("model"), str) or not payload["model"]:
        raise InvalidRequest("`model` is required: the name of one of this gateway's models.", param="model")
    return payload


class ModelInfo:
    """`GET /v1/models/{id}`."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.created = int(time.time())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        rt = self.rt
        name = scope["path_params"]["model_id"]
        settings = rt.settings
        if name in settings.models:
            # The object the list shows: the list is the gateway's, and so is each entry of it.
            body = {"id": name, "object": "model", "created": self.created, "owned_by": "toolgate"}
            await _serve(rt, scope, receive, send, started, _local(body), api="models", alias=name, upstream="")
            return
        missing = f"The model {name!r} does not exist on this gateway."
        try:
            alias = rt.alias(name)  # raises ModelNotFound unless passthrough_unknown_models
        except ModelNotFound as exc:
            await reject(send, exc, scope, started, model="", api="models")
            return
        upstream = settings.upstreams[alias.upstream]
        models_path = upstream.host.models_path
        if models_path is None or not upstream.url:
            await reject(send, ModelNotFound(missing, param="model"), scope, started, model="", api="models")
            return
        url = f"{models_path(upstream.url)}/{quote(name, safe='')}"
        client_auth = forwarded_key(upstream, scope)
        request_id = scope.get("request_id", "")

        def forwarded() -> Awaitable[tuple[Reply, bytes]]:
            return rt.upstream.forward(upstream, url, None, request_id=request_id, client_auth=client_auth)

        await _serve(rt, scope, receive, send, started, _answer(forwarded, name, missing), api="models", alias=name, upstream=upstream.name, client_auth=client_auth)
