"""``FakeLLM``: the script, the record, the routes; each request becomes a response here.

The HTTP side lives in ``protocol``; what goes on the wire in ``wire``.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson

from . import wire
from .protocol import Connection, Response, head, json_response
from .script import Calls, Fail, Raw, Reply, Script, Turn, demo_turn

_STREAM_HEADERS = {"cache-control": "no-cache"}


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as it reached the fake."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-case; repeated headers joined with ", "
    body: Any  # parsed JSON, or None when empty or not JSON
    raw: bytes


class FakeLLM:
    """A scripted upstream LLM host on 127.0.0.1; see the package docstring."""

    def __init__(
        self,
        host_type: str = "openai",
        quirks: Iterable[str] = (),
        latency_s: float = 0.0,
        chunks: int | None = None,
        *,
        record: bool = True,
        demo: bool = True,
        api_key: str | None = None,
        models: Sequence[str] = ("fake-model",),
    ) -> None:
        if host_type not in wire.HOST_TYPES:
            raise ValueError(f"unknown host type {host_type!r}; known: {', '.join(wire.HOST_TYPES)}")
        self.host_type = host_type
        self.host = wire.HOST_TYPES[host_type]
        self.quirks = wire.Quirks.of(quirks)
        self.latency_s = latency_s
        self.chunks = chunks or None
        self.record = record
        self.demo = demo  # False: an empty script answers 500, for tests that must not over-run
        self.api_key = api_key
        self.models = tuple(models)
        self.requests: list[Recorded] = []
        self.request_count = 0
        self.disconnects = 0
        self.errors: list[Exception] = []  # exceptions raised by callable turns or by the fake
        self._script: deque[Script] = deque()
        self._connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._server: asyncio.Server | None = None
        self._stopping = False
        self._port: int | None = None
        self._response_ids = itertools.count(1)
        self._call_ids = itertools.count(1)
        self._models_body = orjson.dumps(self.host.models_body(self.models))
        if api_key is not None:
            self._credential = self.host.auth_prefix + api_key

    # -- lifetime ----------------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        """Listen on 127.0.0.1 (never elsewhere); port 0 picks a free one, see ``url``."""
        self._stopping = False
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Connection(self), "127.0.0.1", port, backlog=1024)
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every connection; cancel responses still being written."""
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        for connection in list(self._connections):
            connection.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        await self.wait_until(lambda: not self._connections, timeout=5.0)
        self._server = None

    async def serve_until_signalled(self) -> None:
        """Standalone use: wait for SIGINT or SIGTERM, then stop."""
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopped.set)
        await stopped.wait()
        await self.stop()

    async def __aenter__(self) -> FakeLLM:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeLLM is not started")
        return self._port

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``, for requests to arbitrary paths."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The base URL as a toolgate config holds it (``.../v1`` for openai)."""
        return self.origin + self.host.base

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    # -- script ------------------------------------------------------------------------------

    def push(self, *turns: Script) -> None:
        """Queue turns; each chat request takes the next one, the demo brain answers after."""
        self._script.extend(turns)

    @property
    def pending(self) -> int:
        """Turns pushed but not yet used."""
        return len(self._script)

    # -- waiting on conditions, never on time ------------------------------------------------

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Return once ``predicate()`` holds; it is checked whenever a request, response or
        connection changes. Raises TimeoutError after ``timeout`` seconds."""
        if predicate():
            return
        entry = (predicate, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(entry[1], timeout)
        except TimeoutError:
            raise TimeoutError(
                f"fakellm: condition not met within {timeout}s (requests={self.request_count}, "
                f"disconnects={self.disconnects}, open_connections={self.open_connections})"
            ) from None
        finally:
            self._waiters.remove(entry)

    async def wait_disconnects(self, n: int = 1, timeout: float = 5.0) -> None:
        await self.wait_until(lambda: self.disconnects >= n, timeout)

    async def wait_requests(self, n: int = 1, timeout: float = 5.0) -> None:
        await self.wait_until(lambda: self.request_count >= n, timeout)

    # -- protocol.Owner: called by the connections -------------------------------------------

    def opened(self, connection: Connection) -> None:
        self._connections.add(connection)
        self._notify()

    def closed(self, connection: Connection, *, mid_response: bool) -> None:
        self._connections.discard(connection)
        if mid_response and not self._stopping:
            self.disconnects += 1
        self._notify()

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def report(self, exc: Exception) -> None:
        self.errors.append(exc)

    def _notify(self) -> None:
        for predicate, future in self._waiters:
            if not future.done() and predicate():
                future.set_result(None)

    # -- one request: route, then the next turn, rendered --------------------------------------

    def respond(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Response:
        path, _, query_string = target.partition("?")
        query = dict(parse_qsl(query_string, keep_blank_values=True)) if query_string else {}
        body: Any = None
        bad_json = False
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                bad_json = True
        self.request_count += 1
        if self.record:
            self.requests.append(Recorded(method, path, query, headers, body, raw))
        self._notify()

        host = self.host
        kind, deployment = host.route(path)
        if kind is None:
            return json_response(404, wire.NOT_FOUND)
        if method != ("GET" if kind in ("models", "model") else "POST"):
            return json_response(405, wire.METHOD_NOT_ALLOWED)
        if self.api_key is not None and headers.get(host.auth_header) != self._credential:
            return json_response(401, host.unauthorized)
        if kind == "models":
            return json_response(200, self._models_body)
        if kind == "model":
            if deployment in self.models:
                return json_response(200, wire.model_body(deployment))
            return json_response(404, wire.error_body(404, f"The model '{deployment}' does not exist"))
        if host.required_query and host.required_query not in query:
            return json_response(404, wire.AZURE_NOT_FOUND)
        if bad_json or not isinstance(body, dict):
            return json_response(400, wire.error_body(400, "fakellm: the body is not a JSON object"))
        if kind != "chat":
            return self._other(kind, body)
        return self._render(self._next_turn(body), body, deployment)

    def _other(self, kind: str, body: dict[str, Any]) -> Response:
        """Embeddings and moderations: a scripted Fail or Raw next in line is taken (to test
        errors); anything else stays for the next chat request, and the answer is computed."""
        if self._script and isinstance(self._script[0], Fail | Raw):
            return self._render(self._script.popleft(), body, None)
        if kind == "embeddings":
            data = wire.embeddings(body)
        else:
            data = wire.moderation(body, f"modr-fake{next(self._response_ids):08d}")
        return Response(head(200, "application/json", len(data)), (data,), delay_s=self.latency_s)

    def _next_turn(self, body: dict[str, Any]) -> Turn:
        if not self._script:
            return demo_turn(body) if self.demo else Fail(500, wire.error_body(500, "fakellm: script exhausted"))
        turn = self._script.popleft()
        if isinstance(turn, Reply | Calls | Fail | Raw):
            return turn
        try:
            turn = turn(body)
        except Exception as exc:  # a bug in a test's callable: answer, and keep it for the test
            self.errors.append(exc)
            return Fail(500, wire.error_body(500, f"fakellm: script callable raised {exc!r}"))
        if not isinstance(turn, Reply | Calls | Fail | Raw):
            self.errors.append(TypeError(f"script callable returned {turn!r}, not a turn"))
            return Fail(500, wire.error_body(500, "fakellm: script callable returned no turn"))
        return turn

    def _render(self, turn: Turn, body: dict[str, Any], deployment: str | None) -> Response:
        if isinstance(turn, Fail):
            data = turn.body if turn.body is not None else wire.error_body(turn.status)
            fail_head = head(turn.status, turn.content_type, len(data), turn.headers)
            return Response(fail_head, (data,), delay_s=turn.delay_s + self.latency_s)
        if isinstance(turn, Raw):
            length = None if turn.close else len(turn.data)
            raw_head = head(turn.status, turn.content_type, length, close=turn.close)
            return Response(raw_head, (turn.data,), close=turn.close, delay_s=turn.delay_s + self.latency_s)

        calls = len(turn.calls) if isinstance(turn, Calls) else 0
        streaming = body.get("stream") is True
        options = body.get("stream_options")
        ctx = wire.Context(
            id=f"chatcmpl-fake{next(self._response_ids):08d}",
            created=int(time.time()),
            model=body.get("model") or deployment or self.models[0],
            call_ids=[f"call_{next(self._call_ids)}" for _ in range(calls)],
            include_usage=streaming and isinstance(options, dict) and options.get("include_usage") is True,
            pieces=self.chunks,
        )
        delay = turn.delay_s + self.latency_s
        if not streaming:
            data = wire.completion(turn, ctx, self.quirks)
            return Response(head(200, "application/json", len(data)), (data,), delay_s=delay)
        q = self.quirks
        return Response(
            head(200, "text/event-stream; charset=utf-8", None, _STREAM_HEADERS, chunked=True, close=q.no_done),
            wire.stream(turn, ctx, q),
            chunked=True,
            close=q.no_done,  # without [DONE] the end of the body is the only end there is
            delay_s=delay,
            part_delay_s=turn.chunk_delay_s,
            byte_split=q.byte_split,
        )
