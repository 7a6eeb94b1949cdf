"""Prometheus metrics. Label children are cached, so the hot path does a dict
lookup and an increment, never a label resolution.

With `--workers N`, set PROMETHEUS_MULTIPROC_DIR (the CLI does) and /metrics
aggregates every process.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable
from functools import lru_cache

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Time to first token: a human waits on it, so the resolution is in the first seconds.
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 13, 20, 30, 60, 120)
# Distinct (source, tool) label pairs per process; tools past it are counted as "(other)".
# Tool names come from the config and from servers (an MCP server may list thousands).
MAX_TOOL_SERIES = 200

# `api`: chat, responses, embeddings, moderations, models ("" for a request refused before its path was read).
REQUESTS = Counter("toolgate_requests_total", "Requests, rejected ones included (model empty when unknown)", ["api", "model", "status"])
REQUEST_SECONDS = Histogram("toolgate_request_duration_seconds", "Whole request duration", ["api", "model"], buckets=_BUCKETS)
FIRST_TOKEN_SECONDS = Histogram(
    "toolgate_time_to_first_token_seconds", "Streamed requests: from arrival to the first token sent to the client", ["model"], buckets=_TTFT_BUCKETS
)
UPSTREAM_ATTEMPTS = Counter("toolgate_upstream_attempts_total", "Requests sent to upstream hosts, retries included, by answer", ["upstream", "status"])
UPSTREAM_RETRIES = Counter("toolgate_upstream_retries_total", "Attempts that were retries, by why the one before failed", ["upstream", "reason"])
UPSTREAM_BUSY = Counter("toolgate_upstream_busy_total", "Calls refused unsent: every connection to the upstream was in use", ["upstream"])
UPSTREAM_SECONDS = Histogram("toolgate_upstream_latency_seconds", "Time to upstream response headers", ["upstream"], buckets=_BUCKETS)
TOOL_CALLS = Counter("toolgate_tool_calls_total", "Tool calls run by the gateway", ["source", "tool", "outcome"])
TOOL_SECONDS = Histogram("toolgate_tool_duration_seconds", "Tool call duration", ["source", "tool"], buckets=_BUCKETS)
SOURCE_UP = Gauge("toolgate_tool_source_up", "1 when the tool source is ready (every live worker), else 0", ["source"], multiprocess_mode="livemin")
ROUNDS = Histogram("toolgate_rounds", "Tool rounds per request", buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16))
TOKENS = Counter("toolgate_tokens_total", "Tokens reported by upstreams", ["model", "kind"])
CONFIG_GENERATION = Gauge("toolgate_config_generation", "Config generation served: 1 at start, one more per applied reload", multiprocess_mode="liveall")
CONFIG_RELOADS = Counter("toolgate_config_reloads_total", "Config reloads, by outcome (applied or refused)", ["outcome"])
IN_FLIGHT = Gauge("toolgate_requests_in_flight", "Requests being served", multiprocess_mode="livesum")
LOG_LINES_DROPPED = Counter("toolgate_log_lines_dropped_total", "Log lines dropped because the log pipe was not read")
STREAMS = Gauge("toolgate_streams_open", "SSE streams open", multiprocess_mode="livesum")
BUILD_INFO = Gauge("toolgate_build_info", "Always 1: the running version", ["version", "python"], multiprocess_mode="max")


@lru_cache(maxsize=4096)
def _child(metric, *labels: str):
    return metric.labels(*labels)


_tools: set[tuple[str, str]] = set()


def _tool(source: str, tool: str) -> str:
    if (source, tool) in _tools:
        return tool
    if len(_tools) < MAX_TOOL_SERIES:
        _tools.add((source, tool))
        return tool
    return "(other)"


def upstream_attempt(upstream: str, status: str, seconds: float) -> None:
    """One request sent to the host: `status` is its HTTP status, or `error` for no answer."""
    _child(UPSTREAM_ATTEMPTS, upstream, status).inc()
    _child(UPSTREAM_SECONDS, upstream).observe(seconds)


def upstream_retry(upstream: str, reason: str) -> None:
    """The next attempt is a retry; `reason`: the status (429, 502 ...) or the error code of the last one."""
    _child(UPSTREAM_RETRIES, upstream, reason).inc()


def upstream_busy(upstream: str) -> None:
    _child(UPSTREAM_BUSY, upstream).inc()


def tool_call(source: str, tool: str, outcome: str, seconds: float) -> None:
    tool = _tool(source, tool)
    _child(TOOL_CALLS, source, tool, outcome).inc()
    _child(TOOL_SECONDS, source, tool).observe(seconds)


def first_token(model: str, seconds: float) -> None:
    _child(FIRST_TOKEN_SECONDS, model).observe(seconds)


_sources: Callable[[], Iterable[tuple[str, bool]]] | None = None
_shown: set[str] = set()


def watch_sources(status: Callable[[], Iterable[tuple[str, bool]]]) -> None:
    """Where `toolgate_tool_source_up` comes from: (name, ready) of each source, asked when refreshed."""
    global _sources
    _sources = status


def refresh_sources() -> None:
    """Set the up gauge from the sources' status now (at each scrape and readiness check)."""
    if _sources is None:
        return
    now = dict(_sources())
    for name, ready in now.items():
        _child(SOURCE_UP, name).set(1 if ready else 0)
    for gone in _shown - now.keys():
        SOURCE_UP.remove(gone)
        _child.cache_clear()
    _shown.clear()
    _shown.update(now)


def request_done(model: str, status: int, seconds: float, rounds: int | None, usage: dict | None, api: str = "chat") -> None:
    """One request served; `rounds` None for a pass-through (no loop ran)."""
    _child(REQUESTS, api, model, str(status)).inc()
    _child(REQUEST_SECONDS, api, model).observe(seconds)
    if rounds is not None:
        ROUNDS.observe(rounds)
    if usage:
        for kind in ("prompt_tokens", "completion_tokens"):
            value = usage.get(kind)
            if isinstance(value, int):
                _child(TOKENS, model, kind).inc(value)


def rejected(status: int, model: str = "", api: str = "") -> None:
    """A request refused before the loop ran (bad input, auth, limits): counted like the rest."""
    _child(REQUESTS, api, model, str(status)).inc()


_APIS = frozenset({"responses", "embeddings", "moderations", "models"})


def api_of(path: str) -> str:
    """The `api` label of a request path ("" when it is none of the APIs)."""
    path = path.removeprefix("/v1").strip("/")
    if path == "chat/completions":
        return "chat"
    head = path.partition("/")[0]
    return head if head in _APIS else ""


def build_info(version: str) -> None:
    BUILD_INFO.labels(version, platform.python_version()).set(1)


def process_dead(pid: int | None) -> None:
    """A worker is gone: drop its live gauges (in flight, streams, sources up) from the sums."""
    if pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def render() -> tuple[bytes, str]:
    refresh_sources()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
