"""Where a response goes to be stored: the store opened on first use, the writes still
running, and the `send` that holds a response's last bytes until the store has it.

    slot = StoreSlot(lambda: open_store(url, ttl_s=..., max_bytes=...))
    send = StoreBeforeTheEnd(send, renderer, lambda: slot.put(stored))   # around the ASGI send
    await slot.settled(response_id)                                      # before a read

"Stored" means: by the time the client can see the response end (the JSON body,
or the SSE event `response.completed` / `.incomplete` / `.failed`), the store holds
it, on this replica and on every other one sharing the store. A write that fails is
logged, never a late error, and the response still goes out. Reads of an id whose
write is still running (a streamed response's id is known from its first event)
wait for it, bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from gateway.redact import SECRETS
from gateway.responses.render import ResponsesJSON, ResponsesSSE
from gateway.store import ResponseStore, Stored, StoreUnavailable

log = logging.getLogger("toolgate")

OPEN_S = 5.0  # a request waits this long for the store to open; the open itself runs on
RETRY_OPEN_S = 5.0  # after a failed open, the next request tries again no sooner
WAIT_WRITE_S = 5.0  # a read waits this long for the same id's write


def _not_stored(response_id: str, exc: BaseException) -> bool:
    log.error("response %s was not stored: %s", response_id, SECRETS(str(exc))[:300] or type(exc).__name__)
    return False


def _retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class StoreSlot:
    """The response store, opened on first use (a gateway that never stores creates no file),
    and the writes still running, by response id.

    One open at a time, whoever asks: a request waits for it at most OPEN_S, and an open that
    takes longer (a schema migration of a large file) goes on without it, once, while requests
    get 503 "still opening" until it is done."""

    def __init__(self, opener: Callable[[], Awaitable[ResponseStore]] | None) -> None:
        self.opener = opener
        self.store: ResponseStore | None = None
        self.failed_at = 0.0
        self.problem = ""
        self.writes: dict[str, asyncio.Future[None]] = {}
        self._opening: asyncio.Task[ResponseStore] | None = None
        self._opening_since = 0.0

    async def get(self) -> ResponseStore:
        if self.store is not None:
            return self.store
        if self.opener is None:
            raise StoreUnavailable("This gateway has no response store; send store: false.")
        if self._opening is None:
            if self.failed_at and time.monotonic() - self.failed_at < RETRY_OPEN_S:
                raise StoreUnavailable(f"The response store is unavailable ({self.problem}); send store: false or retry shortly.", headers={"retry-after": "5"})
            self._opening = asyncio.ensure_future(self._open())
            self._opening.add_done_callback(_retrieved)  # its waiters may all have given up
            self._opening_since = time.monotonic()
        # Every request waits within the open's first OPEN_S; past it, one is told at once.
        wait = OPEN_S - (time.monotonic() - self._opening_since)
        try:
            if wait > 0:
                async with asyncio.timeout(wait):
                    return await asyncio.shield(self._opening)
        except TimeoutError:
            pass
        raise StoreUnavailable(
            "The response store is still opening (a migration of a large file, by this process or another worker, can take minutes); send store: false or retry shortly.",
            headers={"retry-after": "5"},
        )

    async def _open(self) -> ResponseStore:
        assert self.opener is not None
        try:
            self.store = await self.opener()
            return self.store
        except Exception as exc:
            self.failed_at = time.monotonic()
            self.problem = SECRETS(str(exc))[:200] or type(exc).__name__
            log.error("the response store cannot be opened: %s", self.problem)
            raise StoreUnavailable(f"The response store is unavailable ({self.problem}); send store: false or retry shortly.", headers={"retry-after": "5"}) from None
        finally:
            self._opening = None

    def _written(self, response_id: str, done: asyncio.Future[None]) -> None:
        if self.writes.get(response_id) is done:
            del self.writes[response_id]
        if not done.cancelled():
            done.exception()  # retrieved here: the request that waited may be gone

    async def settled(self, response_id: str) -> None:
        """Wait (bounded) for a write of `response_id` that is still running."""
        task = self.writes.get(response_id)
        if task is not None:
            try:
                async with asyncio.timeout(WAIT_WRITE_S):
                    await asyncio.shield(task)
            except (TimeoutError, Exception):
                pass

    async def put(self, stored: Stored) -> bool:
        """Store `stored` and wait for it (bounded by the store's own timeout); False, and
        logged, if that failed. The write runs on even when the waiting request is cancelled."""
        store = self.store
        if store is None:
            try:
                store = await self.get()
            except StoreUnavailable as exc:
                return _not_stored(stored.id, exc)
        # The request waits on the write's own future: no shield and no callbacks on the
        # way (this is every stored response's path). Cancelling it does not take the record
        # back, but the future is gone: the record is submitted again (the same record, so
        # whichever write lands last stores the same thing) for reads and `close` to wait on.
        done = store.submit(stored)
        self.writes[stored.id] = done
        try:
            await done
        except asyncio.CancelledError:
            again = store.submit(stored)
            self.writes[stored.id] = again
            again.add_done_callback(partial(self._written, stored.id))
            raise
        except Exception as exc:
            return _not_stored(stored.id, exc)
        finally:
            if self.writes.get(stored.id) is done:
                del self.writes[stored.id]
        return True

    async def close(self) -> None:
        if self._opening is not None:  # nothing was stored through it: the open goes unfinished
            self._opening.cancel()
        if self.writes:
            await asyncio.gather(*self.writes.values(), return_exceptions=True)
        if self.store is not None:
            store, self.store = self.store, None
            await store.close()


class StoreBeforeTheEnd:
    """The ASGI `send` of a stored response: the message that carries the response's last
    event (the JSON body, or the SSE event `response.completed` / `.incomplete` / `.failed`)
    waits until the store holds the response. So "stored" means: by the time a client can
    see the response end, `GET /v1/responses/{id}` and `previous_response_id` find it, on
    this replica and on every other one sharing the store. A store that fails is logged and
    the response still goes out (the answer is never lost to its store)."""

    __slots__ = ("send", "renderer", "record", "stored")

    def __init__(self, send: Any, renderer: ResponsesJSON | ResponsesSSE, record: Callable[[], Awaitable[bool]]) -> None:
        self.send = send
        self.renderer = renderer
        self.record = record
        self.stored: bool | None = None  # None: nothing to store was rendered

    async def __call__(self, message: dict[str, Any]) -> None:
        if self.stored is None and self.renderer.response is not None:
            self.stored = False
            self.stored = await self.record()
        await self.send(message)
