"""The response store: one suite over both backends, against a real SQLite file and a real redis-server."""

from __future__ import annotations

import asyncio
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import redis.asyncio
from openai.types.responses import ResponseItemList

from gateway.responses.ids import Mint
from gateway.responses.slot import StoreSlot
from gateway.store import BACKENDS, Stored, StoreUnavailable, TooLargeToStore, open_store
from gateway.store._schema import MIGRATIONS, migrate
from gateway.store.base import encode
from tests.support import write_locked_elsewhere

TIMEOUT = 0.3  # every store in these tests gives up after this long


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed: apt-get install redis-server")
    port = _free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"redis-server exited with {process.returncode}")
                time.sleep(0.025)
        else:
            pytest.fail("redis-server did not listen within 5s")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Backend:
    """Opens stores on one database, closes them at the end, and peeks at what the database holds."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self.opened: list[Any] = []

    async def open(self, *, ttl_s: float = 60.0, max_bytes: int = 1 << 20, url: str | None = None, timeout_s: float = TIMEOUT):
        store = await open_store(url or self.url, ttl_s=ttl_s, max_bytes=max_bytes, timeout_s=timeout_s)
        self.opened.append(store)
        return store

    async def held(self) -> int:
        """How many records the database holds, expired ones included."""
        if self.name == "sqlite":
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as db:
                return db.execute("SELECT count(*) FROM responses").fetchone()[0]
        client = redis.asyncio.Redis.from_url(self.url)
        try:
            return await client.zcard("toolgate:store:index")
        finally:
            await client.aclose()


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request, tmp_path) -> AsyncIterator[Backend]:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        client = redis.asyncio.Redis.from_url(url)
        await client.flushdb()
        await client.aclose()
    else:
        url = f"sqlite:///{tmp_path}/not/yet/there/responses.db"  # tmp_path is absolute: sqlite:////...
    found = Backend(request.param, url)
    yield found
    for store in found.opened:
        await store.close()


@pytest.fixture
async def store(backend):
    return await backend.open()


def message(item_id: str, text: str = "hello") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "user", "status": "completed", "content": [{"type": "input_text", "text": text}]}


def record(response_id: str = "resp_1", owner: str = "owner-a", items: int = 3, text: str = "hello") -> Stored:
    response = {"id": response_id, "object": "response", "created_at": 1700000000, "status": "completed", "output": []}
    return Stored(response_id, owner, response, [message(f"msg_{i}", text) for i in range(items)], 1700000000.5)


def with_output(stored: Stored, *item_ids: str) -> Stored:
    output = [{**message(item_id, "out"), "role": "assistant", "content": [{"type": "output_text", "text": "out", "annotations": []}]} for item_id in item_ids]
    return Stored(stored.id, stored.owner, {**stored.response, "output": output}, stored.input_items, stored.created_at)


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


async def test_put_then_get_round_trips(store):
    stored = record()
    await store.put(stored)
    assert await store.get("resp_1", "owner-a") == stored


async def test_another_owner_sees_nothing(store):
    await store.put(record(owner="owner-a"))
    assert await store.get("resp_1", "owner-b") is None
    assert await store.input_items("resp_1", "owner-b") is None
    assert await store.delete("resp_1", "owner-b") is False
    assert await store.get("resp_1", "owner-a") is not None


async def test_an_empty_owner_is_an_owner_too(store):
    await store.put(record(owner=""))
    assert (await store.get("resp_1", "")).owner == ""
    assert await store.get("resp_1", "owner-a") is None


async def test_missing_is_none_everywhere(store):
    assert await store.get("resp_none", "owner-a") is None
    assert await store.input_items("resp_none", "owner-a") is None
    assert await store.delete("resp_none", "owner-a") is False


async def test_delete(store):
    await store.put(record())
    assert await store.delete("resp_1", "owner-a") is True
    assert await store.get("resp_1", "owner-a") is None
    assert await store.input_items("resp_1", "owner-a") is None
    assert await store.delete("resp_1", "owner-a") is False


async def test_put_replaces_a_record_with_the_same_id(store):
    await store.put(record(items=5))
    await store.put(record(items=2, text="again"))
    got = await store.get("resp_1", "owner-a")
    assert ids(got.input_items) == ["msg_0", "msg_1"] and got.input_items[0]["content"][0]["text"] == "again"
    assert await store.input_items("resp_1", "owner-a", limit=100) == (got.input_items[::-1], False)


async def test_input_items_pages_newest_first_by_default(store):
    await store.put(record(items=5))
    pages = []
    after = None
    for _ in range(5):
        items, more = await store.input_items("resp_1", "owner-a", after=after, limit=2)
        pages.append((ids(items), more))
        if not more:
            break
        after = items[-1]["id"]
    assert pages == [(["msg_4", "msg_3"], True), (["msg_2", "msg_1"], True), (["msg_0"], False)]


async def test_input_items_pages_oldest_first(store):
    await store.put(record(items=5))
    assert await _ids(store, limit=2, order="asc") == (["msg_0", "msg_1"], True)
    assert await _ids(store, after="msg_1", limit=2, order="asc") == (["msg_2", "msg_3"], True)
    assert await _ids(store, after="msg_2", limit=2, order="asc") == (["msg_3", "msg_4"], False)
    assert await _ids(store, after="msg_4", order="asc") == ([], False)
    assert await _ids(store, after="msg_0", order="desc") == ([], False)
    assert await _ids(store, after="msg_3", limit=100, order="desc") == (["msg_2", "msg_1", "msg_0"], False)
    assert await _ids(store, limit=5, order="asc") == (["msg_0", "msg_1", "msg_2", "msg_3", "msg_4"], False)
    assert await _ids(store, after="not-an-item") == ([], False)


async def _ids(store, **page) -> tuple[list[str], bool]:
    items, more = await store.input_items("resp_1", "owner-a", **page)
    return ids(items), more


async def test_a_page_is_an_input_items_list(store):
    await store.put(record(items=3))
    items, more = await store.input_items("resp_1", "owner-a", limit=2)
    page = ResponseItemList(data=items, first_id=items[0]["id"], last_id=items[-1]["id"], has_more=more, object="list")
    assert [item.id for item in page.data] == ["msg_2", "msg_1"] and page.has_more


async def test_a_response_without_input_items(store):
    await store.put(record(items=0))
    assert (await store.get("resp_1", "owner-a")).input_items == []
    assert await store.input_items("resp_1", "owner-a") == ([], False)


async def test_bad_arguments_are_value_errors(store):
    await store.put(record())
    for page in ({"limit": 0}, {"limit": 101}, {"limit": 2.5}, {"order": "up"}):
        with pytest.raises(ValueError):
            await store.input_items("resp_1", "owner-a", **page)
    bad = Stored("resp_2", "owner-a", {"id": "resp_2"}, [{"type": "message"}], 0.0)
    with pytest.raises(ValueError, match="input item 0 of resp_2 has no string id"):
        await store.put(bad)
    assert await store.get("resp_2", "owner-a") is None


async def test_expired_is_invisible_at_once(backend):
    store = await backend.open(ttl_s=0.25)
    started = time.monotonic()
    await store.put(record())
    if time.monotonic() - started < 0.2:  # a stalled machine may already be past the ttl
        assert await store.get("resp_1", "owner-a") is not None
    await asyncio.sleep(0.3)
    assert await store.get("resp_1", "owner-a") is None
    assert await store.input_items("resp_1", "owner-a") is None
    assert await store.delete("resp_1", "owner-a") is False


async def test_writes_purge_expired_records(backend):
    brief = await backend.open(ttl_s=0.2)
    for n in range(3):
        await brief.put(record(f"resp_{n}"))
    await asyncio.sleep(0.25)
    assert await backend.held() == 3  # invisible, not yet purged
    lasting = await backend.open(ttl_s=60)
    await lasting.put(record("resp_new"))
    assert await backend.held() == 1
    assert await lasting.get("resp_new", "owner-a") is not None


async def test_the_size_cap_evicts_the_oldest(backend):
    size = encode(record("resp_0"), 1 << 20).size
    store = await backend.open(max_bytes=3 * size + size // 2)
    for n in range(5):
        await store.put(record(f"resp_{n}"))
    kept = [n for n in range(5) if await store.get(f"resp_{n}", "owner-a") is not None]
    assert kept == [2, 3, 4]
    assert await backend.held() == 3


async def test_replacing_and_deleting_keep_the_size_count(backend):
    size = encode(record("resp_0"), 1 << 20).size
    store = await backend.open(max_bytes=3 * size + size // 2)
    await store.put(record("resp_a"))
    for _ in range(10):  # if a replacement counted twice, resp_a would be evicted
        await store.put(record("resp_b"))
    assert await store.delete("resp_b", "owner-a")
    await store.put(record("resp_c"))
    await store.put(record("resp_d"))
    assert [await store.get(f"resp_{n}", "owner-a") is not None for n in "abcd"] == [True, False, True, True]


async def test_one_response_larger_than_the_cap_is_refused(backend):
    store = await backend.open(max_bytes=100)
    with pytest.raises(TooLargeToStore, match="more than the response store's whole cap of 100") as caught:
        await store.put(record(items=5))
    assert caught.value.status == 413
    assert await store.get("resp_1", "owner-a") is None


async def test_concurrent_puts_from_many_tasks(backend):
    # 60 writes at once on a busy machine may take longer than the stuck-store tests' bound.
    store = await backend.open(timeout_s=5.0)
    async with asyncio.TaskGroup() as group:
        for n in range(60):
            group.create_task(store.put(record(f"resp_{n}", owner=f"owner-{n % 3}", items=n % 4)))
    for n in range(60):
        got = await store.get(f"resp_{n}", f"owner-{n % 3}")
        assert got is not None and len(got.input_items) == n % 4


async def test_a_request_cancelled_while_its_record_is_written_still_stores_it(backend):
    """The slot's wait is the write's own future; cancelling the waiting request neither
    takes the record back nor lets a read of its id (or close) skip the write."""
    store = await backend.open()
    slot = StoreSlot(lambda: asyncio.sleep(0, store))
    waiting = asyncio.ensure_future(slot.put(record("resp_gone", items=2)))
    while "resp_gone" not in slot.writes:
        await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert "resp_gone" in slot.writes  # a read of this id waits for the write
    await slot.settled("resp_gone")
    got = await store.get("resp_gone", "owner-a")
    assert got is not None and ids(got.input_items) == ["msg_0", "msg_1"]
    assert await slot.put(record("resp_kept")) is True
    assert slot.writes == {}  # nothing left behind once every write is done


async def test_a_batch_of_many_records_and_items_in_one_go(store):
    # More rows than one INSERT statement takes, in every table, committed together.
    stored = [with_output(record(f"resp_{n}", items=n % 5), f"out_{n}_a", f"out_{n}_b") for n in range(90)]
    await asyncio.gather(*(store.put(s) for s in stored))
    for s in stored:
        got = await store.get(s.id, "owner-a")
        assert got is not None and got.input_items == s.input_items and got.response == s.response
    assert (await store.find_item("out_89_b", "owner-a"))["id"] == "out_89_b"


async def test_find_item_by_id_across_responses_of_one_owner(store):
    await store.put(with_output(record("resp_1", items=2), "msg_a"))
    await store.put(with_output(record("resp_2", owner="owner-b", items=1, text="b's"), "msg_b"))
    assert (await store.find_item("msg_1", "owner-a"))["content"][0]["text"] == "hello"  # an input item
    assert (await store.find_item("msg_a", "owner-a"))["role"] == "assistant"  # an output item
    assert await store.find_item("msg_b", "owner-a") is None  # another owner's
    assert await store.find_item("msg_b", "owner-b") is not None
    assert await store.find_item("msg_nope", "owner-a") is None
    await store.delete("resp_1", "owner-a")
    assert await store.find_item("msg_a", "owner-a") is None


def minted(owner: str = "owner-a", history: tuple[dict[str, Any], ...] = ()) -> tuple[Stored, str, str]:
    """A record as the gateway makes one: its items' ids minted by its own id; (record, input id, output id)."""
    mint = Mint()
    asked = message(mint("msg"), "asked")
    said = {**message(mint("msg"), "said"), "role": "assistant"}
    response = {"id": mint.response_id, "object": "response", "created_at": 1700000000, "status": "completed", "output": [said]}
    return Stored(mint.response_id, owner, response, [*history, asked], time.time()), asked["id"], said["id"]


