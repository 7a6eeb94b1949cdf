"""One daemon thread that runs blocking jobs in order, for one SQLite connection.

    thread = OneThread("toolgate-store", queued=256)
    rows = await thread.run(fetch_rows, "SELECT ...")   # Refused past `queued`, or once stopped
    thread.stop()

A sqlite3 connection belongs to the thread that opened it, so every job of one
store runs here, and a whole transaction is one job: one hop from the loop per
operation (aiosqlite hops once per statement and fetch). Cancelling the await
abandons the job: a job not yet started is skipped, a running one finishes with
nobody waiting. The thread is a daemon, so a job stuck in SQLite's busy wait
cannot hold the process at exit.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_STOP = None


class Refused(Exception):
    """More jobs are waiting than the thread's queue holds, or the thread is stopped."""


class OneThread:
    def __init__(self, name: str, *, queued: int = 256) -> None:
        self.queued = queued
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self._stopped:
                raise Refused("is closed")
            if self._pending >= self.queued:
                raise Refused(f"is busy: {self._pending} operations are already waiting")
            self._pending += 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._jobs.put((func, args, future, loop))
        return await future

    def stop(self) -> None:
        """Let the thread finish the jobs queued so far, then end; later runs raise Refused."""
        with self._lock:
            self._stopped = True
        self._jobs.put(_STOP)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not _STOP:
            func, args, future, loop = job
            try:
                if future.cancelled():
                    continue
                try:
                    result, error = func(*args), None
                except BaseException as exc:  # handed to the awaiting task, which decides
                    result, error = None, exc
                try:
                    loop.call_soon_threadsafe(_settle, future, result, error)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    pass
            finally:
                with self._lock:
                    self._pending -= 1


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
