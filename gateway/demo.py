"""The demo model of `toolgate serve --demo`: an OpenAI Chat host in this process, no LLM.

    settings = demo.settings(settings)       # the default upstream at URL
    app = create_app(settings, demo=True)    # its transport: DemoTransport(aiohttp's)

It stands where aiohttp does (`transports.Transport`), so every request runs the real gateway
(codec, upstream client, tool loop, both renderings) and only the model's bytes are made up:
it calls `calculate` for arithmetic and `current_time` for a question about the time (when the
request offers them), answers from the results after a tool round, and else echoes the user.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from gateway.config import Settings
from gateway.errors import ReplyTooLarge
from gateway.transports import Transport

URL = "http://toolgate-demo.invalid/v1"  # reserved name: it never resolves, were it ever dialled
_EXPRESSION = re.compile(r"[\d(][\d\s.+\-*/%^()]*[\d)]")
_OPERATOR = re.compile(r"[-+*/%^]")
_TIME = re.compile(r"\b(?:time|date|clock|today)\b", re.IGNORECASE)
_ZONE = re.compile(r"\b(UTC|[A-Z][A-Za-z_]+/[A-Z][A-Za-z_]+)\b")


def settings(config: Settings) -> Settings:
    """`config` with its default upstream the demo model."""
    name = config.server.default_upstream
    upstream = dataclasses.replace(config.upstreams[name], url=URL, type="openai")
    return dataclasses.replace(config, upstreams={**config.upstreams, name: upstream})


def answer(body: Mapping[str, Any]) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """The demo model's turn for a chat request: (text, tool calls as (name, arguments))."""
    messages = body.get("messages") or [{}]
    if messages[-1].get("role") == "tool":
        return _read_back(messages), []
    text = next((_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    offered = {t["function"]["name"] for t in body.get("tools") or ()} if body.get("tool_choice") != "none" else set()
    calls = []
    expression = next((e.strip() for e in _EXPRESSION.findall(text) if _OPERATOR.search(e)), None)
    if expression and "calculate" in offered:
        calls.append(("calculate", {"expression": expression}))
    if _TIME.search(text) and "current_time" in offered:
        calls.append(("current_time", {"timezone": (_ZONE.findall(text) or ["UTC"])[0]}))
    if calls:
        return "", calls
    return (f"You said: {text[:60]}" if text else "Hello! I am the toolgate demo model."), []


def _read_back(messages: list[dict[str, Any]]) -> str:
    """One sentence per result of the last tool round, after the call it answers."""
    start = len(messages)
    while start > 1 and messages[start - 1].get("role") == "tool":
        start -= 1
    asked = {c.get("id"): c.get("function") or {} for c in messages[start - 1].get("tool_calls") or ()}
    sentences = []
    for message in messages[start:]:
        call = asked.get(message.get("tool_call_id"), {})
        sentences.append(_sentence(call.get("name", "the tool"), _arguments(call.get("arguments")), _text(message)))
    return " ".join(sentences)


def _arguments(arguments: Any) -> dict[str, Any]:
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    return (content if isinstance(content, str) else " ".join(p.get("text", "") for p in content or ())).strip()


def _sentence(name: str, arguments: dict[str, Any], result: str) -> str:
    if result.lower().startswith("error"):
        return f"{name} failed: {result[:200]}"
    if name == "calculate":
        return f"The result of {arguments.get('expression')} is {result[:200]}."
    if name == "current_time":
        return f"It is {result[:200]} in {arguments.get('timezone', 'UTC')}."
    return f"{name} returned: {result[:200]}."


def completion(body: Mapping[str, Any]) -> list[bytes]:
    """The chat reply's body: one JSON object, or (streamed) its SSE events, a word per delta."""
    text, calls = answer(body)
    tool_calls = [{"index": i, "id": f"call_demo{i}", "type": "function", "function": {"name": n, "arguments": orjson.dumps(a).decode()}}
                  for i, (n, a) in enumerate(calls)]  # fmt: skip
    usage = {"prompt_tokens": len(orjson.dumps(body.get("messages"))) // 4, "completion_tokens": len(text.split()) + 10 * len(calls)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    head = {"id": "chatcmpl-demo", "created": 0, "model": body.get("model")}
    finish = "tool_calls" if calls else "stop"
    if not body.get("stream"):
        message = {"role": "assistant", "content": text or None, **({"tool_calls": tool_calls} if calls else {})}
        choice = {"index": 0, "message": message, "finish_reason": finish}
        return [orjson.dumps({**head, "object": "chat.completion", "choices": [choice], "usage": usage})]
    words = re.findall(r"\s*\S+", text)
    deltas = [{"role": "assistant", "content": ""}, *({"content": w} for w in words), *({"tool_calls": [c]} for c in tool_calls)]
    chunks: list[dict[str, Any]] = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    chunks += [{"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}, {"choices": [], "usage": usage}]
    return [b"data: %s\n\n" % orjson.dumps({**head, "object": "chat.completion.chunk", **c}) for c in chunks] + [b"data: [DONE]\n\n"]


def embeddings(body: Mapping[str, Any]) -> list[bytes]:
    """Made-up vectors: the same text always gets the same one."""
    given = body.get("input")
    inputs = given if isinstance(given, list) else [given]
    vectors = [[b / 255 for b in hashlib.sha256(orjson.dumps(text)).digest()[:8]] for text in inputs]
    data = [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)]
    usage = {"prompt_tokens": 0, "total_tokens": 0}
    return [orjson.dumps({"object": "list", "data": data, "model": body.get("model"), "usage": usage})]


class _Reply:
    def __init__(self, status: int, parts: list[bytes], content_type: str = "application/json") -> None:
        self.status, self.headers, self._parts = status, {"content-type": content_type}, parts

    async def read(self, limit: int) -> bytes:
        body = b"".join(self._parts)
        if len(body) > limit:
            raise ReplyTooLarge(limit)
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        for part in self._parts:
            yield part

    async def close(self) -> None:
        pass


_NOT_FOUND = [b'{"error":{"message":"The demo model has no such endpoint.","type":"invalid_request_error","param":null,"code":null}}']


class DemoTransport:
    """`URL` is answered here; any other upstream of the config goes through `inner`."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, **options: Any) -> Any:
        if not url.startswith(URL):
            return await self.inner.post(url, headers, body, **options)
        request = orjson.loads(body)
        if url.startswith(URL + "/chat/completions"):
            return _Reply(200, completion(request), "text/event-stream" if request.get("stream") else "application/json")
        if url.startswith(URL + "/embeddings"):
            return _Reply(200, embeddings(request))
        return _Reply(404, _NOT_FOUND)

    async def get(self, url: str, headers: Mapping[str, str], **options: Any) -> Any:
        if not url.startswith(URL):
            return await self.inner.get(url, headers, **options)
        return _Reply(404, _NOT_FOUND)

    async def status(self, url: str, headers: Mapping[str, str], **options: Any) -> int:
        return 200 if url.startswith(URL) else await self.inner.status(url, headers, **options)

    async def aclose(self) -> None:
        await self.inner.aclose()
