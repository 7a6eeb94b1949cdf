"""The SQLite store's schema: migrations applied in order, the version in `PRAGMA user_version`.

    version = migrate(conn)     # at open, on the store's thread; idempotent

Migrations only append: a database at version N gets steps N+1.. in one
transaction, so it is either fully upgraded or untouched. A database written by
a newer toolgate (a version past the last step) is refused, never downgraded.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[list[str]] = [
    # 1: one row per response and one per input item, so the database pages the
    # items itself; expires_at is indexed for expiry (and, from 2, eviction).
    [
        """CREATE TABLE responses (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            response BLOB NOT NULL
        )""",
        "CREATE INDEX responses_by_expiry ON responses (expires_at)",
        """CREATE TABLE items (
            response_id TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            item_id TEXT NOT NULL,
            item BLOB NOT NULL,
            PRIMARY KEY (response_id, seq)
        ) WITHOUT ROWID""",
        "CREATE INDEX items_by_id ON items (response_id, item_id)",
    ],
    # 2: the size cap. Each response's size (its JSON and its items' JSON), and a
    # running total kept by triggers, so a write never sums the table.
    [
        "ALTER TABLE responses ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0",
        """UPDATE responses SET bytes = length(response)
            + coalesce((SELECT sum(length(item)) FROM items WHERE response_id = responses.id), 0)""",
        "CREATE TABLE totals (one INTEGER PRIMARY KEY CHECK (one = 1), bytes INTEGER NOT NULL)",
        "INSERT INTO totals VALUES (1, (SELECT coalesce(sum(bytes), 0) FROM responses))",
        """CREATE TRIGGER responses_added AFTER INSERT ON responses
            BEGIN UPDATE totals SET bytes = bytes + NEW.bytes; END""",
        """CREATE TRIGGER responses_removed AFTER DELETE ON responses
            BEGIN UPDATE totals SET bytes = bytes - OLD.bytes; END""",
    ],
]


class SchemaTooNew(Exception):
    pass


def migrate(conn: sqlite3.Connection, upto: int = len(MIGRATIONS)) -> int:
    """Bring `conn`'s database to version `upto` (every migration by default)."""
    # IMMEDIATE, and the version read inside it: two processes opening one file
    # at once apply each step once.
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise SchemaTooNew(
                f"the response store is at schema version {version}, newer than this toolgate's {len(MIGRATIONS)}"
            )
        for number in range(version + 1, upto + 1):
            for step in MIGRATIONS[number - 1]:
                conn.execute(step)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return max(version, upto)
