"""Ollama's native chat API (`POST /api/chat`): NDJSON lines, arguments as objects, its own usage.

    model = OllamaChat(client, job)
    async for part in model.turn(messages, tools, params): ...   # Delta ..., then one Turn

Request: OpenAI sampling parameters go under `options` (`max_tokens` is
`num_predict`), a tool call's arguments are an object, a tool reply names its
tool (`tool_name`), image parts become base64 `images`. Reply: one JSON object
per line, each with a piece of `message`; the last says `done`, with
`prompt_eval_count` and `eval_count`. The same object, whole, when not streamed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from gateway.errors import UpstreamError
from gateway.events import Delta
from gateway.model import ModelJob, Turn, TurnParts, assistant_message, new_call_id, once
from gateway.upstream import Framing

if TYPE_CHECKING:
    from gateway.upstream import UpstreamClient


class LineDecoder:
    """NDJSON framing: bytes in, complete non-empty lines out."""

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        lines = (self._rest + chunk).split(b"\n")
        self._rest = lines.pop()
        return [line for line in lines if line.strip()]

    def close(self) -> list[bytes]:
        rest, self._rest = self._rest, b""
        return [rest] if rest.strip() else []


NDJSON = Framing("application/x-ndjson", LineDecoder, None, "a stream of JSON lines")

# OpenAI parameter -> Ollama option. What is not here and not a top-level key is not sent.
_OPTIONS = {
    "temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop",
    "max_tokens": "num_predict", "max_completion_tokens": "num_predict",
    "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
    "top_k": "top_k", "min_p": "min_p", "typical_p": "typical_p", "num_ctx": "num_ctx",
    "repeat_penalty": "repeat_penalty", "repetition_penalty": "repeat_penalty",
}  # fmt: skip


class OllamaChat:
    __slots__ = ("client", "job")

    def __init__(self, client: UpstreamClient, job: ModelJob) -> None:
        self.client = client
        self.job = job

    def payload(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        names: dict[str, str] = {}  # tool-call id -> name, for the replies' tool_name
        body: dict[str, Any] = {"model": self.job.model, "messages": [_message(m, names) for m in messages], "stream": self.job.stream}
        if tools and params.get("tool_choice") != "none":  # Ollama has no tool_choice: no tools is "none"
            body["tools"] = tools
        options = {_OPTIONS[k]: v for k, v in params.items() if k in _OPTIONS}
        if options:
            body["options"] = options
        fmt = params.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
            body["format"] = (fmt.get("json_schema") or {}).get("schema") or "json"
        return body

    def turn(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], params: dict[str, Any]) -> TurnParts:
        job = self.job
        body = self.payload(messages, tools, params)
        if job.stream:
            return self.client.stream(job.upstream, body, fold=Lines(), framing=NDJSON, request_id=job.request_id, client_auth=job.client_auth, patience=job.patience)
        return once(self._complete(body))

    async def _complete(self, body: dict[str, Any]) -> Turn:
        job = self.job
        fold = Lines()
        fold.feed_many([await self.client.complete(job.upstream, body, request_id=job.request_id, client_auth=job.client_auth)])
        return fold.finish()


def _message(raw: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    content = raw.get("content")
    message: dict[str, Any] = {"role": raw["role"], "content": content if isinstance(content, str) else ""}
    if isinstance(content, list):
        message["content"] = "".join(p.get("text", "") for p in content if p.get("type") == "text")
        images = [p["image_url"]["url"].partition("base64,")[2] for p in content if p.get("type") == "image_url"]
        if any(images):
            message["images"] = [i for i in images if i]
    for call in raw.get("tool_calls") or ():
        function = call["function"]
        names[call["id"]] = function["name"]
        try:
            arguments = orjson.loads(function["arguments"] or "{}")
        except orjson.JSONDecodeError:
            arguments = {}  # the gateway answered that call with an error already
        message.setdefault("tool_calls", []).append({"function": {"name": function["name"], "arguments": arguments}})
    if raw["role"] == "tool" and raw.get("tool_call_id") in names:
        message["tool_name"] = names[raw["tool_call_id"]]
    return message


class Lines:
    """Folds Ollama's reply objects into Deltas and one Turn."""

    __slots__ = ("content", "thinking", "calls", "usage", "finish_reason", "done")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.thinking: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.usage: dict[str, Any] | None = None
        self.finish_reason = "stop"
        self.done = False

    def feed_many(self, pieces: list[Any]) -> Delta | None:
        content, thinking = [], []
        for piece in pieces:
            if not isinstance(piece, dict) or piece.get("error"):
                problem = piece.get("error") if isinstance(piece, dict) else "something that is not an object"
                raise UpstreamError(f"The upstream failed mid-stream: {problem}")
            message = piece.get("message") or {}
            if not isinstance(message, dict):
                raise UpstreamError("The upstream sent a malformed message.")
            if isinstance(message.get("content"), str) and message["content"]:
                content.append(message["content"])
            if isinstance(message.get("thinking"), str) and message["thinking"]:
                thinking.append(message["thinking"])
            for call in message.get("tool_calls") or ():  # Ollama sends each call whole
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    raise UpstreamError("The upstream sent a malformed tool call.")
                arguments = function.get("arguments")
                text = arguments if isinstance(arguments, str) else orjson.dumps(arguments or {}).decode()
                self.calls.append({"id": new_call_id(), "type": "function", "function": {"name": function["name"], "arguments": text}})
            if piece.get("done"):
                self.done = True
                self.finish_reason = "length" if piece.get("done_reason") == "length" else "stop"
                prompt, completion = piece.get("prompt_eval_count"), piece.get("eval_count")
                if isinstance(prompt, int) or isinstance(completion, int):
                    prompt, completion = prompt or 0, completion or 0
                    self.usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        self.content += content
        self.thinking += thinking
        if content or thinking:
            return Delta("".join(content) or None, "".join(thinking) or None)
        return None

    def finish(self) -> Turn:
        if not self.done:
            raise UpstreamError("The upstream stream ended before its last line (done): the answer is truncated.")
        finish = "tool_calls" if self.calls and self.finish_reason == "stop" else self.finish_reason
        message = assistant_message("".join(self.content), self.calls, None, "".join(self.thinking) or None)
        return Turn(message, finish, self.usage)
