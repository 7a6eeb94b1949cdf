"""Config reload without a restart: on SIGHUP, or `toolgate reload`.

    reloader = Reloader(runtime, context)    # the app's lifespan: one per app, closed at shutdown
    reloader.own(runtime.toolbox.sources)    # sources it stops at shutdown (every later one joins)
    await reloader.reload()                  # what SIGHUP runs; the outcome is /readyz's last_reload

A reload reads and validates the file on a thread of its own, as `toolgate check` would;
a config with problems is refused, each problem logged as one line, and the running one
keeps serving. A valid one becomes the next generation (`routes.Generation`):

- settings read once at start (the listen address, uvicorn's limits, the response store,
  the tool threads, the gateway's API keys) keep their running value, with a "needs a
  restart" warning each;
- tool sources are diffed by spec (`registry.SourceSpec`): a source whose spec is unchanged
  is kept (an MCP server: same process, same session); new and changed ones are created
  from their spec and start before the switch; those left behind stop once no request
  that began on an older generation is running (bounded by that config's request deadline);
- the new secrets join the redactor before anything starts;
- requests that began on the old generation finish on it; the next request sees the new one.

With `--workers N`, the supervisor forwards SIGHUP to every worker (`server.serve_workers`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import os
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from gateway import drain, metrics
from gateway.config import Settings, load_config
from gateway.errors import ConfigError
from gateway.redact import SECRETS
from gateway.threads import Busy, Threads
from gateway.tools import registry
from gateway.tools.base import SourceContext, ToolSource
from gateway.tools.registry import SourceSpec
from gateway.tools.toolbox import Toolbox

if TYPE_CHECKING:
    from gateway.routes import Generation, Runtime

log = logging.getLogger("toolgate")

READ_TIMEOUT_S = 30.0  # reading and validating the file
START_TIMEOUT_S = 30.0  # new sources that are not up by then keep starting in the background
STOP_TIMEOUT_S = 30.0  # one retired source's stop
RETIRE_MARGIN_S = 5.0  # past the old config's request deadline, its sources stop regardless

# Settings read once at start (by uvicorn, the server, the store, the tool pool): a reload
# keeps their running value and says each one needs a restart.
RESTART_ONLY: dict[str, tuple[str, ...]] = {
    "server": ("host", "port", "grace_s", "max_header_bytes", "max_headers", "header_timeout_s", "keep_alive_s", "send_timeout_s"),
    "loop": ("tool_threads",),
    "store": ("url", "ttl_s", "max_bytes", "timeout_s"),
    # The remote MCP pool of /v1/responses is built once, from these.
    "responses": ("mcp_server_urls", "mcp_network_allow", "mcp_connect_timeout_s", "mcp_sessions", "mcp_idle_s"),
}

# One at a time, one queued: a reload that finds the thread still busy (a file read that
# hangs) and another waiting is refused rather than queued behind them.
_THREADS = Threads("toolgate-reload", threads=1, queued=1)


@dataclass
class Plan:
    """The next config, ready to serve, and what changes with it."""

    settings: Settings
    sources: list[ToolSource] = field(default_factory=list)  # one per `settings.sources` spec, in order
    start: list[ToolSource] = field(default_factory=list)
    stop: list[ToolSource] = field(default_factory=list)
    kept: list[ToolSource] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)  # keys that changed but need a restart
    warnings: list[str] = field(default_factory=list)


def plan(old: Settings, demo: bool = False, running: Sequence[ToolSource] = ()) -> Plan:
    """Read `old.path` again, validated (ConfigError lists its problems), and diff it with `old`,
    whose sources are `running` (one per `old.sources` spec, in order).

    Blocking (file I/O, imports of Python tool modules, schema checks): run it on a thread.
    """
    new = load_config(old.path, old.environ)
    result = Plan(new, warnings=list(new.warnings))
    sections = {}
    for section, keys in RESTART_ONLY.items():
        current, wanted = getattr(old, section), getattr(new, section)
        changed = [key for key in keys if getattr(current, key) != getattr(wanted, key)]
        result.restart += [f"{section}.{key}" for key in changed]
        sections[section] = replace(wanted, **{key: getattr(current, key) for key in changed})
    api_keys = new.api_keys
    if [k.value for k in api_keys] != [k.value for k in old.api_keys]:
        result.restart.append("auth.api_keys_env")
        api_keys = old.api_keys
    result.warnings += [f"{old.path}: {key}: changed, and needs a restart to take effect; the running value stays" for key in result.restart]
    result.sources = _diff_sources(list(zip(old.sources, running)), new.sources, result)
    result.settings = replace(
        new, **sections, api_keys=api_keys, upstreams=_upstreams(old, new, demo), warnings=tuple(result.warnings)
    )
    SECRETS.add(*result.settings.secrets())  # before anything of the new config starts or logs
    return result


def _diff_sources(old: Sequence[tuple[SourceSpec, ToolSource]], new: Sequence[SourceSpec], result: Plan) -> list[ToolSource]:
    """A source per `new` spec: the running one where its spec is unchanged, else a new one."""
    running = {(spec.kind, spec.name): (spec, source) for spec, source in old}
    merged: list[ToolSource] = []
    for spec in new:
        twin = running.pop((spec.kind, spec.name), None)
        if twin is not None and twin[0] == spec:
            result.kept.append(twin[1])
            merged.append(twin[1])
        else:
            source = registry.create(spec)
            result.start.append(source)
            merged.append(source)
    kept = {id(s) for s in result.kept}
    result.stop = [source for _, source in old if id(source) not in kept]
    return merged


def _upstreams(old: Settings, new: Settings, demo: bool) -> dict[str, Any]:
    """`new.upstreams`, unchanged ones as the running objects (their connection slots and
    retry budget carry on); with `--demo`, the default upstream stays the demo model."""
    upstreams = dict(new.upstreams)
    for name, upstream in new.upstreams.items():
        running = old.upstreams.get(name)
        if running is not None and replace(upstream, api_key=running.api_key) == running and upstream.api_key.value == running.api_key.value:
            upstreams[name] = running
    if demo:
        upstreams[new.server.default_upstream] = old.upstreams[old.server.default_upstream]
    return upstreams


def toolbox_for(settings: Settings, sources: Sequence[ToolSource] | None = None) -> Toolbox:
    """The toolbox over `sources` (default: created from `settings.sources`), with the config's bounds."""
    loop = settings.loop
    return Toolbox(
        [registry.create(spec) for spec in settings.sources] if sources is None else sources,
        max_parallel=loop.max_parallel_tools,
        timeout_s=loop.tool_timeout_s,
        max_result_chars=loop.max_tool_result_chars,
        max_description_chars=loop.max_description_chars,
    )


