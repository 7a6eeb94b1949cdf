"""Configuration: declared as frozen dataclasses, loaded from one TOML file.

    settings = load_config("config/toolgate.toml", os.environ)

Every problem is collected (file, key, what was expected) and raised together
as one ``ConfigError``; the CLI prints them and exits 2. Secrets come from the
environment only, and are held in ``Secret`` so no repr or log can show them.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from gateway.errors import ConfigError, Problems
from gateway.hosts import HOST_TYPES, HostType, base_url
from gateway.tools.base import ToolSource
from gateway.tools.registry import build_sources

DEFAULT_PATH = "config/toolgate.toml"

TOOL_INSTRUCTION = (
    "You can call tools. Call them when they help answer the user, in parallel when the calls "
    "are independent; then answer in plain text from their results."
)


class Secret:
    """A secret value; prints as '***'."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "'***'" if self.value else "''"

    def __bool__(self) -> bool:
        return bool(self.value)


@dataclass(frozen=True)
class Upstream:
    name: str
    url: str  # normalised base URL; "" means none given (serve --demo fills it)
    type: str = "openai"
    api_key: Secret = field(default_factory=lambda: Secret(""))
    api_key_env: str = ""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # may carry keys, as describe() assumes
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 300.0
    retries: int = 2
    forward_client_auth: bool = False
    extra_params: frozenset[str] = frozenset()
    query: Mapping[str, str] = field(default_factory=dict)

    @property
    def host(self) -> HostType:
        return HOST_TYPES[self.type]

    @property
    def accepted_extras(self) -> frozenset[str]:
        return self.host.extra_params | self.extra_params


@dataclass(frozen=True)
class ModelAlias:
    name: str
    upstream: str
    upstream_model: str
    tools: tuple[str, ...] = ()
    system_prompt: str = ""
    max_rounds: int | None = None
    on_max_rounds: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 16 * 1024 * 1024
    max_messages: int = 2048
    max_concurrency: int = 1024
    request_timeout_s: float = 600.0
    keepalive_s: float = 15.0
    grace_s: float = 30.0
    log_content: bool = False
    log_requests: bool = True
    trace: bool = False
    progress: str = "off"
    passthrough_unknown_models: bool = False
    default_upstream: str = "default"


@dataclass(frozen=True)
class LoopSettings:
    max_rounds: int = 8
    on_max_rounds: str = "answer"
    tool_instruction: str = TOOL_INSTRUCTION
    max_parallel_tools: int = 8
    tool_timeout_s: float = 30.0
    max_tool_result_chars: int = 20_000
    max_description_chars: int = 1024
    repeat_limit: int = 3


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    loop: LoopSettings = field(default_factory=LoopSettings)
    upstreams: Mapping[str, Upstream] = field(default_factory=dict)
    models: Mapping[str, ModelAlias] = field(default_factory=dict)
    sources: tuple[ToolSource, ...] = ()
    api_keys: tuple[Secret, ...] = ()
    path: str = ""
    # The environment the config was resolved against; `${VAR}` in tool sources reads it.
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)

    def describe(self) -> dict[str, Any]:
        """The resolved config as plain data, secrets redacted (for `toolgate check`)."""

        def plain(value: Any) -> Any:
            if isinstance(value, Secret):
                return "***" if value else ""
            if isinstance(value, frozenset):
                return sorted(value)
            if isinstance(value, (tuple, list)):
                return [plain(v) for v in value]
            if isinstance(value, Mapping):
                return {k: plain(v) for k, v in value.items()}
            if hasattr(value, "__dataclass_fields__"):
                return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
            return value

        return {
            "path": self.path,
            "server": plain(self.server),
            "loop": plain(self.loop),
            "auth": {"api_keys": len(self.api_keys)},
            "upstreams": {
                name: {**plain(u), "headers": {k: "***" for k in u.headers}} for name, u in self.upstreams.items()
            },
            "models": plain(self.models),
        }


_PROGRESS = ("off", "reasoning")
_ON_MAX_ROUNDS = ("answer", "error")


