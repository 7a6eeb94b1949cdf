"""MCP servers as tool sources, through the official ``mcp`` SDK (handshake-era protocol).

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
    timeout_s = 60                         # per call (default 30)
    startup_timeout_s = 5                  # connect + initialize + tools/list (default 10)

    [tools.mcp.legacy]                     # HTTP+SSE, the transport before streamable HTTP
    url = "https://old.example.com/sse"
    transport = "sse"                      # "stdio" and "http" are inferred from command / url

``build(name, table, problems, key)`` returns an unstarted ``McpSource`` (or None when the
table is unusable or ``enabled = false``). ``start()`` never raises: a server that is down
makes the source not ready (``status().detail`` says why) and is retried with backoff.
``secrets()`` lists the expanded ``env`` and ``headers`` values, for the redaction layer.

A stdio server's stderr is logged line by line, redacted and throttled; lines on its stdout
that are not JSON-RPC are warned about and skipped, and a stream of them counts as a crash.
On Linux the server's whole process tree dies with the gateway, even on SIGKILL.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import Problems
from gateway.tools.mcp._config import ServerSpec, parse
from gateway.tools.mcp._source import McpSource, McpTool

__all__ = ["McpSource", "McpTool", "ServerSpec", "build"]


def build(name: str, table: dict[str, Any], problems: Problems, key: str) -> McpSource | None:
    spec = parse(name, table, problems, key)
    return McpSource(spec) if spec is not None else None
