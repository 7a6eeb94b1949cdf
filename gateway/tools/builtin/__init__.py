"""The built-in tools: one row each, off until ``[tools.builtin.NAME]`` enables it.

::

    [tools.builtin.current_time]
    default_timezone = "Europe/Berlin"

    [tools.builtin.calculate]

    [tools.builtin.fetch_url]
    max_bytes = 1048576
    allow = ["intranet.example:8080", "10.1.0.0/16"]

    [tools.builtin.read_file]
    roots = ["/srv/docs"]

``build("builtin", table, problems, "tools.builtin")`` returns one source holding
every enabled tool, or ``None`` when none is enabled. Every table also takes
``enabled`` (default true) and ``timeout_s`` (the tool's own timeout).
A row's module is imported only when the config names it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import Problems
from gateway.tables import MISSING, Table
from gateway.tools.base import SourceContext, StaticSource, Tool

@dataclass(frozen=True)
class Builtin:
    target: str  # "module:function" below gateway.tools.builtin: (Options) -> Tool | None
    summary: str

    def factory(self, opts: Options) -> Tool | None:
        """The tool for the table ``opts`` reads (``enabled``/``timeout_s`` already read), or
        ``None`` with problems added; it reads its own options and calls ``opts.finish()``."""
        module, _, func = self.target.partition(":")
        build: Callable[[Options], Tool | None] = getattr(importlib.import_module(f"{__name__}.{module}"), func)
        return build(opts)


BUILTINS: dict[str, Builtin] = {
    "current_time": Builtin("current_time:build", "the current date and time in a time zone"),
    "calculate": Builtin("calculate:build", "safe arithmetic"),
    "fetch_url": Builtin("fetch_url:build", "HTTP GET to text or Markdown, SSRF-guarded"),
    "read_file": Builtin("files:build_read_file", "read a text file inside configured roots"),
    "list_dir": Builtin("files:build_list_dir", "list a directory inside configured roots"),
}


class BuiltinSource(StaticSource):
    """Static tools, some of which hold a resource (fetch_url's HTTP client)."""

    async def start(self, ctx: SourceContext) -> None:
        for tool in self.tools():
            start = getattr(tool, "start", None)
            if start is not None:
                await start(ctx)

    async def stop(self) -> None:
        for tool in self.tools():
            stop = getattr(tool, "stop", None)
            if stop is not None:
                await stop()


def build(name: str, table: Mapping[str, Any], problems: Problems, key: str) -> BuiltinSource | None:
    """The built-in source for ``[tools.builtin]``, or ``None`` if nothing is enabled."""
    tools: list[Tool] = []
    for tool_name, options in table.items():
        where = f"{key}.{tool_name}"
        row = BUILTINS.get(tool_name)
        if row is None:
            problems.add(where, f"unknown built-in tool; expected one of {', '.join(sorted(BUILTINS))}")
            continue
        if not isinstance(options, dict):
            problems.add(where, "expected a table")
            continue
        # The keys every built-in takes, read by the same Options as its own: an unknown
        # key's problem names them all.
        opts = Options(options, problems, where)
        enabled = opts.boolean("enabled", True)
        timeout_s = opts.number("timeout_s", None)
        if not enabled:
            continue
        tool = row.factory(opts)
        if tool is not None:
            if timeout_s is not None:
                tool.timeout_s = timeout_s
            tools.append(tool)
    return BuiltinSource(name, tools) if tools else None


class Options:
    """Typed reads from one config table (a ``gateway.tables.Table``); a bad value is a
    problem, never an exception.

    ::

        opts = Options(table, problems, key)
        limit = opts.number("max_bytes", 2 << 20, integer=True)
        if not opts.finish():   # reports unknown keys; False if anything was wrong
            return None
    """

    def __init__(self, table: Mapping[str, Any], problems: Problems, key: str) -> None:
        self._table = Table(dict(table), key, problems)
        self._read: set[str] = set()
        self.problems, self.key = problems, key  # for readers of a whole option (an allow list)

    @property
    def ok(self) -> bool:
        return self._table.ok

    def problem(self, option: str, what: str) -> None:
        self._table.problem(option, what)

    def _take(self, option: str) -> Any:
        self._read.add(option)
        return self._table.table.get(option, MISSING)

    def string(self, option: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self._take(option)
        if value is MISSING and not required:
            return default
        if not isinstance(value, str) or not value:
            self._table.expected(option, "a non-empty string" if value is not MISSING else "a string", value)
            return default
        return value

    def number(
        self, option: str, default: float | None, *, integer: bool = False, minimum: float = 0, exclusive: bool = True
    ) -> Any:
        value = self._take(option)
        if value is MISSING:
            return default
        kinds = int if integer else (int, float)
        fits = isinstance(value, kinds) and not isinstance(value, bool)
        if not fits or (value <= minimum if exclusive else value < minimum):
            what = "an integer" if integer else "a number"
            bound = f"greater than {minimum}" if exclusive else f"at least {minimum}"
            self._table.expected(option, f"{what} {bound}", value)
            return default
        return value

    def boolean(self, option: str, default: bool) -> bool:
        value = self._take(option)
        if value is MISSING:
            return default
        if not isinstance(value, bool):
            self._table.expected(option, "true or false", value)
            return default
        return value

    def strings(self, option: str, default: Sequence[str] = (), *, required: bool = False) -> list[str]:
        value = self._take(option)
        if value is MISSING and not required:
            return list(default)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self._table.expected(option, "a list of strings" if value is MISSING else "a list of non-empty strings", value)
            return list(default)
        return list(value)

    def string_map(self, option: str) -> dict[str, str]:
        value = self._take(option)
        if value is MISSING:
            return {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            self._table.expected(option, "a table of strings", value)
            return {}
        return dict(value)

    def finish(self) -> bool:
        """Report options nobody read; True when the table was entirely valid."""
        self._table.unknown(self._read)
        return self.ok
