"""The embedded response store: one SQLite file in WAL mode, for one process (or a few on one host).

    store = await SqliteStore.open("var/responses.db", ttl_s=30 * 86400, max_bytes=1 << 30)

Every operation is one transaction run as one job on the store's own thread,
inside `asyncio.timeout(timeout_s)`; SQLite's busy timeout is shorter, so a
locked database fails as "database is locked" and frees the thread before the
loop gives up. Either way the caller gets StoreUnavailable, never a hang.
Writers purge expired rows and evict the soonest-to-expire (under one ttl, the
oldest) past the size cap, at most CLEANUP_BATCH of each per write.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.errors import StoreUnavailable
from gateway.store._schema import SchemaTooNew, migrate
from gateway.store.base import CLEANUP_BATCH, Stored, check_page, encode
from gateway.threads import Busy, Threads

T = TypeVar("T")

# Per order: the comparison past `after`, the direction, and the bound when no `after`.
_PAGES = {
    "asc": ("seq > ?", "ASC", -1),
    "desc": ("seq < ?", "DESC", 1 << 62),
}


class SqliteStore:
    def __init__(self, path: str, *, ttl_s: float, max_bytes: int, timeout_s: float) -> None:
        self.path = path
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._thread = Threads("toolgate-store", threads=1, queued=256)
        self._conn: sqlite3.Connection | None = None  # touched only on self._thread

    @classmethod
    async def open(cls, path: str, *, ttl_s: float, max_bytes: int, timeout_s: float = 5.0) -> SqliteStore:
        """Open (creating the file and its directory) and migrate; StoreUnavailable if that fails."""
        store = cls(path, ttl_s=ttl_s, max_bytes=max_bytes, timeout_s=timeout_s)
        try:
            await store._call(store._open)
        except StoreUnavailable as exc:
            store._thread.stop()
            raise StoreUnavailable(f"{exc.message} (opening {path})") from exc.__cause__
        return store

    async def put(self, stored: Stored) -> None:
        await self._call(self._put, stored, time.time())

    async def get(self, response_id: str, owner: str) -> Stored | None:
        return await self._call(self._get, response_id, owner, time.time())

    async def input_items(
        self, response_id: str, owner: str, *, after: str | None = None, limit: int = 20, order: str = "desc"
    ) -> tuple[list[dict[str, Any]], bool] | None:
        check_page(limit, order)
        return await self._call(self._page, response_id, owner, after, limit, order, time.time())

    async def delete(self, response_id: str, owner: str) -> bool:
        return await self._call(self._delete, response_id, owner, time.time())

    async def close(self) -> None:
        """Close the connection; never raises. If the thread is stuck past the timeout,
        the connection goes with the process (the thread is a daemon)."""
        try:
            await self._call(self._close)
        except StoreUnavailable:
            pass
        finally:
            self._thread.stop()

    async def _call(self, func: Callable[..., T], *args: Any) -> T:
        # The one boundary where the thread's and SQLite's failures become StoreUnavailable.
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._thread.run(func, *args)
        except TimeoutError:
            raise StoreUnavailable(f"the response store did not answer within {self.timeout_s:g}s") from None
        except Busy as exc:
            raise StoreUnavailable(f"the response store is unavailable: {exc}") from None
        except (sqlite3.Error, SchemaTooNew, OSError) as exc:
            raise StoreUnavailable(f"the response store failed: {exc}") from exc

    # Everything below runs on the store's thread.

    def _open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Python's `timeout` is SQLite's busy timeout: shorter than the loop's bound.
        conn = sqlite3.connect(self.path, timeout=self.timeout_s * 0.8, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            # WAL's usual pairing: durable across a crash of the process, and one
            # fsync per checkpoint rather than per commit.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _put(self, stored: Stored, now: float) -> None:
        encoded = encode(stored, self.max_bytes)
        with self._transaction("BEGIN IMMEDIATE") as db:
            # Delete, then insert: REPLACE would skip the delete trigger that keeps the total.
            db.execute("DELETE FROM responses WHERE id = ?", (stored.id,))
            db.execute(
                "INSERT INTO responses (id, owner, created_at, expires_at, response, bytes) VALUES (?, ?, ?, ?, ?, ?)",
                (stored.id, stored.owner, stored.created_at, now + self.ttl_s, encoded.response, encoded.size),
            )
            db.executemany(
                "INSERT INTO items (response_id, seq, item_id, item) VALUES (?, ?, ?, ?)",
                ((stored.id, seq, item_id, blob) for seq, (item_id, blob) in enumerate(encoded.items)),
            )
            self._clean(db, now, keep=stored.id)

    def _clean(self, db: sqlite3.Connection, now: float, keep: str) -> None:
        db.execute(
            "DELETE FROM responses WHERE rowid IN"
            " (SELECT rowid FROM responses WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
            (now, CLEANUP_BATCH),
        )
        for _ in range(CLEANUP_BATCH):
            (total,) = db.execute("SELECT bytes FROM totals").fetchone()
            if total <= self.max_bytes:
                return
            victim = db.execute(
                "SELECT rowid FROM responses WHERE id != ? ORDER BY expires_at LIMIT 1", (keep,)
            ).fetchone()
            if victim is None:
                return
            db.execute("DELETE FROM responses WHERE rowid = ?", victim)

    def _get(self, response_id: str, owner: str, now: float) -> Stored | None:
        with self._transaction("BEGIN") as db:
            row = db.execute(
                "SELECT created_at, response FROM responses WHERE id = ? AND owner = ? AND expires_at > ?",
                (response_id, owner, now),
            ).fetchone()
            if row is None:
                return None
            items = db.execute("SELECT item FROM items WHERE response_id = ? ORDER BY seq", (response_id,)).fetchall()
        return Stored(response_id, owner, orjson.loads(row[1]), [orjson.loads(blob) for (blob,) in items], row[0])

    def _page(
        self, response_id: str, owner: str, after: str | None, limit: int, order: str, now: float
    ) -> tuple[list[dict[str, Any]], bool] | None:
        past, direction, bound = _PAGES[order]
        with self._transaction("BEGIN") as db:
            live = db.execute(
                "SELECT 1 FROM responses WHERE id = ? AND owner = ? AND expires_at > ?", (response_id, owner, now)
            ).fetchone()
            if live is None:
                return None
            if after is not None:
                row = db.execute(
                    "SELECT seq FROM items WHERE response_id = ? AND item_id = ? ORDER BY seq LIMIT 1",
                    (response_id, after),
                ).fetchone()
                if row is None:
                    return [], False
                bound = row[0]
            rows = db.execute(
                f"SELECT item FROM items WHERE response_id = ? AND {past} ORDER BY seq {direction} LIMIT ?",
                (response_id, bound, limit + 1),
            ).fetchall()
        return [orjson.loads(blob) for (blob,) in rows[:limit]], len(rows) > limit

    def _delete(self, response_id: str, owner: str, now: float) -> bool:
        # An expired row stays for the purge: to its owner it is already gone.
        with self._transaction("BEGIN IMMEDIATE") as db:
            cursor = db.execute(
                "DELETE FROM responses WHERE id = ? AND owner = ? AND expires_at > ?", (response_id, owner, now)
            )
        return cursor.rowcount > 0

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        db = self._conn
        if db is None:
            raise sqlite3.ProgrammingError("the response store is closed")
        db.execute(begin)
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
