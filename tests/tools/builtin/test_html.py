"""HTML to text and Markdown: normal pages, hostile ones, and fetch_url reducing off the event loop."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests.fakellm import Calls, FakeLLM, Reply
from gateway.threads import Threads
from gateway.tools.base import SourceContext, ToolError
from gateway.tools.builtin import fetch_url
from gateway.tools.builtin.fetch_url import FetchUrl
from gateway.tools.builtin.html import MAX_INDENT, html_to_text
from gateway.tools.builtin.netguard import Guard
from tests.support import settings
from tests.test_e2e import serve as serve_gateway
from tests.tool_servers import serve

PAGE = """<!doctype html><html><head><title> The  Page </title>
<style>body { color: red }</style><script>let a = 1 < 2;</script></head>
<body><nav><a href="/">Home</a> <a href="/about">About</a></nav>
<h1>Hello <em>world</em></h1>
<p>Some   text with a <a href="/docs/x">link here</a> and <strong>bold</strong>.<br>Next line.</p>
<div hidden>invisible</div><noscript>enable js</noscript>
<ul><li>one</li><li>two<ol><li>a</li><li>b</li></ol></li></ul>
<h2>Code</h2><pre>def f():
    return 1</pre>
<table><tr><th>A</th><th>B</th></tr><tr><td>1</td><td>2</td></tr></table>
<p>Tom &amp; Jerry <img src="/cat.png" alt="a cat"> <a href="javascript:void(0)">click</a></p>
</body></html>"""

MiB = 1 << 20


def text_of(html: str, markdown: bool = True) -> str:
    return html_to_text(html, "http://h/", markdown=markdown)[1]


# --- normal pages ------------------------------------------------------------------


def test_html_to_markdown():
    title, text = html_to_text(PAGE, "https://site.test/a/b")
    assert title == "The Page"
    assert text == (
        "# Hello *world*\n\n"
        "Some text with a [link here](https://site.test/docs/x) and **bold**.\nNext line.\n\n"
        "- one\n- two\n  1. a\n  2. b\n\n"
        "## Code\n\n```\ndef f():\n    return 1\n```\n\n"
        "A | B\n1 | 2\n\n"
        "Tom & Jerry ![a cat](https://site.test/cat.png) click"
    )


def test_html_to_text():
    _, text = html_to_text(PAGE, "https://site.test/", markdown=False)
    assert text == (
        "Hello world\n\nSome text with a link here and bold.\nNext line.\n\n"
        "- one\n- two\n  1. a\n  2. b\n\nCode\n\ndef f():\n    return 1\n\nA | B\n1 | 2\n\nTom & Jerry a cat click"
    )
    for dropped in ("color", "let a", "Home", "About", "invisible", "enable js"):
        assert dropped not in text


def test_html_reducer_survives_broken_markup():
    _, text = html_to_text("<p>open <b>bold <a href='x'>link<div>block</p></i><h3>t", "http://h/")
    assert "open" in text and "block" in text and "### t" in text


def test_a_space_at_the_end_of_a_link_stays_after_it():
    assert text_of("<p>a <a href=x>link </a>next <b>bold </b>end") == "a [link](http://h/x) next **bold** end"


def test_table_cells_one_bar_each_and_none_trailing():
    html = "<table><tr><th>A </th><th>B</th></tr><tr><td>1</td><td></td><td>3</td><td></td></tr></table>"
    assert text_of(html) == "A | B\n1 | | 3"


def test_headings_and_links_end_the_open_one():
    assert text_of("<h1>one<h2>two</h2>after") == "# one\n\n## two\n\nafter"
    assert text_of("<h2>t</h3>body") == "## t\n\nbody"
    assert text_of("<a href=1>x<a href=2>y</a>") == "[x](http://h/1)[y](http://h/2)"


def test_emphasis_inside_the_same_emphasis_adds_no_marks():
    assert text_of("<b>x<b>y</b>z</b>w") == "**xyz**w"
    assert text_of("<strong><b>x</b></strong> <em><i>y</i></em>") == "**x** *y*"
    assert text_of("<b><i><code>c</code></i></b>") == "***`c`***"
    assert text_of("<b>x</i>y</b>") == "**xy**"  # an end tag that closes nothing is ignored


def test_markup_that_is_not_content_is_dropped():
    html = "<!doctype html><!-- note --><?xml x?><![CDATA[c]]></ bogus>one<!---->two</>three"
    assert text_of(html) == "onetwothree"


def test_raw_text_elements_end_only_at_their_own_end_tag():
    html = "<script>if (a < b) x('</div><p>no')</script><xmp><b>as is</b></xmp><textarea>1 &lt; 2</textarea>"
    assert text_of(html) == "<b>as is</b>1 < 2"
    assert html_to_text("<title>A &amp; <b>B</b></title>")[0] == "A & <b>B</b>"
    assert text_of("<script>never closed <p>x") == ""


def test_the_end_of_the_input_inside_a_construct_drops_the_rest():
    assert text_of('<p>kept<a href="x>gone') == "kept"
    assert text_of("<p>kept<!-- gone <p>gone") == "kept"
    assert text_of("<p>kept <div") == "kept"
    assert text_of("a < b and c <= d, <3") == "a < b and c <= d, <3"


def test_entities_and_references_too_long_to_be_characters():
    assert text_of("&amp; &lt; &#65;&#x42; caf&eacute;") == "& < AB café"
    assert text_of("x&#" + "9" * 5000 + ";y &#x" + "f" * 5000 + "z") == "x\ufffdy \ufffdz"


def test_attributes():
    assert text_of("<a HREF='/a?x=1&amp;y=2' href=/other>q</a>") == "[q](http://h/a?x=1&y=2)"
    assert text_of('<a href="http://[broken/">x</a>') == "[x](http://[broken/)"  # urljoin refuses it
    assert text_of("<a href=/x/>y</a>") == "[y](http://h/x/)"  # the slash is the value's
    assert text_of("<svg><svg/><path d=''/></svg>after <img alt=' a  b ' src='c.png'/>") == "after ![a b](http://h/c.png)"
    assert text_of("<p aria-hidden=true>no</p><input hidden><p class=hidden-ish>yes</p>") == "yes"


def test_rules_and_headings_left_empty():
    assert text_of("a<hr>b") == "a\n\n---\n\nb"
    assert text_of("a<hr>b", markdown=False) == "a\n\nb"
    assert text_of("<p>a</p><h1><pre>  </pre></h1>b", markdown=False) == "a\n\nb"
    assert text_of("<h1><pre> </pre></h1>b", markdown=False) == "b"


def test_deep_lists_are_indented_no_deeper_than_the_cap():
    text = text_of("<ul><li>x" * 20)
    assert text.splitlines()[MAX_INDENT] == "  " * MAX_INDENT + "- x"
    assert text.splitlines()[-1] == "  " * MAX_INDENT + "- x"


# --- hostile pages -----------------------------------------------------------------
# Each must finish; a quadratic step would take minutes here, which the suite's time
# budget catches. The asserts are about the output, never about time.


def soup(size: int, seed: int = 7) -> str:
    """Broken markup: fragments of every construct, in a deterministic random order."""
    pieces = [
        "<b>", "</i>", "<a href='", "'>", "<!--", "-->", "<td>", "<li>", "<ul>", "</ul>", "<h2>", "&#", "&amp",
        "<", ">", '"', "x y ", "<pre>", "</pre>", "<br/>", "<div hidden>", "</div>", "</", "<!", "<?", "=", "</b>",
    ]  # fmt: skip
    rng = random.Random(seed)
    out, length = [], 0
    while length < size:
        piece = rng.choice(pieces)
        out.append(piece)
        length += len(piece)
    return "".join(out)


HOSTILE = {
    "b-250k": ("<b>x" * (250 << 10 >> 2), lambda t: t == "**" + "x" * (250 << 10 >> 2) + "**"),
    "b-2m": ("<b>x" * (2 * MiB >> 2), lambda t: t == "**" + "x" * (2 * MiB >> 2) + "**"),
    "a-2m": ("<a href=x>" * (2 * MiB // 10), lambda t: t == ""),
    "a-text-250k": ("<a href=x>y" * (250 << 10 >> 3), lambda t: t == "[y](http://h/x)" * (250 << 10 >> 3)),
    "div-100k-deep": ("<div>" * 100_000 + "deep", lambda t: t == "deep"),
    "li-100k": ("<li>x" * 100_000, lambda t: t.splitlines() == ["- x"] * 100_000),
    "ul-100k-deep": ("<ul><li>x" * 100_000, lambda t: len(t.splitlines()) == 100_000),
    "td-100k": ("<td>x" * 100_000, lambda t: t == " | ".join(["x"] * 100_000)),
    "hidden-100k-deep": ("<div hidden>" * 100_000 + "no" + "</div>" * 100_000 + "yes", lambda t: t == "yes"),
    "attribute-2m": ("<a href='" + "y" * 2 * MiB + "'>x</a>", lambda t: t == f"[x](http://h/{'y' * 2 * MiB})"),
    "attributes-100k": ("<p " + "a=1 " * 100_000 + "hidden>no</p>yes", lambda t: t == "yes"),
    "unclosed-tag": ("<a" * MiB, lambda t: t == ""),
    "unclosed-end-tag": ("</" * MiB, lambda t: t == ""),
    "unclosed-comment": ("<!--" * (MiB >> 1), lambda t: t == ""),
    "lt-2m": ("<" * 2 * MiB, lambda t: t == "<" * 2 * MiB),
    "charrefs": ("&#65" * (MiB >> 2), lambda t: t == "A" * (MiB >> 2)),
    "soup-2m": (soup(2 * MiB), lambda t: isinstance(t, str)),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_pages_finish_with_the_expected_text(name):
    html, expected = HOSTILE[name]
    for markdown in (True, False) if name == "soup-2m" else (True,):
        text = text_of(html, markdown)
        assert expected(text), text[:200]
        # The output stays proportional to the input, whatever the nesting.
        assert len(text) <= 3 * len(html)


def test_text_format_of_hostile_emphasis():
    assert text_of("<b><i>x" * 100_000, markdown=False) == "x" * 100_000


# --- off the event loop ------------------------------------------------------------


async def fetch_page(body: str, **options) -> str:
    async def resolve(host, port):
        return ["93.184.216.34"]

    tool = FetchUrl(Guard(resolve=resolve), **options)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, html=body))
    async with httpx.AsyncClient(transport=transport) as client:
        await tool.start(SourceContext(http=client))
        return await tool.call({"url": "https://site.test/"})


async def test_fetch_reduces_on_a_worker_thread(monkeypatch):
    threads = []

    def reduce(*args, **kwargs):
        threads.append(threading.current_thread())
        return html_to_text(*args, **kwargs)

    monkeypatch.setattr(fetch_url, "html_to_text", reduce)
    assert (await fetch_page("<p>hi")).endswith("\n\nhi")
    assert threads and threads[0] is not threading.main_thread()


async def test_fetch_timeout_fires_while_the_reduction_runs(monkeypatch):
    started, release = threading.Event(), threading.Event()

    def stuck(*args, **kwargs):
        started.set()
        release.wait(30)
        return "", ""

    monkeypatch.setattr(fetch_url, "html_to_text", stuck)
    try:
        with pytest.raises(ToolError, match="took longer than 0.2 s"):
            await fetch_page("<p>hi", timeout_s=0.2)
        assert started.is_set() and not release.is_set()  # the thread was still reducing
    finally:
        release.set()


async def test_fetch_when_every_worker_thread_is_busy(monkeypatch):
    pool, release = Threads("toolgate-tool", threads=1, queued=0), threading.Event()
    monkeypatch.setattr(fetch_url, "WORKERS", pool)
    blocker = asyncio.create_task(pool.run(release.wait, 30))
    await asyncio.sleep(0)
    try:
        with pytest.raises(ToolError, match="the gateway is busy"):
            await fetch_page("<p>hi")
    finally:
        release.set()
        await blocker


def probe(port: int, stop: threading.Event, seen: list[tuple[float, float, bytes]]) -> None:
    """``GET /healthz`` on a fresh connection again and again until ``stop``, from a thread
    of its own: a blocked event loop shows as a slow answer, not as a probe never sent."""
    for _ in range(100_000):
        if stop.is_set():
            return
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: toolgate\r\nconnection: close\r\n\r\n")
            answer = b"".join(iter(lambda: sock.recv(65536), b""))
        seen.append((began, time.monotonic() - began, answer.split(b"\r\n", 1)[0]))
        stop.wait(0.02)


async def test_healthz_answers_while_fetch_url_reduces_a_hostile_page():
    hostile = "<b>x" * (2 * MiB >> 2)
    served_at: list[float] = []

    async def page(request):
        served_at.append(time.monotonic())
        return HTMLResponse(hostile)

    async with asyncio.timeout(120), serve(Starlette(routes=[Route("/page", page)])) as site, FakeLLM() as fake:
        fake.push(Calls([("fetch_url", {"url": f"{site}/page"})]), Reply("read it"))
        config = settings(
            {
                "upstreams": {"default": {"url": fake.url, "retries": 0}},
                "models": [{"name": "m", "upstream_model": "fake-model", "tools": ["fetch_url"]}],
                "tools": {"builtin": {"fetch_url": {"allow": [f"127.0.0.1:{httpx.URL(site).port}"]}}},
            }
        )
        async with serve_gateway(config) as (base, _), httpx.AsyncClient(timeout=60) as client:
            stop, seen = threading.Event(), []
            prober = threading.Thread(target=probe, args=(httpx.URL(base).port, stop, seen))
            prober.start()
            try:
                body = {"model": "m", "messages": [{"role": "user", "content": "go"}]}
                reply = await client.post(f"{base}/chat/completions", json=body)
            finally:
                stop.set()
                await asyncio.to_thread(prober.join, 30)  # its last probe needs this loop to answer
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == "read it"
    tool_message = fake.requests[1].body["messages"][-1]
    assert tool_message["role"] == "tool" and "**xxxx" in tool_message["content"]
    during = [(took, status) for began, took, status in seen if began + took >= served_at[0]]
    assert during, "no /healthz was asked while the tool ran"
    assert all(status == b"HTTP/1.1 200 OK" for _, status in during)
    slowest = max(took for took, _ in during)
    assert slowest < 0.5, f"/healthz took {slowest:.3f} s while fetch_url reduced the page"
