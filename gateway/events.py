"""What the loop yields. The pump hands these to a renderer: one JSON body, or SSE chunks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ToolOutcomeKind = Literal["ok", "error", "timeout", "unknown_tool", "bad_arguments"]
"""How one tool call ended: the `outcome` of its log line, trace entry and metric."""


@dataclass(frozen=True, slots=True)
class Delta:
    """Text from the model, to forward at once when streaming. Unstreamed, one Delta says a
    round's whole text, before the tools that round runs (the Responses API shows it)."""

    content: str | None = None
    """Answer text, as the model streamed it."""
    reasoning: str | None = None
    """Reasoning text, for hosts that stream it apart from the answer."""
    logprobs: list[dict[str, Any]] | None = None
    """The `content` logprobs of these tokens, when the client asked for them."""


@dataclass(frozen=True, slots=True)
class RoundUsage:
    """One upstream call is done: its usage as soon as it is known (accounting survives later
    failures). It also marks where a round's text ends."""

    round: int
    """The round's number, from 1."""
    usage: dict[str, Any] | None
    """The call's usage in OpenAI shape; None when the host sent none."""


@dataclass(frozen=True, slots=True)
class ToolStarted:
    """A server tool call is about to run."""

    round: int
    """The round that asked for it, from 1."""
    call_id: str
    """The model's `tool_call_id`."""
    name: str
    """The tool's name as offered to the model."""
    arguments: str
    """The arguments as the model sent them (a JSON text, not yet checked)."""


@dataclass(frozen=True, slots=True)
class ToolProgress:
    """A running call said how far it got (its latest report; throttled, so not every one)."""

    round: int
    """The round the call belongs to, from 1."""
    call_id: str
    """The model's `tool_call_id`."""
    name: str
    """The tool's name as offered to the model."""
    progress: float
    """How far it got, in the tool's own unit."""
    total: float | None = None
    """The end of that scale, when the tool knows it."""
    message: str | None = None
    """The tool's own words, redacted and cut to one line."""


@dataclass(frozen=True, slots=True)
class ToolFinished:
    """A server tool call ended, one way or another: the model reads `content` either way."""

    round: int
    """The round that asked for it, from 1."""
    call_id: str
    """The model's `tool_call_id`."""
    name: str
    """The tool's name as offered to the model."""
    outcome: ToolOutcomeKind
    """How it ended."""
    duration_s: float
    """Wall time of the call, checks included."""
    content: Any = None
    """What the model reads: the result, or what went wrong."""


@dataclass(slots=True)
class Final:
    """The loop's answer: the last assistant message and the loop's facts."""

    message: dict[str, Any]
    """The last assistant message, in Chat Completions shape."""
    finish_reason: str
    """The last upstream call's own (`stop`, `length`, `tool_calls`, or whatever the host
    said), or the loop's when it ended the request itself; empty for a pass-through."""
    usage: dict[str, Any] | None
    """Summed over every round; None when no host sent any."""
    rounds: int
    """Upstream calls made."""
    tool_calls: int
    """Server tool calls run."""
    trace: list[dict[str, Any]] = field(default_factory=list)
    """One entry per tool call (name, outcome, duration…), when tracing or logging asks."""
    client_tool_calls: list[dict[str, Any]] | None = None
    """Tool-call deltas the client must see (client tools handed back)."""
    logprobs: dict[str, Any] | None = None
    """The last call's choice logprobs (non-streamed)."""
    approval_requests: list[dict[str, Any]] | None = None
    """Server tool calls that wait for the client's approval (not run; the Responses API)."""


@dataclass(frozen=True, slots=True)
class Opening:
    """Not from the loop: the pump asks a streamed renderer for what opens the stream."""


Event = Delta | RoundUsage | ToolStarted | ToolProgress | ToolFinished | Final
"""Everything the loop yields."""
