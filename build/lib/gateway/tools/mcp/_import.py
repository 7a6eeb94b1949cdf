"""``mcpServers`` JSON files (Claude Desktop, Cursor; VS Code's ``servers``) as ``[tools.mcp.NAME]`` tables.

The shape every MCP server's README shows::

    {"mcpServers": {
        "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/srv"],
                  "env": {"TOKEN": "${FILES_TOKEN}"}},
        "search": {"url": "https://mcp.example.com/mcp", "type": "http",
                   "headers": {"Authorization": "Bearer ${SEARCH_TOKEN}"}}}}

``read(path)`` gives each entry as the table it would be in TOML, with the problems of the
file and of entries that cannot be tables (an unknown ``type``); the tables themselves are
validated by ``_config.parse`` as any TOML table is. ``to_toml(entries)`` prints them.

An entry may also use the gateway's own keys (``prefix``, ``tools``, ``timeout_s``...);
``"disabled": true`` is ``enabled = false``; the keys clients keep for their UI
(``autoApprove``, ``alwaysAllow``, ``description``) are ignored. Keys outside the
``mcpServers`` table (VS Code's ``inputs``, a Claude Desktop config's other settings) are too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import Problems

RESERVED = "import"  # `[tools.mcp] import = ...`: no server may have this name
TOPS = ("mcpServers", "servers")  # Claude Desktop and Cursor, VS Code
# JSON `type` -> transport; the names clients use for streamable HTTP vary.
TYPES = {
    "stdio": "stdio",
    "http": "http",
    "streamable-http": "http",
    "streamable_http": "http",
    "streamableHttp": "http",
    "sse": "sse",
}
_IGNORED = frozenset({"autoApprove", "alwaysAllow", "description"})


@dataclass(frozen=True)
class Entry:
    name: str
    table: dict[str, Any]  # as a [tools.mcp.NAME] table
    key: str  # where it is in the file, for problems: "mcpServers.NAME"


def read(path: str) -> tuple[list[Entry], Problems]:
    """The file's entries and its problems (``Problems(path)``); never raises."""
    problems = Problems(path)
    try:
        with open(path, "rb") as f:
            raw = json.load(f)
    except FileNotFoundError:
        problems.lines.append(f"{path}: file not found")
        return [], problems
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        problems.lines.append(f"{path}: {exc}")
        return [], problems
    found = [top for top in TOPS if isinstance(raw, dict) and top in raw]
    if len(found) != 1:
        problems.lines.append(f"{path}: expected a JSON object with one of {' or '.join(TOPS)}")
        return [], problems
    top = found[0]
    servers = raw[top]
    if not isinstance(servers, dict):
        problems.add(top, "expected an object of servers")
        return [], problems
    entries = []
    for name, value in servers.items():
        entry = _entry(name, value, problems, f"{top}.{name}")
        if entry is not None:
            entries.append(entry)
    return entries, problems


def _entry(name: str, value: Any, problems: Problems, key: str) -> Entry | None:
    if name == RESERVED or not name:
        problems.add(key, f"{name!r} cannot name a server (reserved for [tools.mcp] {RESERVED} = ...)")
        return None
    if not isinstance(value, dict):
        problems.add(key, "expected an object")
        return None
    table = {k: v for k, v in value.items() if k not in _IGNORED and k not in ("type", "disabled")}
    if "disabled" in value:
        if not isinstance(value["disabled"], bool):
            problems.add(f"{key}.disabled", "expected true or false")
            return None
        table["enabled"] = not value["disabled"]
    if "type" in value:
        kind = TYPES.get(value["type"]) if isinstance(value["type"], str) else None
        if kind is None:
            problems.add(f"{key}.type", f"expected one of {', '.join(TYPES)}")
            return None
        if ("command" in value) != ("url" in value) and (kind == "stdio") != ("command" in value):
            problems.add(f"{key}.type", f"{value['type']} servers need {'command' if kind == 'stdio' else 'url'}")
            return None
        if kind == "sse":  # stdio and http follow from command and url, as in TOML
            table["transport"] = kind
    return Entry(name, table, key)


# Printing: only the value types a valid table holds (strings, lists and tables of strings,
# booleans, numbers).

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ORDER = ("transport", "command", "args", "env", "cwd", "url", "headers")


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _string(name)


def _string(text: str) -> str:
    # JSON's escapes are TOML's, except that TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"no TOML for {type(value).__name__}")


def to_toml(entries: list[Entry]) -> str:
    """``[tools.mcp.NAME]`` tables for the entries, in the file's order."""
    blocks = []
    for entry in entries:
        keys = sorted(entry.table, key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER), k))
        lines = [f"[tools.mcp.{_key(entry.name)}]", *(f"{_key(k)} = {_value(entry.table[k])}" for k in keys)]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)
