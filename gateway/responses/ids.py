"""Ids of responses and their items, as the hosted API's: a type prefix and hex digits.

    mint = Mint()                    # mint.response_id: "resp_19ad3c0f2e1" + 21 random hex digits
    mint("msg")                      # "msg_19ad3c0f2e1…" + "0001": an item of that response
    items = with_ids(items, mint)    # each keeps its own id, or gets one from the mint
    holder("msg_19ad3c0f2e1…0001")   # "resp_19ad3c0f2e1…": the response that minted it
    mark(mint.response_id) in "msg_19ad3c0f2e1…0001"   # True: minted for this response

A response id's 32 digits are the time in milliseconds, then 84 random bits: ids
made later sort later, so the store's index on them grows at its right edge and
a commit writes a few pages, not one per record at a random place. An item the
gateway gives an id carries its response's 32 digits and a counter, so the store
finds the item from its id alone, without a row per item in an index: only items
that came from elsewhere (a previous response's, a client's) need one. Ids need
to be unique, not secret: every read is also checked against the owner's key.
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
_DIGITS = 32  # a response id's hex digits after "resp_"
_HEX = frozenset("0123456789abcdef")


def new_id(prefix: str) -> str:
    # One number formatted once: 44 bits of milliseconds (11 hex digits until the year 2527), 84 random.
    return f"{prefix}_{int(time() * 1000) << 84 | _bits(84):032x}"


class Mint:
    """A new response's id, and its items' ids: `{prefix}_{the response's digits}{a counter, 4+ hex}`."""

    __slots__ = ("response_id", "_digits", "_made")

    def __init__(self) -> None:
        self.response_id = new_id("resp")
        self._digits = self.response_id[5:]
        self._made = 0

    def __call__(self, prefix: str) -> str:
        self._made += 1
        return f"{prefix}_{self._digits}{self._made:04x}"


def holder(item_id: str) -> str | None:
    """The id of the response that minted this item id, or None when the gateway did not mint it."""
    digits = item_id[item_id.find("_") + 1 :]
    if len(digits) <= _DIGITS or not _HEX.issuperset(digits):
        return None
    return "resp_" + digits[:_DIGITS]


def mark(response_id: str) -> str | None:
    """What every item id `response_id`'s mint made holds, and no other id the response can
    hold does (its digits: random, and unknown to a client before the response exists), or
    None for a response id the gateway did not make."""
    digits = response_id[5:]
    return digits if len(digits) == _DIGITS and response_id.startswith("resp_") else None


def with_ids(items: list[dict[str, Any]], mint: Mint, only: Container[str] | None = None) -> list[dict[str, Any]]:
    """The items, each with a string id (a new one from `mint` where it had none); with `only`,
    just the items of those types get one."""
    out = []
    for item in items:
        if (only is None or item["type"] in only) and (not isinstance(item.get("id"), str) or not item["id"]):
            item = {**item, "id": mint(PREFIXES.get(item["type"], "item"))}
        out.append(item)
    return out
