"""The loop alone: a scripted upstream object, no HTTP, no Starlette."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any

import pytest

from gateway.config import Upstream
from gateway.events import Delta, Final, RoundUsage, ToolFinished, ToolStarted
from gateway.codecs import open_model
from gateway.loop import LoopJob, run_loop
from gateway.tools.base import StaticSource, Tool, ToolError
from gateway.tools.toolbox import Toolbox
from gateway.usage import add_usage
from tests.support import call, chunk, completion


class FakeUpstream:
    """Stands in for UpstreamClient under the OpenAI Chat codec: pops scripted replies, records payloads."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.payloads: list[dict[str, Any]] = []

    def _next(self, payload: dict[str, Any]) -> Any:
        # The loop appends to one message list; snapshot what was sent this round.
        self.payloads.append({**payload, "messages": list(payload["messages"])})
        assert self.replies, "the loop made one upstream call too many"
        return self.replies.pop(0)

    async def complete(self, upstream, payload, **_):
        return self._next(payload)

    async def stream(self, upstream, payload, *, fold, **_):
        for item in self._next(payload):
            part = fold.feed_many([item])  # one chunk per network read
            if part is not None:
                yield part
        yield fold.finish()


class Echo(Tool):
    def __init__(self, name: str = "echo", delay: float = 0.0) -> None:
        super().__init__(name, "Echo text.", {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})
        self.delay = delay
        self.running = 0
        self.peak = 0

    async def call(self, arguments):
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.delay)
            if arguments["text"] == "boom":
                raise ToolError("it went boom")
            return arguments["text"].upper()
        finally:
            self.running -= 1


def job(offer, **kw) -> LoopJob:
    upstream = Upstream(name="up", url="http://up.test/v1")
    kw.setdefault("params", {})
    return LoopJob(upstream=upstream, model="up-model", messages=[{"role": "user", "content": "hi"}], offer=offer, **kw)


async def run(j: LoopJob, upstream: FakeUpstream, toolbox: Toolbox, *, usage: bool = False) -> list:
    """The loop's events (without the per-round usage ones, unless asked)."""
    async with aclosing(run_loop(j, open_model(upstream, j), toolbox)) as events:
        return [e async for e in events if usage or not isinstance(e, RoundUsage)]


def box(*tools: Tool, **kw) -> Toolbox:
    return Toolbox([StaticSource("test", tools)], **kw)


async def test_events_of_a_tool_round_then_the_answer():
    toolbox = box(Echo())
    up = FakeUpstream(completion(None, tool_calls=[call("echo", {"text": "a"}, "x")]), completion("done"))
    events = await run(job(toolbox.select(["*"])), up, toolbox)
    assert [type(e) for e in events] == [ToolStarted, ToolFinished, Final]
    final = events[-1]
    assert final.message == {"role": "assistant", "content": "done"}
    assert (final.rounds, final.tool_calls, final.finish_reason) == (1, 1, "stop")
    assert up.payloads[1]["messages"][-1] == {"role": "tool", "tool_call_id": "x", "content": "A"}


async def test_round_runs_calls_concurrently_within_the_bound():
    echo = Echo(delay=0.01)
    toolbox = box(echo, max_parallel=3)
    calls = [call("echo", {"text": str(i)}, f"c{i}") for i in range(7)]
    up = FakeUpstream(completion(None, tool_calls=calls), completion("ok"))
    await run(job(toolbox.select(["*"])), up, toolbox)
    assert echo.peak == 3
    tool_ids = [m["tool_call_id"] for m in up.payloads[1]["messages"] if m["role"] == "tool"]
    assert tool_ids == [f"c{i}" for i in range(7)]


async def test_tool_errors_are_messages_for_the_model():
    toolbox = box(Echo())
    up = FakeUpstream(completion(None, tool_calls=[call("echo", {"text": "boom"})]), completion("sorry"))
    events = await run(job(toolbox.select(["*"])), up, toolbox)
    assert events[1].outcome == "error"
    assert up.payloads[1]["messages"][-1]["content"] == "Error: it went boom"


async def test_duplicate_call_ids_are_made_unique():
    toolbox = box(Echo())
    calls = [call("echo", {"text": "a"}, "same"), call("echo", {"text": "b"}, "same")]
    up = FakeUpstream(completion(None, tool_calls=calls), completion("ok"))
    await run(job(toolbox.select(["*"])), up, toolbox)
    sent = up.payloads[1]["messages"]
    ids = [c["id"] for c in sent[-3]["tool_calls"]]
    assert len(set(ids)) == 2
    assert [m["tool_call_id"] for m in sent[-2:]] == ids


