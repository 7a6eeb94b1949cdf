"""The production transport (aiohttp) against real sockets on 127.0.0.1: each way a host can
fail becomes the gateway's error, marked retryable only when nothing reached the host."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.transports import AiohttpTransport, _aiohttp_errors, create_transport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEADERS = {"content-type": "application/json"}


class Host:
    """A raw TCP server on loopback that answers as `handler` says; it counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> str:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            task = asyncio.current_task()
            assert task is not None
            self.tasks.add(task)
            try:
                await self.handler(reader, writer)
            except (asyncio.CancelledError, ConnectionError):
                pass  # ended by __aexit__ (a cancelled handler task is logged by asyncio's stream callback)
            finally:
                writer.close()
                self.tasks.discard(task)

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/chat/completions"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 5)
        await asyncio.wait_for(self.server.wait_closed(), 5)


async def _request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    return await reader.readexactly(length)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: nothing listens there


@pytest.fixture
async def transport():
    made = AiohttpTransport.create()
    yield made
    await made.aclose()


async def post(transport: AiohttpTransport, url: str, *, read_s: float = 5.0):
    return await transport.post(url, HEADERS, b'{"model": "m"}', connect_s=2.0, read_s=read_s, name="up")


async def test_a_refused_connection_is_unreachable_and_retryable(transport):
    with pytest.raises(UpstreamError) as caught:
        await post(transport, f"http://127.0.0.1:{_free_port()}/v1/chat/completions")
    assert caught.value.code == "upstream_unreachable" and caught.value.retryable is True
    assert caught.value.status == 502 and "'up'" in caught.value.message


async def test_a_host_that_never_answers_is_a_read_timeout_not_retried(transport):
    async def silent(reader, writer):
        await _request(reader)
        await asyncio.sleep(10)

    async with Host(silent) as url:
        with pytest.raises(UpstreamTimeout) as caught:
            await post(transport, url, read_s=0.2)
    assert caught.value.status == 504 and caught.value.retryable is False
    assert "did not answer in time" in caught.value.message


async def test_a_reset_mid_body_is_a_broken_connection_not_retried(transport):
    async def cut(reader, writer):
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 1000\r\n\r\ndata: {\"a\": 1}\n\n")
        await writer.drain()
        writer.transport.abort()  # RST, with 980 bytes of the body never sent

    async with Host(cut) as url:
        reply = await post(transport, url)
        assert reply.status == 200
        got = b""
        with pytest.raises(UpstreamError) as caught:
            async for piece in reply.chunks():
                got += piece
        await reply.close()
    assert got.startswith(b"data: ") and caught.value.retryable is False
    assert caught.value.code == "bad_gateway" and "broke the connection" in caught.value.message


async def test_a_reset_before_the_status_line_is_a_broken_connection(transport):
    async def hang_up(reader, writer):
        await _request(reader)
        writer.transport.abort()

    async with Host(hang_up) as url:
        with pytest.raises(UpstreamError) as caught:
            await post(transport, url)
    assert "broke the connection" in caught.value.message and caught.value.retryable is False


async def test_a_body_that_stalls_is_a_read_timeout(transport):
    async def stall(reader, writer):
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\":")
        await writer.drain()
        await asyncio.sleep(10)

    async with Host(stall) as url:
        reply = await post(transport, url, read_s=0.2)
        with pytest.raises(UpstreamTimeout):
            await reply.read(1 << 20)
        await reply.close()


async def test_a_body_read_to_its_end_leaves_the_connection_for_the_next_call(transport):
    async def answer(reader, writer):
        for _ in range(2):
            await _request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()
        await reader.read()

    host = Host(answer)
    async with host as url:
        for _ in range(2):
            reply = await post(transport, url)
            assert (reply.status, await reply.read(1 << 20)) == (200, b"{}")
            await reply.close()
    assert host.connections == 1


async def test_a_half_read_stream_is_not_reused(transport):
    async def endless(reader, writer):
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"c\r\ndata: {}\n\n\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(10)

    host = Host(endless)
    async with host as url:
        reply = await post(transport, url)
        async for _ in reply.chunks():
            break
        await reply.close()
        reply = await post(transport, url)
        await reply.close()
    assert host.connections == 2


async def test_the_probe_reports_a_status_or_the_gateways_error(transport):
    async def unauthorized(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()

    async with Host(unauthorized) as url:
        assert await transport.status(url, {}, timeout_s=2, name="up") == 401
    with pytest.raises(UpstreamError) as caught:
        await transport.status(f"http://127.0.0.1:{_free_port()}/", {}, timeout_s=2, name="up")
    assert caught.value.code == "upstream_unreachable"


@pytest.mark.parametrize(
    ("raised", "error", "code", "retryable"),
    [
        (aiohttp.ConnectionTimeoutError(), UpstreamTimeout, "upstream_connect_timeout", True),
        (aiohttp.ServerTimeoutError(), UpstreamTimeout, "upstream_timeout", False),
        (asyncio.TimeoutError(), UpstreamTimeout, "upstream_timeout", False),
        (aiohttp.ClientPayloadError("cut"), UpstreamError, "bad_gateway", False),
        (ConnectionResetError(), UpstreamError, "bad_gateway", False),
        (ValueError("bad chunk size"), UpstreamError, "bad_gateway", False),
    ],
)
def test_each_aiohttp_error_has_one_gateway_error(raised, error, code, retryable):
    # A connect timeout cannot be made on loopback (nothing there is slow to accept).
    with pytest.raises(error) as caught, _aiohttp_errors("up"):
        raise raised
    assert type(caught.value) is error and (caught.value.code, caught.value.retryable) == (code, retryable)


async def test_create_transport_is_aiohttp_unless_one_is_handed_in():
    made = create_transport()
    try:
        assert isinstance(made, AiohttpTransport)
    finally:
        await made.aclose()
    assert create_transport(made) is made


async def test_a_chunked_stream_read_to_its_end_gives_every_byte_then_stops(transport):
    # Pieces written apart arrive as reads of their own; the body's end ends the iteration.
    async def pieces(reader, writer):
        for _ in range(2):
            await _request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(3):
                data = b"data: {\"n\": %d}\n\n" % i
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                await writer.drain()
                await asyncio.sleep(0.02)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        await reader.read()

    host = Host(pieces)
    async with host as url:
        reply = await post(transport, url)
        got = [piece async for piece in reply.chunks()]
        await reply.close()
        again = await post(transport, url)  # a body read to its end leaves the connection for reuse
        assert b"".join([piece async for piece in again.chunks()]) == b"".join(got)
        await again.close()
    assert b"".join(got) == b"".join(b"data: {\"n\": %d}\n\n" % i for i in range(3)) and len(got) >= 2
    assert host.connections == 1
