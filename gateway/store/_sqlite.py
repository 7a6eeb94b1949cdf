"""The embedded response store: one SQLite file in WAL mode, for one process (or a few on one host).

    store = await SqliteStore.open("var/responses.db", ttl_s=30 * 86400, max_bytes=1 << 30)

Every operation is one transaction run as one job on the store's own thread,
bounded by `timeout_s` (a read under `asyncio.timeout`, a batch of puts under one
timer; the open, migrations included, by OPEN_TIMEOUT_S); SQLite's busy timeout
is shorter, so a locked database fails as "database is locked" and frees the
thread before the loop gives up. Either way the caller gets StoreUnavailable,
never a hang.

The schema (`_schema.py`, version 4): one row per response holding its JSON and
its input items as one JSON array, so a read is one row and a page of input
items is cut from the parsed array here (a request holds at most max_messages
items); `item_ids` names, for each item id, the responses holding it and its
place there, for `item_reference`, but for the items a response minted (their
ids name it: `ids.holder`); `totals` keeps the size of everything.

Puts are group-committed: the puts that arrive while one batch is being written
go together as the next job (at most MAX_WAITING of them), in one transaction,
so the thread hop, the commit and the WAL pages are paid once per batch, not per
response. Under load the next batch also gathers for GATHER_S after the last one
landed (a commit delay: 3 ms on an answer that took the model far longer). A
batch is a few statements: one multi-row INSERT per table (CHUNK_ROWS rows a
statement) and one UPDATE of the total that also says whether the cap
holds. sqlite3 lets the GIL go around every statement step, and while the event
loop is busy each take-back is a wait and a thread switch on the loop's core, so
a batch pays a few of those, not several per record. If the database refuses a
record, or a batch holds an id stored already (a put resubmitted after its wait
was cancelled), the batch is written again with a savepoint per record, so that
one fails alone and one stored again replaces the old. Each put returns when its
own record is committed. Writers evict the soonest-to-expire (under one ttl, the
oldest) past the size cap, at most CLEANUP_BATCH per batch, and purge as many
expired rows at most once every PURGE_EVERY_S (expired rows are invisible to
reads at once).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.errors import StoreUnavailable, TooLargeToStore
from gateway.store._schema import SchemaTooNew, migrate
from gateway.responses.ids import holder
from gateway.store.base import CLEANUP_BATCH, Encoded, Stored, check_page, encode, find_minted, unavailable
from gateway.threads import Busy, Threads, settle

T = TypeVar("T")

_INSERT_NEW = (
    "INSERT INTO responses (id, owner, created_at, expires_at, response, input, bytes) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (id) DO NOTHING"
)
# A batch's statements are OR IGNORE: one that cannot abort halfway needs no statement journal,
# which SQLite opens otherwise for every multi-row write inside a transaction (a 64 KiB buffer
# per statement, mapped and unmapped whole under heap.py's threshold, and a copy of each page
# the statement changes). A row the batch leaves out (an id stored already, or a row the
# database refuses) sends the batch record by record, where `_INSERT_NEW` is strict.
# The total's trigger subtracts what a delete takes; a write adds its own, once per batch,
# and learns from the same statement whether the cap holds (it updated a row) or not.
_ADD_UNDER_CAP = "UPDATE OR IGNORE totals SET bytes = bytes + ?1 WHERE bytes + ?1 <= ?2"
_ADD_TO_TOTAL = "UPDATE OR IGNORE totals SET bytes = bytes + ?"
# Multi-row inserts: (the statement up to VALUES, its trailer, columns per row). An item id
# held twice by one response keeps its first row, and a record's output items come first.
_RESPONSES = ("INSERT OR IGNORE INTO responses (id, owner, created_at, expires_at, response, input, bytes) VALUES ", "", 7)
_ITEM_IDS = ("INSERT OR IGNORE INTO item_ids (item_id, response_id, place) VALUES ", "", 3)
CHUNK_ROWS = 32  # rows per statement at most: 32 statement sizes per table, all in the statement cache
_SQL: dict[tuple[str, int], str] = {}


def _insert(db: sqlite3.Cursor, table: tuple[str, str, int], values: list[Any]) -> int:
    """Insert the rows flattened in `values`; the number that went in."""
    head, tail, width = table
    step = CHUNK_ROWS * width
    added = 0
    for at in range(0, len(values), step):
        chunk = values[at : at + step]
        rows = len(chunk) // width
        sql = _SQL.get((head, rows))
        if sql is None:
            sql = _SQL[(head, rows)] = head + ",".join(["(" + ",".join("?" * width) + ")"] * rows) + tail
        added += db.execute(sql, chunk).rowcount
    return added


class _StoredAgain(Exception):
    """A batch holds an id the database has already: it goes record by record, replacing."""


MAX_WAITING = 1024  # puts waiting for the next batch; past it, StoreUnavailable

# Group commit's gathering window, as a database's commit delay: when puts come faster than
# batches land, the next batch starts this long after the last one landed, so it takes the puts
# of that time too (a commit, and the thread's hand-over, serve several). A put that finds the
# store idle, or a batch of one that landed alone, starts a batch at once.
GATHER_S = 0.003

PURGE_EVERY_S = 1.0  # the expiry purge runs at most this often per store (expired rows are invisible at once)
# Opening, migrations included. A request waits for it only its own short while (the slot's
# OPEN_S), and the open goes on meanwhile: a migration that rewrites every row (version 3's
# to 4) takes longer than that on a large file. Another process's migration of the same file
# (a worker that opened it first) holds its lock as long, so the open's busy timeout is as
# long too: it waits for that migration and finds the file upgraded, where the operations'
# short one failed it "database is locked" every few seconds until the other was done.
OPEN_TIMEOUT_S = 900.0


class SqliteStore:
    def __init__(self, path: str, *, ttl_s: float, max_bytes: int, timeout_s: float) -> None:
        self.path = path
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._thread = Threads("toolgate-store", threads=1, queued=256)
        self._conn: sqlite3.Connection | None = None  # touched only on self._thread
        self._db: sqlite3.Cursor | None = None  # the connection's one cursor: every statement runs on it
        self._waiting: list[tuple[Stored, asyncio.Future[None]]] = []  # puts for the next batch
        self._writing: list[tuple[Stored, asyncio.Future[None]]] | None = None  # the batch on the thread
        self._overdue: asyncio.TimerHandle | None = None  # fails that batch past timeout_s
        self._gathering: asyncio.TimerHandle | None = None  # starts the next batch when GATHER_S is up
        self._crowded_until = float("-inf")  # loop time: until then the next batch gathers
        self._purged_at = float("-inf")  # touched only on self._thread

    @classmethod
    async def open(cls, path: str, *, ttl_s: float, max_bytes: int, timeout_s: float = 5.0) -> SqliteStore:
        """Open (creating the file and its directory) and migrate; StoreUnavailable if that fails."""
        store = cls(path, ttl_s=ttl_s, max_bytes=max_bytes, timeout_s=timeout_s)
        try:
            await store._call(store._open, bound=OPEN_TIMEOUT_S)
        except StoreUnavailable as exc:
            store._thread.stop()
            raise StoreUnavailable(f"{exc.message} (opening {path})") from exc.__cause__
        except BaseException:  # cancelled (the gateway stops): the open finishes on its own thread
            store._thread.stop()
            raise
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
        if self._writing is None and self._gathering is None:
            self._next()
        return done

    # One batch at a time, and each takes every put waiting when it starts: a put waits for at
    # most the batch being written and its own (and, under load, GATHER_S). The hand-over and the
    # landing are loop callbacks (no task, no awaited future per batch); one timer bounds the
    # batch being written.

    def _next(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self._crowded_until - loop.time()
        if wait > 0:
            self._gathering = loop.call_later(wait, self._gathered)
        else:
            self._write_next()

    def _gathered(self) -> None:
        self._gathering = None
        if self._waiting and self._writing is None:
            self._write_next()

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
        if len(batch) > 1 or self._waiting:  # puts come faster than batches land: the next one gathers
            self._crowded_until = asyncio.get_running_loop().time() + GATHER_S
        if self._waiting and self._writing is None and self._gathering is None:
            self._next()

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
        if self._gathering is not None:  # the puts gathering go now, ahead of the close
            self._gathering.cancel()
            self._gathering = None
            if self._waiting and self._writing is None:
                self._write_next()
        try:
            await self._call(self._close)
        except StoreUnavailable:
            pass
        finally:
            self._thread.stop()

    async def _call(self, func: Callable[..., T], *args: Any, bound: float | None = None) -> T:
        try:
            async with asyncio.timeout(bound or self.timeout_s):
                return await self._thread.run(func, *args)
        except Exception as exc:
            failure = self._failure(exc, bound)
            if failure is exc:
                raise
            raise failure from failure.__cause__

    def _failure(self, exc: BaseException, bound: float | None = None) -> BaseException:
        """The one boundary where the thread's and SQLite's failures become StoreUnavailable
        (anything else, a bug, goes on as it is)."""
        if isinstance(exc, (TimeoutError, Busy)):
            return unavailable(exc, bound or self.timeout_s)
        if isinstance(exc, (sqlite3.Error, SchemaTooNew, OSError)):
            failure = StoreUnavailable(f"the response store failed: {exc}")
            failure.__cause__ = exc
            return failure
        return exc

    # Everything below runs on the store's thread.

    def _open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Python's `timeout` is SQLite's busy timeout: shorter than the loop's bound, the open's
        # while it opens and migrates, then the operations'.
        conn = sqlite3.connect(self.path, timeout=OPEN_TIMEOUT_S * 0.8, isolation_level=None, cached_statements=256)
        try:
            # 4 KiB pages, for a new file (an existing one keeps its own). A row (~1 KiB for a
            # short answer) takes a page of 2 KiB to itself, so a batch of 24 wrote 36 WAL
            # frames, each in two pwrite calls and copied again at the checkpoint; 4 KiB pages
            # hold three such rows: 17 frames, and the store thread's CPU per record down a quarter.
            conn.execute("PRAGMA page_size = 4096")
            conn.execute("PRAGMA journal_mode = WAL")
            # WAL's usual pairing: durable across a crash of the process, and one
            # fsync per checkpoint rather than per commit.
            conn.execute("PRAGMA synchronous = NORMAL")
            migrate(conn)
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 800)}")
        except BaseException:
            conn.close()
            raise
        self._conn, self._db = conn, conn.cursor()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = self._db = None

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
            # The usual case in one go; only when the database refuses something, or an
            # id is there already, does each record get a savepoint of its own, so that
            # one fails alone (and one stored again replaces the old).
            with self._transaction("BEGIN IMMEDIATE") as db:
                over_cap = self._put_all(db, encoded, now)
                self._clean(db, now, batch, over_cap)
            return failures
        except (sqlite3.IntegrityError, _StoredAgain):
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
            self._clean(db, now, batch)
        return failures

    def _put_all(self, db: sqlite3.Cursor, encoded: list[tuple[Stored, Encoded]], now: float) -> bool:
        """A batch in a few statements: one step per table per CHUNK_ROWS rows, not one per row.
        True when the total is past the cap."""
        expires = now + self.ttl_s
        rows: list[Any] = []
        places: list[Any] = []
        added = 0
        for s, e in encoded:
            response_id = s.id
            rows += (response_id, s.owner, s.created_at, expires, bytearray(e.response), bytearray(e.input), e.size)
            for item_id, place in e.places:
                places += (item_id, response_id, place)
            added += e.size
        if _insert(db, _RESPONSES, rows) < len(encoded):
            raise _StoredAgain  # rare: a put resubmitted after its wait was cancelled
        _insert(db, _ITEM_IDS, places)
        if db.execute(_ADD_UNDER_CAP, (added, self.max_bytes)).rowcount:
            return False
        db.execute(_ADD_TO_TOTAL, (added,))
        return True

    def _put(self, db: sqlite3.Cursor, stored: Stored, encoded: Encoded, now: float) -> None:
        row = (stored.id, stored.owner, stored.created_at, now + self.ttl_s, bytearray(encoded.response), bytearray(encoded.input), encoded.size)
        # A new id (the usual case) inserts at once; an old one is deleted first, since
        # REPLACE would skip the delete trigger that keeps the total and takes its item ids.
        if not db.execute(_INSERT_NEW, row).rowcount:
            db.execute("DELETE FROM responses WHERE id = ?", (stored.id,))
            db.execute(_INSERT_NEW, row)
        _insert(db, _ITEM_IDS, [v for item_id, place in encoded.places for v in (item_id, stored.id, place)])
        db.execute(_ADD_TO_TOTAL, (encoded.size,))

    def _clean(self, db: sqlite3.Cursor, now: float, batch: list[Stored], over_cap: bool = True) -> None:
        # over_cap False: the write saw the total within the cap, and a purge only lowers it.
        if now - self._purged_at >= PURGE_EVERY_S:
            db.execute(
                "DELETE FROM responses WHERE rowid IN"
                " (SELECT rowid FROM responses WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
                (now, CLEANUP_BATCH),
            )
            self._purged_at = now
        if not over_cap:
            return
        keep: set[str] | None = None
        for _ in range(CLEANUP_BATCH):
            (total,) = db.execute("SELECT bytes FROM totals").fetchone()
            if total <= self.max_bytes:
                return
            if keep is None:
                keep = {stored.id for stored in batch}
            victims = db.execute(
                "SELECT rowid, id FROM responses ORDER BY expires_at LIMIT ?", (len(keep) + 1,)
            ).fetchall()
            victim = next((rowid for rowid, id_ in victims if id_ not in keep), None)
            if victim is None:
                return
            db.execute("DELETE FROM responses WHERE rowid = ?", (victim,))

    def _get(self, response_id: str, owner: str, now: float) -> Stored | None:
        row = self._cursor().execute(
            "SELECT created_at, response, input FROM responses WHERE id = ? AND owner = ? AND expires_at > ?",
            (response_id, owner, now),
        ).fetchone()
        if row is None:
            return None
        return Stored(response_id, owner, orjson.loads(row[1]), orjson.loads(row[2]), row[0])

    def _find_item(self, item_id: str, owner: str, now: float) -> dict[str, Any] | None:
        # The newest response holding it; within one, an output item before an input item. The
        # response that minted the id holds it without a row here, and is the oldest holder:
        # any other got the item from it.
        db = self._cursor()
        row = db.execute(
            "SELECT i.place, CASE WHEN i.place < 0 THEN r.response ELSE r.input END"
            " FROM item_ids i JOIN responses r ON r.id = i.response_id"
            " WHERE i.item_id = ? AND r.owner = ? AND r.expires_at > ? ORDER BY r.created_at DESC, i.place LIMIT 1",
            (item_id, owner, now),
        ).fetchone()
        if row is None:
            minter = holder(item_id)
            row = minter and db.execute(
                "SELECT response, input FROM responses WHERE id = ? AND owner = ? AND expires_at > ?", (minter, owner, now)
            ).fetchone()
            return find_minted(item_id, orjson.loads(row[0]), orjson.loads(row[1])) if row else None
        place, blob = row
        if place < 0:
            place, items = -1 - place, orjson.loads(blob).get("output") or []
        else:
            items = orjson.loads(blob)
        return items[place] if place < len(items) else None

    def _page(
        self, response_id: str, owner: str, after: str | None, limit: int, order: str, now: float
    ) -> tuple[list[dict[str, Any]], bool] | None:
        row = self._cursor().execute(
            "SELECT input FROM responses WHERE id = ? AND owner = ? AND expires_at > ?", (response_id, owner, now)
        ).fetchone()
        if row is None:
            return None
        items: list[dict[str, Any]] = orjson.loads(row[0])
        at = None  # `after`: the first item with that id (an unknown one gives an empty page)
        if after is not None:
            at = next((n for n, item in enumerate(items) if item.get("id") == after), None)
            if at is None:
                return [], False
        if order == "asc":
            start = 0 if at is None else at + 1
            return items[start : start + limit], start + limit < len(items)
        end = len(items) if at is None else at
        return items[max(end - limit, 0) : end][::-1], end > limit

    def _delete(self, response_id: str, owner: str, now: float) -> bool:
        # An expired row stays for the purge: to its owner it is already gone.
        with self._transaction("BEGIN IMMEDIATE") as db:
            deleted = db.execute(
                "DELETE FROM responses WHERE id = ? AND owner = ? AND expires_at > ?", (response_id, owner, now)
            ).rowcount
        return deleted > 0

    def _cursor(self) -> sqlite3.Cursor:
        # One cursor for every statement: Connection.execute makes a new one each time.
        if self._db is None:
            raise sqlite3.ProgrammingError("the response store is closed")
        return self._db

    def _transaction(self, begin: str) -> _Transaction:
        return _Transaction(self._cursor(), begin)


class _Transaction:
    """`with store._transaction("BEGIN IMMEDIATE") as db:` commits at the end, or rolls back
    on any error. A class rather than @contextmanager: a batch pays ~1 µs less."""

    __slots__ = ("db",)

    def __init__(self, db: sqlite3.Cursor, begin: str) -> None:
        db.execute(begin)
        self.db = db

    def __enter__(self) -> sqlite3.Cursor:
        return self.db

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.db.execute("COMMIT")
        elif self.db.connection.in_transaction:
            self.db.execute("ROLLBACK")
