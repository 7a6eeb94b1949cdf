"""Python functions as tools: the signature is the schema, the docstring the description.

::

    [tools.python.weather]
    functions = ["myweather.api:forecast", "myweather.api:alerts"]
    prefix = false
    timeout_s = 10

    # myweather/api.py
    def forecast(city: str, days: int = 3, units: Literal["metric", "imperial"] = "metric") -> str:
        '''Weather forecast for a city.

        Args:
            city: City name, e.g. "Paris".
            days: How many days ahead.
        '''

Parameters may be ``str``, ``int``, ``float``, ``bool``, ``list[X]``, ``dict[str, X]``,
``X | None``, ``Literal[...]``, an ``Enum``, ``Annotated[X, "description"]`` or ``Any``;
a default makes a parameter optional. Sync functions run on the tools' own
worker threads (``gateway.tools.workers.WORKERS``, never the event loop's
default executor, which resolves DNS): a timeout abandons the thread, it cannot
stop it, and when the pool and its queue are full a call fails at once with a
message for the model. Async ones are awaited. Non-string results are returned
as JSON. To tell the model what went wrong, raise ``gateway.tools.base.ToolError``
(its message passes the secret redactor first); any other exception is logged
as a bug and the model only learns its type.
"""

from __future__ import annotations

import collections.abc
import enum
import functools
import importlib
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from gateway.errors import Problems
from gateway.tools.base import StaticSource, Tool, ToolError, tool_name
from gateway.tools.builtin import Options
from gateway.tools.workers import WORKERS

SIMPLE: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    list: {"type": "array"},
    dict: {"type": "object"},
    Any: {},
}
ARRAYS = (list, set, frozenset, collections.abc.Sequence, collections.abc.Iterable)
OBJECTS = (dict, collections.abc.Mapping)
NO_DEFAULT = inspect.Parameter.empty


class SchemaError(Exception):
    """A function whose signature cannot be offered as a tool."""


def schema_for(hint: Any) -> dict[str, Any]:
    """The JSON schema for one parameter's type hint."""
    try:
        simple = SIMPLE.get(hint)
    except TypeError:  # unhashable, e.g. Annotated with a dict in it
        simple = None
    if simple is not None:
        return dict(simple)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"enum": [member.value for member in hint]}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        inner = schema_for(args[0])
        notes = [a for a in args[1:] if isinstance(a, str)]
        return {**inner, "description": notes[0]} if notes else inner
    if origin is typing.Literal:
        kinds = {type(a) for a in args}
        schema: dict[str, Any] = {"enum": list(args)}
        if len(kinds) == 1 and next(iter(kinds)) in SIMPLE:
            schema["type"] = SIMPLE[next(iter(kinds))]["type"]
        return schema
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        schemas = [schema_for(a) for a in options]
        if len(options) < len(args):  # Optional
            if len(schemas) == 1 and isinstance(schemas[0].get("type"), str):
                return {**schemas[0], "type": [schemas[0]["type"], "null"]}
            schemas.append({"type": "null"})
        return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    if origin in ARRAYS:
        return {"type": "array", "items": schema_for(args[0])} if args else {"type": "array"}
    if origin in OBJECTS:
        if args and args[0] is not str:
            raise SchemaError(f"dict keys must be str, not {args[0]!r}")
        return {"type": "object", "additionalProperties": schema_for(args[1])} if args else {"type": "object"}
    raise SchemaError(f"unsupported type {getattr(hint, '__name__', hint)!r}")


def doc_parts(doc: str) -> tuple[str, dict[str, str]]:
    """The first paragraph of a docstring, and descriptions from a Google-style ``Args:`` section."""
    lines = inspect.cleandoc(doc).splitlines()
    first: list[str] = []
    for line in lines:
        if not line.strip():
            break
        first.append(line.strip())
    params: dict[str, str] = {}
    section: int | None = None
    current: str | None = None
    entry_indent = 0
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if re.fullmatch(r"\s*(Args|Arguments|Parameters|Params):\s*", line):
            section, current = indent, None
            continue
        if section is None or not line.strip():
            continue
        if indent <= section:
            section = None
            continue
        entry = re.match(r"\s*\**(\w+)\s*(\([^)]*\))?\s*:\s*(.*)", line)
        if entry and (current is None or indent <= entry_indent):
            current, entry_indent = entry.group(1), indent
            params[current] = entry.group(3).strip()
        elif current is not None:
            params[current] = f"{params[current]} {line.strip()}".strip()
    return " ".join(first), params


