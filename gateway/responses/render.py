"""Loop events as the Responses API: one `response` object, or its typed SSE events.

    view = ResponseView(alias="m", echo=request.echo, labels=owners)   # view.id: a new response id
    renderer = ResponsesSSE(view)          # or ResponsesJSON(view)
    outcome = await pump(send, receive, events, renderer, timing)
    renderer.response                      # the Response object as the client saw it, to store

Both renderings fold the same events into the same output items (`Items`); the
streamed one also says each step as an event with a rising `sequence_number`.
Server tool calls are `mcp_call` items, client function calls `function_call`
items, calls waiting for approval `mcp_approval_request` items; the text of a
round that ended in tool calls is a message item of its own, before its calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway import sse
from gateway.events import Delta, Event, Final, Opening, RoundUsage, ToolFinished, ToolProgress, ToolStarted
from gateway.responses.ids import Mint
from gateway.responses.params import ECHOED
from gateway.usage import add_usage


@dataclass(slots=True)
class ResponseView:
    """What the Response object says besides its output."""

    alias: str
    echo: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # offered tool name -> its source's name
    list_tools: list[dict[str, Any]] = field(default_factory=list)  # mcp_list_tools items to open with
    approvals: set[str] = field(default_factory=set)  # chat call ids that answer an approval request
    max_rounds: int = 8
    logprobs: bool = False
    created_at: float = field(default_factory=time.time)
    mint: Mint = field(default_factory=Mint)  # the response's id, and its items'

    @property
    def id(self) -> str:
        return self.mint.response_id


# The Response object's fields the request decides, as they are when the request does not say.
_ECHO_DEFAULTS: dict[str, Any] = {
    "object": "response",
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "truncation": "disabled",
    "background": False,
    **dict.fromkeys(("instructions", "temperature", "top_p", "max_output_tokens", "previous_response_id", "text", "reasoning", "user", "store", *ECHOED)),
}
_ENDED = frozenset({"completed", "incomplete", "failed"})
_TEXT_DELTA = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":%d%s%s}\n\n'


def response_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat usage, summed over the rounds, in the Responses shape."""
    if not usage:
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") or 0 if details else 0
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") or 0 if details else 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(cached), "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int(reasoning)},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def _logprobs(entries: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    out = []
    for e in entries or ():
        tops = [{"token": t.get("token", ""), "bytes": t.get("bytes") or [], "logprob": t.get("logprob", 0.0)} for t in e.get("top_logprobs") or ()]
        out.append({"token": e.get("token", ""), "bytes": e.get("bytes") or [], "logprob": e.get("logprob", 0.0), "top_logprobs": tops})
    return out


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") if p.get("type") == "text" else f"[{p.get('type', 'content')} part not shown]" for p in content)
    return "" if content is None else str(content)


def _error_code(status: int) -> str:
    # ResponseError.code is a closed list: these two are the ones a gateway can truthfully say.
    return "rate_limit_exceeded" if status == 429 else "server_error"


class Items:
    """Output items built from loop events; `emit` collects the stream events that say so."""

    def __init__(self, view: ResponseView, streamed: bool) -> None:
        self.view = view
        self.mint = view.mint
        self.streamed = streamed  # text arrives as deltas (else only in Final)
        self.items: list[dict[str, Any]] = []
        self.rounds: list[int] = []  # the round each item belongs to
        self.events = bytearray()  # encoded stream events not yet sent
        self.seq = 0
        self.message: int | None = None  # open message item
        self.reasoning: int | None = None  # open reasoning item
        self.calls: dict[str, int] = {}  # chat call id -> item index
        self.round = 0
        self.round_usage: list[dict[str, Any] | None] = []  # each upstream call's, as it came
        self.opened = False
        self.final: Final | None = None
        self.delta_tail = b""  # the open message's text-delta event, past its sequence number

    # -- events out -----------------------------------------------------------------

    def emit(self, type_: str, **fields: Any) -> None:
        # Encoded at once: the event says the item as it is now, however it changes later.
        if self.streamed:
            data = orjson.dumps({"type": type_, "sequence_number": self.seq, **fields})
            self.events += b"event: " + type_.encode() + b"\ndata: " + data + b"\n\n"
            self.seq += 1

    def emit_response(self, type_: str, encoded: bytes) -> None:
        """An event around the Response object already encoded (for the body or the store)."""
        if self.streamed:
            data = b'{"type":"%s","sequence_number":%d,"response":%s}' % (type_.encode(), self.seq, encoded)
            self.events += b"event: " + type_.encode() + b"\ndata: " + data + b"\n\n"
            self.seq += 1

    def add(self, item: dict[str, Any], round_no: int) -> int:
        index = len(self.items)
        self.items.append(item)
        self.rounds.append(round_no)
        if self.streamed:
            self.emit("response.output_item.added", output_index=index, item=item)
        return index

    def done(self, index: int) -> None:
        if self.streamed:
            self.emit("response.output_item.done", output_index=index, item=self.items[index])

    def response(self, status: str, *, output: bool = True, error: dict[str, Any] | None = None, incomplete: str | None = None) -> dict[str, Any]:
        view = self.view
        # Every echoed field (None where not sent), then what the request sent, then this response's own.
        body: dict[str, Any] = {**_ECHO_DEFAULTS, **view.echo}
        body["id"] = view.id
        body["created_at"] = int(view.created_at)  # whole seconds, as the hosted API's (typed clients want an integer)
        body["status"] = status
        body["model"] = view.alias
        body["output"] = list(self.items) if output else []
        body["error"] = error
        body["incomplete_details"] = {"reason": incomplete} if status == "incomplete" else None
        body["usage"] = response_usage(self.usage()) if output else None
        if status in _ENDED:
            body["completed_at"] = int(time.time())
        return body

    def usage(self) -> dict[str, Any] | None:
        """Summed over the rounds: the loop's own sum once it answered, else the rounds so far."""
        if self.final is not None:
            return self.final.usage
        total = None
        for usage in self.round_usage:
            total = add_usage(total, usage)
        return total

    # -- loop events in ----------------------------------------------------------------

    def open(self) -> None:
        if self.opened:
            return
        self.opened = True
        if not self.streamed:
            # Unstreamed, events say nothing: the listings are the first items, as they are.
            self.items.extend(self.view.list_tools)
            self.rounds.extend([0] * len(self.view.list_tools))
            return
        opening = orjson.dumps(self.response("in_progress", output=False))
        self.emit_response("response.created", opening)
        self.emit_response("response.in_progress", opening)
        for item in self.view.list_tools:
            index = self.add({**item, "tools": [], "error": None}, 0)
            self.emit("response.mcp_list_tools.in_progress", output_index=index, item_id=item["id"])
            self.items[index] = item
            ended = "failed" if item["error"] else "completed"
            self.emit(f"response.mcp_list_tools.{ended}", output_index=index, item_id=item["id"])
            self.done(index)

    def feed(self, event: Event | Opening) -> None:
        if not self.opened:
            self.open()
        if isinstance(event, Delta):
            if event.reasoning:
                self._reasoning(event.reasoning)
            if event.content:
                self._content(event.content, event.logprobs)
        elif isinstance(event, RoundUsage):
            self.round_usage.append(event.usage)
            self.round = event.round
        elif isinstance(event, ToolStarted):
            if self.message is not None or self.reasoning is not None:
                self._close_text()
            self._mcp_call(event)
        elif isinstance(event, ToolProgress):
            # The event type has no field for the progress itself: it says the call is alive.
            if (index := self.calls.get(event.call_id)) is not None:
                self.emit("response.mcp_call.in_progress", item_id=self.items[index]["id"], output_index=index)
        elif isinstance(event, ToolFinished):
            self._mcp_result(event)
        elif isinstance(event, Final):
            self._final(event)

    def _reasoning(self, text: str) -> None:
        if self.message is not None:
            self._close_text()
        if self.reasoning is None:
            item: dict[str, Any] = {"id": self.mint("rs"), "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": ""}], "status": "in_progress"}
            self.reasoning = self.add({**item, "content": []}, self.round + 1)
            self.items[self.reasoning] = item
            self.emit("response.content_part.added", item_id=item["id"], output_index=self.reasoning, content_index=0, part={"type": "reasoning_text", "text": ""})
        item = self.items[self.reasoning]
        item["content"][0]["text"] += text
        self.emit("response.reasoning_text.delta", item_id=item["id"], output_index=self.reasoning, content_index=0, delta=text)

    def _content(self, text: str, logprobs: list[dict[str, Any]] | None) -> None:
        if self.reasoning is not None:
            self._close_reasoning()
        if self.message is None:
            item: dict[str, Any] = {"id": self.mint("msg"), "type": "message", "role": "assistant", "status": "in_progress", "content": []}
            self.message = self.add(item, self.round + 1)
            part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            item["content"].append(part)
            self.emit("response.content_part.added", item_id=item["id"], output_index=self.message, content_index=0, part=part)
            # What every text delta of this part says besides its text and number, encoded once.
            self.delta_tail = b',"item_id":"%s","output_index":%d,"content_index":0,"logprobs":[],"delta":' % (item["id"].encode(), self.message)
        item = self.items[self.message]
        part = item["content"][0]
        part["text"] += text
        if not self.view.logprobs:
            # The one event per token: a template and the text, not a dict to encode.
            if self.streamed:
                self.events += _TEXT_DELTA % (self.seq, self.delta_tail, orjson.dumps(text))
                self.seq += 1
            return
        lp = _logprobs(logprobs)
        part["logprobs"].extend(lp)
        self.emit("response.output_text.delta", item_id=item["id"], output_index=self.message, content_index=0, delta=text, logprobs=[{k: v for k, v in e.items() if k != "bytes"} for e in lp])

    def _close_reasoning(self) -> None:
        index, self.reasoning = self.reasoning, None
        if index is None:
            return
        item = self.items[index]
        item["status"] = "completed"
        text = item["content"][0]["text"]
        self.emit("response.reasoning_text.done", item_id=item["id"], output_index=index, content_index=0, text=text)
        self.emit("response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=item["content"][0])
        self.done(index)

    def _close_text(self, refusal: str | None = None) -> None:
        self._close_reasoning()
        index = self.message
        if index is None:
            return
        self.message = None
        item = self.items[index]
        part = item["content"][0]
        if self.streamed:
            lp = [{k: v for k, v in e.items() if k != "bytes"} for e in part["logprobs"]]
            self.emit("response.output_text.done", item_id=item["id"], output_index=index, content_index=0, text=part["text"], logprobs=lp)
            self.emit("response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part)
        if refusal:
            self._refusal(index, refusal)
        item["status"] = "completed"
        self.done(index)

    def _refusal(self, index: int, refusal: str) -> None:
        item = self.items[index]
        content_index = len(item["content"])
        part = {"type": "refusal", "refusal": ""}
        item["content"].append(part)
        self.emit("response.content_part.added", item_id=item["id"], output_index=index, content_index=content_index, part=part)
        part["refusal"] = refusal
        self.emit("response.refusal.delta", item_id=item["id"], output_index=index, content_index=content_index, delta=refusal)
        self.emit("response.refusal.done", item_id=item["id"], output_index=index, content_index=content_index, refusal=refusal)
        self.emit("response.content_part.done", item_id=item["id"], output_index=index, content_index=content_index, part=part)

    def _label(self, name: str) -> str:
        return self.view.labels.get(name, "toolgate")

    def _mcp_call(self, event: ToolStarted) -> None:
        item: dict[str, Any] = {
            "id": self.mint("mcp"),
            "type": "mcp_call",
            "server_label": self._label(event.name),
            "name": event.name,
            "arguments": "",
            "output": None,
            "error": None,
            "status": "in_progress",
        }
        if event.call_id in self.view.approvals:
            item["approval_request_id"] = event.call_id
        index = self.calls[event.call_id] = self.add(item, event.round)
        item["arguments"] = event.arguments
        if self.streamed:
            self.emit("response.mcp_call_arguments.delta", item_id=item["id"], output_index=index, delta=event.arguments)
            self.emit("response.mcp_call_arguments.done", item_id=item["id"], output_index=index, arguments=event.arguments)
            self.emit("response.mcp_call.in_progress", item_id=item["id"], output_index=index)

    def _mcp_result(self, event: ToolFinished) -> None:
        index = self.calls.get(event.call_id)
        if index is None:
            return
        item = self.items[index]
        text = _text(event.content)
        if event.outcome == "ok":
            item["output"], item["status"] = text, "completed"
        else:
            # As the hosted API's McpToolCallError: what the tool said, as MCP content.
            item["error"] = {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": text}]}
            item["status"] = "failed"
        if self.streamed:
            self.emit(f"response.mcp_call.{item['status']}", item_id=item["id"], output_index=index)
            self.done(index)

    def _final(self, final: Final) -> None:
        self.final = final
        message = final.message
        refusal = message.get("refusal") if self.streamed else None
        if not self.streamed:
            self._unstreamed_text(final)
        if self.message is None and refusal:
            # A refusal and no text: a message of the refusal part alone, as unstreamed.
            self._close_reasoning()
            item: dict[str, Any] = {"id": self.mint("msg"), "type": "message", "role": "assistant", "status": "in_progress", "content": []}
            index = self.add(item, final.rounds)
            self._refusal(index, refusal)
            item["status"] = "completed"
            self.done(index)
        else:
            self._close_text(refusal)
        for call in final.client_tool_calls or ():
            function = call["function"]
            item = {"id": self.mint("fc"), "type": "function_call", "call_id": call["id"], "name": function["name"], "arguments": "", "status": "in_progress"}
            index = self.add(item, final.rounds)
            item["arguments"], item["status"] = function["arguments"], "completed"
            self.emit("response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=function["arguments"])
            self.emit("response.function_call_arguments.done", item_id=item["id"], output_index=index, arguments=function["arguments"])
            self.done(index)
        for call in final.approval_requests or ():
            function = call["function"]
            item = {"id": self.mint("mcpr"), "type": "mcp_approval_request", "server_label": self._label(function["name"]), "name": function["name"], "arguments": function["arguments"]}
            self.done(self.add(item, final.rounds))

    def _unstreamed_text(self, final: Final) -> None:
        """Non-streamed, a round's text is known only at the end: put it before that round's calls."""
        message = final.message
        text = message.get("content") or ""
        if type(text) is str and text and len(message) == 2 and not final.client_tool_calls and not final.approval_requests and not self.view.logprobs:
            # The plain answer (a role and its text, no calls handed back): one message item, last.
            part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            self.items.append({"id": self.mint("msg"), "type": "message", "role": "assistant", "status": "completed", "content": [part]})
            self.rounds.append(final.rounds)
            return
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        at = len(self.items)
        if final.client_tool_calls or final.approval_requests:
            # This round ended in calls handed back: its text goes before the calls it ran.
            at = next((i for i, r in enumerate(self.rounds) if r >= final.rounds and self.items[i]["type"] == "mcp_call"), at)
        new = []
        if isinstance(reasoning, str) and reasoning:
            new.append({"id": self.mint("rs"), "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": reasoning}], "status": "completed"})
        if text or message.get("refusal"):
            part = {"type": "output_text", "text": _text(text), "annotations": message.get("annotations") or [], "logprobs": []}
            if self.view.logprobs and final.logprobs:
                part["logprobs"] = _logprobs(final.logprobs.get("content"))
            content: list[dict[str, Any]] = [part] if text else []
            if message.get("refusal"):
                content.append({"type": "refusal", "refusal": message["refusal"]})
            new.append({"id": self.mint("msg"), "type": "message", "role": "assistant", "status": "completed", "content": content})
        self.items[at:at] = new
        self.rounds[at:at] = [final.rounds] * len(new)
        self.calls = {k: (v + len(new) if v >= at else v) for k, v in self.calls.items()}

    # -- the end ---------------------------------------------------------------------

    def ending(self) -> tuple[str, str | None]:
        final = self.final
        assert final is not None
        if final.finish_reason == "length":
            return "incomplete", "max_output_tokens"
        if final.finish_reason == "content_filter":
            return "incomplete", "content_filter"
        if final.finish_reason != "tool_calls" and final.rounds >= self.view.max_rounds > 0:
            return "incomplete", None  # the round cap: the model answered without its tools
        return "completed", None

    def failed(self, error: bytes, status: int) -> dict[str, Any]:
        for index in (self.reasoning, self.message):
            if index is not None:
                self.items[index]["status"] = "incomplete"
        for item in self.items:
            if item.get("status") == "in_progress":
                item["status"] = "incomplete" if item["type"] != "mcp_call" else "failed"
        body = orjson.loads(error).get("error") or {}
        problem = {"code": _error_code(status), "message": str(body.get("message") or "The request failed.")}
        return self.response("failed", error=problem)


_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def _status_of(error: bytes) -> int:
    # The error body carries no status; its code says enough for the two we tell apart.
    code = (orjson.loads(error).get("error") or {}).get("code")
    return 429 if code == "rate_limit_exceeded" else 500


class ResponsesJSON:
    """The finished response as one JSON body."""

    streaming = False
    keepalive = b""

    def __init__(self, view: ResponseView) -> None:
        self.items = Items(view, streamed=False)
        self.response: dict[str, Any] | None = None
        self.encoded = b""  # the response as sent: the store keeps these bytes

    def feed(self, event: Event) -> bytes:
        self.items.feed(event)
        if not isinstance(event, Final):
            return b""
        status, reason = self.items.ending()
        self.response = self.items.response(status, incomplete=reason)
        self.encoded = orjson.dumps(self.response)
        return self.encoded

    def headers(self) -> list[tuple[bytes, bytes]]:
        final = self.items.final
        assert final is not None
        return [
            *_JSON_HEADERS,
            (b"content-length", b"%d" % len(self.encoded)),
            (b"x-toolgate-rounds", b"%d" % final.rounds),
            (b"x-toolgate-tool-calls", b"%d" % final.tool_calls),
        ]

    def failure(self, error: bytes) -> bytes:
        return error


class ResponsesSSE:
    """The response as its typed events: `event: <type>` and `data: <json>` per event."""

    streaming = True
    keepalive = sse.KEEPALIVE

    def __init__(self, view: ResponseView) -> None:
        self.items = Items(view, streamed=True)
        self.response: dict[str, Any] | None = None
        self.encoded = b""  # the response of the last event, encoded once for the event and the store

    def headers(self) -> list[tuple[bytes, bytes]]:
        return _SSE_HEADERS

    def feed(self, event: Event | Opening) -> bytes:
        # The pump may feed events before `Opening`: the first event opens the stream either way.
        self.items.feed(event)
        if isinstance(event, Final):
            status, reason = self.items.ending()
            self.response = self.items.response(status, incomplete=reason)
            self.encoded = orjson.dumps(self.response)
            self.items.emit_response(f"response.{status}", self.encoded)
        return self._flush()

    def failure(self, error: bytes) -> bytes:
        body = orjson.loads(error).get("error") or {}
        self.items.open()
        self.items.emit("error", code=body.get("code"), message=str(body.get("message") or "The request failed."), param=body.get("param"))
        self.response = self.items.failed(error, _status_of(error))
        self.encoded = orjson.dumps(self.response)
        self.items.emit_response("response.failed", self.encoded)
        return self._flush()

    def _flush(self) -> bytes:
        events = bytes(self.items.events)
        self.items.events.clear()
        return events
