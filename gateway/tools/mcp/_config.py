"""``[tools.mcp.NAME]`` tables: validated into a frozen ``ServerSpec``, every problem reported."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from gateway.errors import Problems
from gateway.tables import Key, Table
from gateway.tools import variables

# "${VAR}" anywhere in an env or header value is read from the gateway's environment when the
# connection opens (gateway/tools/variables.py), so rotated secrets are picked up on reconnect.


@dataclass(frozen=True)
class ServerSpec:
    name: str
    transport: str  # "stdio", "http" (streamable HTTP) or "sse" (the older HTTP+SSE)
    command: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    prefix: bool = False
    timeout_s: float | None = None  # per call; None: the loop's tool_timeout_s
    startup_timeout_s: float = 10.0
    tools: tuple[str, ...] | None = None  # globs; None offers every tool
    # "auto": try the newest revision, fall back to the handshake; "legacy" or a revision pins one.
    protocol: str = "auto"
    # A stateless server's tool list is re-read after the ttlMs it gives, kept within these bounds.
    list_ttl_min_s: float = 10.0
    list_ttl_max_s: float = 600.0


def secret_values(spec: ServerSpec, environ: Mapping[str, str]) -> list[str]:
    """Every value of the ``env`` and ``headers`` tables, expanded, and each variable they name;
    the credentials and query values of ``url`` (``?token=...``), which the SDK logs at debug.

    Unset variables are skipped: such a server does not start, so nothing can leak them.
    """
    values: list[str] = []
    for value in (*spec.env.values(), *spec.headers.values()):
        with suppress(variables.UnsetVariable):
            values.append(variables.expand(value, environ))
        values.extend(environ[name] for name in variables.REFERENCE.findall(value) if name in environ)
    if spec.url:
        parts = urlsplit(spec.url)
        values.extend(v for v in (parts.username, parts.password) if v)
        values.extend(v for _, v in parse_qsl(parts.query) if v)
    return list(dict.fromkeys(values))


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_str_table(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_seconds(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 86_400


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


TRANSPORT_NAMES = ("stdio", "http", "sse")
PROTOCOLS = ("auto", "legacy", *MODERN_PROTOCOL_VERSIONS)
_STDIO, _REMOTE = frozenset({"stdio"}), frozenset({"http", "sse"})

# The keys of a server table; `applies` names the transports that take a key (empty: all).
_KEYS: dict[str, Key] = {
    "command": Key(_is_str, "a non-empty string", _STDIO),
    "args": Key(_is_str_list, "a list of strings", _STDIO, secret=True),
    "env": Key(_is_str_table, "a table of strings", _STDIO, secret=True),
    "cwd": Key(_is_str, "a non-empty string", _STDIO),
    "url": Key(_is_url, "an http:// or https:// URL", _REMOTE, secret=True),
    "headers": Key(_is_str_table, "a table of strings", _REMOTE, secret=True),
    # Always true here: checked first (in parse), since the other keys' applicability depends on it.
    "transport": Key(lambda value: True, "stdio, http or sse"),
    "prefix": Key(_is_bool, "true or false"),
    "timeout_s": Key(_is_seconds, "a number of seconds above 0"),
    "startup_timeout_s": Key(_is_seconds, "a number of seconds above 0"),
    "tools": Key(_is_str_list, "a list of tool name globs"),
    "protocol": Key(lambda value: value in PROTOCOLS, " or ".join(PROTOCOLS)),
    "list_ttl_min_s": Key(_is_seconds, "a number of seconds above 0"),
    "list_ttl_max_s": Key(_is_seconds, "a number of seconds above 0"),
    "enabled": Key(_is_bool, "true or false"),
}


def parse(name: str, table: Mapping[str, Any], problems: Problems, key: str) -> ServerSpec | None:
    """The server's spec, or None (with problems added) when the table is unusable or disabled."""
    before = len(problems.lines)
    reader = Table(table, key, problems)
    one_of = ("command" in table) != ("url" in table)
    if not one_of:
        problems.add(key, "expected exactly one of command (stdio) or url (streamable HTTP or SSE)")
    transport = table.get("transport", "http" if "url" in table else "stdio")
    if transport not in TRANSPORT_NAMES:
        reader.expected("transport", "stdio, http or sse", transport)
        one_of = False  # which keys apply is unknown: say nothing about them
    elif one_of and (transport == "stdio") != ("command" in table):
        problems.add(f"{key}.transport", f"{transport} servers need {'command' if transport == 'stdio' else 'url'}")
        one_of = False
    reader.check(_KEYS, transport if one_of else None)
    for item in ("env", "headers"):
        if _is_str_table(table.get(item)):
            variables.check(table[item], problems.add, f"{key}.{item}")
    protocol = table.get("protocol", "auto")
    if transport == "sse" and protocol in MODERN_PROTOCOL_VERSIONS:
        # The revision defines stdio and streamable HTTP only; HTTP+SSE servers speak the handshake.
        problems.add(f"{key}.protocol", f"{protocol} has no HTTP+SSE transport; expected auto or legacy")
    low, high = table.get("list_ttl_min_s", 10.0), table.get("list_ttl_max_s", 600.0)
    if _is_seconds(low) and _is_seconds(high) and low > high:
        problems.add(f"{key}.list_ttl_min_s", f"{low:g} s is above list_ttl_max_s ({high:g} s)")
    if len(problems.lines) > before or not table.get("enabled", True):
        return None
    globs = table.get("tools")
    return ServerSpec(
        name=name,
        transport=transport,
        command=table.get("command", ""),
        args=tuple(table.get("args", ())),
        env=dict(table.get("env", {})),
        cwd=table.get("cwd"),
        url=table.get("url", ""),
        headers=dict(table.get("headers", {})),
        prefix=table.get("prefix", False),
        timeout_s=float(table["timeout_s"]) if "timeout_s" in table else None,
        startup_timeout_s=float(table.get("startup_timeout_s", 10.0)),
        tools=tuple(globs) if globs is not None else None,
        protocol=protocol,
        list_ttl_min_s=float(low),
        list_ttl_max_s=float(high),
    )
