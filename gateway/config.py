"""Configuration: declared as frozen dataclasses, loaded from one TOML file.

    settings = load_config("config/toolgate.toml", os.environ)

Every problem is collected (file, key, what was expected) and raised together
as one ``ConfigError``; the CLI prints them and exits 2. What is valid but
surprising is collected the same way into ``Settings.warnings``. Secrets come
from the environment only, are held in ``Secret`` so no repr or log can show
them, and are listed by ``Settings.secrets()`` for the process's redactor.
"""

from __future__ import annotations

import fnmatch
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from gateway.errors import ConfigError, Problems
from gateway.hosts import HOST_TYPES, HostType, base_url
from gateway.redact import MASK, MIN_LENGTH, SECRETS
from gateway.tables import Table
from gateway.tools import hints
from gateway.tools.base import StaticSource, ToolSource
from gateway.tools.builtin import BUILTINS
from gateway.tools import registry
from gateway.tools.registry import SourceSpec

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
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # secrets but _PUBLIC_HEADERS
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 300.0
    retries: int = 2
    forward_client_auth: bool = False
    extra_params: frozenset[str] = frozenset()
    query: Mapping[str, str] = field(default_factory=dict, repr=False)  # all but _PUBLIC_QUERY are secrets
    # Requests in flight to this upstream (a stream holds its slot to the end): as many as
    # server.max_concurrency by default, so the default config never refuses below that cap.
    max_connections: int = 1024
    pool_timeout_s: float = 5.0  # wait for a free connection slot, then 503
    retry_budget_percent: float = 20.0  # retries: at most this % of the active requests ...
    retry_budget_min: int = 3  # ... or this many at once, whichever is more
    max_output_tokens: int = 131072  # ceiling on max_tokens sent, and on a request's rounds summed
    # One reply from the host, streamed or not: past it, a 502 (its memory is the gateway's).
    max_reply_bytes: int = 64 << 20

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
    max_output_tokens: int | None = None  # None: the upstream's ceiling


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 16 * 1024 * 1024
    max_messages: int = 2048
    max_concurrency: int = 1024
    # Below the OpenAI SDK's 600 s client timeout: the gateway should give up first, or the
    # SDK retries while the first loop still runs.
    request_timeout_s: float = 570.0
    keepalive_s: float = 15.0  # SSE keepalive comment interval
    grace_s: float = 30.0
    log_content: bool = False
    log_requests: bool = True
    trace: bool = False
    progress: str = "off"
    passthrough_unknown_models: bool = False
    default_upstream: str = "default"
    max_header_bytes: int = 65536  # the whole request head
    max_headers: int = 100
    header_timeout_s: float = 10.0  # the request head must arrive within
    body_timeout_s: float = 60.0  # the whole body must arrive within
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after
    send_timeout_s: float = 30.0  # one write to a client that does not read
    # Browser origins allowed to call the API (CORS); empty: CORS is off. "*": any origin.
    cors_origins: tuple[str, ...] = ()


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
    max_tool_calls: int = 32  # server tool calls per request, all rounds together
    max_repeated_deltas: int = 50  # identical consecutive content deltas: a runaway stream
    tool_threads: int = 8  # worker threads for tools' blocking work


@dataclass(frozen=True)
class StoreSettings:
    """The Responses API's response store: SQLite embedded, or Redis shared by replicas."""

    url: str = "sqlite:///toolgate-responses.db"  # or "redis://host:6379/0"; TOOLGATE_STORE_URL overrides
    ttl_s: float = 30 * 24 * 3600.0  # a stored response expires after
    max_bytes: int = 1 << 30  # oldest responses are evicted past it
    timeout_s: float = 5.0  # one store operation, at most


_STORE_SCHEMES = ("sqlite", "redis", "rediss")


