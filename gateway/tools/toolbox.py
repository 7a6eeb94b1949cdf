"""The toolbox: which tools a model alias offers, and one round of calls.

    toolbox = Toolbox(sources, max_parallel=8, timeout_s=30.0)
    offer = toolbox.select(("current_time", "mcp_files_*"))   # cached until a source changes
    async for outcome in toolbox.run_round(tool_calls, offer, tool_images=False):
        ...                                                     # in completion order

A tool failure is a message for the model, never an exception: unknown tools,
arguments that are not JSON or do not fit the schema, timeouts, crashes all
come back as an outcome whose `content` says what went wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from jsonschema import validators
from jsonschema.exceptions import SchemaError

from gateway import metrics
from gateway.tools.base import Tool, ToolError, ToolOutput, ToolSource

log = logging.getLogger("toolgate.tools")

_NAME = re.compile(r"[^A-Za-z0-9_-]")


def _clean_name(name: str) -> str:
    return _NAME.sub("_", name)[:64] or "tool"


@dataclass(slots=True)
class ToolOutcome:
    call_id: str
    name: str
    arguments: str
    content: str | list[dict[str, Any]]
    outcome: str  # ok | error | timeout | unknown_tool | bad_arguments
    duration_s: float
    cut: bool = False


@dataclass(frozen=True)
class Offer:
    """The tools one alias offers: by name, and as the upstream's `tools` parameter."""

    tools: dict[str, Tool] = field(default_factory=dict)
    schemas: list[dict[str, Any]] = field(default_factory=list)


