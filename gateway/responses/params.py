"""Sampling, output and `include` parameters: the Responses names in, the chat parameters out.

    chat_params(raw, request)   # fills request.params (for the upstream) and request.echo

`text.format` becomes `response_format`, `max_output_tokens` `max_tokens`,
`reasoning.effort` `reasoning_effort` (hosts.py drops it where a host type does
not take it). `include` values are one row each in INCLUDES.
"""

from __future__ import annotations

from typing import Any

from gateway.responses.checks import flag, invalid, number, optional

# Accepted and echoed (`max_tool_calls` also lowers the loop's own cap).
ECHOED = (
    "metadata", "service_tier", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options",
    "safety_identifier", "max_tool_calls", "top_logprobs",
)  # fmt: skip
# Passed to the upstream as they are, when given.
_PASSED = ("safety_identifier", "prompt_cache_key", "service_tier")

LOGPROBS_INCLUDE = "message.output_text.logprobs"
# Every `include` value the hosted API knows, and what the gateway does with it: "logprobs"
# (token logprobs on output_text), or "ignored" (the gateway never makes those items, so
# there is nothing to include: encrypted reasoning, hosted tools' results, input images).
INCLUDES = {
    LOGPROBS_INCLUDE: "logprobs",
    "reasoning.encrypted_content": "ignored",
    "file_search_call.results": "ignored",
    "web_search_call.results": "ignored",
    "web_search_call.action.sources": "ignored",
    "message.input_image.image_url": "ignored",
    "computer_call_output.output.image_url": "ignored",
    "code_interpreter_call.outputs": "ignored",
}


# Values the hosted API takes, as its own types say: the Response object repeats them, and a
# client's typed model of it refuses anything else.
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority", "fast", "ultrafast")
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
SUMMARIES = ("auto", "concise", "detailed")
VERBOSITIES = ("low", "medium", "high")
CACHE_RETENTIONS = ("in_memory", "24h")
CACHE_MODES = ("implicit", "explicit")
CACHE_TTLS = ("30m", "12h")
RANGES = {"temperature": (0, 2), "top_p": (0, 1)}
MAX_TOP_LOGPROBS = 20
METADATA_PAIRS, METADATA_KEY, METADATA_VALUE = 16, 64, 512

# Every key chat_params reads: most requests send none of them.
_READ = frozenset({"temperature", "top_p", "max_output_tokens", "user", *ECHOED, "parallel_tool_calls", "reasoning", "text", "include"})


def chat_params(raw: dict[str, Any], request: Any) -> None:
    if raw.keys().isdisjoint(_READ):
        return
    params = request.params
    for key, (low, high) in RANGES.items():
        if (value := number(raw, key)) is not None:
            if not low <= value <= high:
                raise invalid(f"{key} must be between {low} and {high}.", key)
            params[key] = value
    _echoed(raw, request)
    tokens = raw.get("max_output_tokens")
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise invalid("max_output_tokens must be a positive integer.", "max_output_tokens")
        # max_tokens: the one every chat host accepts (max_completion_tokens is OpenAI's newer name).
        params["max_tokens"] = tokens
    if raw.get("user") is not None:
        params["user"] = optional(raw, "user", str, "a string")
    for key in _PASSED:
        if raw.get(key) is not None:
            params[key] = raw[key]
    if raw.get("parallel_tool_calls") is not None:
        params["parallel_tool_calls"] = flag(raw, "parallel_tool_calls", True)
    if (reasoning := raw.get("reasoning")) is not None:
        _reasoning(reasoning, request)
    if (text := raw.get("text")) is not None:
        _text(text, request)
    if (include := raw.get("include")) is not None:
        _include(include, raw, request)


def _one_of(value: Any, allowed: tuple[str, ...], param: str) -> Any:
    if value is not None and value not in allowed:
        raise invalid(f"{param} must be one of {', '.join(map(repr, allowed))}, not {value!r}.", param)
    return value


def _count(value: Any, param: str, low: int, high: int | None = None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low or high is not None and value > high):
        raise invalid(f"{param} must be an integer of at least {low}" + (f" and at most {high}." if high is not None else "."), param)


