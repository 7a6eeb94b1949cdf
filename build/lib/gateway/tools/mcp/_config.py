"""``[tools.mcp.NAME]`` tables: validated into a frozen ``ServerSpec``, every problem reported."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from gateway.errors import Problems

# "${VAR}" anywhere in an env or header value: VAR is read from the gateway's environment
# when the connection opens, so rotated secrets are picked up on reconnect.
_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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
    timeout_s: float = 30.0
    startup_timeout_s: float = 10.0
    tools: tuple[str, ...] | None = None  # globs; None offers every tool
    # "auto": try the newest revision, fall back to the handshake; "legacy" or a revision pins one.
    protocol: str = "auto"
    # A stateless server's tool list is re-read after the ttlMs it gives, kept within these bounds.
    list_ttl_min_s: float = 10.0
    list_ttl_max_s: float = 600.0


class UnsetVariable(Exception):
    """A ``${VAR}`` names a variable the gateway's environment lacks."""


def expand(value: str, environ: Mapping[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise UnsetVariable(f"environment variable {name} is not set")
        return environ[name]

    return _REFERENCE.sub(substitute, value)


def secret_values(spec: ServerSpec, environ: Mapping[str, str]) -> list[str]:
    """Every value of the ``env`` and ``headers`` tables, expanded, and each variable they name;
    the credentials and query values of ``url`` (``?token=...``), which the SDK logs at debug.

    Unset variables are skipped: such a server does not start, so nothing can leak them.
    """
    values: list[str] = []
    for value in (*spec.env.values(), *spec.headers.values()):
        with suppress(UnsetVariable):
            values.append(expand(value, environ))
        values.extend(environ[name] for name in _REFERENCE.findall(value) if name in environ)
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
_STDIO, _REMOTE, _ANY = frozenset({"stdio"}), frozenset({"http", "sse"}), frozenset(TRANSPORT_NAMES)

# key -> (check, what is expected, transports the key applies to)
_KEYS: dict[str, tuple[Callable[[Any], bool], str, frozenset[str]]] = {
    "command": (_is_str, "a non-empty string", _STDIO),
    "args": (_is_str_list, "a list of strings", _STDIO),
    "env": (_is_str_table, "a table of strings", _STDIO),
    "cwd": (_is_str, "a non-empty string", _STDIO),
    "url": (_is_url, "an http:// or https:// URL", _REMOTE),
    "headers": (_is_str_table, "a table of strings", _REMOTE),
    # Checked on its own (in parse): the other keys' applicability depends on it.
    "transport": (lambda value: value in TRANSPORT_NAMES, "stdio, http or sse", _ANY),
    "prefix": (_is_bool, "true or false", _ANY),
    "timeout_s": (_is_seconds, "a number of seconds above 0", _ANY),
    "startup_timeout_s": (_is_seconds, "a number of seconds above 0", _ANY),
    "tools": (_is_str_list, "a list of tool name globs", _ANY),
    "protocol": (lambda value: value in PROTOCOLS, " or ".join(PROTOCOLS), _ANY),
    "list_ttl_min_s": (_is_seconds, "a number of seconds above 0", _ANY),
    "list_ttl_max_s": (_is_seconds, "a number of seconds above 0", _ANY),
    "enabled": (_is_bool, "true or false", _ANY),
}


def _check_references(table: Mapping[str, str], problems: Problems, key: str) -> None:
    for name, value in table.items():
        for match in _REFERENCE.finditer(value):
            if not _NAME.fullmatch(match.group(1)):
                problems.add(f"{key}.{name}", "expected ${VAR} with VAR a variable name")
        if "${" in _REFERENCE.sub("", value):
            problems.add(f"{key}.{name}", "unclosed ${")


def parse(name: str, table: Mapping[str, Any], problems: Problems, key: str) -> ServerSpec | None:
    """The server's spec, or None (with problems added) when the table is unusable or disabled."""
    before = len(problems.lines)
    one_of = ("command" in table) != ("url" in table)
    if not one_of:
        problems.add(key, "expected exactly one of command (stdio) or url (streamable HTTP or SSE)")
    transport = table.get("transport", "http" if "url" in table else "stdio")
    if transport not in TRANSPORT_NAMES:
        problems.add(f"{key}.transport", f"expected {_KEYS['transport'][1]}")
        one_of = False  # which keys apply is unknown: say nothing about them
    elif one_of and (transport == "stdio") != ("command" in table):
        problems.add(f"{key}.transport", f"{transport} servers need {'command' if transport == 'stdio' else 'url'}")
        one_of = False
    for item, value in table.items():
        if item not in _KEYS:
            problems.add(f"{key}.{item}", f"unknown key; expected one of {', '.join(_KEYS)}")
            continue
        check, expected, transports = _KEYS[item]
        if item == "transport":
            continue
        if not check(value):
            problems.add(f"{key}.{item}", f"expected {expected}")
        elif transport not in transports and one_of:
            problems.add(f"{key}.{item}", f"only applies to {' or '.join(sorted(transports))} servers")
    for item in ("env", "headers"):
        if _is_str_table(table.get(item)):
            _check_references(table[item], problems, f"{key}.{item}")
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
        timeout_s=float(table.get("timeout_s", 30.0)),
        startup_timeout_s=float(table.get("startup_timeout_s", 10.0)),
        tools=tuple(globs) if globs is not None else None,
        protocol=protocol,
        list_ttl_min_s=float(low),
        list_ttl_max_s=float(high),
    )
