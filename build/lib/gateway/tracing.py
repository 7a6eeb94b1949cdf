"""OpenTelemetry traces, off unless the standard ``OTEL_*`` variables ask for them.

    tracing.setup(os.environ)      # once per process: on only when OTEL_* says so
    if tracing.ON: ...             # every hook is guarded, so tracing off costs a global read

One request is one tree: a server span (``POST /v1/chat/completions``), under it a
``chat {model}`` client span per upstream round (the GenAI conventions; retries are
events of the round, which covers them all) and an ``execute_tool {name}`` span per
tool call. A client's W3C ``traceparent`` is the parent of the server span; the
round's context goes to the upstream, and a tool call's to HTTP MCP and OpenAPI
servers, as ``traceparent`` headers. Message contents, tool arguments and results
are recorded only with ``log_content = true``, and pass the secret redactor.

The SDK and the OTLP/HTTP exporter are the optional extra ``toolgate[otel]``; they
are imported only when tracing is on. The API alone (a dependency of the MCP SDK)
is all the hooks need. The provider is toolgate's own, not the process's global one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.redact import SECRETS

log = logging.getLogger("toolgate")

ON = False  # read by every hook before it does anything
CONTENT = False  # record message contents (`server.log_content`)
MAX_CONTENT_CHARS = 16_384  # per attribute: a span is not a transcript store

_tracer: Any = None
_provider: Any = None

# gen_ai.provider.name by host type: the GenAI conventions' names where one applies.
PROVIDERS = {"openai": "openai", "azure": "azure.ai.openai", "ollama": "ollama", "openwebui": "openwebui"}


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces: an OTLP endpoint, or an exporter other than `none`."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip() for e in environ.get("OTEL_TRACES_EXPORTER", "").lower().split(",") if e.strip()}
    if exporters:
        return exporters != {"none"}
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def setup(environ: Mapping[str, str], *, exporter: Any = None, content: bool = False) -> bool:
    """Turn tracing on when `environ` asks (or with `exporter`, an SDK SpanExporter, in tests).

    Idempotent: a process keeps the provider it made first. Returns whether tracing is on.
    """
    global ON, CONTENT, _tracer, _provider
    CONTENT = content
    if _provider is not None and exporter is None:
        return ON
    if exporter is None and not wanted(environ):
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
    except ImportError:
        log.warning("OTEL_* asks for traces, but the OpenTelemetry SDK is not installed: pip install 'toolgate[otel]'")
        return False
    from gateway import __version__

    if exporter is not None:
        processors = [SimpleSpanProcessor(exporter)]  # tests: every span is handed over as it ends
    else:
        names = {e.strip() for e in environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",") if e.strip()} - {"none"}
        made = [_exporter(name, environ, ConsoleSpanExporter) for name in sorted(names)]
        # Exported by the SDK's thread, in batches: never on the event loop.
        processors = [BatchSpanProcessor(e) for e in made if e is not None]
        if not processors:
            return False  # each exporter said why
    attributes = {"service.version": __version__}
    if not environ.get("OTEL_SERVICE_NAME") and "service.name=" not in environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = "toolgate"
    # Not the process's global provider: the MCP SDK traces through the API too, and its
    # background pings would be a trace each. Unrecorded, its spans pass ours on.
    provider = TracerProvider(resource=Resource.create(attributes))
    for processor in processors:
        provider.add_span_processor(processor)
    if _provider is not None:
        _provider.shutdown()
    _provider = provider
    _tracer = provider.get_tracer("toolgate", __version__)
    ON = True
    return True


def _exporter(name: str, environ: Mapping[str, str], console: Any) -> Any:
    if name == "console":
        return console()
    if name != "otlp":
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console or none); ignored", name)
        return None
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    if protocol != "http/protobuf":
        log.warning("OTLP protocol %s is not supported: traces go over http/protobuf", protocol)
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning("the OTLP/HTTP exporter is not installed: pip install 'toolgate[otel]'")
        return None
    return OTLPSpanExporter()  # endpoint, headers, timeout and compression from OTEL_EXPORTER_OTLP_*


def shutdown() -> None:
    """Export what is pending and turn tracing off (tests; the SDK also does it at exit)."""
    global ON, _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    ON, _tracer, _provider = False, None, None


# -- helpers ------------------------------------------------------------------------------


def _epoch_ns(perf_started: float) -> int:
    return time.time_ns() - int((time.perf_counter() - perf_started) * 1e9)


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return SECRETS(text)[:MAX_CONTENT_CHARS]  # redacted first: a cut must not leave half a secret


@lru_cache(maxsize=64)
def _where(url: str) -> tuple[str, int]:
    """Host and port of an upstream URL: never its user, password, path or query."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.hostname or "", port or (443 if parts.scheme == "https" else 80)


