"""OpenAPI tool servers (Open WebUI tool servers, mcpo): each operation becomes a tool.

::

    [tools.openapi.weather]
    url = "http://127.0.0.1:8000/openapi.json"   # or: spec = "/etc/toolgate/weather.json"
    base_url = "http://127.0.0.1:8000"           # default: servers[0], else the spec URL's origin
    headers = { Authorization = "Bearer ${WEATHER_TOKEN}" }
    operations = ["get_*"]                       # optional globs on the tool names
    prefix = false
    timeout_s = 30                               # per call (default: loop.tool_timeout_s)
    startup_timeout_s = 10                       # loading the spec (default 10)
    allow = ["10.0.0.0/8"]                       # internal API servers a spec may name

A tool's name is the operationId; its parameters are the path, query and header
parameters and the JSON body's properties, as one object (local ``$ref``s inlined).
The spec is loaded at ``start``; a failure leaves the source not ready, with the
reason, and loading is retried with backoff: ``start`` never raises.

Secrets: ``secrets()`` names the values to mask wherever they might show (the
app hands them to ``gateway.redact.SECRETS``, so a server echoing its token does
not put it in front of the model): every header value that uses a ``${VAR}``,
the variables' values themselves, and literal values of credential-like
headers (``Authorization``, ``X-Api-Key``, ``Cookie`` ...). A literal ``Accept:
application/json`` is not a secret, and masking it would blank ordinary text.

Trust: the configured ``url``/``base_url`` are the operator's. A ``servers`` URL
in the spec on another origin is the spec author's, so it is checked against
the SSRF policy and every call to it is pinned to the checked address.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from gateway import tracing
from gateway.errors import Problems
from gateway.backoff import backoff
from gateway.tools import variables
from gateway.tools.base import ServerSource, SourceContext, SourceStatus, Tool, ToolError, tool_name
from gateway.tools.builtin import Options
from gateway.tools.builtin.fetch_url import read_capped
from gateway.tools.builtin.netguard import Guard, Refused
from gateway.tools.schema import follow
from gateway.tools.workers import WORKERS, WorkersBusy

logger = logging.getLogger("toolgate.openapi")

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
LOCATIONS = ("path", "query", "header")
MAX_SPEC_BYTES = 10 << 20
MAX_RESPONSE_BYTES = 1 << 20
MAX_REF_DEPTH = 12
MAX_REF_EXPANSIONS = 20_000
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 60.0
_CREDENTIAL = re.compile(r"auth|token|key|secret|cookie|session|password|signature", re.IGNORECASE)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\s+(\S+)")  # "Bearer <token>"


class LoadError(Exception):
    """Why the spec could not be turned into tools."""


@dataclass(frozen=True)
class Settings:
    name: str
    url: str | None
    spec: str | None
    base_url: str | None
    headers: Mapping[str, str]
    prefix: bool
    timeout_s: float | None  # per call; None: the loop's tool_timeout_s (the toolbox bounds every call)
    startup_timeout_s: float
    operations: tuple[str, ...] | None
    guard: Guard


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    where: Mapping[str, str]  # argument -> "path" | "query" | "header" | "body" (a body property)
    whole_body: bool = False  # the "body" argument is the entire JSON body
    header_names: Mapping[str, str] = field(default_factory=dict)  # argument -> header as spelled


_SAFE_METHODS = frozenset({"get", "head"})


class OpenApiTool(Tool):
    def __init__(self, source: OpenApiSource, op: Operation, name: str, description: str, schema: dict[str, Any]) -> None:
        super().__init__(name, description, schema, timeout_s=source.settings.timeout_s)
        self.operation = op
        self._source = source
        if op.method in _SAFE_METHODS:
            self.annotations = {"readOnlyHint": True}  # HTTP's safe methods; the rest say nothing

    async def call(self, arguments: dict[str, Any]) -> str:
        return await self._source.request(self.operation, arguments)


class OpenApiSource(ServerSource):
    """The operations of one OpenAPI server (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.name, settings.prefix, functools.partial(secret_values, settings))
        self.settings = settings
        self._client: httpx.AsyncClient | None = None
        self._owns_client = False
        self._headers: dict[str, str] = {}
        self._base = httpx.URL("")
        self._pinned = False  # the base URL came from the spec: check and pin every call
        self._retry: asyncio.Task[None] | None = None

    async def start(self, ctx: SourceContext) -> None:
        """Loads the spec, or records why not and retries in the background; never raises."""
        if self._client is None:
            self._client, self._owns_client = (ctx.http, False) if ctx.http is not None else (httpx.AsyncClient(trust_env=False), True)
        environ = self._environ = ctx.environ or os.environ
        try:
            self._headers = {k: variables.expand(v, environ) for k, v in self.settings.headers.items()}
        except variables.UnsetVariable as exc:
            self._status = SourceStatus(False, str(exc))
            return
        if not await self._attempt() and self._retry is None:
            self._retry = asyncio.create_task(self._keep_trying(), name=f"toolgate-openapi-{self.name}")

    async def stop(self) -> None:
        retry, self._retry = self._retry, None
        if retry is not None:
            retry.cancel()
            await asyncio.gather(retry, return_exceptions=True)
        if self._owns_client and self._client is not None:
            await self._client.aclose()
        self._client, self._owns_client = None, False
        self._tools = []
        self._status = SourceStatus(False, "stopped")

    async def _keep_trying(self) -> None:
        for attempt in range(10_000):  # about a week at the cap; then the source stays down
            await asyncio.sleep(backoff(attempt, first_s=BACKOFF_MIN_S, cap_s=BACKOFF_MAX_S))
            if await self._attempt():
                return

    async def _attempt(self) -> bool:
        try:
            async with asyncio.timeout(self.settings.startup_timeout_s):
                document, origin = await self._document()
                self._base, self._pinned = await self._base_url(document, origin)
                self._tools = list(self._build_tools(document))
        except Exception as exc:  # whatever a spec or its server does, start must not raise
            detail = str(exc) if isinstance(exc, (LoadError, ToolError)) else _describe(exc)
            logger.warning("OpenAPI server %r: %s; retrying", self.name, detail)
            self._status = SourceStatus(False, f"{detail}; retrying")
            return False
        self._status = SourceStatus(True, f"{len(self._tools)} tools")
        logger.info("OpenAPI server %r is up with %d tools", self.name, len(self._tools))
        return True

    # loading

    async def _document(self) -> tuple[dict[str, Any], httpx.URL | None]:
        """The parsed spec and, when fetched, the URL it came from."""
        if self.settings.spec is not None:
            raw = await WORKERS.run(_read_capped_file, Path(self.settings.spec))
            origin = None
        else:
            assert self._client is not None and self.settings.url is not None
            origin = httpx.URL(self.settings.url)
            request = self._client.build_request(
                "GET", origin, headers={**self._headers, "Accept": "application/json", "Accept-Encoding": "gzip"}
            )
            response = await self._client.send(request, stream=True)
            try:
                if response.status_code != 200:
                    raise LoadError(f"spec URL answered HTTP {response.status_code}")
                raw, truncated = await read_capped(response, MAX_SPEC_BYTES)
            except ToolError as exc:
                raise LoadError(str(exc)) from None
            finally:
                await response.aclose()
            if truncated:
                raise LoadError(f"spec larger than {MAX_SPEC_BYTES} bytes")
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise LoadError("spec is not valid JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("paths"), dict):
            raise LoadError("spec has no paths")
        if not str(document.get("openapi", "")).startswith("3."):
            raise LoadError("only OpenAPI 3 specs are supported")
        _refuse_external_refs(document)
        return document, origin

    async def _base_url(self, document: dict[str, Any], origin: httpx.URL | None) -> tuple[httpx.URL, bool]:
        if self.settings.base_url is not None:
            return httpx.URL(self.settings.base_url), False
        servers = document.get("servers")
        server = servers[0] if isinstance(servers, list) and servers and isinstance(servers[0], dict) else {}
        url = _server_url(server)
        if url is None:
            if origin is None:
                raise LoadError("the spec names no server; set base_url")
            return origin.copy_with(path="/", query=None, fragment=None), False
        base = origin.join(url) if origin is not None else httpx.URL(url)
        if not base.is_absolute_url:
            raise LoadError("the spec's server URL is relative; set base_url")
        if origin is not None and (base.scheme, base.host, base.port) == (origin.scheme, origin.host, origin.port):
            return base, False
        try:
            await self.settings.guard.check(base, any_port=True)
        except Refused as exc:
            raise Refused(f"the spec's server URL is not allowed: {exc}") from None
        return base, True

    def _build_tools(self, document: dict[str, Any]) -> list[Tool]:
        tools: list[Tool] = []
        names: set[str] = set()
        inline = _Inliner(document)
        for path, item in document["paths"].items():
            item = inline(item)
            if not isinstance(item, dict):
                continue
            shared = item.get("parameters") or []
            for method in METHODS:
                op = item.get(method)
                if not isinstance(op, dict):
                    continue
                name = _unique(tool_name(str(op.get("operationId") or f"{method}_{path}"), "operation", trim=True), names)
                globs = self.settings.operations
                if globs is not None and not any(fnmatchcase(name, g) for g in globs):
                    continue
                operation, schema = _operation(method, path, [*shared, *(op.get("parameters") or [])], op)
                description = op.get("summary") or op.get("description") or f"{method.upper()} {path}"
                tools.append(OpenApiTool(self, operation, name, str(description)[:1024], schema))
        return tools

    # calling

    async def request(self, op: Operation, arguments: dict[str, Any]) -> str:
        if self._client is None or not self._status.ready:
            raise ToolError(f"OpenAPI server {self.name!r} is not available: {self._status.detail}")
        path, query, headers, body = op.path, {}, dict(self._headers), {}
        for argument, value in arguments.items():
            where = op.where.get(argument)
            if value is None and where != "body":
                continue
            if where == "path":
                path = path.replace("{" + argument + "}", quote(_scalar(value), safe=""))
            elif where == "query":
                query[argument] = value if isinstance(value, list) else _scalar(value)
            elif where == "header":
                headers[op.header_names.get(argument, argument)] = _scalar(value)
            elif where == "body":
                body[argument] = value
            else:
                raise ToolError(f"unknown argument {argument!r}")
        if "{" in path:
            raise ToolError(f"missing path parameter in {op.path}")
        url = self._base.copy_with(path=self._base.path.rstrip("/") + path)
        json_body = arguments.get("body") if op.whole_body else (body or None)
        extensions: dict[str, Any] = {}
        if self._pinned:
            target = await self.settings.guard.check(url, any_port=True)
            url, extensions = target.connect_url, target.extensions
            headers.update({"Host": target.host_header, "Connection": "close"})
        headers["Accept-Encoding"] = "gzip"
        if tracing.ON:
            tracing.inject(headers)  # traceparent: this tool call's span
        try:
            request = self._client.build_request(
                op.method.upper(), url, params=query, headers=headers, json=json_body,
                extensions=extensions, timeout=self.settings.timeout_s,
            )
            response = await self._client.send(request, stream=True)
            try:
                raw, truncated = await read_capped(response, MAX_RESPONSE_BYTES)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise ToolError(f"{self.name}: {_describe(exc)}") from None
        text = raw.decode(response.charset_encoding or "utf-8", errors="replace")
        if not 200 <= response.status_code < 300:
            excerpt = " ".join(text[:300].split())
            where = f"HTTP {response.status_code} from {op.method.upper()} {op.path}"
            raise ToolError(f"{where}: {excerpt}" if excerpt else where)
        if "json" in response.headers.get("content-type", "") and not truncated:
            try:
                text = orjson.dumps(orjson.loads(raw)).decode()
            except orjson.JSONDecodeError:
                pass
        if truncated:
            text += f"\n(truncated after {MAX_RESPONSE_BYTES} bytes)"
        return text or f"HTTP {response.status_code} (no content)"


# --- the spec's pieces ---------------------------------------------------------------


def _refuse_external_refs(node: Any) -> None:
    stack = [node]
    for _ in range(1_000_000):
        if not stack:
            return
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                raise LoadError(f"external $ref {ref[:100]!r} is not supported")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    raise LoadError("spec too large")


def _read_capped_file(path: Path) -> bytes:
    with path.open("rb") as file:
        raw = file.read(MAX_SPEC_BYTES + 1)
    if len(raw) > MAX_SPEC_BYTES:
        raise LoadError(f"spec larger than {MAX_SPEC_BYTES} bytes")
    return raw


def _pointer(document: dict[str, Any], ref: str) -> Any:
    try:
        return follow(document, "" if ref == "#" else "/" + ref[1:].lstrip("/"))
    except LookupError:
        raise LoadError(f"$ref {ref[:100]!r} points at nothing") from None


class _Inliner:
    """Inlines local ``$ref``s; a cycle becomes ``{}`` (anything), and a budget stops
    specs whose references multiply (each level naming the next ten times)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.budget = MAX_REF_EXPANSIONS

    def __call__(self, node: Any, seen: tuple[str, ...] = ()) -> Any:
        if isinstance(node, list):
            return [self(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            if ref in seen or len(seen) >= MAX_REF_DEPTH:
                return {}
            self.budget -= 1
            if self.budget < 0:
                raise LoadError("the spec's $refs expand too far")
            return self(_pointer(self.document, ref), (*seen, ref))
        out = {k: self(v, seen) for k, v in node.items()}
        if out.pop("nullable", False) is True and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]  # OpenAPI 3.0's nullable, in JSON schema terms
        return out


def _operation(method: str, path: str, params: list[Any], op: dict[str, Any]) -> tuple[Operation, dict[str, Any]]:
    """The call plan and the merged parameter schema of one (inlined) operation."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    where: dict[str, str] = {}
    header_names: dict[str, str] = {}
    by_key = {}
    for param in params:  # operation-level parameters override path-level ones
        if isinstance(param, dict) and param.get("in") in LOCATIONS and isinstance(param.get("name"), str):
            by_key[(param["name"], param["in"])] = param
    for (name, location), param in by_key.items():
        schema = dict(param.get("schema") or {"type": "string"})
        if param.get("description") and "description" not in schema:
            schema["description"] = param["description"]
        argument = name if location != "header" else tool_name(name, "operation", trim=True)
        properties[argument] = schema
        where[argument] = location
        if location == "header":
            header_names[argument] = name
        if param.get("required") or location == "path":
            required.append(argument)
    whole_body = False
    body = op.get("requestBody") or {}
    content = body.get("content") if isinstance(body, dict) else None
    media = (content or {}).get("application/json") or next(
        (v for k, v in (content or {}).items() if k.endswith("+json")), None
    )
    if isinstance(media, dict) and isinstance(media.get("schema"), dict):
        schema = media["schema"]
        props = schema.get("properties")
        if schema.get("type", "object") == "object" and isinstance(props, dict) and not set(props) & set(properties):
            for name, prop in props.items():
                properties[name], where[name] = prop, "body"
            required += [r for r in schema.get("required", []) if r in props]
        else:
            whole_body, where["body"] = True, "body"
            properties["body"] = schema
            if body.get("required"):
                required.append("body")
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = list(dict.fromkeys(required))
    return Operation(method, path, where, whole_body, header_names), parameters


def _server_url(server: Mapping[str, Any]) -> str | None:
    url = server.get("url")
    if not isinstance(url, str) or not url:
        return None
    for name, variable in (server.get("variables") or {}).items():
        if isinstance(variable, dict) and isinstance(variable.get("default"), str):
            url = url.replace("{" + name + "}", variable["default"])
    return url


def _unique(name: str, taken: set[str]) -> str:
    candidate = name
    for n in range(2, 1000):
        if candidate not in taken:
            break
        candidate = f"{name[:60]}_{n}"
    taken.add(candidate)
    return candidate


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, WorkersBusy):
        return str(exc)
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__} talking to the server"
    if isinstance(exc, OSError):
        return f"cannot read the spec file ({exc.strerror or type(exc).__name__})"
    return f"malformed spec ({type(exc).__name__})"


