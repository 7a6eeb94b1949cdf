"""The shared response store: Redis, for several replicas (standalone Redis or a primary, not Cluster).

    store = RedisStore.open("redis://redis:6379/0", ttl_s=30 * 86400, max_bytes=1 << 30)

One hash per response, `toolgate:resp:{id}`: owner, created_at, response, n
(the item count), `i:{seq}` per input item, `p:{item id}` -> seq and `o:{item id}`
-> its place in the output, so a page is one HMGET of computed fields and the
whole record expires (PEXPIRE) and disappears at once. `toolgate:item:{item id}`
names the newest response holding that item (same expiry), for `item_reference`;
an item whose id its response minted has no such key (the id names the
response). The size cap is the store's own, as in SQLite, rather than Redis's
`maxmemory`: that policy is the whole server's (often shared with other
applications) and says nothing of which responses go first. Three bookkeeping
keys, `toolgate:store:index` (id by expiry, ms), `:sizes` (id -> bytes) and
`:bytes` (the total), are kept by two Lua scripts that run atomically, so
replicas writing at once never double-count; each put purges up to
CLEANUP_BATCH expired entries and evicts up to as many of the soonest to
expire past the cap. Every command is bounded by the socket timeouts and by
`asyncio.timeout`; the pool is bounded, and its wait too. A whole record's JSON
is encoded (put) and decoded (get), and a page of items or a referenced item
parsed, on two threads of the store's own, never on the event loop: a record
holds a request's input and its history.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from gateway.errors import StoreUnavailable
from gateway.responses.ids import holder
from gateway.store.base import CLEANUP_BATCH, Stored, check_page, encode, unavailable
from gateway.threads import Busy, Threads, settle

T = TypeVar("T")

# KEYS: index, sizes, total. ARGV: id, ttl ms, size, cap, batch, record key prefix.
# Runs inside the put's MULTI, after the record itself is written.
_ACCOUNT = """
local index, sizes, total = KEYS[1], KEYS[2], KEYS[3]
local id, ttl, size, cap, batch, prefix = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function forget(victim)
  local bytes = redis.call('HGET', sizes, victim)
  redis.call('HDEL', sizes, victim)
  redis.call('ZREM', index, victim)
  if bytes then return redis.call('DECRBY', total, bytes) end
  return tonumber(redis.call('GET', total) or 0)
end
forget(id)
redis.call('ZADD', index, now + ttl, id)
redis.call('HSET', sizes, id, size)
local sum = redis.call('INCRBY', total, size)
for _, victim in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, batch)) do
  redis.call('DEL', prefix .. victim)
  sum = forget(victim)
end
local evicted = 0
for _ = 1, batch do
  if sum <= cap then break end
  local oldest = redis.call('ZRANGE', index, 0, 0)[1]
  if oldest == nil or oldest == id then break end
  redis.call('DEL', prefix .. oldest)
  sum = forget(oldest)
  evicted = evicted + 1
end
return evicted
"""

# KEYS: record, index, sizes, total. ARGV: id, owner.
_DELETE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
local bytes = redis.call('HGET', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if bytes then redis.call('DECRBY', KEYS[4], bytes) end
return 1
"""

_STEPS = {"asc": 1, "desc": -1}


