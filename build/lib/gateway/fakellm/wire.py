"""What the fake says on the wire: host types, quirks, and turns rendered to bytes.

Pure functions, no I/O: the server only decides when each piece goes out.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import orjson

from .script import DEFAULT_USAGE, Calls, Reply

# ---------------------------------------------------------------------------
# Host types: where each host answers, and how it says "no".


@dataclass(frozen=True, slots=True)
class HostType:
    name: str
    base: str  # appended to the origin to give FakeLLM.url, as a toolgate config holds it
    routes: Mapping[str, str]  # exact path -> "chat" | "models"
    models_body: Callable[[Sequence[str]], dict[str, Any]]
    # Azure puts the model in the path: (prefix, suffix) around the deployment name.
    deployment_path: tuple[str, str] | None = None
    required_query: str | None = None  # a chat request without it gets `not_found`
    auth_header: str = "authorization"
    auth_prefix: str = "Bearer "
    unauthorized: bytes = (
        b'{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error",'
        b'"param":null,"code":"invalid_api_key"}}'
    )

    def route(self, path: str) -> tuple[str | None, str | None]:
        """``(kind, name)`` for a path: kind is "chat", "models", "model" (one model's info,
        named), "embeddings", "moderations" or None; an Azure chat path names its deployment."""
        kind = self.routes.get(path)
        if kind is not None:
            return kind, None
        for route, name in self.routes.items():
            if name == "models" and path.startswith(route + "/") and len(path) > len(route) + 1:
                return "model", unquote(path[len(route) + 1 :])
        if self.deployment_path is None:
            return None, None
        prefix, suffix = self.deployment_path
        if path.startswith(prefix) and path.endswith(suffix):
            deployment = path[len(prefix) : len(path) - len(suffix)]
            if deployment and "/" not in deployment:
                return "chat", deployment
        return None, None


def _openai_models(models: Sequence[str]) -> dict[str, Any]:
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "fakellm"} for m in models]
    return {"object": "list", "data": data}


def _openwebui_models(models: Sequence[str]) -> dict[str, Any]:
    # Open WebUI answers a bare {"data": [...]} with its own extra keys per model.
    return {"data": [{"id": m, "name": m, "object": "model", "created": 0, "owned_by": "openai"} for m in models]}


HOST_TYPES: Mapping[str, HostType] = {
    "openai": HostType(
        "openai",
        "/v1",
        {"/v1/chat/completions": "chat", "/v1/models": "models", "/v1/embeddings": "embeddings", "/v1/moderations": "moderations"},
        _openai_models,
    ),
    # Only /api/...: a gateway that forgets to rewrite the path gets the 404 the real one sends.
    "openwebui": HostType(
        "openwebui",
        "",
        {"/api/chat/completions": "chat", "/api/models": "models"},
        _openwebui_models,
        unauthorized=b'{"detail":"Not authenticated"}',
    ),
    "ollama": HostType(
        "ollama", "", {"/v1/chat/completions": "chat", "/v1/models": "models", "/v1/embeddings": "embeddings"}, _openai_models
    ),
    "azure": HostType(
        "azure",
        "",
        {},
        _openai_models,
        deployment_path=("/openai/deployments/", "/chat/completions"),
        required_query="api-version",
        auth_header="api-key",
        auth_prefix="",
        unauthorized=(
            b'{"error":{"code":"401","message":"Access denied due to invalid subscription key or'
            b' wrong API endpoint."}}'
        ),
    ),
}

NOT_FOUND = b'{"detail":"Not Found"}'
AZURE_NOT_FOUND = b'{"error":{"code":"404","message":"Resource not found"}}'
METHOD_NOT_ALLOWED = b'{"detail":"Method Not Allowed"}'


def model_body(model: str) -> bytes:
    return orjson.dumps({"id": model, "object": "model", "created": 0, "owned_by": "fakellm"})


def embeddings(body: Mapping[str, Any]) -> bytes:
    """Deterministic vectors, one per input (a string, token list, or a list of either):
    the same input always gets the same vector; base64 (float32) when asked, as the SDKs do."""
    given = body.get("input")
    inputs = given if isinstance(given, list) and given and not isinstance(given[0], int) else [given]
    dimensions = body.get("dimensions") if isinstance(body.get("dimensions"), int) else 8
    data, tokens = [], 0
    for index, item in enumerate(inputs):
        seed = hashlib.sha256(orjson.dumps(item)).digest()
        vector = [round(seed[i % len(seed)] / 127.5 - 1.0, 4) for i in range(dimensions)]
        tokens += len(item) if isinstance(item, list) else len(str(item).split())
        value: Any = vector
        if body.get("encoding_format") == "base64":
            value = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": value})
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return orjson.dumps({"object": "list", "data": data, "model": body.get("model"), "usage": usage})


def moderation(body: Mapping[str, Any], id: str) -> bytes:
    """Nothing is ever flagged; one result per input."""
    given = body.get("input")
    count = len(given) if isinstance(given, list) else 1
    result = {"flagged": False, "categories": {"harassment": False, "violence": False}, "category_scores": {"harassment": 0.0, "violence": 0.0}}
    return orjson.dumps({"id": id, "model": body.get("model"), "results": [result] * count})


def error_body(status: int, message: str | None = None) -> bytes:
    """An OpenAI error envelope for ``status``."""
    if message is None:
        message = f"fakellm: {status} {_phrase(status)}"
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


REASONS: Mapping[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}


# ---------------------------------------------------------------------------
# Quirks: one flag each, all off by default, so the default wire is OpenAI's own.


@dataclass(frozen=True, slots=True)
class Quirks:
    """Deviations real hosts make from OpenAI's wire; each one is a flag.

    - stop_with_tools: finish_reason "stop" although tool calls are present (Ollama's OpenAI API,
      Gemini's OpenAI-compatible endpoint, several vLLM tool parsers).
    - args_object: tool-call arguments as a JSON object, not a string (adapters passing Ollama's
      native /api/chat calls through; some LiteLLM providers).
    - no_ids: tool calls without an id (older llama.cpp server builds, native-API adapters).
    - no_index: streamed tool-call deltas without index (Gemini's OpenAI-compatible endpoint).
    - whole_call: each streamed tool call whole in one chunk: id, name, all arguments (Ollama).
    - interleaved: argument fragments of parallel calls alternate by index, cut mid-token
      (parallel tool-call streams of some vLLM / SGLang parsers).
    - null_content: content null when there is no text, and omitted from stream deltas
      (Anthropic's and LiteLLM's OpenAI layers), where OpenAI sends "".
    - crlf: SSE lines end in \\r\\n (servers built on sse-starlette, its default separator).
    - comments: SSE comment lines between events (OpenRouter's ": OPENROUTER PROCESSING").
    - byte_split: the stream written in 1-7 byte pieces, cut mid-line and mid-UTF-8 character
      (any host behind a proxy or a slow link).
    - no_done: the stream ends, and the connection closes, without "data: [DONE]" (several
      OpenAI-compatible servers and proxies).
    - usage_always: the usage chunk even when stream_options did not ask for it (DeepSeek, vLLM
      with continuous usage stats).
    - extra_fields: non-standard fields: a top-level "sources" (Open WebUI, also as a first SSE
      event of its own), "provider_specific_fields", "function_call": null and "tool_calls": null
      (LiteLLM), "system_fingerprint".
    """

    stop_with_tools: bool = False
    args_object: bool = False
    no_ids: bool = False
    no_index: bool = False
    whole_call: bool = False
    interleaved: bool = False
    null_content: bool = False
    crlf: bool = False
    comments: bool = False
    byte_split: bool = False
    no_done: bool = False
    usage_always: bool = False
    extra_fields: bool = False

    @classmethod
    def of(cls, names: Iterable[str]) -> Quirks:
        names = list(names)
        unknown = sorted(set(names) - set(QUIRKS))
        if unknown:
            raise ValueError(f"unknown quirk(s) {', '.join(unknown)}; known: {', '.join(QUIRKS)}")
        return cls(**dict.fromkeys(names, True))


QUIRKS: tuple[str, ...] = tuple(f.name for f in fields(Quirks))

_SOURCES = [
    {
        "source": {"id": "fake-doc", "name": "fake.txt", "type": "file"},
        "document": ["A document the fake pretends to have retrieved."],
        "metadata": [{"source": "fake.txt"}],
    }
]
_FINGERPRINT = "fp_fakellm"
_COMMENT = b": OPENROUTER PROCESSING"
_FRAGMENT = re.compile(r"\w+|\W+")  # token-like argument fragments, as OpenAI streams them
_INTERLEAVED_FRAGMENT = 3


@dataclass(frozen=True, slots=True)
class Context:
    """What one response needs besides its turn."""

    id: str
    created: int
    model: str
    call_ids: Sequence[str] = ()
    include_usage: bool = False
    pieces: int | None = None  # chunks=N: content split into exactly N deltas


# ---------------------------------------------------------------------------
# Non-streamed: one chat.completion body.


def completion(turn: Reply | Calls, ctx: Context, q: Quirks) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": _content(turn, q), "refusal": None}
    if isinstance(turn, Reply):
        message["refusal"] = turn.refusal
        if turn.reasoning is not None:
            message["reasoning_content"] = turn.reasoning
    else:
        message["tool_calls"] = [_call(turn, i, ctx, q) for i in range(len(turn.calls))]
    choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(turn, q)}
    body: dict[str, Any] = {
        "id": ctx.id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [choice],
        "usage": dict(turn.usage or DEFAULT_USAGE),
    }
    if q.extra_fields:
        message.setdefault("tool_calls", None)
        message.update(function_call=None, provider_specific_fields={})
        choice["provider_specific_fields"] = {}
        body.update(system_fingerprint=_FINGERPRINT, sources=_SOURCES)
    return orjson.dumps(body)


def _content(turn: Reply | Calls, q: Quirks) -> str | None:
    return (turn.content or None) if q.null_content else turn.content


def _finish(turn: Reply | Calls, q: Quirks) -> str:
    if q.stop_with_tools and isinstance(turn, Calls) and turn.finish_reason == "tool_calls":
        return "stop"
    return turn.finish_reason


def _arguments(arguments: Mapping[str, Any] | str, q: Quirks) -> Any:
    if isinstance(arguments, str):
        return arguments
    return dict(arguments) if q.args_object else orjson.dumps(arguments).decode()


def _call(turn: Calls, i: int, ctx: Context, q: Quirks, *, index: bool = False) -> dict[str, Any]:
    name, arguments = turn.calls[i]
    call: dict[str, Any] = {}
    if index and not q.no_index:
        call["index"] = i
    if not q.no_ids:
        call["id"] = ctx.call_ids[i]
    call["type"] = "function"
    call["function"] = {"name": name, "arguments": _arguments(arguments, q)}
    return call


# ---------------------------------------------------------------------------
# Streamed: the SSE events, in order, each one complete ("data: ...\n\n").


def stream(turn: Reply | Calls, ctx: Context, q: Quirks) -> list[bytes]:
    sep = b"\r\n" if q.crlf else b"\n"
    base: dict[str, Any] = {
        "id": ctx.id,
        "object": "chat.completion.chunk",
        "created": ctx.created,
        "model": ctx.model,
    }
    if q.extra_fields:
        base["system_fingerprint"] = _FINGERPRINT
    if ctx.include_usage:
        base["usage"] = None  # OpenAI marks every chunk so once usage was asked for

    def event(obj: Any) -> bytes:
        return b"data: " + orjson.dumps(obj) + sep + sep

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        if q.extra_fields:
            delta = {**delta, "provider_specific_fields": None, "function_call": None}
            delta.setdefault("tool_calls", None)
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return event({**base, "choices": [choice]})

    events = []
    if q.extra_fields:
        events.append(event({"sources": _SOURCES}))
    events.append(chunk({"role": "assistant"} if q.null_content else {"role": "assistant", "content": ""}))
    if isinstance(turn, Reply) and turn.reasoning:
        events += [chunk({"reasoning_content": p}) for p in split_words(turn.reasoning, None)]
    if turn.content:
        events += [chunk({"content": p}) for p in split_words(turn.content, ctx.pieces)]
    if isinstance(turn, Reply) and turn.refusal:
        events.append(chunk({"refusal": turn.refusal}))
    if isinstance(turn, Calls):
        events += [chunk({"tool_calls": [d]}) for d in _call_deltas(turn, ctx, q)]
    events.append(chunk({}, _finish(turn, q)))
    if ctx.include_usage or q.usage_always:
        events.append(event({**base, "choices": [], "usage": dict(turn.usage or DEFAULT_USAGE)}))
    if not q.no_done:
        events.append(b"data: [DONE]" + sep + sep)
    if q.comments:
        comment = _COMMENT + sep + sep
        events = [part for e in events for part in (comment, e)]
    return events


def _call_deltas(turn: Calls, ctx: Context, q: Quirks) -> list[dict[str, Any]]:
    """The tool-call deltas, in the order this host sends them."""
    n = len(turn.calls)
    if q.whole_call or q.args_object:  # an object cannot be sent in fragments
        return [_call(turn, i, ctx, q, index=True) for i in range(n)]
    heads, fragments = [], []
    for i in range(n):
        head = _call(turn, i, ctx, q, index=True)
        arguments = head["function"]["arguments"]
        head["function"]["arguments"] = ""
        heads.append(head)
        if q.interleaved:
            size = _INTERLEAVED_FRAGMENT
            parts = [arguments[k : k + size] for k in range(0, len(arguments), size)]
        else:
            parts = _FRAGMENT.findall(arguments)
        index = {} if q.no_index else {"index": i}
        fragments.append([{**index, "function": {"arguments": p}} for p in parts])
    if q.interleaved:
        rounds = max((len(f) for f in fragments), default=0)
        return heads + [f[k] for k in range(rounds) for f in fragments if k < len(f)]
    return [delta for head, frags in zip(heads, fragments) for delta in (head, *frags)]


@lru_cache(maxsize=1024)
def split_words(text: str, pieces: int | None) -> tuple[str, ...]:
    """Content deltas: one per word (space kept in front), or exactly ``pieces`` of them.

    With ``pieces`` the words are grouped, or repeated when there are too few, so that
    many deltas really go out (the benchmark asks for 100).
    """
    words = text.split(" ")
    words = [w for w in (words[0], *(" " + w for w in words[1:])) if w]
    if not pieces or not words:
        return tuple(words)
    if len(words) < pieces:
        return tuple(words) + tuple(" " + words[i % len(words)].lstrip(" ") for i in range(len(words), pieces))
    size, extra = divmod(len(words), pieces)
    out, start = [], 0
    for i in range(pieces):
        end = start + size + (i < extra)
        out.append("".join(words[start:end]))
        start = end
    return tuple(out)
