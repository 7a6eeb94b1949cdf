"""The response store's record, interface, errors, and the encoding both backends share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway.errors import TooLargeToStore

ORDERS = ("asc", "desc")
MAX_LIMIT = 100
# Expired rows purged, and oldest rows evicted, by one write at most: a write's
# work stays bounded however far behind the cleanup is; the next writes catch up.
CLEANUP_BATCH = 64


@dataclass(frozen=True)
class Stored:
    """One stored response: the Response object as returned, and its input items.

    `owner` is an opaque tag (the route passes a hash of the gateway key, "" when
    the gateway has no keys); only the same tag reads, lists or deletes it. Every
    input item carries a string "id": `input_items(after=...)` pages by it.
    """

    id: str
    owner: str
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    created_at: float


class ResponseStore(Protocol):
    async def put(self, stored: Stored) -> None:
        """Store `stored`, replacing a record with the same id; evicts the oldest
        records past the size cap. Raises StoreUnavailable or TooLargeToStore."""

    async def get(self, response_id: str, owner: str) -> Stored | None:
        """The record, or None when it is missing, expired or another owner's."""

    async def input_items(
        self, response_id: str, owner: str, *, after: str | None = None, limit: int = 20, order: str = "desc"
    ) -> tuple[list[dict[str, Any]], bool] | None:
        """One page of input items and whether more follow, or None when the response
        is not found. `after` is an item id (an unknown one gives an empty page)."""

    async def delete(self, response_id: str, owner: str) -> bool:
        """True when the owner's live record was deleted."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Encoded:
    """A record as both backends write it: JSON bytes, and its size for the cap."""

    response: bytes
    items: list[tuple[str, bytes]]  # (item id, item JSON), in input order
    size: int


def encode(stored: Stored, max_bytes: int) -> Encoded:
    items = []
    for index, item in enumerate(stored.input_items):
        item_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(item_id, str) or not item_id:
            raise ValueError(f"input item {index} of {stored.id} has no string id")
        items.append((item_id, orjson.dumps(item)))
    response = orjson.dumps(stored.response)
    size = len(response) + sum(len(blob) for _, blob in items)
    if size > max_bytes:
        raise TooLargeToStore(f"the response takes {size} bytes, more than the response store's whole cap of {max_bytes}")
    return Encoded(response, items, size)


def check_page(limit: int, order: str) -> None:
    # The route validates the query; these are the store's own preconditions.
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}, not {limit!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
