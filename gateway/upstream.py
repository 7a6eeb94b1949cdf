"""The only module that speaks to the LLM host: complete() and stream().

    client = UpstreamClient(create_transport())         # one per process
    body = await client.complete(upstream, payload, request_id=rid)     # the parsed JSON reply
    async with aclosing(client.stream(upstream, payload, fold=StreamAssembler(), request_id=rid)) as parts:
        async for part in parts: ...                    # what the fold makes of each network
                                                        # read (None is skipped), then its finish()

What a payload holds and what a reply means is a codec's (`gateway/codecs/`):
it builds the payload, and folds the streamed pieces; `framing` says how the
body is cut into JSON pieces (SSE by default; NDJSON for Ollama's native API).

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
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode, urlsplit

import orjson

from gateway import metrics, tracing
from gateway.backoff import Patience, backoff
from gateway.config import Upstream
from gateway.errors import (
    GatewayError, InvalidRequest, ReplyTooLarge, RequestTooLarge, Unprocessable, UpstreamBusy, UpstreamError, UpstreamRateLimited,
    UpstreamStatus, UpstreamTimeout,
)  # fmt: skip
from gateway.redact import SECRETS
from gateway.sse import SSEDecoder

if TYPE_CHECKING:
    from gateway.transports import Reply, Transport

RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER_S = 30.0
MAX_ERROR_BODY = 64 * 1024


class Decoder(Protocol):
    """A pure incremental framing decoder: bytes in, complete payloads out."""

    def feed(self, chunk: bytes) -> list[bytes]: ...

    def close(self) -> list[bytes]: ...


@dataclass(frozen=True, slots=True)
class Framing:
    """How a streamed body is cut into JSON payloads."""

    content_type: str  # a stream's content type holds this
    decoder: Callable[[], Decoder]
    done: bytes | None  # the payload that ends the stream; None: the body's end (the fold checks it)
    what: str  # for the error message: "... instead of an event stream"


SSE = Framing("text/event-stream", SSEDecoder, b"[DONE]", "an event stream")


class Fold(Protocol):
    """A codec's reader of one streamed reply."""

    def feed_many(self, pieces: list[Any]) -> Any:
        """The parsed payloads of one network read; what to hand on, or None."""

    def finish(self) -> Any:
        """The finished reply, once the stream ended."""