def secret_values(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """The header values of `settings` to mask (see the module docstring), expanded against `environ`."""
    found: list[str] = []
    for header, value in settings.headers.items():
        names = variables.REFERENCE.findall(value)
        found += [environ[name] for name in names if name in environ]
        if not (names or _CREDENTIAL.search(header)) or any(name not in environ for name in names):
            continue
        full = variables.expand(value, environ)
        token = _SCHEME.fullmatch(full)
        found += [full, *([token.group(1)] if token else [])]
    return [v for v in dict.fromkeys(found) if v]


def create(name: str, settings: Settings) -> OpenApiSource:
    return OpenApiSource(settings)


def build(name: str, table: Mapping[str, Any], problems: Problems, key: str) -> OpenApiSource | None:
    """An unstarted source for ``[tools.openapi.NAME]``, or ``None`` (with problems)."""
    settings = parse(name, table, problems, key)
    return OpenApiSource(settings) if settings is not None else None


def parse(name: str, table: Mapping[str, Any], problems: Problems, key: str) -> Settings | None:
    """The frozen settings of ``[tools.openapi.NAME]``, or ``None`` (with problems)."""
    opts = Options(table, problems, key)
    url, spec = opts.string("url"), opts.string("spec")
    base_url = opts.string("base_url")
    headers = opts.string_map("headers")
    prefix = opts.boolean("prefix", False)
    timeout_s = opts.number("timeout_s", None)
    startup_timeout_s = opts.number("startup_timeout_s", 10.0)
    operations = opts.strings("operations") if "operations" in table else None
    enabled = opts.boolean("enabled", True)
    guard = Guard.from_config(opts.strings("allow"), problems, f"{key}.allow")
    if (url is None) == (spec is None):
        opts.problem("url", "expected exactly one of url (the openapi.json URL) or spec (a local file)")
    for option, value in (("url", url), ("base_url", base_url)):
        if value is not None and not value.startswith(("http://", "https://")):
            opts.problem(option, "expected an http:// or https:// URL")
    if spec is not None and not Path(spec).is_file():
        opts.problem("spec", f"{spec!r}: expected the path of an existing file")
    variables.check(headers, opts.problem, "headers")
    if not opts.finish() or guard is None or not enabled:
        return None
    globs = tuple(operations) if operations is not None else None
    return Settings(name, url, spec, base_url, headers, prefix, None if timeout_s is None else float(timeout_s), float(startup_timeout_s), globs, guard)
