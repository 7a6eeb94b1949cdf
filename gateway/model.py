"""The seam between the loop and a host's wire format.

    model = open_model(client, job)          # gateway.codecs: the codec its host row names
    async with aclosing(model.turn(messages, tools, params)) as parts:
        async for part in parts:             # Delta ... (streamed), then one Turn
            ...

The loop speaks one vocabulary: OpenAI Chat messages, function tools and
parameters (`max_tokens`, `tool_choice` ...), whatever the host. A codec turns
them into its host's request, has `upstream.py` carry it, and folds the reply
into `Delta`s and one normalised `Turn`: host quirks end in the codec.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gateway.events import Delta

if TYPE_CHECKING:
    from gateway.config import Upstream


@dataclass(slots=True)
class Turn:
    """One finished model call: the assistant message, why it ended, and its usage."""

    message: dict[str, Any]  # role, content, and tool_calls / refusal / reasoning_content if any
    finish_reason: str
    usage: dict[str, Any] | None  # OpenAI names (prompt_tokens, completion_tokens ...); None: none sent
    logprobs: dict[str, Any] | None = None


class Model(Protocol):
    def turn(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], params: dict[str, Any]) -> AsyncGenerator[Delta | Turn, None]:
        """Deltas as they stream (none when not streaming), then exactly one Turn."""


class ModelJob(Protocol):
    """What a codec reads from the loop's job (`loop.LoopJob` has it all)."""

    upstream: Upstream
    model: str  # the upstream's model name
    stream: bool
    request_id: str
    client_auth: str
    max_repeated_deltas: int


def new_call_id() -> str:
    """A tool-call id for a call the host sent without one (or with a duplicate)."""
    return f"call_{uuid.uuid4().hex[:24]}"


def assistant_message(content: str | None, tool_calls: list[dict[str, Any]], refusal: str | None = None, reasoning: str | None = None) -> dict[str, Any]:
    """The normalised assistant message: `content` is "" without tool calls, null-or-text with them."""
    message: dict[str, Any] = {"role": "assistant", "content": content or None if tool_calls else content or ""}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if refusal:
        message["refusal"] = refusal
    if reasoning:
        message["reasoning_content"] = reasoning
    return message