async def test_items_a_response_minted_are_found_by_their_id_alone(backend, store):
    first, asked, said = minted()
    await store.put(first)
    assert await store.find_item(asked, "owner-a") == first.input_items[0]
    assert await store.find_item(said, "owner-a") == first.response["output"][0]
    assert await store.find_item(said, "owner-b") is None
    assert await store.find_item(said[:-1] + "f", "owner-a") is None  # minted by it, but not held
    assert await store.input_items(first.id, "owner-a", after=asked) == ([], False)  # pages by a minted id too
    # A later response holding a copy of each (the conversation so far), and one of its own.
    copies = ({**first.input_items[0], "status": "copied"}, {**first.response["output"][0], "status": "copied"})
    second, own, _ = minted(history=copies)
    await store.put(second)
    assert await store.find_item(said, "owner-a") == copies[1]  # the newest holder's
    assert await store.find_item(own, "owner-a") == second.input_items[2]
    assert await store.input_items(second.id, "owner-a", after=own, order="desc") == ([copies[1], copies[0]], False)
    if backend.name == "sqlite":  # rows only for the copies: the rest are found from their ids
        with sqlite3.connect(backend.url.removeprefix("sqlite:///")) as db:
            assert sorted(db.execute("SELECT item_id, place FROM item_ids")) == sorted([(asked, 0), (said, 1)])
        db.close()
    assert await store.delete(second.id, "owner-a")
    assert await store.find_item(said, "owner-a") == first.response["output"][0]  # the minter's again
    assert await store.delete(first.id, "owner-a")
    assert await store.find_item(said, "owner-a") is None
    assert await store.find_item(asked, "owner-a") is None


