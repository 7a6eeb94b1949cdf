"""A Responses API request in: the top-level parameters, checked, and the parts put together.

    request = parse_request(body_bytes)    # ResponsesRequest; a 400 naming `param` otherwise

Each part has its module: input items (`items`), tools and tool_choice
(`tools`), sampling, `text.format` and `include` (`params`); items become chat
messages in `conversation`. Parsing is pure: `previous_response_id` and
`item_reference` are resolved by the route against the store. Everything the
gateway cannot do is a 400 that names the parameter; nothing is silently
ignored except `include` values whose items the gateway never makes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.responses.checks import flag, invalid, optional
from gateway.responses.items import parse_input
from gateway.responses.params import ECHOED, chat_params
from gateway.responses.tools import McpTool, parse_tools
from gateway.wire import json_object

# Top-level parameters refused outright (the value does not matter, only that it was asked for).
_UNSUPPORTED_PARAMS = {
    "conversation": "Conversations are not supported; chain responses with previous_response_id.",
    "prompt": "Stored prompt templates are not supported; send instructions and input.",
    "context_management": "Context management is not supported.",
}
_KNOWN_FIELDS = frozenset(
    {
        "model", "input", "instructions", "stream", "stream_options", "store", "previous_response_id",
        "include", "tools", "tool_choice", "parallel_tool_calls", "temperature", "top_p",
        "max_output_tokens", "text", "reasoning", "user", "background", "truncation", *ECHOED,
    }
)  # fmt: skip
# Repeated in the Response object as the client sent them.
_ECHOED_AS_SENT = frozenset({"temperature", "top_p", "max_output_tokens", "user", "instructions", "previous_response_id", *ECHOED})


@dataclass(slots=True)
class ResponsesRequest:
    model: str
    input: list[dict[str, Any]]  # this request's own items, normalised (ids come when stored)
    instructions: str | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # chat parameters for the upstream
    client_tools: list[dict[str, Any]] | None = None  # chat-shaped function tools
    mcp: list[McpTool] = field(default_factory=list)
    tool_choice: Any = "auto"  # as sent, echoed
    no_tools: bool = False  # tool_choice "none"
    logprobs: bool = False
    echo: dict[str, Any] = field(default_factory=dict)  # request fields the Response object repeats
    references: bool = False  # some input item is an item_reference (the route resolves it)


def parse_request(body: bytes, *, max_items: int = 2048) -> ResponsesRequest:
    raw = json_object(body)
    sent = raw.keys()
    # Each check looks at the few keys sent, not at every key the API knows.
    if not sent.isdisjoint(_UNSUPPORTED_PARAMS):
        for name, why in _UNSUPPORTED_PARAMS.items():
            if raw.get(name) is not None:
                raise invalid(why, name)
    if raw.get("background"):
        raise invalid("Background responses are not supported: the gateway answers while the request is open.", "background")
    if raw.get("truncation") not in (None, "disabled"):
        raise invalid("Only truncation 'disabled' is supported: the gateway never drops input silently.", "truncation")
    if not _KNOWN_FIELDS.issuperset(sent):
        unknown = min(k for k in raw if k not in _KNOWN_FIELDS)
        raise invalid(f"Unknown parameter: {unknown}.", unknown)
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model is required.", "model")
    items = raw.get("input")
    request = ResponsesRequest(model, parse_input(items, max_items))
    if isinstance(items, list):
        request.references = any(item["type"] == "item_reference" for item in request.input)
    request.instructions = optional(raw, "instructions", str, "a string")
    request.stream = flag(raw, "stream", False)
    request.store = flag(raw, "store", True)
    request.previous_response_id = optional(raw, "previous_response_id", str, "a response id")
    chat_params(raw, request)
    parse_tools(raw, request)
    echo = request.echo
    for key, value in raw.items():  # the Response object puts them in its own order
        if key in _ECHOED_AS_SENT and value is not None and key not in echo:  # (or as the parser filled them in)
            echo[key] = value
    echo["parallel_tool_calls"] = flag(raw, "parallel_tool_calls", True)
    echo["store"] = request.store
    echo["tool_choice"] = request.tool_choice
    return request
