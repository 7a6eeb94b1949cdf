"""The SSRF policy, alone and through fetch_url: refused before any connection."""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from gateway.errors import Problems
from gateway.tools.base import SourceContext, ToolError
from gateway.tools.builtin.fetch_url import FetchUrl
from gateway.tools.builtin.netguard import Guard, Refused, is_blocked, parse_ip

BLOCKED = [
    "0.0.0.0", "0.1.2.3", "10.0.0.1", "10.255.255.255", "100.64.0.1", "100.127.255.254",
    "100.100.100.200", "127.0.0.1", "127.255.0.1", "169.254.0.1", "169.254.169.254", "169.254.170.2",
    "172.16.0.1", "172.31.255.255", "192.0.0.1", "192.0.0.9", "192.0.2.1", "192.88.99.1", "192.168.1.1",
    "198.18.0.1", "198.51.100.7", "203.0.113.9", "224.0.0.1", "239.255.255.250", "240.0.0.1",
    "255.255.255.255",
    "::", "::1", "::127.0.0.1", "fe80::1", "fe80::1%eth0", "fec0::1", "fc00::1", "fd12:3456::1",
    "fd00:ec2::254", "ff02::1", "100::1", "2001:db8::1", "3fff::1", "5f00::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001:20::1",  # ORCHIDv2, inside 2001::/23
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::ffff:0:a9fe:a9fe",
    "64:ff9b::127.0.0.1", "64:ff9b::a9fe:a9fe", "64:ff9b::10.1.2.3",
    "64:ff9b:1:a00:0:100::",  # local-use NAT64 of 10.0.0.1
    "2002:7f00:1::1", "2002:a9fe:a9fe::", "2002:c0a8:101::1",  # 6to4 around private addresses
    "4000::1", "8000::1",  # outside 2000::/3: not allocated
]
PUBLIC = [
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "100.128.0.1", "172.32.0.1", "192.169.0.1",
    "2606:4700:4700::1111", "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8", "64:ff9b::8.8.8.8", "2002:808:808::1",
    "64:ff9b:1:808:8:800::",  # local-use NAT64 of 8.8.8.8
]


