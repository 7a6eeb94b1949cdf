"""The toolbox: naming, selection, and one round of tool calls."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import orjson
import pytest

from gateway.redact import SECRETS
from gateway.tools import toolbox as toolbox_module
from gateway.tools import toolbox as toolbox_module
from gateway.tools import hints
from gateway.tools.base import StaticSource, Tool, ToolError, report_progress
from gateway.tools.progress import Note
from gateway.tools.toolbox import Toolbox
from gateway.tools.workers import WorkersBusy


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


async def test_image_part_becomes_a_placeholder():
    tool = Returns("shot", [{"type": "text", "text": "Screenshot:"}, PNG])
    outcome = await one(box(tool), call("shot"))
    assert isinstance(outcome.content, str)
    assert outcome.content.startswith("Screenshot:\n")
    assert "image/png" in outcome.content and "not shown" in outcome.content
    assert "iVBORw0KGgo" not in outcome.content


async def test_other_parts_become_placeholders_and_text_parts_are_cut():
    tool = Returns("mixed", [{"type": "text", "text": "y" * 30}, {"type": "input_audio", "input_audio": {}}])
    outcome = await one(box(tool, max_result_chars=10), call("mixed"))
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


# --- schemas: prepared once, nothing fetched, checked inside the timeout ---------


class Knock:
    """A loopback port, served on a thread, that notes every connection and hangs up."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/schema.json"
        self.knocks = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.knocks += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def knock():
    server = Knock()
    yield server
    server.close()


async def test_a_remote_ref_is_never_fetched_and_the_tool_still_runs(knock, caplog):
    schema = {"type": "object", "properties": {"a": {"$ref": knock.url}, "n": {"type": "integer"}}}
    toolbox = box(Returns("remote", "ran", schema))
    with caplog.at_level(logging.WARNING, logger="toolgate.tools"):
        outcome = await one(toolbox, call("remote", '{"a": {"x": 1}, "n": 2}'))
        bad = await one(toolbox, call("remote", '{"n": "two"}'))
    assert (outcome.outcome, outcome.content) == ("ok", "ran")
    assert bad.outcome == "bad_arguments" and "n: 'two' is not of type 'integer'" in bad.content
    assert knock.knocks == 0
    [warning] = [r for r in caplog.records if "parameter schema" in r.getMessage()]
    assert "'remote'" in warning.getMessage() and knock.url in warning.getMessage()


async def test_a_dangling_local_ref_does_not_fail_the_request():
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}
    outcome = await one(box(Returns("dangling", "ran", schema)), call("dangling", '{"a": 1}'))
    assert (outcome.outcome, outcome.content) == ("ok", "ran")


def test_the_offered_schema_has_local_refs_inlined():
    schema = {
        "type": "object",
        "properties": {"where": {"$ref": "#/$defs/Place"}},
        "$defs": {"Place": {"type": "string", "description": "A city."}},
    }
    [offered] = box(Returns("find", "x", schema)).select(["*"]).schemas
    assert offered["function"]["parameters"] == {
        "type": "object", "properties": {"where": {"type": "string", "description": "A city."}},
    }  # fmt: skip


async def test_a_broken_schema_is_offered_permissive_with_one_warning(caplog):
    source = StaticSource("mcp", [Returns("odd", "fine", {"type": 12})])
    toolbox = Toolbox([source])
    with caplog.at_level(logging.WARNING, logger="toolgate.tools"):
        [offered] = toolbox.select(["*"]).schemas
        for _ in range(3):  # relisted: new objects, the same definitions
            source._tools = [Returns("odd", "fine", {"type": 12})]
            toolbox.select(["*"])
    assert offered["function"]["parameters"] == {"type": "object", "properties": {}}
    assert len([r for r in caplog.records if "parameter schema of tool 'odd'" in r.getMessage()]) == 1


