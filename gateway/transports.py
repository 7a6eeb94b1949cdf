"""How `upstream.py` reaches the LLM host: aiohttp in production, httpx where tests inject one.

    transport = AiohttpTransport.create()                       # in the app's lifespan
    transport = HttpxTransport(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    reply = await transport.post(url, headers, body, connect_s=10, read_s=300, name="default")
    async for piece in reply.chunks(): ...
    await reply.close()

Measured on this kind of machine (bench/README.md): the same proxy serves about
2,400 req/s on httpx over the httpx-aiohttp transport and about 5,800 on an
aiohttp session directly; httpx's own transport, about 500. So the hot path
talks aiohttp, and this seam keeps tests on `httpx.MockTransport`.

Each adapter is the one place its library's exceptions become the gateway's.
Only what provably never reached the host is marked `retryable` (a refused or
failed connect, a connect timeout): a reset or a read timeout after the request
went out may have been processed, and a paid call is never sent twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

import aiohttp
import httpx

from gateway.errors import ReplyTooLarge, UpstreamError, UpstreamTimeout


class Reply(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Case-insensitive."""

    async def read(self, limit: int) -> bytes:
        """The whole body; UpstreamError past `limit` bytes (read no further)."""

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


class Transport(Protocol):
    async def post(self, url: str, headers: Mapping[str, str], body: bytes, *, connect_s: float, read_s: float, name: str) -> Reply: ...

    async def get(self, url: str, headers: Mapping[str, str], *, connect_s: float, read_s: float, name: str) -> Reply: ...

    async def status(self, url: str, headers: Mapping[str, str], *, timeout_s: float, name: str) -> int:
        """The status of a GET (the body is not read); the gateway's errors if it cannot be had."""

    async def aclose(self) -> None: ...


async def _read_capped(reply: Reply, limit: int) -> bytes:
    """A reply's whole body, read piece by piece and no further than `limit` bytes."""
    length = reply.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ReplyTooLarge(limit)
    pieces = []
    size = 0
    async for piece in reply.chunks():
        size += len(piece)
        if size > limit:
            raise ReplyTooLarge(limit)
        pieces.append(piece)
    return b"".join(pieces)


def _connect_timeout(name: str) -> UpstreamTimeout:
    error = UpstreamTimeout(f"Could not connect to upstream {name!r} in time.", code="upstream_connect_timeout")
    error.retryable = True
    return error


def _read_timeout(name: str) -> UpstreamTimeout:
    return UpstreamTimeout(f"Upstream {name!r} did not answer in time.")


def _unreachable(name: str) -> UpstreamError:
    error = UpstreamError(f"Could not connect to upstream {name!r}.", code="upstream_unreachable")
    error.retryable = True
    return error


def _broken(name: str) -> UpstreamError:
    return UpstreamError(f"Upstream {name!r} broke the connection.")


# -- aiohttp -------------------------------------------------------------------------


_AIOHTTP_ERRORS = (aiohttp.ClientError, OSError, ValueError, asyncio.TimeoutError)


