"""The embedded response store: one SQLite file in WAL mode, for one process (or a few on one host).

    store = await SqliteStore.open("var/responses.db", ttl_s=30 * 86400, max_bytes=1 << 30)

Every operation is one transaction run as one job on the store's own thread,
inside `asyncio.timeout(timeout_s)`; SQLite's busy timeout is shorter, so a
locked database fails as "database is locked" and frees the thread before the
loop gives up. Either way the caller gets StoreUnavailable, never a hang.

Puts are group-committed: the puts that arrive while one batch is being written
go together as the next job (at most MAX_WAITING of them), in one transaction,
so the thread hop, the commit and the WAL pages are paid once per batch, not per
response. Each table's rows go in multi-row INSERTs (CHUNK_ROWS a statement):
sqlite3 lets the GIL go around every statement step, and while the event loop
is busy each take-back is a wait and a thread switch on the loop's core, so a
batch pays a few of those, not several per record. If the database refuses a
record, the batch is written again with a savepoint per record, so that one
fails alone. Each put returns when its own record is committed. Writers purge expired rows and evict
the soonest-to-expire (under one ttl, the oldest) past the size cap, at most
CLEANUP_BATCH of each per batch.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.errors import StoreUnavailable, TooLargeToStore
from gateway.store._schema import SchemaTooNew, migrate
from gateway.store.base import CLEANUP_BATCH, Encoded, Stored, check_page, encode
from gateway.threads import Busy, Threads, settle

T = TypeVar("T")

_INSERT_NEW = (
    "INSERT INTO responses (id, owner, created_at, expires_at, response, bytes) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (id) DO NOTHING"
)
# Multi-row inserts: (the statement up to VALUES, its trailer, columns per row).
_RESPONSES = ("INSERT INTO responses (id, owner, created_at, expires_at, response, bytes) VALUES ", " ON CONFLICT (id) DO NOTHING", 6)
_ITEMS = ("INSERT INTO items (response_id, seq, item_id, item) VALUES ", "", 4)
_OUTPUTS = ("INSERT INTO outputs (response_id, idx, item_id) VALUES ", "", 3)
CHUNK_ROWS = 32  # rows per statement at most: 32 statement sizes per table, all in the statement cache
_SQL: dict[tuple[str, int], str] = {}


def _insert(db: sqlite3.Connection, table: tuple[str, str, int], values: list[Any]) -> None:
    head, tail, width = table
    step = CHUNK_ROWS * width
    for at in range(0, len(values), step):
        chunk = values[at : at + step]
        rows = len(chunk) // width
        sql = _SQL.get((head, rows))
        if sql is None:
            sql = _SQL[(head, rows)] = head + ",".join(["(" + ",".join("?" * width) + ")"] * rows) + tail
        db.execute(sql, chunk)


MAX_WAITING = 1024  # puts waiting for the next batch; past it, StoreUnavailable

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
        self._waiting: list[tuple[Stored, asyncio.Future[None]]] = []  # puts for the next batch
        self._writing: list[tuple[Stored, asyncio.Future[None]]] | None = None  # the batch on the thread
        self._overdue: asyncio.TimerHandle | None = None  # fails that batch past timeout_s

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
        await self.submit(stored)

    def submit(self, stored: Stored) -> asyncio.Future[None]:
        """Queue `stored` for the next batch; the future is done when the batch is committed
        (or failed: StoreUnavailable, TooLargeToStore), within twice timeout_s. Cancelling it
        does not take the record back."""
        done = asyncio.get_running_loop().create_future()
        if len(self._waiting) >= MAX_WAITING:
            done.set_exception(StoreUnavailable(f"the response store is unavailable: {MAX_WAITING} writes wait already"))
            return done
        self._waiting.append((stored, done))
        if self._writing is None:
            self._write_next()
        return done

    # One batch at a time, and each takes every put waiting when it starts: a put waits for at
    # most the batch being written and its own. The hand-over and the landing are loop callbacks
    # (no task, no awaited future per batch); one timer bounds the batch being written.

    def _write_next(self) -> None:
        batch, self._waiting = self._waiting, []
        self._writing = batch
        loop = asyncio.get_running_loop()
        self._overdue = loop.call_later(self.timeout_s, self._late, batch)
        try:
            self._thread.call(partial(self._landed, batch), self._put_many, [stored for stored, _ in batch], time.time())
        except Busy as exc:
            self._landed(batch, None, exc)

    def _landed(self, batch: list[tuple[Stored, asyncio.Future[None]]], failures: list[BaseException | None] | None, error: BaseException | None) -> None:
        if self._writing is batch:
            self._writing = None
            if self._overdue is not None:
                self._overdue.cancel()
        if error is not None:
            failures = [self._failure(error)] * len(batch)
        assert failures is not None
        for (_, done), failure in zip(batch, failures):
            settle(done, None, failure)
        if self._waiting and self._writing is None:
            self._write_next()

    def _late(self, batch: list[tuple[Stored, asyncio.Future[None]]]) -> None:
        # The thread has not answered within timeout_s: these puts fail now (the write may still
        # land later, or not), and the next batch queues behind it on the thread.
        if self._writing is batch:
            self._landed(batch, None, TimeoutError())

    async def find_item(self, item_id: str, owner: str) -> dict[str, Any] | None:
        return await self._call(self._find_item, item_id, owner, time.time())

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
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._thread.run(func, *args)
        except Exception as exc:
            failure = self._failure(exc)
            if failure is exc:
                raise
            raise failure from failure.__cause__

    def _failure(self, exc: BaseException) -> BaseException:
        """The one boundary where the thread's and SQLite's failures become StoreUnavailable
        (anything else, a bug, goes on as it is)."""
        if isinstance(exc, TimeoutError):
            return StoreUnavailable(f"the response store did not answer within {self.timeout_s:g}s")
        if isinstance(exc, Busy):
            return StoreUnavailable(f"the response store is unavailable: {exc}")
        if isinstance(exc, (sqlite3.Error, SchemaTooNew, OSError)):
            failure = StoreUnavailable(f"the response store failed: {exc}")
            failure.__cause__ = exc
            return failure
        return exc

    # Everything below runs on the store's thread.

    def _open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Python's `timeout` is SQLite's busy timeout: shorter than the loop's bound.
        conn = sqlite3.connect(self.path, timeout=self.timeout_s * 0.8, isolation_level=None, cached_statements=256)
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

    def _put_many(self, batch: list[Stored], now: float) -> list[Exception | None]:
        failures: list[Exception | None] = []
        encoded: list[tuple[Stored, Encoded]] = []
        for stored in batch:
            try:
                encoded.append((stored, encode(stored, self.max_bytes)))
                failures.append(None)
            except (ValueError, TooLargeToStore) as exc:
                failures.append(exc)
        try:
            # The usual case in one go; only when the database refuses something does
            # each record get a savepoint of its own, so that one fails alone.
            with self._transaction("BEGIN IMMEDIATE") as db:
                self._put_all(db, encoded, now)
                self._clean(db, now, keep={stored.id for stored in batch})
            return failures
        except sqlite3.IntegrityError:
            pass
        except sqlite3.DatabaseError as exc:
            if len(encoded) == 1 or "locked" in str(exc) or "busy" in str(exc):
                raise
        places = [i for i, failure in enumerate(failures) if failure is None]
        with self._transaction("BEGIN IMMEDIATE") as db:
            for place, (stored, record) in zip(places, encoded):
                db.execute("SAVEPOINT one")
                try:
                    self._put(db, stored, record, now)
                except sqlite3.Error as exc:
                    db.execute("ROLLBACK TO one")
                    failures[place] = StoreUnavailable(f"the response store failed: {exc}")
                db.execute("RELEASE one")
            self._clean(db, now, keep={stored.id for stored in batch})
        return failures

    def _put_all(self, db: sqlite3.Connection, encoded: list[tuple[Stored, Encoded]], now: float) -> None:
        """A batch in a few statements: one step per table per CHUNK_ROWS rows, not one per row."""
        db.execute("DELETE FROM responses WHERE id IN (SELECT value FROM json_each(?))", (orjson.dumps([s.id for s, _ in encoded]),))
        expires = now + self.ttl_s
        _insert(db, _RESPONSES, [v for s, e in encoded for v in (s.id, s.owner, s.created_at, expires, e.response, e.size)])
        _insert(db, _ITEMS, [v for s, e in encoded for seq, (item_id, blob) in enumerate(e.items) for v in (s.id, seq, item_id, blob)])
        _insert(db, _OUTPUTS, [v for s, e in encoded for idx, item_id in enumerate(e.outputs) if item_id for v in (s.id, idx, item_id)])

    def _put(self, db: sqlite3.Connection, stored: Stored, encoded: Encoded, now: float) -> None:
        row = (stored.id, stored.owner, stored.created_at, now + self.ttl_s, encoded.response, encoded.size)
        # A new id (the usual case) inserts at once; an old one is deleted first, since
        # REPLACE would skip the delete trigger that keeps the total, and its rows' cascade.
        if not db.execute(_INSERT_NEW, row).rowcount:
            db.execute("DELETE FROM responses WHERE id = ?", (stored.id,))
            db.execute(_INSERT_NEW, row)
        db.executemany(
            "INSERT INTO items (response_id, seq, item_id, item) VALUES (?, ?, ?, ?)",
            ((stored.id, seq, item_id, blob) for seq, (item_id, blob) in enumerate(encoded.items)),
        )
        db.executemany(
            "INSERT INTO outputs (response_id, idx, item_id) VALUES (?, ?, ?)",
            ((stored.id, idx, item_id) for idx, item_id in enumerate(encoded.outputs) if item_id),
        )

    def _clean(self, db: sqlite3.Connection, now: float, keep: set[str]) -> None:
        db.execute(
            "DELETE FROM responses WHERE rowid IN"
            " (SELECT rowid FROM responses WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
            (now, CLEANUP_BATCH),
        )
        for _ in range(CLEANUP_BATCH):
            (total,) = db.execute("SELECT bytes FROM totals").fetchone()
            if total <= self.max_bytes:
                return
            victims = db.execute(
                "SELECT rowid, id FROM responses ORDER BY expires_at LIMIT ?", (len(keep) + 1,)
            ).fetchall()
            victim = next((rowid for rowid, id_ in victims if id_ not in keep), None)
            if victim is None:
                return
            db.execute("DELETE FROM responses WHERE rowid = ?", (victim,))

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

    def _find_item(self, item_id: str, owner: str, now: float) -> dict[str, Any] | None:
        with self._transaction("BEGIN") as db:
            row = db.execute(
                "SELECT r.created_at, i.item FROM items i JOIN responses r ON r.id = i.response_id"
                " WHERE i.item_id = ? AND r.owner = ? AND r.expires_at > ? ORDER BY r.created_at DESC LIMIT 1",
                (item_id, owner, now),
            ).fetchone()
            out = db.execute(
                "SELECT r.created_at, r.response, o.idx FROM outputs o JOIN responses r ON r.id = o.response_id"
                " WHERE o.item_id = ? AND r.owner = ? AND r.expires_at > ? ORDER BY r.created_at DESC LIMIT 1",
                (item_id, owner, now),
            ).fetchone()
        if out is not None and (row is None or out[0] >= row[0]):
            output = orjson.loads(out[1]).get("output") or []
            return output[out[2]] if out[2] < len(output) else None
        return orjson.loads(row[1]) if row is not None else None

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