def _parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    """An OpenAI chat message's content as the GenAI conventions' message parts."""
    content = message.get("content")
    if message.get("role") == "tool":
        return [{"type": "tool_call_response", "id": message.get("tool_call_id"), "response": content}]
    parts: list[dict[str, Any]] = []
    if isinstance(content, str) and content:
        parts.append({"type": "text", "content": content})
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append({"type": "text", "content": part["text"]})
            elif isinstance(part, dict):
                parts.append({"type": str(part.get("type", "unknown"))})  # images, files: named, not copied
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        parts.append({"type": "tool_call", "id": call.get("id"), "name": function.get("name"), "arguments": function.get("arguments")})
    return parts


def _messages(messages: Any) -> str:
    """`gen_ai.input.messages`: the conventions' JSON (role and parts per message), redacted and cut."""
    shaped = [{"role": m.get("role"), "parts": _parts(m)} for m in messages or () if isinstance(m, dict)]
    return _text(shaped)


def _outputs(body: dict[str, Any]) -> str:
    """`gen_ai.output.messages` of a whole reply: one per choice, with its finish reason."""
    shaped = [
        {"role": "assistant", "parts": _parts(c.get("message") or {}), "finish_reason": c.get("finish_reason")}
        for c in body.get("choices") or ()
        if isinstance(c, dict)
    ]
    return _text(shaped)


def _parent(scope: dict) -> Any:
    """The client's W3C context (traceparent, tracestate), or None."""
    carrier = {}
    for name, value in scope.get("headers", ()):
        if name in (b"traceparent", b"tracestate"):
            carrier[name.decode()] = value.decode("latin-1")
    if not carrier:
        return None
    from opentelemetry.propagate import extract

    return extract(carrier)


def inject(headers: dict[str, str], span: Any = None) -> None:
    """Add `traceparent` (and `tracestate`) for `span`, or for the current span, to `headers`."""
    from opentelemetry import trace
    from opentelemetry.propagate import inject as _inject

    _inject(headers, context=trace.set_span_in_context(span) if span is not None else None)


async def httpx_hook(request: Any) -> None:
    """An httpx `request` event hook: the current span's context on an outgoing tool request."""
    if ON:
        carrier: dict[str, str] = {}
        inject(carrier)
        request.headers.update(carrier)


# -- the server span ----------------------------------------------------------------------


def _server_span(scope: dict, started: float, **attributes: Any) -> Any:
    from opentelemetry import trace

    method, route = scope.get("method", "POST"), scope.get("path", "")
    return _tracer.start_span(
        f"{method} {route}",
        context=_parent(scope),
        kind=trace.SpanKind.SERVER,
        start_time=_epoch_ns(started),
        attributes={
            "http.request.method": method,
            "http.route": route,
            "url.path": route,
            "client.address": (scope.get("client") or ("",))[0] or "",
            "toolgate.request_id": scope.get("request_id", ""),
            **attributes,
        },
    )


class Request:
    """The server span of one request, current while the loop runs (`end` detaches it)."""

    __slots__ = ("span", "token")

    def __init__(self, scope: dict, started: float, model: str) -> None:
        from opentelemetry import context, trace

        self.span = _server_span(scope, started, **{"gen_ai.request.model": model})
        self.token = context.attach(trace.set_span_in_context(self.span))

    def end(self, outcome: Any, secrets: tuple[str, ...] = ()) -> None:
        """`secrets`: this request's own (a forwarded client key), masked like the config's."""
        from opentelemetry import context, trace

        context.detach(self.token)
        span = self.span
        final = outcome.final
        span.set_attribute("http.response.status_code", outcome.status)
        span.set_attribute("toolgate.ended", outcome.ended)
        if final is not None:
            span.set_attribute("toolgate.rounds", final.rounds)
            span.set_attribute("toolgate.tool_calls", final.tool_calls)
        if outcome.status >= 500:
            span.set_attribute("error.type", str(outcome.status))
            span.set_status(trace.StatusCode.ERROR, SECRETS.scrub(str(outcome.error or ""), *secrets)[:300])
        span.end()


def rejected(scope: dict, started: float, status: int, error: BaseException, model: str = "") -> None:
    """A request refused before the loop ran: a server span that begins and ends at once."""
    from opentelemetry import trace

    span = _server_span(
        scope,
        started,
        **{"http.response.status_code": status, "error.type": getattr(error, "code", None) or type(error).__name__},
        **({"gen_ai.request.model": model} if model else {}),
    )
    if status >= 500:
        span.set_status(trace.StatusCode.ERROR, SECRETS(str(error))[:300])
    span.end()


