"""The SSRF policy: which URLs a tool may fetch, decided *after* DNS resolution.

::

    guard = Guard.from_config(["wiki.internal", "10.2.0.0/16", "metrics:9100"], problems, key)
    target = await guard.check(httpx.URL("https://example.com/a"))
    # connect to target.ip, with Host and SNI set to target.host: no second lookup

Only http and https on ports 80 and 443 are allowed, and every resolved address
must be public. ``allow`` entries open holes: a host (any address it resolves
to), ``host:port`` (that port too) or a CIDR (addresses inside it).

The blocked networks are listed here rather than taken from ``ipaddress``'s
``is_private``/``is_global``: Python 3.11.7 predates the fix of CVE-2024-4032
in those predicates, and the list is easier to audit than a predicate anyway.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.errors import Problems
from gateway.tools.base import ToolError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

DEFAULT_PORTS = {"http": 80, "https": 443}
ALLOWED_PORTS = frozenset({80, 443})

METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack ...
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "169.254.170.2",  # AWS ECS task credentials
    )
)

BLOCKED_V4 = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network", unspecified
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
    )
)

BLOCKED_V6 = tuple(
    ipaddress.ip_network(n)
    for n in (
        "::/8",  # unspecified, loopback, IPv4-compatible and other reserved
        "100::/64",  # discard
        "2001::/23",  # IETF protocol assignments, Teredo (2001::/32) included
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # SRv6 SIDs
        "fc00::/7",  # unique local (fd00:ec2::254 is in here)
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")

# IPv6 forms that carry an IPv4 address: the IPv4 address decides.
MAPPED = ipaddress.ip_network("::ffff:0:0/96")
TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


def embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside a mapped, translated, NAT64 or 6to4 address."""
    packed = ip.packed
    if ip in MAPPED or ip in TRANSLATED or ip in NAT64:
        return ipaddress.IPv4Address(packed[12:])
    if ip in NAT64_LOCAL:  # RFC 6052 /48: two octets, the reserved u octet, two octets
        return ipaddress.IPv4Address(packed[6:8] + packed[9:11])
    if ip in SIX_TO_FOUR:
        return ipaddress.IPv4Address(packed[2:6])
    return None


def is_blocked(ip: IPAddress) -> bool:
    """Whether ``ip`` is anything but a public unicast address."""
    if ip in METADATA:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_v4(ip)
        if inner is not None and ip not in SIX_TO_FOUR:
            return is_blocked(inner)
        if inner is not None and is_blocked(inner):
            return True
        return ip not in GLOBAL_UNICAST_V6 or any(ip in net for net in BLOCKED_V6)
    return any(ip in net for net in BLOCKED_V4)


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, through the event loop's resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


_LEGACY_V4 = re.compile(r"^[0-9a-fx.]+$", re.IGNORECASE)


