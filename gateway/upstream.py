"""The only module that speaks HTTP to the LLM host.

    client = UpstreamClient(http)                       # one httpx.AsyncClient per process
    body = await client.complete(upstream, payload, request_id=rid)
    async with aclosing(client.stream(upstream, payload, request_id=rid)) as chunks:
        async for chunk in chunks: ...                  # parsed `chat.completion.chunk` dicts

Retries (connect errors, 429, 502/503/504) happen before a response is handed
back, so never after a byte of it reached the client. httpx errors are
translated to the gateway's error tree in one place, ``_translate``; upstream
keys and URLs never appear in what the client sees.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson

from gateway import metrics
from gateway.config import Upstream
from gateway.errors import GatewayError, InvalidRequest, RequestTooLarge, UpstreamError, UpstreamRateLimited, UpstreamStatus, UpstreamTimeout
from gateway.sse import SSEDecoder

RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER_S = 30.0
MAX_ERROR_BODY = 64 * 1024


def create_http_client(transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The process's client for LLM traffic; aiohttp underneath unless a transport is injected."""
    if transport is None:
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000))
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(300.0, connect=10.0), follow_redirects=False)


class _Target:
    """What every call to one upstream shares, built once."""

    __slots__ = ("upstream", "headers", "timeout", "query", "_urls")

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.headers = {"content-type": "application/json", **upstream.headers, **upstream.host.auth(upstream.api_key.value)}
        self.timeout = httpx.Timeout(upstream.read_timeout_s, connect=upstream.connect_timeout_s, pool=upstream.connect_timeout_s)
        self.query = f"?{urlencode(upstream.query)}" if upstream.query else ""
        self._urls: dict[str, str] = {}

    def url(self, model: str) -> str:
        url = self._urls.get(model)
        if url is None:
            url = self._urls[model] = self.upstream.host.chat_path(self.upstream.url, model) + self.query
        return url


class UpstreamClient:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self._targets: dict[str, _Target] = {}

    def _target(self, upstream: Upstream) -> _Target:
        target = self._targets.get(upstream.name)
        if target is None or target.upstream is not upstream:
            target = self._targets[upstream.name] = _Target(upstream)
        return target

    async def complete(self, upstream: Upstream, payload: dict[str, Any], *, request_id: str = "", client_auth: str = "") -> Any:
        response = await self._send(upstream, payload, request_id, client_auth)
        try:
            with _translate(upstream):
                raw = await response.aread()
        finally:
            await response.aclose()
        if "json" not in response.headers.get("content-type", "json"):
            raise UpstreamError(f"The upstream answered with {_kind(response)} instead of JSON.")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError("The upstream answered with malformed or truncated JSON.") from None

    async def stream(self, upstream: Upstream, payload: dict[str, Any], *, request_id: str = "", client_auth: str = "") -> AsyncIterator[Any]:
        response = await self._send(upstream, payload, request_id, client_auth)
        try:
            content_type = response.headers.get("content-type", "")
            if "json" in content_type:
                # A host that ignored `stream: true`: its whole answer is one chunk.
                with _translate(upstream):
                    raw = await response.aread()
                try:
                    yield orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raise UpstreamError("The upstream answered with malformed or truncated JSON.") from None
                return
            if "text/event-stream" not in content_type:
                raise UpstreamError(f"The upstream answered with {_kind(response)} instead of an event stream.")
            decoder = SSEDecoder()
            with _translate(upstream):
                async for chunk in response.aiter_bytes():
                    for data in decoder.feed(chunk):
                        if data == b"[DONE]":
                            return
                        yield _chunk(data)
                for data in decoder.close():
                    if data == b"[DONE]":
                        return
                    yield _chunk(data)
            raise UpstreamError("The upstream stream ended before [DONE]: the answer is truncated.")
        finally:
            await response.aclose()

    async def _send(self, upstream: Upstream, payload: dict[str, Any], request_id: str, client_auth: str) -> httpx.Response:
        target = self._target(upstream)
        headers = target.headers
        if request_id or (client_auth and upstream.forward_client_auth):
            headers = {**headers, "x-request-id": request_id}
            if client_auth and upstream.forward_client_auth:
                headers.update(upstream.host.auth(client_auth))
        request = self.http.build_request(
            "POST", target.url(payload.get("model", "")), content=orjson.dumps(payload), headers=headers, timeout=target.timeout
        )
        for attempt in range(upstream.retries + 1):
            last = attempt == upstream.retries
            started = time.perf_counter()
            try:
                with _translate(upstream):
                    response = await self.http.send(request, stream=True)
            except UpstreamError as exc:
                metrics.upstream_call(upstream.name, "error", time.perf_counter() - started)
                if last or exc.code == "upstream_timeout":  # a read timeout is not retried
                    raise
                await asyncio.sleep(_backoff(attempt))
                continue
            metrics.upstream_call(upstream.name, str(response.status_code), time.perf_counter() - started)
            if response.status_code < 300:
                return response
            wait = _retry_after(response) if response.status_code == 429 else _backoff(attempt)
            if last or response.status_code not in RETRY_STATUSES or wait is None:
                raise await _status_error(response, upstream)
            await response.aclose()
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # the last attempt returns or raises


def _chunk(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("The upstream stream carried malformed JSON.") from None


def _kind(response: httpx.Response) -> str:
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    return "an HTML page" if content_type == "text/html" else f"content of type {content_type or 'unknown'!r}"


def _backoff(attempt: int) -> float:
    return min(8.0, 0.25 * 2**attempt) * (0.5 + random.random())


def _retry_after(response: httpx.Response) -> float | None:
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


async def _status_error(response: httpx.Response, upstream: Upstream) -> GatewayError:
    try:
        with _translate(upstream):
            raw = b""
            async for part in response.aiter_bytes():
                raw += part
                if len(raw) > MAX_ERROR_BODY:
                    break
    except UpstreamError:
        raw = b""
    finally:
        await response.aclose()
    status = response.status_code
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


def _error_message(raw: bytes, response: httpx.Response) -> str:
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


@contextmanager
def _translate(upstream: Upstream):
    """httpx's exceptions as the gateway's; the one place they are mapped."""
    try:
        yield
    except httpx.ConnectTimeout:
        raise UpstreamTimeout(f"Could not connect to upstream {upstream.name!r} in time.", code="upstream_connect_timeout") from None
    except httpx.TimeoutException:
        raise UpstreamTimeout(f"Upstream {upstream.name!r} did not answer in time.") from None
    except httpx.TransportError:
        raise UpstreamError(f"Could not reach upstream {upstream.name!r}, or it broke the connection.") from None
