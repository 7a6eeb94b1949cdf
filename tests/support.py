"""Shared helpers for the in-process tests: a scripted upstream behind httpx.MockTransport."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, ClassVar

import httpx
import orjson

from gateway.app import create_app
from gateway.config import Settings, settings_from_dict

BASE = {
    "upstreams": {"default": {"url": "http://upstream.test/v1"}},
    "models": [{"name": "m", "upstream_model": "up-model", "tools": ["calculate", "current_time", "echo*"]}],
    "tools": {"builtin": {"calculate": {}, "current_time": {}}},
}


def settings(extra: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Settings:
    raw = orjson.loads(orjson.dumps(BASE))
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key].update(value)
        else:
            raw[key] = value
    return settings_from_dict(raw, environ or {})


def call(name: str, arguments: Any, id: str = "call_1") -> dict[str, Any]:
    args = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
    return {"id": id, "type": "function", "function": {"name": name, "arguments": args}}


def completion(content: str | None = "", *, tool_calls: list | None = None, finish: str | None = None, usage: dict | None = None) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-up",
        "object": "chat.completion",
        "created": 1,
        "model": "up-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish or ("tool_calls" if tool_calls else "stop")}],
        "usage": usage or {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
    }


def sse_body(*chunks: dict | bytes, done: bool = True) -> bytes:
    out = b"".join(c if isinstance(c, bytes) else b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
    return out + (b"data: [DONE]\n\n" if done else b"")


def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None) -> dict:
    choices = [] if delta is None and finish is None else [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    out: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up-model", "choices": choices}
    if usage:
        out["usage"] = usage
    return out


class ScriptedUpstream:
    """An httpx.MockTransport handler: pops scripted replies, records every request.

    Like `FakeLLM`, a test fails at teardown when replies it scripted were never requested
    (tests/conftest.py; opt out with ``@pytest.mark.fakellm(assert_all_used=False)``)."""

    watchers: ClassVar[list[list[ScriptedUpstream]]] = []

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []
        for watcher in ScriptedUpstream.watchers:
            watcher.append(self)

    @property
    def unused(self) -> tuple[Any, ...]:
        return tuple(self.replies)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.content) for r in self.requests]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":  # the gateway's reachability probe of the models path
            return httpx.Response(200, json={"object": "list", "data": []})
        self.requests.append(request)
        assert self.replies, f"unexpected upstream call #{len(self.requests)}"
        reply = self.replies.pop(0)
        if callable(reply):
            reply = reply(request)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, httpx.Response):
            return reply
        if isinstance(reply, bytes):
            return httpx.Response(200, content=reply, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=reply)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


@asynccontextmanager
async def gateway(config: Settings, upstream: ScriptedUpstream | httpx.AsyncBaseTransport):
    transport = upstream.transport() if isinstance(upstream, ScriptedUpstream) else upstream
    app = create_app(config, transport=transport)
    async with app.router.lifespan_context(app):
        await app.state.runtime.starting
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://toolgate.test") as client:
            yield client


_HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode = WAL")
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
"""


@contextmanager
def write_locked_elsewhere(path: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Another process (as another worker migrating the file) holds the SQLite file's write
    lock for `seconds` from when the block starts; the block's end waits for it to finish."""
    with subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
            yield holder
        finally:
            holder.wait(seconds + 10)


def sse_events(text: str) -> list[Any]:
    """Parsed `data:` payloads of an SSE body ([DONE] kept as the string)."""
    out = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                payload = line[6:]
                out.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return out