async def test_schemas_are_prepared_once_per_definition(monkeypatch):
    prepared = []
    real = toolbox_module.prepare
    monkeypatch.setattr(toolbox_module, "prepare", lambda p: prepared.append(p) or real(p))
    source = StaticSource("mcp", [Echo()])
    toolbox = Toolbox([source])
    for _ in range(3):
        source._tools = [Echo(), Echo("shout")]  # relisted: new objects, the same definition
        for _ in range(5):
            outcome = await one(toolbox, call("echo", '{"text": "hi"}'))
            assert outcome.outcome == "ok"
    assert len(prepared) == 1


async def test_arguments_past_the_size_cap_are_refused_at_once():
    huge = '{"text": "' + "x" * (toolbox_module.MAX_ARGUMENT_CHARS) + '"}'
    outcome = await one(box(Echo()), call("echo", huge))
    assert outcome.outcome == "bad_arguments" and "longer than" in outcome.content
    assert outcome.duration_s < 1


async def test_arguments_that_are_not_a_string_are_bad_arguments():
    c = call("echo")
    c["function"]["arguments"] = {"text": "hi"}
    [outcome] = await run(box(Echo()), [c])
    assert outcome.outcome == "bad_arguments"


async def test_a_slow_check_runs_off_the_loop_and_inside_the_timeout():
    # uniqueItems compares every pair: a thousand objects take about a second to check.
    schema = {"type": "object", "properties": {"items": {"type": "array", "uniqueItems": True}}}
    tool = Returns("dedupe", "ran", schema)
    tool.timeout_s = 0.1
    arguments = orjson.dumps({"items": [{"k": i} for i in range(1000)]}).decode()
    gaps: list[float] = []

    async def tick():
        last = time.perf_counter()
        for _ in range(1000):
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        outcome = await one(box(tool), call("dedupe", arguments))
    finally:
        ticker.cancel()
    assert outcome.outcome == "timeout" and outcome.duration_s < 0.6
    assert max(gaps) < 0.2  # the event loop kept turning


async def test_small_arguments_are_checked_without_a_thread(monkeypatch):
    async def no_threads(*args):
        raise AssertionError("a thread for a small check")

    monkeypatch.setattr(toolbox_module.WORKERS, "run", no_threads)
    outcome = await one(box(Echo()), call("echo", '{"text": 1}'))
    assert outcome.outcome == "bad_arguments"


async def test_the_check_counts_against_the_timeout(monkeypatch):
    async def slow_check(self, prepared, arguments, size):
        await asyncio.sleep(10)

    monkeypatch.setattr(Toolbox, "_check", slow_check)
    outcome = await one(box(Echo(timeout_s=0.05)), call("echo", '{"text": "hi"}'))
    assert outcome.outcome == "timeout"


# --- whatever a tool raises or returns is an outcome --------------------------------


@pytest.mark.parametrize("exc", [asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(3)])
async def test_base_exceptions_raised_by_a_tool_are_errors(exc, caplog):
    with caplog.at_level(logging.WARNING, logger="toolgate.tools"):
        outcome = await one(box(Fails("wild", exc)), call("wild"))
    assert outcome.outcome == "error" and "wild" in outcome.content
    assert caplog.records


async def test_a_tool_raising_cancelled_says_so():
    outcome = await one(box(Fails("quits", asyncio.CancelledError())), call("quits"))
    assert outcome.content == "Error: tool quits was cancelled."


async def test_base_exceptions_in_a_round_of_several_calls_are_errors_too():
    toolbox = box(Fails("c", asyncio.CancelledError()), Fails("k", KeyboardInterrupt()), Echo())
    outcomes = await run(toolbox, [call("c"), call("k"), call("echo", '{"text": "still here"}')])
    assert sorted((o.name, o.outcome) for o in outcomes) == [("c", "error"), ("echo", "ok"), ("k", "error")]


async def test_a_tool_raising_timeout_error_itself_is_an_error():
    outcome = await one(box(Fails("upstreamish", TimeoutError())), call("upstreamish"))
    assert (outcome.outcome, outcome.content) == ("error", "Error: upstreamish timed out.")


