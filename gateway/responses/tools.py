"""`tools` and `tool_choice`: client function tools in the chat shape, `mcp` tools as selections.

    parse_tools(raw, request)   # request.client_tools, request.mcp, request.tool_choice, echo

A `{"type": "function"}` tool is the client's: its calls are handed back. An
`{"type": "mcp"}` tool names a tool source of the config by `server_label`, or,
with `server_url`, a remote MCP server the config allowlists (`[responses]
mcp_server_urls`; the route checks it). Hosted tool types are one row each in
UNSUPPORTED_TOOLS: a 400, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.responses.checks import invalid, names

# Tool types of the hosted API the gateway does not run.
UNSUPPORTED_TOOLS = frozenset(
    {
        "web_search", "web_search_preview", "web_search_preview_2025_03_11", "web_search_2025_08_26",
        "file_search", "computer_use", "computer_use_preview", "computer", "code_interpreter",
        "image_generation", "local_shell", "shell", "apply_patch", "custom", "tool_search", "namespace",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class McpTool:
    """One `{"type": "mcp"}` tool: a tool source by its name (or a remote server), and its approval policy."""

    label: str
    allowed: frozenset[str] | None  # None: every tool of the source
    always: frozenset[str] | None  # tools that wait for approval; None: all of them
    never: frozenset[str] = frozenset()  # tools that never do (wins over `always`)
    url: str | None = None  # server_url: a remote server for this request only
    # The remote server's request headers (`headers`, and `authorization` as a bearer token):
    # secrets, never logged, stored, echoed or shown to the model.
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    index: int = 0  # its place in `tools`, for the errors that name it
    asked: bool = True  # the request said require_approval (else the config's default may apply)

    def admits(self, name: str) -> bool:
        return self.allowed is None or _named(name, self.label, self.allowed)

    def asks(self, name: str) -> bool:
        if _named(name, self.label, self.never):
            return False
        return self.always is None or _named(name, self.label, self.always)


def _named(name: str, label: str, wanted: frozenset[str]) -> bool:
    # The offered name may carry the source's prefix; the client may use either.
    return name in wanted or (name.startswith(label + "_") and name[len(label) + 1 :] in wanted)


def parse_tools(raw: dict[str, Any], request: Any) -> None:
    tools = raw.get("tools")
    if tools is None and raw.get("tool_choice") is None:
        request.echo["tools"] = []  # the usual request: no tools, tool_choice "auto"
        return
    if tools is not None and not isinstance(tools, list):
        raise invalid("tools must be an array.", "tools")
    client: list[dict[str, Any]] = []
    labels: set[str] = set()
    echoed = []
    for i, tool in enumerate(tools or ()):
        param = f"tools[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "function":
            client.append(_function_tool(tool, param))
            echoed.append(tool)
        elif kind == "mcp":
            mcp = _mcp_tool(tool, param, i)
            if mcp.label in labels:
                raise invalid(f"The server_label {mcp.label!r} appears twice.", f"{param}.server_label")
            labels.add(mcp.label)
            request.mcp.append(mcp)
            # As the hosted API: the echoed tool never repeats the secrets sent with it.
            echoed.append({k: v for k, v in tool.items() if k not in _SECRET_KEYS})
        elif kind in UNSUPPORTED_TOOLS:
            raise invalid(f"The {kind} tool is not supported by this gateway; offer function or mcp tools.", f"{param}.type")
        else:
            raise invalid(f"Unknown tool type {kind!r}.", f"{param}.type")
    declared = [t["function"]["name"] for t in client]
    if len(set(declared)) != len(declared):
        raise invalid("Function tool names must be unique.", "tools")
    request.client_tools = client or None
    request.echo["tools"] = echoed
    _tool_choice(raw.get("tool_choice"), declared, request)


def _tool_choice(choice: Any, declared: list[str], request: Any) -> None:
    if choice is None or choice == "auto":
        request.tool_choice = "auto"
        return
    request.tool_choice = choice
    if choice == "none":
        request.no_tools = True
    elif choice == "required":
        request.params["tool_choice"] = "required"
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        if choice["name"] not in declared:
            raise invalid(f"tool_choice names {choice['name']!r}, which is not one of the function tools.", "tool_choice")
        request.params["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise invalid("tool_choice must be 'auto', 'none', 'required' or a function tool choice.", "tool_choice")


def _function_tool(tool: dict[str, Any], param: str) -> dict[str, Any]:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise invalid("A function tool needs a name.", f"{param}.name")
    function: dict[str, Any] = {"name": name}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    parameters = tool.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise invalid("parameters must be a JSON schema object.", f"{param}.parameters")
    function["parameters"] = parameters or {"type": "object", "properties": {}}
    if tool.get("strict") is not None:
        function["strict"] = bool(tool["strict"])
    return {"type": "function", "function": function}


_SECRET_KEYS = ("headers", "authorization")
MAX_HEADERS = 32


def _remote(tool: dict[str, Any], param: str) -> tuple[str | None, dict[str, str]]:
    """server_url and the headers that go with it (checked against the allowlist by the route)."""
    if tool.get("connector_id") is not None:
        raise invalid("connector_id is not supported: name a configured tool source by server_label, or an allowlisted server_url.", f"{param}.connector_id")
    url = tool.get("server_url")
    if url is None:
        for key in _SECRET_KEYS:
            if tool.get(key) is not None:
                raise invalid(f"{key} goes with a server_url; a configured tool source brings its own.", f"{param}.{key}")
        return None, {}
    if not isinstance(url, str) or not url:
        raise invalid("server_url must be a URL.", f"{param}.server_url")
    headers: dict[str, str] = {}
    raw = tool.get("headers")
    if raw is not None:
        if not isinstance(raw, dict) or len(raw) > MAX_HEADERS or not all(isinstance(k, str) and k and isinstance(v, str) for k, v in raw.items()):
            raise invalid(f"headers must be an object of at most {MAX_HEADERS} string values.", f"{param}.headers")
        if any(not _token(k) or "\r" in v or "\n" in v for k, v in raw.items()):
            raise invalid("headers holds a name or value that is not a valid HTTP header.", f"{param}.headers")
        headers.update(raw)
    token = tool.get("authorization")
    if token is not None:
        if not isinstance(token, str) or not token or "\r" in token or "\n" in token:
            raise invalid("authorization must be a token string.", f"{param}.authorization")
        headers["Authorization"] = f"Bearer {token}"
    return url, headers


def _token(name: str) -> bool:
    return all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name)


def _mcp_tool(tool: dict[str, Any], param: str, index: int) -> McpTool:
    label = tool.get("server_label")
    if not isinstance(label, str) or not label:
        raise invalid("An mcp tool needs a server_label: the name of a tool source in the gateway's config.", f"{param}.server_label")
    url, headers = _remote(tool, param)
    allowed = _allowed(tool.get("allowed_tools"), param)
    policy = tool.get("require_approval")
    if policy is None or policy == "always":
        # As in the hosted API: a call to a client-chosen server waits for approval unless told otherwise.
        return McpTool(label, allowed, None, url=url, headers=headers, index=index, asked=policy is not None)
    if policy == "never":
        return McpTool(label, allowed, frozenset(), url=url, headers=headers, index=index)
    if isinstance(policy, dict) and set(policy) <= {"always", "never"}:
        always: frozenset[str] | None = frozenset()
        never: frozenset[str] = frozenset()
        for key in ("always", "never"):
            part = policy.get(key)
            if part is None:
                continue
            if not isinstance(part, dict) or part.get("read_only"):
                raise invalid("An approval filter takes tool_names only.", f"{param}.require_approval.{key}")
            chosen = names(part.get("tool_names", []), f"{param}.require_approval.{key}.tool_names")
            if key == "always":
                always = chosen
            else:
                never = chosen
        if "always" not in policy:
            always = None  # only exceptions to "always" were given
        return McpTool(label, allowed, always, never, url=url, headers=headers, index=index)
    raise invalid("require_approval must be 'always', 'never' or a filter with always/never tool_names.", f"{param}.require_approval")


def _allowed(value: Any, param: str) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return names(value, f"{param}.allowed_tools")
    if isinstance(value, dict):
        if value.get("read_only"):
            raise invalid("allowed_tools.read_only is not supported: tool sources do not say which tools only read.", f"{param}.allowed_tools.read_only")
        if value.get("tool_names") is not None:
            return names(value["tool_names"], f"{param}.allowed_tools.tool_names")
        return None
    raise invalid("allowed_tools must be an array of tool names or a filter.", f"{param}.allowed_tools")
