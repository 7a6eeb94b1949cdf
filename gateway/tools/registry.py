"""Tool source kinds: one row each, config table in, frozen spec out; a spec in, a source out.

``[tools.builtin.NAME]`` tables make the one built-in spec; ``[tools.mcp.NAME]``,
``[tools.openapi.NAME]`` and ``[tools.python.NAME]`` make one spec per name. The config
holds the specs (compared by value: a reload keeps a running source whose spec is
unchanged); the app turns each into an unstarted source with ``create``::

    specs = build_specs(tables, problems)      # validated; every problem reported
    sources = [create(spec) for spec in specs]  # unstarted

Built-ins and Python functions can only be checked by building their source (importing a
function and reading its signature is the check): their settings (``Built``) carry that
source, and the first ``create`` takes it, so a config load builds each once. A kind's
module is imported only when the config uses it. An embedder (or a test) that has
a ready-made source wraps it with ``ready(source)``: that spec creates the object itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import Problems
from gateway.tools.base import ToolSource


@dataclass(frozen=True)
class Kind:
    """One source kind's module functions, each "module:function"."""

    parse: str = ""  # (name, table, problems, key) -> settings | None; the settings compare by value
    create: str = ""  # (name, settings) -> an unstarted ToolSource
    secrets: str | None = None  # (settings, environ) -> [values to redact]
    # Instead of parse and create, for a kind that can only check a table by building its
    # source: (name, table, problems, key) -> ToolSource | None; its settings are `Built`.
    build: str | None = None


SOURCE_KINDS: dict[str, Kind] = {
    "builtin": Kind(build="gateway.tools.builtin:build"),
    "mcp": Kind("gateway.tools.mcp:parse", "gateway.tools.mcp:create", "gateway.tools.mcp:secret_values"),
    "openapi": Kind("gateway.tools.openapi:parse", "gateway.tools.openapi:create", "gateway.tools.openapi:secret_values"),
    "python": Kind(build="gateway.tools.pyfunc:build"),
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


@dataclass(frozen=True)
class Built:
    """The settings of a `Kind` with ``build`` (built-ins; Python functions, whose check imports
    them and reads their signatures): they compare by ``table`` and carry the source the
    check built, so a config load builds it once. Only the first ``create`` takes that one:
    a source has a lifetime, and a second app (or a test) creating from the same settings
    gets its own, built again.
    """

    table: Mapping[str, Any]
    key: str = field(compare=False)  # where the table is, for a rebuild's problems
    _built: list[ToolSource] = field(default_factory=list, compare=False, repr=False)

    def take(self) -> ToolSource | None:
        """The source the check built, the first time; then None."""
        return self._built.pop() if self._built else None

    def peek(self) -> ToolSource | None:
        """The source the check built, while nobody took it (to list its tools)."""
        return self._built[0] if self._built else None


def ready(source: ToolSource) -> SourceSpec:
    """A spec for a source built outside the config (tests, embedders): it creates `source` itself."""
    return SourceSpec(READY, source.name, source)


def create(spec: SourceSpec) -> ToolSource:
    """The unstarted source `spec` describes (blocking for some kinds: imports, schema work)."""
    if spec.kind == READY:
        source: ToolSource = spec.settings
        return source
    kind = SOURCE_KINDS[spec.kind]
    if kind.build is not None:
        return spec.settings.take() or _rebuild(kind.build, spec.name, spec.settings)
    made: ToolSource = _load(kind.create)(spec.name, spec.settings)
    return made


def _rebuild(build: str, name: str, settings: Built) -> ToolSource:
    problems = Problems("<spec>")
    source: ToolSource | None = _load(build)(name, settings.table, problems, settings.key)
    if source is None:  # it built once: only changed code under it (a Python module) can fail now
        raise ValueError(f"{name}: the table no longer builds: {'; '.join(problems.lines)}")
    return source


def preview(spec: SourceSpec) -> ToolSource:
    """The source `spec` describes, to look at (its name, prefix, static tools), never to start:
    a source its check built stays for ``create``."""
    built = spec.settings.peek() if isinstance(spec.settings, Built) else None
    return built if built is not None else create(spec)


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
        build = SOURCE_KINDS[kind].build
        parse = _load(SOURCE_KINDS[kind].parse) if build is None else _checked(build)
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


def _checked(build: str) -> Callable[[str, Mapping[str, Any], Problems, str], Built | None]:
    """A `Kind.build` as a parse: the table and the source it built, as `Built` settings."""

    def parse(name: str, table: Mapping[str, Any], problems: Problems, key: str) -> Built | None:
        source = _load(build)(name, table, problems, key)
        return Built(dict(table), key, [source]) if source is not None else None

    return parse


def build_sources(tables: Mapping[str, Any], problems: Problems) -> list[ToolSource]:
    """Unstarted sources for the ``[tools.<kind>...]`` tables (``build_specs``, each created)."""
    return [create(spec) for spec in build_specs(tables, problems)]