class RedisStore:
    def __init__(self, client: Redis, *, ttl_s: float, max_bytes: int, timeout_s: float, prefix: str = "toolgate:") -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.records = f"{prefix}resp:"
        self.items = f"{prefix}item:"
        self.bookkeeping = [f"{prefix}store:index", f"{prefix}store:sizes", f"{prefix}store:bytes"]
        self._client = client
        self._account = client.register_script(_ACCOUNT)
        self._delete = client.register_script(_DELETE)
        self._threads = Threads("toolgate-redis-store", threads=2, queued=256)  # a record's JSON, off the loop

    @classmethod
    def open(cls, url: str, *, ttl_s: float, max_bytes: int, timeout_s: float = 5.0, connections: int = 32) -> RedisStore:
        """A store on `url`; connects lazily, so the gateway starts while Redis is down
        and each operation fails with StoreUnavailable until it is back."""
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=connections,
            timeout=timeout_s,  # the wait for a free pooled connection
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # One immediate retry on a fresh connection covers one that Redis
            # closed while idle; backoff would only spend the timeout.
            retry=Retry(NoBackoff(), 1),
        )
        return cls(Redis.from_pool(pool), ttl_s=ttl_s, max_bytes=max_bytes, timeout_s=timeout_s)

    async def put(self, stored: Stored) -> None:
        fields, item_ids, size = await self._off_loop(_fields, stored, self.max_bytes)
        key = self.records + stored.id
        ttl_ms = max(1, int(self.ttl_s * 1000))

        async def write() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.hset(key, mapping=fields)
                pipe.pexpire(key, ttl_ms)
                for item_id in item_ids:
                    pipe.set(self.items + item_id, stored.id, px=ttl_ms)
                args: list[str | int] = [stored.id, ttl_ms, size, self.max_bytes, CLEANUP_BATCH, self.records]
                await self._account(keys=self.bookkeeping, args=args, client=pipe)  # queued, not run
                await pipe.execute()

        await self._call(write())

    def submit(self, stored: Stored) -> asyncio.Future[None]:
        # The write is a task of its own: cancelling the future handed out does not stop it.
        task = asyncio.ensure_future(self.put(stored))
        done: asyncio.Future[None] = task.get_loop().create_future()
        task.add_done_callback(partial(_relay, done))
        return done

    async def get(self, response_id: str, owner: str) -> Stored | None:
        record = await self._call(self._client.hgetall(self.records + response_id))
        if record.get(b"owner") != owner.encode():
            return None
        return await self._off_loop(_stored, response_id, owner, record)

    async def input_items(
        self, response_id: str, owner: str, *, after: str | None = None, limit: int = 20, order: str = "desc"
    ) -> tuple[list[dict[str, Any]], bool] | None:
        check_page(limit, order)
        key = self.records + response_id
        fields = ["owner", "n"] if after is None else ["owner", "n", f"p:{after}"]
        head = await self._call(self._client.hmget(key, fields))
        if head[0] != owner.encode():
            return None
        # The values are bytes (the client does not decode), and `n` is there when `owner` is.
        count, step = int(head[1]), _STEPS[order]  # type: ignore[arg-type]
        if after is None:
            start = 0 if step > 0 else count - 1
        elif head[2] is None:
            return [], False
        else:
            start = int(head[2]) + step
        stop = start + step * limit
        seqs = range(start, min(max(stop, -1), count), step)
        if not seqs:
            return [], False
        blobs = await self._call(self._client.hmget(key, [f"i:{seq}" for seq in seqs]))
        if any(blob is None for blob in blobs):  # deleted or expired between the two reads
            return None
        return await self._off_loop(_items, blobs), 0 <= stop < count  # none is None (checked above)

    async def find_item(self, item_id: str, owner: str) -> dict[str, Any] | None:
        # The newest response holding it that has a key for it, else the one that minted it
        # (the oldest holder: any other got the item from it).
        newest = await self._call(self._client.get(self.items + item_id))
        found = newest is not None and await self._find_in(newest.decode() if isinstance(newest, bytes) else newest, item_id, owner)
        if found:
            return found
        minter = holder(item_id)
        return await self._find_in(minter, item_id, owner) if minter else None

    async def _find_in(self, response_id: str, item_id: str, owner: str) -> dict[str, Any] | None:
        key = self.records + response_id
        found_owner, seq, idx = await self._call(self._client.hmget(key, ["owner", f"p:{item_id}", f"o:{item_id}"]))
        if found_owner != owner.encode():
            return None
        if seq is not None:
            blob = await self._call(self._client.hget(key, f"i:{int(seq)}"))
            return await self._off_loop(orjson.loads, blob) if blob is not None else None
        if idx is not None:
            blob = await self._call(self._client.hget(key, "response"))
            return await self._off_loop(_output_item, blob, int(idx)) if blob is not None else None
        return None

    async def delete(self, response_id: str, owner: str) -> bool:
        keys = [self.records + response_id, *self.bookkeeping]
        return bool(await self._call(self._delete(keys=keys, args=[response_id, owner])))

    async def close(self) -> None:
        """Close the pool's connections; never raises."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._client.aclose()
        except (TimeoutError, RedisError, OSError):
            pass
        finally:
            self._threads.stop()

    async def _off_loop(self, func: Callable[..., T], *args: Any) -> T:
        # A record's JSON (up to a request's body and its history) is encoded and decoded
        # here, never on the event loop; bounded as every command is.
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._threads.run(func, *args)
        except (TimeoutError, Busy) as exc:
            raise unavailable(exc, self.timeout_s) from None

    async def _call(self, operation: Awaitable[T]) -> T:
        # The one boundary where Redis's failures become StoreUnavailable.
        try:
            async with asyncio.timeout(self.timeout_s):
                return await operation
        except TimeoutError as exc:
            raise unavailable(exc, self.timeout_s) from None
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"the response store failed: {exc}") from exc


def _fields(stored: Stored, max_bytes: int) -> tuple[dict[FieldT, EncodableT], set[str], int]:
    """The record's hash, the item ids that need a `toolgate:item:` key, and its size."""
    blobs = [orjson.dumps(item) for item in stored.input_items]
    # The array orjson would write for the list, from the items as this store keeps them.
    encoded = encode(stored, max_bytes, b"[" + b",".join(blobs) + b"]")
    fields: dict[FieldT, EncodableT] = {
        "owner": stored.owner,
        "created_at": repr(stored.created_at),
        "response": encoded.response,
        "n": len(stored.input_items),
    }
    for seq, blob in enumerate(blobs):
        fields[f"i:{seq}"] = blob
    # Every item's place (a repeated id keeps its first, as in SQLite); `toolgate:item:` keys
    # only for the items this response did not mint (encode's places).
    for seq, item in enumerate(stored.input_items):
        fields.setdefault(f"p:{item['id']}", seq)
    for idx, item in enumerate(stored.response.get("output") or ()):
        if item_id := item.get("id"):
            fields.setdefault(f"o:{item_id}", idx)
    return fields, {item_id for item_id, _ in encoded.places}, encoded.size


def _stored(response_id: str, owner: str, record: dict[bytes, bytes]) -> Stored:
    items = [orjson.loads(record[b"i:%d" % seq]) for seq in range(int(record[b"n"]))]
    return Stored(response_id, owner, orjson.loads(record[b"response"]), items, float(record[b"created_at"]))


def _items(blobs: list[bytes]) -> list[dict[str, Any]]:
    return [orjson.loads(blob) for blob in blobs]


def _output_item(response: bytes, idx: int) -> dict[str, Any] | None:
    output: list[dict[str, Any]] = orjson.loads(response).get("output") or []
    return output[idx] if idx < len(output) else None


def _relay(done: asyncio.Future[None], task: asyncio.Future[None]) -> None:
    if task.cancelled():
        done.cancel()
    else:
        settle(done, None, task.exception())
