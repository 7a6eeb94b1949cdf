"""The OpenAI Chat codec's folding: a reply, whole or streamed, into one normalised assistant turn.

Host quirks end here: `arguments` sent as an object, missing tool-call ids,
streamed tool-call deltas without `index`, a call sent whole in one chunk,
`content: null` versus `""`. Nothing past this module sees them.

    asm = StreamAssembler()
    for chunk in chunks:            # parsed `chat.completion.chunk` objects
        delta = asm.feed(chunk)     # Delta to forward, or None (feed_many: a list of them)
    turn = asm.finish()
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import UpstreamError
from gateway.events import Delta
from gateway.model import Turn, assistant_message, new_call_id


def _text(value: Any, what: str) -> str | None:
    """A text field as the host sent it: a string, null, or (some hosts) a list of text parts."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        return "".join(p["text"] for p in value if isinstance(p.get("text"), str))
    raise UpstreamError(f"The upstream sent a malformed {what}.")


def _usage(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) and value else None


def _arguments(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _function(raw: dict[str, Any]) -> dict[str, Any]:
    function = raw.get("function") or {}
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(function, dict) or not isinstance(name, (str, type(None))):
        raise UpstreamError("The upstream sent a malformed tool call.")
    return function


def _tool_call(raw: dict[str, Any]) -> dict[str, Any]:
    function = _function(raw)
    call_id = raw.get("id")
    return {
        "id": call_id if isinstance(call_id, str) and call_id else new_call_id(),
        "type": "function",
        "function": {"name": function.get("name") or "", "arguments": _arguments(function.get("arguments"))},
    }


def _first_choice(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise UpstreamError("The upstream answered with something that is not a chat completion.")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamError("The upstream answer has no choices.")
    return choices[0]


def turn_from_completion(body: Any) -> Turn:
    """A whole `chat.completion` body as a Turn."""
    choice = _first_choice(body)
    raw = choice.get("message")
    if not isinstance(raw, dict):
        raise UpstreamError("The upstream answer has no message.")
    raw_calls = raw.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise UpstreamError("The upstream sent a malformed tool call.")
    calls = [_tool_call(c) for c in raw_calls if isinstance(c, dict)]
    reasoning = _text(raw.get("reasoning_content") or raw.get("reasoning"), "reasoning")
    message = assistant_message(_text(raw.get("content"), "content"), calls, _text(raw.get("refusal"), "refusal"), reasoning)
    # Output the client asked for and the gateway does not touch: citations, spoken audio.
    if isinstance(raw.get("annotations"), list) and raw["annotations"]:
        message["annotations"] = raw["annotations"]
    if isinstance(raw.get("audio"), dict):
        message["audio"] = raw["audio"]
    finish = choice.get("finish_reason")
    logprobs = choice.get("logprobs")
    return Turn(message, finish if isinstance(finish, str) and finish else "stop", _usage(body.get("usage")), logprobs if isinstance(logprobs, dict) else None)


class _Text:
    """Streamed text held compactly: every 8 pieces are joined into one block, and a block is
    merged into the one before it once it is as long, so a long answer is a few strs (about
    log2 of its length) and at most 7 loose pieces, not one small str per token (~55 bytes
    each); each character is copied O(log n) times (a binary counter's merges)."""

    __slots__ = ("blocks", "pieces")

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.pieces: list[str] = []

    def add(self, text: str) -> None:
        pieces = self.pieces
        pieces.append(text)
        if len(pieces) >= 8:
            blocks = self.blocks
            blocks.append("".join(pieces))
            pieces.clear()
            while len(blocks) > 1 and len(blocks[-1]) >= len(blocks[-2]):
                last = blocks.pop()
                blocks[-1] += last

    def value(self) -> str | None:
        return "".join(self.blocks) + "".join(self.pieces) or None


# The keys of a delta that carries only text.
_PLAIN = frozenset({"content", "role", "reasoning_content", "reasoning"})


class StreamAssembler:
    """Gathers streamed deltas; content is handed back at once, tool calls kept."""

    __slots__ = (
        "_content", "_reasoning", "_refusal", "_calls", "_ids", "_indexes", "_last", "finish_reason", "usage",
        "answered", "_max_repeats", "_repeat", "_repeats", "_annotations",
    )  # fmt: skip

    def __init__(self, *, max_repeats: int = 0) -> None:
        self._content = _Text()
        self._reasoning = _Text()
        self._refusal: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}  # in order of first fragment
        self._ids: dict[str, int] = {}  # tool-call id -> its call
        self._indexes: dict[Any, int] = {}  # streamed `index` -> the call it last named
        self._last: int | None = None  # the call the last fragment belonged to
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.answered = False  # a chunk with a choice came
        self._annotations: list[Any] = []
        # A model stuck repeating one piece streams until its token limit: stop it sooner.
        self._max_repeats = max_repeats
        self._repeat: str | None = None
        self._repeats = 0

    def feed(self, chunk: Any) -> Delta | None:
        piece = self._read(chunk)
        if piece is None:
            return None
        content, reasoning, tokens = piece
        if content:
            self._content.add(content)
        if reasoning:
            self._reasoning.add(reasoning)
        return Delta(content, reasoning, tokens)

    def _read(self, chunk: Any) -> tuple[str | None, str | None, list[Any] | None] | None:
        """One chunk's text (content, reasoning, logprob tokens), or None; the rest of it folded in."""
        # The hot path of every stream: a content-only delta touches five keys and no helper.
        if type(chunk) is not dict:
            raise UpstreamError("The upstream stream carried something that is not a chunk.")
        choices = chunk.get("choices")
        if chunk.get("error") and not choices:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise UpstreamError(f"The upstream failed mid-stream: {message}")
        usage = chunk.get("usage")
        if usage and type(usage) is dict:
            self.usage = usage
        if not choices:
            return None
        choice: Any = choices[0] if type(choices) is list else None  # a JSON value, checked next
        delta = (choice.get("delta") or choice.get("message") or {}) if type(choice) is dict else None
        if type(delta) is not dict:
            raise UpstreamError("The upstream stream carried a malformed chunk.")
        self.answered = True
        finish = choice.get("finish_reason")
        if finish and type(finish) is str:
            self.finish_reason = finish
        if not _PLAIN.issuperset(delta):
            self._rare(delta)
        content = delta.get("content")
        if content is not None and type(content) is not str:
            content = _text(content, "content")
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning is not None and type(reasoning) is not str:
            reasoning = _text(reasoning, "reasoning")
        if content:
            if content == self._repeat:
                self._repeats += 1
                if self._max_repeats and self._repeats >= self._max_repeats:
                    raise UpstreamError(f"The model repeated the same output {self._repeats} times in a row; the stream was stopped.", code="runaway_output")
            else:
                self._repeat, self._repeats = content, 1
        if content or reasoning:
            logprobs = choice.get("logprobs")
            tokens = logprobs.get("content") if type(logprobs) is dict else None
            return content or None, reasoning or None, tokens if type(tokens) is list else None
        return None

    def _rare(self, delta: dict[str, Any]) -> None:
        """The parts of a delta besides its text: tool calls, refusal, annotations."""
        calls = delta.get("tool_calls") or []
        if not isinstance(calls, list):
            raise UpstreamError("The upstream sent a malformed tool call.")
        for call in calls:
            if isinstance(call, dict):
                self._fold_call(call)
        if isinstance(delta.get("annotations"), list):
            self._annotations += delta["annotations"]
        refusal = _text(delta.get("refusal"), "refusal")
        if refusal:
            self._refusal.append(refusal)

    def feed_many(self, chunks: list[Any]) -> Delta | None:
        """Chunks that arrived together, as one Delta: one event per network read, not per chunk
        (and their text kept as one piece: no Delta, no append per chunk)."""
        if len(chunks) == 1:
            return self.feed(chunks[0])
        content: list[str] = []
        reasoning: list[str] = []
        logprobs: list[dict[str, Any]] | None = None
        for chunk in chunks:
            piece = self._read(chunk)
            if piece is not None:
                if piece[0]:
                    content.append(piece[0])
                if piece[1]:
                    reasoning.append(piece[1])
                if piece[2] is not None:
                    logprobs = [*(logprobs or ()), *piece[2]]
        if not (content or reasoning):
            return None
        text = "".join(content) or None
        thought = "".join(reasoning) or None
        if text:
            self._content.add(text)
        if thought:
            self._reasoning.add(thought)
        return Delta(text, thought, logprobs)

    def _fold_call(self, raw: dict[str, Any]) -> None:
        # A known id names its call (vLLM repeats it in every fragment); else the
        # index does, unless it already holds a call with another id (Ollama and
        # some Qwen/DeepSeek hosts send every call of a turn as index 0). Without
        # either, a fragment continues the last call (hosts that omit `index`).
        function = _function(raw)
        call_id, index = raw.get("id") or None, raw.get("index")
        if not isinstance(call_id, (str, type(None))):
            raise UpstreamError("The upstream sent a malformed tool call.")
        key = self._ids.get(call_id) if call_id else None
        if key is None and index is not None:
            key = self._indexes.get(index)
            if key is not None and call_id and self._calls[key]["id"] not in (None, call_id):
                key = None
        if key is None and call_id is None and index is None:
            key = self._last
        if key is None:
            key = len(self._calls)
            self._calls[key] = {"id": None, "name": "", "arguments": []}
        call = self._calls[key]
        if index is not None:
            self._indexes[index] = key
        if call_id:
            self._ids[call_id] = key
            call["id"] = call["id"] or call_id
        name = function.get("name")
        if name:
            call["name"] += name if call["name"] != name else ""
        if "arguments" in function:
            call["arguments"].append(_arguments(function["arguments"]))
        self._last = key

    def finish(self) -> Turn:
        if not self.answered:
            raise UpstreamError("The upstream stream ended without an answer (no choices).")
        calls = [
            {
                "id": call["id"] or new_call_id(),
                "type": "function",
                "function": {"name": call["name"], "arguments": "".join(call["arguments"])},
            }
            for call in self._calls.values()
        ]
        message = assistant_message(
            self._content.value(),
            calls,
            "".join(self._refusal) or None,
            self._reasoning.value(),
        )
        if self._annotations:
            message["annotations"] = self._annotations
        return Turn(message, self.finish_reason or "stop", self.usage)