# -- a round: one call to the upstream, retries included ----------------------------------


class Chat:
    """The `chat {model}` span of one upstream round (not current: it may live in a generator)."""

    __slots__ = ("span", "seen")

    def __init__(self, upstream: Any, payload: dict[str, Any]) -> None:
        from opentelemetry import trace

        model = payload.get("model", "")
        where = _where(upstream.url)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": PROVIDERS.get(upstream.type, upstream.type),
            "gen_ai.request.model": model,
            "server.address": where[0],
            "server.port": where[1],
            "toolgate.upstream": upstream.name,
        }
        for param, name in (("temperature", "gen_ai.request.temperature"), ("top_p", "gen_ai.request.top_p")):
            value = payload.get(param)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                attributes[name] = value
        tokens = payload.get("max_completion_tokens") or payload.get("max_tokens")
        if isinstance(tokens, int):
            attributes["gen_ai.request.max_tokens"] = tokens
        if CONTENT:
            attributes["gen_ai.input.messages"] = _messages(payload.get("messages"))
        self.span = _tracer.start_span(f"chat {model}", kind=trace.SpanKind.CLIENT, attributes=attributes)
        self.seen: set[str] = set()

    def headers(self, headers: dict[str, str]) -> dict[str, str]:
        headers = dict(headers)
        inject(headers, self.span)
        return headers

    def retry(self, attempt: int, reason: str) -> None:
        """The round sends attempt number `attempt` (2 for the first retry) because of `reason`."""
        self.span.add_event("retry", {"toolgate.attempt": attempt, "toolgate.retry.reason": reason})

    def _response(self, body: Any) -> None:
        if not isinstance(body, dict):
            return
        span, seen = self.span, self.seen
        for key, name in (("id", "gen_ai.response.id"), ("model", "gen_ai.response.model")):
            value = body.get(key)
            if isinstance(value, str) and value and key not in seen:
                seen.add(key)
                span.set_attribute(name, value)
        usage = body.get("usage")
        if isinstance(usage, dict):
            for key, name in (("prompt_tokens", "gen_ai.usage.input_tokens"), ("completion_tokens", "gen_ai.usage.output_tokens")):
                if isinstance(usage.get(key), int):
                    span.set_attribute(name, usage[key])
        choices = body.get("choices")
        if isinstance(choices, list):
            reasons = [c["finish_reason"] for c in choices if isinstance(c, dict) and isinstance(c.get("finish_reason"), str)]
            if reasons:
                span.set_attribute("gen_ai.response.finish_reasons", reasons)

    def chunks(self, batch: list[Any]) -> None:
        for chunk in batch:
            self._response(chunk)

    def end(self, body: Any = None, error: BaseException | None = None) -> None:
        from opentelemetry import trace

        span = self.span
        if body is not None:
            self._response(body)
            if CONTENT and isinstance(body, dict):
                span.set_attribute("gen_ai.output.messages", _outputs(body))
        if error is not None:
            if isinstance(error, (GeneratorExit, asyncio.CancelledError)):
                # The request ended first (the client left, a deadline, a shutdown).
                span.set_attribute("error.type", "cancelled")
                span.set_status(trace.StatusCode.ERROR, "the round was cancelled")
            else:
                span.set_attribute("error.type", getattr(error, "code", None) or type(error).__name__)
                span.set_status(trace.StatusCode.ERROR, SECRETS(str(error))[:300])
        span.end()


# -- a tool call ----------------------------------------------------------------------------


class ToolCall:
    """The `execute_tool {name}` span of one call, current while the tool runs."""

    __slots__ = ("span", "token")

    def __init__(self, name: str, call_id: str, source: str, arguments: str) -> None:
        from opentelemetry import context, trace

        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.call.id": call_id,
            "gen_ai.tool.type": "extension",  # run by the gateway, not by the client
            "toolgate.tool.source": source,
        }
        if CONTENT:
            attributes["gen_ai.tool.call.arguments"] = _text(arguments)
        self.span = _tracer.start_span(f"execute_tool {name}", kind=trace.SpanKind.INTERNAL, attributes=attributes)
        self.token = context.attach(trace.set_span_in_context(self.span))

    def end(self, outcome: str, content: Any) -> None:
        from opentelemetry import context, trace

        context.detach(self.token)
        span = self.span
        span.set_attribute("toolgate.tool.outcome", outcome)
        if outcome == "ok":
            if CONTENT:
                span.set_attribute("gen_ai.tool.call.result", _text(content))
        else:
            span.set_attribute("error.type", outcome)
            span.set_status(trace.StatusCode.ERROR, _text(content)[:300])
        span.end()
