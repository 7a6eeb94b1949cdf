"""The one interface every tool source implements.

A *tool* is a name, a description, a JSON schema for its parameters and an async
``call(arguments) -> ToolOutput``. A *source* owns a set of tools and their
lifetime (an MCP session, an HTTP base URL, nothing at all for built-ins)::

    class Echo(Tool):
        def __init__(self) -> None:
            super().__init__("echo", "Say it back.", {"type": "object",
                             "properties": {"text": {"type": "string"}}})

        async def call(self, arguments):
            return arguments["text"]

A tool signals a failure the model should read by raising ``ToolError``; any
other exception is treated the same way by the toolbox, but logged as a bug.
Timeouts are the toolbox's job: a tool just awaits.

A long call may say how far it got, without knowing who shows it::

    async def call(self, arguments):
        for step in range(10):
            report_progress(step, 10, "indexing")   # a no-op when nobody listens
            ...

Whoever runs the call listens with ``listening(callback)``; a tool that hands the
reporting to another task (an SDK's callback) takes ``progress_listener()`` first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

# What a tool returns: text, or OpenAI content parts
# ({"type": "text", "text": ...}, {"type": "image_url", "image_url": {...}}).
ToolOutput = str | list[dict[str, Any]]

_NOT_IN_NAMES = re.compile(r"[^A-Za-z0-9_-]")


def tool_name(name: str, fallback: str = "tool", *, trim: bool = False) -> str:
    """`name` as hosts accept a function name: letters, digits, `_` and `-`, at most 64;
    `trim` drops the `_` left at its ends (an OpenAPI path's slashes)."""
    cleaned = _NOT_IN_NAMES.sub("_", name)
    return (cleaned.strip("_") if trim else cleaned)[:64] or fallback


class ToolError(Exception):
    """A failure the model should read (bad input, remote error, not found ...)."""


# progress, total (None: unknown), message (None: none)
Progress = Callable[[float, float | None, str | None], None]
_LISTENER: ContextVar[Progress | None] = ContextVar("toolgate_progress", default=None)


def progress_listener() -> Progress | None:
    """Who hears this call's progress, or None: take it before handing work to another task."""
    return _LISTENER.get()


def report_progress(progress: float, total: float | None = None, message: str | None = None) -> None:
    listener = _LISTENER.get()
    if listener is not None:
        listener(progress, total, message)


@contextmanager
def listening(listener: Progress) -> Iterator[None]:
    """Progress reported inside the block (in this task, and tasks it starts) goes to ``listener``."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


class Tool:
    """Base class for tools; subclasses implement ``call``."""

    # Hints about behaviour, as MCP's tool annotations name them ("readOnlyHint", "destructiveHint",
    # "idempotentHint", "openWorldHint", "title"), only those the tool's author stated; None: none
    # stated. Hints from a server are claims, not guarantees.
    annotations: dict[str, Any] | None = None
    # Whether calls may report progress: the toolbox listens only to those that may.
    reports_progress: bool = False

    def __init__(
        self,
        name: str,
        description: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.parameters: Mapping[str, Any] = parameters or {"type": "object", "properties": {}}
        self.timeout_s = timeout_s  # None: the toolbox default

    async def call(self, arguments: dict[str, Any]) -> ToolOutput:
        raise NotImplementedError

    def renamed(self, name: str) -> "Tool":
        """The same tool under another name (prefixing on clashes)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.name = name
        return clone

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


@dataclass(frozen=True)
class SourceStatus:
    ready: bool
    detail: str = ""


@dataclass
class SourceContext:
    """What the app hands a source when it starts it."""

    http: Any = None  # the process's httpx.AsyncClient for tool traffic
    environ: Mapping[str, str] = field(default_factory=dict)


class ToolSource(Protocol):
    """A named set of tools with a lifetime, started and stopped by the app.

    A source holding credentials (headers, environment values) may also define
    ``secrets(environ=None) -> list[str]``: the values the process's redactor masks
    in logs, errors and tool results, so a server echoing its token never shows it.
    It is optional; callers look it up with ``getattr``.
    """

    name: str
    prefix: bool  # offer tools as "<source>_<tool>"

    async def start(self, ctx: SourceContext) -> None: ...

    async def stop(self) -> None: ...

    def tools(self) -> Sequence[Tool]: ...

    def status(self) -> SourceStatus: ...


class StaticSource:
    """A source whose tools need no lifetime (built-ins, Python functions)."""

    def __init__(self, name: str, tools: Sequence[Tool], *, prefix: bool = False) -> None:
        self.name = name
        self.prefix = prefix
        self._tools = list(tools)

    async def start(self, ctx: SourceContext) -> None:
        return None

    async def stop(self) -> None:
        return None

    def tools(self) -> Sequence[Tool]:
        return self._tools

    def status(self) -> SourceStatus:
        return SourceStatus(True)


class ServerSource:
    """What a source whose tools come from a server (MCP, OpenAPI) keeps: the tools it
    found, its status, and how to name its secrets; the subclass starts and stops it::

        class Weather(ServerSource):
            def __init__(self, settings):
                super().__init__(settings.name, settings.prefix, partial(secret_values, settings))
    """

    def __init__(self, name: str, prefix: bool, secret_values: Callable[[Mapping[str, str]], list[str]]) -> None:
        self.name = name
        self.prefix = prefix
        self._secret_values = secret_values  # environ -> the settings' secrets, expanded
        self._tools: list[Tool] = []
        self._status = SourceStatus(False, "not started")
        self._environ: Mapping[str, str] | None = None  # what start() was given

    def tools(self) -> Sequence[Tool]:
        return self._tools

    def status(self) -> SourceStatus:
        return self._status

    def secrets(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """The values to mask (see ``ToolSource``), for the redaction layer::

            SECRETS.add(*source.secrets())

        Expanded against ``environ``, else what ``start()`` was given, else the process's.
        """
        return self._secret_values(environ or self._environ or os.environ)
