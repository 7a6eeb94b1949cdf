"""``fetch_url``: HTTP GET to readable text or Markdown, bounded and SSRF-guarded.

Every hop is checked by ``netguard`` and the request goes to the address that
was checked (``Host`` header and SNI carry the name), so a DNS answer that
changes between check and connect cannot redirect us. Redirects are followed
here, one checked hop at a time; the body is decoded and capped while it is read,
then rendered on the tools' worker threads (``html.py`` does the HTML), so a
hostile page costs the event loop nothing and the tool's timeout still fires.
"""

from __future__ import annotations

import asyncio
import codecs
import re
import zlib
from typing import Any

import httpx

from gateway.tools.base import SourceContext, Tool, ToolError
from gateway.tools.builtin import Options
from gateway.tools.builtin.html import html_to_text
from gateway.tools.builtin.netguard import Guard, Target, system_resolve
from gateway.tools.workers import WORKERS, WorkersBusy

PARAMETERS = {
    "type": "object",
    "properties": {
        "url": {"type": "string", "description": "The http or https URL to fetch."},
        "format": {
            "type": "string",
            "enum": ["markdown", "text"],
            "description": "How to render HTML pages (default markdown).",
        },
    },
    "required": ["url"],
    "additionalProperties": False,
}

REDIRECTS = frozenset({301, 302, 303, 307, 308})
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
TEXT_TYPES = frozenset({"application/json", "application/xml", "application/javascript", "application/x-ndjson"})
USER_AGENT = "toolgate-fetch/0.1"


