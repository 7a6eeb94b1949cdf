"""The event pump alone: scripted loop events, a recording ASGI send, a scripted receive."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway import drain, pump as pump_module
from gateway.chat_render import ChatJSON, ChatSSE, ChatView
from gateway.errors import UpstreamError
from gateway.events import Delta, Final, RoundUsage, ToolFinished, ToolStarted
from gateway.pump import ClientLeft, Timing, pump
from tests.support import sse_events


class Client:
    """ASGI send and receive: records what was sent; `leave()` makes receive report a disconnect."""

    def __init__(self, *, stall: bool = False) -> None:
        self.messages: list[dict[str, Any]] = []
        self.gone = asyncio.Event()
        self.stall = stall  # a client that does not read: sends after the first never return

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if self.stall and len(self.messages) > 2:
            await asyncio.Event().wait()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    def leave(self) -> None:
        self.gone.set()

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.messages if m["type"] == "http.response.start")

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")

    @property
    def complete(self) -> bool:
        bodies = [m for m in self.messages if m["type"] == "http.response.body"]
        return bool(bodies) and not bodies[-1].get("more_body", False)


def final(content: str = "done", **kw: Any) -> Final:
    return Final({"role": "assistant", "content": content}, "stop", {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}, 1, 0, **kw)


async def events(*items: Any, pause_s: float = 0.0):
    for item in items:
        if pause_s:
            await asyncio.sleep(pause_s)
        if isinstance(item, BaseException):
            raise item
        if callable(item):
            await item()
            continue
        yield item


def renderers(stream: bool):
    view = ChatView(alias="m", include_usage=True)
    return ChatSSE(view) if stream else ChatJSON(view)


@pytest.mark.parametrize("stream", [True, False])
async def test_a_response_that_lasts_is_complete_not_a_disconnect(stream):
    # uvicorn reports every receive() after the last byte as a disconnect.
    client = Client()

    async def then_leave():
        await asyncio.sleep(0.15)  # past the point where the disconnect watcher starts

    async def send(message):
        await client.send(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            client.leave()
            await asyncio.sleep(0.01)

    outcome = await pump(send, client.receive, events(Delta("hi"), then_leave, final()), renderers(stream), Timing(10))
    assert (outcome.status, outcome.ended, outcome.disconnected) == (200, "complete", False)
    assert client.complete


@pytest.mark.parametrize("stream", [True, False])
async def test_usage_of_finished_rounds_survives_a_later_failure(stream):
    client = Client()
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    stream_events = events(RoundUsage(1, usage), ToolStarted(1, "c", "t", "{}"), ToolFinished(1, "c", "t", "ok", 0.01), UpstreamError("boom"))
    outcome = await pump(client.send, client.receive, stream_events, renderers(stream), Timing(10))
    assert outcome.usage == usage
    assert outcome.status == 502 and outcome.ended == "error"
    # Tools ran: an SDK retrying this 502 would run them again.
    start = next(m for m in client.messages if m["type"] == "http.response.start")
    assert (b"x-should-retry", b"false") in start["headers"]


async def test_usage_survives_the_client_leaving():
    client = Client()
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}

    async def leave():
        client.leave()
        await asyncio.sleep(10)

    outcome = await pump(client.send, client.receive, events(RoundUsage(1, usage), leave), renderers(True), Timing(30))
    assert (outcome.status, outcome.ended, outcome.usage) == (499, "client_left", usage)


@pytest.mark.parametrize("stream", [True, False])
async def test_a_server_that_says_when_the_client_left_ends_the_request_without_a_watcher(stream):
    """The gateway's own server calls the request's ClientLeft callback from connection_lost:
    the request ends as the client leaving at once, and no task reads `receive()` meanwhile."""
    client, left = Client(), ClientLeft()
    tasks = set()

    async def leave():
        await asyncio.sleep(0.15)  # past the point where a watcher would start without the hook
        tasks.update(t for t in asyncio.all_tasks() if not t.done())
        assert left.callback is not None
        left.callback()  # what GuardedHttp.connection_lost does
        await asyncio.sleep(10)

    outcome = await pump(client.send, client.receive, events(RoundUsage(1, None), leave), renderers(stream), Timing(30, left=left))
    assert (outcome.status, outcome.ended) == (499, "client_left")
    assert not [t for t in tasks if t.get_coro().__qualname__ == "_Pump.watch"]  # no disconnect watcher ran
    assert left.callback is None  # the connection's next request sets its own


async def test_a_lost_connection_after_the_response_is_not_a_disconnect():
    client, left = Client(), ClientLeft()
    outcome = await pump(client.send, client.receive, events(Delta("hi"), final()), renderers(True), Timing(30, left=left))
    assert (outcome.status, outcome.ended) == (200, "complete")
    assert left.callback is None  # a connection lost from now on reaches no finished request


async def test_cancelled_error_raised_inside_the_loop_ends_the_stream():
    # A CancelledError that is not aimed at the request must not leave keepalives running forever.
    client = Client()
    outcome = await pump(client.send, client.receive, events(Delta("partial"), asyncio.CancelledError()), renderers(True), Timing(10, keepalive_s=0.05))
    assert outcome.ended == "error" and outcome.status == 500
    payloads = sse_events(client.body.decode())
    assert payloads[-2]["error"]["code"] == "internal_error" and payloads[-1] == "[DONE]"
    assert client.complete


async def test_cancelled_error_raised_inside_the_loop_is_a_json_500():
    client = Client()
    outcome = await pump(client.send, client.receive, events(asyncio.CancelledError()), renderers(False), Timing(10))
    assert (outcome.status, client.status) == (500, 500)
    assert orjson.loads(client.body)["error"]["type"] == "internal_error"


async def test_the_deadline_covers_a_client_that_does_not_read():
    client = Client(stall=True)
    many = [Delta(f"piece {i} ") for i in range(200)]
    outcome = await pump(client.send, client.receive, events(*many, pause_s=0.001), renderers(True), Timing(0.3))
    assert outcome.ended == "deadline" and outcome.status == 504


async def test_the_deadline_mid_stream_is_an_error_event_and_done():
    client = Client()

    async def hang():
        await asyncio.sleep(30)

    outcome = await pump(client.send, client.receive, events(Delta("partial"), hang), renderers(True), Timing(0.2))
    assert outcome.ended == "deadline"
    payloads = sse_events(client.body.decode())
    assert payloads[-2]["error"]["code"] == "request_timeout" and payloads[-1] == "[DONE]"


@pytest.mark.parametrize("stream", [True, False])
async def test_shutdown_ends_an_open_request_with_an_error(stream):
    client = Client()

    async def hang():
        await asyncio.sleep(30)

    task = asyncio.ensure_future(pump(client.send, client.receive, events(Delta("partial"), hang), renderers(stream), Timing(60)))
    await asyncio.sleep(0.05)
    assert drain.end_all() >= 1
    outcome = await asyncio.wait_for(task, 5)
    assert outcome.ended == "shutdown" and outcome.status == 503
    if stream:
        payloads = sse_events(client.body.decode())
        assert payloads[-2]["error"]["code"] == "shutting_down" and payloads[-1] == "[DONE]"
    else:
        assert client.status == 503 and orjson.loads(client.body)["error"]["code"] == "shutting_down"


async def test_an_error_before_anything_was_shown_keeps_its_status():
    client = Client()
    outcome = await pump(client.send, client.receive, events(ToolStarted(1, "c", "t", "{}"), UpstreamError("nope", status=504)), renderers(True), Timing(10))
    assert client.status == 504 and outcome.status == 504
    assert orjson.loads(client.body)["error"]["message"] == "nope"


async def test_a_loop_cleanup_that_hangs_is_bounded(monkeypatch):
    monkeypatch.setattr(pump_module, "CLEANUP_S", 0.1)
    client = Client()

    async def stubborn():
        try:
            yield Delta("x")
            await asyncio.sleep(30)
        finally:
            await asyncio.shield(asyncio.sleep(1))  # ignores the first cancel for a while

    task = asyncio.ensure_future(pump(client.send, client.receive, stubborn(), renderers(True), Timing(0.2)))
    outcome = await asyncio.wait_for(task, 5)
    assert outcome.ended == "deadline"


async def test_streamed_text_of_separate_rounds_is_kept_apart():
    client = Client()
    stream = events(Delta("Let me look."), RoundUsage(1, None), Delta(None, "hmm"), Delta("Found it."), final("Found it."))
    await pump(client.send, client.receive, stream, renderers(True), Timing(10))
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in sse_events(client.body.decode()) if p != "[DONE]" and p["choices"])
    assert text == "Let me look.\n\nFound it."


async def test_a_429_after_tools_ran_is_not_to_be_retried_either():
    client = Client()
    limited = UpstreamError("slow down", status=429)
    await pump(client.send, client.receive, events(ToolStarted(1, "c", "t", "{}"), limited), renderers(False), Timing(10))
    start = next(m for m in client.messages if m["type"] == "http.response.start")
    assert start["status"] == 429 and (b"x-should-retry", b"false") in start["headers"]


async def test_a_slow_client_holds_the_loop_at_the_channel_bound_and_gets_every_event_in_order():
    # The loop runs ahead of a client that reads slowly by at most QUEUE_SIZE events, then waits.
    produced = 0
    release = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) == 2:  # the status line and the first events went out; now the client stalls
            await release.wait()

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def loop():
        nonlocal produced
        for i in range(500):
            produced += 1
            yield Delta(f"p{i} ")
        yield final("")

    task = asyncio.ensure_future(pump(send, receive, loop(), renderers(True), Timing(deadline_s=10)))
    for _ in range(200):
        await asyncio.sleep(0)
    held = produced
    assert held <= pump_module.QUEUE_SIZE + 4  # the batch being sent, the one being made, one in hand
    release.set()
    outcome = await asyncio.wait_for(task, 5)
    assert outcome.ended == "complete" and produced == 500
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in sse_events(body.decode()) if isinstance(e, dict) and e.get("choices"))
    assert text == "".join(f"p{i} " for i in range(500))