async def test_redis_encodes_decodes_and_pages_records_off_the_event_loop(redis_url, monkeypatch):
    # (SQLite does all of its work on its own thread: the stuck-database tests.)
    import gateway.store._redis as redis_store

    threads: dict[str, set[str]] = {}

    def watch(name: str, work: Any) -> Any:
        def watched(*args: Any) -> Any:
            threads.setdefault(name, set()).add(threading.current_thread().name)
            return work(*args)

        return watched

    for name in ("_fields", "_stored", "_items", "_output_item"):
        monkeypatch.setattr(redis_store, name, watch(name, getattr(redis_store, name)))
    monkeypatch.setattr(redis_store, "orjson", SimpleNamespace(loads=watch("loads", orjson.loads), dumps=orjson.dumps))
    backend = Backend("redis", redis_url)
    store = await backend.open()
    try:
        big = with_output(record("resp_big", items=200, text="x" * 5000), "msg_out")
        await store.put(big)
        assert await store.get(big.id, "owner-a") == big
        page, more = await store.input_items(big.id, "owner-a", limit=100)
        assert page == big.input_items[::-1][:100] and more
        assert await store.find_item("msg_7", "owner-a") == big.input_items[7]
        assert await store.find_item("msg_out", "owner-a") == big.response["output"][0]
        # put, get, the page, the input item and the output item: each on the store's threads
        assert threads.keys() == {"_fields", "_stored", "_items", "_output_item", "loads"}
        assert all(name.startswith("toolgate-redis-store") for names in threads.values() for name in names), threads
        await store.delete(big.id, "owner-a")
    finally:
        await store.close()