async def test_streamed_rounds_forward_text_and_separate_rounds():
    toolbox = box(Echo())
    round1 = [
        chunk({"content": "Let me look."}),
        chunk({"tool_calls": [{"index": 0, "id": "t", "function": {"name": "echo", "arguments": '{"text": "q"}'}}]}),
        chunk({}, "tool_calls"),
    ]
    round2 = [chunk({"reasoning_content": "hmm"}), chunk({"content": "Found it."}), chunk({}, "stop")]
    up = FakeUpstream(round1, round2)
    events = await run(job(toolbox.select(["*"]), stream=True), up, toolbox)
    deltas = [e for e in events if isinstance(e, Delta)]
    # Each round's text as it came; keeping rounds apart is the renderer's job (RoundUsage marks the end).
    assert deltas == [Delta("Let me look."), Delta(None, "hmm"), Delta("Found it.")]
    assert up.payloads[0]["stream"] is True and up.payloads[0]["stream_options"] == {"include_usage": True}
    assert events[-1].message["content"] == "Found it."


async def test_no_tools_offered_means_one_plain_call():
    up = FakeUpstream(completion("plain"))
    events = await run(job(Toolbox().select(["*"])), up, Toolbox())
    assert [type(e) for e in events] == [Final]
    assert "tools" not in up.payloads[0] and "tool_choice" not in up.payloads[0]


async def test_model_calling_tools_after_tool_choice_none_gets_its_text_returned():
    toolbox = box(Echo())
    again = lambda: completion("partial", tool_calls=[call("echo", {"text": "x"})])  # noqa: E731
    up = FakeUpstream(again(), again())
    events = await run(job(toolbox.select(["*"]), max_rounds=1), up, toolbox)
    final = events[-1]
    assert up.payloads[-1]["tool_choice"] == "none"
    assert final.message == {"role": "assistant", "content": "partial"}
    assert final.finish_reason == "stop"


@pytest.mark.parametrize(
    ("a", "b", "total"),
    [
        (None, {"prompt_tokens": 1}, {"prompt_tokens": 1}),
        ({"prompt_tokens": 1, "total_tokens": 2}, {"prompt_tokens": 3, "total_tokens": 4}, {"prompt_tokens": 4, "total_tokens": 6}),
        ({"completion_tokens_details": {"reasoning_tokens": 2}}, {"completion_tokens_details": {"reasoning_tokens": 5}}, {"completion_tokens_details": {"reasoning_tokens": 7}}),
        ({"prompt_tokens": 1}, None, {"prompt_tokens": 1}),
    ],
)
def test_usage_is_summed_with_nested_details(a, b, total):
    assert add_usage(add_usage(None, a), b) == total


async def test_closing_the_loop_cancels_running_tools():
    slow = Echo("slow", delay=30)
    toolbox = box(slow)
    calls = [call("slow", {"text": "a"}, "1"), call("slow", {"text": "b"}, "2")]
    up = FakeUpstream(completion(None, tool_calls=calls))
    j = job(toolbox.select(["*"]))
    events = run_loop(j, open_model(up, j), toolbox)
    async with aclosing(events):
        assert isinstance(await events.__anext__(), RoundUsage)
        assert isinstance(await events.__anext__(), ToolStarted)
        assert isinstance(await events.__anext__(), ToolStarted)
        task = asyncio.ensure_future(events.__anext__())
        while slow.running < 2:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert slow.running == 0


# -- bounds ------------------------------------------------------------------------------


async def test_usage_is_an_event_per_round_as_it_arrives():
    toolbox = box(Echo())
    up = FakeUpstream(completion(None, tool_calls=[call("echo", {"text": "a"})]), completion("done", usage={"completion_tokens": 5}))
    events = await run(job(toolbox.select(["*"])), up, toolbox, usage=True)
    assert [e for e in events if isinstance(e, RoundUsage)] == [
        RoundUsage(1, {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}),
        RoundUsage(2, {"completion_tokens": 5}),
    ]


async def test_tool_calls_per_request_are_capped_then_the_model_answers():
    echo = Echo()
    toolbox = box(echo)
    many = lambda r: completion(None, tool_calls=[call("echo", {"text": f"{r}-{i}"}, f"r{r}c{i}") for i in range(3)])  # noqa: E731
    up = FakeUpstream(many(1), many(2), completion("enough"))
    events = await run(job(toolbox.select(["*"]), max_tool_calls=5), up, toolbox)
    assert sum(isinstance(e, ToolStarted) for e in events) == 5
    final = events[-1]
    assert (final.message["content"], final.tool_calls) == ("enough", 5)
    # Every call got its one reply; the one past the limit says why it did not run.
    replies = [m for m in up.payloads[2]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in replies] == ["r1c0", "r1c1", "r1c2", "r2c0", "r2c1", "r2c2"]
    assert "limit of 5 tool calls" in replies[-1]["content"]
    assert up.payloads[2]["tool_choice"] == "none"