class _Reader:
    """Typed reads from one TOML table, recording problems instead of raising."""

    def __init__(self, table: Mapping[str, Any], key: str, problems: Problems) -> None:
        self.table, self.key, self.problems = table, key, problems

    def get(self, name: str, kind: type | tuple[type, ...], default: Any, expect: str) -> Any:
        value = self.table.get(name, default)
        ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _as_tuple(kind))
        if not ok:
            self.problems.add(f"{self.key}.{name}", f"expected {expect}, got {value!r}")
            return default
        return value

    def unknown(self, known: set[str]) -> None:
        for name in self.table:
            if name not in known:
                self.problems.add(f"{self.key}.{name}", f"unknown key; expected one of {', '.join(sorted(known))}")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _dataclass_from(cls: type, table: Mapping[str, Any], key: str, problems: Problems, **extra: Any) -> Any:
    """Fill a flat settings dataclass from a table, checking each value's type."""
    reader = _Reader(table, key, problems)
    reader.unknown({f.name for f in fields(cls)} - set(extra))
    values: dict[str, Any] = dict(extra)
    for f in fields(cls):
        if f.name in extra or f.name not in table:
            continue
        default = f.default
        kind: Any = (int, float) if isinstance(default, float) else type(default)
        expect = {bool: "true or false", int: "an integer", str: "a string"}.get(kind, "a number")
        value = reader.get(f.name, kind, default, expect)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            problems.add(f"{key}.{f.name}", f"expected a non-negative value, got {value!r}")
            value = default
        elif f.name.endswith(("timeout_s", "keepalive_s")) and value == 0:
            problems.add(f"{key}.{f.name}", "expected a number of seconds above 0")
            value = default
        values[f.name] = float(value) if isinstance(default, float) else value
    return cls(**values)


def _str_table(reader: _Reader, name: str) -> dict[str, str]:
    value = reader.get(name, dict, {}, "a table of strings")
    if not all(isinstance(v, str) for v in value.values()):
        reader.problems.add(f"{reader.key}.{name}", "expected a table of strings")
        return {}
    return dict(value)


def _upstream(name: str, table: Mapping[str, Any], environ: Mapping[str, str], problems: Problems) -> Upstream:
    key = f"upstreams.{name}"
    r = _Reader(table, key, problems)
    r.unknown(
        {
            "url", "type", "api_key_env", "headers", "connect_timeout_s", "read_timeout_s",
            "retries", "forward_client_auth", "extra_params", "query",
            "api_key",  # known, and refused below with its own line
        }
    )  # fmt: skip
    type_ = r.get("type", str, "openai", "a string")
    if type_ not in HOST_TYPES:
        problems.add(f"{key}.type", f"expected one of {', '.join(HOST_TYPES)}, got {type_!r}")
        type_ = "openai"
    url = r.get("url", str, "", "a URL string")
    if url and not url.startswith(("http://", "https://")):
        problems.add(f"{key}.url", f"expected an http:// or https:// URL, got {url!r}")
    if "api_key" in table:
        problems.add(f"{key}.api_key", "secrets are not read from the file; set api_key_env to a variable name")
    key_env = r.get("api_key_env", str, "", "an environment variable name")
    if key_env and key_env not in environ:
        problems.add(f"{key}.api_key_env", f"environment variable {key_env} is not set")
    extras = r.get("extra_params", list, [], "a list of parameter names")
    timeouts = {
        n: float(r.get(n, (int, float), d, "a number of seconds"))
        for n, d in (("connect_timeout_s", 10.0), ("read_timeout_s", 300.0))
    }
    retries = r.get("retries", int, 2, "an integer")
    host = HOST_TYPES[type_]
    return Upstream(
        name=name,
        url=base_url(url, host) if url else "",
        type=type_,
        api_key=Secret(environ.get(key_env, "") if key_env else ""),
        api_key_env=key_env,
        headers=_str_table(r, "headers"),
        retries=max(0, retries),
        forward_client_auth=r.get("forward_client_auth", bool, False, "true or false"),
        extra_params=frozenset(str(e) for e in extras),
        # A query pasted with the URL (Azure's "Target URI") is kept; `query` in config wins.
        query={**dict(host.query), **dict(parse_qsl(urlsplit(url).query)), **_str_table(r, "query")},
        **timeouts,
    )