# Configs of one upstream whose targets are kept while their requests may still run (reloads
# in a row; the oldest beyond this is rebuilt if it is still used).
KEPT_CONFIGS = 4


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
            metrics.upstream_busy(self.upstream.name)
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
        # name -> the targets of its last configs, newest first. A reload that changes an
        # upstream gives the new config its own target while requests of the old one finish
        # on theirs: alternating between the two never rebuilds one, so neither's connection
        # bound nor retry budget is reset under requests that count on it.
        self._targets: dict[str, list[_Target]] = {}

    def _target(self, upstream: Upstream) -> _Target:
        targets = self._targets.get(upstream.name)
        if targets is not None:
            for target in targets:
                if target.upstream is upstream:
                    return target
        target = _Target(upstream)
        self._targets[upstream.name] = [target, *(targets or ())][:KEPT_CONFIGS]
        return target

    async def complete(self, upstream: Upstream, payload: dict[str, Any], *, request_id: str = "", client_auth: str = "") -> Any:
        span = tracing.Chat(upstream, payload) if tracing.ON else None
        try:
            body = await self._complete(self._target(upstream), payload, request_id, client_auth, span)
        except BaseException as exc:
            if span is not None:
                span.end(error=exc)
            raise
        if span is not None:
            span.end(body)
        return body

    async def _complete(self, target: _Target, payload: dict[str, Any], request_id: str, client_auth: str, span: Any) -> Any:
        reply, raw = await self._whole(target, payload, request_id, client_auth, span)
        if "json" not in reply.headers.get("content-type", "json"):
            raise UpstreamError(f"The upstream answered with {_kind(reply)} instead of JSON.")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError("The upstream answered with malformed or truncated JSON.") from None

    async def stream(
        self,
        upstream: Upstream,
        payload: dict[str, Any],
        *,
        fold: Fold,
        framing: Framing = SSE,
        request_id: str = "",
        client_auth: str = "",
        patience: Patience | None = None,
    ) -> AsyncGenerator[Any, None]:
        target = self._target(upstream)
        span = tracing.Chat(upstream, payload) if tracing.ON else None
        failure: BaseException | None = None
        try:
            await target.slot()
        except BaseException as exc:
            if span is not None:
                span.end(error=exc)
            raise
        try:
            reply = await self._send(target, payload, request_id, client_auth, span, patience=patience)
            del payload  # sent: nothing of the request stays with the open stream
            try:
                # Inline, not a nested generator: one hop per network read is the stream's cost.
                content_type = reply.headers.get("content-type", "")
                if framing.content_type not in content_type:
                    if "json" not in content_type:
                        raise UpstreamError(f"The upstream answered with {_kind(reply)} instead of {framing.what}.")
                    # A host that ignored `stream: true`: its whole answer is one piece.
                    whole = [_parse(await reply.read(upstream.max_reply_bytes), "The upstream answered with malformed or truncated JSON.")]
                    if span is not None:
                        span.chunks(whole)
                    part = fold.feed_many(whole)
                    if part is not None:
                        yield part
                else:
                    decoder, done, ended = framing.decoder(), framing.done, False
                    left = upstream.max_reply_bytes
                    async for piece in reply.chunks():
                        left -= len(piece)
                        if left < 0:
                            raise ReplyTooLarge(upstream.max_reply_bytes)
                        batch, ended = _batch(decoder.feed(piece), done)
                        del piece
                        if batch:
                            if span is not None:
                                span.chunks(batch)
                            part = fold.feed_many(batch)
                            del batch  # folded: not kept while the stream waits for the next read
                            if part is not None:
                                yield part
                                del part
                        if ended:
                            break
                    if not ended:
                        batch, ended = _batch(decoder.close(), done)
                        if batch and span is not None:
                            span.chunks(batch)
                        part = fold.feed_many(batch) if batch else None
                        if part is not None:
                            yield part
                        if done is not None and not ended:
                            raise UpstreamError("The upstream stream ended before [DONE]: the answer is truncated.")
            finally:
                await reply.close()
        except BaseException as exc:
            failure = exc
            raise
        finally:
            target.slots.release()
            if span is not None:
                span.end(error=failure)
        yield fold.finish()

    async def forward(self, upstream: Upstream, endpoint: str, payload: dict[str, Any] | None, *, request_id: str = "", client_auth: str = "") -> tuple[Reply, bytes]:
        """One call that is not the loop's (gateway/passthrough.py): `payload` POSTed to
        `endpoint` (a URL on the host; a GET when `payload` is None), under the same slots,
        retries, budget and error mapping as chat; a 2xx reply and its whole body."""
        target = self._target(upstream)
        return await self._whole(target, payload, request_id, client_auth, url=endpoint + target.query)

    async def _whole(
        self, target: _Target, payload: dict[str, Any] | None, request_id: str, client_auth: str, span: Any = None, *, url: str = ""
    ) -> tuple[Reply, bytes]:
        """One exchange under a slot: the reply and its whole body."""
        await target.slot()
        try:
            reply = await self._send(target, payload, request_id, client_auth, span, url=url)
            try:
                raw = await reply.read(target.upstream.max_reply_bytes)
            finally:
                await reply.close()
        finally:
            target.slots.release()
        return reply, raw

    async def _send(
        self,
        target: _Target,
        payload: dict[str, Any] | None,
        request_id: str,
        client_auth: str,
        span: Any = None,
        *,
        url: str = "",
        patience: Patience | None = None,
    ) -> Reply:
        upstream = target.upstream
        headers = target.headers
        if request_id or client_auth:
            headers = {**headers, "x-request-id": request_id}
            if client_auth:
                headers.update(upstream.host.auth(client_auth))
        if span is not None:
            headers = span.headers(headers)  # traceparent: the round's span
        url = url or target.url(payload.get("model", "") if payload else "")
        try:
            body = orjson.dumps(payload) if payload is not None else None
        except orjson.JSONEncodeError:
            raise InvalidRequest("The request nests JSON too deeply to forward (at most 255 levels).") from None
        target.active += 1
        retrying = False
        wait: float | None  # before the next attempt; None: the host's retry-after is too long
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
                    metrics.upstream_attempt(upstream.name, "error", time.perf_counter() - started)
                    wait = _backoff(attempt)
                    if last or not exc.retryable or _too_long(wait, patience) or not (retrying or target.may_retry()):
                        raise
                    reason = exc.code
                else:
                    metrics.upstream_attempt(upstream.name, str(reply.status), time.perf_counter() - started)
                    if reply.status < 300:
                        return reply
                    wait = _retry_after(reply) if reply.status == 429 else _backoff(attempt)
                    if last or reply.status not in RETRY_STATUSES or wait is None or _too_long(wait, patience) or not (retrying or target.may_retry()):
                        raise await _status_error(reply, target, client_auth)
                    await reply.close()
                    reason = str(reply.status)
                if not retrying:
                    retrying = True
                    target.retrying += 1
                metrics.upstream_retry(upstream.name, reason)
                if span is not None:
                    span.retry(attempt + 2, reason)
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


def _batch(events: list[bytes], done: bytes | None) -> tuple[list[Any], bool]:
    """The parsed payloads, up to the one that ends the stream, and whether it came."""
    batch: list[Any] = []
    try:
        for data in events:  # per streamed chunk: no helper call, one try for the whole read
            if data == done:
                return batch, True
            batch.append(orjson.loads(data))
    except orjson.JSONDecodeError:
        raise UpstreamError("The upstream stream carried malformed JSON.") from None
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
    return backoff(attempt, first_s=0.25, cap_s=8.0, jitter=0.5)


def _too_long(wait: float, patience: Patience | None) -> bool:
    """A wait that would end after the client must have heard something."""
    return patience is not None and asyncio.get_running_loop().time() + wait > patience.until


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
