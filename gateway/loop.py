"""The tool loop, written once: call the model, run its tool calls, repeat.

    async with aclosing(run_loop(job, upstream_client, toolbox)) as events:
        async for event in events:   # Delta, ToolStarted, ToolFinished ..., then one Final
            ...

It knows neither Starlette nor httpx. Each round ends in a next step: a final
answer, tool results to send back, or client tool calls to hand back. Rounds
are bounded by `max_rounds`, after which one last call with
`tool_choice: "none"` makes the model answer from what it has.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from gateway.assemble import StreamAssembler, Turn, turn_from_completion
from gateway.config import Upstream
from gateway.errors import LoopLimit
from gateway.events import Delta, Event, Final, RoundUsage, ToolFinished, ToolStarted
from gateway.tools.toolbox import Offer, Toolbox
from gateway.upstream import UpstreamClient
from gateway.usage import add_usage
from gateway.upstream import UpstreamClient


@dataclass(slots=True)
class LoopJob:
    """One request, resolved: everything the loop needs and nothing about HTTP."""

    upstream: Upstream
    model: str  # the upstream's model name
    messages: list[dict[str, Any]]  # appended to in place, round by round
    params: dict[str, Any]
    offer: Offer
    client_tools: list[dict[str, Any]] | None = None
    stream: bool = False
    max_rounds: int = 8
    on_max_rounds: str = "answer"
    repeat_limit: int = 3
    max_tool_calls: int = 32  # server tool calls, summed over rounds
    max_repeated_deltas: int = 50  # identical streamed content pieces in a row: a runaway
    max_output_tokens: int = 0  # ceiling on the client's max_tokens and budget over rounds; 0: none
    request_id: str = ""
    client_auth: str = ""
    trace: bool = False


_TOKEN_PARAMS = ("max_completion_tokens", "max_tokens")


class _Budget:
    """Completion tokens: the client's `max_tokens` (clamped to the ceiling) holds for the
    whole loop, not for each round; without one, the ceiling does."""

    __slots__ = ("key", "limit", "spent")

    def __init__(self, params: dict[str, Any], ceiling: int) -> None:
        self.key = next((k for k in _TOKEN_PARAMS if _count(params.get(k))), None)
        asked = int(params[self.key]) if self.key else 0
        if ceiling and asked > ceiling:
            assert self.key is not None
            params[self.key] = asked = ceiling
        self.limit = asked or ceiling
        self.spent = 0

    def add(self, usage: dict[str, Any]) -> None:
        tokens = usage.get("completion_tokens")
        if _count(tokens):
            self.spent += int(tokens)

    @property
    def exhausted(self) -> bool:
        return bool(self.limit) and self.spent >= self.limit

    def apply(self, body: dict[str, Any]) -> None:
        if self.key and self.spent:
            body[self.key] = max(1, self.limit - self.spent)


def _count(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


async def run_loop(job: LoopJob, upstream: UpstreamClient, toolbox: Toolbox) -> AsyncIterator[Event]:
    client_names = {t["function"]["name"] for t in job.client_tools or ()}
    tools = [*job.offer.schemas, *(job.client_tools or ())]
    base = {**job.params, "model": job.model}
    budget = _Budget(base, job.max_output_tokens)
    if tools:
        base["tools"] = tools
    if job.stream:
        base["stream"] = True
        base["stream_options"] = {"include_usage": True}
    keep_reasoning = job.upstream.host.send_reasoning

    usage: dict[str, Any] | None = None
    tool_calls = 0
    trace: list[dict[str, Any]] = []
    streaks: dict[tuple[str, str], int] = {}
    spoke = False  # content already streamed in an earlier round
    last_call = not tools

    for round_no in range(job.max_rounds + 1):
        if round_no == job.max_rounds and not last_call:
            last_call = True
            if job.on_max_rounds == "error":
                raise LoopLimit(f"The model was still calling tools after {job.max_rounds} rounds.")
        if budget.exhausted:
            # The tokens the client allowed are spent on earlier rounds: say so, do not call again.
            yield Final({"role": "assistant", "content": ""}, "length", usage, round_no, tool_calls, trace)
            return
        body = {**base, "messages": job.messages}
        budget.apply(body)
        if last_call and tools:
            body["tool_choice"] = "none"

        if job.stream:
            assembler = StreamAssembler(max_repeats=job.max_repeated_deltas)
            fresh = True  # no content yet in this round
            async with aclosing(upstream.stream(job.upstream, body, request_id=job.request_id, client_auth=job.client_auth)) as batches:
                async for chunks in batches:
                    delta = assembler.feed_many(chunks)
                    if delta is None:
                        continue
                    if delta.content and fresh:
                        fresh = False
                        if spoke:
                            yield Delta("\n\n")
                    yield delta
            spoke |= not fresh
            turn = assembler.finish()
        else:
            turn = turn_from_completion(await upstream.complete(job.upstream, body, request_id=job.request_id, client_auth=job.client_auth))
        if isinstance(turn.usage, dict):
            usage = add_usage(usage, turn.usage)
            budget.add(turn.usage)
            yield RoundUsage(round_no + 1, turn.usage)

        calls = turn.message.get("tool_calls")
        if not calls or last_call or turn.finish_reason == "length":
            # A reply cut by its token limit may hold a half-written call: never run it.
            yield _final(turn, usage, round_no, tool_calls, trace)
            return

        _unique_ids(calls)
        server = [c for c in calls if c["function"]["name"] not in client_names]
        handed_back = [c for c in calls if c["function"]["name"] in client_names]
        message = {**turn.message, "tool_calls": calls}
        if not keep_reasoning:
            message.pop("reasoning_content", None)
        job.messages.append(message)
        allowed = max(0, job.max_tool_calls - tool_calls)
        run, refused = server[:allowed], server[allowed:]
        tool_calls += len(run)
        for call in run:
            yield ToolStarted(round_no + 1, call["id"], call["function"]["name"], call["function"]["arguments"])
        results = {}
        async with aclosing(toolbox.run_round(run, job.offer, tool_images=job.upstream.host.tool_images)) as outcomes:
            async for outcome in outcomes:
                results[outcome.call_id] = outcome
                yield ToolFinished(round_no + 1, outcome.call_id, outcome.name, outcome.outcome, outcome.duration_s)
        for call in run:
            outcome = results[call["id"]]
            job.messages.append({"role": "tool", "tool_call_id": call["id"], "content": outcome.content})
            if job.trace:
                trace.append(
                    {
                        "round": round_no + 1,
                        "name": outcome.name,
                        "arguments": outcome.arguments,
                        "duration_ms": round(outcome.duration_s * 1000, 3),
                        "outcome": outcome.outcome,
                        "cut": outcome.cut,
                    }
                )
        for call in refused:
            # Every call gets its one reply, even one the limit kept from running.
            note = f"Error: not run: this request reached its limit of {job.max_tool_calls} tool calls. Answer with what you have."
            job.messages.append({"role": "tool", "tool_call_id": call["id"], "content": note})
            if job.trace:
                trace.append({"round": round_no + 1, "name": call["function"]["name"], "arguments": call["function"]["arguments"], "duration_ms": 0.0, "outcome": "not_run", "cut": False})

        if handed_back:
            message = {"role": "assistant", "content": turn.message.get("content"), "tool_calls": handed_back}
            yield Final(message, "tool_calls", usage, round_no + 1, tool_calls, trace, client_tool_calls=handed_back)
            return
        last_call = _repeating(server, streaks, job.repeat_limit) or tool_calls >= job.max_tool_calls
    raise AssertionError("unreachable: the last round always answers")


def _final(turn: Turn, usage: dict[str, Any] | None, rounds: int, tool_calls: int, trace: list) -> Final:
    message = turn.message
    finish_reason = turn.finish_reason
    if message.get("tool_calls"):
        # Asked not to call tools (or cut short), the model did anyway: answer with what it said.
        message = {k: v for k, v in message.items() if k != "tool_calls"}
        message["content"] = message.get("content") or ""
        if finish_reason != "length":
            finish_reason = "stop"
    elif finish_reason == "tool_calls":
        finish_reason = "stop"
    return Final(message, finish_reason, usage, rounds, tool_calls, trace, logprobs=turn.logprobs)


def _unique_ids(calls: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for call in calls:
        if call["id"] in seen:
            call["id"] = f"call_{uuid.uuid4().hex[:24]}"
        seen.add(call["id"])


def _repeating(calls: list[dict[str, Any]], streaks: dict[tuple[str, str], int], limit: int) -> bool:
    """True when a call with the same arguments has come `limit` rounds in a row."""
    current = {(c["function"]["name"], c["function"]["arguments"]) for c in calls}
    for key in list(streaks):
        if key not in current:
            del streaks[key]
    for key in current:
        streaks[key] = streaks.get(key, 0) + 1
    return any(count >= limit for count in streaks.values())