async def test_redis_an_encoding_that_hangs_or_a_closed_store_fails_in_time(redis_url, monkeypatch):
    import gateway.store._redis as redis_store

    release = threading.Event()

    def hangs(*args: Any) -> Any:
        release.wait(5)
        raise RuntimeError("released")

    monkeypatch.setattr(redis_store, "_fields", hangs)
    store = await Backend("redis", redis_url).open()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        with pytest.raises(StoreUnavailable, match="did not answer within 0.3s"):
            await store.put(record())
        ticker.cancel()
        assert loop.time() - started < TIMEOUT + 1 and ticks >= 10  # bounded, and the loop ran meanwhile
    finally:
        release.set()
        await store.close()
    with pytest.raises(StoreUnavailable, match="is stopped"):
        await store.put(record())


async def test_find_item_misses_expired_records(backend):
    store = await backend.open(ttl_s=0.2)
    await store.put(with_output(record(), "msg_a"))
    assert await store.find_item("msg_a", "owner-a") is not None
    await asyncio.sleep(0.3)
    assert await store.find_item("msg_a", "owner-a") is None


async def test_puts_at_once_share_a_commit_and_a_bad_one_fails_alone(tmp_path):
    path = tmp_path / "r.db"
    store = await open_store(f"sqlite:///{path}", ttl_s=60, max_bytes=1 << 20, timeout_s=TIMEOUT)
    try:
        await store.put(record("resp_0"))
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE commits (n INTEGER)")
            db.execute("CREATE TRIGGER counted AFTER INSERT ON responses BEGIN INSERT INTO commits VALUES (1); END")
            db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON item_ids WHEN NEW.item_id = 'poison'"
                " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        db.close()
        poisoned = Stored("resp_bad", "owner-a", {"id": "resp_bad"}, [message("poison")], 0.0)
        batch = [store.put(record(f"resp_{n}")) for n in range(1, 40)] + [store.put(poisoned)]
        results = await asyncio.gather(*batch, return_exceptions=True)
        assert results[:-1] == [None] * 39
        assert isinstance(results[-1], StoreUnavailable) and "refused by the test" in str(results[-1])
        assert await store.get("resp_bad", "owner-a") is None
        for n in range(40):
            assert await store.get(f"resp_{n}", "owner-a") is not None
        with sqlite3.connect(path) as db:
            writes = db.execute("SELECT count(*) FROM commits").fetchone()[0]
            total = db.execute("SELECT bytes FROM totals").fetchone()[0]
        db.close()
        assert writes == 39  # every good record once; the bad one rolled back to its savepoint alone
        assert total == sum(encode(record(f"resp_{n}"), 1 << 20).size for n in range(40))
    finally:
        await store.close()


