"""The event pump: loop events to the client, under every bound that is about time.

    outcome = await pump(send, receive, run_loop(job, ...), ChatSSE(...), Timing(deadline_s=600))

One pump for every rendering; a renderer only turns events into bytes. The pump
owns the rest:

- the deadline, which covers the loop *and* every send to the client;
- the status line, sent late: a non-streamed reply when its body is ready, a
  stream with the first bytes the client will see, so an early error keeps
  its own status;
- keepalives: streamed, the loop feeds a bounded channel, and waiting on the
  channel (never on the loop) for `keepalive_s` sends one (one timer per
  stream watches that wait: no timer per event);
- liveness: the client leaving, the loop dying of anything, and the server
  shutting down each end the request in one known way (`Outcome.ended`); the
  gateway's own server says when a client's connection is lost (`ClientLeft`,
  no task per request), any other ASGI server through `receive()`;
- error envelopes: before the status line, the error is the response; after
  it, the renderer's error event, then the end of the stream.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gateway import drain
from gateway.backoff import Patience
from gateway.errors import ShuttingDown, UpstreamTimeout, error_json
from gateway.events import Delta, Event, Final, Opening, RoundUsage, ToolStarted
from gateway.usage import add_usage

log = logging.getLogger("toolgate")

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

# Under a server without `ClientLeft`, a request this quick never needs the disconnect watcher:
# its task is created only after this.
WATCH_AFTER_S = 0.05
# Writing the last error event of a stream that is being ended, at most.
LAST_SEND_S = 2.0
# Waiting for the loop to clean up after it was cancelled, at most.
CLEANUP_S = 5.0
QUEUE_SIZE = 64
# A loop's timer may fire this much before its time (uvloop's clock counts milliseconds).
_EARLY_S = 0.001
# Statuses below 500 that the OpenAI SDKs retry on their own.
_SDK_RETRIES = frozenset({408, 409, 429})


class Renderer(Protocol):
    streaming: bool
    keepalive: bytes

    def feed(self, event: Event | Opening) -> bytes:
        """Bytes for the client now (a non-streamed renderer returns its body at `Final`)."""

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Headers of a successful response, asked when the status line goes out."""

    def failure(self, error: bytes) -> bytes:
        """A streamed renderer's error event (around the OpenAI error body) and end of stream."""


class ClientLeft:
    """A server's word that a client's connection is lost, as the ASGI scope extension
    `CLIENT_LEFT`: the server calls `callback` (set by the request being served, None
    between requests) from its `connection_lost`. The gateway's server gives one per
    connection; under any other server the pump reads `http.disconnect` from `receive()`."""

    __slots__ = ("callback",)

    def __init__(self) -> None:
        self.callback: Callable[[], None] | None = None


CLIENT_LEFT = "toolgate.client_left"


def client_left(scope: dict[str, Any]) -> ClientLeft | None:
    extensions = scope.get("extensions")
    return extensions.get(CLIENT_LEFT) if extensions else None


@dataclass(slots=True)
class Timing:
    deadline_s: float
    keepalive_s: float = 15.0
    secrets: tuple[str, ...] = ()  # this request's own (a forwarded client key), masked in errors
    left: ClientLeft | None = None  # the server's, when it has one (see ClientLeft)
    # A stream's: until its first keepalive would send the status, how late a retry may wait.
    patience: Patience | None = None


Ended = Literal["complete", "error", "client_left", "deadline", "shutdown"]


@dataclass(slots=True)
class Outcome:
    """What happened, for the request log and metrics."""

    status: int = 200
    ended: Ended = "complete"
    final: Final | None = None
    error: BaseException | None = None
    usage: dict[str, Any] | None = None  # summed per round as it arrived, whatever happened later
    tools_ran: bool = False
    started: bool = False  # the status line went out

    @property
    def disconnected(self) -> bool:
        return self.ended == "client_left"


class _Ended(Exception):
    """The loop's producer task ended without an answer (it was cancelled from inside)."""


_END = object()
_OPENING = Opening()