def parse_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address, including legacy IPv4 spellings (``127.1``, ``0x7f.0.0.1``,
    ``2130706433``) that resolvers would otherwise turn into addresses behind our back."""
    try:
        return ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        pass
    if _LEGACY_V4.match(host) and any(c.isdigit() for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
        except OSError:
            return None
    return None


@dataclass(frozen=True)
class Target:
    """A checked URL and the address to connect to for it."""

    url: httpx.URL
    host: str  # ASCII (IDNA) and lower case: for DNS, the Host header and SNI
    ip: IPAddress

    @property
    def connect_url(self) -> httpx.URL:
        """The URL with its host replaced by the checked address."""
        return self.url.copy_with(host=str(self.ip))

    @property
    def extensions(self) -> dict[str, str]:
        """httpx request extensions: TLS must name (and verify) the host, not the address."""
        return {"sni_hostname": self.host} if self.url.scheme == "https" else {}

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.url.port is None else f"{host}:{self.url.port}"


class Refused(ToolError):
    """The URL is not one the gateway may fetch."""


class Guard:
    """Checks URLs against the policy; ``resolve`` is the seam tests replace."""

    def __init__(
        self,
        *,
        hosts: Sequence[str] = (),
        host_ports: Sequence[tuple[str, int]] = (),
        networks: Sequence[Network] = (),
        resolve: Resolver = system_resolve,
    ) -> None:
        self.hosts = frozenset(h.lower().rstrip(".") for h in hosts)
        self.host_ports = frozenset((h.lower().rstrip("."), p) for h, p in host_ports)
        self.networks = tuple(networks)
        self.resolve = resolve

    def _policy(self) -> tuple[Any, ...]:
        return (self.hosts, self.host_ports, self.networks, self.resolve)

    def __eq__(self, other: object) -> bool:
        """Same policy, same resolver: a reload keeps a source whose guard is unchanged."""
        return isinstance(other, Guard) and self._policy() == other._policy()

    def __hash__(self) -> int:
        return hash(self._policy())

    @classmethod
    def from_config(
        cls, entries: Sequence[str], problems: Problems, key: str, *, resolve: Resolver = system_resolve
    ) -> Guard | None:
        """A guard for ``allow = [...]``; each bad entry is a problem (then ``None``)."""
        hosts: list[str] = []
        host_ports: list[tuple[str, int]] = []
        networks: list[Network] = []
        ok = True
        for entry in entries:
            parsed = _parse_allow(entry)
            if parsed is None:
                problems.add(key, f"{entry!r}: expected a host, host:port or CIDR network")
                ok = False
            elif isinstance(parsed, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                networks.append(parsed)
            elif isinstance(parsed, tuple):
                host_ports.append(parsed)
            else:
                hosts.append(parsed)
        if not ok:
            return None
        return cls(hosts=hosts, host_ports=host_ports, networks=networks, resolve=resolve)

    async def check(self, url: httpx.URL | str, *, any_port: bool = False) -> Target:
        """The target to connect to for ``url``; ``Refused`` if the policy forbids it.

        ``any_port`` lifts the 80/443 rule (API servers named in an OpenAPI spec)."""
        try:
            url = httpx.URL(url)
            host = url.raw_host.decode("ascii").lower().rstrip(".")
        except (httpx.InvalidURL, UnicodeError):
            raise Refused("not a valid URL") from None
        if url.scheme not in DEFAULT_PORTS:
            raise Refused(f"only http and https URLs can be fetched, not {url.scheme or 'this'!r}")
        if not host:
            raise Refused("the URL has no host")
        if url.userinfo:
            raise Refused("URLs with credentials are not allowed")
        port = url.port or DEFAULT_PORTS[url.scheme]
        literal = parse_ip(host)
        if literal is not None:
            host = str(literal)
        elif len(host) > 253 or not _HOSTNAME.fullmatch(host):
            raise Refused("not a valid host name")
        if not any_port and port not in ALLOWED_PORTS and (host, port) not in self.host_ports:
            raise Refused(f"port {port} is not allowed; only 80 and 443")
        named = host in self.hosts or (host, port) in self.host_ports
        addresses = [literal] if literal is not None else await self._lookup(host, port)
        if not named:
            for ip in addresses:
                if is_blocked(ip) and not any(ip in net for net in self.networks):
                    what = f"address {host}" if literal is not None else f"{host} resolves to an address that"
                    raise Refused(f"{what} is not allowed (private, local or reserved network)")
        return Target(url, host, addresses[0])

    async def _lookup(self, host: str, port: int) -> list[IPAddress]:
        try:
            answers = await self.resolve(host, port)
        except (OSError, UnicodeError):
            raise ToolError(f"could not resolve host {host!r}") from None
        addresses = [parse_ip(str(a)) for a in answers]
        if not addresses or None in addresses:
            raise ToolError(f"could not resolve host {host!r}")
        return addresses  # type: ignore[return-value]


_HOSTNAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


def _parse_allow(entry: str) -> str | tuple[str, int] | Network | None:
    entry = entry.strip().lower()
    if "/" in entry:
        try:
            return ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return None
    if entry.startswith("["):  # [v6] or [v6]:port
        inside, _, rest = entry[1:].partition("]")
        if parse_ip(inside) is None or (rest and not rest.startswith(":")):
            return None
        host, port = inside, rest[1:]
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:
        host, port = entry, ""
    ip = parse_ip(host)
    if ip is not None:
        host = str(ip)
    elif not _HOSTNAME.fullmatch(host.rstrip(".")):
        return None
    if not port:
        return ipaddress.ip_network(host) if ip is not None else host
    if not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)
