"""Loop events to the client: one `chat.completion` body, or SSE chunks.

Both renderings run the loop in a task and watch the client: when it goes
away, the loop task is cancelled, and with it the upstream request and the
running tools. For SSE, the loop feeds a bounded queue; waiting on the queue
(never on the loop generator) is what times out to send `: keepalive`. The 200
and SSE headers go out only with the first event, or the first keepalive, so an
early upstream error keeps its own status.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from gateway import sse
from gateway.errors import UpstreamTimeout, error_json
from gateway.events import Delta, Event, Final, ToolFinished, ToolStarted

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

_END = object()
T = TypeVar("T")


@dataclass(slots=True)
class Outcome:
    """What happened, for the request log and metrics."""

    status: int = 200
    final: Final | None = None
    error: BaseException | None = None
    disconnected: bool = False


@dataclass(slots=True)
class Rendering:
    alias: str
    deadline_s: float
    trace: bool = False
    include_usage: bool = False
    progress: bool = False
    keepalive_s: float = 15.0
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()


def _completion_id() -> str:
    return f"chatcmpl-{random.getrandbits(96):024x}"


def loop_facts(final: Final) -> dict[str, Any]:
    return {"rounds": final.rounds, "tool_calls": final.tool_calls, "tools": final.trace}


async def _watch(receive: Receive) -> None:
    """Returns when the client disconnects."""
    while (await receive())["type"] != "http.disconnect":
        pass


class _Deadline:
    """`asyncio.timeout` whose expiry is the gateway's 504 (a class: cheaper than @asynccontextmanager)."""

    __slots__ = ("seconds", "_timeout")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def __aenter__(self) -> None:
        self._timeout = asyncio.timeout(self.seconds)
        await self._timeout.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self._timeout.__aexit__(*exc_info)
        except TimeoutError:
            raise UpstreamTimeout(f"The request did not finish within its {self.seconds:g} s deadline.", code="request_timeout") from None


# A request this quick never needs the disconnect watcher: its task is created only after this.
WATCH_AFTER_S = 0.05


async def _unless_client_leaves(work: Awaitable[T], receive: Receive) -> tuple[bool, T | None]:
    """Await `work` in this task, cancelling it if the client disconnects first.

    Returns (True, None) when the client left; `work`'s exceptions propagate.
    """
    this = asyncio.current_task()
    left = False
    watcher: asyncio.Task | None = None

    async def watch() -> None:
        nonlocal left
        await _watch(receive)
        left = True
        this.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(watch())

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, start_watching)
    try:
        return False, await work
    except asyncio.CancelledError:
        if left and this.uncancel() == 0:
            return True, None
        raise
    finally:
        # Without an await since `work` ended, the watcher cannot have cancelled us late.
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


