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
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.backoff import Patience
    from gateway.config import Upstream
    from gateway.events import Delta


@dataclass(slots=True)
class Turn:
    """One finished model call: the assistant message, why it ended, and its usage."""

    message: dict[str, Any]  # role, content, and tool_calls / refusal / reasoning_content if any
    finish_reason: str
    usage: dict[str, Any] | None  # OpenAI names (prompt_tokens, completion_tokens ...); None: none sent
    logprobs: dict[str, Any] | None = None


if TYPE_CHECKING:

    class TurnParts(AsyncIterator[Delta | Turn], Protocol):
        """What `Model.turn` returns: an async iterator the caller closes (`contextlib.aclosing`)."""

        async def aclose(self) -> None: ...

else:
    TurnParts = AsyncIterator  # at run time (3.11 cannot subclass it as a Protocol)


class Model(Protocol):
    def turn(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], params: dict[str, Any]) -> TurnParts:
        """Deltas as they stream (none when not streaming), then exactly one Turn.

        `messages`, `tools` and `params` are the loop's: read them, never change them."""


class once:  # noqa: N801 - used like a function
    """A turn that does not stream, as `Model.turn` returns it: the one Turn `call` comes to.

    Not an async generator: asyncio books every one of those (a weak set, hooks), a cost
    each non-streamed round would pay for one item.
    """

    __slots__ = ("_call",)

    def __init__(self, call: Coroutine[Any, Any, Turn]) -> None:
        self._call: Coroutine[Any, Any, Turn] | None = call

    def __aiter__(self) -> once:
        return self

    async def __anext__(self) -> Turn:
        call, self._call = self._call, None
        if call is None:
            raise StopAsyncIteration
        return await call

    async def aclose(self) -> None:
        if self._call is not None:
            self._call.close()  # never awaited: nothing was sent
            self._call = None


class ModelJob(Protocol):
    """What a codec reads from the loop's job (`loop.LoopJob` has it all)."""

    upstream: Upstream
    model: str  # the upstream's model name
    stream: bool
    request_id: str
    client_auth: str
    max_repeated_deltas: int
    patience: Patience | None


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
