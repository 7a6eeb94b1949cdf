"""Input items: each one checked and normalised, or a 400 naming `input[i]...`.

    items = parse_input(raw.get("input"), max_items)   # a string becomes one user message

Item types are rows of REQUIRED: the string fields each one needs.
Content parts keep only the fields the conversation needs.
"""

from __future__ import annotations

from typing import Any

from gateway.responses.checks import invalid

_INPUT_ROLES = ("user", "system", "developer", "assistant")
# Item types besides messages and references, and the string fields each one needs.
REQUIRED: dict[str, tuple[str, ...]] = {
    "function_call": ("call_id", "name", "arguments"),
    "function_call_output": ("call_id",),
    "mcp_call": ("name", "arguments", "server_label"),
    "mcp_approval_request": ("id", "name", "arguments", "server_label"),
    "mcp_approval_response": ("approval_request_id",),
    "mcp_list_tools": ("server_label",),
    "reasoning": (),
}
ITEM_TYPES = frozenset({"message", "item_reference", *REQUIRED})


def parse_input(value: Any, max_items: int) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    if not isinstance(value, list):
        raise invalid("input must be a string or an array of items.", "input")
    if len(value) > max_items:
        raise invalid(f"Too many input items: {len(value)} (at most {max_items}).", "input")
    return [_item(item, i) for i, item in enumerate(value)]


def _item(item: Any, i: int) -> dict[str, Any]:
    param = f"input[{i}]"
    if not isinstance(item, dict):
        raise invalid("Each input item must be an object.", param)
    kind = item.get("type")
    if kind is None and "role" in item:
        kind = "message"
    if kind not in ITEM_TYPES:
        raise invalid(f"Input items of type {kind!r} are not supported.", f"{param}.type")
    if kind == "message":
        return _message_item(item, param)
    if kind == "item_reference":
        if not isinstance(item.get("id"), str):
            raise invalid("An item_reference needs an id.", f"{param}.id")
        return {"type": "item_reference", "id": item["id"]}
    required = REQUIRED[kind]
    for key in required:
        if not isinstance(item.get(key), str):
            raise invalid(f"A {kind} item needs a string {key}.", f"{param}.{key}")
    if kind == "function_call_output" and not isinstance(item.get("output"), (str, list)):
        raise invalid("A function_call_output needs an output (a string or content parts).", f"{param}.output")
    if kind == "mcp_approval_response" and not isinstance(item.get("approve"), bool):
        raise invalid("An mcp_approval_response needs approve: true or false.", f"{param}.approve")
    out = dict(item)
    out["type"] = kind
    if kind in ("function_call", "function_call_output"):
        out.setdefault("status", "completed")
        out["status"] = out["status"] or "completed"
    return out


def _message_item(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _INPUT_ROLES:
        raise invalid(f"Unknown role {role!r}; expected one of {', '.join(_INPUT_ROLES)}.", f"{param}.role")
    content = item.get("content")
    text_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        content = [{"type": text_type, "text": content}]
    if not isinstance(content, list):
        raise invalid("content must be a string or an array of content parts.", f"{param}.content")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        where = f"{param}.content[{j}]"
        if kind in ("input_text", "output_text"):
            if not isinstance(part.get("text"), str):
                raise invalid("A text part needs text.", f"{where}.text")
            clean: dict[str, Any] = {"type": kind, "text": part["text"]}
            if kind == "output_text":
                clean["annotations"] = part.get("annotations") or []
            parts.append(clean)
        elif kind == "refusal" and role == "assistant" and isinstance(part.get("refusal"), str):
            parts.append({"type": "refusal", "refusal": part["refusal"]})
        elif kind == "input_image" and role != "assistant":
            if not isinstance(part.get("image_url"), str):
                raise invalid("Only input_image parts with an image_url are supported (no file_id).", f"{where}.image_url")
            parts.append({"type": "input_image", "image_url": part["image_url"], "detail": part.get("detail") or "auto"})
        elif kind == "input_file" and role != "assistant":
            if not isinstance(part.get("file_data"), str):
                raise invalid("Only input_file parts with file_data are supported (no file_id or file_url).", f"{where}.file_data")
            parts.append({k: part[k] for k in ("type", "file_data", "filename") if part.get(k) is not None})
        else:
            raise invalid(f"Content parts of type {kind!r} are not supported in a {role} message.", f"{where}.type")
    out: dict[str, Any] = {"type": "message", "role": role, "content": parts}
    if isinstance(item.get("id"), str):
        out["id"] = item["id"]
    if role == "assistant":
        out["status"] = "completed"
    return out