async def _error_response(send: Send, exc: BaseException, extra: tuple) -> int:
    status, body, headers = error_json(exc)
    raw = [(b"content-type", b"application/json"), *extra, *((k.encode(), v.encode()) for k, v in headers.items())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
    return status


# -- one JSON body -----------------------------------------------------------------


async def write_json(send: Send, receive: Receive, events: AsyncIterator[Event], r: Rendering) -> Outcome:
    async def collect() -> Final:
        async with _Deadline(r.deadline_s), aclosing(events) as stream:
            async for event in stream:
                if isinstance(event, Final):
                    return event
        raise AssertionError("the loop ended without a final answer")

    try:
        left, final = await _unless_client_leaves(collect(), receive)
    except Exception as exc:
        return Outcome(await _error_response(send, exc, r.extra_headers), error=exc)
    if left:
        return Outcome(499, disconnected=True)
    body: dict[str, Any] = {
        "id": _completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": r.alias,
        "choices": [{"index": 0, "message": final.message, "finish_reason": final.finish_reason, "logprobs": None}],
        "usage": final.usage,
    }
    if r.trace:
        body["toolgate"] = loop_facts(final)
    payload = orjson.dumps(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(payload)),
        (b"x-toolgate-rounds", b"%d" % final.rounds),
        (b"x-toolgate-tool-calls", b"%d" % final.tool_calls),
        *r.extra_headers,
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
    return Outcome(200, final=final)


# -- server-sent events ------------------------------------------------------------


_OPEN_TAIL = b',"logprobs":null,"finish_reason":null}]}\n\n'


class _Chunks:
    """Encodes `chat.completion.chunk` lines from a template made once per response."""

    def __init__(self, alias: str) -> None:
        head = orjson.dumps({"id": _completion_id(), "object": "chat.completion.chunk", "created": int(time.time()), "model": alias})
        self._head = b"data: " + head[:-1] + b',"choices":[{"index":0,"delta":'
        self._usage_head = b"data: " + head[:-1] + b',"choices":[],"usage":'

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        if finish_reason is None:
            return self._head + orjson.dumps(delta) + _OPEN_TAIL
        return self._head + orjson.dumps(delta) + b',"logprobs":null,"finish_reason":' + orjson.dumps(finish_reason) + b"}]}\n\n"

    def text(self, event: Delta) -> bytes:
        if event.reasoning is None:
            return self._head + b'{"content":' + orjson.dumps(event.content) + b"}" + _OPEN_TAIL
        return self.delta({k: v for k, v in (("content", event.content), ("reasoning_content", event.reasoning)) if v})

    def usage(self, usage: dict[str, Any] | None, extra: dict[str, Any] | None = None) -> bytes:
        tail = b"" if extra is None else b',"toolgate":' + orjson.dumps(extra)
        return self._usage_head + orjson.dumps(usage) + tail + b"}\n\n"


def _progress_text(event: ToolStarted | ToolFinished) -> str:
    if isinstance(event, ToolStarted):
        args = event.arguments if len(event.arguments) <= 120 else event.arguments[:117] + "..."
        return f"Calling {event.name}({args})\n"
    return f"{event.name}: {event.outcome} in {event.duration_s * 1000:.0f} ms\n"


async def write_sse(send: Send, receive: Receive, events: AsyncIterator[Event], r: Rendering) -> Outcome:
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)

    async def produce() -> None:
        try:
            async with _Deadline(r.deadline_s), aclosing(events) as stream:
                first = True
                async for event in stream:
                    await queue.put(event)
                    if first:
                        # Let the writer send the first bytes now, not when reading next blocks.
                        first = False
                        await asyncio.sleep(0)
            await queue.put(_END)
        except Exception as exc:
            await queue.put(exc)

    outcome = Outcome()
    left, _ = await _unless_client_leaves(_consume(send, queue, produce(), r, outcome), receive)
    if left:
        outcome.disconnected = True
        outcome.status = 499
    return outcome


async def _consume(send: Send, queue: asyncio.Queue, producer: Awaitable[None], r: Rendering, outcome: Outcome) -> None:
    chunks = _Chunks(r.alias)
    started = False

    async def start() -> bytes:
        """Send the headers; return the first chunk (the role), to go out with what follows."""
        nonlocal started
        started = True
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *r.extra_headers,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        return chunks.delta({"role": "assistant", "content": ""})

    task = asyncio.ensure_future(producer)
    try:
        while True:  # ends at _END or an error; the loop behind the queue is bounded
            try:
                async with asyncio.timeout(r.keepalive_s):
                    item = await queue.get()
            except TimeoutError:
                head = b"" if started else await start()
                await send({"type": "http.response.body", "body": head + sse.KEEPALIVE, "more_body": True})
                continue
            batch = [item]
            while not queue.empty() and not isinstance(batch[-1], BaseException) and batch[-1] is not _END:
                batch.append(queue.get_nowait())
            last = batch[-1]
            out = bytearray()
            for event in batch:
                if isinstance(event, Delta):
                    out += chunks.text(event)
                elif isinstance(event, (ToolStarted, ToolFinished)):
                    if r.progress:
                        out += chunks.delta({"reasoning_content": _progress_text(event)})
                elif isinstance(event, Final):
                    outcome.final = event
                    out += _closing(chunks, event, r)
                elif isinstance(event, BaseException):
                    outcome.error = event
                    if not started and not out:
                        # Nothing shown yet: the error keeps its own status.
                        outcome.status = await _error_response(send, event, r.extra_headers)
                        return
                    outcome.status = error_json(event)[0]
                    out += sse.data(error_json(event)[1]) + sse.DONE
            more = not (isinstance(last, BaseException) or last is _END)
            if not started:
                if not out and more:
                    continue  # only unshown tool events: a later error can still keep its status
                out[:0] = await start()
            await send({"type": "http.response.body", "body": bytes(out), "more_body": more})
            if not more:
                return
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _closing(chunks: _Chunks, final: Final, r: Rendering) -> bytes:
    out = b""
    message = final.message
    if message.get("refusal"):
        out += chunks.delta({"refusal": message["refusal"]})
    if final.client_tool_calls:
        calls = [{"index": i, **call} for i, call in enumerate(final.client_tool_calls)]
        out += chunks.delta({"tool_calls": calls})
    out += chunks.delta({}, final.finish_reason)
    if r.include_usage:
        out += chunks.usage(final.usage or {}, loop_facts(final) if r.trace else None)
    elif r.trace:
        out += chunks.usage(None, loop_facts(final))
    return out + sse.DONE
