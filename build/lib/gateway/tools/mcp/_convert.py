"""MCP results and MCP/anyio/httpx2 exceptions in toolgate's terms: the one boundary for both.

``to_output(result)`` maps a ``CallToolResult`` to a ``ToolOutput`` (raising ``ToolError`` for
``isError``); ``tool_error(server, exc)`` turns any failure of a call into a ``ToolError``;
``describe(exc)`` gives any failure as one line without secrets, and ``connection_gone(exc)``
says whether the session it happened on is dead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp.shared.exceptions import MCPError

from gateway.tools.base import ToolError, ToolOutput


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _size(b64: str) -> int:
    return len(b64) * 3 // 4 - b64[-2:].count("=")


def _image(block: types.ImageContent) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:{block.mime_type};base64,{block.data}"}}


def _resource(block: types.EmbeddedResource) -> dict[str, Any]:
    contents = block.resource
    if isinstance(contents, types.TextResourceContents):
        return _text(contents.text)
    mime = contents.mime_type or "application/octet-stream"
    return _text(f"[resource {contents.uri} ({mime}), {_size(contents.blob)} bytes]")


# content block type -> OpenAI content part
_PARTS: dict[type, Callable[[Any], dict[str, Any]]] = {
    types.TextContent: lambda block: _text(block.text),
    types.ImageContent: _image,
    types.AudioContent: lambda block: _text(f"[audio ({block.mime_type}), {_size(block.data)} bytes]"),
    types.EmbeddedResource: _resource,
    types.ResourceLink: lambda block: _text(f"[resource link {block.uri} ({block.name})]"),
}


def _part(block: Any) -> dict[str, Any]:
    convert = _PARTS.get(type(block))
    return convert(block) if convert else _text(f"[{getattr(block, 'type', 'unknown')} content]")


def to_output(result: types.CallToolResult) -> ToolOutput:
    parts = [_part(block) for block in result.content]
    texts = [part["text"] for part in parts if part["type"] == "text"]
    if result.is_error:
        raise ToolError("\n".join(texts) or "the tool reported an error")
    if not texts and result.structured_content is not None:
        parts.insert(0, _text(json.dumps(result.structured_content, ensure_ascii=False)))
    if all(part["type"] == "text" for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def _leaf(exc: BaseException) -> BaseException:
    for _ in range(16):  # task groups nest their failures
        if not isinstance(exc, BaseExceptionGroup) or not exc.exceptions:
            break
        exc = exc.exceptions[0]
    return exc


_CLOSED = (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, httpx2.TransportError)


def connection_gone(exc: BaseException) -> bool:
    exc = _leaf(exc)
    if isinstance(exc, MCPError):
        # 404 on a known session id: the server restarted and forgot us.
        return exc.code == types.CONNECTION_CLOSED or exc.message == "Session terminated"
    return isinstance(exc, _CLOSED)


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def describe(exc: BaseException) -> str:
    exc = _leaf(exc)
    if connection_gone(exc) and not isinstance(exc, httpx2.TransportError):
        return "connection closed"
    if isinstance(exc, MCPError):
        return _one_line(exc.message) or f"error {exc.code}"
    if isinstance(exc, httpx2.TransportError):
        # httpx2's messages can carry the URL, which may carry a token.
        return f"cannot reach the server ({type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return _one_line(exc.strerror)
    return _one_line(str(exc)) or type(exc).__name__


def tool_error(server: str, exc: BaseException) -> ToolError:
    return ToolError(f"MCP server {server!r}: {describe(exc)}")