@dataclass(frozen=True)
class ResponsesSettings:
    """The Responses API: which remote MCP servers a request may name by `server_url`."""

    # URL patterns (`*` matches anything in the path: "https://mcp.example.com/*"). Empty:
    # every server_url is a 400, and mcp tools only select the config's own tool sources.
    mcp_server_urls: tuple[str, ...] = ()
    # Holes in the SSRF guard (as fetch_url's `allow`: host, host:port or CIDR), for an
    # allowlisted server on a private network or a port other than 80/443.
    mcp_network_allow: tuple[str, ...] = ()
    mcp_connect_timeout_s: float = 10.0  # connect + initialize + tools/list of a remote server
    mcp_sessions: int = 16  # remote sessions kept at once (by URL and headers), at most
    mcp_idle_s: float = 300.0  # a remote session unused this long is closed
    # A configured source's default for an mcp tool that sends no require_approval:
    # "always" (the hosted API's default, and the gateway's) or "never". By source name.
    require_approval: Mapping[str, str] = field(default_factory=dict)


def _responses(table: Mapping[str, Any], problems: Problems) -> ResponsesSettings:
    key = "responses"
    reader = _Reader(table, key, problems)
    reader.unknown({f.name for f in fields(ResponsesSettings)})
    numbers = {f.name: reader.field(f) for f in fields(ResponsesSettings) if f.name in table and isinstance(f.default, (int, float))}
    patterns = _strings(reader, "mcp_server_urls", "a list of URL patterns")
    for pattern in patterns:
        parts = urlsplit(pattern)
        if parts.scheme not in ("http", "https") or not parts.hostname or "*" in parts.netloc or parts.username or parts.password:
            problems.add(
                f"{key}.mcp_server_urls",
                f"{pattern!r}: expected an http(s) URL pattern with a plain host, `*` only in the path (https://mcp.example.com/*)",
            )
    allow = _strings(reader, "mcp_network_allow", "a list of hosts, host:port or CIDR networks")
    if allow:
        from gateway.tools.builtin.netguard import Guard  # here: netguard needs httpx, the config does not

        Guard.from_config(allow, problems, f"{key}.mcp_network_allow")
    approvals = _str_table(reader, "require_approval")
    for name, policy in approvals.items():
        if policy not in _APPROVALS:
            problems.add(f"{key}.require_approval.{name}", f"expected one of {', '.join(_APPROVALS)}, got {policy!r}")
    return ResponsesSettings(mcp_server_urls=patterns, mcp_network_allow=allow, require_approval=approvals, **numbers)


_APPROVALS = ("always", "never")


def _shown_store_url(url: str) -> str:
    # A Redis password is masked; a sqlite:/// path is kept as written (it has no host to rebuild).
    password = urlsplit(url).password
    return url.replace(f":{password}@", f":{MASK}@") if password else url


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    loop: LoopSettings = field(default_factory=LoopSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    responses: ResponsesSettings = field(default_factory=ResponsesSettings)
    upstreams: Mapping[str, Upstream] = field(default_factory=dict)
    models: Mapping[str, ModelAlias] = field(default_factory=dict)
    # What to create the tool sources from (`registry.create`); the app creates and starts them.
    sources: tuple[SourceSpec, ...] = ()
    api_keys: tuple[Secret, ...] = ()
    path: str = ""
    # The environment the config was resolved against; `${VAR}` in tool sources reads it.
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Valid but surprising, one "file: key: what" line each; the CLI logs them.
    warnings: tuple[str, ...] = ()

    def secrets(self) -> list[str]:
        """Every secret value the config knows (tool sources' expanded against `environ`), for the redactor::

            SECRETS.add(*settings.secrets())

        Gateway API keys, upstream keys, every upstream header and query value but the
        public ones (``X-Title``, ``api-version``), the token of ``Bearer <token>``, the
        password of a URL, and whatever a tool source reports through ``secrets()``.
        """
        found = [key.value for key in self.api_keys]
        found.append(urlsplit(self.store.url).password or "")
        for upstream in self.upstreams.values():
            found += _upstream_secrets(upstream)
        for spec in self.sources:
            found += registry.secrets(spec, self.environ)
        return [value for value in dict.fromkeys(found) if value]

    def describe(self) -> dict[str, Any]:
        """The resolved config as plain data, secrets redacted (for `toolgate check`)."""
        upstreams = {
            name: {
                **_plain(u),
                "url": _shown_url(u.url),
                "headers": _shown_headers(u.headers),
                "query": _shown_query(u.query),
            }
            for name, u in self.upstreams.items()
        }
        described = {
            "path": self.path,
            "server": _plain(self.server),
            "loop": _plain(self.loop),
            "store": {**_plain(self.store), "url": _shown_store_url(self.store.url)},
            "responses": _plain(self.responses),
            "auth": {"api_keys": len(self.api_keys)},
            "upstreams": upstreams,
            "models": _plain(self.models),
        }
        # Whatever else carries a secret (a system prompt, a URL path) is masked here.
        secrets = self.secrets()
        redacted: dict[str, Any] = _map_strings(described, lambda text: SECRETS.scrub(text, *secrets))
        return redacted


def _plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return MASK if value else ""
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    return value


def _map_strings(value: Any, change: Any) -> Any:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, list):
        return [_map_strings(v, change) for v in value]
    if isinstance(value, dict):
        return {change(str(k)): _map_strings(v, change) for k, v in value.items()}
    return value