class _Pump:
    __slots__ = ("send", "receive", "r", "timing", "outcome", "task", "reason", "done", "watcher", "timer", "deadline", "deadline_at")

    def __init__(self, send: Send, receive: Receive, renderer: Renderer, timing: Timing) -> None:
        self.send = send
        self.receive = receive
        self.r = renderer
        self.timing = timing
        self.outcome = Outcome()
        self.task: asyncio.Task[Any]  # the task that awaits run(): what an interruption cancels
        self.reason: str | None = None  # why the task was interrupted
        self.done = False  # the whole response was sent
        self.watcher: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None  # until the watcher starts
        self.deadline: asyncio.TimerHandle | None = None  # a stream's keepalive timer takes it over
        self.deadline_at = 0.0  # in the loop's time

    # -- interruptions ----------------------------------------------------------------

    def interrupt(self, reason: str) -> None:
        if self.reason is None and not self.done:
            self.reason = reason
            self.task.cancel()

    def _shutdown(self) -> None:
        self.interrupt("shutdown")

    def expire(self) -> None:
        self.interrupt("deadline")

    def _client_left(self) -> None:
        self.interrupt("client_left")

    def _start_watching(self) -> None:
        self.timer = None  # fired: the handle is not kept for the rest of the stream
        self.watcher = asyncio.ensure_future(self.watch())

    async def watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        # After the last byte, uvicorn reports every receive() as a disconnect: not a client leaving.
        self._client_left()

    async def run(self, work: Awaitable[None]) -> Outcome:
        """`work` under the deadline, the client leaving and the shutdown: each interrupts the
        task the same way (a timer or a callback, `interrupt`), and ends the request its own way."""
        outcome = self.outcome
        loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()  # type: ignore[assignment]  # run() runs in a task
        left, mine = self.timing.left, self._client_left
        if left is not None:
            left.callback = mine
        else:
            self.timer = loop.call_later(WATCH_AFTER_S, self._start_watching)
        self.deadline_at = loop.time() + self.timing.deadline_s
        self.deadline = loop.call_at(self.deadline_at, self.expire)
        interrupt = drain.track(self._shutdown)
        try:
            try:
                await work
            except asyncio.CancelledError:
                if self.reason is not None and self.task.uncancel() == 0:
                    if self.reason == "deadline":
                        message = f"The request did not finish within its {self.timing.deadline_s:g} s deadline."
                        # Retrying would run the whole loop, and its tools, again.
                        await self._end(UpstreamTimeout(message, code="request_timeout", headers={"x-should-retry": "false"}), "deadline")
                    elif self.reason == "shutdown":
                        await self._end(ShuttingDown("The gateway is shutting down; the request was ended.", headers={"retry-after": "1"}), "shutdown")
                    else:
                        outcome.status, outcome.ended = 499, "client_left"
                elif self.reason is None and not self.task.cancelling():
                    # A CancelledError raised inside the loop, not at us: a bug below, not a reason to hang.
                    log.error("the tool loop was cancelled from inside", exc_info=True)
                    await self._end(_Ended("The gateway failed to finish this request."), "error")
                else:
                    raise  # a cancellation from outside (the server is stopping us)
        finally:
            drain.untrack(interrupt)
            self.done = True
            if left is not None and left.callback == mine:
                left.callback = None  # (a pipelined request on the connection may have set its own)
            if self.timer is not None:
                self.timer.cancel()
            if self.deadline is not None:
                self.deadline.cancel()
            if self.watcher is not None:
                self.watcher.cancel()
        return outcome

    # -- what reaches the client --------------------------------------------------------

    async def commit(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, more: bool) -> None:
        self.outcome.started = True
        if self.timing.patience is not None:
            self.timing.patience.until = math.inf  # the status is out: waiting costs the client no status now
        self.outcome.status = status
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.body(body, more)

    async def body(self, body: bytes, more: bool) -> None:
        if not more:
            self.done = True  # from here on, a disconnect is the normal end
        await self.send({"type": "http.response.body", "body": body, "more_body": more})

    async def fail(self, exc: BaseException) -> None:
        """The error as the response, or, once the stream started, as its last event."""
        outcome = self.outcome
        outcome.error = exc
        status, body, headers = error_json(exc, *self.timing.secrets)
        if outcome.tools_ran and (status >= 500 or status in _SDK_RETRIES):
            # An SDK would retry this and run every tool again.
            headers = {**headers, "x-should-retry": "false"}
        if outcome.started:
            outcome.status = status
            await self.body(self.r.failure(body), False)
            return
        raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        await self.commit(status, raw, body, False)

    async def _end(self, exc: BaseException, ended: Ended) -> None:
        """End an interrupted request with `exc`, in bounded time (the client may not be reading)."""
        self.reason = self.reason or ended  # no second interruption while it ends
        self.outcome.ended = ended
        try:
            async with asyncio.timeout(LAST_SEND_S):
                await self.fail(exc)
        except TimeoutError:
            self.outcome.error = exc
            self.outcome.status = error_json(exc)[0]

    def note(self, event: Event) -> None:
        """Accounting that must survive whatever happens next."""
        if type(event) is Delta:  # nearly every event: nothing to count
            return
        if isinstance(event, RoundUsage):
            if event.usage is not None:
                self.outcome.usage = add_usage(self.outcome.usage, event.usage)
        elif isinstance(event, ToolStarted):
            self.outcome.tools_ran = True
        elif isinstance(event, Final):
            self.outcome.final = event


