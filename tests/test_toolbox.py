"""The toolbox: naming, selection, and one round of tool calls."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.tools.base import StaticSource, Tool, ToolError
from gateway.tools.toolbox import Toolbox


class Echo(Tool):
    def __init__(self, name: str = "echo", description: str = "Say it back.", **kw) -> None:
        schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
        super().__init__(name, description, schema, **kw)

    async def call(self, arguments):
        return arguments["text"]


class Returns(Tool):
    def __init__(self, name: str, output, parameters=None) -> None:
        super().__init__(name, "Returns a fixed output.", parameters)
        self.output = output

    async def call(self, arguments):
        return self.output


class Sleeps(Tool):
    def __init__(self, name: str = "sleepy", seconds: float = 10.0, **kw) -> None:
        super().__init__(name, "Sleeps.", **kw)
        self.seconds = seconds
        self.cancelled = False

    async def call(self, arguments):
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return "woke up"


class Fails(Tool):
    def __init__(self, name: str, exc: BaseException) -> None:
        super().__init__(name, "Fails.")
        self.exc = exc

    async def call(self, arguments):
        raise self.exc


class Gauge(Tool):
    """Counts how many calls run at once."""

    def __init__(self) -> None:
        super().__init__("gauge", "Measures concurrency.")
        self.running = 0
        self.peak = 0
        self.calls = 0

    async def call(self, arguments):
        self.running += 1
        self.calls += 1
        self.peak = max(self.peak, self.running)
        try:
            for _ in range(5):  # give every other task the chance to start
                await asyncio.sleep(0)
            return "measured"
        finally:
            self.running -= 1


class Gated(Tool):
    """Finishes only when the test says so."""

    def __init__(self, name: str) -> None:
        super().__init__(name, "Waits for a go.")
        self.go = asyncio.Event()

    async def call(self, arguments):
        await self.go.wait()
        return f"{self.name} done"


def call(name: str, arguments: str = "{}", id_: str | None = None) -> dict:
    return {"id": id_ or f"call_{name}", "type": "function", "function": {"name": name, "arguments": arguments}}


def box(*tools: Tool, **kw) -> Toolbox:
    return Toolbox([StaticSource("local", tools)], **kw)


async def run(toolbox: Toolbox, calls: list[dict], patterns=("*",), **kw):
    offer = toolbox.select(patterns)
    return [o async for o in toolbox.run_round(calls, offer, **kw)]


async def one(toolbox: Toolbox, c: dict, **kw):
    [outcome] = await run(toolbox, [c], **kw)
    assert outcome.call_id == c["id"] and outcome.name == c["function"]["name"]
    assert outcome.arguments == c["function"]["arguments"]
    assert outcome.duration_s >= 0
    return outcome


# --- one call --------------------------------------------------------------------


async def test_ok():
    outcome = await one(box(Echo()), call("echo", '{"text": "hi"}'))
    assert (outcome.outcome, outcome.content, outcome.cut) == ("ok", "hi", False)


async def test_unknown_tool_names_the_available_ones():
    outcome = await one(box(Echo(), Echo("shout")), call("nope"))
    assert outcome.outcome == "unknown_tool"
    assert "nope" in outcome.content and "echo" in outcome.content and "shout" in outcome.content


async def test_tool_not_in_the_offer_is_unknown():
    toolbox = box(Echo(), Echo("secret"))
    [outcome] = await run(toolbox, [call("secret", '{"text": "x"}')], patterns=("echo",))
    assert outcome.outcome == "unknown_tool"
    assert "secret" not in outcome.content.split("Available tools:")[1]


@pytest.mark.parametrize("arguments", ['{"text": "hi"', "not json", "{'text': 'hi'}"])
async def test_invalid_json_arguments(arguments):
    outcome = await one(box(Echo()), call("echo", arguments))
    assert outcome.outcome == "bad_arguments"
    assert "not valid JSON" in outcome.content and "echo" in outcome.content


@pytest.mark.parametrize("arguments", ["[1, 2]", '"text"', "3"])
async def test_arguments_that_are_not_an_object(arguments):
    outcome = await one(box(Echo()), call("echo", arguments))
    assert outcome.outcome == "bad_arguments"
    assert "JSON object" in outcome.content


async def test_empty_arguments_mean_no_arguments():
    outcome = await one(box(Returns("now", "12:00")), call("now", "  "))
    assert (outcome.outcome, outcome.content) == ("ok", "12:00")


async def test_missing_required_field_is_named():
    outcome = await one(box(Echo()), call("echo", '{"txt": "hi"}'))
    assert outcome.outcome == "bad_arguments"
    assert "'text' is a required property" in outcome.content


async def test_wrong_type_names_the_field_path():
    schema = {
        "type": "object",
        "properties": {"opts": {"type": "object", "properties": {"limit": {"type": "integer"}}}},
    }
    outcome = await one(box(Returns("search", "x", schema)), call("search", '{"opts": {"limit": "ten"}}'))
    assert outcome.outcome == "bad_arguments"
    assert "opts/limit" in outcome.content and "'ten'" in outcome.content and "integer" in outcome.content


async def test_broken_schema_does_not_block_calls():
    outcome = await one(box(Returns("odd", "fine", {"type": 12})), call("odd", '{"a": 1}'))
    assert (outcome.outcome, outcome.content) == ("ok", "fine")


async def test_timeout_of_the_tool_itself():
    tool = Sleeps(timeout_s=0.05)
    outcome = await one(box(tool, timeout_s=30), call("sleepy"))
    assert outcome.outcome == "timeout"
    assert "0.05" in outcome.content and "sleepy" in outcome.content
    assert tool.cancelled
    assert outcome.duration_s < 5


async def test_toolbox_default_timeout():
    outcome = await one(box(Sleeps(), timeout_s=0.05), call("sleepy"))
    assert outcome.outcome == "timeout"


async def test_tool_error_is_a_message_for_the_model():
    outcome = await one(box(Fails("lookup", ToolError("city 'Xyz' not found"))), call("lookup"))
    assert outcome.outcome == "error"
    assert outcome.content == "Error: city 'Xyz' not found"


async def test_unexpected_exception_is_an_error_naming_no_internals(caplog):
    with caplog.at_level(logging.ERROR, logger="toolgate.tools"):
        outcome = await one(box(Fails("buggy", KeyError("/srv/secret/path"))), call("buggy"))
    assert outcome.outcome == "error"
    assert "buggy" in outcome.content and "KeyError" in outcome.content
    assert "/srv/secret/path" not in outcome.content
    assert any(r.exc_info for r in caplog.records)  # logged as a bug, with the traceback


# --- shaping results -------------------------------------------------------------


async def test_long_result_is_cut_with_a_visible_marker():
    outcome = await one(box(Returns("big", "x" * 150), max_result_chars=100), call("big"))
    assert outcome.cut is True
    assert outcome.content.startswith("x" * 100)
    assert "x" * 101 not in outcome.content
    assert "cut" in outcome.content and "50 more characters" in outcome.content


async def test_result_at_the_limit_is_not_cut():
    outcome = await one(box(Returns("fits", "x" * 100), max_result_chars=100), call("fits"))
    assert (outcome.content, outcome.cut) == ("x" * 100, False)


PNG = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


async def test_image_part_becomes_a_placeholder_by_default():
    tool = Returns("shot", [{"type": "text", "text": "Screenshot:"}, PNG])
    outcome = await one(box(tool), call("shot"))
    assert isinstance(outcome.content, str)
    assert outcome.content.startswith("Screenshot:\n")
    assert "image/png" in outcome.content and "not shown" in outcome.content
    assert "iVBORw0KGgo" not in outcome.content


async def test_image_part_is_kept_when_the_host_takes_images():
    tool = Returns("shot", [{"type": "text", "text": "Screenshot:"}, PNG])
    outcome = await one(box(tool), call("shot"), tool_images=True)
    assert outcome.content == [{"type": "text", "text": "Screenshot:"}, PNG]


async def test_other_parts_become_placeholders_and_text_parts_are_cut():
    tool = Returns("mixed", [{"type": "text", "text": "y" * 30}, {"type": "input_audio", "input_audio": {}}])
    outcome = await one(box(tool, max_result_chars=10), call("mixed"), tool_images=True)
    assert outcome.cut is True
    assert outcome.content.startswith("y" * 10 + "\n[... cut")
    assert "input_audio" in outcome.content


async def test_output_that_is_not_text_or_parts_is_stringified():
    outcome = await one(box(Returns("num", 42)), call("num"))
    assert (outcome.outcome, outcome.content) == ("ok", "42")


async def test_parts_that_are_not_objects_do_not_fail_the_request():
    outcome = await one(box(Returns("loose", ["a", 1])), call("loose"))
    assert outcome.outcome == "ok"
    assert outcome.content == "a\n1"


# --- a round of several calls ----------------------------------------------------


async def test_every_call_gets_exactly_one_outcome():
    toolbox = box(Echo(), Fails("bad", ToolError("nope")))
    calls = [call("echo", '{"text": "a"}', "c1"), call("bad", "{}", "c2"), call("ghost", "{}", "c3"), call("echo", "{", "c4")]
    outcomes = await run(toolbox, calls)
    assert sorted((o.call_id, o.outcome) for o in outcomes) == [
        ("c1", "ok"), ("c2", "error"), ("c3", "unknown_tool"), ("c4", "bad_arguments"),
    ]  # fmt: skip


async def test_concurrency_is_bounded():
    gauge = Gauge()
    outcomes = await run(box(gauge, max_parallel=2), [call("gauge", "{}", f"c{i}") for i in range(4)])
    assert [o.outcome for o in outcomes] == ["ok"] * 4
    assert gauge.calls == 4
    assert gauge.peak == 2


async def test_calls_run_concurrently_up_to_the_bound():
    gauge = Gauge()
    await run(box(gauge, max_parallel=8), [call("gauge", "{}", f"c{i}") for i in range(4)])
    assert gauge.peak == 4


async def test_waiting_for_a_slot_does_not_count_against_the_timeout():
    hold = Sleeps("hold", seconds=0.3, timeout_s=5)
    quick = Returns("quick", "fast")
    quick.timeout_s = 0.1
    outcomes = await run(box(hold, quick, max_parallel=1), [call("hold"), call("quick")])
    assert {o.name: o.outcome for o in outcomes} == {"hold": "ok", "quick": "ok"}


async def test_outcomes_are_yielded_as_they_complete():
    first, second = Gated("first"), Gated("second")
    toolbox = box(first, second)
    offer = toolbox.select(["*"])
    order = []
    second.go.set()
    async for outcome in toolbox.run_round([call("first"), call("second")], offer):
        order.append(outcome.name)
        first.go.set()  # only now may the first call finish
    assert order == ["second", "first"]


async def test_stopping_early_cancels_the_running_calls():
    slow = Sleeps("slow")
    toolbox = box(slow, Returns("quick", "q"))
    offer = toolbox.select(["*"])
    outcomes = toolbox.run_round([call("slow"), call("quick")], offer)
    first = await outcomes.__anext__()
    assert first.name == "quick"
    await outcomes.aclose()
    assert slow.cancelled


async def test_empty_round():
    assert await run(box(Echo()), []) == []


# --- naming and selection --------------------------------------------------------


def names(toolbox: Toolbox, patterns=("*",)) -> list[str]:
    return sorted(toolbox.select(patterns).tools)


def test_names_clashing_between_sources_are_both_prefixed():
    toolbox = Toolbox([StaticSource("web", [Echo("fetch")]), StaticSource("files", [Echo("fetch"), Echo("stat")])])
    assert names(toolbox) == ["files_fetch", "stat", "web_fetch"]
    assert toolbox.owners() == {"web_fetch": "web", "files_fetch": "files", "stat": "files"}


async def test_prefixed_tool_is_called_under_its_offered_name():
    toolbox = Toolbox([StaticSource("a", [Echo("echo")]), StaticSource("b", [Echo("echo")])])
    outcome = await one(toolbox, call("b_echo", '{"text": "from b"}'))
    assert (outcome.outcome, outcome.content) == ("ok", "from b")


def test_prefix_option():
    toolbox = Toolbox([StaticSource("mcp_git", [Echo("log")], prefix=True), StaticSource("builtin", [Echo("now")])])
    assert names(toolbox) == ["mcp_git_log", "now"]


def test_a_prefixed_source_does_not_rename_an_unprefixed_tool_of_the_same_name():
    # the prefixed "web_fetch_url" never clashes with the built-in "fetch_url"
    toolbox = Toolbox([StaticSource("builtin", [Echo("fetch_url")]), StaticSource("web", [Echo("fetch_url")], prefix=True)])
    assert names(toolbox) == ["fetch_url", "web_fetch_url"]


def test_names_are_cleaned_for_the_upstream():
    toolbox = Toolbox([StaticSource("my server", [Echo("files.read"), Echo("x" * 80)], prefix=False)])
    offered = names(toolbox)
    assert "files_read" in offered
    assert all(len(n) <= 64 for n in offered)
    schema_names = {s["function"]["name"] for s in toolbox.select(["*"]).schemas}
    assert schema_names == set(offered)


def test_glob_selection():
    toolbox = Toolbox(
        [
            StaticSource("builtin", [Echo("current_time"), Echo("calculate"), Echo("fetch_url")]),
            StaticSource("mcp_files", [Echo("read"), Echo("write")], prefix=True),
        ]
    )
    assert names(toolbox, ["current_time", "calculate"]) == ["calculate", "current_time"]
    assert names(toolbox, ["mcp_files_*"]) == ["mcp_files_read", "mcp_files_write"]
    assert names(toolbox, ["c*", "mcp_files_r?ad"]) == ["calculate", "current_time", "mcp_files_read"]
    assert names(toolbox, ["Current_Time"]) == []  # case-sensitive
    assert names(toolbox, []) == []
    offer = toolbox.select(["calculate"])
    assert offer.schemas == [
        {
            "type": "function",
            "function": {"name": "calculate", "description": "Say it back.", "parameters": dict(Echo().parameters)},
        }
    ]


def test_long_description_is_cut():
    toolbox = box(Echo(description="d" * 50), max_description_chars=20)
    [schema] = toolbox.select(["echo"]).schemas
    assert schema["function"]["description"] == "d" * 20


def test_selection_is_cached_until_a_source_changes():
    source = StaticSource("mcp", [Echo("one")])
    toolbox = Toolbox([source])
    offer = toolbox.select(["*"])
    assert toolbox.select(["*"]) is offer
    source._tools = [Echo("one"), Echo("two")]  # a new list object: tools/list_changed
    assert names(toolbox) == ["one", "two"]
    assert toolbox.select(["*"]) is not offer


def test_cache_is_rebuilt_even_if_the_new_list_reuses_the_old_ones_address():
    source = StaticSource("mcp", [Echo("old")])
    toolbox = Toolbox([source])
    assert names(toolbox) == ["old"]
    for i in range(100):  # CPython often hands a freed list's memory to the next list
        tool = Echo(f"new{i}")
        source._tools = None
        source._tools = [tool]
        assert names(toolbox) == [f"new{i}"]


async def test_schema_check_follows_a_tool_replaced_under_the_same_name():
    source = StaticSource("mcp", [])
    toolbox = Toolbox([source])
    for i in range(100):  # the new tool object may land where the freed one lived
        required = "a" if i % 2 else "b"
        source._tools = []
        toolbox.all_tools()  # the old tool is gone now
        source._tools = [Returns("t", "ok", {"type": "object", "required": [required]})]
        outcome = await one(toolbox, call("t", '{"b": 1}'))
        assert outcome.outcome == ("bad_arguments" if required == "a" else "ok"), i
