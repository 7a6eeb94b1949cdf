"""Python functions as tools: schemas from signatures, sync and async calls, config errors."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import orjson
import pytest

from gateway.errors import Problems
from gateway.redact import SECRETS
from gateway.threads import Threads
from gateway.tools import pyfunc
from gateway.tools.base import ToolError
from gateway.tools.toolbox import Toolbox
from tests import sample_functions


def build(table, name="py"):
    problems = Problems("toolgate.toml")
    source = pyfunc.build(name, table, problems, f"tools.python.{name}")
    return source, problems.lines


def tools(*functions, **table):
    source, problems = build({"functions": [f"tests.sample_functions:{f}" for f in functions], **table})
    assert problems == []
    return {t.name: t for t in source.tools()}


def test_schema_from_signature_and_docstring():
    tool = tools("forecast")["forecast"]
    assert tool.description == "Weather forecast for a city."
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": 'City name, e.g. "Paris".'},
            "days": {"type": "integer", "description": "How many days ahead, at most 10.", "default": 3},
            "units": {"enum": ["metric", "imperial"], "type": "string", "description": "Unit system.",
                      "default": "metric"},
            "detailed": {"type": "boolean", "default": False},
            "hours": {"type": ["array", "null"], "items": {"type": "integer"}, "default": None},
            "extra": {"type": ["object", "null"], "additionalProperties": {"type": "number"}, "default": None},
        },
        "required": ["city"],
        "additionalProperties": False,
    }
    jsonschema.Draft202012Validator.check_schema(tool.parameters)


def test_enum_annotated_and_any():
    tool = tools("paint")["paint"]
    assert tool.description == "Paint the wall in one colour."
    assert tool.parameters["properties"] == {
        "colour": {"enum": ["red", "green"]},
        "note": {"type": "string", "description": "A note for the painter.", "default": ""},
        "anything": {"default": None},
    }
    assert tool.parameters["required"] == ["colour"]


async def test_sync_function_runs_in_a_thread():
    table = tools("forecast", "where")
    assert await table["forecast"].call({"city": "Oslo", "hours": [6, 18]}) == (
        "Oslo: sunny for 3 days (metric, detailed=False, hours=[6, 18], extra=None)"
    )
    assert await table["where"].call({}) != threading.current_thread().name


async def test_async_function_is_awaited_and_enums_converted():
    result = await tools("paint")["paint"].call({"colour": "green", "note": "matt"})
    assert result == '{"colour":"green","is_enum":true,"note":"matt"}'


async def test_non_string_results_are_json():
    assert await tools("numbers")["numbers"].call({"values": [1, 2.5], "scale": 2}) == "[2,5.0]"


async def test_bad_arguments_are_tool_errors():
    table = tools("forecast", "paint")
    with pytest.raises(ToolError, match="bad arguments for forecast: missing a required argument: 'city'"):
        await table["forecast"].call({})
    with pytest.raises(ToolError, match="bad arguments for forecast: got an unexpected keyword argument 'town'"):
        await table["forecast"].call({"city": "x", "town": "y"})
    with pytest.raises(ToolError, match="bad arguments for paint: 'blue' is not a valid Colour"):
        await table["paint"].call({"colour": "blue"})


async def test_exceptions_from_the_function_reach_the_toolbox():
    with pytest.raises(ValueError, match="nope"):
        await tools("fail")["fail"].call({"message": "nope"})


def test_prefix_and_timeout_options():
    source, problems = build({"functions": ["tests.sample_functions:where"], "prefix": True, "timeout_s": 2}, "weather")
    assert problems == []
    assert source.name == "weather" and source.prefix is True
    assert source.tools()[0].timeout_s == 2
    assert source.status().ready


@pytest.mark.parametrize(
    "target, message",
    [
        ("sample_functions", "expected 'module:function'"),
        ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz': ModuleNotFoundError"),
        ("tests.sample_broken_module:f", "cannot import 'tests.sample_broken_module': RuntimeError: boom at import"),
        ("tests.sample_functions:missing", "module 'tests.sample_functions' has no 'missing'"),
        ("tests.sample_functions:NOT_CALLABLE", "is not callable"),
        ("tests.sample_functions:no_doc", "needs a docstring"),
        ("tests.sample_functions:no_hints", "parameter 'x' needs a type hint"),
        ("tests.sample_functions:star_args", "*args, **kwargs and positional-only are not supported"),
        ("tests.sample_functions:odd_type", "parameter 'x': unsupported type 'complex'"),
        ("tests.sample_functions:bad_keys", "parameter 'x': dict keys must be str"),
    ],
)
def test_unusable_functions_are_config_problems(target, message):
    source, problems = build({"functions": [target]})
    assert source is None
    (line,) = problems
    assert line.startswith(f"toolgate.toml: tools.python.py.functions: {target}: ")
    assert message in line


def test_every_problem_is_reported_at_once():
    source, problems = build(
        {
            "functions": ["tests.sample_functions:no_doc", "tests.sample_functions:where",
                          "tests.sample_functions:where", "x"],
            "prefix": "yes",
            "colour": 1,
        }
    )
    assert source is None
    assert [p.split(": ", 2)[1] for p in problems] == [
        "tools.python.py.prefix", "tools.python.py.functions", "tools.python.py.functions",
        "tools.python.py.functions", "tools.python.py.colour",
    ]
    assert "a second function named 'where'" in problems[2]


def test_functions_are_required():
    assert build({}) == (None, ["toolgate.toml: tools.python.py.functions: required; expected a list of strings"])


def test_doc_parts():
    summary, params = pyfunc.doc_parts(
        """Do a thing
        over two lines.

        Arguments:
            a: First.
            b (list[int], optional): Second,
                continued.
              still continued.
        Raises:
            ValueError: never.
        """
    )
    assert summary == "Do a thing over two lines."
    assert params == {"a": "First.", "b": "Second, continued. still continued."}


# --- sync functions on the tools' own threads -------------------------------------


def toolbox_for(*functions, timeout_s=5.0, **table):
    source, problems = build({"functions": [f"tests.sample_functions:{f}" for f in functions], **table})
    assert problems == []
    return Toolbox([source], timeout_s=timeout_s)


async def run_calls(toolbox, *calls):
    offer = toolbox.select(["*"])
    specs = [{"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": orjson.dumps(a).decode()}}
             for i, (n, a) in enumerate(calls)]  # fmt: skip
    return [o async for o in toolbox.run_round(specs, offer)]


@pytest.fixture
def pool(monkeypatch):
    """A small tool-thread pool of three, with no queue; hung calls are released afterwards."""
    small = Threads("toolgate-tool", threads=3, queued=0)
    monkeypatch.setattr(pyfunc, "WORKERS", small, raising=False)  # raising: the test predates WORKERS
    yield small
    sample_functions.RELEASE.set()
    for _ in range(500):
        if small.pending == 0:
            break
        threading.Event().wait(0.01)
    sample_functions.RELEASE.clear()


async def test_sync_functions_do_not_use_the_default_executor(pool):
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=2))  # small, as on a small machine
    toolbox = toolbox_for("hang", "where", timeout_s=0.1)
    try:
        hung = await run_calls(toolbox, *[("hang", {})] * 4)  # one more than there are threads

        started = time.perf_counter()
        await asyncio.wait_for(loop.getaddrinfo("localhost", 80), 5)
        assert time.perf_counter() - started < 0.5  # name lookups are not queued behind hung tools

        assert sorted(o.outcome for o in hung) == ["error", "timeout", "timeout", "timeout"]
        assert "tool workers are all busy" in next(o.content for o in hung if o.outcome == "error")
        [busy] = await run_calls(toolbox, ("where", {}))
        assert busy.outcome == "error" and "busy" in busy.content and busy.duration_s < 0.5
    finally:
        sample_functions.RELEASE.set()
    for _ in range(500):
        if pool.pending == 0:
            break
        await asyncio.sleep(0.01)
    [fine] = await run_calls(toolbox, ("where", {}))
    assert fine.outcome == "ok" and fine.content.startswith("toolgate-tool-")


async def test_system_exit_on_a_worker_thread_is_an_error():
    [outcome] = await run_calls(toolbox_for("exits"), ("exits", {"code": 2}))
    assert outcome.outcome == "error" and "SystemExit" in outcome.content


async def test_a_secret_in_an_exception_does_not_reach_the_model():
    canary = "canary-pyfunc-3b8e61c0"
    SECRETS.add(canary)
    outcomes = await run_calls(toolbox_for("leak"), ("leak", {"key": canary}), ("leak", {"key": canary, "told": True}))
    contents = sorted(o.content for o in outcomes)
    assert contents == ["Error: bad key ***", "Error: leak failed (RuntimeError)."]


async def test_results_json_cannot_hold_are_still_text():
    assert await tools("big")["big"].call({}) == "{1: 1180591620717411303424}"


async def test_an_async_function_behind_a_plain_decorator_is_awaited():
    assert await tools("shout")["shout"].call({"word": "hi"}) == "HI"
