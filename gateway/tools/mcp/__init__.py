"""MCP servers as tool sources, through the official ``mcp`` SDK: both protocol eras.

One ``[tools.mcp.NAME]`` table per server::

    [tools.mcp.files]                      # stdio: the gateway runs the server
    command = "npx"
    args = ["-y", "@modelcontextprotocol/server-filesystem", "/srv/data"]
    env = { API_TOKEN = "${FILES_TOKEN}" }  # only what is named here reaches the child
    tools = ["read_*", "list_directory"]   # optional globs; default: every tool

    [tools.mcp.search]                     # streamable HTTP
    url = "https://mcp.example.com/mcp"
    headers = { Authorization = "Bearer ${SEARCH_TOKEN}" }
    prefix = true                          # offered as search_<tool>
    timeout_s = 60                         # per call (default: loop.tool_timeout_s)
    startup_timeout_s = 5                  # connect + negotiate + tools/list (default 10)
    protocol = "auto"                      # discover, else initialize; "legacy" / "2026-07-28" pin
    list_ttl_min_s = 10                    # a stateless server's list is re-read after its
    list_ttl_max_s = 600                   # ttlMs, within these bounds (see _era)

    [tools.mcp.legacy]                     # HTTP+SSE, the transport before streamable HTTP
    url = "https://old.example.com/sse"
    transport = "sse"                      # "stdio" and "http" are inferred from command / url

Or import the JSON files MCP servers' READMEs show (``{"mcpServers": {...}}``; VS Code's
``{"servers": {...}}``), each entry becoming a source as if written as its own table::

    [tools.mcp]
    import = "mcp.json"                    # or a list; relative to this config file

``import`` is therefore not a server name. A server defined in TOML wins over an imported one
of the same name (the file is often shared, or a client's own config: TOML is the gateway's
place to say "this one differently", e.g. ``enabled = false``). ``toolgate mcp import FILE``
prints the TOML an import amounts to.

``parse(name, table, problems, key)`` returns the table's frozen ``ServerSpec`` (or None when
the table is unusable or ``enabled = false``), ``create(name, spec)`` an unstarted ``McpSource``;
``build`` does both. ``start()`` never raises: a server that is down
makes the source not ready (``status().detail`` says why) and is retried with backoff.
``secrets()`` lists the expanded ``env`` and ``headers`` values, for the redaction layer.

A stdio server's stderr is logged line by line, redacted and throttled; lines on its stdout
that are not JSON-RPC are warned about and skipped, and a stream of them counts as a crash.
On Linux the server's whole process tree dies with the gateway, even on SIGKILL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from gateway.errors import Problems
from gateway.tools.mcp import _import
from gateway.tools.mcp._config import ServerSpec, parse, secret_values
from gateway.tools.mcp._import import RESERVED
from gateway.tools.mcp._source import McpSource, McpTool

__all__ = ["McpSource", "McpTool", "ServerSpec", "build", "build_all", "create", "import_toml", "parse", "parse_all", "secret_values"]


def create(name: str, spec: ServerSpec) -> McpSource:
    return McpSource(spec)


def build(name: str, table: dict[str, Any], problems: Problems, key: str) -> McpSource | None:
    spec = parse(name, table, problems, key)
    return McpSource(spec) if spec is not None else None


def build_all(entries: Mapping[str, Any], problems: Problems, key: str = "tools.mcp") -> list[McpSource]:
    """Sources for the whole ``[tools.mcp]`` table (``parse_all``, each created)."""
    return [McpSource(spec) for _, spec in parse_all(entries, problems, key)]


def parse_all(entries: Mapping[str, Any], problems: Problems, key: str = "tools.mcp") -> list[tuple[str, ServerSpec]]:
    """Specs for the whole ``[tools.mcp]`` table: its NAME tables, then the imported entries.

    ``import`` paths are relative to the directory of the file being loaded, which is
    ``problems.where``. A problem in an imported file is reported against that file
    (``mcp.json: mcpServers.NAME.args: expected a list of strings``).
    """
    specs: list[tuple[str, ServerSpec]] = []
    for name, table in entries.items():
        if name == RESERVED:
            continue
        if not isinstance(table, dict):
            problems.add(f"{key}.{name}", "expected a table")
            continue
        if (spec := parse(name, table, problems, f"{key}.{name}")) is not None:
            specs.append((name, spec))
    imported: dict[str, str] = {}  # name -> the file that defined it first
    for path in _paths(entries.get(RESERVED), problems, f"{key}.{RESERVED}"):
        found, file_problems = _import.read(path)
        for entry in found:
            if entry.name in entries:
                continue  # the TOML table wins
            if entry.name in imported:
                file_problems.add(entry.key, f"server {entry.name!r} is also imported from {imported[entry.name]}")
                continue
            imported[entry.name] = path
            if (spec := parse(entry.name, entry.table, file_problems, entry.key)) is not None:
                specs.append((entry.name, spec))
        problems.lines.extend(file_problems.lines)
    return specs


def _paths(value: Any, problems: Problems, key: str) -> list[str]:
    if value is None:
        return []
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        problems.add(key, "expected a JSON file name, or a list of them")
        return []
    base = os.path.dirname(problems.where)
    return [os.path.join(base, os.path.expanduser(p)) for p in paths]


def import_toml(path: str) -> str:
    """The ``[tools.mcp.NAME]`` tables equivalent to an ``mcpServers`` file; ConfigError
    lists its problems. Values are kept as written, ``${VAR}`` references included."""
    entries, problems = _import.read(path)
    for entry in entries:
        parse(entry.name, entry.table, problems, entry.key)
    problems.raise_if_any()
    return _import.to_toml(entries)