async def test_a_real_cancellation_still_cancels_a_single_call():
    slow = Sleeps("slow")
    toolbox = box(slow)
    task = asyncio.create_task(run(toolbox, [call("slow")]))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slow.cancelled


async def test_a_full_worker_pool_is_a_message_for_the_model():
    outcome = await one(box(Fails("threaded", WorkersBusy("all 8 busy"))), call("threaded"))
    assert outcome.outcome == "error"
    assert "tool workers are all busy" in outcome.content


class Unprintable:
    def __str__(self):
        raise ValueError("no")


@pytest.mark.parametrize(
    "output, text",
    [(None, "(no output)"), ({"a": 1}, '{"a":1}'), (b"caf\xc3\xa9 \xff", "café \ufffd"), (2.5, "2.5"), (True, "true"),
     ({1: "x"}, '{"1":"x"}'), ([{"type": "text", "text": b"bytes"}], "bytes"), ((1, 2), "[1,2]")],
)  # fmt: skip
async def test_odd_return_values_become_text(output, text):
    outcome = await one(box(Returns("odd", output)), call("odd"))
    assert (outcome.outcome, outcome.content) == ("ok", text)


async def test_a_result_that_cannot_be_shown_is_an_error_message(caplog):
    with caplog.at_level(logging.ERROR, logger="toolgate.tools"):
        outcome = await one(box(Returns("odd", [Unprintable()])), call("odd"))
    assert "cannot be shown" in outcome.content


# --- secrets never reach the model ----------------------------------------------------


async def test_secrets_in_results_and_errors_are_masked():
    canary = "canary-toolbox-5d1e0b7a"
    SECRETS.add(canary)
    toolbox = box(
        Returns("says", f"the key is {canary}."),
        Fails("tells", ToolError(f"bad key {canary}")),
        Returns("parts", [{"type": "text", "text": canary}, {"type": "image_url", "image_url": {"url": f"https://img.test/?k={canary}"}}]),
    )
    outcomes = {o.name: o for o in await run(toolbox, [call("says"), call("tells"), call("parts")])}
    assert outcomes["says"].content == "the key is ***."
    assert outcomes["tells"].content == "Error: bad key ***"
    assert outcomes["parts"].content.startswith("***\n[image returned by the tool; not shown")
    assert canary not in repr([o.content for o in outcomes.values()])


async def test_masking_happens_before_the_cut():
    canary = "canary-toolbox-cut-90c2f3"
    SECRETS.add(canary)
    outcome = await one(box(Returns("long", "x" * 8 + canary), max_result_chars=12), call("long"))
    assert "canary" not in outcome.content and outcome.content.startswith("x" * 8 + "***")


async def test_a_huge_result_is_redacted_only_as_far_as_it_is_shown(monkeypatch):
    # Redacting 10 MB scanned it all on the event loop (a 100 MB MCP result held /healthz 2 s).
    seen: list[int] = []

    def spy(text: str) -> str:
        seen.append(len(text))
        return SECRETS(text)

    monkeypatch.setattr(toolbox_module, "SECRETS", spy)
    canary = "canary-toolbox-huge-41ab"
    SECRETS.add(canary)
    outcome = await one(box(Returns("huge", "y" * 95 + canary + "z" * 10_000_000), max_result_chars=100), call("huge"))
    assert outcome.cut and outcome.content.startswith("y" * 95 + "***") and canary not in outcome.content
    assert f"{10_000_000 + 95 + len(canary) - 100} more characters" in outcome.content
    assert max(seen) <= 100 + toolbox_module.SECRET_MARGIN


# --- names do not depend on who is up ---------------------------------------------


async def test_a_source_going_down_renames_nobody(caplog):
    left, right = StaticSource("left", [Echo("echo")]), StaticSource("right", [Echo("echo"), Echo("ping")])
    toolbox = Toolbox([left, right])
    with caplog.at_level(logging.WARNING, logger="toolgate.tools"):
        assert names(toolbox) == ["left_echo", "ping", "right_echo"]
        for _ in range(3):
            right._tools = []  # down: lists nothing
            assert names(toolbox) == ["left_echo"]
            outcome = await one(toolbox, call("left_echo", '{"text": "still me"}'))
            assert outcome.content == "still me"
            right._tools = [Echo("echo"), Echo("ping")]  # back up
            assert names(toolbox) == ["left_echo", "ping", "right_echo"]
    [warning] = [r for r in caplog.records if "several sources" in r.getMessage()]
    assert "left_echo" in warning.getMessage() and "right_echo" in warning.getMessage()


