"""Python functions as tools: schemas from signatures, sync and async calls, config errors."""

from __future__ import annotations

import threading

import jsonschema
import pytest

from gateway.errors import Problems
from gateway.tools import pyfunc
from gateway.tools.base import ToolError


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
