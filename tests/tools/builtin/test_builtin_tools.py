"""The built-in table, current_time and calculate."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import time
from datetime import datetime, timezone

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.errors import Problems
from gateway.tools import builtin
from gateway.tools.base import SourceContext, ToolError
from gateway.tools.builtin.calculate import Calculate
from gateway.tools.builtin.current_time import CurrentTime
from gateway.tools.builtin.fetch_url import FetchUrl
from gateway.tools.builtin.netguard import Guard
from tests.tools.builtin.test_html import PAGE
from tests.tool_servers import serve


def build(table):
    problems = Problems("toolgate.toml")
    source = builtin.build("builtin", table, problems, "tools.builtin")
    return source, problems.lines


# --- the table -------------------------------------------------------------------


def test_only_configured_builtins_are_on():
    source, problems = build({"current_time": {}, "calculate": {}})
    assert problems == []
    assert sorted(t.name for t in source.tools()) == ["calculate", "current_time"]
    assert source.status().ready


def test_nothing_enabled_builds_no_source():
    assert build({}) == (None, [])
    assert build({"calculate": {"enabled": False}}) == (None, [])


def test_unknown_builtin_and_bad_options_are_problems():
    _, problems = build(
        {
            "wether": {},
            "calculate": {"max_length": "long"},
            "current_time": {"default_timezone": "Mars/Olympus", "colour": "red"},
            "fetch_url": {"enabled": "yes"},
        }
    )
    assert problems == [
        "toolgate.toml: tools.builtin.wether: unknown built-in tool; expected one of "
        "calculate, current_time, fetch_url, list_dir, read_file",
        "toolgate.toml: tools.builtin.calculate.max_length: expected an integer greater than 0, got 'long'",
        "toolgate.toml: tools.builtin.current_time.default_timezone: unknown time zone 'Mars/Olympus'; "
        "expected an IANA name",
        "toolgate.toml: tools.builtin.current_time.colour: unknown key; expected one of default_timezone, enabled, timeout_s",
        "toolgate.toml: tools.builtin.fetch_url.enabled: expected true or false, got 'yes'",
    ]


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("calculate", "enabled, max_length, timeout_s"),
        ("current_time", "default_timezone, enabled, timeout_s"),
        ("fetch_url", "allow, enabled, max_bytes, max_redirects, timeout_s"),
        ("read_file", "dotfiles, enabled, max_bytes, roots, timeout_s"),
        ("list_dir", "dotfiles, enabled, max_entries, roots, timeout_s"),
    ],
)
def test_an_unknown_key_names_every_key_the_builtin_takes(name, accepted, tmp_path):
    table = {"roots": [str(tmp_path)]} if "roots" in accepted else {}
    source, problems = build({name: {**table, "enabled": True, "timeout_s": 5, "colour": "red"}})
    assert problems == [f"toolgate.toml: tools.builtin.{name}.colour: unknown key; expected one of {accepted}"]
    assert source is None
    # Every key the message names is one the table takes.
    keys = dict.fromkeys(accepted.split(", "))
    values = {"enabled": True, "timeout_s": 5, "roots": [str(tmp_path)], "allow": ["a.test"], "default_timezone": "UTC", "dotfiles": False}
    source, problems = build({name: {key: values.get(key, 1) for key in keys}})
    assert problems == [] and [t.timeout_s for t in source.tools()] == [5]


def test_timeout_option_sets_the_tool_timeout():
    source, problems = build({"calculate": {"timeout_s": 2.5}})
    assert problems == []
    assert source.tools()[0].timeout_s == 2.5
    _, problems = build({"calculate": {"timeout_s": 0}})
    assert problems == ["toolgate.toml: tools.builtin.calculate.timeout_s: expected a number greater than 0, got 0"]


def test_a_table_that_is_not_a_table_is_a_problem():
    _, problems = build({"calculate": True})
    assert problems == ["toolgate.toml: tools.builtin.calculate: expected a table"]


# --- current_time ------------------------------------------------------------------

NOON_UTC = datetime(2024, 7, 1, 12, 0, 0, tzinfo=timezone.utc)  # a Monday


async def test_current_time_in_the_asked_zone():
    tool = CurrentTime(now=lambda: NOON_UTC)
    assert await tool.call({"timezone": "Asia/Tokyo"}) == "2024-07-01T21:00:00+09:00 Monday (Asia/Tokyo, JST)"
    assert await tool.call({"timezone": "America/New_York"}) == (
        "2024-07-01T08:00:00-04:00 Monday (America/New_York, EDT)"
    )


async def test_current_time_defaults_to_utc_or_the_configured_zone():
    assert await CurrentTime(now=lambda: NOON_UTC).call({}) == "2024-07-01T12:00:00+00:00 Monday (UTC)"
    berlin = CurrentTime("Europe/Berlin", now=lambda: NOON_UTC)
    assert await berlin.call({}) == "2024-07-01T14:00:00+02:00 Monday (Europe/Berlin, CEST)"
    assert "Europe/Berlin" in berlin.description


async def test_current_time_real_clock_is_now():
    text = await CurrentTime().call({"timezone": "UTC"})
    stamp = datetime.fromisoformat(text.split()[0])
    assert abs(stamp.timestamp() - time.time()) < 5


@pytest.mark.parametrize("name", ["Mars/Olympus", "../../etc/passwd", "Europe", "/etc/localtime", "x" * 300])
async def test_unknown_zone_is_a_tool_error_naming_it(name):
    with pytest.raises(ToolError, match="unknown time zone") as info:
        await CurrentTime().call({"timezone": name})
    assert repr(name) in str(info.value)


async def test_non_string_zone_is_a_tool_error():
    with pytest.raises(ToolError, match="must be a string"):
        await CurrentTime().call({"timezone": 5})


# --- calculate ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression, expected",
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("7 / 2", "3.5"),
        ("7 // 2", "3"),
        ("-7 % 3", "2"),
        ("2 ** 10", "1024"),
        ("2 ** -1", "0.5"),
        ("-(3 - 5)", "2"),
        ("+4", "4"),
        ("0.1 + 0.2", "0.3"),
        ("sqrt(16)", "4"),
        ("abs(-3.5)", "3.5"),
        ("round(2.675, 1)", "2.7"),
        ("round(7.5)", "8"),
        ("min(3, 1, 2) + max(4, 9)", "10"),
        ("floor(2.7) + ceil(2.1)", "5"),
        ("log(e)", "1"),
        ("log(8, 2)", "3"),
        ("sin(0) + cos(0)", "1"),
        ("tan(pi / 4)", "1"),
        ("2 * pi", "6.28318530717959"),
        ("2 ** 100", "1267650600228229401496703205376"),
        ("1e3 * 2", "2000"),
    ],
)
async def test_calculate(expression, expected):
    assert await Calculate().call({"expression": expression}) == expected


@pytest.mark.parametrize(
    "expression, message",
    [
        ("1 / 0", "division by zero"),
        ("5 // 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("1 +", "syntax error"),
        ("2 ^ 3", r"use \*\* for powers"),
        ("__import__('os')", "unknown function '__import__'"),
        ("x + 1", "unknown name 'x'"),
        ("'a' * 3", "not allowed"),
        ("(1).__class__", "not allowed"),
        ("[1, 2]", "not allowed"),
        ("1 if 1 else 2", "not allowed"),
        ("True + 1", "not allowed"),
        ("1j * 2", "not allowed"),
        ("sqrt(x=4)", r"sqrt\(\) takes 1 argument"),
        ("min()", r"min\(\) takes 1 to 100 argument"),
        ("sqrt(-1)", "math error"),
        ("(-8) ** 0.5", "not a real number"),
        ("round(1.5, 1000)", "digits"),
        ("lambda: 1", "not allowed"),
    ],
)
async def test_calculate_refuses_with_a_clear_message(expression, message):
    with pytest.raises(ToolError, match=message):
        await Calculate().call({"expression": expression})


@pytest.mark.parametrize(
    "expression",
    ["9**9**9**9", "2 ** 10 ** 10", "10 ** 5000", "(10 ** 1000) ** 10", "10.0 ** 400", "exp(1000)",
     "(2 ** 4000) * (2 ** 4000)", "1e308 * 10", "sqrt(10 ** 1000)", "floor(1e308) ** 5"],
)
async def test_calculate_huge_results_fail_fast(expression):
    started = time.monotonic()
    with pytest.raises(ToolError, match="too large|not a finite number"):
        await Calculate().call({"expression": expression})
    assert time.monotonic() - started < 1


async def test_calculate_bounds_expression_length_and_nesting():
    with pytest.raises(ToolError, match="too long"):
        await Calculate().call({"expression": "1+" * 600 + "1"})
    with pytest.raises(ToolError, match="syntax error|too deeply nested"):
        await Calculate().call({"expression": "(" * 300 + "1" + ")" * 300})
    assert await Calculate().call({"expression": "+".join(["1"] * 499)}) == "499"


async def test_calculate_needs_an_expression():
    with pytest.raises(ToolError, match="non-empty string"):
        await Calculate().call({"expression": "  "})
    with pytest.raises(ToolError, match="non-empty string"):
        await Calculate().call({})


def test_calculate_max_length_option():
    source, problems = build({"calculate": {"max_length": 50}})
    assert problems == []
    assert source.tools()[0].max_length == 50


# --- fetch_url ---------------------------------------------------------------------

class Chunks(httpx.AsyncByteStream):
    """A streamed body that counts how much of it was pulled."""

    def __init__(self, chunks):
        self.chunks = chunks
        self.pulled = 0

    async def __aiter__(self):
        for chunk in self.chunks:
            self.pulled += 1
            yield chunk


def public_tool(handler, **options):
    async def resolve(host, port):
        return ["93.184.216.34"]

    tool = FetchUrl(Guard(resolve=resolve), **options)
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return tool, client


async def fetch(handler, arguments, **options):
    tool, client = public_tool(handler, **options)
    async with client:
        await tool.start(SourceContext(http=client))
        return await tool.call(arguments)


def html(body, **headers):
    return lambda request: httpx.Response(200, html=body, headers=headers)


async def test_fetch_html_as_markdown_and_text():
    text = await fetch(html(PAGE), {"url": "https://site.test/a/b"})
    assert text.startswith("URL: https://site.test/a/b\nTitle: The Page\n\n# Hello *world*\n\n")
    assert "[link here](https://site.test/docs/x)" in text
    text = await fetch(html(PAGE), {"url": "https://site.test/a/b", "format": "text"})
    assert "Some text with a link here and bold." in text and "[" not in text


async def test_fetch_plain_text_and_json_pass_through():
    text = await fetch(lambda r: httpx.Response(200, json={"a": [1, 2]}), {"url": "http://site.test/api"})
    assert text == 'URL: http://site.test/api\n\n{"a":[1,2]}'
    text = await fetch(lambda r: httpx.Response(200, text="<b>not html</b>"), {"url": "http://site.test/t"})
    assert text.endswith("<b>not html</b>")


async def test_fetch_charset_from_meta():
    body = '<html><head><meta charset="iso-8859-1"></head><body><p>caf\xe9</p></body></html>'.encode("latin-1")
    text = await fetch(lambda r: httpx.Response(200, content=body, headers={"content-type": "text/html"}),
                       {"url": "http://site.test/"})
    assert text.endswith("café")


async def test_fetch_refuses_binary_content():
    with pytest.raises(ToolError, match="cannot read image/png content"):
        await fetch(lambda r: httpx.Response(200, content=b"\x89PNG\x00", headers={"content-type": "image/png"}),
                    {"url": "http://site.test/x.png"})


async def test_fetch_error_status_is_a_tool_error_with_an_excerpt():
    page = "<html><body><h1>Not Found</h1><p>" + "x" * 1000 + "</p></body></html>"
    with pytest.raises(ToolError) as info:
        await fetch(lambda r: httpx.Response(404, html=page), {"url": "http://site.test/missing"})
    message = str(info.value)
    assert message.startswith("HTTP 404 from http://site.test/missing: Not Found x")
    assert len(message) < 400


async def test_fetch_byte_cap_stops_reading():
    stream = Chunks(itertools.repeat(b"a" * 1000))  # endless
    text = await fetch(lambda r: httpx.Response(200, stream=stream, headers={"content-type": "text/plain"}),
                       {"url": "http://site.test/big"}, max_bytes=4500)
    assert "(truncated: only the first 4500 bytes were read)" in text
    assert text.endswith("\n\n" + "a" * 4500)
    assert stream.pulled == 5


async def test_fetch_gzip_bomb_is_capped_while_decoding():
    bomb = gzip.compress(b"\0" * (50 << 20))
    stream = Chunks([bomb[i : i + 4096] for i in range(0, len(bomb), 4096)])
    headers = {"content-type": "text/plain", "content-encoding": "gzip"}
    text = await fetch(lambda r: httpx.Response(200, stream=stream, headers=headers),
                       {"url": "http://site.test/bomb"}, max_bytes=10_000)
    assert "truncated" in text
    assert stream.pulled == 1


async def test_fetch_follows_redirects_up_to_the_cap():
    seen = []

    def handler(request):
        seen.append(request.url.path)
        n = int(request.url.path.strip("/") or 0)
        return httpx.Response(302, headers={"location": f"/{n + 1}"})

    with pytest.raises(ToolError, match=r"too many redirects \(more than 3\)"):
        await fetch(handler, {"url": "http://site.test/"}, max_redirects=3)
    assert seen == ["/", "/1", "/2", "/3"]

    def two_hops(request):
        if request.url.path == "/done":
            return httpx.Response(200, text="arrived")
        return httpx.Response(301, headers={"location": "/done" if request.url.path == "/b" else "/b"})

    assert await fetch(two_hops, {"url": "http://site.test/a"}) == "URL: http://site.test/done\n\narrived"


async def test_fetch_time_cap():
    class Slow(httpx.AsyncByteStream):
        async def __aiter__(self):
            yield b"start"
            await asyncio.sleep(30)
            yield b"never"

    tool, client = public_tool(lambda r: httpx.Response(200, stream=Slow()), timeout_s=0.2)
    async with client:
        await tool.start(SourceContext(http=client))
        with pytest.raises(ToolError, match="took longer than 0.2 s"):
            await tool.call({"url": "http://site.test/slow"})


async def test_fetch_argument_errors():
    cases = [
        ({}, "url must be"),
        ({"url": "http://x.test", "format": "pdf"}, "format must be"),
        ({"url": "http://[bad/"}, "not a valid host"),
        ({"url": "http://a\x00b/"}, "not a valid URL"),
    ]
    for arguments, message in cases:
        with pytest.raises(ToolError, match=message):
            await fetch(html("x"), arguments)


async def test_fetch_transport_errors_are_tool_errors():
    def refuse(request):
        raise httpx.ConnectError("refused")

    with pytest.raises(ToolError, match="fetching http://site.test/ failed: ConnectError"):
        await fetch(refuse, {"url": "http://site.test/"})


async def test_fetch_against_a_real_server_with_its_own_client():
    async def page(request):
        return HTMLResponse(f"<title>T</title><h1>Host {request.headers['host']}</h1>")

    async def old(request):
        return RedirectResponse("/page", status_code=302)

    async def packed(request):
        body = gzip.compress(b"<p>" + b"z" * 100_000 + b"</p>")
        return Response(body, headers={"content-encoding": "gzip", "content-type": "text/html"})

    app = Starlette(routes=[Route("/page", page), Route("/old", old), Route("/packed", packed)])
    async with serve(app) as base:
        port = httpx.URL(base).port
        problems = Problems("toolgate.toml")

        async def resolve(host, port):
            return ["127.0.0.1"] if host == "site.test" else []

        source = builtin.build(
            "builtin", {"fetch_url": {"allow": [f"site.test:{port}"], "max_bytes": 50_000}}, problems, "tools.builtin"
        )
        assert problems.lines == []
        (tool,) = source.tools()
        tool.guard.resolve = resolve
        await source.start(SourceContext())
        try:
            text = await tool.call({"url": f"http://site.test:{port}/old"})
            assert text == f"URL: http://site.test:{port}/page\nTitle: T\n\n# Host site.test:{port}"
            text = await tool.call({"url": f"http://site.test:{port}/packed", "format": "text"})
            assert "truncated" in text and "z" * 49_000 in text
            with pytest.raises(ToolError, match="not allowed"):
                await tool.call({"url": f"{base}/page"})  # the bare loopback address is not allowlisted
        finally:
            client = tool._client
            await source.stop()
        assert client.is_closed


async def test_fetch_uses_the_shared_client_and_leaves_it_open():
    tool, client = public_tool(html("x"))
    async with client:
        await tool.start(SourceContext(http=client))
        await tool.stop()
        assert not client.is_closed


def test_fetch_url_options():
    source, problems = build({"fetch_url": {"max_bytes": 10, "max_redirects": 0, "timeout_s": 3, "allow": ["a.b"]}})
    assert problems == []
    (tool,) = source.tools()
    assert (tool.max_bytes, tool.max_redirects, tool.timeout_s) == (10, 0, 3)
    assert tool.guard.hosts == {"a.b"}
    (tool,) = build({"fetch_url": {}})[0].tools()
    assert (tool.max_bytes, tool.max_redirects, tool.timeout_s) == (2 << 20, 5, 20.0)
    _, problems = build({"fetch_url": {"max_bytes": -1, "allow": "everything", "max_redirects": 1.5}})
    assert problems == [
        "toolgate.toml: tools.builtin.fetch_url.max_bytes: expected an integer greater than 0, got -1",
        "toolgate.toml: tools.builtin.fetch_url.max_redirects: expected an integer at least 0, got 1.5",
        "toolgate.toml: tools.builtin.fetch_url.allow: expected a list of non-empty strings, got 'everything'",
    ]
