"""The rug-pull guard: a tool whose definition changes after its first listing is left out.

    guard = Guard("files")
    kept = guard.admit(listing)   # the tools of this listing that may be offered

A definition is the description, the input schema and the annotations (a tool listed
read-only, then destructive, is a changed tool). The first definition seen in this process
is the one trusted, whichever era the server speaks and however the listing was re-read
(``list_changed``, a ``ttlMs`` refresh, a reconnect); a changed tool stays out until the
gateway restarts, even if the server changes it back.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import mcp_types as types

logger = logging.getLogger("toolgate.mcp")


def stated_hints(tool: types.Tool) -> dict[str, Any] | None:
    """The hints the server stated, under their wire names; None when it stated none."""
    if tool.annotations is None:
        return None
    return tool.annotations.model_dump(by_alias=True, exclude_none=True, mode="json") or None


def digest(tool: types.Tool) -> str:
    definition = {"description": tool.description or "", "inputSchema": tool.input_schema, "annotations": stated_hints(tool)}
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()


class Guard:
    def __init__(self, server: str) -> None:
        self._server = server
        self._first: dict[str, str] = {}  # tool name -> digest of its first definition
        self._disabled: set[str] = set()

    def admit(self, listing: list[types.Tool]) -> list[types.Tool]:
        kept = []
        for remote in listing:
            first = self._first.setdefault(remote.name, digest(remote))
            if first != digest(remote) and remote.name not in self._disabled:
                self._disabled.add(remote.name)
                logger.warning(
                    "MCP server %r changed the definition of tool %r after first listing it; "
                    "the tool is disabled until the gateway restarts",
                    self._server,
                    remote.name,
                )
            if remote.name not in self._disabled:
                kept.append(remote)
        return kept