def _prepared_toolbox(settings: Settings, sources: Sequence[ToolSource]) -> Toolbox:
    """`toolbox_for(settings, sources)` with its names, schemas and every alias's offer built (on a thread)."""
    toolbox = toolbox_for(settings, sources)
    for alias in settings.models.values():
        toolbox.select(alias.tools)
    return toolbox


class Reloader:
    """Reloads one app's config; owns every tool source the app started, and stops them."""

    def __init__(self, runtime: Runtime, context: SourceContext) -> None:
        self.runtime = runtime
        self.context = context
        self._running: dict[int, ToolSource] = {}  # started and not stopped yet, in start order
        self._draining: list[Generation] = []  # retired, with requests still on them
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._retiring: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        metrics.CONFIG_GENERATION.set(runtime.current.number)

    def own(self, sources: Iterable[ToolSource]) -> None:
        """Sources to stop at shutdown; registered before they start, so a start cancelled
        midway is still stopped."""
        for source in sources:
            self._running[id(source)] = source

    def soon(self) -> None:
        """Reload in the background; asked again while reloading, once more after it."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.ensure_future(self._reload_while_asked())

    async def _reload_while_asked(self) -> None:
        for _ in range(2):  # this request, and one more if any came meanwhile
            self._again = False
            await self.reload()
            if not self._again:
                return

    async def reload(self) -> dict[str, Any]:
        """Read the config file again and serve it if valid; returns the outcome, as /readyz shows it."""
        async with self._lock:
            runtime = self.runtime
            if runtime.starting is not None:
                await asyncio.wait({runtime.starting})  # the first sources are up or have given up
            old = runtime.current
            path = old.settings.path
            try:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    next_ = await _THREADS.run(plan, old.settings, runtime.demo, old.toolbox.sources)
            except ConfigError as exc:
                return self._refused(old, exc.problems)
            except TimeoutError:
                return self._refused(old, [f"{path}: reading the config took longer than {READ_TIMEOUT_S:g} s"])
            except Busy:
                return self._refused(old, [f"{path}: an earlier reload is still reading the config"])
            except Exception as exc:
                log.exception("config reload failed")
                return self._refused(old, [f"{path}: the reload failed ({type(exc).__name__})"])
            if drain.draining():
                return self._refused(old, [f"{path}: the gateway is shutting down"])
            for line in next_.warnings:
                log.warning("config: %s", line)
            try:
                await self._apply(next_)
            except Exception as exc:  # nothing swapped: what started for it stops again
                log.exception("config reload failed")
                await asyncio.gather(*(self._stop(source) for source in next_.start))
                return self._refused(old, [f"{path}: the reload failed ({type(exc).__name__})"])
            outcome = {"outcome": "applied", "at": round(time.time(), 3), **({"restart_needed": next_.restart} if next_.restart else {})}
            runtime.last_reload = outcome
            metrics.CONFIG_GENERATION.set(runtime.current.number)
            metrics.CONFIG_RELOADS.labels("applied").inc()
            log.info("config reloaded from %s: generation %d; %s", path, runtime.current.number, _summary(old.settings, next_))
            return outcome

    async def _apply(self, next_: Plan) -> None:
        """Start what is new, then serve the next generation; what it left behind stops later."""
        runtime = self.runtime
        self.own(next_.start)
        await self._start(next_.start)
        async with asyncio.timeout(READ_TIMEOUT_S):
            toolbox = await _THREADS.run(_prepared_toolbox, next_.settings, next_.sources)
        retired = runtime.swap(next_.settings, toolbox)
        for name in set(runtime.reachability) - set(next_.settings.upstreams):
            del runtime.reachability[name]
        self._retire(retired, next_.stop)

    def _refused(self, old: Generation, problems: list[str]) -> dict[str, Any]:
        log.error(
            "config reload refused: %d problem(s); generation %d keeps serving", len(problems), old.number
        )
        for line in problems:
            log.error("config reload refused: %s", line)
        outcome = {"outcome": "refused", "at": round(time.time(), 3), "problems": len(problems)}
        self.runtime.last_reload = outcome
        metrics.CONFIG_RELOADS.labels("refused").inc()
        return outcome

    async def _start(self, sources: Sequence[ToolSource]) -> None:
        """Start `sources` concurrently; those still starting after START_TIMEOUT_S go on in the background."""
        if not sources:
            return
        tasks = {asyncio.ensure_future(source.start(self.context)): source for source in sources}
        for task, source in tasks.items():
            task.add_done_callback(functools.partial(_log_start, source))
        await asyncio.wait(tasks, timeout=START_TIMEOUT_S)

    def _retire(self, generation: Generation, sources: list[ToolSource]) -> None:
        if not generation.idle.is_set():
            self._draining.append(generation)
        self._draining = [g for g in self._draining if not g.idle.is_set()]
        if sources:
            bound = generation.settings.server.request_timeout_s + RETIRE_MARGIN_S
            task = asyncio.ensure_future(self._stop_when_unused(sources, bound))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _stop_when_unused(self, sources: list[ToolSource], bound: float) -> None:
        """Stop `sources` once every older generation's requests are done (they may call them)."""
        draining = [g for g in self._draining if not g.idle.is_set()]
        if draining:
            unused = asyncio.ensure_future(_all_idle(draining))
            closing = asyncio.ensure_future(self._closing.wait())
            try:
                await asyncio.wait({unused, closing}, timeout=bound, return_when=asyncio.FIRST_COMPLETED)
            finally:
                unused.cancel()
                closing.cancel()
            left = sum(g.users for g in draining)
            if left and not self._closing.is_set():
                log.warning("%d request(s) still on an old config after %g s; stopping its tool sources anyway", left, bound)
        await asyncio.gather(*(self._stop(source) for source in sources))

    async def _stop(self, source: ToolSource) -> None:
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await source.stop()
        except TimeoutError:
            log.warning("tool source %s did not stop within %g s", source.name, STOP_TIMEOUT_S)
        except Exception as exc:
            log.error("tool source %s failed to stop: %s", source.name, type(exc).__name__)
        self._running.pop(id(source), None)

    async def close(self) -> None:
        """Stop every source still running, the current config's and retiring ones, newest first."""
        self._closing.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        for source in reversed(list(self._running.values())):
            await self._stop(source)


