"""Tool annotations (MCP's behaviour hints) as an alias's tool selection uses them.

An alias's ``tools`` may hold, besides names and globs, ``"!KEY"`` entries that leave out
the tools a row of ``EXCLUSIONS`` names::

    tools = ["*", "!destructive", "!open_world"]   # every tool that is neither

Absent hints take the MCP specification's defaults, which are the careful reading: a tool
that says nothing may be destructive (``destructiveHint`` defaults to true, and counts only
when ``readOnlyHint`` is not true) and may reach outside the gateway (``openWorldHint``
defaults to true). So ``"!destructive"`` keeps only tools that state ``readOnlyHint: true``
or ``destructiveHint: false``. The built-ins state their hints; OpenAPI GET and HEAD
operations state ``readOnlyHint``. Hints are the author's claims, not guarantees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from gateway.tools.base import Tool


def _hint(tool: Tool, key: str, default: bool) -> bool:
    value = (tool.annotations or {}).get(key)
    return value if isinstance(value, bool) else default


def destructive(tool: Tool) -> bool:
    return not _hint(tool, "readOnlyHint", False) and _hint(tool, "destructiveHint", True)


def open_world(tool: Tool) -> bool:
    return _hint(tool, "openWorldHint", True)


# "!KEY" in an alias's tools -> which tools it leaves out
EXCLUSIONS: dict[str, Callable[[Tool], bool]] = {
    "destructive": destructive,
    "open_world": open_world,
}


def split(patterns: Sequence[str]) -> tuple[list[str], list[Callable[[Tool], bool]]]:
    """An alias's tools entries as globs and exclusions; unknown ``!KEY`` entries are
    the config loader's to report (``problem``), and are ignored here."""
    globs = [p for p in patterns if not p.startswith("!")]
    rules = [EXCLUSIONS[p[1:]] for p in patterns if p.startswith("!") and p[1:] in EXCLUSIONS]
    return globs, rules


def problem(pattern: str) -> str | None:
    """What is wrong with a ``!KEY`` entry, or None."""
    if pattern.startswith("!") and pattern[1:] not in EXCLUSIONS:
        return f"{pattern!r} names no annotation; expected one of {', '.join('!' + k for k in EXCLUSIONS)}"
    return None

