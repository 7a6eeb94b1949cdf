"""Ids of responses and their items: a type prefix and 32 hex digits, as the hosted API's.

    new_id("resp")            # "resp_19ad3c0f2e1" + 21 random hex digits
    items = with_ids(items)   # each keeps its own id, or gets one with its type's prefix

The digits are the time in milliseconds, then 84 random bits: ids made later sort
later, so the store's indexes on them grow at their right edge and a commit
writes a few pages, not one per index per record at random places. Ids need to
be unique, not secret: every read is also checked against the owner's key.
`random` (seeded from the OS, and again in each forked worker) costs a fraction
of `uuid4` on the request path.
"""

from __future__ import annotations

import random
from collections.abc import Container
from time import time
from typing import Any

PREFIXES = {
    "message": "msg", "function_call": "fc", "function_call_output": "fco", "mcp_call": "mcp",
    "mcp_list_tools": "mcpl", "mcp_approval_request": "mcpr", "mcp_approval_response": "mcpa", "reasoning": "rs",
}  # fmt: skip

_bits = random.getrandbits


def new_id(prefix: str) -> str:
    # One number formatted once: 44 bits of milliseconds (11 hex digits until the year 2527), 84 random.
    return f"{prefix}_{int(time() * 1000) << 84 | _bits(84):032x}"


def with_ids(items: list[dict[str, Any]], only: Container[str] | None = None) -> list[dict[str, Any]]:
    """The items, each with a string id (a new one where it had none); with `only`, just
    the items of those types get one."""
    out = []
    for item in items:
        if (only is None or item["type"] in only) and (not isinstance(item.get("id"), str) or not item["id"]):
            item = {**item, "id": new_id(PREFIXES.get(item["type"], "item"))}
        out.append(item)
    return out
