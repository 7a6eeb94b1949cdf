"""A Responses API request in, the loop's chat-shaped request out.

    request = parse_request(body_bytes)                    # ResponsesRequest; 400 naming `param`
    conversation = to_messages([*earlier_items, *request.input])   # chat messages, resume, labels

Parsing is pure: `previous_response_id` and `item_reference` are resolved by the
route against the store, which hands back plain items for `to_messages`.
Everything the gateway cannot do is a 400 that names the parameter; nothing is
silently ignored except `include` values whose items the gateway never makes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import InvalidRequest
from gateway.wire import json_object

# Tool types of the hosted API the gateway does not run.
UNSUPPORTED_TOOLS = frozenset(
    {
        "web_search", "web_search_preview", "web_search_preview_2025_03_11", "web_search_2025_08_26",
        "file_search", "computer_use", "computer_use_preview", "computer", "code_interpreter",
        "image_generation", "local_shell", "shell", "apply_patch", "custom", "tool_search", "namespace",
    }
)  # fmt: skip
# Top-level parameters refused outright (the value does not matter, only that it was asked for).
_UNSUPPORTED_PARAMS = {
    "conversation": "Conversations are not supported; chain responses with previous_response_id.",
    "prompt": "Stored prompt templates are not supported; send instructions and input.",
    "context_management": "Context management is not supported.",
}
# Accepted and echoed (`max_tool_calls` also lowers the loop's own cap).
ECHOED = (
    "metadata", "service_tier", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options",
    "safety_identifier", "max_tool_calls", "top_logprobs",
)  # fmt: skip
# `include` values whose items the gateway never produces: accepted and ignored.
IGNORED_INCLUDES = frozenset(
    {
        "reasoning.encrypted_content", "file_search_call.results", "web_search_call.results",
        "web_search_call.action.sources", "message.input_image.image_url", "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
    }
)  # fmt: skip
LOGPROBS_INCLUDE = "message.output_text.logprobs"
_KNOWN_FIELDS = frozenset(
    {
        "model", "input", "instructions", "stream", "stream_options", "store", "previous_response_id",
        "include", "tools", "tool_choice", "parallel_tool_calls", "temperature", "top_p",
        "max_output_tokens", "text", "reasoning", "user", "background", "truncation", *ECHOED,
    }
)  # fmt: skip
APPROVAL_POLICIES = ("always", "never")
DENIED = "Error: the user did not approve this call."
UNANSWERED = "Error: this call waited for the user's approval and got no answer; it was not run."


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _invalid(message: str, param: str | None) -> InvalidRequest:
    return InvalidRequest(message, param=param)


@dataclass(frozen=True, slots=True)
class McpTool:
    """One `{"type": "mcp"}` tool: a configured tool source by its name, and its approval policy."""

    label: str
    allowed: frozenset[str] | None  # None: every tool of the source
    always: frozenset[str] | None  # tools that wait for approval; None: all of them
    never: frozenset[str] = frozenset()  # tools that never do (wins over `always`)

    def admits(self, name: str) -> bool:
        return self.allowed is None or _named(name, self.label, self.allowed)

    def asks(self, name: str) -> bool:
        if _named(name, self.label, self.never):
            return False
        return self.always is None or _named(name, self.label, self.always)


def _named(name: str, label: str, names: frozenset[str]) -> bool:
    # The offered name may carry the source's prefix; the client may use either.
    return name in names or (name.startswith(label + "_") and name[len(label) + 1 :] in names)


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


def parse_request(body: bytes, *, max_items: int = 2048) -> ResponsesRequest:
    raw = json_object(body)
    for name, why in _UNSUPPORTED_PARAMS.items():
        if raw.get(name) is not None:
            raise _invalid(why, name)
    if raw.get("background"):
        raise _invalid("Background responses are not supported: the gateway answers while the request is open.", "background")
    if raw.get("truncation") not in (None, "disabled"):
        raise _invalid("Only truncation 'disabled' is supported: the gateway never drops input silently.", "truncation")
    unknown = sorted(k for k in raw if k not in _KNOWN_FIELDS)
    if unknown:
        raise _invalid(f"Unknown parameter: {unknown[0]}.", unknown[0])
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model is required.", "model")
    items = _input(raw.get("input"), max_items)
    request = ResponsesRequest(model=model, input=items)
    request.instructions = _optional(raw, "instructions", str, "a string")
    request.stream = _flag(raw, "stream", False)
    request.store = _flag(raw, "store", True)
    request.previous_response_id = _optional(raw, "previous_response_id", str, "a response id")
    _sampling(raw, request)
    _tools(raw, request)
    _include(raw, request)
    echo = request.echo
    for key in ("temperature", "top_p", "max_output_tokens", "user", "instructions", "previous_response_id", *ECHOED):
        if raw.get(key) is not None:
            echo[key] = raw[key]
    echo["parallel_tool_calls"] = _flag(raw, "parallel_tool_calls", True)
    echo["store"] = request.store
    return request


def _optional(raw: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = raw.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
        raise _invalid(f"{key} must be {what}.", key)
    return value


def _flag(raw: dict[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(f"{key} must be true or false.", key)
    return value


def _number(raw: dict[str, Any], key: str) -> Any:
    value = raw.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise _invalid(f"{key} must be a number.", key)
    return value


def _sampling(raw: dict[str, Any], request: ResponsesRequest) -> None:
    params = request.params
    for key in ("temperature", "top_p"):
        if (value := _number(raw, key)) is not None:
            params[key] = value
    tokens = raw.get("max_output_tokens")
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise _invalid("max_output_tokens must be a positive integer.", "max_output_tokens")
        # max_tokens: the one every chat host accepts (max_completion_tokens is OpenAI's newer name).
        params["max_tokens"] = tokens
    if raw.get("user") is not None:
        params["user"] = _optional(raw, "user", str, "a string")
    for key in ("safety_identifier", "prompt_cache_key", "service_tier"):
        if raw.get(key) is not None:
            params[key] = raw[key]
    if raw.get("parallel_tool_calls") is not None:
        params["parallel_tool_calls"] = _flag(raw, "parallel_tool_calls", True)
    reasoning = raw.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise _invalid("reasoning must be an object.", "reasoning")
        if reasoning.get("effort") is not None:
            params["reasoning_effort"] = reasoning["effort"]
        request.echo["reasoning"] = {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}
    text = raw.get("text")
    if text is not None:
        if not isinstance(text, dict):
            raise _invalid("text must be an object.", "text")
        fmt = text.get("format")
        if fmt is not None:
            params.update(_text_format(fmt))
        if text.get("verbosity") is not None:
            params["verbosity"] = text["verbosity"]
        request.echo["text"] = text


def _text_format(fmt: Any) -> dict[str, Any]:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if kind == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise _invalid("A json_schema format needs a name and a schema.", "text.format")
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"response_format": {"type": "json_schema", "json_schema": schema}}
    raise _invalid("text.format.type must be 'text', 'json_object' or 'json_schema'.", "text.format.type")


def _include(raw: dict[str, Any], request: ResponsesRequest) -> None:
    include = raw.get("include")
    if include is None:
        return
    if not isinstance(include, list) or not all(isinstance(v, str) for v in include):
        raise _invalid("include must be an array of strings.", "include")
    for i, value in enumerate(include):
        if value == LOGPROBS_INCLUDE:
            request.logprobs = True
        elif value not in IGNORED_INCLUDES:
            raise _invalid(f"Unknown include value {value!r}.", f"include[{i}]")
    if request.logprobs:
        request.params["logprobs"] = True
        if raw.get("top_logprobs") is not None:
            request.params["top_logprobs"] = raw["top_logprobs"]


# -- tools --------------------------------------------------------------------------


def _tools(raw: dict[str, Any], request: ResponsesRequest) -> None:
    tools = raw.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _invalid("tools must be an array.", "tools")
    client: list[dict[str, Any]] = []
    labels: set[str] = set()
    for i, tool in enumerate(tools or ()):
        param = f"tools[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "function":
            client.append(_function_tool(tool, param))
        elif kind == "mcp":
            mcp = _mcp_tool(tool, param)
            if mcp.label in labels:
                raise _invalid(f"The server_label {mcp.label!r} appears twice.", f"{param}.server_label")
            labels.add(mcp.label)
            request.mcp.append(mcp)
        elif kind in UNSUPPORTED_TOOLS:
            raise _invalid(f"The {kind} tool is not supported by this gateway; offer function or mcp tools.", f"{param}.type")
        else:
            raise _invalid(f"Unknown tool type {kind!r}.", f"{param}.type")
    names = [t["function"]["name"] for t in client]
    if len(set(names)) != len(names):
        raise _invalid("Function tool names must be unique.", "tools")
    request.client_tools = client or None
    request.echo["tools"] = tools or []
    choice = raw.get("tool_choice")
    if choice is None or choice == "auto":
        request.tool_choice = "auto"
        return
    request.tool_choice = choice
    if choice == "none":
        request.no_tools = True
    elif choice == "required":
        request.params["tool_choice"] = "required"
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        if choice["name"] not in names:
            raise _invalid(f"tool_choice names {choice['name']!r}, which is not one of the function tools.", "tool_choice")
        request.params["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise _invalid("tool_choice must be 'auto', 'none', 'required' or a function tool choice.", "tool_choice")


def _function_tool(tool: dict[str, Any], param: str) -> dict[str, Any]:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise _invalid("A function tool needs a name.", f"{param}.name")
    function: dict[str, Any] = {"name": name}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    parameters = tool.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise _invalid("parameters must be a JSON schema object.", f"{param}.parameters")
    function["parameters"] = parameters or {"type": "object", "properties": {}}
    if tool.get("strict") is not None:
        function["strict"] = bool(tool["strict"])
    return {"type": "function", "function": function}


def _names(value: Any, param: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid("tool_names must be an array of strings.", param)
    return frozenset(value)


def _mcp_tool(tool: dict[str, Any], param: str) -> McpTool:
    label = tool.get("server_label")
    if not isinstance(label, str) or not label:
        raise _invalid("An mcp tool needs a server_label: the name of a tool source in the gateway's config.", f"{param}.server_label")
    for key in ("server_url", "connector_id", "authorization", "headers"):
        if tool.get(key) is not None:
            # Reaching servers the client names would make the gateway an open relay.
            raise _invalid(f"{key} is not supported: mcp tools select a tool source of the gateway's config by server_label.", f"{param}.{key}")
    allowed_raw = tool.get("allowed_tools")
    allowed: frozenset[str] | None = None
    if isinstance(allowed_raw, list):
        allowed = _names(allowed_raw, f"{param}.allowed_tools")
    elif isinstance(allowed_raw, dict):
        if allowed_raw.get("read_only"):
            raise _invalid("allowed_tools.read_only is not supported: tool sources do not say which tools only read.", f"{param}.allowed_tools.read_only")
        if allowed_raw.get("tool_names") is not None:
            allowed = _names(allowed_raw["tool_names"], f"{param}.allowed_tools.tool_names")
    elif allowed_raw is not None:
        raise _invalid("allowed_tools must be an array of tool names or a filter.", f"{param}.allowed_tools")
    policy = tool.get("require_approval")
    if policy is None or policy == "always":
        # As in the hosted API: a call to a client-chosen server waits for approval unless told otherwise.
        return McpTool(label, allowed, None)
    if policy == "never":
        return McpTool(label, allowed, frozenset())
    if isinstance(policy, dict) and set(policy) <= {"always", "never"}:
        always: frozenset[str] | None = frozenset()
        never: frozenset[str] = frozenset()
        for key in ("always", "never"):
            part = policy.get(key)
            if part is None:
                continue
            if not isinstance(part, dict) or part.get("read_only"):
                raise _invalid("An approval filter takes tool_names only.", f"{param}.require_approval.{key}")
            names = _names(part.get("tool_names", []), f"{param}.require_approval.{key}.tool_names")
            if key == "always":
                always = names
            else:
                never = names
        if "always" not in policy:
            always = None  # only exceptions to "always" were given
        return McpTool(label, allowed, always, never)
    raise _invalid("require_approval must be 'always', 'never' or a filter with always/never tool_names.", f"{param}.require_approval")


# -- input items ------------------------------------------------------------------------

_INPUT_ROLES = ("user", "system", "developer", "assistant")
_ITEM_TYPES = frozenset(
    {
        "message", "function_call", "function_call_output", "mcp_call", "mcp_list_tools",
        "mcp_approval_request", "mcp_approval_response", "item_reference", "reasoning",
    }
)  # fmt: skip


def _input(value: Any, max_items: int) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    if not isinstance(value, list):
        raise _invalid("input must be a string or an array of items.", "input")
    if len(value) > max_items:
        raise _invalid(f"Too many input items: {len(value)} (at most {max_items}).", "input")
    return [_item(item, i) for i, item in enumerate(value)]


def _item(item: Any, i: int) -> dict[str, Any]:
    param = f"input[{i}]"
    if not isinstance(item, dict):
        raise _invalid("Each input item must be an object.", param)
    kind = item.get("type")
    if kind is None and "role" in item:
        kind = "message"
    if kind not in _ITEM_TYPES:
        raise _invalid(f"Input items of type {kind!r} are not supported.", f"{param}.type")
    if kind == "message":
        return _message_item(item, param)
    if kind == "item_reference":
        if not isinstance(item.get("id"), str):
            raise _invalid("An item_reference needs an id.", f"{param}.id")
        return {"type": "item_reference", "id": item["id"]}
    required = {
        "function_call": ("call_id", "name", "arguments"),
        "function_call_output": ("call_id",),
        "mcp_call": ("name", "arguments", "server_label"),
        "mcp_approval_request": ("id", "name", "arguments", "server_label"),
        "mcp_approval_response": ("approval_request_id",),
        "mcp_list_tools": ("server_label",),
        "reasoning": (),
    }[kind]
    for key in required:
        if not isinstance(item.get(key), str):
            raise _invalid(f"A {kind} item needs a string {key}.", f"{param}.{key}")
    if kind == "function_call_output" and not isinstance(item.get("output"), (str, list)):
        raise _invalid("A function_call_output needs an output (a string or content parts).", f"{param}.output")
    if kind == "mcp_approval_response" and not isinstance(item.get("approve"), bool):
        raise _invalid("An mcp_approval_response needs approve: true or false.", f"{param}.approve")
    out = dict(item)
    out["type"] = kind
    if kind in ("function_call", "function_call_output"):
        out.setdefault("status", "completed")
        out["status"] = out["status"] or "completed"
    return out


def _message_item(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _INPUT_ROLES:
        raise _invalid(f"Unknown role {role!r}; expected one of {', '.join(_INPUT_ROLES)}.", f"{param}.role")
    content = item.get("content")
    text_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        content = [{"type": text_type, "text": content}]
    if not isinstance(content, list):
        raise _invalid("content must be a string or an array of content parts.", f"{param}.content")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        where = f"{param}.content[{j}]"
        if kind in ("input_text", "output_text"):
            if not isinstance(part.get("text"), str):
                raise _invalid("A text part needs text.", f"{where}.text")
            clean: dict[str, Any] = {"type": kind, "text": part["text"]}
            if kind == "output_text":
                clean["annotations"] = part.get("annotations") or []
            parts.append(clean)
        elif kind == "refusal" and role == "assistant" and isinstance(part.get("refusal"), str):
            parts.append({"type": "refusal", "refusal": part["refusal"]})
        elif kind == "input_image" and role != "assistant":
            if not isinstance(part.get("image_url"), str):
                raise _invalid("Only input_image parts with an image_url are supported (no file_id).", f"{where}.image_url")
            parts.append({"type": "input_image", "image_url": part["image_url"], "detail": part.get("detail") or "auto"})
        elif kind == "input_file" and role != "assistant":
            if not isinstance(part.get("file_data"), str):
                raise _invalid("Only input_file parts with file_data are supported (no file_id or file_url).", f"{where}.file_data")
            parts.append({k: part[k] for k in ("type", "file_data", "filename") if part.get(k) is not None})
        else:
            raise _invalid(f"Content parts of type {kind!r} are not supported in a {role} message.", f"{where}.type")
    out: dict[str, Any] = {"type": "message", "role": role, "content": parts}
    if isinstance(item.get("id"), str):
        out["id"] = item["id"]
    if role == "assistant":
        out["status"] = "completed"
    return out


# -- items to chat messages ------------------------------------------------------------------


@dataclass(slots=True)
class Conversation:
    messages: list[dict[str, Any]]
    resume: list[tuple[dict[str, Any], bool]]  # held calls and the client's answer
    listed: set[str]  # server labels whose tools the conversation already listed
    approvals: dict[str, str]  # chat call id -> approval request id, for the calls resumed


def _chat_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _text_of(content: list[dict[str, Any]], kind: str) -> str:
    return "".join(p["text"] for p in content if p["type"] == kind)


def _user_content(content: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if all(p["type"] == "input_text" for p in content):
        return "\n".join(p["text"] for p in content)
    parts: list[dict[str, Any]] = []
    for part in content:
        if part["type"] == "input_text":
            parts.append({"type": "text", "text": part["text"]})
        elif part["type"] == "input_image":
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"], "detail": part["detail"]}})
        else:
            parts.append({"type": "file", "file": {k: part[k] for k in ("file_data", "filename") if k in part}})
    return parts


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    pieces = []
    for part in output:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        else:
            pieces.append(f"[{part.get('type', 'content') if isinstance(part, dict) else 'content'} part not shown]")
    return "\n".join(pieces)


NO_OUTPUT = "Error: the client sent no output for this call."


def _answer_the_unanswered(messages: list[dict[str, Any]], resumed: set[str]) -> None:
    """A function call the client never answered gets a placeholder reply after its turn's
    replies: hosts refuse a conversation with a call left open."""
    answered = {m["tool_call_id"] for m in messages if m["role"] == "tool"}
    at = 0
    while at < len(messages):
        calls = messages[at].get("tool_calls") or ()
        missing = [c["id"] for c in calls if c["id"] not in answered and c["id"] not in resumed]
        at += 1
        if missing:
            while at < len(messages) and messages[at]["role"] == "tool":
                at += 1
            messages[at:at] = [{"role": "tool", "tool_call_id": call_id, "content": NO_OUTPUT} for call_id in missing]
            at += len(missing)


def to_messages(items: list[dict[str, Any]]) -> Conversation:
    """The conversation so far, as chat messages: calls of one turn share one assistant message,
    every call gets exactly one tool message, and approved held calls go to the loop to run."""
    answers = {it["approval_request_id"]: it["approve"] for it in items if it["type"] == "mcp_approval_response"}
    messages: list[dict[str, Any]] = []
    resume: list[tuple[dict[str, Any], bool]] = []
    approvals: dict[str, str] = {}
    listed: set[str] = set()
    turn: dict[str, Any] | None = None  # the assistant message collecting this turn's calls
    resumed_turn: dict[str, Any] | None = None
    for i, item in enumerate(items):
        kind = item["type"]
        if kind == "message":
            content = item["content"]
            if item["role"] == "assistant":
                turn = {"role": "assistant", "content": _text_of(content, "output_text")}
                refusal = "".join(p["refusal"] for p in content if p["type"] == "refusal")
                if refusal:
                    turn["refusal"] = refusal
                messages.append(turn)
            else:
                messages.append({"role": item["role"], "content": _user_content(content)})
                turn = None
        elif kind in ("function_call", "mcp_call", "mcp_approval_request"):
            call_id = item["call_id"] if kind == "function_call" else item["id"]
            call = _chat_call(call_id, item["name"], item["arguments"])
            if turn is None:
                turn = {"role": "assistant", "content": None}
                messages.append(turn)
            turn.setdefault("tool_calls", []).append(call)
            if kind == "mcp_call":
                result = item.get("output") if item.get("error") is None else f"Error: {item['error']}"
                messages.append({"role": "tool", "tool_call_id": call_id, "content": result or ""})
            elif kind == "mcp_approval_request":
                answer = answers.get(call_id)
                if answer:
                    resume.append((call, True))
                    approvals[call_id] = call_id
                    resumed_turn = turn
                else:
                    messages.append({"role": "tool", "tool_call_id": call_id, "content": DENIED if answer is False else UNANSWERED})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": _output_text(item["output"])})
            turn = None
        elif kind == "mcp_list_tools":
            listed.add(item["server_label"])
        elif kind == "mcp_approval_response":
            if item["approval_request_id"] not in {c["id"] for m in messages for c in m.get("tool_calls", ())}:
                raise _invalid(f"No mcp_approval_request {item['approval_request_id']!r} comes before this answer.", f"input[{i}].approval_request_id")
        elif kind == "item_reference":
            raise _invalid(f"The item {item['id']!r} was not found.", f"input[{i}].id")
        # reasoning items: the upstream does not take reasoning back (hosts.send_reasoning)
    _answer_the_unanswered(messages, {call["id"] for call, _ in resume})
    if resumed_turn is not None:
        # The loop runs approved calls before its first round and appends their results last.
        at = next(i for i, m in enumerate(messages) if m is resumed_turn)
        tail = messages[at + 1 :]
        if any(m["role"] != "tool" for m in tail):
            raise _invalid("An approved mcp_approval_request must be the last turn: send new input after its results.", "input")
    return Conversation(messages, resume, listed, approvals)