# --- secrets in upstream URLs, headers and queries ----------------------------------

# Names known to carry no secret. Every other value is treated as one (`code` for Azure
# Functions, `sig` for SAS, `x-goog-api-key` ...): a missed key leaks, while a public value
# taken for a secret masks a word in every log line (OpenRouter's X-Title, api-version's date).
_PUBLIC_QUERY = frozenset(name for host in HOST_TYPES.values() for name, _ in host.query)
_PUBLIC_HEADERS = frozenset(
    {"accept", "content-type", "user-agent", "http-referer", "referer", "x-title", "anthropic-version", "openai-beta"}
)


def _upstream_secrets(upstream: Upstream) -> list[str]:
    found = [upstream.api_key.value]
    for name, value in upstream.headers.items():
        if name.lower() in _PUBLIC_HEADERS:
            continue
        found.append(value)
        scheme, _, token = value.strip().partition(" ")
        if token and scheme.isalpha():  # "Bearer sk-...": the token alone shows up in echoes
            found.append(token.strip())
    found += [v for k, v in upstream.query.items() if k not in _PUBLIC_QUERY]
    found.append(_password(upstream.url))
    return found


def _password(url: str) -> str:
    try:
        return urlsplit(url).password or ""
    except ValueError:
        return ""


def _shown_query(query: Mapping[str, str]) -> dict[str, str]:
    return {k: v if k in _PUBLIC_QUERY else MASK for k, v in query.items()}


def _shown_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v if k.lower() in _PUBLIC_HEADERS else MASK for k, v in headers.items()}


