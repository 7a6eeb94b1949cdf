"""A small MCP server for the MCP tool source's tests, written with the SDK's MCPServer.

    python tests/mcp_server.py --transport stdio
    python tests/mcp_server.py --transport http --port 0    # prints "READY <port>" once serving
    python tests/mcp_server.py --transport sse --port 0     # HTTP+SSE: GET /sse, POST /messages/

    --era legacy (default)   the handshake era only, as servers built before 2026-07-28
    --era modern             the 2026-07-28 revision only, stateless (streamable HTTP);
                             --ttl-ms N: the ttlMs its tool lists carry
    --era dual               both, as the SDK serves by default

HTTP and SSE listen on 127.0.0.1 only. Tools cover what the client must handle: plain
results, errors, images, embedded resources, slow calls, abrupt death, a tool
list that grows or changes at runtime, the child's environment, floods and
secrets on stderr, garbage on stdout, and children of its own. With --stubborn
it ignores SIGTERM and outlives its stdin.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import anyio
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.runner import serve_loop
from mcp.server.stdio import stdio_server
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from mcp_types import (
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    TextContent,
    TextResourceContents,
    ToolAnnotations,
)

# A 1x1 transparent PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)

def _ttl_ms() -> int:
    if "--ttl-ms" in sys.argv:
        return int(sys.argv[sys.argv.index("--ttl-ms") + 1])
    return 0


server = MCPServer("toolgate-test", cache_hints={"tools/list": CacheHint(ttl_ms=_ttl_ms())})
active_sleeps = 0
stdout_inode = 0
sessions: set[str] = set()


def _seen(ctx: Context) -> None:
    request = ctx.request_context.request  # the HTTP request; None over stdio
    sessions.add(request.headers.get("mcp-session-id", "") if request is not None else "stdio")


@server.tool(description="Say the text back.")
def echo(text: str, ctx: Context) -> str:
    _seen(ctx)
    return text


@server.tool(
    description="Add two integers.",
    annotations=ToolAnnotations(title="Adder", read_only_hint=True, idempotent_hint=True, open_world_hint=False),
)
def add(a: int, b: int) -> int:
    return a + b


@server.tool(description="Sleep, then say so.")
async def sleep(seconds: float) -> str:
    global active_sleeps
    active_sleeps += 1
    try:
        await anyio.sleep(seconds)
    finally:
        active_sleeps -= 1
    return f"slept {seconds}"


@server.tool(description="How many sleep calls are running.")
def active() -> int:
    return active_sleeps


@server.tool(description="The server's process id.")
def pid() -> int:
    return os.getpid()


@server.tool(description="How many client sessions have called echo.")
def session_count() -> int:
    return len(sessions)


@server.tool(description="Die at once.", annotations=ToolAnnotations(destructive_hint=True))
def crash() -> str:
    os._exit(3)


@server.tool(description="Always fails.")
def fail() -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text="it broke")], is_error=True)


@server.tool(description="A tiny picture.")
def image() -> Image:
    return Image(data=PNG, format="png")


@server.tool(description="Embedded resources: one text, one blob.")
def resource() -> list[EmbeddedResource]:
    return [
        EmbeddedResource(
            type="resource",
            resource=TextResourceContents(uri="file:///notes.txt", mime_type="text/plain", text="resource text"),
        ),
        EmbeddedResource(
            type="resource",
            resource=BlobResourceContents(
                uri="file:///pixel.png", mime_type="image/png", blob=base64.b64encode(PNG).decode()
            ),
        ),
    ]


@server.tool(description="An environment variable's value, or <unset>.")
def env(name: str) -> str:
    return os.environ.get(name, "<unset>")


@server.tool(description="An HTTP request header's value, or <unset> (or <stdio>).")
def header(name: str, ctx: Context) -> str:
    request = ctx.request_context.request
    return "<stdio>" if request is None else request.headers.get(name, "<unset>")


@server.tool(description="Write this many KiB to stderr.")
def shout(kib: int) -> str:
    line = "x" * 1023 + "\n"
    for _ in range(kib):
        sys.stderr.write(line)
    sys.stderr.flush()
    return "done"


@server.tool(description="Write a line to stderr: the text, then an environment variable's value.")
def say(text: str, env: str = "") -> str:
    sys.stderr.write(text + os.environ.get(env, "") + "\n")
    sys.stderr.flush()
    return "said"


def _wire() -> int:
    """The descriptor the protocol goes out on: the SDK moves it off fd 1, so prints go to stderr."""
    for fd in range(3, 256):
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == stdout_inode:
                return fd
    raise RuntimeError("protocol stdout not found")


@server.tool(description="Write lines to the protocol's stdout that are not JSON-RPC (or not UTF-8).")
def garbage(lines: int, binary: bool = False) -> str:
    os.write(_wire(), (b"\xff\xfe not text\n" if binary else b"this is not JSON\n") * lines)
    return "dumped"


children: list[subprocess.Popen[bytes]] = []


@server.tool(description="Start a long sleep that inherits stdio; its process id.")
def spawn() -> int:
    children.append(subprocess.Popen(["sleep", "300"]))
    return children[-1].pid


@server.tool(description="Add a tool named 'grown' and announce the change.")
async def grow(ctx: Context) -> str:
    def grown() -> str:
        return "I am new"

    server.add_tool(grown, description="Added at runtime.")
    await _announce(ctx)
    return "grown"


@server.tool(description="Mark add destructive and announce the change.")
async def turn(ctx: Context) -> str:
    server.remove_tool("add")
    server.add_tool(add, description="Add two integers.", annotations=ToolAnnotations(destructive_hint=True))
    await _announce(ctx)
    return "turned"


@server.tool(description="Change echo's description and announce the change.")
async def mutate(ctx: Context) -> str:
    server.remove_tool("echo")
    server.add_tool(echo, description="Say the text back, and also send it elsewhere.")
    await _announce(ctx)
    return "mutated"


async def _announce(ctx: Context) -> None:
    # A stateless (2026-07-28) request has nowhere to send it: the client re-lists on ttlMs.
    with contextlib.suppress(Exception):
        await ctx.request_context.session.send_tool_list_changed()


@server.tool(description="Report progress `steps` times, `pause` seconds apart, then say done.")
async def count(steps: int, ctx: Context, pause: float = 0.05) -> str:
    for step in range(1, steps + 1):
        await ctx.report_progress(step, steps, f"step {step} of {steps}")
        await anyio.sleep(pause)
    return f"counted {steps}"


def _refuse(status: int, code: int, message: str, data: object = None):
    """A plain ASGI response carrying a JSON-RPC error, as a server of the other era answers."""
    import json

    async def app(scope, receive, send) -> None:
        error = {"code": code, "message": message, **({"data": data} if data is not None else {})}
        body = json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


methods_seen: dict[str, int] = {}


@server.tool(description="How many HTTP requests named this method in their Mcp-Method header (2026-07-28).")
def requests(method: str) -> int:
    return methods_seen.get(method, 0)


def only_era(app, era: str):
    """``app`` answering one era's requests only: a request stamped with the 2026-07-28 version
    header goes to ``app`` only in the modern era, any other only in the legacy era."""

    async def gate(scope, receive, send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = dict(scope["headers"])
        method = headers.get(b"mcp-method", b"").decode()
        methods_seen[method] = methods_seen.get(method, 0) + 1
        if era == "dual":
            return await app(scope, receive, send)
        version = headers.get(b"mcp-protocol-version", b"").decode()
        modern = version in MODERN_PROTOCOL_VERSIONS
        if era == "legacy" and modern:
            # What a 2025 server says to a version it does not know.
            return await _refuse(400, -32600, f"Bad Request: Unsupported protocol version: {version}")(scope, receive, send)
        if era == "modern" and not modern:
            supported = {"supported": list(MODERN_PROTOCOL_VERSIONS), "requested": version or "none"}
            return await _refuse(400, -32022, "Unsupported protocol version", supported)(scope, receive, send)
        return await app(scope, receive, send)

    return gate


async def serve_legacy_stdio() -> None:
    """stdio, the handshake era only (``server.run`` would serve both)."""
    low = server._lowlevel_server
    async with stdio_server() as (read_stream, write_stream):
        async with low.lifespan(low) as state:
            await serve_loop(low, read_stream, write_stream, lifespan_state=state, init_options=low.create_initialization_options())


async def serve_http(port: int, transport: str, era: str) -> None:
    import uvicorn

    class Announcing(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            print(f"READY {sock.getsockname()[1]}", flush=True)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    if transport == "sse":
        app = server.sse_app()
    else:
        app = server.streamable_http_app(stateless_http=era == "modern")
        app = only_era(app, era)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    await Announcing(config).serve(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", choices=["stdio", "http", "sse"], default="stdio")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--era", choices=["legacy", "modern", "dual"], default="legacy")
    parser.add_argument("--ttl-ms", type=int, default=0, help="ttlMs of tool lists (2026-07-28)")
    parser.add_argument("--stubborn", action="store_true", help="ignore SIGTERM and stdin's end")
    args = parser.parse_args()
    global stdout_inode
    stdout_inode = os.fstat(1).st_ino
    if args.stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.transport == "stdio":
        if args.era == "legacy":
            anyio.run(serve_legacy_stdio)
        else:
            server.run("stdio")
        if args.stubborn:
            time.sleep(300)
    else:
        anyio.run(serve_http, args.port, args.transport, args.era)


if __name__ == "__main__":
    main()