def _aiohttp_error(exc: BaseException, name: str) -> UpstreamError:
    """The gateway's error for one of `_AIOHTTP_ERRORS`."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return _connect_timeout(name)
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return _read_timeout(name)
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, unresolvable, unreachable: nothing was sent
        return _unreachable(name)
    return _broken(name)


@contextmanager
def _aiohttp_errors(name: str) -> Iterator[None]:
    try:
        yield
    except _AIOHTTP_ERRORS as exc:
        raise _aiohttp_error(exc, name) from None


class _AiohttpChunks:
    """A streamed body, one network read at a time: a small object, where an async generator
    around aiohttp's iterator would keep a frame, a context manager and the loop's weak
    reference to it for the whole stream."""

    __slots__ = ("_content", "_name")

    def __init__(self, content: aiohttp.StreamReader, name: str) -> None:
        self._content, self._name = content, name

    def __aiter__(self) -> _AiohttpChunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            piece = await self._content.readany()
        except aiohttp.EofStream:
            raise StopAsyncIteration from None
        except _AIOHTTP_ERRORS as exc:
            raise _aiohttp_error(exc, self._name) from None
        if not piece:
            raise StopAsyncIteration
        return piece


class AiohttpReply:
    __slots__ = ("_response", "_name", "status", "headers")

    def __init__(self, response: aiohttp.ClientResponse, name: str) -> None:
        self._response = response
        self._name = name
        self.status = response.status
        self.headers = response.headers

    async def read(self, limit: int) -> bytes:
        return await _read_capped(self, limit)

    def chunks(self) -> AsyncIterator[bytes]:
        return _AiohttpChunks(self._response.content, self._name)

    async def close(self) -> None:
        # A body read to its end lets the connection go back to the pool; a
        # stream left half-read (the client went away) must not be reused.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    @classmethod
    def create(cls) -> AiohttpTransport:
        """A session for LLM traffic: no cookie jar (requests are not users), no pool limit
        (the gateway's concurrency cap bounds it), and no `trust_env`: aiohttp would
        read ~/.netrc and the proxy variables in a thread on every request."""
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, keepalive_timeout=30)
        session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        return cls(session)

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, *, connect_s: float, read_s: float, name: str) -> AiohttpReply:
        return await self._send("POST", url, headers, body, connect_s, read_s, name)

    async def get(self, url: str, headers: Mapping[str, str], *, connect_s: float, read_s: float, name: str) -> AiohttpReply:
        return await self._send("GET", url, headers, None, connect_s, read_s, name)

    async def _send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None, connect_s: float, read_s: float, name: str
    ) -> AiohttpReply:
        timeout = aiohttp.ClientTimeout(total=None, connect=connect_s, sock_read=read_s)
        with _aiohttp_errors(name):
            response = await self.session.request(method, url, data=body, headers=headers, timeout=timeout, allow_redirects=False)
        return AiohttpReply(response, name)

    async def status(self, url: str, headers: Mapping[str, str], *, timeout_s: float, name: str) -> int:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        with _aiohttp_errors(name):
            async with self.session.get(url, headers=headers, timeout=timeout, allow_redirects=False) as response:
                return response.status

    async def aclose(self) -> None:
        await self.session.close()


# -- httpx (tests inject httpx.MockTransport through this) ------------------------------


@contextmanager
def _httpx_errors(name: str) -> Iterator[None]:
    try:
        yield
    except httpx.ConnectTimeout:
        raise _connect_timeout(name) from None
    except httpx.TimeoutException:
        raise _read_timeout(name) from None
    except httpx.ConnectError:
        raise _unreachable(name) from None
    except httpx.TransportError:
        raise _broken(name) from None


class HttpxReply:
    __slots__ = ("_response", "_name", "status", "headers")

    def __init__(self, response: httpx.Response, name: str) -> None:
        self._response = response
        self._name = name
        self.status = response.status_code
        self.headers = response.headers

    async def read(self, limit: int) -> bytes:
        return await _read_capped(self, limit)

    async def chunks(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._name):
            async for piece in self._response.aiter_bytes():
                yield piece

    async def close(self) -> None:
        await self._response.aclose()


class HttpxTransport:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, *, connect_s: float, read_s: float, name: str) -> HttpxReply:
        return await self._send("POST", url, headers, body, connect_s, read_s, name)

    async def get(self, url: str, headers: Mapping[str, str], *, connect_s: float, read_s: float, name: str) -> HttpxReply:
        return await self._send("GET", url, headers, None, connect_s, read_s, name)

    async def _send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None, connect_s: float, read_s: float, name: str
    ) -> HttpxReply:
        timeout = httpx.Timeout(read_s, connect=connect_s, pool=connect_s)
        request = self.client.build_request(method, url, content=body, headers=headers, timeout=timeout)
        with _httpx_errors(name):
            response = await self.client.send(request, stream=True)
        return HttpxReply(response, name)

    async def status(self, url: str, headers: Mapping[str, str], *, timeout_s: float, name: str) -> int:
        with _httpx_errors(name):
            response = await self.client.get(url, headers=headers, timeout=timeout_s)
        return response.status_code

    async def aclose(self) -> None:
        await self.client.aclose()


def create_transport(injected: httpx.AsyncBaseTransport | Transport | None = None) -> Transport:
    """aiohttp, unless a test hands in an httpx transport (e.g. `httpx.MockTransport`)."""
    if injected is None:
        return AiohttpTransport.create()
    if isinstance(injected, httpx.AsyncBaseTransport):
        return HttpxTransport(httpx.AsyncClient(transport=injected))
    return injected
