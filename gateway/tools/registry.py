"""Tool source kinds: one row each, config table in, frozen spec out; a spec in, a source out.

``[tools.builtin.NAME]`` tables make the one built-in spec; ``[tools.mcp.NAME]``,
``[tools.openapi.NAME]`` and ``[tools.python.NAME]`` make one spec per name. The config
holds the specs (compared by value: a reload keeps a running source whose spec is
unchanged); the app turns each into an unstarted source with ``create``::

    specs = build_specs(tables, problems)      # validated; every problem reported
    sources = [create(spec) for spec in specs]  # unstarted

A kind's module is imported only when the config uses it. An embedder (or a test) that has
a ready-made source wraps it with ``ready(source)``: that spec creates the object itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import Problems
from gateway.tools.base import ToolSource


@dataclass(frozen=True)
class Kind:
    """One source kind's module functions, each "module:function"."""

    parse: str  # (name, table, problems, key) -> settings | None; the settings compare by value
    create: str  # (name, settings) -> an unstarted ToolSource
    secrets: str | None = None  # (settings, environ) -> [values to redact]


SOURCE_KINDS: dict[str, Kind] = {
    "builtin": Kind("gateway.tools.builtin:parse", "gateway.tools.builtin:create"),
    "mcp": Kind("gateway.tools.mcp:parse", "gateway.tools.mcp:create", "gateway.tools.mcp:secret_values"),
    "openapi": Kind("gateway.tools.openapi:parse", "gateway.tools.openapi:create", "gateway.tools.openapi:secret_values"),
    "python": Kind("gateway.tools.pyfunc:parse", "gateway.tools.pyfunc:create"),
}

# kind -> "module:function" taking the kind's whole table (entries, problems, key) -> [(name, settings)]:
# for kinds whose table holds more than one source per name (MCP's `import`).
WHOLE_TABLE: dict[str, str] = {"mcp": "gateway.tools.mcp:parse_all"}

READY = "ready"  # the kind of `ready(source)`: not from a config table


@dataclass(frozen=True)
class SourceSpec:
    """One configured tool source, not created yet; equal specs make equivalent sources."""

    kind: str  # a SOURCE_KINDS key, or READY
    name: str
    settings: Any  # the kind's validated, frozen settings; for READY, the source itself


def ready(source: ToolSource) -> SourceSpec:
    """A spec for a source built outside the config (tests, embedders): it creates `source` itself."""
    return SourceSpec(READY, source.name, source)


def create(spec: SourceSpec) -> ToolSource:
    """The unstarted source `spec` describes (blocking for some kinds: imports, schema work)."""
    if spec.kind == READY:
        source: ToolSource = spec.settings
        return source
    made: ToolSource = _load(SOURCE_KINDS[spec.kind].create)(spec.name, spec.settings)
    return made


def secrets(spec: SourceSpec, environ: Mapping[str, str]) -> list[str]:
    """The values `spec`'s source would report through ``secrets()``, expanded against `environ`."""
    if spec.kind == READY:
        report = getattr(spec.settings, "secrets", None)
        return list(report(environ)) if report is not None else []
    target = SOURCE_KINDS[spec.kind].secrets
    return list(_load(target)(spec.settings, environ)) if target is not None else []


def _load(target: str) -> Callable[..., Any]:
    module, _, func = target.partition(":")
    builder: Callable[..., Any] = getattr(importlib.import_module(module), func)
    return builder


def build_specs(tables: Mapping[str, Any], problems: Problems) -> list[SourceSpec]:
    """The specs of the ``[tools.<kind>...]`` tables of the config."""
    specs: list[SourceSpec] = []
    for kind, entries in tables.items():
        key = f"tools.{kind}"
        if kind not in SOURCE_KINDS:
            problems.add(key, f"unknown tool source kind; expected one of {', '.join(SOURCE_KINDS)}")
            continue
        if not isinstance(entries, dict):
            problems.add(key, "expected a table")
            continue
        if kind in WHOLE_TABLE:
            specs += [SourceSpec(kind, name, settings) for name, settings in _load(WHOLE_TABLE[kind])(entries, problems, key)]
            continue
        parse = _load(SOURCE_KINDS[kind].parse)
        named: list[tuple[str, Any, str]]
        if kind == "builtin":
            named = [("builtin", entries, key)]
        else:
            named = [(name, table, f"{key}.{name}") for name, table in entries.items()]
        for name, table, where in named:
            if not isinstance(table, dict):
                problems.add(where, "expected a table")
                continue
            settings = parse(name, table, problems, where)
            if settings is not None:
                specs.append(SourceSpec(kind, name, settings))
    return specs


def build_sources(tables: Mapping[str, Any], problems: Problems) -> list[ToolSource]:
    """Unstarted sources for the ``[tools.<kind>...]`` tables (``build_specs``, each created)."""
    return [create(spec) for spec in build_specs(tables, problems)]