def test_a_source_that_came_up_later_keeps_its_claim_after_going_down():
    late = StaticSource("late", [])
    toolbox = Toolbox([StaticSource("early", [Echo("echo")]), late])
    assert names(toolbox) == ["echo"]  # nobody else has ever offered "echo"
    late._tools = [Echo("echo")]
    assert names(toolbox) == ["early_echo", "late_echo"]
    late._tools = []
    assert names(toolbox) == ["early_echo"]


def test_a_taken_name_is_reported_once(caplog):
    source = StaticSource("a", [Echo("b_x")])
    toolbox = Toolbox([source, StaticSource("b", [Echo("x")], prefix=True)])
    with caplog.at_level(logging.ERROR, logger="toolgate.tools"):
        for _ in range(3):
            source._tools = [Echo("b_x")]
            assert names(toolbox) == ["a_b_x", "b_x"]
    assert not [r for r in caplog.records if "is taken" in r.getMessage()]
    # Two sources of one name offering one tool: the second is left out, and said once.
    twin = StaticSource("a", [Echo("y")])
    toolbox = Toolbox([StaticSource("a", [Echo("y")]), twin])
    with caplog.at_level(logging.ERROR, logger="toolgate.tools"):
        for _ in range(3):
            twin._tools = [Echo("y")]
            assert names(toolbox) == ["a_y"]
    assert len([r for r in caplog.records if "is taken" in r.getMessage()]) == 1


def test_a_long_description_is_reported_once(caplog):
    source = StaticSource("s", [Echo(description="d" * 50)])
    toolbox = Toolbox([source], max_description_chars=20)
    with caplog.at_level(logging.WARNING, logger="toolgate.tools"):
        for _ in range(3):
            source._tools = [Echo(description="d" * 50)]
            toolbox.select(["*"])
    assert len([r for r in caplog.records if "description of tool" in r.getMessage()]) == 1


def test_a_schema_that_is_not_json_is_offered_permissive(caplog):
    with caplog.at_level(logging.WARNING, logger="toolgate.tools"):
        [offered] = box(Returns("odd", "x", {"type": "object", "enum": {1, 2}})).select(["*"]).schemas
    assert offered["function"]["parameters"] == {"type": "object", "properties": {}}
    assert "not JSON" in caplog.text


async def test_the_schema_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(toolbox_module, "MAX_SCHEMA_CACHE", 2)
    toolbox = box(*[Returns(f"t{i}", "ok", {"type": "object", "required": [f"a{i}"]}) for i in range(5)])
    assert len(toolbox.select(["*"]).tools) == 5
    assert len(toolbox._prepared) == 2
    outcome = await one(toolbox, call("t0", "{}"))
    assert outcome.outcome == "bad_arguments"


# --- progress ---------------------------------------------------------------------


class Reports(Tool):
    """Reports progress `times` times with a message, yielding to the loop every `every` reports."""

    reports_progress = True

    def __init__(self, name: str, times: int, message: str = "working", every: int = 1, pause: float = 0.0) -> None:
        super().__init__(name, "Reports progress.")
        self.times, self.message, self.every, self.pause = times, message, every, pause

    async def call(self, arguments):
        for i in range(1, self.times + 1):
            report_progress(i, self.times, self.message)
            if i % self.every == 0:
                await asyncio.sleep(self.pause)
        return f"{self.name} done"


