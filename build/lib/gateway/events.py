"""What the loop yields. The pump hands these to a renderer: one JSON body, or SSE chunks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Delta:
    """Text from the model, to forward at once when streaming."""

    content: str | None = None
    reasoning: str | None = None
    logprobs: list[dict[str, Any]] | None = None  # the `content` logprobs of these tokens, when asked for


@dataclass(frozen=True, slots=True)
class RoundUsage:
    """One upstream call is done: its usage as soon as it is known (accounting survives later
    failures; None when the host sent none). It also marks where a round's text ends."""

    round: int
    usage: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class ToolStarted:
    round: int
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolProgress:
    """A running call said how far it got (its latest report; throttled, so not every one)."""

    round: int
    call_id: str
    name: str
    progress: float
    total: float | None = None
    message: str | None = None  # the tool's own words, redacted and cut to one line


@dataclass(frozen=True, slots=True)
class ToolFinished:
    round: int
    call_id: str
    name: str
    outcome: str  # "ok" | "error" | "timeout" | "unknown_tool" | "bad_arguments"
    duration_s: float
    content: Any = None  # what the model reads: the result, or what went wrong


@dataclass(slots=True)
class Final:
    """The loop's answer: the last assistant message and the loop's facts."""

    message: dict[str, Any]
    finish_reason: str
    usage: dict[str, Any] | None
    rounds: int
    tool_calls: int
    trace: list[dict[str, Any]] = field(default_factory=list)
    # Tool-call deltas the client must see (client tools handed back).
    client_tool_calls: list[dict[str, Any]] | None = None
    logprobs: dict[str, Any] | None = None  # the last call's choice logprobs (non-streamed)
    # Server tool calls that wait for the client's approval (not run; the Responses API).
    approval_requests: list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class Opening:
    """Not from the loop: the pump asks a streamed renderer for what opens the stream."""


Event = Delta | RoundUsage | ToolStarted | ToolProgress | ToolFinished | Final
