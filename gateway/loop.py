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
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from gateway.assemble import StreamAssembler, Turn, turn_from_completion
from gateway.config import Upstream
from gateway.errors import LoopLimit
from gateway.events import Event, Final, RoundUsage, ToolFinished, ToolProgress, ToolStarted
from gateway.tools.progress import Note
from gateway.tools.toolbox import Offer, Toolbox
from gateway.upstream import UpstreamClient
from gateway.usage import add_usage


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
    # Server tools whose calls wait for the client's approval (the Responses API's require_approval).
    ask_first: Callable[[str], bool] | None = None
    # Calls held for approval earlier, with the client's answer: run (or refused) before round 1.
    resume: list[tuple[dict[str, Any], bool]] | None = None
    # The client's tool_choice ("required", a named function): for the first round only; sent
    # in every round, it would force a call in each until the round cap.
    first_tool_choice: Any = None


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
    tally = _Tally(job)
    streaks: dict[tuple[str, str], int] = {}
    last_call = not tools

    if job.resume:
        # Calls held for approval in an earlier response: run the approved, answer the denied.
        approved = [call for call, yes in job.resume if yes]
        async for event in _run_calls(job, toolbox, approved, 0, tally):
            yield event
        for call, yes in job.resume:
            if not yes:
                job.messages.append({"role": "tool", "tool_call_id": call["id"], "content": "Error: the user did not approve this call."})

    for round_no in range(job.max_rounds + 1):
        if round_no == job.max_rounds and not last_call:
            last_call = True
            if job.on_max_rounds == "error":
                raise LoopLimit(f"The model was still calling tools after {job.max_rounds} rounds.")
        if budget.exhausted:
            # The tokens the client allowed are spent on earlier rounds: say so, do not call again.
            yield tally.final({"role": "assistant", "content": ""}, "length", usage, round_no)
            return
        body = {**base, "messages": job.messages}
        budget.apply(body)
        if last_call and tools:
            body["tool_choice"] = "none"
        elif round_no == 0 and job.first_tool_choice is not None:
            body["tool_choice"] = job.first_tool_choice

        if job.stream:
            assembler = StreamAssembler(max_repeats=job.max_repeated_deltas)
            async with aclosing(upstream.stream(job.upstream, body, request_id=job.request_id, client_auth=job.client_auth)) as batches:
                async for chunks in batches:
                    delta = assembler.feed_many(chunks)
                    if delta is not None:
                        yield delta
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
            yield _final(turn, usage, round_no, tally)
            return

        _unique_ids(calls)
        handed_back = [c for c in calls if c["function"]["name"] in client_names]
        server = [c for c in calls if c["function"]["name"] not in client_names]
        held = [c for c in server if job.ask_first is not None and job.ask_first(c["function"]["name"])]
        server = [c for c in server if c not in held]
        message = {**turn.message, "tool_calls": calls}
        if not keep_reasoning:
            message.pop("reasoning_content", None)
        job.messages.append(message)
        allowed = max(0, job.max_tool_calls - tally.tool_calls)
        async for event in _run_calls(job, toolbox, server[:allowed], round_no + 1, tally):
            yield event
        for call in server[allowed:]:
            # Every call gets its one reply, even one the limit kept from running.
            note = f"Error: not run: this request reached its limit of {job.max_tool_calls} tool calls. Answer with what you have."
            job.messages.append({"role": "tool", "tool_call_id": call["id"], "content": note})
            tally.note(round_no + 1, call, "not_run")

        if handed_back or held:
            # The client's own calls, and calls that wait for its approval, go back to it.
            message = {"role": "assistant", "content": turn.message.get("content"), "tool_calls": [*handed_back, *held]}
            final = tally.final(message, "tool_calls", usage, round_no + 1)
            final.client_tool_calls = handed_back or None
            final.approval_requests = held or None
            yield final
            return
        last_call = _repeating(server, streaks, job.repeat_limit) or tally.tool_calls >= job.max_tool_calls
    raise AssertionError("unreachable: the last round always answers")


class _Tally:
    """The loop's facts so far: server tool calls run, and the trace of each."""

    __slots__ = ("job", "tool_calls", "trace")

    def __init__(self, job: LoopJob) -> None:
        self.job = job
        self.tool_calls = 0
        self.trace: list[dict[str, Any]] = []

    def note(self, round_no: int, call: dict[str, Any], outcome: str, duration_s: float = 0.0, cut: bool = False) -> None:
        if self.job.trace:
            function = call["function"]
            self.trace.append(
                {
                    "round": round_no,
                    "name": function["name"],
                    "arguments": function["arguments"],
                    "duration_ms": round(duration_s * 1000, 3),
                    "outcome": outcome,
                    "cut": cut,
                }
            )
            tool = self.job.offer.tools.get(function["name"])
            if tool is not None and tool.annotations:
                self.trace[-1]["annotations"] = dict(tool.annotations)

    def final(self, message: dict[str, Any], finish_reason: str, usage: dict[str, Any] | None, rounds: int, logprobs: Any = None) -> Final:
        return Final(message, finish_reason, usage, rounds, self.tool_calls, self.trace, logprobs=logprobs)


async def _run_calls(job: LoopJob, toolbox: Toolbox, calls: list[dict[str, Any]], round_no: int, tally: _Tally) -> AsyncIterator[Event]:
    """Run server calls concurrently; one `tool` message each, in the model's order."""
    if not calls:
        return
    tally.tool_calls += len(calls)
    for call in calls:
        yield ToolStarted(round_no, call["id"], call["function"]["name"], call["function"]["arguments"])
    results = {}
    async with aclosing(toolbox.run_round(calls, job.offer, tool_images=job.upstream.host.tool_images)) as outcomes:
        async for outcome in outcomes:
            if isinstance(outcome, Note):
                yield ToolProgress(round_no, outcome.call_id, outcome.name, outcome.progress, outcome.total, outcome.message)
                continue
            results[outcome.call_id] = outcome
            yield ToolFinished(round_no, outcome.call_id, outcome.name, outcome.outcome, outcome.duration_s, outcome.content)
    for call in calls:
        outcome = results[call["id"]]
        job.messages.append({"role": "tool", "tool_call_id": call["id"], "content": outcome.content})
        tally.note(round_no, call, outcome.outcome, outcome.duration_s, outcome.cut)


def _final(turn: Turn, usage: dict[str, Any] | None, rounds: int, tally: _Tally) -> Final:
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
    return tally.final(message, finish_reason, usage, rounds, turn.logprobs)


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