async def test_progress_comes_before_the_outcome_as_the_latest_report():
    items = await run(box(Reports("slow", 3, pause=0.3)), [call("slow")])
    notes, [outcome] = [i for i in items if isinstance(i, Note)], [i for i in items if not isinstance(i, Note)]
    assert items[-1] is outcome and outcome.content == "slow done"
    assert [(n.call_id, n.name, n.progress, n.total, n.message) for n in notes][0] == ("call_slow", "slow", 1.0, 3.0, "working")
    assert [n.progress for n in notes] == sorted(n.progress for n in notes) and notes[-1].progress == 3.0


async def test_a_flood_of_progress_is_coalesced_per_call():
    toolbox = box(Reports("a", 20_000, every=100), Reports("b", 20_000, every=100), Echo())
    items = await run(toolbox, [call("a"), call("b"), call("echo", '{"text": "x"}')])
    notes = [i for i in items if isinstance(i, Note)]
    outcomes = [i for i in items if not isinstance(i, Note)]
    assert sorted(o.content for o in outcomes) == ["a done", "b done", "x"]
    assert 1 <= len(notes) < 200  # 40 000 reports
    for name in ("a", "b"):
        done_at = next(i for i, item in enumerate(items) if not isinstance(item, Note) and item.name == name)
        assert not [n for n in items[done_at:] if isinstance(n, Note) and n.name == name]  # none after its outcome


async def test_progress_messages_are_redacted_one_line_and_cut():
    canary = "canary-progress-7f3a91"
    SECRETS.add(canary)
    [note, _] = await run(box(Reports("r", 1, message=f"using {canary}\nthen\tmore " + "y" * 500)), [call("r")])
    assert note.message.startswith("using *** then more yyy") and len(note.message) == 200


async def test_a_tool_that_does_not_report_is_run_as_before():
    items = await run(box(Echo()), [call("echo", '{"text": "hi"}')])
    assert [type(i).__name__ for i in items] == ["ToolOutcome"]
    report_progress(1, 2, "nobody listens")  # outside any call: a no-op


# --- selection by annotation ---------------------------------------------------------


class Hinted(Echo):
    def __init__(self, name: str, hints: dict | None) -> None:
        super().__init__(name)
        self.annotations = hints


def test_exclusions_follow_the_protocol_defaults():
    tools = [
        Hinted("silent", None),
        Hinted("reader", {"readOnlyHint": True}),
        Hinted("reader_says_destructive", {"readOnlyHint": True, "destructiveHint": True}),  # read-only wins
        Hinted("gentle", {"destructiveHint": False}),
        Hinted("closed", {"readOnlyHint": True, "openWorldHint": False}),
        Hinted("odd", {"destructiveHint": "no"}),  # not a boolean: the default
    ]
    toolbox = box(*tools)
    assert set(toolbox.select(("*", "!destructive")).tools) == {"reader", "reader_says_destructive", "gentle", "closed"}
    assert set(toolbox.select(("*", "!open_world")).tools) == {"closed"}
    assert set(toolbox.select(("*", "!destructive", "!open_world")).tools) == {"closed"}
    assert set(toolbox.select(("g*", "!destructive")).tools) == {"gentle"}
    assert hints.problem("!destructive") is None and "names no annotation" in hints.problem("!nope")


def test_builtins_state_their_hints():
    from gateway.tools.builtin.calculate import Calculate
    from gateway.tools.builtin.current_time import CurrentTime

    for tool in (Calculate(), CurrentTime()):
        assert not hints.destructive(tool) and not hints.open_world(tool)


class ReportsFromAThread(Tool):
    reports_progress = True

    def __init__(self) -> None:
        super().__init__("threaded", "Reports from a worker thread.")

    async def call(self, arguments):
        def work():
            report_progress(1, 1, "from a thread")
            return "worked"

        result = await asyncio.to_thread(work)
        await asyncio.sleep(0.05)  # the report crosses to the loop before the outcome
        return result


async def test_progress_from_a_worker_thread_reaches_the_loop():
    items = await run(box(ReportsFromAThread()), [call("threaded")])
    assert [(type(i).__name__, getattr(i, "message", None)) for i in items] == [("Note", "from a thread"), ("ToolOutcome", None)]