async def test_200_calls_in_one_round_run_only_up_to_the_cap():
    toolbox = box(Echo())
    up = FakeUpstream(completion(None, tool_calls=[call("echo", {"text": str(i)}, f"c{i}") for i in range(200)]), completion("ok"))
    events = await run(job(toolbox.select(["*"]), max_tool_calls=32), up, toolbox)
    assert sum(isinstance(e, ToolStarted) for e in events) == 32
    assert len([m for m in up.payloads[1]["messages"] if m["role"] == "tool"]) == 200


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_is_clamped_to_the_ceiling_and_spent_over_rounds(key):
    toolbox = box(Echo())
    first = completion(None, tool_calls=[call("echo", {"text": "a"})], usage={"completion_tokens": 30})
    up = FakeUpstream(first, completion("fine", usage={"completion_tokens": 10}))
    await run(job(toolbox.select(["*"]), params={key: 1e9}, max_output_tokens=100), up, toolbox)
    assert up.payloads[0][key] == 100
    assert up.payloads[1][key] == 70  # what the first round left


async def test_a_spent_budget_ends_the_loop_with_length():
    toolbox = box(Echo())
    first = completion(None, tool_calls=[call("echo", {"text": "a"})], usage={"completion_tokens": 50})
    up = FakeUpstream(first)
    events = await run(job(toolbox.select(["*"]), params={"max_tokens": 50}), up, toolbox)
    assert events[-1].finish_reason == "length"
    assert len(up.payloads) == 1  # no call the client's budget does not cover


async def test_truncation_stays_visible_and_a_cut_tool_call_is_never_run():
    echo = Echo()
    toolbox = box(echo)
    cut = completion("Let me", tool_calls=[call("echo", '{"text": "a')], finish="length")
    up = FakeUpstream(cut)
    events = await run(job(toolbox.select(["*"])), up, toolbox)
    assert [type(e) for e in events] == [Final]
    assert events[-1].finish_reason == "length"
    assert events[-1].message == {"role": "assistant", "content": "Let me"}
    up = FakeUpstream(completion("It is long", finish="length"))
    assert (await run(job(toolbox.select(["*"])), up, toolbox))[-1].finish_reason == "length"


async def test_reasoning_is_not_sent_back_upstream():
    toolbox = box(Echo())
    first = completion(None, tool_calls=[call("echo", {"text": "a"})])
    first["choices"][0]["message"]["reasoning_content"] = "private thoughts"
    up = FakeUpstream(first, completion("ok"))
    await run(job(toolbox.select(["*"])), up, toolbox)
    assistant = [m for m in up.payloads[1]["messages"] if m["role"] == "assistant"][0]
    assert "reasoning_content" not in assistant and assistant["tool_calls"]


async def test_calls_that_need_approval_are_held_and_the_rest_run():
    echo, other = Echo(), Echo("other")
    toolbox = box(echo, other)
    calls = [call("echo", {"text": "a"}, "e1"), call("other", {"text": "b"}, "o1")]
    up = FakeUpstream(completion(None, tool_calls=calls))
    j = job(toolbox.select(["*"]), ask_first=lambda name: name == "other")
    events = await run(j, up, toolbox)
    final = events[-1]
    assert [e.call_id for e in events if isinstance(e, ToolStarted)] == ["e1"]
    assert final.finish_reason == "tool_calls" and [c["id"] for c in final.approval_requests] == ["o1"]
    assert final.client_tool_calls is None
    # The held call has no tool message yet: its answer comes with the approval.
    assert [m.get("tool_call_id") for m in j.messages if m["role"] == "tool"] == ["e1"]


async def test_resumed_calls_run_if_approved_and_are_refused_if_not():
    toolbox = box(Echo())
    approved, denied = call("echo", {"text": "yes"}, "y1"), call("echo", {"text": "no"}, "n1")
    messages = [{"role": "user", "content": "go"}, {"role": "assistant", "content": None, "tool_calls": [approved, denied]}]
    up = FakeUpstream(completion("done"))
    j = job(toolbox.select(["*"]), resume=[(approved, True), (denied, False)])
    j.messages = messages
    events = await run(j, up, toolbox)
    assert [e.call_id for e in events if isinstance(e, ToolFinished)] == ["y1"]
    sent = up.payloads[0]["messages"]
    assert sent[-2] == {"role": "tool", "tool_call_id": "y1", "content": "YES"}
    assert sent[-1]["tool_call_id"] == "n1" and "did not approve" in sent[-1]["content"]
    assert events[-1].tool_calls == 1
