"""Loop events as Chat Completions: one `chat.completion` body, or `chat.completion.chunk` SSE.

    renderer = ChatSSE(ChatView(alias="m", include_usage=True))   # or ChatJSON(view)
    outcome = await pump(send, receive, events, renderer, timing)

Renderers only turn events into bytes; time, status and liveness are the pump's.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import orjson

from gateway import sse
from gateway.events import Delta, Event, Final, Opening, RoundUsage, ToolFinished, ToolProgress, ToolStarted


@dataclass(slots=True)
class ChatView:
    """How the client asked to see the answer."""

    alias: str
    trace: bool = False
    include_usage: bool = False
    progress: bool = False


def completion_id() -> str:
    return f"chatcmpl-{random.getrandbits(96):024x}"


def loop_facts(final: Final) -> dict[str, Any]:
    return {"rounds": final.rounds, "tool_calls": final.tool_calls, "tools": final.trace}


class ChatJSON:
    """The final answer as one `chat.completion` body."""

    __slots__ = ("view", "_length", "_final")
    streaming = False
    keepalive = b""

    def __init__(self, view: ChatView) -> None:
        self.view = view
        self._length = 0
        self._final: Final | None = None

    def feed(self, event: Event) -> bytes:
        if not isinstance(event, Final):
            return b""
        self._final = event
        choice: dict[str, Any] = {"index": 0, "message": event.message, "finish_reason": event.finish_reason, "logprobs": event.logprobs}
        body: dict[str, Any] = {
            "id": completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.view.alias,
            "choices": [choice],
        }
        if event.usage is not None:
            body["usage"] = event.usage
        if self.view.trace:
            body["toolgate"] = loop_facts(event)
        payload = orjson.dumps(body)
        self._length = len(payload)
        return payload

    def headers(self) -> list[tuple[bytes, bytes]]:
        final = self._final
        assert final is not None
        return [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % self._length),
            (b"x-toolgate-rounds", b"%d" % final.rounds),
            (b"x-toolgate-tool-calls", b"%d" % final.tool_calls),
        ]

    def failure(self, error: bytes) -> bytes:
        return error


_DELTA_HEAD = b',"choices":[{"index":0,"delta":'
_OPEN_TAIL = b',"logprobs":null,"finish_reason":null}]}\n\n'
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class ChatSSE:
    """`chat.completion.chunk` events, encoded from a template made once per response."""

    __slots__ = ("view", "_spoke", "_fresh", "_head")
    streaming = True
    keepalive = sse.KEEPALIVE

    def __init__(self, view: ChatView) -> None:
        self.view = view
        self._spoke = False  # content went out in an earlier round
        self._fresh = True  # no content yet in this round
        head = orjson.dumps({"id": completion_id(), "object": "chat.completion.chunk", "created": int(time.time()), "model": view.alias})
        self._head = b"data: " + head[:-1] + _DELTA_HEAD  # the usage event's head is made from it, once, at the end

    def headers(self) -> list[tuple[bytes, bytes]]:
        return _SSE_HEADERS

    def feed(self, event: Any) -> bytes:
        if isinstance(event, Delta):
            if event.content and self._fresh:
                self._fresh = False
                if self._spoke:
                    # Text from a round before the tools ran, then this round's: keep them apart.
                    event = Delta("\n\n" + event.content, event.reasoning, event.logprobs)
            if event.logprobs is not None:
                delta = {k: v for k, v in (("content", event.content), ("reasoning_content", event.reasoning)) if v}
                return self._delta(delta, logprobs={"content": event.logprobs})
            if event.reasoning is None:
                return self._head + b'{"content":' + orjson.dumps(event.content) + b"}" + _OPEN_TAIL
            return self._delta({k: v for k, v in (("content", event.content), ("reasoning_content", event.reasoning)) if v})
        if isinstance(event, RoundUsage):
            self._spoke |= not self._fresh
            self._fresh = True
            return b""
        if isinstance(event, (ToolStarted, ToolProgress, ToolFinished)):
            return self._delta({"reasoning_content": _progress_text(event)}) if self.view.progress else b""
        if isinstance(event, Final):
            return self._closing(event)
        if isinstance(event, Opening):
            return self._delta({"role": "assistant", "content": ""})
        return b""

    def failure(self, error: bytes) -> bytes:
        return sse.data(error) + sse.DONE

    def _delta(self, delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None) -> bytes:
        if finish_reason is None and logprobs is None:
            return self._head + orjson.dumps(delta) + _OPEN_TAIL
        tail = b',"logprobs":' + orjson.dumps(logprobs) + b',"finish_reason":' + orjson.dumps(finish_reason) + b"}]}\n\n"
        return self._head + orjson.dumps(delta) + tail

    def _usage(self, usage: dict[str, Any] | None, extra: dict[str, Any] | None = None) -> bytes:
        tail = b"" if extra is None else b',"toolgate":' + orjson.dumps(extra)
        return self._head[: -len(_DELTA_HEAD)] + b',"choices":[],"usage":' + orjson.dumps(usage) + tail + b"}\n\n"

    def _closing(self, final: Final) -> bytes:
        out = b""
        message = final.message
        if message.get("refusal"):
            out += self._delta({"refusal": message["refusal"]})
        if message.get("annotations"):
            out += self._delta({"annotations": message["annotations"]})
        if final.client_tool_calls:
            calls = [{"index": i, **call} for i, call in enumerate(final.client_tool_calls)]
            out += self._delta({"tool_calls": calls})
        out += self._delta({}, final.finish_reason)
        facts = loop_facts(final) if self.view.trace else None
        if self.view.include_usage and final.usage is not None:
            out += self._usage(final.usage, facts)
        elif facts is not None:
            out += self._usage(None, facts)
        return out + sse.DONE


def _progress_text(event: ToolStarted | ToolProgress | ToolFinished) -> str:
    if isinstance(event, ToolStarted):
        args = event.arguments if len(event.arguments) <= 120 else event.arguments[:117] + "..."
        return f"Calling {event.name}({args})\n"
    if isinstance(event, ToolProgress):
        done = f"{event.progress:g}/{event.total:g}" if event.total else f"{event.progress:g}"
        return f"{event.name}: {done}{f' {event.message}' if event.message else ''}\n"
    return f"{event.name}: {event.outcome} in {event.duration_s * 1000:.0f} ms\n"
