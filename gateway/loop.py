"""The tool loop, written once: ask the model for a turn, run its tool calls, repeat.

    async with aclosing(run_loop(job, open_model(client, job), toolbox)) as events:
        async for event in events:   # Delta, RoundUsage, ToolStarted, ToolFinished ..., then one Final
            ...

It knows neither Starlette nor HTTP nor any host's wire format: it asks a
`gateway.model.Model` for turns. Each round ends in a next-step value: the
answer, or tool calls to run (then hand some back, or go round again). Rounds
are bounded by `max_rounds`, after which one last call with
`tool_choice: "none"` makes the model answer from what it has.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeGuard

from gateway.backoff import Patience
from gateway.config import Upstream
from gateway.errors import LoopLimit
from gateway.events import Delta, Event, Final, RoundUsage, ToolFinished, ToolProgress, ToolStarted
from gateway.model import Model, Turn, new_call_id
from gateway.tools.progress import Note
from gateway.tools.toolbox import Offer, Toolbox
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
    # A streamed response's: how late a retry of the upstream may wait (the pump's, see backoff.Patience).
    patience: Patience | None = None


_TOKEN_PARAMS = ("max_completion_tokens", "max_tokens")


class _Budget:
    """Completion tokens: the client's `max_tokens` (clamped to the ceiling) holds for the
    whole loop, not for each round; without one, the ceiling does."""

    __slots__ = ("key", "limit", "spent")

    def __init__(self, params: dict[str, Any], ceiling: int) -> None:
        key = self.key = next((k for k in _TOKEN_PARAMS if _count(params.get(k))), None)
        asked = int(params[key]) if key else 0
        if key and ceiling and asked > ceiling:
            params[key] = asked = ceiling
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


def _count(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


@dataclass(slots=True)
class NextStepAnswer:
    """The round ends the loop with this answer."""

    final: Final


@dataclass(slots=True)
class NextStepRunTools:
    """The round's server calls run; then calls go back to the client, or the model goes again."""

    message: dict[str, Any]  # the assistant's turn, its call ids unique, for the history
    run: list[dict[str, Any]]  # server calls within the request's limit
    not_run: list[dict[str, Any]]  # server calls past it: each answered with a note
    handed_back: list[dict[str, Any]]  # calls of the client's own tools
    held: list[dict[str, Any]]  # server calls that wait for the client's approval


async def run_loop(job: LoopJob, model: Model, toolbox: Toolbox) -> AsyncGenerator[Event, None]:
    run = _Run(job)
    if job.resume:
        async for event in _resume(job, toolbox, run.tally):
            yield event
    for round_no in range(job.max_rounds + 1):
        params = run.params(round_no)
        if params is None:
            # The tokens the client allowed are spent on earlier rounds: say so, do not call again.
            yield run.tally.final({"role": "assistant", "content": ""}, "length", run.usage, round_no)
            return
        turn: Turn | None = None
        async with aclosing(model.turn(job.messages, run.tools, params)) as parts:
            async for part in parts:
                if isinstance(part, Delta):
                    yield part
                else:
                    turn = part
        assert turn is not None, "a model's turn ends in one Turn"
        usage = run.account(round_no, turn)
        step = run.next_step(turn, round_no)
        if not job.stream and isinstance(step, NextStepRunTools) and not (step.handed_back or step.held):
            # Unstreamed, what the model said before the tools it runs now reaches the renderer
            # only here (a final answer's, and a handed-back turn's, go in the Final).
            said = _said(turn.message)
            if said is not None:
                yield said
        yield usage

        if isinstance(step, NextStepAnswer):
            yield step.final
            return
        job.messages.append(step.message)
        async for event in _run_calls(job, toolbox, step.run, round_no + 1, run.tally):
            yield event
        for call in step.not_run:
            # Every call gets its one reply, even one the limit kept from running.
            note = f"Error: not run: this request reached its limit of {job.max_tool_calls} tool calls. Answer with what you have."
            job.messages.append({"role": "tool", "tool_call_id": call["id"], "content": note})
            run.tally.note(round_no + 1, call, "not_run")
        if step.handed_back or step.held:
            yield run.hand_back(step, turn, round_no + 1)
            return
        run.last_call = _repeating(step.run, run.streaks, job.repeat_limit) or run.tally.tool_calls >= job.max_tool_calls
    raise AssertionError("unreachable: the last round always answers")


_NO_NAMES: frozenset[str] = frozenset()


