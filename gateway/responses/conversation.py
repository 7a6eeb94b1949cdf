"""Items to chat messages: the conversation so far, as the loop sends it upstream.

    conversation = to_messages([*earlier_items, *request.input])
    conversation.messages, conversation.resume, conversation.listed

Calls of one turn share one assistant message, every call gets exactly one
tool message, and approved held calls go to the loop to run (`resume`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.responses.checks import invalid

DENIED = "Error: the user did not approve this call."
UNANSWERED = "Error: this call waited for the user's approval and got no answer; it was not run."


@dataclass(slots=True)
class Conversation:
    messages: list[dict[str, Any]]
    resume: list[tuple[dict[str, Any], bool]]  # held calls and the client's answer
    listed: set[str]  # server labels whose tools the conversation already listed
    approvals: dict[str, str]  # chat call id -> approval request id, for the calls resumed


def _chat_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# A message's text parts, of either kind: any role may hold either (a client's earlier answer
# quoted back as output_text, an assistant turn written as input_text), and all of it is text.
_TEXT = frozenset({"input_text", "output_text"})


def _text_of(content: list[dict[str, Any]]) -> str:
    return "".join(p["text"] for p in content if p["type"] in _TEXT)


def _user_content(content: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if len(content) == 1 and content[0]["type"] == "input_text":
        text: str = content[0]["text"]  # the usual message: one text part
        return text
    if all(p["type"] in _TEXT for p in content):
        return "\n".join(p["text"] for p in content)
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part["type"]
        if kind in _TEXT:
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"], "detail": part["detail"]}})
        elif kind == "input_file":
            parts.append({"type": "file", "file": {k: part[k] for k in ("file_data", "filename") if k in part}})
        else:  # items.py lets no other kind through
            raise AssertionError(f"unexpected content part {kind!r}")
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


def _error_text(error: Any) -> str:
    """An mcp_call's error: a string (older clients), or the hosted API's error object."""
    if isinstance(error, dict):
        content = error.get("content")
        if isinstance(content, list):
            return _output_text(content)
        return str(error.get("message") or content or error.get("type") or "the call failed")
    return str(error)


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
    if len(items) == 1 and items[0]["type"] == "message" and items[0]["role"] != "assistant":
        # The usual request: one message, no turn to pair calls with.
        return Conversation([{"role": items[0]["role"], "content": _user_content(items[0]["content"])}], [], set(), {})
    answers = {it["approval_request_id"]: it["approve"] for it in items if it["type"] == "mcp_approval_response"}
    messages: list[dict[str, Any]] = []
    resume: list[tuple[dict[str, Any], bool]] = []
    approvals: dict[str, str] = {}
    listed: set[str] = set()
    turn: dict[str, Any] | None = None  # the assistant message collecting this turn's calls
    resumed_turn: dict[str, Any] | None = None
    calls: set[str] = set()  # the call ids so far (each call needs its one reply)
    for i, item in enumerate(items):
        kind = item["type"]
        if kind == "message":
            content = item["content"]
            if item["role"] == "assistant":
                turn = {"role": "assistant", "content": _text_of(content)}
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
            calls.add(call_id)
            if kind == "mcp_call":
                result = item.get("output") if item.get("error") is None else f"Error: {_error_text(item['error'])}"
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
            if item["call_id"] not in calls:
                # A host refuses a tool message no call asked for, in its own words: say it here.
                raise invalid(f"No tool call found for function call output with call_id {item['call_id']!r}.", f"input[{i}].call_id")
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": _output_text(item["output"])})
            turn = None
        elif kind == "mcp_list_tools":
            listed.add(item["server_label"])
        elif kind == "mcp_approval_response":
            if item["approval_request_id"] not in calls:
                raise invalid(f"No mcp_approval_request {item['approval_request_id']!r} comes before this answer.", f"input[{i}].approval_request_id")
        elif kind == "item_reference":
            raise invalid(f"The item {item['id']!r} was not found.", f"input[{i}].id")
        # reasoning items: the upstream does not take reasoning back (hosts.send_reasoning)
    if calls:
        _answer_the_unanswered(messages, {call["id"] for call, _ in resume})
    if resumed_turn is not None:
        # The loop runs approved calls before its first round and appends their results last.
        at = next(i for i, m in enumerate(messages) if m is resumed_turn)
        tail = messages[at + 1 :]
        if any(m["role"] != "tool" for m in tail):
            raise invalid("An approved mcp_approval_request must be the last turn: send new input after its results.", "input")
    return Conversation(messages, resume, listed, approvals)
