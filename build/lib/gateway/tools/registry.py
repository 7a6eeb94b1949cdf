"""Tool source kinds: one row each, config table in, unstarted source out.

``[tools.builtin.NAME]`` tables build the one built-in source; ``[tools.mcp.NAME]``,
``[tools.openapi.NAME]`` and ``[tools.python.NAME]`` build one source per name.
A kind's module is imported only when the config uses it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from gateway.errors import Problems
from gateway.tools.base import ToolSource

# kind -> "module:function"; function(name, table, problems, key) -> ToolSource | None
SOURCE_KINDS: dict[str, str] = {
    "builtin": "gateway.tools.builtin:build",
    "mcp": "gateway.tools.mcp:build",
    "openapi": "gateway.tools.openapi:build",
    "python": "gateway.tools.pyfunc:build",
}


# kind -> "module:function" taking the kind's whole table (entries, problems, key) -> [ToolSource]:
# for kinds whose table holds more than one source per name (MCP's `import`).
WHOLE_TABLE: dict[str, str] = {"mcp": "gateway.tools.mcp:build_all"}


def _load(target: str):
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def build_sources(tables: Mapping[str, Any], problems: Problems) -> list[ToolSource]:
    """Unstarted sources for the ``[tools.<kind>...]`` tables of the config."""
    sources: list[ToolSource] = []
    for kind, entries in tables.items():
        key = f"tools.{kind}"
        if kind not in SOURCE_KINDS:
            problems.add(key, f"unknown tool source kind; expected one of {', '.join(SOURCE_KINDS)}")
            continue
        if not isinstance(entries, dict):
            problems.add(key, "expected a table")
            continue
        if kind in WHOLE_TABLE:
            sources.extend(_load(WHOLE_TABLE[kind])(entries, problems, key))
            continue
        build = _load(SOURCE_KINDS[kind])
        if kind == "builtin":
            named = [("builtin", entries, key)]
        else:
            named = [(name, table, f"{key}.{name}") for name, table in entries.items()]
        for name, table, where in named:
            if not isinstance(table, dict):
                problems.add(where, "expected a table")
                continue
            source = build(name, table, problems, where)
            if source is not None:
                sources.append(source)
    return sources
