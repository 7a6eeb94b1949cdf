"""The two protocol eras a server may speak, and what each changes for its connection.

- The handshake era (2024-11-05 to 2025-11-25): ``initialize``, then a session that lives
  until either side ends it. An idle session is pinged (nothing else would notice that its
  server died or forgot it); ``notifications/tools/list_changed`` says when to re-list.
- The 2026-07-28 revision: stateless, no handshake, every request carries its own version
  and client info. Nothing to keep alive, and no channel for ``list_changed``: a tool list
  carries ``ttlMs``, and is re-read in the background once it is stale.

``mode(spec, learned)`` is the SDK ``Client``'s ``mode=``: the pin, else what this server
answered last time, else ``"auto"`` (``server/discover`` first, then ``initialize``).
"""

from __future__ import annotations

from dataclasses import dataclass

from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from gateway.tools.mcp._config import ServerSpec


@dataclass(frozen=True)
class Era:
    name: str
    ping: bool  # keep an idle session alive, and learn of its death, with ping
    poll: bool  # re-list the tools on the server's ttlMs


HANDSHAKE = Era("handshake", ping=True, poll=False)
STATELESS = Era("stateless", ping=False, poll=True)


def era_of(version: str | None) -> Era:
    return STATELESS if version in MODERN_PROTOCOL_VERSIONS else HANDSHAKE


def mode(spec: ServerSpec, learned: str | None) -> str:
    if spec.transport == "sse":
        return "legacy"  # HTTP+SSE predates the revision: a probe would only cost a round trip
    if spec.protocol != "auto":
        return spec.protocol
    return learned or "auto"


def learned(version: str | None) -> str:
    """The ``mode=`` that reaches this server directly next time."""
    return version if version in MODERN_PROTOCOL_VERSIONS else "legacy"


def stale_after_s(spec: ServerSpec, ttl_ms: int | None) -> float:
    """Seconds a listing stays fresh: the server's ``ttlMs``, within the configured bounds."""
    return min(max((ttl_ms or 0) / 1000, spec.list_ttl_min_s), spec.list_ttl_max_s)
