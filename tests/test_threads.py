"""The bounded thread pools behind tools' and the store's blocking work."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from gateway.threads import Busy, Threads


async def test_a_pool_bounds_its_queue_and_skips_abandoned_jobs():
    pool = Threads("test", threads=1, queued=2)
    release, ran = threading.Event(), []
    try:
        blocked = asyncio.create_task(pool.run(release.wait, 5))
        await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await pool.run(ran.append, "abandoned")
        queued = asyncio.create_task(pool.run(ran.append, "queued"))
        await asyncio.sleep(0)
        with pytest.raises(Busy, match="all 1 threads are busy"):
            await pool.run(ran.append, "refused")
        release.set()
        assert await blocked is True
        await queued
        assert ran == ["queued"]
        with pytest.raises(ZeroDivisionError):
            await pool.run(lambda: 1 / 0)
    finally:
        release.set()
        pool.stop()
    with pytest.raises(Busy, match="stopped"):
        await pool.run(ran.append, "late")


async def test_hung_jobs_never_delay_a_name_lookup():
    # The default executor resolves DNS; a pool's hung threads are its own.
    pool = Threads("test", threads=3, queued=0)
    release = threading.Event()
    hung = [asyncio.ensure_future(pool.run(release.wait, 5)) for _ in range(3)]
    try:
        await asyncio.sleep(0.01)
        started = time.monotonic()
        await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo("localhost", 80), 2)
        assert time.monotonic() - started < 0.5
        with pytest.raises(Busy):
            await pool.run(sum, [1])
    finally:
        release.set()
        await asyncio.gather(*hung)
        pool.stop()


async def test_jobs_of_a_one_thread_pool_run_in_order_on_one_thread():
    pool = Threads("test", threads=1, queued=16)
    seen = await asyncio.gather(*(pool.run(lambda i=i: (i, threading.get_ident())) for i in range(10)))
    pool.stop()
    assert [i for i, _ in seen] == list(range(10)) and len({t for _, t in seen}) == 1


async def test_call_hands_the_result_or_the_error_to_a_callback_on_the_loop():
    pool = Threads("test", threads=1, queued=0)
    loop = asyncio.get_running_loop()
    got: asyncio.Queue = asyncio.Queue()
    release = threading.Event()

    def then(result, error):
        assert asyncio.get_running_loop() is loop  # on the loop, not on the pool's thread
        got.put_nowait((result, error))

    try:
        pool.call(then, lambda: threading.current_thread().name)
        assert await asyncio.wait_for(got.get(), 2) == ("test-1", None)
        pool.call(then, lambda: 1 / 0)
        result, error = await asyncio.wait_for(got.get(), 2)
        assert result is None and isinstance(error, ZeroDivisionError)
        pool.call(then, release.wait, 5)
        with pytest.raises(Busy, match="all 1 threads are busy"):
            pool.call(then, lambda: None)  # refused at once, as run refuses
        release.set()
        assert await asyncio.wait_for(got.get(), 2) == (True, None)
    finally:
        release.set()
        pool.stop()
    with pytest.raises(Busy, match="stopped"):
        pool.call(then, lambda: None)