def _shown_url(url: str) -> str:
    """``url`` with its password and non-public query values masked, for output."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.partition("?")[0] + ("?" + MASK if "?" in url else "")
    netloc = parts.netloc
    user, at, host = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.partition(':')[0]}:{MASK}@{host}"
    query = parts.query
    if query:
        query = urlencode(list(_shown_query(dict(parse_qsl(query, keep_blank_values=True))).items()), safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _origin_problem(origin: str) -> str | None:
    """What is wrong with a CORS origin ("*", or scheme://host[:port] as a browser sends it), or None."""
    if origin == "*":
        return None
    wrong = _url_problem(origin)
    if wrong:
        return wrong
    parts = urlsplit(origin)
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        return f"expected an origin (scheme://host[:port], no path), got {origin!r}"
    return None


def _url_problem(url: str) -> str | None:
    """What is wrong with an upstream URL, or None."""
    shown = _shown_url(url)
    if not url.startswith(("http://", "https://")):
        return f"expected an http:// or https:// URL, got {shown!r}"
    if any(c.isspace() or not c.isprintable() for c in url):
        return f"expected a URL without spaces or control characters, got {shown!r}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        return f"expected a valid URL ({exc}), got {shown!r}"
    if not parts.hostname:
        return f"expected a URL with a host name, got {shown!r}"
    return None


# --- numbers: one range per key ------------------------------------------------------


@dataclass(frozen=True)
class _Range:
    """The values a numeric key accepts."""

    low: float
    high: float = math.inf
    above: bool = False  # `low` itself refused
    expect: str = ""

    def admits(self, value: float) -> bool:
        return math.isfinite(value) and (value > self.low if self.above else value >= self.low) and value <= self.high


_COUNT = _Range(1, expect="an integer of at least 1")
_SECONDS = _Range(0, above=True, expect="a number of seconds above 0")
# The keys whose range is not the rule (seconds for names ending in `_s`, counts for the rest).
_RANGES: dict[str, _Range] = {
    "port": _Range(1, 65535, expect="a port number from 1 to 65535"),
    "grace_s": _Range(0, expect="a non-negative number of seconds (0: stop at once)"),
    "retries": _Range(0, expect="a non-negative integer"),
    "retry_budget_min": _Range(0, expect="a non-negative integer"),
    "retry_budget_percent": _Range(0, 100, expect="a percentage from 0 to 100"),
}


def _range(name: str) -> _Range:
    return _RANGES.get(name) or (_SECONDS if name.endswith("_s") else _COUNT)


_PROGRESS = ("off", "reasoning")
_ON_MAX_ROUNDS = ("answer", "error")
_OUTPUT_PARAMS = ("max_tokens", "max_completion_tokens")
# The OpenAI SDK's default client timeout: a longer request is given up and retried by it.
_SDK_TIMEOUT_S = 600.0


class _Reader(Table):
    """Typed reads from one TOML table, recording problems instead of raising.

    Every number is checked against its key's range (`_RANGES`), so one table holds them all.
    """

    def get(self, name: str, kind: type | tuple[type, ...], default: Any, expect: str) -> Any:
        if name not in self.table:
            return default
        value = self.table[name]
        ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _as_tuple(kind))
        if not ok:
            self.expected(name, expect, value)
            return default
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not _range(name).admits(value):
            self.expected(name, _range(name).expect, value)
            return default
        return value

    def field(self, f: Field[Any]) -> Any:
        """A dataclass field's value, typed by its default (ints are fine for floats)."""
        default = f.default
        kind: Any = (int, float) if isinstance(default, float) else type(default)
        expect = {bool: "true or false", int: "an integer", str: "a string"}.get(kind, "a number")
        value = self.get(f.name, kind, default, expect)
        return float(value) if isinstance(default, float) else value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _dataclass_from(cls: type, table: Mapping[str, Any], key: str, problems: Problems) -> Any:
    """Fill a flat settings dataclass from a table, checking each value's type and range."""
    reader = _Reader(table, key, problems)
    reader.unknown({f.name for f in fields(cls)})
    return cls(
        **{
            f.name: _strings(reader, f.name, "a list of strings") if isinstance(f.default, tuple) else reader.field(f)
            for f in fields(cls)
            if f.name in table
        }
    )


def _str_table(reader: _Reader, name: str) -> dict[str, str]:
    value = reader.get(name, dict, {}, "a table of strings")
    if not all(isinstance(v, str) for v in value.values()):
        reader.expected(name, "a table of strings", value)
        return {}
    return dict(value)


def _strings(reader: _Reader, name: str, expect: str) -> tuple[str, ...]:
    value = reader.get(name, list, [], expect)
    if not all(isinstance(v, str) and v for v in value):
        reader.expected(name, f"{expect} (non-empty strings)", value)
        return ()
    return tuple(value)


def _headers(reader: _Reader) -> dict[str, str]:
    headers = _str_table(reader, "headers")
    for name, value in headers.items():
        # A bad one fails every request to the upstream, so it fails the config instead.
        if not name or any(c in name for c in ' \t:()<>@,;"/[]?={}') or not name.isprintable():
            reader.problems.add(f"{reader.key}.headers", f"{name!r}: expected an HTTP header name")
        elif any(c in value for c in "\r\n\x00"):
            reader.problems.add(f"{reader.key}.headers.{name}", "expected a value without line breaks or NUL")
    return headers