async def _counting_batches(path) -> tuple[Any, list[int]]:
    store = await open_store(f"sqlite:///{path}", ttl_s=60, max_bytes=1 << 20, timeout_s=TIMEOUT)
    sizes: list[int] = []
    write = store._put_many

    def counted(batch: list[Stored], now: float) -> list[Exception | None]:
        sizes.append(len(batch))
        return write(batch, now)

    store._put_many = counted
    return store, sizes


async def test_under_load_the_next_batch_gathers_and_a_lone_put_does_not_wait(tmp_path):
    store, sizes = await _counting_batches(tmp_path / "r.db")
    try:
        await store.put(record("resp_0"))  # alone: written at once, and the next one too
        lone = store.submit(record("resp_1"))
        assert store._writing is not None and store._gathering is None
        await lone
        first, second = store.submit(record("resp_2")), store.submit(record("resp_3"))
        await first  # resp_3 waited for that batch: puts come faster than batches land
        later = [store.submit(record(f"resp_{n}")) for n in (4, 5)]
        await asyncio.gather(second, *later)
        assert sizes == [1, 1, 1, 3]  # resp_3 gathered those that came within GATHER_S
        for n in range(6):
            assert await store.get(f"resp_{n}", "owner-a") is not None
    finally:
        await store.close()


async def test_close_writes_the_puts_still_gathering(tmp_path):
    store, sizes = await _counting_batches(tmp_path / "r.db")
    first, second = store.submit(record("resp_0")), store.submit(record("resp_1"))
    await first
    assert store._gathering is not None  # resp_1 waits for company
    await store.close()
    assert second.done() and second.exception() is None
    again = await open_store(f"sqlite:///{tmp_path / 'r.db'}", ttl_s=60, max_bytes=1 << 20, timeout_s=TIMEOUT)
    try:
        assert await again.get("resp_1", "owner-a") is not None
    finally:
        await again.close()


