"""The toolbox: which tools a model alias offers, and one round of calls.

    toolbox = Toolbox(sources, max_parallel=8, timeout_s=30.0)
    offer = toolbox.select(("current_time", "mcp_files_*"))   # cached until a source changes
    offer = toolbox.select(("*", "!destructive"))             # leave out by annotation (see hints)
    async for outcome in toolbox.run_round(tool_calls, offer):
        ...          # ToolOutcome in completion order; a progress Note while tools report one

A tool failure is a message for the model, never an exception: unknown tools,
arguments that are not JSON or do not fit the schema, timeouts, crashes (any
exception, even ``CancelledError`` or ``SystemExit`` raised by the tool), odd
return values, a full worker pool all come back as an outcome whose `content`
says what went wrong. Every result passes the secret redactor before the model
reads it.

Names do not depend on who is up: a tool is prefixed with its source's name
when its source is configured so, or when another source has ever offered the
same name in this process, so a server going down renames nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway import metrics, tracing
from gateway.events import ToolOutcomeKind
from gateway.redact import SECRETS
from gateway.tools import hints
from gateway.tools.base import Tool, ToolError, ToolOutput, ToolSource, listening, tool_name
from gateway.tools.progress import Board, Due, Note
from gateway.tools.schema import Prepared, prepare
from gateway.tools.workers import WORKERS, WorkersBusy

log = logging.getLogger("toolgate.tools")

MAX_ARGUMENT_CHARS = 1 << 20
# Larger arguments are checked on a worker thread, inside the tool's timeout:
# some checks are superlinear (uniqueItems compares every pair of items).
INLINE_CHECK_CHARS = 1 << 10
MAX_CLAIMS = 4096  # names remembered per source
SECRET_MARGIN = 4096  # a cut result is redacted this far past the cut: longer than any secret it could hide
MAX_SCHEMA_CACHE = 1024
PROGRESS_INTERVAL_S = 0.25  # a call's progress reaches the client at most this often
BUSY = "the gateway's tool workers are all busy; try again in a moment"

@dataclass(slots=True)
class ToolOutcome:
    call_id: str
    name: str
    arguments: str
    content: str
    outcome: ToolOutcomeKind
    duration_s: float
    cut: bool = False


@dataclass(frozen=True)
class Offer:
    """The tools one alias offers: by name, and as the upstream's `tools` parameter."""

    tools: dict[str, Tool] = field(default_factory=dict)
    schemas: list[dict[str, Any]] = field(default_factory=list)
    checks: dict[str, Prepared] = field(default_factory=dict)  # by name; missing ones are prepared on use


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
        self._checks: dict[str, Prepared] = {}
        self._offers: dict[tuple[str, ...], Offer] = {}
        self._claims: dict[int, tuple[ToolSource, set[str]]] = {}  # id(source) -> every name it ever wanted
        self._prepared: dict[bytes, Prepared] = {}  # by schema content, so a relisted tool costs nothing
        self._said: set[tuple[Any, ...]] = set()  # warnings already logged

    # -- naming and selection -------------------------------------------------

    def all_tools(self) -> dict[str, Tool]:
        """Every tool under the name it is offered as; rebuilt only when a source changed."""
        # Compared by identity while holding the lists, so a new list cannot
        # take a freed one's id and hide a change.
        lists = [source.tools() for source in self.sources]
        if len(lists) != len(self._seen) or any(a is not b for a, b in zip(lists, self._seen)):
            self._rebuild(lists)
            self._seen = lists
        return self._all

    def _rebuild(self, lists: list[Sequence[Tool]]) -> None:
        # A clash is two sources wanting one offered name (a prefixed source's
        # names clash with nobody's bare names). Claims are never given up, so
        # the naming depends on what sources have offered, not on who is up now.
        for source, tools in zip(self.sources, lists):
            claimed = self._claims.setdefault(id(source), (source, set()))[1]
            for tool in tools:
                if len(claimed) < MAX_CLAIMS:
                    claimed.add(_wanted(source, tool))
        holders: dict[str, int] = {}
        for _source, claimed in self._claims.values():
            for name in claimed:
                holders[name] = holders.get(name, 0) + 1
        named: dict[str, Tool] = {}
        owners: dict[str, str] = {}
        renamed: list[str] = []
        for source, tools in zip(self.sources, lists):
            for tool in tools:
                name = _wanted(source, tool)
                if holders.get(name, 0) > 1 and not source.prefix:
                    name = tool_name(f"{source.name}_{tool.name}")
                    if self._once("renamed", source.name, tool.name, name):
                        renamed.append(f"{tool.name!r} of {source.name} as {name!r}")
                if name in named:
                    if self._once("taken", source.name, tool.name, name):
                        log.error("tool name %r is taken; %s's tool %r is left out", name, source.name, tool.name)
                    continue
                named[name] = tool if name == tool.name else tool.renamed(name)
                owners[name] = source.name
        if renamed:  # once per change of the naming, not at every rebuild
            log.warning("tools offered by several sources are prefixed with the source name: %s", ", ".join(renamed))
        self._all, self._owners = named, owners
        self._checks = {name: self._prepare(tool) for name, tool in named.items()}
        self._schemas = {name: self._schema(tool, self._checks[name]) for name, tool in named.items()}
        self._offers = {}

    def owners(self) -> dict[str, str]:
        """Offered tool name -> the name of its source."""
        self.all_tools()
        return self._owners

    def _prepare(self, tool: Tool) -> Prepared:
        """The tool's offered schema and validator, built once per distinct schema."""
        try:
            key = hashlib.blake2b(orjson.dumps(tool.parameters, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()
        except (TypeError, orjson.JSONEncodeError):
            key = None  # not JSON: prepare() says so
        prepared = self._prepared.get(key) if key is not None else None
        if prepared is None:
            prepared = prepare(tool.parameters)
            if key is not None:
                if len(self._prepared) >= MAX_SCHEMA_CACHE:
                    self._prepared.pop(next(iter(self._prepared)))
                self._prepared[key] = prepared
        if prepared.problems and self._once("schema", tool.name, prepared.problems):
            log.warning("parameter schema of tool %r: %s", tool.name, "; ".join(prepared.problems))
        return prepared

    def _schema(self, tool: Tool, prepared: Prepared) -> dict[str, Any]:
        description = str(tool.description or "")
        if len(description) > self.max_description_chars:
            if self._once("description", tool.name):
                log.warning("description of tool %r cut to %d characters", tool.name, self.max_description_chars)
            description = description[: self.max_description_chars]
        function = {"name": tool.name, "description": description, "parameters": prepared.schema}
        return {"type": "function", "function": function}

    def _once(self, *key: Any) -> bool:
        """True the first time ``key`` is seen: for warnings worth saying once."""
        if key in self._said:
            return False
        if len(self._said) >= 10_000:
            self._said.clear()
        self._said.add(key)
        return True

    def select(self, patterns: Sequence[str]) -> Offer:
        tools = self.all_tools()
        key = tuple(patterns)
        offer = self._offers.get(key)
        if offer is None:
            globs, excluded = hints.split(key)
            chosen = {
                n: t for n, t in tools.items() if any(fnmatch.fnmatchcase(n, p) for p in globs) and not any(rule(t) for rule in excluded)
            }
            schemas = [self._schemas[n] for n in chosen]
            offer = self._offers[key] = Offer(chosen, schemas, {n: self._checks[n] for n in chosen})
        return offer

    # -- one round -------------------------------------------------------------

    async def run_round(self, calls: Sequence[dict[str, Any]], offer: Offer) -> AsyncGenerator[ToolOutcome | Note, None]:
        """Run the calls concurrently (bounded); yield each outcome as it finishes, and,
        while they run, the progress of those that report it (coalesced, see ``progress``)."""
        if len(calls) == 1 and not _reports(offer, calls[0]):
            yield await self._run(calls[0], offer, None)
            return
        gate = asyncio.Semaphore(self.max_parallel)
        # Room for every outcome and one progress flag per call: never full (see progress.Board).
        queue: asyncio.Queue[ToolOutcome | Due] = asyncio.Queue(maxsize=2 * len(calls))
        board = Board(queue, PROGRESS_INTERVAL_S)
        tasks = [asyncio.create_task(self._post(call, offer, gate, board, queue)) for call in calls]
        try:
            for _ in range(len(calls)):
                item = await queue.get()
                while isinstance(item, Due):
                    note = board.take(item.call_id)
                    if note is not None:
                        yield note
                    item = await queue.get()
                board.close(item.call_id)
                yield item
        finally:
            board.close_all()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _post(self, call: dict[str, Any], offer: Offer, gate: asyncio.Semaphore, board: Board, queue: asyncio.Queue[ToolOutcome | Due]) -> None:
        name = call["function"]["name"]
        try:
            with listening(board.listener(call["id"], name)):
                outcome = await self._run(call, offer, gate)
        except Exception:  # _run turns every tool failure into an outcome: this is ours
            log.exception("running tool %s failed", name)
            outcome = ToolOutcome(call["id"], name, call["function"]["arguments"], f"Error: {name} could not run.", "error", 0.0)
        queue.put_nowait(outcome)

    async def _run(self, call: dict[str, Any], offer: Offer, gate: asyncio.Semaphore | None) -> ToolOutcome:
        function = call["function"]
        name, raw_args = function["name"], function["arguments"]
        started = time.perf_counter()
        tool = offer.tools.get(name)
        source = self._owners.get(name, "(none)") if tool else "(none)"
        span = tracing.ToolCall(name, call["id"], source, raw_args) if tracing.ON else None
        outcome: ToolOutcomeKind
        content: ToolOutput
        if tool is None:
            available = ", ".join(offer.tools) or "none"
            outcome, content = "unknown_tool", f"Error: there is no tool named {name!r}. Available tools: {available}."
        else:
            prepared = offer.checks.get(name) or self._prepare(tool)
            try:
                outcome, content = await self._call(tool, prepared, raw_args, gate)
            except BaseException:
                # The round was cancelled (the client left, the deadline, shutdown): the call
                # ran, and counts, as cancelled.
                metrics.tool_call(source, name, "cancelled", time.perf_counter() - started)
                if span is not None:
                    span.end("cancelled", "the round was cancelled")
                raise
        text, cut = self._shape(name, content)
        duration = time.perf_counter() - started
        metrics.tool_call(source, name if tool else "(unknown)", outcome, duration)
        if span is not None:
            span.end(outcome, text)
        return ToolOutcome(call["id"], name, raw_args, text, outcome, duration, cut)

    async def _call(self, tool: Tool, prepared: Prepared, raw_args: object, gate: asyncio.Semaphore | None) -> tuple[ToolOutcomeKind, ToolOutput]:
        if not isinstance(raw_args, str):
            return "bad_arguments", f"Error: the arguments for {tool.name} must be a JSON object, sent as a string."
        if len(raw_args) > MAX_ARGUMENT_CHARS:
            return "bad_arguments", f"Error: the arguments for {tool.name} are longer than {MAX_ARGUMENT_CHARS} characters."
        try:
            arguments = orjson.loads(raw_args) if raw_args.strip() else {}
        except orjson.JSONDecodeError as exc:
            return "bad_arguments", f"Error: the arguments for {tool.name} are not valid JSON ({exc}). Send a JSON object."
        if not isinstance(arguments, dict):
            return "bad_arguments", f"Error: the arguments for {tool.name} must be a JSON object."
        timeout = tool.timeout_s or self.timeout_s
        # Each call's timeout starts when it gets a slot, not while it queues.
        async with gate or contextlib.nullcontext():
            return await self._timed(tool, prepared, arguments, len(raw_args), timeout)

    async def _timed(self, tool: Tool, prepared: Prepared, arguments: dict[str, Any], size: int, timeout: float) -> tuple[ToolOutcomeKind, ToolOutput]:
        """Check the arguments and call the tool, within the timeout; whatever it raises is an outcome."""
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                problem = await self._check(prepared, arguments, size)
                if problem:
                    return "bad_arguments", f"Error: the arguments do not fit the parameters of {tool.name}: {problem}"
                return "ok", await tool.call(arguments)
        except TimeoutError:
            if deadline.expired():
                return "timeout", f"Error: {tool.name} did not finish within {timeout:g} s."
            log.warning("tool %s raised TimeoutError", tool.name)
            return "error", f"Error: {tool.name} timed out."
        except ToolError as exc:
            return "error", f"Error: {exc}"
        except WorkersBusy:
            return "error", f"Error: {tool.name} could not run: {BUSY}."
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our round is being cancelled, not just this tool
            log.warning("tool %s raised CancelledError", tool.name)
            return "error", f"Error: tool {tool.name} was cancelled."
        except Exception as exc:  # a bug in a tool must not fail the request
            log.exception("tool %s failed", tool.name)
            return "error", f"Error: {tool.name} failed ({type(exc).__name__})."
        except BaseException as exc:
            if isinstance(exc, GeneratorExit):  # our own coroutine is being closed
                raise
            # SystemExit, KeyboardInterrupt ... from tool code: the process is not exiting.
            log.error("tool %s raised %s", tool.name, type(exc).__name__, exc_info=True)
            return "error", f"Error: {tool.name} failed ({type(exc).__name__})."

    async def _check(self, prepared: Prepared, arguments: dict[str, Any], size: int) -> str:
        if prepared.validator is None:
            return ""
        if size <= INLINE_CHECK_CHARS:
            return prepared.check(arguments)
        return await WORKERS.run(prepared.check, arguments)

    def _shape(self, name: str, content: Any) -> tuple[str, bool]:
        """Redacted text, long text cut with a visible marker; parts that are not text, placeholders."""
        try:
            return self._parts(content)
        except Exception:  # a result that cannot even be turned into text
            log.exception("result of tool %s cannot be shown", name)
            return f"Error: the result of {name} cannot be shown ({type(content).__name__}).", False

    def _parts(self, content: Any) -> tuple[str, bool]:
        if not isinstance(content, list):
            return self._cut(_text(content))
        texts: list[str] = []
        cut_any = False
        for part in content:
            if not isinstance(part, dict):  # a tool breaking the contract must not fail the request
                part = {"type": "text", "text": _text(part)}
            if part.get("type") == "text":
                text, cut = self._cut(_text(part.get("text", "")))
                cut_any |= cut
                texts.append(text)
            else:
                texts.append(_placeholder(part))
        return "\n".join(texts), cut_any

    def _cut(self, text: str) -> tuple[str, bool]:
        """Redacted, and cut past max_result_chars. Only what is shown is redacted (with a
        margin for a secret across the cut): a 100 MB result is not scanned whole on the loop."""
        limit = self.max_result_chars
        if len(text) <= limit:
            return SECRETS(text), False
        shown = SECRETS(text[: limit + SECRET_MARGIN])[:limit]
        return f"{shown}\n[... cut: {len(text) - limit} more characters not shown]", True


def _reports(offer: Offer, call: dict[str, Any]) -> bool:
    tool = offer.tools.get(call["function"]["name"])
    return tool is not None and tool.reports_progress


def _wanted(source: ToolSource, tool: Tool) -> str:
    return tool_name(f"{source.name}_{tool.name}" if source.prefix else tool.name)


def _text(value: Any) -> str:
    """Any value a tool returned, as text for the model."""
    if isinstance(value, str):
        return value
    if value is None:
        return "(no output)"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return str(value)


def _placeholder(part: dict[str, Any]) -> str:
    if part.get("type") == "image_url":
        url = (part.get("image_url") or {}).get("url", "")
        mime = url[5:].split(";")[0] if url.startswith("data:") else "image"
        return f"[{mime} returned by the tool; not shown: the upstream does not take images in tool results]"
    return f"[{part.get('type', 'content')} part not shown]"
