"""The only module that speaks to the LLM host: complete() and stream().

    client = UpstreamClient(create_transport())         # one per process
    body = await client.complete(upstream, payload, request_id=rid)
    async with aclosing(client.stream(upstream, payload, request_id=rid)) as batches:
        async for chunks in batches: ...                # parsed `chat.completion.chunk` dicts,
                                                        # a list per network read

Retries happen before a response is handed back, so never after a byte of it
reached the client, and only for what the host provably did not process: a
connect that failed or timed out, and 429/502/503/504 answers. They are
budgeted per upstream (Envoy's rule: retries at most `retry_budget_percent` of
the requests in flight, and at least `retry_budget_min`), so retries cannot
multiply an outage. Requests in flight per upstream are bounded by
`max_connections`; waiting past `pool_timeout_s` for a slot is a 503 with
Retry-After. The wire below is a `transports.Transport` (aiohttp; httpx in
tests), which raises only the gateway's errors; upstream keys and URLs never
appear in what the client sees.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson

from gateway import metrics
from gateway.config import Upstream
from gateway.errors import (
    GatewayError, InvalidRequest, RequestTooLarge, Unprocessable, UpstreamBusy, UpstreamError, UpstreamRateLimited,
    UpstreamStatus, UpstreamTimeout,
)  # fmt: skip
from gateway.redact import SECRETS
from gateway.sse import SSEDecoder
from gateway.transports import Reply, Transport

RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER_S = 30.0
MAX_ERROR_BODY = 64 * 1024


class _Target:
    """What every call to one upstream shares, built once: headers, URLs, slots, the retry budget."""

    __slots__ = ("upstream", "headers", "query", "_urls", "slots", "active", "retrying", "where")

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.headers = {"content-type": "application/json", **upstream.headers, **upstream.host.auth(upstream.api_key.value)}
        self.query = f"?{urlencode(upstream.query)}" if upstream.query else ""
        self._urls: dict[str, str] = {}
        self.slots = asyncio.Semaphore(upstream.max_connections)
        self.active = 0  # requests in flight to this upstream
        self.retrying = 0  # of which in a retry
        # host:port of the upstream, masked in error messages like a key.
        self.where = urlsplit(upstream.url).netloc if upstream.url else ""

    def may_retry(self) -> bool:
        u = self.upstream
        return self.retrying < max(u.retry_budget_min, u.retry_budget_percent / 100 * self.active)

    async def slot(self) -> None:
        if not self.slots.locked():
            await self.slots.acquire()  # a free slot: taken at once, no timer needed
            return
        try:
            async with asyncio.timeout(self.upstream.pool_timeout_s):
                await self.slots.acquire()
        except TimeoutError:
            metrics.upstream_call(self.upstream.name, "busy", 0.0)
            raise UpstreamBusy(
                f"All {self.upstream.max_connections} connections to upstream {self.upstream.name!r} are in use; retry shortly.",
                headers={"retry-after": "1"},
            ) from None

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
        target = self._target(upstream)
        await target.slot()
        try:
            reply = await self._send(target, payload, request_id, client_auth)
            try:
                raw = await reply.read()
            finally:
                await reply.close()
        finally:
            target.slots.release()
        if "json" not in reply.headers.get("content-type", "json"):
            raise UpstreamError(f"The upstream answered with {_kind(reply)} instead of JSON.")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError("The upstream answered with malformed or truncated JSON.") from None

    async def stream(self, upstream: Upstream, payload: dict[str, Any], *, request_id: str = "", client_auth: str = "") -> AsyncIterator[Any]:
        target = self._target(upstream)
        await target.slot()
        try:
            reply = await self._send(target, payload, request_id, client_auth)
            try:
                # Inline, not a nested generator: one hop per network read is the stream's cost.
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
                if not done:
                    raise UpstreamError("The upstream stream ended before [DONE]: the answer is truncated.")
            finally:
                await reply.close()
        finally:
            target.slots.release()

    async def forward(self, upstream: Upstream, endpoint: str, payload: dict[str, Any] | None, *, request_id: str = "", client_auth: str = "") -> tuple[Reply, bytes]:
        """One call that is not the loop's (gateway/passthrough.py): `payload` POSTed to
        `endpoint` (a URL on the host; a GET when `payload` is None), under the same slots,
        retries, budget and error mapping as chat; a 2xx reply and its whole body."""
        target = self._target(upstream)
        await target.slot()
        try:
            reply = await self._send(target, payload, request_id, client_auth, url=endpoint + target.query)
            try:
                raw = await reply.read()
            finally:
                await reply.close()
        finally:
            target.slots.release()
        return reply, raw

    async def _send(self, target: _Target, payload: dict[str, Any] | None, request_id: str, client_auth: str, *, url: str = "") -> Reply:
        upstream = target.upstream
        headers = target.headers
        if request_id or client_auth:
            headers = {**headers, "x-request-id": request_id}
            if client_auth:
                headers.update(upstream.host.auth(client_auth))
        url = url or target.url(payload.get("model", "") if payload else "")
        try:
            body = orjson.dumps(payload) if payload is not None else None
        except orjson.JSONEncodeError:
            raise InvalidRequest("The request nests JSON too deeply to forward (at most 255 levels).") from None
        target.active += 1
        retrying = False
        try:
            for attempt in range(upstream.retries + 1):
                last = attempt == upstream.retries
                started = time.perf_counter()
                try:
                    if body is None:
                        reply = await self.transport.get(url, headers, connect_s=upstream.connect_timeout_s, read_s=upstream.read_timeout_s, name=upstream.name)
                    else:
                        reply = await self.transport.post(
                            url, headers, body, connect_s=upstream.connect_timeout_s, read_s=upstream.read_timeout_s, name=upstream.name
                        )
                except UpstreamError as exc:
                    metrics.upstream_call(upstream.name, "error", time.perf_counter() - started)
                    if last or not exc.retryable or not (retrying or target.may_retry()):
                        raise
                    wait: float | None = _backoff(attempt)
                else:
                    metrics.upstream_call(upstream.name, str(reply.status), time.perf_counter() - started)
                    if reply.status < 300:
                        return reply
                    wait = _retry_after(reply) if reply.status == 429 else _backoff(attempt)
                    if last or reply.status not in RETRY_STATUSES or wait is None or not (retrying or target.may_retry()):
                        raise await _status_error(reply, target, client_auth)
                    await reply.close()
                if not retrying:
                    retrying = True
                    target.retrying += 1
                metrics.upstream_retry(upstream.name)
                await asyncio.sleep(wait)
            raise AssertionError("unreachable")  # the last attempt returns or raises
        finally:
            target.active -= 1
            if retrying:
                target.retrying -= 1


class Reachability:
    """What the last probe of an upstream found, for /readyz."""

    __slots__ = ("reachable", "detail", "checked")

    def __init__(self) -> None:
        self.reachable: bool | None = None  # None: not probed yet
        self.detail = "not probed yet"
        self.checked = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"reachable": self.reachable, "detail": self.detail, "checked": round(self.checked, 3)}


PROBE_TIMEOUT_S = 5.0


async def probe(transport: Transport, upstream: Upstream) -> tuple[bool, str]:
    """Can the host be reached? Any HTTP answer from its models path (even 401) says yes."""
    target = _Target(upstream)
    models = upstream.host.models_path
    url = models(upstream.url) + target.query if models else upstream.url
    try:
        status = await transport.status(url, target.headers, timeout_s=min(PROBE_TIMEOUT_S, upstream.connect_timeout_s + 2), name=upstream.name)
    except UpstreamError as exc:
        return False, exc.message
    return True, f"answered {status}"


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
# upstream says it was not (400/413/422, kept as they are); the gateway's own key
# or config was not (401/403/404 become 502).
_STATUS_MAP: dict[int, type[GatewayError]] = {
    400: InvalidRequest,
    413: RequestTooLarge,
    422: Unprocessable,
    429: UpstreamRateLimited,
    408: UpstreamTimeout,
    504: UpstreamTimeout,
}


async def _status_error(response: Reply, target: _Target, client_auth: str) -> GatewayError:
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
    message = SECRETS.scrub(message, client_auth, target.where)
    headers = {"retry-after": response.headers["retry-after"]} if "retry-after" in response.headers else {}
    error = cls(message, headers=headers)
    error.upstream_status = status  # what the host said, before mapping (a pass-through's 404)
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