class Toolbox:
    def __init__(
        self,
        sources: Sequence[ToolSource] = (),
        *,
        max_parallel: int = 8,
        timeout_s: float = 30.0,
        max_result_chars: int = 20_000,
        max_description_chars: int = 1024,
    ) -> None:
        self.sources = list(sources)
        self.max_parallel = max(1, max_parallel)
        self.timeout_s = timeout_s
        self.max_result_chars = max_result_chars
        self.max_description_chars = max_description_chars
        self._seen: list[Sequence[Tool]] = []  # each source's tools list, as last built from
        self._all: dict[str, Tool] = {}
        self._owners: dict[str, str] = {}
        self._schemas: dict[str, dict[str, Any]] = {}
        self._offers: dict[tuple[str, ...], Offer] = {}
        self._validators: dict[int, tuple[Tool, Any]] = {}  # id(tool) -> (tool, validator)

    # -- naming and selection -------------------------------------------------

    def all_tools(self) -> dict[str, Tool]:
        """Every tool under the name it is offered as; rebuilt only when a source changed."""
        # Compared by identity while holding the lists, so a new list cannot
        # take a freed one's id and hide a change.
        lists = [source.tools() for source in self.sources]
        if len(lists) != len(self._seen) or any(a is not b for a, b in zip(lists, self._seen)):
            self._rebuild()
            self._seen = lists
        return self._all

    def _rebuild(self) -> None:
        def wanted(source: ToolSource, tool: Tool) -> str:
            return _clean_name(f"{source.name}_{tool.name}" if source.prefix else tool.name)

        # A clash is two sources wanting one offered name (a prefixed source's
        # names clash with nobody's bare names).
        owners: dict[str, list[ToolSource]] = {}
        for source in self.sources:
            for tool in source.tools():
                owners.setdefault(wanted(source, tool), []).append(source)
        named: dict[str, Tool] = {}
        self._owners = {}
        for source in self.sources:
            for tool in source.tools():
                name = wanted(source, tool)
                if len(owners[name]) > 1 and not source.prefix:
                    log.warning("tool %r is offered by several sources; prefixing with the source name", tool.name)
                    name = _clean_name(f"{source.name}_{tool.name}")
                if name in named:
                    log.error("tool name %r is taken; %s's tool %r is left out", name, source.name, tool.name)
                    continue
                named[name] = tool if name == tool.name else tool.renamed(name)
                self._owners[name] = source.name
        self._all = named
        self._schemas = {name: self._schema(tool) for name, tool in named.items()}
        self._offers = {}
        self._validators = {}

    def owners(self) -> dict[str, str]:
        """Offered tool name -> the name of its source."""
        self.all_tools()
        return self._owners

    def _schema(self, tool: Tool) -> dict[str, Any]:
        description = tool.description or ""
        if len(description) > self.max_description_chars:
            log.warning("description of tool %r cut to %d characters", tool.name, self.max_description_chars)
            description = description[: self.max_description_chars]
        function = {"name": tool.name, "description": description, "parameters": dict(tool.parameters)}
        return {"type": "function", "function": function}

    def select(self, patterns: Sequence[str]) -> Offer:
        tools = self.all_tools()
        key = tuple(patterns)
        offer = self._offers.get(key)
        if offer is None:
            chosen = {n: t for n, t in tools.items() if any(fnmatch.fnmatchcase(n, p) for p in key)}
            offer = self._offers[key] = Offer(chosen, [self._schemas[n] for n in chosen])
        return offer

    # -- one round -------------------------------------------------------------

    async def run_round(self, calls: Sequence[dict[str, Any]], offer: Offer, *, tool_images: bool = False) -> AsyncIterator[ToolOutcome]:
        """Run the calls concurrently (bounded); yield each outcome as it finishes."""
        if len(calls) == 1:
            yield await self._run(calls[0], offer, None, tool_images)
            return
        gate = asyncio.Semaphore(self.max_parallel)
        tasks = [asyncio.create_task(self._run(call, offer, gate, tool_images)) for call in calls]
        try:
            for done in asyncio.as_completed(tasks):
                yield await done
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, call: dict[str, Any], offer: Offer, gate: asyncio.Semaphore | None, tool_images: bool) -> ToolOutcome:
        function = call["function"]
        name, raw_args = function["name"], function["arguments"]
        started = time.perf_counter()
        tool = offer.tools.get(name)
        if tool is None:
            available = ", ".join(offer.tools) or "none"
            outcome, content = "unknown_tool", f"Error: there is no tool named {name!r}. Available tools: {available}."
        else:
            outcome, content = await self._call(tool, raw_args, gate)
        text, cut = self._shape(content, tool_images)
        duration = time.perf_counter() - started
        metrics.tool_call(name if tool else "(unknown)", outcome, duration)
        return ToolOutcome(call["id"], name, raw_args, text, outcome, duration, cut)

    async def _call(self, tool: Tool, raw_args: str, gate: asyncio.Semaphore | None) -> tuple[str, ToolOutput]:
        try:
            arguments = orjson.loads(raw_args) if raw_args.strip() else {}
        except orjson.JSONDecodeError as exc:
            return "bad_arguments", f"Error: the arguments for {tool.name} are not valid JSON ({exc}). Send a JSON object."
        if not isinstance(arguments, dict):
            return "bad_arguments", f"Error: the arguments for {tool.name} must be a JSON object."
        problem = self._check(tool, arguments)
        if problem:
            return "bad_arguments", f"Error: the arguments do not fit the parameters of {tool.name}: {problem}"
        timeout = tool.timeout_s or self.timeout_s
        # Each call's timeout starts when it gets a slot, not while it queues.
        async with gate or contextlib.nullcontext():
            return await self._timed(tool, arguments, timeout)

    async def _timed(self, tool: Tool, arguments: dict[str, Any], timeout: float) -> tuple[str, ToolOutput]:
        try:
            async with asyncio.timeout(timeout):
                return "ok", await tool.call(arguments)
        except TimeoutError:
            return "timeout", f"Error: {tool.name} did not finish within {timeout:g} s."
        except ToolError as exc:
            return "error", f"Error: {exc}"
        except Exception as exc:  # a bug in a tool must not fail the request
            log.exception("tool %s failed", tool.name)
            return "error", f"Error: {tool.name} failed ({type(exc).__name__})."

    def _check(self, tool: Tool, arguments: dict[str, Any]) -> str:
        cached = self._validators.get(id(tool))
        if cached is not None and cached[0] is tool:  # holding the tool keeps its id unique
            validator = cached[1]
        else:
            try:
                cls = validators.validator_for(tool.parameters)
                cls.check_schema(tool.parameters)
                validator = cls(tool.parameters)
            except SchemaError:
                validator = False  # a source's broken schema: don't block its calls
            self._validators[id(tool)] = (tool, validator)
        if validator is False:
            return ""
        error = next(iter(validator.iter_errors(arguments)), None)
        if error is None:
            return ""
        where = "/".join(str(p) for p in error.absolute_path)
        return f"{where + ': ' if where else ''}{error.message}"

    def _shape(self, content: ToolOutput, tool_images: bool) -> tuple[str | list[dict[str, Any]], bool]:
        """Cut long text with a visible marker; images become parts or placeholders."""
        if isinstance(content, str):
            return self._cut(content)
        if not isinstance(content, list):
            return self._cut(str(content))
        parts: list[dict[str, Any]] = []
        cut_any = False
        for part in content:
            if not isinstance(part, dict):  # a tool breaking the contract must not fail the request
                part = {"type": "text", "text": str(part)}
            if part.get("type") == "text":
                text, cut = self._cut(part.get("text", ""))
                cut_any |= cut
                parts.append({"type": "text", "text": text})
            elif part.get("type") == "image_url" and tool_images:
                parts.append(part)
            else:
                parts.append({"type": "text", "text": _placeholder(part)})
        if all(p["type"] == "text" for p in parts):
            return "\n".join(p["text"] for p in parts), cut_any
        return parts, cut_any

    def _cut(self, text: str) -> tuple[str, bool]:
        limit = self.max_result_chars
        if len(text) <= limit:
            return text, False
        return f"{text[:limit]}\n[... cut: {len(text) - limit} more characters not shown]", True


def _placeholder(part: dict[str, Any]) -> str:
    if part.get("type") == "image_url":
        url = (part.get("image_url") or {}).get("url", "")
        mime = url[5:].split(";")[0] if url.startswith("data:") else "image"
        return f"[{mime} returned by the tool; not shown: the upstream does not take images in tool results]"
    return f"[{part.get('type', 'content')} part not shown]"