async def _all_idle(generations: Sequence[Generation]) -> None:
    for generation in generations:
        await generation.idle.wait()


def _log_start(source: ToolSource, task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("tool source %s failed to start: %s", source.name, type(task.exception()).__name__)


def _summary(old: Settings, next_: Plan) -> str:
    new = next_.settings
    models = {
        "added": sorted(set(new.models) - set(old.models)),
        "removed": sorted(set(old.models) - set(new.models)),
        "changed": sorted(n for n in set(new.models) & set(old.models) if new.models[n] != old.models[n]),
    }
    parts = [f"models {what}: {', '.join(names)}" for what, names in models.items() if names]
    for what, sources in (("started", next_.start), ("stopping", next_.stop), ("kept", next_.kept)):
        if sources:
            parts.append(f"tool sources {what}: {', '.join(s.name for s in sources)}")
    return "; ".join(parts) or "nothing changed"


# -- signals: process-wide, like the signal itself --------------------------------------------

_reloaders: set[Reloader] = set()
_asked = False  # SIGHUP came before any app was up: the first to register reloads


def reload_all() -> None:
    """Reload every app of this process (the server's SIGHUP handler calls it on the event loop)."""
    global _asked
    if not _reloaders:
        _asked = True
        return
    for reloader in list(_reloaders):
        reloader.soon()


def register(reloader: Reloader) -> None:
    global _asked
    _reloaders.add(reloader)
    if _asked:
        _asked = False
        reloader.soon()


def unregister(reloader: Reloader) -> None:
    _reloaders.discard(reloader)


# -- `toolgate reload`: finding the running gateway --------------------------------------------

PID_FILE_ENV = "TOOLGATE_PID_FILE"


class NotFound(Exception):
    """No running gateway where the pid file or `--pid` says."""


def write_pid_file(path: str) -> None:
    """Write this process's id to `path` (atomically); removed at exit if it still names us."""
    pid = os.getpid()
    temporary = f"{path}.{pid}.tmp"
    with open(temporary, "w") as f:
        f.write(f"{pid}\n")
    os.replace(temporary, path)

    def remove() -> None:
        with contextlib.suppress(OSError):
            with open(path) as f:
                if f.read().strip() == str(pid):
                    os.unlink(path)

    atexit.register(remove)


def send_reload(*, pid_file: str | None = None, pid: int | None = None) -> int:
    """SIGHUP the gateway named by `pid` or `pid_file`; returns its pid. NotFound says why not."""
    if pid is None:
        if not pid_file:
            raise NotFound(f"say which gateway: --pid-file PATH (as given to `toolgate serve`), --pid N, or set {PID_FILE_ENV}")
        try:
            with open(pid_file) as f:
                text = f.read().strip()
        except OSError as exc:
            raise NotFound(f"{pid_file}: cannot read the pid file ({exc.strerror or type(exc).__name__})") from None
        if not text.isdigit():
            raise NotFound(f"{pid_file}: expected a process id, got {text[:40]!r}")
        pid = int(text)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read()
    except FileNotFoundError:
        raise NotFound(f"no process {pid} is running (a stale pid file?)") from None
    except OSError:
        command = b"toolgate"  # no /proc to ask: trust the caller
    if b"toolgate" not in command and b"gateway" not in command:
        raise NotFound(f"process {pid} is not a toolgate gateway (a stale pid file?)")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise NotFound(f"no process {pid} is running (a stale pid file?)") from None
    except PermissionError:
        raise NotFound(f"not allowed to signal process {pid} (run as the gateway's user)") from None
    return pid