# Upstream keys read by their dataclass default, as the flat sections are.
_UPSTREAM_FIELDS = tuple(
    f for f in fields(Upstream) if type(f.default) in (int, float) or f.name == "forward_client_auth"
)


def _upstream(name: str, table: Mapping[str, Any], environ: Mapping[str, str], problems: Problems) -> Upstream:
    key = f"upstreams.{name}"
    r = _Reader(table, key, problems)
    r.unknown(
        {
            "url", "type", "api_key_env", "headers", "extra_params", "query",
            *(f.name for f in _UPSTREAM_FIELDS),
            "api_key",  # known, and refused below with its own line
        }
    )  # fmt: skip
    type_ = r.get("type", str, "openai", "a string")
    if type_ not in HOST_TYPES:
        problems.add(f"{key}.type", f"expected one of {', '.join(HOST_TYPES)}, got {type_!r}")
        type_ = "openai"
    url = r.get("url", str, "", "a URL string")
    wrong = _url_problem(url) if url else None
    if wrong:
        problems.add(f"{key}.url", wrong)
        url = ""
    if "api_key" in table:
        problems.add(f"{key}.api_key", "secrets are not read from the file; set api_key_env to a variable name")
    key_env = r.get("api_key_env", str, "", "an environment variable name")
    if key_env and key_env not in environ:
        problems.add(f"{key}.api_key_env", f"environment variable {key_env} is not set")
    host = HOST_TYPES[type_]
    return Upstream(
        name=name,
        url=base_url(url, host) if url else "",
        type=type_,
        api_key=Secret(environ.get(key_env, "") if key_env else ""),
        api_key_env=key_env,
        headers=_headers(r),
        extra_params=frozenset(_strings(r, "extra_params", "a list of parameter names")),
        # A query pasted with the URL (Azure's "Target URI") is kept; `query` in config wins.
        query={**dict(host.query), **dict(parse_qsl(urlsplit(url).query)), **_str_table(r, "query")},
        **{f.name: r.field(f) for f in _UPSTREAM_FIELDS if f.name in table},
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
    upstream_model = r.get("upstream_model", str, name, "a model name")
    if name and not upstream_model:
        problems.add(f"{key}.upstream_model", "expected a non-empty model name")
    on_max = r.get("on_max_rounds", (str, type(None)), None, "answer or error")
    if on_max is not None and on_max not in _ON_MAX_ROUNDS:
        problems.add(f"{key}.on_max_rounds", f"expected one of {', '.join(_ON_MAX_ROUNDS)}, got {on_max!r}")
    return ModelAlias(
        name=name,
        upstream=upstream,
        upstream_model=upstream_model or name,
        tools=_strings(r, "tools", "a list of tool names or globs"),
        system_prompt=r.get("system_prompt", str, "", "a string"),
        max_rounds=r.get("max_rounds", (int, type(None)), None, "an integer"),
        on_max_rounds=on_max,
        defaults=r.get("defaults", dict, {}, "a table of request parameters"),
        overrides=r.get("overrides", dict, {}, "a table of request parameters"),
        max_output_tokens=r.get("max_output_tokens", (int, type(None)), None, "an integer"),
    )


class _Catalog:
    """The tool names the sources can offer, as far as the config can tell.

    A static source's tools (built-ins, Python functions) are known now; an MCP or
    OpenAPI source's only once it starts, so a name it could offer is given the benefit
    of the doubt.
    """

    def __init__(self, sources: Iterable[ToolSource]) -> None:
        self.known: set[str] = set()  # as offered
        self.clashed: set[str] = set()  # as offered if another source has the same name
        self.dynamic: list[str] = []  # each one's name prefix; "" offers any name
        for source in sources:
            if isinstance(source, StaticSource):
                for tool in source.tools():
                    prefixed = f"{source.name}_{tool.name}"
                    self.known.add(prefixed if source.prefix else tool.name)
                    self.clashed.add(prefixed)
            else:
                self.dynamic.append(f"{source.name}_" if source.prefix else "")

    def unknown(self, pattern: str) -> bool:
        """True when nothing known now matches ``pattern`` and no started source could."""
        if any(fnmatch.fnmatchcase(name, pattern) for name in self.known | self.clashed):
            return False
        literal = pattern
        for mark in "*?[":
            literal = literal.partition(mark)[0]
        # `literal` is what every match starts with; a glob past it may still match `prefix...`.
        is_glob = literal != pattern
        return not any(literal.startswith(p) or (is_glob and p.startswith(literal)) for p in self.dynamic)


def _check_tools(key: str, alias: ModelAlias, catalog: _Catalog, problems: Problems, warnings: Problems) -> None:
    for pattern in alias.tools:
        if pattern.startswith("!"):  # an exclusion by annotation, not a name
            if (wrong := hints.problem(pattern)) is not None:
                problems.add(f"{key}.tools", wrong)
            continue
        if not catalog.unknown(pattern):
            continue
        if not any(mark in pattern for mark in "*?["):
            hint = f"; enable it with [tools.builtin.{pattern}]" if pattern in BUILTINS else ""
            known = ", ".join(sorted(catalog.known)) or "none"
            problems.add(f"{key}.tools", f"{pattern!r} names no tool a configured source offers (known: {known}){hint}")
        else:
            warnings.add(f"{key}.tools", f"{pattern!r} matches no tool a configured source offers")


def _surprises(settings: Settings, keys_env: str, warnings: Problems) -> None:
    """Valid but surprising settings, each one warning line."""
    server, loop = settings.server, settings.loop
    if loop.tool_timeout_s >= server.request_timeout_s:
        warnings.add(
            "loop.tool_timeout_s",
            f"{loop.tool_timeout_s:g} s is not below server.request_timeout_s ({server.request_timeout_s:g} s): "
            "the request deadline ends a slow tool first",
        )
    for source in settings.sources:
        timeout = getattr(source.settings, "timeout_s", None)  # a source's own bound per call (MCP, OpenAPI)
        if isinstance(timeout, (int, float)) and timeout >= server.request_timeout_s:
            warnings.add(
                f"tools.{source.kind}.{source.name}.timeout_s",
                f"{timeout:g} s is not below server.request_timeout_s ({server.request_timeout_s:g} s): "
                "the request deadline ends a slow tool first",
            )
    if server.request_timeout_s >= _SDK_TIMEOUT_S:
        warnings.add(
            "server.request_timeout_s",
            f"{server.request_timeout_s:g} s is not below the OpenAI SDK's default timeout ({_SDK_TIMEOUT_S:g} s): "
            "the SDK gives up first and retries, replaying the tool loop",
        )
    for name, upstream in settings.upstreams.items():
        key = f"upstreams.{name}"
        if upstream.api_key_env and len(upstream.api_key.value) < MIN_LENGTH:
            warnings.add(
                f"{key}.api_key_env",
                f"{upstream.api_key_env} holds fewer than {MIN_LENGTH} characters: it cannot be redacted reliably",
            )
    short = sum(len(k.value) < MIN_LENGTH for k in settings.api_keys)
    if short:
        warnings.add(
            "auth.api_keys_env",
            f"{short} key(s) in {keys_env} have fewer than {MIN_LENGTH} characters: they cannot be redacted reliably",
        )
    for i, alias in enumerate(settings.models.values()):
        ceiling = alias.max_output_tokens or settings.upstreams[alias.upstream].max_output_tokens
        for where, params in (("defaults", alias.defaults), ("overrides", alias.overrides)):
            for param in _OUTPUT_PARAMS:
                value = params.get(param)
                if isinstance(value, int) and value > ceiling:
                    warnings.add(
                        f"models[{i}].{where}.{param}", f"{value} is above the output ceiling of {ceiling}; {ceiling} is sent"
                    )


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str], problems: Problems) -> None:
    """Container overrides: TOOLGATE_UPSTREAM_* set the default upstream, and so on."""
    store = raw.setdefault("store", {})
    if isinstance(store, dict) and environ.get("TOOLGATE_STORE_URL"):
        store["url"] = environ["TOOLGATE_STORE_URL"]
    server = raw.setdefault("server", {})
    if isinstance(server, dict):
        if environ.get("TOOLGATE_HOST"):
            server["host"] = environ["TOOLGATE_HOST"]
        port = environ.get("TOOLGATE_PORT", "")
        if not port.isdigit():
            if port:
                problems.add("TOOLGATE_PORT", f"expected a port number, got {port!r}")
        elif not _range("port").admits(int(port)):
            problems.add("TOOLGATE_PORT", f"expected {_range('port').expect}, got {port!r}")
        else:
            server["port"] = int(port)
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
    problems, warnings = Problems(path), Problems(path)
    _apply_env(raw, environ, problems)
    for name in raw:
        if name not in {"server", "loop", "store", "responses", "auth", "upstreams", "models", "tools"}:
            problems.add(name, "unknown section; expected server, loop, store, responses, auth, upstreams, models or tools")

    def table(name: str) -> dict[str, Any]:
        value = raw.get(name, {})
        if not isinstance(value, dict):
            problems.add(name, "expected a table")
            return {}
        return value

    server = _dataclass_from(ServerSettings, table("server"), "server", problems)
    if server.progress not in _PROGRESS:
        problems.add("server.progress", f"expected one of {', '.join(_PROGRESS)}, got {server.progress!r}")
    if not server.host or not server.host.isprintable() or " " in server.host:
        problems.add("server.host", f"expected a host name or address to bind, got {server.host!r}")
    for origin in server.cors_origins:
        wrong = _origin_problem(origin)
        if wrong:
            problems.add("server.cors_origins", wrong)
    loop = _dataclass_from(LoopSettings, table("loop"), "loop", problems)
    if loop.on_max_rounds not in _ON_MAX_ROUNDS:
        problems.add("loop.on_max_rounds", f"expected one of {', '.join(_ON_MAX_ROUNDS)}, got {loop.on_max_rounds!r}")

    store = _dataclass_from(StoreSettings, table("store"), "store", problems)
    if urlsplit(store.url).scheme not in _STORE_SCHEMES or not urlsplit(store.url).path.strip("/") and not urlsplit(store.url).netloc:
        problems.add("store.url", f"expected sqlite:///PATH or redis://HOST:PORT/DB, got {_shown_store_url(store.url)!r}")
    responses = _responses(table("responses"), problems)

    upstreams: dict[str, Upstream] = {}
    for name, entry in table("upstreams").items():
        if not isinstance(entry, dict):
            problems.add(f"upstreams.{name}", "expected a table")
            continue
        upstreams[name] = _upstream(name, entry, environ, problems)
    if server.default_upstream not in upstreams:
        problems.add("server.default_upstream", f"no [upstreams.{server.default_upstream}] is configured")

    sources = registry.build_specs(table("tools"), problems)
    for name in responses.require_approval:
        if name not in {spec.name for spec in sources}:
            problems.add(f"responses.require_approval.{name}", "no tool source of that name is configured")
    catalog = _Catalog(registry.preview(spec) for spec in sources)
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
        _check_tools(f"models[{i}]", alias, catalog, problems, warnings)
        models[alias.name] = alias

    auth = _Reader(table("auth"), "auth", problems)
    auth.unknown({"api_keys_env"})
    keys_env = auth.get("api_keys_env", str, "TOOLGATE_API_KEYS", "an environment variable name")
    api_keys = tuple(Secret(k.strip()) for k in environ.get(keys_env, "").split(",") if k.strip())
    if keys_env != "TOOLGATE_API_KEYS" and keys_env not in environ:
        warnings.add("auth.api_keys_env", f"environment variable {keys_env} is not set: requests need no key")

    problems.raise_if_any()
    settings = Settings(
        server=server,
        loop=loop,
        store=store,
        responses=responses,
        upstreams=upstreams,
        models=models,
        sources=tuple(sources),
        api_keys=api_keys,
        path=path,
        environ=dict(environ),
    )
    _surprises(settings, keys_env, warnings)
    return replace(settings, warnings=tuple(warnings.lines))
