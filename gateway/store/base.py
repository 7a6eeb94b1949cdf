"""The response store's record, interface, errors, and the encoding both backends share."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from gateway.errors import StoreUnavailable, TooLargeToStore
from gateway.responses.ids import mark
from gateway.threads import Busy

ORDERS = ("asc", "desc")
MAX_LIMIT = 100
# Expired rows purged, and oldest rows evicted, by one write at most: a write's
# work stays bounded however far behind the cleanup is; the next writes catch up.
CLEANUP_BATCH = 64


# Not frozen: one is built on the event loop for every stored response, and a frozen
# dataclass's __init__ pays an object.__setattr__ call per field. Nothing assigns to one.
@dataclass(slots=True)
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
    # `response` as JSON when the caller has it already (the bytes it sent): encoded once.
    response_json: bytes = field(default=b"", repr=False, compare=False)


class ResponseStore(Protocol):
    async def put(self, stored: Stored) -> None:
        """Store `stored`, replacing a record with the same id; evicts the oldest
        records past the size cap. Raises StoreUnavailable or TooLargeToStore."""

    def submit(self, stored: Stored) -> asyncio.Future[None]:
        """`put` as a future that runs on whether or not anyone awaits it (bounded as put)."""

    async def get(self, response_id: str, owner: str) -> Stored | None:
        """The record, or None when it is missing, expired or another owner's."""

    async def input_items(
        self, response_id: str, owner: str, *, after: str | None = None, limit: int = 20, order: str = "desc"
    ) -> tuple[list[dict[str, Any]], bool] | None:
        """One page of input items and whether more follow, or None when the response
        is not found. `after` is an item id (an unknown one gives an empty page)."""

    async def delete(self, response_id: str, owner: str) -> bool:
        """True when the owner's live record was deleted."""

    async def find_item(self, item_id: str, owner: str) -> dict[str, Any] | None:
        """The item with this id, input or output, of any live response of the owner
        (the newest one's when several hold it), or None."""

    async def close(self) -> None: ...


@dataclass(slots=True)
class Encoded:
    """A record as both backends write it: JSON bytes, its item ids, and its size for the cap."""

    response: bytes
    input: bytes  # the input items as one JSON array, in order
    # (item id, place): each output item's (-1 - its index; one without an id is left out),
    # then each input item's (its index); but not an item this response minted (`mark`):
    # the store finds that one from its id alone (`find_minted`).
    places: list[tuple[str, int]]
    size: int  # the response's JSON and the input array's


def encode(stored: Stored, max_bytes: int, input_json: bytes = b"") -> Encoded:
    """`input_json`: the input array when the caller has it already (encoded once)."""
    places = []
    minted = mark(stored.id)
    for idx, item in enumerate(stored.response.get("output") or ()):
        item_id = item.get("id")
        if item_id and (minted is None or minted not in item_id):
            places.append((item_id, -1 - idx))
    for seq, item in enumerate(stored.input_items):
        item_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(item_id, str) or not item_id:
            raise ValueError(f"input item {seq} of {stored.id} has no string id")
        if minted is None or minted not in item_id:
            places.append((item_id, seq))
    response = stored.response_json or orjson.dumps(stored.response)
    array = input_json or orjson.dumps(stored.input_items)
    size = len(response) + len(array)
    if size > max_bytes:
        raise TooLargeToStore(f"the response takes {size} bytes, more than the response store's whole cap of {max_bytes}")
    return Encoded(response, array, places, size)


def find_minted(item_id: str, response: dict[str, Any], input_items: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The item with this id in a record, an output item before an input item."""
    output: list[dict[str, Any]] = response.get("output") or []
    return next((item for item in (*output, *input_items) if item.get("id") == item_id), None)


def unavailable(exc: BaseException, timeout_s: float) -> BaseException:
    """A store's wait that ran out (TimeoutError) or a store thread pool that is full or
    stopped (Busy) as StoreUnavailable; anything else as it is."""
    if isinstance(exc, TimeoutError):
        return StoreUnavailable(f"the response store did not answer within {timeout_s:g}s")
    if isinstance(exc, Busy):
        return StoreUnavailable(f"the response store is unavailable: {exc}")
    return exc


def check_page(limit: int, order: str) -> None:
    # The route validates the query; these are the store's own preconditions.
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}, not {limit!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
