"""Prometheus metrics. Label children are cached, so the hot path does a dict
lookup and an increment, never a label resolution.

With `--workers N`, set PROMETHEUS_MULTIPROC_DIR (the CLI does) and /metrics
aggregates every process.
"""

from __future__ import annotations

import os
from functools import lru_cache

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# `api`: chat, responses, embeddings, moderations, models ("" for a request refused before its path was read).
REQUESTS = Counter("toolgate_requests_total", "Requests, rejected ones included (model empty when unknown)", ["api", "model", "status"])
REQUEST_SECONDS = Histogram("toolgate_request_duration_seconds", "Whole request duration", ["api", "model"], buckets=_BUCKETS)
UPSTREAM_CALLS = Counter("toolgate_upstream_calls_total", "Calls to upstream hosts", ["upstream", "status"])
UPSTREAM_RETRIES = Counter("toolgate_upstream_retries_total", "Upstream calls sent again (within the retry budget)", ["upstream"])
UPSTREAM_SECONDS = Histogram("toolgate_upstream_latency_seconds", "Time to upstream response headers", ["upstream"], buckets=_BUCKETS)
TOOL_CALLS = Counter("toolgate_tool_calls_total", "Tool calls", ["tool", "outcome"])
TOOL_SECONDS = Histogram("toolgate_tool_duration_seconds", "Tool call duration", ["tool"], buckets=_BUCKETS)
ROUNDS = Histogram("toolgate_rounds", "Tool rounds per request", buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16))
TOKENS = Counter("toolgate_tokens_total", "Tokens reported by upstreams", ["model", "kind"])
IN_FLIGHT = Gauge("toolgate_requests_in_flight", "Requests being served", multiprocess_mode="livesum")
LOG_LINES_DROPPED = Counter("toolgate_log_lines_dropped_total", "Log lines dropped because the log pipe was not read")
STREAMS = Gauge("toolgate_streams_open", "SSE streams open", multiprocess_mode="livesum")


@lru_cache(maxsize=4096)
def _child(metric, *labels: str):
    return metric.labels(*labels)


def upstream_call(upstream: str, status: str, seconds: float) -> None:
    _child(UPSTREAM_CALLS, upstream, status).inc()
    _child(UPSTREAM_SECONDS, upstream).observe(seconds)


def upstream_retry(upstream: str) -> None:
    _child(UPSTREAM_RETRIES, upstream).inc()


def tool_call(tool: str, outcome: str, seconds: float) -> None:
    _child(TOOL_CALLS, tool, outcome).inc()
    _child(TOOL_SECONDS, tool).observe(seconds)


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


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
