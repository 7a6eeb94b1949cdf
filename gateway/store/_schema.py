"""The SQLite store's schema: migrations applied in order, the version in `PRAGMA user_version`.

    version = migrate(conn)     # at open, on the store's thread; idempotent

Migrations only append: a database at version N gets steps N+1.. in one
transaction, so it is either fully upgraded or untouched. A database written by
a newer toolgate (a version past the last step) is refused, never downgraded.

At version 4: `responses` (id, owner, created_at, expires_at, response JSON,
input JSON array, bytes), indexed by id and by expiry; `item_ids` (item_id,
response_id, place: >= 0 an input item's index, < 0 an output item's, -1 - index)
keyed by item id, indexed by response; `totals` (the bytes of every response),
lowered by the delete trigger (which also takes the response's item ids) and
raised by each write.
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
    # 3: items by their own id, for `item_reference` to any stored response of the owner:
    # input items by an index (which also serves a page's `after`, so the one of step 1 goes:
    # one index less to write per item), output items (inside the response's JSON) by their place.
    [
        "CREATE INDEX items_by_item_id ON items (item_id, response_id)",
        "DROP INDEX items_by_id",
        """CREATE TABLE outputs (
            response_id TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            item_id TEXT NOT NULL,
            PRIMARY KEY (response_id, idx)
        ) WITHOUT ROWID""",
        "CREATE INDEX outputs_by_item_id ON outputs (item_id)",
        """INSERT INTO outputs (response_id, idx, item_id)
            SELECT r.id, o.key, json_extract(o.value, '$.id')
            FROM responses r, json_each(CAST(r.response AS TEXT), '$.output') o
            WHERE json_extract(o.value, '$.id') IS NOT NULL""",
    ],
    # 4: fewer b-trees per write. A response's input items move into its row, as one JSON
    # array in input order (a page is cut from it on the store's thread: a request holds at
    # most max_messages items), and one table of item ids replaces `items` and `outputs`
    # for `item_reference`: place >= 0 is an input item's index, < 0 an output item's
    # (-1 - index). An id held twice in one response keeps one row: its first output
    # place, else its first input place. `bytes` becomes the response's JSON plus the
    # array's, as a write counts it from now on, and the total is summed again.
    # (CAST: the blobs are JSON text; a newer SQLite would read a BLOB as JSONB.)
    [
        "ALTER TABLE responses ADD COLUMN input BLOB NOT NULL DEFAULT x'5b5d'",
        """UPDATE responses SET input = (SELECT CAST(json_group_array(json(CAST(item AS TEXT))) AS BLOB)
            FROM (SELECT item FROM items WHERE response_id = responses.id ORDER BY seq))""",
        "UPDATE responses SET bytes = length(response) + length(input)",
        "UPDATE totals SET bytes = (SELECT coalesce(sum(bytes), 0) FROM responses)",
        """CREATE TABLE item_ids (
            item_id TEXT NOT NULL,
            response_id TEXT NOT NULL,
            place INTEGER NOT NULL,
            PRIMARY KEY (item_id, response_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX item_ids_by_response ON item_ids (response_id)",
        """INSERT OR IGNORE INTO item_ids (item_id, response_id, place)
            SELECT item_id, response_id, -1 - idx FROM outputs ORDER BY response_id, idx""",
        """INSERT OR IGNORE INTO item_ids (item_id, response_id, place)
            SELECT item_id, response_id, seq FROM items ORDER BY response_id, seq""",
        "DROP TABLE outputs",
        "DROP TABLE items",
        # A write adds its batch's bytes to the total in one statement: a trigger ran once per row.
        "DROP TRIGGER responses_added",
        # A deleted response takes its item ids with it by this trigger rather than a foreign
        # key, whose check cost every inserted id a lookup of its response.
        "DROP TRIGGER responses_removed",
        """CREATE TRIGGER responses_removed AFTER DELETE ON responses
            BEGIN
                UPDATE totals SET bytes = bytes - OLD.bytes;
                DELETE FROM item_ids WHERE response_id = OLD.id;
            END""",
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
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
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
