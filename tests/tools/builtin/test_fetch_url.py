"""fetch_url over its own httpx client, against pytest-httpx's mocked transport: what each hop
sends (to the checked address, the name in Host), redirects checked hop by hop, statuses,
bodies, caps, and failures as one line for the model."""

from __future__ import annotations

import gzip
import json

import httpx
import pytest
from pytest_httpx import IteratorStream

from gateway.errors import Problems
from gateway.tools import builtin
from gateway.tools.base import SourceContext
from gateway.tools.toolbox import Toolbox

PUBLIC = {"site.test": "93.184.216.34", "other.test": "93.184.216.35", "intranet.test": "10.1.2.3"}


async def fetched(*arguments, **options):
    """Each `arguments` fetched by a configured fetch_url (its own client), as the model reads it."""
    problems = Problems("toolgate.toml")
    source = builtin.build("builtin", {"fetch_url": options}, problems, "tools.builtin")
    assert problems.lines == []
    (tool,) = source.tools()

    async def resolve(host, port):
        return [PUBLIC[host]] if host in PUBLIC else []

    tool.guard.resolve = resolve
    toolbox = Toolbox([source])
    calls = [
        {"id": f"c{i}", "type": "function", "function": {"name": "fetch_url", "arguments": json.dumps(a)}}
        for i, a in enumerate(arguments)
    ]
    await source.start(SourceContext())
    try:
        outcomes = [o async for o in toolbox.run_round(calls, toolbox.select(["*"]))]
    finally:
        await source.stop()
    return [(o.outcome, o.content) for o in outcomes]


async def test_each_request_goes_to_the_checked_address_with_the_name_in_host(httpx_mock):
    httpx_mock.add_response(
        url="https://93.184.216.34/a?q=1",
        match_headers={"Host": "site.test", "Accept-Encoding": "gzip", "Connection": "close", "User-Agent": "toolgate-fetch/0.1"},
        match_extensions={"sni_hostname": "site.test", "timeout": {"connect": 20.0, "read": 20.0, "write": 20.0, "pool": 20.0}},
        text="hello",
    )
    assert await fetched({"url": "https://site.test/a?q=1"}) == [("ok", "URL: https://site.test/a?q=1\n\nhello")]


async def test_no_cookie_no_credentials_and_no_trace_context_reach_a_page(httpx_mock):
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gateway import tracing

    httpx_mock.add_response(url="http://93.184.216.34/one", text="1", headers={"set-cookie": "session=abc; Path=/"})
    httpx_mock.add_response(url="http://93.184.216.34/two", text="2")
    tracing.setup({}, exporter=InMemorySpanExporter())
    try:
        with tracing._tracer.start_as_current_span("request"):
            assert [c for _, c in await fetched({"url": "http://site.test/one"}, {"url": "http://site.test/two"})] == [
                "URL: http://site.test/one\n\n1", "URL: http://site.test/two\n\n2",
            ]  # fmt: skip
    finally:
        tracing.shutdown()
    for request in httpx_mock.get_requests():
        assert {"cookie", "authorization", "traceparent", "tracestate"}.isdisjoint(request.headers)