class FetchUrl(Tool):
    annotations = {"readOnlyHint": True, "openWorldHint": True}

    def __init__(
        self,
        guard: Guard,
        *,
        max_bytes: int = 2 << 20,
        max_redirects: int = 5,
        timeout_s: float = 20.0,
    ) -> None:
        super().__init__(
            "fetch_url",
            "Fetch a public web page or text resource (HTTP GET) and return it as Markdown or plain text.",
            PARAMETERS,
            timeout_s=timeout_s,
        )
        self.guard = guard
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self._client: httpx.AsyncClient | None = None
        self._owns_client = False

    async def start(self, ctx: SourceContext) -> None:
        if ctx.http is not None:
            self._client = ctx.http
        elif self._client is None:
            self._client, self._owns_client = httpx.AsyncClient(trust_env=False), True

    async def stop(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.aclose()
        self._client, self._owns_client = None, False

    async def call(self, arguments: dict[str, Any]) -> str:
        url, fmt = arguments.get("url"), arguments.get("format") or "markdown"
        if not isinstance(url, str) or not url.strip():
            raise ToolError("url must be a non-empty string")
        if fmt not in ("markdown", "text"):
            raise ToolError("format must be 'markdown' or 'text'")
        if self._client is None:
            raise ToolError("fetch_url is not started")
        timeout = self.timeout_s or 20.0
        try:
            async with asyncio.timeout(timeout):
                return await self._fetch(httpx.URL(url.strip()), fmt, timeout)
        except (TimeoutError, httpx.TimeoutException):  # the whole fetch, or one step of it (same bound)
            raise ToolError(f"fetching {url} took longer than {timeout:g} s") from None
        except httpx.InvalidURL:
            raise ToolError(f"not a valid URL: {url}") from None
        except httpx.HTTPError as exc:
            raise ToolError(f"fetching {url} failed: {type(exc).__name__}") from None

    async def _fetch(self, url: httpx.URL, fmt: str, timeout: float) -> str:
        assert self._client is not None
        for _hop in range(self.max_redirects + 1):
            target = await self.guard.check(url)
            request = self._client.build_request(
                "GET",
                target.connect_url,
                headers=_headers(target),
                extensions=target.extensions,
                timeout=timeout,
            )
            # The client's cookie jar is shared by every caller of the gateway.
            request.headers.pop("cookie", None)
            response = await self._client.send(request, stream=True, follow_redirects=False)
            try:
                location = response.headers.get("location")
                if response.status_code in REDIRECTS and location:
                    url = url.join(location)
                    continue
                body, truncated = await read_capped(response, self.max_bytes)
            finally:
                await response.aclose()
            try:
                return await WORKERS.run(_render, url, response, body, truncated, fmt, self.max_bytes)
            except WorkersBusy:
                raise ToolError("the gateway is busy: every tool worker thread is in use; try again") from None
        raise ToolError(f"too many redirects (more than {self.max_redirects})")


def _headers(target: Target) -> dict[str, str]:
    return {
        "Host": target.host_header,
        "User-Agent": USER_AGENT,
        "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.5",
        # Only gzip: read_capped decodes it, bounded.
        "Accept-Encoding": "gzip",
        # The connection was opened for one name's SNI; never let another name reuse it.
        "Connection": "close",
    }


async def read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """At most ``cap`` decoded bytes, and whether there was more.

    Decoding here rather than in httpx bounds each step's output, so a small
    compressed body cannot expand to gigabytes in memory.
    """
    if response.is_stream_consumed:  # a body handed over whole and already decoded (mock transports)
        return response.content[:cap], len(response.content) > cap
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding in ("", "identity"):
        decoder = None
    else:
        raise ToolError(f"unsupported content encoding {encoding!r}")
    out = bytearray()
    async for raw in response.aiter_raw():
        try:
            out += raw if decoder is None else decoder.decompress(raw, cap + 1 - len(out))
        except zlib.error:
            raise ToolError("the response body is not valid gzip") from None
        if len(out) > cap:
            return bytes(out[:cap]), True
    return bytes(out), False


def _render(url: httpx.URL, response: httpx.Response, body: bytes, truncated: bool, fmt: str, cap: int) -> str:
    """The tool's answer for a read response; runs on a worker thread (CPU-bound on big pages)."""
    mime = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    is_html = mime in HTML_TYPES or (not mime and body.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")))
    text = body.decode(_charset(response, body if is_html else b""), errors="replace")
    if response.status_code >= 400:
        excerpt = " ".join((html_to_text(text, str(url), markdown=False)[1] if is_html else text[:2000]).split())
        where = f"HTTP {response.status_code} from {url}"
        raise ToolError(f"{where}: {excerpt[:300]}" if excerpt else where)
    if not is_html and not _is_text(mime, body):
        raise ToolError(f"cannot read {mime or 'binary'} content; only HTML and text are supported")
    title = ""
    if is_html:
        title, text = html_to_text(text, str(url), markdown=fmt == "markdown")
    head = [f"URL: {url}"]
    if title:
        head.append(f"Title: {title}")
    if truncated:
        head.append(f"(truncated: only the first {cap} bytes were read)")
    return "\n".join(head) + "\n\n" + text.strip()


def _is_text(mime: str, body: bytes) -> bool:
    if mime.startswith("text/") or mime in TEXT_TYPES or mime.endswith(("+json", "+xml")):
        return True
    return not mime and b"\x00" not in body[:8192]


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)


def _charset(response: httpx.Response, html: bytes) -> str:
    found = response.charset_encoding
    if not found and html:
        match = _META_CHARSET.search(html[:4096])
        found = match.group(1).decode("ascii") if match else None
    try:
        return codecs.lookup(found or "utf-8").name
    except LookupError:
        return "utf-8"


def build(opts: Options) -> FetchUrl | None:
    max_bytes = opts.number("max_bytes", 2 << 20, integer=True)
    max_redirects = opts.number("max_redirects", 5, integer=True, exclusive=False)
    allow = opts.strings("allow")
    guard = Guard.from_config(allow, opts.problems, f"{opts.key}.allow", resolve=system_resolve)
    if not opts.finish() or guard is None:
        return None
    return FetchUrl(guard, max_bytes=max_bytes, max_redirects=max_redirects)
