"""The Responses API's response store: what `previous_response_id`, `GET`/`DELETE
/v1/responses/{id}` and `GET /v1/responses/{id}/input_items` read.

    store = await open_store("sqlite:///var/toolgate/responses.db", ttl_s=DEFAULT_TTL_S, max_bytes=DEFAULT_MAX_BYTES)
    await store.put(Stored(id="resp_1", owner=tag, response=body, input_items=items, created_at=body["created_at"]))
    record = await store.get("resp_1", tag)                    # None: missing, expired or another owner's -> 404
    page = await store.input_items("resp_1", tag, after="msg_3", limit=20, order="desc")
    if page is not None:
        items, has_more = page     # a ResponseItemList: data=items, first_id/last_id from them, has_more
    await store.delete("resp_1", tag)                          # False -> 404
    await store.close()

Backends, one row each in BACKENDS by URL scheme:

- `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`: embedded, for one
  process (the directory is created; several processes on one host may share it).
- `redis://host:6379/0`, `rediss://...`: shared, for several replicas; needs the
  optional extra, `pip install 'toolgate[redis]'`.

There is no memory backend: a request with `store: false`, or a gateway without a
store, stores nothing, and the tests run against the real databases.

Every operation is bounded by `timeout_s`; a locked, slow or unreachable
database raises StoreUnavailable (503), never a hang, and never blocks the event
loop. A record lives `ttl_s` from its put (expired ones are invisible at once
and purged by later writes); past `max_bytes` of stored JSON, writes evict the
soonest to expire first, which under one ttl is the oldest. One response larger
than the whole cap raises TooLargeToStore (413). Bad arguments (an input item
without an id, a limit outside 1..100, an order other than asc/desc) are
ValueErrors: the route validates first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.errors import StoreUnavailable, TooLargeToStore
from gateway.store.base import ResponseStore, Stored

__all__ = [
    "BACKENDS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TTL_S",
    "ResponseStore",
    "StoreUnavailable",
    "Stored",
    "TooLargeToStore",
    "open_store",
]

DEFAULT_TTL_S = 30 * 86400.0  # the Responses API keeps responses 30 days by default
DEFAULT_MAX_BYTES = 1 << 30


async def _open_sqlite(url: str, ttl_s: float, max_bytes: int, timeout_s: float) -> ResponseStore:
    from gateway.store._sqlite import SqliteStore

    path = url.removeprefix("sqlite:///")
    if path == url or not path:
        raise ValueError(f"a SQLite store URL is sqlite:///relative/path.db or sqlite:////absolute/path.db, not {url!r}")
    return await SqliteStore.open(path, ttl_s=ttl_s, max_bytes=max_bytes, timeout_s=timeout_s)


async def _open_redis(url: str, ttl_s: float, max_bytes: int, timeout_s: float) -> ResponseStore:
    try:
        from gateway.store._redis import RedisStore
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] != "redis":
            raise
        raise ImportError(
            "the Redis response store needs the redis package: pip install 'toolgate[redis]'", name=exc.name
        ) from exc
    return RedisStore.open(url, ttl_s=ttl_s, max_bytes=max_bytes, timeout_s=timeout_s)


BACKENDS: dict[str, Callable[[str, float, int, float], Awaitable[ResponseStore]]] = {
    "sqlite": _open_sqlite,
    "redis": _open_redis,
    "rediss": _open_redis,
}


async def open_store(url: str, *, ttl_s: float, max_bytes: int, timeout_s: float = 5.0) -> ResponseStore:
    """The store at `url`, by its scheme (see BACKENDS). Raises ValueError for an
    unknown scheme or a malformed URL, ImportError when the backend's package is not
    installed, StoreUnavailable when a SQLite file cannot be opened or migrated."""
    if ttl_s <= 0 or max_bytes <= 0 or timeout_s <= 0:
        raise ValueError("ttl_s, max_bytes and timeout_s must be positive")
    scheme = url.partition("://")[0]
    opener = BACKENDS.get(scheme)
    if opener is None:
        raise ValueError(f"unknown response store URL scheme {scheme!r} (expected one of: {', '.join(BACKENDS)})")
    return await opener(url, ttl_s, max_bytes, timeout_s)