# -- one JSON body: the loop runs in the request's own task ---------------------------------


async def _collect(p: _Pump, events: AsyncGenerator[Event, None]) -> None:
    try:
        async with aclosing(events) as stream:
            async for event in stream:
                p.note(event)
                body = p.r.feed(event)
                if isinstance(event, Final):
                    await p.commit(200, p.r.headers(), body, False)
                    return
        raise _Ended("The gateway failed to finish this request.")
    except Exception as exc:
        p.outcome.ended = "error"
        await p.fail(exc)


# -- server-sent events: the loop feeds a bounded channel from its own task ------------------------------


class _Channel:
    """The loop's events on their way to the writer: at most `size` waiting, one producer, one
    consumer. Smaller than an `asyncio.Queue` (a list and at most one pending Future, where a
    queue holds three deques and an Event per stream), and the writer takes all that waits at once."""

    __slots__ = ("items", "size", "waiter", "loop")

    def __init__(self, size: int) -> None:
        self.items: list[Any] = []
        self.size = size
        self.waiter: asyncio.Future[None] | None = None  # the side waiting: the writer (empty) or the loop (full)
        self.loop = asyncio.get_running_loop()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def put(self, item: Any) -> None:
        while len(self.items) >= self.size:
            waiter = self.waiter = self.loop.create_future()  # inline: no coroutine frame per wait
            try:
                await waiter
            finally:
                if self.waiter is waiter:
                    self.waiter = None
        self.items.append(item)
        self._wake()

    def offer(self, item: Any) -> None:
        """Queue `item` unless the channel is full (a keepalive: never mind then)."""
        if len(self.items) < self.size:
            self.items.append(item)
            self._wake()

    async def take(self) -> list[Any]:
        """Everything waiting, oldest first; waits while there is nothing."""
        while not self.items:
            waiter = self.waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                if self.waiter is waiter:
                    self.waiter = None
        items, self.items = self.items, []
        self._wake()  # a loop waiting on a full channel goes on
        return items


async def _produce(events: AsyncGenerator[Event, None], channel: _Channel) -> None:
    terminal: Any = _END
    try:
        async with aclosing(events) as stream:
            first = True
            async for event in stream:
                await channel.put(event)
                if first:
                    # Let the writer send the first bytes now, not when reading next blocks.
                    first = False
                    await asyncio.sleep(0)
    except asyncio.CancelledError:
        if asyncio.current_task().cancelling():  # type: ignore[union-attr]  # a coroutine of a task
            raise  # the pump is stopping us
        log.error("the tool loop was cancelled from inside", exc_info=True)
        terminal = _Ended("The gateway failed to finish this request.")
    except Exception as exc:
        terminal = exc
    await channel.put(terminal)