@pytest.mark.parametrize("address", BLOCKED)
def test_blocked_addresses(address):
    assert is_blocked(parse_ip(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses(address):
    assert not is_blocked(parse_ip(address))


def test_local_use_nat64_embedding_is_decoded():
    from gateway.tools.builtin.netguard import embedded_v4

    assert embedded_v4(ipaddress.IPv6Address("64:ff9b:1:a00:0:100::")) == ipaddress.IPv4Address("10.0.0.1")


@pytest.mark.parametrize("spelling", ["127.1", "0x7f.0.0.1", "0x7f000001", "2130706433", "017700000001", "127.0.0.1."])
def test_legacy_ipv4_spellings_are_addresses(spelling):
    assert parse_ip(spelling) == ipaddress.IPv4Address("127.0.0.1")


def test_names_are_not_addresses():
    assert parse_ip("example.com") is None
    assert parse_ip("deadbeef.example") is None
    assert parse_ip("face") is None  # no digits: a name


class FakeDNS:
    """The resolver seam: answers from a table (a list of answers is used one per lookup)."""

    def __init__(self, table):
        self.table = table
        self.lookups: list[str] = []

    async def __call__(self, host, port):
        self.lookups.append(host)
        answer = self.table.get(host)
        if answer is None:
            raise OSError("name not known")
        if isinstance(answer[0], list):
            return answer.pop(0) if len(answer) > 1 else answer[0]
        return answer


DNS = {
    "public.test": ["93.184.216.34"],
    "internal.test": ["10.0.0.7"],
    "localhost": ["127.0.0.1", "::1"],
    "metadata.test": ["169.254.169.254"],
    "mixed.test": ["93.184.216.34", "192.168.0.10"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "nat64.test": ["64:ff9b::a9fe:a9fe"],
    "v6.test": ["2606:4700:4700::1111"],
}


def guard(allow=(), table=DNS):
    problems = Problems("toolgate.toml")
    made = Guard.from_config(list(allow), problems, "allow", resolve=FakeDNS(dict(table)))
    assert problems.lines == []
    return made


async def test_check_resolves_and_pins_the_address():
    target = await guard().check("https://Public.Test./path?q=1")
    assert target.host == "public.test"
    assert str(target.ip) == "93.184.216.34"
    assert str(target.connect_url) == "https://93.184.216.34/path?q=1"
    assert target.host_header == "public.test"


async def test_ipv6_target_brackets():
    target = await guard().check("http://v6.test/")
    assert str(target.connect_url) == "http://[2606:4700:4700::1111]/"
    target = await guard(["[2606:4700:4700::1111]:8080"]).check("http://[2606:4700:4700::1111]:8080/x")
    assert target.host_header == "[2606:4700:4700::1111]:8080"


@pytest.mark.parametrize(
    "url",
    [
        "http://internal.test/", "http://localhost/", "http://metadata.test/latest/meta-data/",
        "http://mixed.test/", "http://mapped.test/", "http://nat64.test/",
        "http://127.0.0.1/", "http://127.1/", "http://2130706433/", "http://0x7f.0.0.1/",
        "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[fd00:ec2::254]/", "http://169.254.169.254/",
        "http://[64:ff9b::a9fe:a9fe]/", "http://100.100.100.200/", "http://0.0.0.0/",
    ],
)
async def test_internal_targets_refused(url):
    with pytest.raises(Refused, match="not allowed"):
        await guard().check(url)


async def test_refusal_does_not_name_the_internal_address():
    with pytest.raises(Refused) as info:
        await guard().check("http://internal.test/")
    assert "10.0.0.7" not in str(info.value)
    assert "internal.test" in str(info.value)


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://public.test/", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://public.test:70/", "only http and https"),
        ("http://public.test:8080/", "port 8080 is not allowed"),
        ("http://public.test:22/", "port 22 is not allowed"),
        ("https://public.test:6443/", "port 6443 is not allowed"),
        ("http://user:pw@public.test/", "credentials"),
        ("http:///nohost", "no host"),
    ],
)
async def test_schemes_ports_and_odd_urls_refused_without_lookup(url, message):
    checker = guard()
    with pytest.raises(Refused, match=message):
        await checker.check(url)
    assert checker.resolve.lookups == []


async def test_allowlist_host_host_port_and_cidr():
    assert str((await guard(["internal.test"]).check("http://internal.test/")).ip) == "10.0.0.7"
    with pytest.raises(Refused, match="port 8080"):
        await guard(["internal.test"]).check("http://internal.test:8080/")
    assert (await guard(["internal.test:8080"]).check("http://internal.test:8080/")).host_header == (
        "internal.test:8080"
    )
    assert str((await guard(["10.0.0.0/24"]).check("http://internal.test/")).ip) == "10.0.0.7"
    with pytest.raises(Refused):
        await guard(["10.0.1.0/24"]).check("http://internal.test/")
    assert str((await guard(["127.0.0.1"]).check("http://127.1/")).ip) == "127.0.0.1"
    assert str((await guard(["127.0.0.1:8000"]).check("http://127.0.0.1:8000/")).ip) == "127.0.0.1"
    # allowing one internal host does not open the others
    with pytest.raises(Refused):
        await guard(["internal.test"]).check("http://metadata.test/")


def test_bad_allow_entries_are_problems():
    problems = Problems("toolgate.toml")
    assert Guard.from_config(["ok.example", "10.0.0.0/33", "a b", "host:99999", "[nope]:80"], problems, "k") is None
    assert problems.lines == [
        "toolgate.toml: k: '10.0.0.0/33': expected a host, host:port or CIDR network",
        "toolgate.toml: k: 'a b': expected a host, host:port or CIDR network",
        "toolgate.toml: k: 'host:99999': expected a host, host:port or CIDR network",
        "toolgate.toml: k: '[nope]:80': expected a host, host:port or CIDR network",
    ]


async def test_unresolvable_host():
    with pytest.raises(ToolError, match="could not resolve host 'nowhere.test'"):
        await guard().check("http://nowhere.test/")


# --- through fetch_url: nothing reaches the transport --------------------------------


class Recorder:
    """A transport that records every request and answers from a route table."""

    def __init__(self, routes=None):
        self.routes = routes or {}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        host = request.headers["host"]
        handler = self.routes.get((host, request.url.path))
        if handler is None:
            return httpx.Response(404, text="no route")
        return handler(request) if callable(handler) else handler


async def fetcher(routes=None, *, allow=(), table=DNS, **options):
    recorder = Recorder(routes)
    tool = FetchUrl(guard(allow, table), **options)
    client = httpx.AsyncClient(transport=httpx.MockTransport(recorder))
    await tool.start(SourceContext(http=client))
    return tool, recorder, client


@pytest.mark.parametrize(
    "url",
    ["http://internal.test/", "http://localhost/admin", "http://169.254.169.254/latest/meta-data/",
     "http://[::ffff:169.254.169.254]/", "http://[fd00:ec2::254]/", "http://100.100.100.200/",
     "http://[64:ff9b::a9fe:a9fe]/", "http://mixed.test/", "http://2130706433/", "file:///etc/passwd",
     "http://public.test:2375/", "ftp://public.test/"],
)
async def test_fetch_refuses_before_connecting(url):
    tool, recorder, client = await fetcher()
    async with client:
        with pytest.raises(ToolError, match="not allowed|only http"):
            await tool.call({"url": url})
    assert recorder.requests == []


async def test_fetch_connects_to_the_checked_address_with_host_and_sni():
    page = httpx.Response(200, text="hello", headers={"content-type": "text/plain"})
    tool, recorder, client = await fetcher({("public.test", "/a"): page})
    async with client:
        assert await tool.call({"url": "https://public.test/a"}) == "URL: https://public.test/a\n\nhello"
    (request,) = recorder.requests
    assert request.url.host == "93.184.216.34"
    assert request.headers["host"] == "public.test"
    assert request.extensions["sni_hostname"] == "public.test"
    assert request.headers["connection"] == "close"


async def test_dns_rebinding_cannot_swap_the_address():
    # First answer public, every later answer private: only the first is ever used.
    table = {"rebind.test": [["93.184.216.34"], ["127.0.0.1"]]}
    page = httpx.Response(200, text="fine", headers={"content-type": "text/plain"})
    tool, recorder, client = await fetcher({("rebind.test", "/"): page}, table=table)
    async with client:
        assert (await tool.call({"url": "http://rebind.test/"})).endswith("fine")
    assert tool.guard.resolve.lookups == ["rebind.test"]
    assert [r.url.host for r in recorder.requests] == ["93.184.216.34"]


async def test_redirect_to_internal_address_refused_at_that_hop():
    hop = httpx.Response(302, headers={"location": "http://internal.test/secret"})
    tool, recorder, client = await fetcher({("public.test", "/go"): hop})
    async with client:
        with pytest.raises(ToolError, match="internal.test resolves to an address that is not allowed"):
            await tool.call({"url": "http://public.test/go"})
    assert [r.headers["host"] for r in recorder.requests] == ["public.test"]


@pytest.mark.parametrize(
    "location", ["http://169.254.169.254/latest", "http://[::1]/", "file:///etc/passwd", "http://public.test:25/"]
)
async def test_redirect_to_forbidden_forms_refused(location):
    hop = httpx.Response(301, headers={"location": location})
    tool, recorder, client = await fetcher({("public.test", "/go"): hop})
    async with client:
        with pytest.raises(ToolError, match="not allowed|only http"):
            await tool.call({"url": "http://public.test/go"})
    assert len(recorder.requests) == 1


async def test_allowlisted_internal_host_is_fetched():
    page = httpx.Response(200, text="wiki", headers={"content-type": "text/plain"})
    tool, recorder, client = await fetcher({("internal.test:8080", "/"): page}, allow=["internal.test:8080"])
    async with client:
        assert (await tool.call({"url": "http://internal.test:8080/"})).endswith("wiki")
    assert recorder.requests[0].url.host == "10.0.0.7"
    assert recorder.requests[0].url.port == 8080


async def test_cookies_from_the_shared_client_are_not_sent():
    page = httpx.Response(200, text="ok", headers={"content-type": "text/plain", "set-cookie": "sid=1; Path=/"})
    tool, recorder, client = await fetcher({("public.test", "/"): page})
    async with client:
        client.cookies.set("session", "leak")
        await tool.call({"url": "http://public.test/"})
        await tool.call({"url": "http://public.test/"})
    assert all("cookie" not in r.headers for r in recorder.requests)


async def test_the_system_resolver_is_the_default():
    # "localhost" comes from /etc/hosts: no traffic leaves the machine.
    with pytest.raises(Refused, match="localhost resolves to an address that is not allowed"):
        await Guard().check("http://localhost/")