def _model(index: int, table: Any, upstreams: Mapping[str, Upstream], problems: Problems, default: str) -> ModelAlias | None:
    key = f"models[{index}]"
    if not isinstance(table, dict):
        problems.add(key, "expected a table ([[models]])")
        return None
    r = _Reader(table, key, problems)
    r.unknown({f.name for f in fields(ModelAlias)})
    name = r.get("name", str, "", "a model name")
    if not name:
        problems.add(f"{key}.name", "expected a non-empty model name")
    upstream = r.get("upstream", str, default, "an upstream name")
    if upstream not in upstreams:
        problems.add(f"{key}.upstream", f"no [upstreams.{upstream}] is configured")
    tools = r.get("tools", list, [], "a list of tool names or globs")
    max_rounds = r.get("max_rounds", (int, type(None)), None, "an integer")
    on_max = r.get("on_max_rounds", (str, type(None)), None, "answer or error")
    if on_max is not None and on_max not in _ON_MAX_ROUNDS:
        problems.add(f"{key}.on_max_rounds", f"expected one of {', '.join(_ON_MAX_ROUNDS)}, got {on_max!r}")
    return ModelAlias(
        name=name,
        upstream=upstream,
        upstream_model=r.get("upstream_model", str, name, "a model name"),
        tools=tuple(str(t) for t in tools),
        system_prompt=r.get("system_prompt", str, "", "a string"),
        max_rounds=max_rounds,
        on_max_rounds=on_max,
        defaults=r.get("defaults", dict, {}, "a table of request parameters"),
        overrides=r.get("overrides", dict, {}, "a table of request parameters"),
    )


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str], problems: Problems) -> None:
    """Container overrides: TOOLGATE_UPSTREAM_* set the default upstream, and so on."""
    server = raw.setdefault("server", {})
    if isinstance(server, dict):
        if environ.get("TOOLGATE_HOST"):
            server["host"] = environ["TOOLGATE_HOST"]
        port = environ.get("TOOLGATE_PORT", "")
        if port.isdigit():
            server["port"] = int(port)
        elif port:
            problems.add("TOOLGATE_PORT", f"expected a port number, got {port!r}")
    default = server.get("default_upstream", "default") if isinstance(server, dict) else "default"
    upstreams = raw.setdefault("upstreams", {})
    overrides = {
        "url": environ.get("TOOLGATE_UPSTREAM_URL"),
        "type": environ.get("TOOLGATE_UPSTREAM_TYPE"),
        "api_key_env": "TOOLGATE_UPSTREAM_API_KEY" if environ.get("TOOLGATE_UPSTREAM_API_KEY") else None,
    }
    overrides = {k: v for k, v in overrides.items() if v}
    # Create the default upstream only for the env or an upstream-less file (then
    # `serve` runs the demo); a default_upstream naming nothing stays a problem.
    if not isinstance(upstreams, dict) or not (overrides or not upstreams or default in upstreams):
        return
    target = upstreams.setdefault(default, {})
    if isinstance(target, dict):
        target.update(overrides)


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, validate and resolve the config file; raise ConfigError listing every problem."""
    environ = {} if environ is None else environ
    path = str(path or environ.get("TOOLGATE_CONFIG") or DEFAULT_PATH)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"{path}: {exc}"]) from None
    return settings_from_dict(raw, environ, path)


def settings_from_dict(raw: dict[str, Any], environ: Mapping[str, str], path: str = "<config>") -> Settings:
    problems = Problems(path)
    _apply_env(raw, environ, problems)
    for name in raw:
        if name not in {"server", "loop", "auth", "upstreams", "models", "tools"}:
            problems.add(name, "unknown section; expected server, loop, auth, upstreams, models or tools")

    def table(name: str) -> dict[str, Any]:
        value = raw.get(name, {})
        if not isinstance(value, dict):
            problems.add(name, "expected a table")
            return {}
        return value

    server = _dataclass_from(ServerSettings, table("server"), "server", problems)
    if server.progress not in _PROGRESS:
        problems.add("server.progress", f"expected one of {', '.join(_PROGRESS)}, got {server.progress!r}")
    loop = _dataclass_from(LoopSettings, table("loop"), "loop", problems)
    if loop.on_max_rounds not in _ON_MAX_ROUNDS:
        problems.add("loop.on_max_rounds", f"expected one of {', '.join(_ON_MAX_ROUNDS)}, got {loop.on_max_rounds!r}")

    upstreams: dict[str, Upstream] = {}
    for name, entry in table("upstreams").items():
        if not isinstance(entry, dict):
            problems.add(f"upstreams.{name}", "expected a table")
            continue
        upstreams[name] = _upstream(name, entry, environ, problems)
    if server.default_upstream not in upstreams:
        problems.add("server.default_upstream", f"no [upstreams.{server.default_upstream}] is configured")

    models_raw = raw.get("models", [])
    if not isinstance(models_raw, list):
        problems.add("models", "expected an array of tables ([[models]])")
        models_raw = []
    models: dict[str, ModelAlias] = {}
    for i, entry in enumerate(models_raw):
        alias = _model(i, entry, upstreams, problems, server.default_upstream)
        if alias is None:
            continue
        if alias.name in models:
            problems.add(f"models[{i}].name", f"model {alias.name!r} is defined twice")
        models[alias.name] = alias

    auth = _Reader(table("auth"), "auth", problems)
    auth.unknown({"api_keys_env"})
    keys_env = auth.get("api_keys_env", str, "TOOLGATE_API_KEYS", "an environment variable name")
    api_keys = tuple(Secret(k.strip()) for k in environ.get(keys_env, "").split(",") if k.strip())

    sources = build_sources(table("tools"), problems)
    problems.raise_if_any()
    return Settings(
        server=server,
        loop=loop,
        upstreams=upstreams,
        models=models,
        sources=tuple(sources),
        api_keys=api_keys,
        path=path,
        environ=dict(environ),
    )
