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


# Every key chat_params reads: most requests send none of them.
_READ = frozenset({"temperature", "top_p", "max_output_tokens", "user", *_PASSED, "parallel_tool_calls", "reasoning", "text", "include"})


def chat_params(raw: dict[str, Any], request: Any) -> None:
    if raw.keys().isdisjoint(_READ):
        return
    params = request.params
    for key in ("temperature", "top_p"):
        if (value := number(raw, key)) is not None:
            params[key] = value
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


def _reasoning(reasoning: Any, request: Any) -> None:
    if not isinstance(reasoning, dict):
        raise invalid("reasoning must be an object.", "reasoning")
    if reasoning.get("effort") is not None:
        request.params["reasoning_effort"] = reasoning["effort"]
    request.echo["reasoning"] = {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}


def _text(text: Any, request: Any) -> None:
    if not isinstance(text, dict):
        raise invalid("text must be an object.", "text")
    fmt = text.get("format")
    if fmt is not None:
        request.params.update(text_format(fmt))
    if text.get("verbosity") is not None:
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