async def test_the_environments_proxy_settings_never_apply_to_a_fetch(monkeypatch):
    """A fetch goes to the address the guard checked, never through an HTTP(S)_PROXY of the
    process environment (which would connect to wherever the proxy resolves the name)."""
    import asyncio

    proxied: list[bytes] = []

    async def proxy(reader, writer):
        proxied.append(await reader.read(1024))
        writer.close()

    async def site(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 6\r\nconnection: close\r\n\r\ndirect")
        await writer.drain()
        writer.close()

    listeners = [await asyncio.start_server(handler, "127.0.0.1", 0) for handler in (proxy, site)]
    proxy_port, site_port = (listener.sockets[0].getsockname()[1] for listener in listeners)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy_port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    url = f"http://127.0.0.1:{site_port}/page"
    try:
        outcomes = await fetched({"url": url}, allow=[f"127.0.0.1:{site_port}"])
    finally:
        for listener in listeners:
            listener.close()
            await listener.wait_closed()
    assert outcomes == [("ok", f"URL: {url}\n\ndirect")] and proxied == []


async def test_redirects_are_followed_one_checked_hop_at_a_time(httpx_mock):
    httpx_mock.add_response(url="http://93.184.216.34/old", status_code=301, headers={"location": "https://other.test/new"})
    httpx_mock.add_response(url="https://93.184.216.35/new", status_code=307, headers={"location": "/final"})
    httpx_mock.add_response(url="https://93.184.216.35/final", match_headers={"Host": "other.test"}, html="<title>T</title><p>here</p>")
    assert await fetched({"url": "http://site.test/old"}) == [("ok", "URL: https://other.test/final\nTitle: T\n\nhere")]


async def test_a_redirect_to_a_private_address_is_refused_before_any_request(httpx_mock):
    httpx_mock.add_response(url="http://93.184.216.34/go", status_code=302, headers={"location": "http://intranet.test/admin"})
    assert await fetched({"url": "http://site.test/go"}) == [
        ("error", "Error: intranet.test resolves to an address that is not allowed (private, local or reserved network)")
    ]
    assert len(httpx_mock.get_requests()) == 1  # nothing went to 10.1.2.3


async def test_too_many_redirects_is_a_tool_error(httpx_mock):
    for n in range(3):
        httpx_mock.add_response(url=f"http://93.184.216.34/{n}", status_code=302, headers={"location": f"/{n + 1}"})
    assert await fetched({"url": "http://site.test/0"}, max_redirects=2) == [("error", "Error: too many redirects (more than 2)")]


@pytest.mark.parametrize(
    ("response", "content"),
    [
        ({"status_code": 404, "html": "<h1>Gone</h1><p>see elsewhere</p>"}, "Error: HTTP 404 from http://site.test/x: Gone see elsewhere"),
        ({"status_code": 500, "text": ""}, "Error: HTTP 500 from http://site.test/x"),
        ({"status_code": 503, "text": "busy\n\n  now"}, "Error: HTTP 503 from http://site.test/x: busy now"),
        ({"content": b"\x89PNG\r\n\x00", "headers": {"content-type": "image/png"}}, "Error: cannot read image/png content; only HTML and text are supported"),
        ({"content": b"\x00\x01binary", "headers": {"content-type": ""}}, "Error: cannot read binary content; only HTML and text are supported"),
        ({"content": b"x", "headers": {"content-encoding": "br"}}, "Error: unsupported content encoding 'br'"),
    ],
)
async def test_statuses_and_bodies_it_cannot_read_are_one_line_for_the_model(httpx_mock, response, content):
    httpx_mock.add_response(url="http://93.184.216.34/x", **response)
    assert await fetched({"url": "http://site.test/x"}) == [("error", content)]


async def test_json_and_text_bodies_pass_through(httpx_mock):
    httpx_mock.add_response(url="http://93.184.216.34/j", json={"a": [1, 2]})
    httpx_mock.add_response(url="http://93.184.216.34/t", content="caf\xe9".encode("latin-1"), headers={"content-type": "text/plain; charset=latin-1"})
    assert [c for _, c in await fetched({"url": "http://site.test/j"}, {"url": "http://site.test/t"})] == [
        'URL: http://site.test/j\n\n{"a":[1,2]}', "URL: http://site.test/t\n\ncaf\xe9",
    ]  # fmt: skip


async def test_oversized_bodies_are_cut_while_read_plain_or_gzipped(httpx_mock):
    httpx_mock.add_response(url="http://93.184.216.34/big", stream=IteratorStream([b"a" * 600] * 1000), headers={"content-type": "text/plain"})
    packed = gzip.compress(b"b" * 1_000_000)
    httpx_mock.add_response(
        url="http://93.184.216.34/packed",
        stream=IteratorStream([packed[i : i + 512] for i in range(0, len(packed), 512)]),
        headers={"content-type": "text/plain", "content-encoding": "gzip"},
    )
    big, gzipped = await fetched({"url": "http://site.test/big"}, {"url": "http://site.test/packed"}, max_bytes=1000)
    assert big == ("ok", "URL: http://site.test/big\n(truncated: only the first 1000 bytes were read)\n\n" + "a" * 1000)
    assert gzipped == ("ok", "URL: http://site.test/packed\n(truncated: only the first 1000 bytes were read)\n\n" + "b" * 1000)


@pytest.mark.parametrize(
    ("error", "content"),
    [
        (httpx.ReadTimeout("slow"), "Error: fetching http://site.test/x took longer than 20 s"),
        (httpx.ConnectTimeout("slow"), "Error: fetching http://site.test/x took longer than 20 s"),
        (httpx.ConnectError("refused"), "Error: fetching http://site.test/x failed: ConnectError"),
        (httpx.RemoteProtocolError("reset"), "Error: fetching http://site.test/x failed: RemoteProtocolError"),
        (RuntimeError("a bug"), "Error: fetch_url failed (RuntimeError)."),
    ],
)
async def test_transport_failures_are_one_line_never_a_traceback(httpx_mock, error, content):
    httpx_mock.add_exception(error, url="http://93.184.216.34/x")
    assert await fetched({"url": "http://site.test/x"}) == [("error", content)]


async def test_a_url_the_policy_refuses_sends_nothing(httpx_mock):
    refused = await fetched(
        {"url": "http://intranet.test/"}, {"url": "http://127.0.0.1/"}, {"url": "http://site.test:8080/"}, {"url": "ftp://site.test/"}
    )
    assert refused == [
        ("error", "Error: intranet.test resolves to an address that is not allowed (private, local or reserved network)"),
        ("error", "Error: address 127.0.0.1 is not allowed (private, local or reserved network)"),
        ("error", "Error: port 8080 is not allowed; only 80 and 443"),
        ("error", "Error: only http and https URLs can be fetched, not 'ftp'"),
    ]
    assert httpx_mock.get_requests() == []
