"""What the client's socket receives from `GuardedHttp`, write by write (a recording transport)."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from gateway.server import GuardedHttp


class Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def connect(app: Any) -> tuple[GuardedHttp, Recording]:
    config = uvicorn.Config(app, http=GuardedHttp, log_config=None, access_log=False, server_header=False, date_header=False)
    config.load()
    protocol = GuardedHttp(config, ServerState(), {})
    transport = Recording()
    protocol.connection_made(transport)
    return protocol, transport


async def settle(protocol: GuardedHttp) -> None:
    for _ in range(100):
        await asyncio.sleep(0.01)
        if not protocol.tasks:
            return


HEAD = [(b"content-type", b"application/json"), (b"content-length", b"2")]


async def test_a_whole_response_leaves_in_one_write():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": HEAD})
        await send({"type": "http.response.body", "body": b"{}"})

    protocol, transport = connect(app)
    protocol.data_received(b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n")
    await settle(protocol)
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and transport.writes[0].endswith(b"\r\n\r\n{}")


async def test_a_streams_head_goes_out_before_its_first_event_is_ready():
    first_event = asyncio.Event()
    seen_before_event: list[list[bytes]] = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await first_event.wait()  # the model has not answered yet
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    protocol, transport = connect(app)
    protocol.data_received(b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n")
    await asyncio.sleep(0.05)
    seen_before_event.append(list(transport.writes))
    first_event.set()
    await settle(protocol)
    assert len(seen_before_event[0]) == 1 and seen_before_event[0][0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[1:] == [b"9\r\ndata: 1\n\n\r\n", b"0\r\n\r\n"]


async def test_100_continue_is_not_held_back_waiting_for_the_head():
    async def app(scope, receive, send):
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": HEAD})
        await send({"type": "http.response.body", "body": message["body"][:2]})

    protocol, transport = connect(app)
    protocol.data_received(b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n")
    await asyncio.sleep(0.05)  # the client waits for 100 Continue before it sends the body
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    protocol.data_received(b"{}")
    await settle(protocol)
    assert len(transport.writes) == 2 and transport.writes[1].endswith(b"\r\n\r\n{}")


async def test_a_connection_close_response_is_written_whole_before_the_close():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 503, "headers": [*HEAD, (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": b"{}"})

    protocol, transport = connect(app)
    protocol.data_received(b"GET /x HTTP/1.1\r\nhost: t\r\n\r\n")
    await settle(protocol)
    assert len(transport.writes) == 1 and transport.writes[0].startswith(b"HTTP/1.1 503 ") and transport.closed