class _Run:
    """What the rounds of one loop share: the tools offered, the token budget, the usage so far."""

    __slots__ = ("job", "tools", "client_names", "base", "budget", "usage", "tally", "streaks", "last_call")

    def __init__(self, job: LoopJob) -> None:
        self.job = job
        self.client_names = {t["function"]["name"] for t in job.client_tools} if job.client_tools else _NO_NAMES
        self.tools = [*job.offer.schemas, *(job.client_tools or ())]
        self.base = dict(job.params)
        self.budget = _Budget(self.base, job.max_output_tokens)
        self.usage: dict[str, Any] | None = None
        self.tally = _Tally(job)
        self.streaks: dict[tuple[str, str], int] = {}
        self.last_call = not self.tools

    def params(self, round_no: int) -> dict[str, Any] | None:
        """This round's parameters; None when the token budget is spent."""
        job = self.job
        if round_no == job.max_rounds and not self.last_call:
            self.last_call = True
            if job.on_max_rounds == "error":
                raise LoopLimit(f"The model was still calling tools after {job.max_rounds} rounds.")
        if self.budget.exhausted:
            return None
        choice = "none" if self.last_call and self.tools else job.first_tool_choice if round_no == 0 else None
        if choice is None and not self.budget.spent:
            return self.base  # as most rounds are: shared, as a model never changes its params
        params = dict(self.base)
        self.budget.apply(params)
        if choice is not None:
            params["tool_choice"] = choice
        return params

    def account(self, round_no: int, turn: Turn) -> RoundUsage:
        if isinstance(turn.usage, dict):
            self.usage = add_usage(self.usage, turn.usage)
            self.budget.add(turn.usage)
        return RoundUsage(round_no + 1, turn.usage)

    def next_step(self, turn: Turn, round_no: int) -> NextStepAnswer | NextStepRunTools:
        job = self.job
        calls = turn.message.get("tool_calls")
        if not calls or self.last_call or turn.finish_reason == "length":
            # A reply cut by its token limit may hold a half-written call: never run it.
            return NextStepAnswer(_final(turn, self.usage, round_no, self.tally))
        _unique_ids(calls)
        handed_back = [c for c in calls if c["function"]["name"] in self.client_names]
        server = [c for c in calls if c["function"]["name"] not in self.client_names]
        held = [c for c in server if job.ask_first is not None and job.ask_first(c["function"]["name"])]
        server = [c for c in server if c not in held]
        allowed = max(0, job.max_tool_calls - self.tally.tool_calls)
        return NextStepRunTools({**turn.message, "tool_calls": calls}, server[:allowed], server[allowed:], handed_back, held)

    def hand_back(self, step: NextStepRunTools, turn: Turn, rounds: int) -> Final:
        """The client's own calls, and calls that wait for its approval, go back to it."""
        message = {"role": "assistant", "content": turn.message.get("content"), "tool_calls": [*step.handed_back, *step.held]}
        final = self.tally.final(message, "tool_calls", self.usage, rounds)
        final.client_tool_calls = step.handed_back or None
        final.approval_requests = step.held or None
        return final


async def _resume(job: LoopJob, toolbox: Toolbox, tally: _Tally) -> AsyncGenerator[Event, None]:
    """Calls held for approval in an earlier response: run the approved, answer the denied."""
    assert job.resume is not None
    approved = [call for call, yes in job.resume if yes]
    async for event in _run_calls(job, toolbox, approved, 0, tally):
        yield event
    for call, yes in job.resume:
        if not yes:
            job.messages.append({"role": "tool", "tool_call_id": call["id"], "content": "Error: the user did not approve this call."})


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


async def _run_calls(job: LoopJob, toolbox: Toolbox, calls: list[dict[str, Any]], round_no: int, tally: _Tally) -> AsyncGenerator[Event, None]:
    """Run server calls concurrently; one `tool` message each, in the model's order."""
    if not calls:
        return
    tally.tool_calls += len(calls)
    for call in calls:
        yield ToolStarted(round_no, call["id"], call["function"]["name"], call["function"]["arguments"])
    results = {}
    async with aclosing(toolbox.run_round(calls, job.offer)) as outcomes:
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


def _said(message: dict[str, Any]) -> Delta | None:
    """A turn's text and reasoning as one Delta, or None when it said nothing."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    text = content if isinstance(content, str) and content else None
    thought = reasoning if isinstance(reasoning, str) and reasoning else None
    return Delta(text, thought) if text or thought else None


def _unique_ids(calls: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for call in calls:
        if call["id"] in seen:
            call["id"] = new_call_id()
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
