"""HTTP/1.1 for the fake: a raw asyncio protocol with keep-alive, and nothing else.

A framework would cost more than the whole fake does per request, and the benchmark needs the
upstream never to be the bottleneck; so requests are parsed by hand, and a response that needs
no waiting is written straight from ``data_received``, without a task.

A connection knows nothing of LLMs: its ``Owner`` turns each request into a ``Response`` and is
told when connections open and close.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from . import wire

_MAX_HEAD = 64 * 1024
_BYTE_SPLIT_SIZES = (1, 5, 2, 7, 3, 6, 4)  # deterministic, so a failure reproduces
_LAST_CHUNK = b"0\r\n\r\n"


@dataclass(slots=True)
class Response:
    head: bytes  # status line and headers, blank line included
    parts: Sequence[bytes]  # body pieces; when chunked, each one is an HTTP chunk
    chunked: bool = False
    close: bool = False  # close the connection once written
    delay_s: float = 0.0  # before the head
    part_delay_s: float = 0.0  # between parts
    byte_split: bool = False  # each part in tiny pieces, each its own write

    @property
    def immediate(self) -> bool:
        return not (self.delay_s or self.part_delay_s or self.byte_split)


class Owner(Protocol):
    def respond(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Response: ...
    def opened(self, connection: Connection) -> None: ...
    def closed(self, connection: Connection, *, mid_response: bool) -> None: ...
    def track(self, task: asyncio.Task[None]) -> None: ...
    def report(self, exc: Exception) -> None: ...


class BadRequest(Exception):
    pass


def head(
    status: int,
    content_type: str,
    length: int | None,
    headers: Mapping[str, str] | None = None,
    *,
    chunked: bool = False,
    close: bool = False,
) -> bytes:
    lines = [
        b"HTTP/1.1 %d %s" % (status, wire.REASONS.get(status, b"Unknown")),
        b"content-type: " + content_type.encode(),
    ]
    if length is not None:
        lines.append(b"content-length: %d" % length)
    if chunked:
        lines.append(b"transfer-encoding: chunked")
    if close:
        lines.append(b"connection: close")
    lines += [f"{k}: {v}".encode("latin-1") for k, v in (headers or {}).items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def json_response(status: int, data: bytes) -> Response:
    return Response(head(status, "application/json", len(data)), (data,))


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _byte_pieces(data: bytes) -> Iterator[bytes]:
    sizes = itertools.cycle(_BYTE_SPLIT_SIZES)
    start = 0
    while start < len(data):
        end = start + next(sizes)
        yield data[start:end]
        start = end


class Connection(asyncio.Protocol):
    """One client connection: parse a request, answer it, repeat (keep-alive)."""

    def __init__(self, owner: Owner) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False  # a task is writing a response; later requests wait in the buffer
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        self.paused = False
        self.drained: asyncio.Future[None] | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        self.owner.opened(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._serve()

    def eof_received(self) -> bool | None:
        return None  # a client that stops sending is gone: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.task is not None:
            self.task.cancel()  # stop writing at once
        self._wake()
        self.owner.closed(self, mid_response=self.busy)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- requests ----------------------------------------------------------------------------

    def _serve(self) -> None:
        transport = self.transport
        assert transport is not None
        while not self.busy and not self.closed:
            try:
                request = self._parse()
            except BadRequest as exc:
                data = wire.error_body(400, f"fakellm: bad request: {exc}")
                transport.write(head(400, "application/json", len(data), close=True) + data)
                transport.close()
                return
            if request is None:
                return
            method, target, headers, raw = request
            try:
                response = self.owner.respond(method, target, headers, raw)
            except Exception as exc:  # a bug, or a turn that cannot be rendered: answer, keep it
                self.owner.report(exc)
                response = json_response(500, wire.error_body(500, f"fakellm: {exc!r}"))
            if headers.get("connection", "").lower() == "close":
                response.close = True
            if not response.immediate:
                self.busy = True
                self.task = asyncio.get_running_loop().create_task(self._write_later(response))
                self.owner.track(self.task)
                return
            self._write_now(response)
            if response.close:
                return

    def _parse(self) -> tuple[str, str, dict[str, str], bytes] | None:
        """The next complete request in the buffer (removed from it), or None."""
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _MAX_HEAD:
                raise BadRequest("request head too large")
            return None
        lines = buffer[:end].decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ")
        except ValueError:
            raise BadRequest(f"request line {lines[0][:80]!r}") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parsed = _chunked_body(buffer, start)
            if parsed is None:
                return None
            raw, stop = parsed
        else:
            try:
                stop = start + int(headers.get("content-length", "0"))
            except ValueError:
                raise BadRequest("content-length") from None
            if len(buffer) < stop:
                return None
            raw = bytes(buffer[start:stop])
        del buffer[:stop]
        return method, target, headers, raw

    # -- responses ---------------------------------------------------------------------------

    def _write_now(self, response: Response) -> None:
        assert self.transport is not None
        if response.chunked:
            body = b"".join(map(_chunk, response.parts)) + _LAST_CHUNK
        else:
            body = b"".join(response.parts)
        self.transport.write(response.head + body)
        if response.close:
            self.transport.close()

    async def _write_later(self, response: Response) -> None:
        transport = self.transport
        assert transport is not None
        try:
            if response.delay_s:
                await asyncio.sleep(response.delay_s)
            transport.write(response.head)
            for i, part in enumerate(response.parts):
                if i and response.part_delay_s:
                    await asyncio.sleep(response.part_delay_s)
                # A client gone mid-write is still busy: connection_lost counts it, cancels us.
                if transport.is_closing():
                    return
                if not response.chunked:
                    transport.write(part)
                elif not response.byte_split:
                    transport.write(_chunk(part))
                else:
                    for piece in _byte_pieces(part):
                        if transport.is_closing():
                            return
                        transport.write(_chunk(piece))
                        await self._drain()
                        await asyncio.sleep(0)  # let the piece go out on its own
                await self._drain()
            if response.chunked:
                transport.write(_LAST_CHUNK)
        except Exception as exc:  # a bug in the fake: keep it for the test, never leak it
            self.busy = False  # our own abort is no client disconnect
            self.owner.report(exc)
            transport.abort()
            return
        self.busy = False
        self.task = None
        if response.close:
            transport.close()
        elif self.buffer:
            self._serve()

    async def _drain(self) -> None:
        if self.paused and not self.closed:
            self.drained = asyncio.get_running_loop().create_future()
            await self.drained

    def _wake(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None


def _chunked_body(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    """``(body, end)`` of a complete chunked request body, or None while incomplete."""
    body = bytearray()
    pos = start
    while pos < len(buffer):
        eol = buffer.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(buffer[pos:eol].split(b";")[0], 16)
        except ValueError:
            raise BadRequest("chunk size") from None
        pos = eol + 2
        if size == 0:  # then optional trailers, then a blank line
            if buffer[pos : pos + 2] == b"\r\n":
                return bytes(body), pos + 2
            end = buffer.find(b"\r\n\r\n", pos)
            return None if end < 0 else (bytes(body), end + 4)
        if len(buffer) < pos + size + 2:
            return None
        body += buffer[pos : pos + size]
        pos += size + 2
    return None
