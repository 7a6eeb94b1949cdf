"""The only module that speaks to the LLM host: complete() and stream().

    client = UpstreamClient(create_transport())         # one per process
    body = await client.complete(upstream, payload, request_id=rid)
    async with aclosing(client.stream(upstream, payload, request_id=rid)) as batches:
        async for chunks in batches: ...                # parsed `chat.completion.chunk` dicts,
                                                        # a list per network read

Retries (connect errors, 429, 502/503/504) happen before a response is handed
back, so never after a byte of it reached the client. The wire below is a
`transports.Transport` (aiohttp; httpx in tests), which raises only the
gateway's errors; upstream keys and URLs never appear in what the client sees.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import orjson

from gateway import metrics
from gateway.config import Upstream
from gateway.errors import GatewayError, InvalidRequest, RequestTooLarge, UpstreamError, UpstreamRateLimited, UpstreamStatus, UpstreamTimeout
from gateway.sse import SSEDecoder
from gateway.transports import Reply, Transport

RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER_S = 30.0
MAX_ERROR_BODY = 64 * 1024


class _Target:
    """What every call to one upstream shares, built once."""

    __slots__ = ("upstream", "headers", "query", "_urls")

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.headers = {"content-type": "application/json", **upstream.headers, **upstream.host.auth(upstream.api_key.value)}
        self.query = f"?{urlencode(upstream.query)}" if upstream.query else ""
        self._urls: dict[str, str] = {}

    def url(self, model: str) -> str:
        url = self._urls.get(model)
        if url is None:
            url = self._urls[model] = self.upstream.host.chat_path(self.upstream.url, model) + self.query
        return url


class UpstreamClient:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._targets: dict[str, _Target] = {}

    def _target(self, upstream: Upstream) -> _Target:
        target = self._targets.get(upstream.name)
        if target is None or target.upstream is not upstream:
            target = self._targets[upstream.name] = _Target(upstream)
        return target

    async def complete(self, upstream: Upstream, payload: dict[str, Any], *, request_id: str = "", client_auth: str = "") -> Any:
        reply = await self._send(upstream, payload, request_id, client_auth)
        try:
            raw = await reply.read()
        finally:
            await reply.close()
        if "json" not in reply.headers.get("content-type", "json"):
            raise UpstreamError(f"The upstream answered with {_kind(reply)} instead of JSON.")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError("The upstream answered with malformed or truncated JSON.") from None

    async def stream(self, upstream: Upstream, payload: dict[str, Any], *, request_id: str = "", client_auth: str = "") -> AsyncIterator[Any]:
        reply = await self._send(upstream, payload, request_id, client_auth)
        try:
            content_type = reply.headers.get("content-type", "")
            if "json" in content_type:
                # A host that ignored `stream: true`: its whole answer is one chunk.
                yield [_parse(await reply.read(), "The upstream answered with malformed or truncated JSON.")]
                return
            if "text/event-stream" not in content_type:
                raise UpstreamError(f"The upstream answered with {_kind(reply)} instead of an event stream.")
            decoder = SSEDecoder()
            async for piece in reply.chunks():
                batch, done = _batch(decoder.feed(piece))
                if batch:
                    yield batch
                if done:
                    return
            batch, done = _batch(decoder.close())
            if batch:
                yield batch
            if done:
                return
            raise UpstreamError("The upstream stream ended before [DONE]: the answer is truncated.")
        finally:
            await reply.close()

    async def _send(self, upstream: Upstream, payload: dict[str, Any], request_id: str, client_auth: str) -> Reply:
        target = self._target(upstream)
        headers = target.headers
        if request_id or client_auth:
            headers = {**headers, "x-request-id": request_id}
            if client_auth:
                headers.update(upstream.host.auth(client_auth))
        url = target.url(payload.get("model", ""))
        body = orjson.dumps(payload)
        for attempt in range(upstream.retries + 1):
            last = attempt == upstream.retries
            started = time.perf_counter()
            try:
                reply = await self.transport.post(
                    url, headers, body, connect_s=upstream.connect_timeout_s, read_s=upstream.read_timeout_s, name=upstream.name
                )
            except UpstreamError as exc:
                metrics.upstream_call(upstream.name, "error", time.perf_counter() - started)
                if last or exc.code == "upstream_timeout":  # a read timeout is not retried
                    raise
                await asyncio.sleep(_backoff(attempt))
                continue
            metrics.upstream_call(upstream.name, str(reply.status), time.perf_counter() - started)
            if reply.status < 300:
                return reply
            wait = _retry_after(reply) if reply.status == 429 else _backoff(attempt)
            if last or reply.status not in RETRY_STATUSES or wait is None:
                raise await _status_error(reply, upstream)
            await reply.close()
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # the last attempt returns or raises


def _batch(events: list[bytes]) -> tuple[list[Any], bool]:
    """The parsed chunks among SSE payloads, and whether [DONE] was among them."""
    batch = []
    for data in events:
        if data == b"[DONE]":
            return batch, True
        batch.append(_parse(data, "The upstream stream carried malformed JSON."))
    return batch, False


def _parse(data: bytes, complaint: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError(complaint) from None


def _kind(response: Reply) -> str:
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    return "an HTML page" if content_type == "text/html" else f"content of type {content_type or 'unknown'!r}"


def _backoff(attempt: int) -> float:
    return min(8.0, 0.25 * 2**attempt) * (0.5 + random.random())


def _retry_after(response: Reply) -> float | None:
    """Seconds to wait before retrying a 429; None when too long to wait here."""
    value = response.headers.get("retry-after")
    if value is None:
        return _backoff(0)
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= MAX_RETRY_AFTER_S else None


# The client's view of an upstream status: its request was fine unless the
# upstream says it was not (400/413/422); the gateway's own key or config was not (401/403/404).
_STATUS_MAP: dict[int, type[GatewayError]] = {
    400: InvalidRequest,
    413: RequestTooLarge,
    422: InvalidRequest,
    429: UpstreamRateLimited,
    408: UpstreamTimeout,
    504: UpstreamTimeout,
}


async def _status_error(response: Reply, upstream: Upstream) -> GatewayError:
    raw = b""
    try:
        async for part in response.chunks():
            raw += part
            if len(raw) > MAX_ERROR_BODY:
                break
    except UpstreamError:
        pass
    finally:
        await response.close()
    status = response.status
    detail = _error_message(raw, response)
    cls = _STATUS_MAP.get(status, UpstreamStatus)
    message = f"The upstream answered {status}: {detail}" if detail else f"The upstream answered {status}."
    message = _redact(message, upstream)
    headers = {"retry-after": response.headers["retry-after"]} if "retry-after" in response.headers else {}
    error = cls(message, headers=headers)
    if cls is UpstreamStatus:
        error.status = 502
        error.code = "upstream_auth_failed" if status in (401, 403) else "upstream_error"
    return error


def _error_message(raw: bytes, response: Reply) -> str:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message")))
        if isinstance(error, dict):
            error = error.get("message")
        if isinstance(error, str):
            return error[:500]
    if "html" in response.headers.get("content-type", ""):
        return "(an HTML error page)"
    return raw[:200].decode("utf-8", "replace").strip()


def _redact(text: str, upstream: Upstream) -> str:
    key = upstream.api_key.value
    return text.replace(key, "***") if key else text
