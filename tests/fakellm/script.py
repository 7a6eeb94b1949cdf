"""The turns a test scripts, and the demo brain that answers when none is left.

A turn is a value: ``Reply`` (a final answer), ``Calls`` (tool calls), ``Fail``
(an error response), ``Raw`` (bytes sent as they are), or a callable that gets
the parsed request body and returns one of those.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

from gateway import demo

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
# The demo brain: the package's demo model (gateway/demo.py), as a turn.


def demo_turn(body: Mapping[str, Any]) -> Reply | Calls:
    """What `toolgate serve --demo`'s model answers: a fitting offered tool call, a sentence
    from the tool results, or the user's words echoed."""
    text, calls = demo.answer(body)
    return Calls(calls) if calls else Reply(text)