def _echoed(raw: dict[str, Any], request: Any) -> None:
    """The parameters the Response object repeats: each as the hosted API types it."""
    metadata = raw.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or len(metadata) > METADATA_PAIRS:
            raise invalid(f"metadata must be an object of at most {METADATA_PAIRS} string pairs.", "metadata")
        for key, value in metadata.items():
            if len(key) > METADATA_KEY:
                raise invalid(f"A metadata key is at most {METADATA_KEY} characters.", f"metadata.{key[:METADATA_KEY]}")
            if not isinstance(value, str) or len(value) > METADATA_VALUE:
                raise invalid(f"A metadata value is a string of at most {METADATA_VALUE} characters.", f"metadata.{key}")
    for key in ("prompt_cache_key", "safety_identifier"):
        optional(raw, key, str, "a string")
    _one_of(raw.get("service_tier"), SERVICE_TIERS, "service_tier")
    _one_of(raw.get("prompt_cache_retention"), CACHE_RETENTIONS, "prompt_cache_retention")
    _count(raw.get("max_tool_calls"), "max_tool_calls", 0)
    _count(raw.get("top_logprobs"), "top_logprobs", 0, MAX_TOP_LOGPROBS)
    cache = raw.get("prompt_cache_options")
    if cache is not None:
        if not isinstance(cache, dict) or not {"mode", "ttl", "comparison_response_id"}.issuperset(cache):
            raise invalid("prompt_cache_options must be an object of mode, ttl and comparison_response_id.", "prompt_cache_options")
        optional(cache, "comparison_response_id", str, "a response id")
        # The Response object says both, as the hosted API applied them: its defaults where not sent.
        request.echo["prompt_cache_options"] = {
            **cache,
            "mode": _one_of(cache.get("mode"), CACHE_MODES, "prompt_cache_options.mode") or "implicit",
            "ttl": _one_of(cache.get("ttl"), CACHE_TTLS, "prompt_cache_options.ttl") or "30m",
        }


def _reasoning(reasoning: Any, request: Any) -> None:
    if not isinstance(reasoning, dict):
        raise invalid("reasoning must be an object.", "reasoning")
    effort = _one_of(reasoning.get("effort"), EFFORTS, "reasoning.effort")
    summary = _one_of(reasoning.get("summary"), SUMMARIES, "reasoning.summary")
    _one_of(reasoning.get("generate_summary"), SUMMARIES, "reasoning.generate_summary")
    if effort is not None:
        request.params["reasoning_effort"] = effort
    request.echo["reasoning"] = {"effort": effort, "summary": summary or reasoning.get("generate_summary")}


def _text(text: Any, request: Any) -> None:
    if not isinstance(text, dict):
        raise invalid("text must be an object.", "text")
    fmt = text.get("format")
    if fmt is not None:
        request.params.update(text_format(fmt))
    if _one_of(text.get("verbosity"), VERBOSITIES, "text.verbosity") is not None:
        request.params["verbosity"] = text["verbosity"]
    request.echo["text"] = text


def text_format(fmt: Any) -> dict[str, Any]:
    """`text.format` as the chat `response_format` (nothing for plain text)."""
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if kind == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise invalid("A json_schema format needs a name and a schema.", "text.format")
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"response_format": {"type": "json_schema", "json_schema": schema}}
    raise invalid("text.format.type must be 'text', 'json_object' or 'json_schema'.", "text.format.type")


def _include(include: Any, raw: dict[str, Any], request: Any) -> None:
    if not isinstance(include, list) or not all(isinstance(v, str) for v in include):
        raise invalid("include must be an array of strings.", "include")
    for i, value in enumerate(include):
        what = INCLUDES.get(value)
        if what is None:
            raise invalid(f"Unknown include value {value!r}.", f"include[{i}]")
        if what == "logprobs":
            request.logprobs = True
    if request.logprobs:
        request.params["logprobs"] = True
        if raw.get("top_logprobs") is not None:
            request.params["top_logprobs"] = raw["top_logprobs"]