def _json_default(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def describe(func: Callable[..., Any]) -> tuple[str, dict[str, Any], dict[str, type[enum.Enum]]]:
    """``(description, parameters schema, enum parameters)`` for ``func``; ``SchemaError`` if it cannot be."""
    doc = inspect.getdoc(func)
    if not doc:
        raise SchemaError("needs a docstring (its first paragraph is the tool's description)")
    summary, notes = doc_parts(doc)
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as exc:
        raise SchemaError(f"type hints cannot be resolved: {exc}") from None
    properties: dict[str, Any] = {}
    required: list[str] = []
    enums: dict[str, type[enum.Enum]] = {}
    for param in inspect.signature(func).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise SchemaError(f"parameter {param.name!r}: *args, **kwargs and positional-only are not supported")
        if param.name not in hints:
            raise SchemaError(f"parameter {param.name!r} needs a type hint")
        try:
            schema = schema_for(hints[param.name])
        except SchemaError as exc:
            raise SchemaError(f"parameter {param.name!r}: {exc}") from None
        if param.name in notes and "description" not in schema:
            schema["description"] = notes[param.name]
        if param.default is NO_DEFAULT:
            required.append(param.name)
        elif isinstance(_json_default(param.default), (str, int, float, bool, type(None))):
            schema["default"] = _json_default(param.default)
        properties[param.name] = schema
        hint = hints[param.name]
        if typing.get_origin(hint) is typing.Annotated:
            hint = typing.get_args(hint)[0]
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            enums[param.name] = hint
    parameters: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        parameters["required"] = required
    return summary, parameters, enums


class FunctionTool(Tool):
    """One Python function as a tool."""

    def __init__(self, func: Callable[..., Any], *, name: str | None = None, timeout_s: float | None = None) -> None:
        description, parameters, self._enums = describe(func)
        super().__init__(name or tool_name(func.__name__, "function"), description, parameters, timeout_s=timeout_s)
        self.func = func
        self._signature = inspect.signature(func)
        self._is_async = inspect.iscoroutinefunction(func)

    async def call(self, arguments: dict[str, Any]) -> str:
        try:
            arguments = {k: self._enums[k](v) if k in self._enums else v for k, v in arguments.items()}
            self._signature.bind(**arguments)
        except (TypeError, ValueError) as exc:
            raise ToolError(f"bad arguments for {self.name}: {exc}") from None
        if self._is_async:
            result = await self.func(**arguments)
        else:
            result = await WORKERS.run(functools.partial(self.func, **arguments))
            if inspect.isawaitable(result):  # a callable object that only looks sync
                result = await result
        if isinstance(result, str):
            return result
        try:
            return orjson.dumps(result, default=_json_fallback, option=orjson.OPT_NON_STR_KEYS).decode()
        except orjson.JSONEncodeError:  # e.g. an integer past 64 bits
            return str(result)


def _json_fallback(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def load(target: str) -> Callable[..., Any]:
    """The callable named by ``"package.module:function"`` (or ``module:Class.method``)."""
    module_name, colon, attr = target.partition(":")
    if not colon or not module_name or not attr:
        raise SchemaError("expected 'module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # the module's own import-time errors too
        raise SchemaError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SchemaError(f"module {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise SchemaError(f"{target} is not callable")
    function: Callable[..., Any] = obj
    return function


def build(name: str, table: Mapping[str, Any], problems: Problems, key: str) -> StaticSource | None:
    """A source for ``[tools.python.NAME]``, or ``None`` (with problems) if any function is unusable."""
    opts = Options(table, problems, key)
    targets = opts.strings("functions", required=True)
    prefix = opts.boolean("prefix", False)
    timeout_s = opts.number("timeout_s", None)
    tools: list[FunctionTool] = []
    for target in targets:
        try:
            tool = FunctionTool(load(target), timeout_s=timeout_s)
        except SchemaError as exc:
            opts.problem("functions", f"{target}: {exc}")
            continue
        if any(t.name == tool.name for t in tools):
            opts.problem("functions", f"{target}: a second function named {tool.name!r}")
            continue
        tools.append(tool)
    if not opts.finish():
        return None
    return StaticSource(name, tools, prefix=prefix)