class _Quiet:
    """Keepalives from one timer per stream, not one per event: the timer checks how long the
    writer has been waiting on the channel, and when it is `keepalive_s`, queues `_KEEPALIVE`
    (the writer sends one), else sleeps the rest of that time. A writer busy sending waits on
    nobody, and gets no keepalive meanwhile, as with a timeout around each wait. The same timer
    keeps the pump's deadline (it takes over the pump's own timer): one timer per stream."""

    __slots__ = ("channel", "every", "loop", "waiting_since", "timer", "pump")

    def __init__(self, channel: _Channel, every: float, pump: _Pump) -> None:
        self.channel, self.every, self.pump = channel, every, pump
        self.loop = channel.loop
        self.waiting_since: float | None = None  # None: the writer is not waiting on the channel
        if pump.deadline is not None:
            pump.deadline.cancel()
            pump.deadline = None
        self.timer = self.loop.call_at(min(self.loop.time() + every, pump.deadline_at), self._due)

    def _due(self) -> None:
        now = self.loop.time()
        deadline_at = self.pump.deadline_at
        if now >= deadline_at - _EARLY_S:
            self.pump.expire()
            return
        since = self.waiting_since
        left = self.every if since is None else since + self.every - now
        if left <= 0:
            self.waiting_since = None  # one keepalive per quiet `every`
            self.channel.offer(_KEEPALIVE)  # not while the writer waits (the channel is empty then)
            left = self.every
        self.timer = self.loop.call_at(min(now + left, deadline_at), self._due)

    def stop(self) -> None:
        self.timer.cancel()


_KEEPALIVE = object()


async def _stream(p: _Pump, events: AsyncGenerator[Event, None]) -> None:
    channel = _Channel(QUEUE_SIZE)
    producer = asyncio.ensure_future(_produce(events, channel))
    r = p.r
    quiet = _Quiet(channel, p.timing.keepalive_s, p)
    loop = channel.loop
    if p.timing.patience is not None and not p.outcome.started:
        p.timing.patience.until = loop.time() + p.timing.keepalive_s  # the first keepalive sends the status
    try:
        while True:  # ends at _END or an error; the loop behind the channel is bounded
            if channel.items:
                batch = await channel.take()
            else:
                quiet.waiting_since = loop.time()
                batch = await channel.take()
                quiet.waiting_since = None
            if batch[0] is _KEEPALIVE:
                if p.outcome.started:
                    await p.body(r.keepalive, True)
                else:
                    await p.commit(200, r.headers(), r.feed(_OPENING) + r.keepalive, True)
                if len(batch) == 1:
                    continue
                del batch[0]
            out = bytearray()
            more = True
            for event in batch:
                if event is _END:
                    more = False
                    break
                if event is _KEEPALIVE:
                    continue  # events are going out now: no keepalive needed
                if isinstance(event, BaseException):
                    p.outcome.ended = "error"
                    if not p.outcome.started and out:
                        await p.commit(200, r.headers(), r.feed(_OPENING) + bytes(out), True)
                    elif out:
                        await p.body(bytes(out), True)
                    await p.fail(event)
                    return
                p.note(event)
                out += r.feed(event)
            del batch, event  # nothing of a sent event stays with the stream meanwhile
            if not p.outcome.started:
                if not out and more:
                    continue  # only unshown events: a later error can still keep its status
                await p.commit(200, r.headers(), r.feed(_OPENING) + bytes(out), more)
            elif out or not more:
                await p.body(bytes(out), more)
            if not more:
                return
            del out
    finally:
        quiet.stop()
        if not producer.done():
            producer.cancel()
        try:
            async with asyncio.timeout(CLEANUP_S):
                await asyncio.gather(producer, return_exceptions=True)
        except TimeoutError:
            log.error("the tool loop did not stop within %g s of being cancelled", CLEANUP_S)


def pump(send: Send, receive: Receive, events: AsyncGenerator[Event, None], renderer: Renderer, timing: Timing) -> Coroutine[Any, Any, Outcome]:
    """Serve one request's loop events through `renderer` (await it); never raises for the loop's
    failures. Not a coroutine itself: the pump's run is, one frame less to resume at each wait."""
    p = _Pump(send, receive, renderer, timing)
    work = _stream(p, events) if renderer.streaming else _collect(p, events)
    return p.run(work)


