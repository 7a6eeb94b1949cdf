"""The client's request in, the upstream's request body out.

    request = parse_request(body_bytes, max_messages=2048)
    base = upstream_base(request, alias, upstream, instruction)   # dict, minus tools

Messages are rebuilt from a per-role allowlist, so client metadata (`id`,
`timestamp`, `backend` ...) never leaves the gateway. Standard parameters pass
through; the gateway owns `stream`, `stream_options`, `tools`, `tool_choice`
and `n`; routing knobs a client may send (`api_base`, `extra_headers`,
`mock_response` ...) are never forwarded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import InvalidRequest

STANDARD_PARAMS = frozenset(
    {
        "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed",
        "response_format", "user", "presence_penalty", "frequency_penalty", "logit_bias",
        "logprobs", "top_logprobs", "parallel_tool_calls", "reasoning_effort", "service_tier",
        "prediction", "modalities", "audio", "verbosity", "web_search_options", "store",
        "metadata", "prompt_cache_key", "safety_identifier",
    }
)  # fmt: skip
GATEWAY_OWNED = frozenset({"model", "messages", "stream", "stream_options", "tools", "tool_choice", "n", "functions", "function_call"})
NEVER_FORWARDED = frozenset({"api_base", "base_url", "api_key", "api_version", "extra_headers", "extra_query", "custom_llm_provider"})

_ROLE_FIELDS: dict[str, tuple[str, ...]] = {
    "system": ("content", "name"),
    "developer": ("content", "name"),
    "user": ("content", "name"),
    "assistant": ("content", "name", "tool_calls", "refusal"),
    "tool": ("content", "tool_call_id"),
    "function": ("content", "name"),
}


@dataclass(slots=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    include_usage: bool = False
    params: dict[str, Any] | None = None  # standard parameters, as sent
    extras: dict[str, Any] | None = None  # non-standard ones; kept if the upstream accepts them
    client_tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None


def _invalid(message: str, param: str | None) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _tool_calls(value: Any, param: str, index: int) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _invalid("tool_calls must be an array.", param)
    calls = []
    for i, call in enumerate(value):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _invalid("Each tool call needs a function with a name.", f"{param}[{i}].function")
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()
        calls.append({"id": call.get("id") or f"call_{index}_{i}", "type": "function", "function": {"name": function["name"], "arguments": arguments}})
    return calls


def _message(raw: Any, i: int) -> dict[str, Any]:
    param = f"messages[{i}]"
    if not isinstance(raw, dict):
        raise _invalid("Each message must be an object.", param)
    role = raw.get("role")
    allowed = _ROLE_FIELDS.get(role) if isinstance(role, str) else None
    if allowed is None:
        raise _invalid(f"Unknown role {role!r}; expected one of {', '.join(_ROLE_FIELDS)}.", f"{param}.role")
    message: dict[str, Any] = {"role": role}
    for name in allowed:
        if name in raw and raw[name] is not None:
            message[name] = raw[name]
    content = raw.get("content")
    if content is not None and not isinstance(content, (str, list)):
        raise _invalid("content must be a string or an array of content parts.", f"{param}.content")
    if isinstance(content, list) and not all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in content):
        raise _invalid("Each content part must be an object with a type.", f"{param}.content")
    if "tool_calls" in message:
        message["tool_calls"] = _tool_calls(message["tool_calls"], f"{param}.tool_calls", i)
    if role == "assistant":
        message.setdefault("content", None)
    elif content is None:
        raise _invalid(f"A {role} message needs content.", f"{param}.content")
    if role == "tool" and not isinstance(raw.get("tool_call_id"), str):
        raise _invalid("A tool message needs a tool_call_id.", f"{param}.tool_call_id")
    return message


def _client_tools(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise _invalid("tools must be an array.", "tools")
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _invalid("Each tool must be a function with a name.", f"tools[{i}]")
    return value or None


def json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying what it is not (any ingress)."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _invalid("The request body is not valid JSON.", None) from None
    if not isinstance(raw, dict):
        raise _invalid("The request body must be a JSON object.", None)
    return raw


def parse_request(body: bytes, *, max_messages: int = 2048) -> ChatRequest:
    raw = json_object(body)
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model is required.", "model")
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages must be a non-empty array.", "messages")
    if len(messages) > max_messages:
        raise _invalid(f"Too many messages: {len(messages)} (at most {max_messages}).", "messages")
    n = raw.get("n", 1)
    if n not in (1, None):
        raise _invalid("n > 1 is not supported: the gateway runs one tool loop per request.", "n")
    stream = raw.get("stream") or False
    if not isinstance(stream, bool):
        raise _invalid("stream must be true or false.", "stream")
    if stream and raw.get("audio") is not None:
        # Streamed audio arrives in pieces the gateway would have to relay one by one; it does not.
        raise _invalid("Audio output is supported on non-streamed requests only.", "audio")
    options = raw.get("stream_options")
    params: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for key, value in raw.items():
        if key in STANDARD_PARAMS:
            params[key] = value
        elif key not in GATEWAY_OWNED and key not in NEVER_FORWARDED and not key.startswith("mock_"):
            extras[key] = value
    return ChatRequest(
        model=model,
        messages=[_message(m, i) for i, m in enumerate(messages)],
        stream=stream,
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
        params=params,
        extras=extras,
        client_tools=_client_tools(raw.get("tools")),
        tool_choice=raw.get("tool_choice"),
    )


def _system_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") for p in content if p.get("type") == "text")


def lead_messages(messages: list[dict[str, Any]], system_prompt: str, instruction: str) -> list[dict[str, Any]]:
    """The alias's system prompt first (merged with the client's), then the tool instruction."""
    head = "\n\n".join(t for t in (system_prompt, instruction) if t)
    if not head:
        return messages
    if messages[0]["role"] in ("system", "developer"):
        first = messages[0]
        merged = {**first, "content": f"{head}\n\n{_system_text(first['content'])}"}
        return [merged, *messages[1:]]
    return [{"role": "system", "content": head}, *messages]


def upstream_params(request: ChatRequest, defaults: dict, overrides: dict, accepted_extras: frozenset[str]) -> dict[str, Any]:
    """Top-level parameters for every upstream call of this request (no model/messages/tools)."""
    # A client's null means "not set": it must not erase the alias's default.
    params = {**defaults, **{k: v for k, v in (request.params or {}).items() if v is not None}}
    if request.extras:
        params.update({k: v for k, v in request.extras.items() if k in accepted_extras and v is not None})
    params.update(overrides)
    return params