@pytest.fixture
async def stuck(backend) -> AsyncIterator[Any]:
    """A store whose database does not answer: SQLite locked by another connection,
    or Redis behind a listener that never replies."""
    if backend.name == "sqlite":
        store = await backend.open()
        holder = sqlite3.connect(backend.url.removeprefix("sqlite:///"), isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        yield store
        holder.execute("ROLLBACK")
        holder.close()
    else:
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(16)
            yield await backend.open(url=f"redis://127.0.0.1:{silent.getsockname()[1]}/0")


async def test_a_stuck_database_is_unavailable_and_the_loop_runs_on(stuck):
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        for _ in range(1000):
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    results = await asyncio.gather(*(stuck.put(record(f"resp_{n}")) for n in range(3)), return_exceptions=True)
    waited = time.monotonic() - started
    ticker.cancel()
    assert all(isinstance(r, StoreUnavailable) and r.status == 503 for r in results), results
    assert waited < TIMEOUT * 3
    assert ticks >= waited / 0.01 / 3  # the loop kept ticking all along


async def test_an_unreachable_redis_is_unavailable():
    store = await open_store(f"redis://127.0.0.1:{_free_port()}/0", ttl_s=60, max_bytes=1 << 20, timeout_s=TIMEOUT)
    try:
        for operation in (store.put(record()), store.get("resp_1", "a"), store.input_items("resp_1", "a"), store.delete("resp_1", "a")):
            with pytest.raises(StoreUnavailable, match="the response store failed: .*[Cc]onnect"):
                await operation
    finally:
        await store.close()


async def test_a_write_failing_midway_changes_nothing(tmp_path):
    path = tmp_path / "r.db"
    store = await open_store(f"sqlite:///{path}", ttl_s=60, max_bytes=1 << 20, timeout_s=TIMEOUT)
    try:
        await store.put(record(items=2))
        with sqlite3.connect(path) as db:  # the database itself refuses one item, after the old record was deleted
            db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON item_ids WHEN NEW.item_id = 'poison'"
                " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        db.close()
        poisoned = Stored("resp_1", "owner-a", {"id": "resp_1"}, [message("msg_0"), message("poison")], 0.0)
        with pytest.raises(StoreUnavailable, match="refused by the test"):
            await store.put(poisoned)
        assert await store.get("resp_1", "owner-a") == record(items=2)
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT bytes FROM totals").fetchone()[0] == encode(record(items=2), 1 << 20).size
        db.close()
    finally:
        await store.close()


async def test_sqlite_item_ids_go_with_their_responses(tmp_path):
    """Every way a response leaves (eviction, replacement, delete, expiry) takes its item ids."""
    path = tmp_path / "r.db"
    url = f"sqlite:///{path}"
    size = encode(with_output(record("resp_0"), "out_0"), 1 << 20).size
    store = await open_store(url, ttl_s=60, max_bytes=3 * size + size // 2, timeout_s=TIMEOUT)

    def item_ids() -> dict[str, int]:
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT response_id, count(*) FROM item_ids GROUP BY response_id").fetchall()
        db.close()
        return dict(rows)

    try:
        for n in range(5):
            await store.put(with_output(record(f"resp_{n}"), f"out_{n}"))
        assert item_ids() == {"resp_2": 4, "resp_3": 4, "resp_4": 4}  # 3 input items and 1 output item each
        await store.put(with_output(record("resp_4", items=1), "out_4"))
        assert await store.delete("resp_3", "owner-a")
        assert item_ids() == {"resp_2": 4, "resp_4": 2}
        brief = await open_store(url, ttl_s=0.05, max_bytes=1 << 20, timeout_s=TIMEOUT)
        await brief.put(with_output(record("resp_5"), "out_5"))
        await brief.close()
        await asyncio.sleep(0.1)
        later = await open_store(url, ttl_s=60, max_bytes=1 << 20, timeout_s=TIMEOUT)
        await later.put(with_output(record("resp_6"), "out_6"))  # a store's first write purges
        await later.close()
        assert item_ids() == {"resp_2": 4, "resp_4": 2, "resp_6": 4}
    finally:
        await store.close()


async def test_sqlite_an_id_twice_in_one_batch_keeps_the_later(tmp_path):
    path = tmp_path / "r.db"
    store = await open_store(f"sqlite:///{path}", ttl_s=60, max_bytes=1 << 20, timeout_s=TIMEOUT)
    try:
        first, later = with_output(record(items=4), "out_a"), with_output(record(items=1, text="later"), "msg_0")
        await asyncio.gather(store.put(first), store.put(later), store.put(record("resp_2")))
        assert await store.get("resp_1", "owner-a") == later
        assert await store.find_item("out_a", "owner-a") is None
        assert await store.find_item("msg_3", "owner-a") is None
        assert await store.find_item("msg_0", "owner-a") == later.response["output"][0]  # its output, not its input
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT bytes FROM totals").fetchone()[0] == encode(later, 1 << 20).size + encode(record("resp_2"), 1 << 20).size
        db.close()
    finally:
        await store.close()


async def test_a_closed_sqlite_store_refuses_at_once(tmp_path):
    store = await open_store(f"sqlite:///{tmp_path}/r.db", ttl_s=60, max_bytes=1 << 20, timeout_s=TIMEOUT)
    await store.close()
    with pytest.raises(StoreUnavailable, match="the response store is unavailable: toolgate-store is stopped"):
        await store.get("resp_1", "a")
    await store.close()  # twice is fine


async def test_opening_a_version_1_database_upgrades_it(tmp_path):
    path = tmp_path / "old.db"
    stored = with_output(record(items=4), "msg_out")
    with sqlite3.connect(path, isolation_level=None) as db:
        migrate(db, upto=1)
        encoded = encode(stored, 1 << 20)
        db.execute(
            "INSERT INTO responses (id, owner, created_at, expires_at, response) VALUES (?, ?, ?, ?, ?)",
            (stored.id, stored.owner, stored.created_at, time.time() + 60, encoded.response),
        )
        db.executemany("INSERT INTO items VALUES (?, ?, ?, ?)", _old_items(stored))
    db.close()
    store = await open_store(f"sqlite:///{path}", ttl_s=60, max_bytes=1 << 20, timeout_s=TIMEOUT)
    try:
        assert await store.get(stored.id, stored.owner) == stored
        assert await store.find_item("msg_out", stored.owner) == stored.response["output"][0]  # indexed by the upgrade
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 4
            assert db.execute("SELECT bytes FROM totals").fetchone()[0] == encoded.size
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.close()
        await store.put(record("resp_2"))
        await store.delete(stored.id, stored.owner)
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT bytes FROM totals").fetchone()[0] == encode(record("resp_2"), 1 << 20).size
        db.close()
    finally:
        await store.close()
    again = await open_store(f"sqlite:///{path}", ttl_s=60, max_bytes=1 << 20, timeout_s=TIMEOUT)
    assert await again.get("resp_2", "owner-a") is not None  # reopening an up-to-date file changes nothing
    await again.close()


def _old_items(stored: Stored) -> list[tuple[str, int, str, bytes]]:
    """A record's rows in the `items` table of versions 1 to 3."""
    return [(stored.id, seq, item["id"], orjson.dumps(item)) for seq, item in enumerate(stored.input_items)]


async def test_opening_a_version_3_database_moves_its_items_into_their_responses(tmp_path):
    path = tmp_path / "v3.db"
    first = with_output(record("resp_1", items=5, text="naïve ☃"), "out_1a", "out_1b")
    # resp_2 holds msg_1 too (an input item of the newer response wins), and its output
    # repeats an input id (the output wins within one response); resp_3 is another owner's.
    second = with_output(Stored("resp_2", "owner-a", {**first.response, "id": "resp_2"}, [message("msg_1", "second"), message("dup", "in")], 1700000001.0), "dup")
    third = with_output(record("resp_3", owner="owner-b", items=1), "out_3")
    empty = record("resp_4", items=0)
    with sqlite3.connect(path, isolation_level=None) as db:
        migrate(db, upto=3)
        for stored in (first, second, third, empty):
            response = orjson.dumps(stored.response)
            items = _old_items(stored)
            db.execute(
                "INSERT INTO responses (id, owner, created_at, expires_at, response, bytes) VALUES (?, ?, ?, ?, ?, ?)",
                (stored.id, stored.owner, stored.created_at, time.time() + 60, response, len(response) + sum(len(row[3]) for row in items)),
            )
            db.executemany("INSERT INTO items VALUES (?, ?, ?, ?)", items[::-1])  # in no particular order
            db.executemany(
                "INSERT INTO outputs VALUES (?, ?, ?)", [(stored.id, idx, item["id"]) for idx, item in enumerate(stored.response["output"])]
            )
    db.close()
    store = await open_store(f"sqlite:///{path}", ttl_s=60, max_bytes=1 << 20, timeout_s=TIMEOUT)
    try:
        for stored in (first, second, third, empty):
            assert await store.get(stored.id, stored.owner) == stored
        assert await store.get("resp_3", "owner-a") is None
        assert await _ids(store, limit=2) == (["msg_4", "msg_3"], True)
        assert await _ids(store, after="msg_3", limit=2) == (["msg_2", "msg_1"], True)
        assert await _ids(store, after="msg_1", limit=2) == (["msg_0"], False)
        assert await _ids(store, after="msg_1", limit=2, order="asc") == (["msg_2", "msg_3"], True)
        assert await _ids(store, after="msg_2", limit=2, order="asc") == (["msg_3", "msg_4"], False)
        assert await store.input_items("resp_4", "owner-a") == ([], False)
        assert await store.find_item("msg_3", "owner-a") == first.input_items[3]
        assert await store.find_item("msg_1", "owner-a") == second.input_items[0]  # the newer response's
        assert await store.find_item("out_1b", "owner-a") == first.response["output"][1]
        assert await store.find_item("dup", "owner-a") == second.response["output"][0]
        assert await store.find_item("out_3", "owner-a") is None
        assert await store.find_item("out_3", "owner-b") == third.response["output"][0]
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == 4
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert tables == {"responses", "totals", "item_ids"}
            assert db.execute("SELECT bytes FROM totals").fetchone()[0] == sum(encode(s, 1 << 20).size for s in (first, second, third, empty))
        db.close()
        assert await store.delete("resp_2", "owner-a")
        assert await store.find_item("msg_1", "owner-a") == first.input_items[1]
        assert await store.find_item("dup", "owner-a") is None
        await store.put(record("resp_5"))
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT bytes FROM totals").fetchone()[0] == sum(encode(s, 1 << 20).size for s in (first, third, empty, record("resp_5")))
            assert db.execute("SELECT count(*) FROM item_ids WHERE response_id = 'resp_2'").fetchone()[0] == 0
        db.close()
    finally:
        await store.close()


async def test_a_database_from_a_newer_toolgate_is_refused(tmp_path):
    path = tmp_path / "new.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreUnavailable, match="schema version 99, newer than this toolgate's 4"):
        await open_store(f"sqlite:///{path}", ttl_s=60, max_bytes=1 << 20, timeout_s=TIMEOUT)


async def test_an_open_waits_for_another_process_holding_the_file(tmp_path):
    # Another worker migrating the file holds its write lock for as long as that takes: the
    # open waits for it (its own bound is minutes), where the operations' busy timeout
    # (0.8 * TIMEOUT) failed it "database is locked".
    path = tmp_path / "r.db"
    with write_locked_elsewhere(path, 1.0):
        started = time.monotonic()
        store = await open_store(f"sqlite:///{path}", ttl_s=60, max_bytes=1 << 20, timeout_s=TIMEOUT)
        assert time.monotonic() - started > 0.7  # it did wait for the lock
    try:
        await store.put(record())
        assert await store.get("resp_1", "owner-a") == record()
        writer = sqlite3.connect(path, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")  # once open, a locked file fails in the operations' bound again
        try:
            with pytest.raises(StoreUnavailable, match="locked|did not answer"):
                await store.put(record("resp_2"))
        finally:
            writer.execute("ROLLBACK")
            writer.close()
    finally:
        await store.close()


async def test_an_unopenable_sqlite_file_is_unavailable(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreUnavailable, match=r"\(opening .*file/r.db\)"):
        await open_store(f"sqlite:///{tmp_path}/file/r.db", ttl_s=60, max_bytes=1 << 20, timeout_s=TIMEOUT)


async def test_bad_urls_and_settings_are_value_errors():
    assert sorted(BACKENDS) == ["redis", "rediss", "sqlite"]
    for url, problem in [
        ("memory://", "unknown response store URL scheme 'memory'"),
        ("postgres://db/x", "expected one of: sqlite, redis, rediss"),
        ("sqlite://host/x.db", "sqlite:///relative/path.db"),
        ("sqlite:///", "sqlite:////absolute/path.db"),
    ]:
        with pytest.raises(ValueError, match=problem):
            await open_store(url, ttl_s=60, max_bytes=1 << 20)
    with pytest.raises(ValueError, match="must be positive"):
        await open_store("sqlite:///x.db", ttl_s=0, max_bytes=1 << 20)


async def test_redis_without_its_package_says_what_to_install(monkeypatch):
    monkeypatch.delitem(sys.modules, "gateway.store._redis", raising=False)
    for name in [name for name in sys.modules if name == "redis" or name.startswith("redis.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install 'toolgate\[redis\]'"):
        await open_store("redis://127.0.0.1:6379/0", ttl_s=60, max_bytes=1 << 20)


async def test_a_write_hung_on_the_thread_fails_its_puts_in_time_and_the_next_write_lands(tmp_path, monkeypatch):
    """A write that never returns (a stalled disk): its puts fail within the store's timeout, puts
    behind it wait their own turn, and once the thread is free the store writes again."""
    store = await open_store(f"sqlite:///{tmp_path}/r.db", ttl_s=60, max_bytes=1 << 20, timeout_s=TIMEOUT)
    release = threading.Event()
    real = store._put_many

    def hung(batch, now):
        release.wait(10)
        return real(batch, now)

    monkeypatch.setattr(store, "_put_many", hung)
    try:
        started = time.monotonic()
        first = store.submit(record("resp_1"))
        await asyncio.sleep(0)
        second = store.submit(record("resp_2"))  # the next batch, behind the hung one
        with pytest.raises(StoreUnavailable, match=f"did not answer within {TIMEOUT:g}s"):
            await first
        with pytest.raises(StoreUnavailable, match=f"did not answer within {TIMEOUT:g}s"):
            await second
        assert time.monotonic() - started < TIMEOUT * 3
        monkeypatch.setattr(store, "_put_many", real)
        release.set()
        await store.put(record("resp_3"))
        assert (await store.get("resp_3", "owner-a")).id == "resp_3"
    finally:
        release.set()
        await store.close()


async def test_a_closed_sqlite_store_refuses_a_put_at_once(tmp_path):
    store = await open_store(f"sqlite:///{tmp_path}/r.db", ttl_s=60, max_bytes=1 << 20, timeout_s=TIMEOUT)
    await store.close()
    with pytest.raises(StoreUnavailable, match="the response store is unavailable: toolgate-store is stopped"):
        await store.put(record())
