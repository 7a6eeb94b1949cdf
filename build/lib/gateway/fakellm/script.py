"""The turns a test scripts, and the demo brain that answers when none is left.

A turn is a value: ``Reply`` (a final answer), ``Calls`` (tool calls), ``Fail``
(an error response), ``Raw`` (bytes sent as they are), or a callable that gets
the parsed request body and returns one of those.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import orjson

# Constant, so tests can sum usage over the rounds of a loop.
DEFAULT_USAGE: Mapping[str, int] = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


@dataclass(frozen=True, slots=True)
class Reply:
    """A final assistant answer."""

    content: str = ""
    _: KW_ONLY
    reasoning: str | None = None
    finish_reason: str = "stop"
    usage: Mapping[str, Any] | None = None
    refusal: str | None = None
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0  # streaming: pause between SSE events


@dataclass(frozen=True, slots=True)
class Calls:
    """Tool calls: ``[(name, arguments)]``; a dict is JSON-encoded, a str goes out verbatim."""

    calls: Sequence[tuple[str, Mapping[str, Any] | str]]
    _: KW_ONLY
    content: str | None = None
    finish_reason: str = "tool_calls"
    usage: Mapping[str, Any] | None = None
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Fail:
    """Any status with any body; the default body is an OpenAI error envelope naming the status."""

    status: int
    body: bytes | None = None
    headers: Mapping[str, str] | None = None
    content_type: str = "application/json"
    _: KW_ONLY
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Raw:
    """Bytes sent verbatim as the body; ``close=True`` sends no length and closes after them."""

    data: bytes
    content_type: str = "application/json"
    status: int = 200
    close: bool = False
    _: KW_ONLY
    delay_s: float = 0.0


Turn = Reply | Calls | Fail | Raw
Script = Turn | Callable[[dict[str, Any]], Turn]


# ---------------------------------------------------------------------------
# The demo brain: plausible behaviour for `toolgate serve --demo` and the benchmark.

_OPERATOR = re.compile(r"[\d)]\s*(?:\*\*|//|[-+*/%^])\s*[\d(.]")
_EXPRESSION = re.compile(r"[\d(.][\d\s.+\-*/%^()]*[\d)]")
_TIME_WORDS = re.compile(r"\b(?:time|date|clock|today)\b", re.IGNORECASE)
_TIMEZONE = re.compile(r"\b(UTC|GMT|[A-Z][A-Za-z_]+/[A-Z][A-Za-z_]+(?:/[A-Z][A-Za-z_]+)?)\b")
_RESULT_MAX = 200


def demo_turn(body: Mapping[str, Any]) -> Reply | Calls:
    """Answer tool results, call a fitting offered tool, or acknowledge the user."""
    messages = body.get("messages") or []
    if messages and _role(messages[-1]) == "tool":
        return Reply(_answer_tool_results(messages))
    text = _last_user_text(messages)
    offered = _offered_tools(body)
    calls: list[tuple[str, dict[str, Any]]] = []
    if offered:
        expression = _find_expression(text)
        if expression and "calculate" in offered:
            calls.append(("calculate", {"expression": expression}))
        if "current_time" in offered and _TIME_WORDS.search(text):
            zone = _TIMEZONE.search(text)
            calls.append(("current_time", {"timezone": zone.group(1) if zone else "UTC"}))
    if calls:
        return Calls(calls)
    if not text:
        return Reply("Hello! I am the toolgate demo model.")
    return Reply(f"You said: {text[:60]}")


def _role(message: Any) -> str | None:
    return message.get("role") if isinstance(message, dict) else None


def _text(content: Any) -> str:
    """Text of a message's content, whether a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _last_user_text(messages: Sequence[Any]) -> str:
    for message in reversed(messages):
        if _role(message) == "user":
            return _text(message.get("content")).strip()
    return ""


def _offered_tools(body: Mapping[str, Any]) -> set[str]:
    if body.get("tool_choice") == "none":
        return set()
    names = set()
    for tool in body.get("tools") or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


def _find_expression(text: str) -> str | None:
    for match in _EXPRESSION.finditer(text):
        candidate = match.group(0).strip()
        if not _OPERATOR.search(candidate):
            continue
        # "(2+3) apples": the regex cannot see balance, so trim stray parentheses.
        while candidate.count("(") > candidate.count(")") and candidate.startswith("("):
            candidate = candidate[1:].lstrip()
        while candidate.count(")") > candidate.count("(") and candidate.endswith(")"):
            candidate = candidate[:-1].rstrip()
        return candidate
    return None


def _answer_tool_results(messages: Sequence[Any]) -> str:
    """One sentence per trailing tool message, named after the call it answers."""
    start = len(messages)
    while start > 0 and _role(messages[start - 1]) == "tool":
        start -= 1
    calls: dict[str, tuple[str, Any]] = {}
    if start > 0 and _role(messages[start - 1]) == "assistant":
        for call in messages[start - 1].get("tool_calls") or ():
            function = call.get("function") or {}
            calls[call.get("id")] = (function.get("name", "the tool"), function.get("arguments"))
    sentences = []
    for message in messages[start:]:
        name, arguments = calls.get(message.get("tool_call_id"), ("the tool", None))
        sentences.append(_sentence(name, _arguments(arguments), _text(message.get("content")).strip()))
    return " ".join(sentences)


def _arguments(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str):
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def _sentence(name: str, arguments: Mapping[str, Any], result: str) -> str:
    if len(result) > _RESULT_MAX:
        result = result[:_RESULT_MAX] + "…"
    if result.lower().startswith("error"):
        return f"{name} failed: {result}"
    if name == "calculate":
        return f"The result of {arguments.get('expression', 'calculate')} is {result}."
    if name == "current_time":
        return f"It is {result} in {arguments.get('timezone', 'UTC')}."
    return f"{name} returned: {result}."
