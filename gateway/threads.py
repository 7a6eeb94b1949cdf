"""Bounded pools of daemon threads for blocking work, off the event loop.

    pool = Threads("toolgate-tool", threads=8, queued=64)
    result = await pool.run(reduce_html, text)      # Busy when all are taken and the queue is full
    pool.call(then, write, batch)                   # no await: then(result, error) on the loop after
    pool.stop()                                     # queued jobs finish; later runs raise Busy

The event loop's default executor resolves DNS (for the upstream and for
`fetch_url`), so blocking work gets pools of its own: a job that hangs past its
caller's timeout keeps its thread, but never delays a name lookup. The threads
are daemons, so a hung job cannot hold the process at exit either. Threads start
when first needed. Cancelling the await abandons the job: one not yet started is
skipped, a running one finishes with nobody waiting. With `threads=1`, jobs run
one at a time in order, on one thread (what a sqlite3 connection needs).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_STOP = None
# One job on the queue: the function, its arguments, the future its caller awaits (or the callback
# `call` was given), and that caller's loop.
_Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any] | Callable[[Any, BaseException | None], None]", asyncio.AbstractEventLoop]


class Busy(Exception):
    """Every thread is taken and the queue is full, or the pool is stopped."""


class Threads:
    def __init__(self, name: str = "toolgate-pool", *, threads: int = 8, queued: int = 64) -> None:
        self.name = name
        self.threads = max(1, threads)
        self.queued = max(0, queued)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        self._pending = 0  # submitted and not yet finished, hung ones included
        self._stopped = False

    @property
    def pending(self) -> int:
        return self._pending

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """Run `func(*args)` on one of the pool's threads."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._submit((func, args, future, loop))
        return await future

    def call(self, then: Callable[[Any, BaseException | None], None], func: Callable[..., Any], *args: Any) -> None:
        """Run `func(*args)` on one of the pool's threads, then `then(result, error)` on the
        calling loop: `run` without a future or a task to wake (Busy at once, as `run`). For a
        caller that hands work over in a loop callback, e.g. the store's group commit."""
        self._submit((func, args, then, asyncio.get_running_loop()))

    def _submit(self, job: _Job) -> None:
        with self._lock:
            if self._stopped:
                raise Busy(f"{self.name} is stopped")
            if self._pending >= self.threads + self.queued:
                raise Busy(f"{self.name}: all {self.threads} threads are busy and {self.queued} jobs wait")
            self._pending += 1
            if self._started < min(self.threads, self._pending):
                self._started += 1
                threading.Thread(target=self._work, name=f"{self.name}-{self._started}", daemon=True).start()
        self._jobs.put(job)

    def stop(self) -> None:
        """Let the threads finish the jobs queued so far, then end; later runs raise Busy."""
        with self._lock:
            self._stopped = True
            started = self._started
        for _ in range(started):
            self._jobs.put(_STOP)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not _STOP:
            func, args, target, loop = job
            try:
                if isinstance(target, asyncio.Future) and target.cancelled():
                    continue
                try:
                    result, error = func(*args), None
                except BaseException as exc:  # handed to the awaiting task, which decides
                    result, error = None, exc
                try:
                    if isinstance(target, asyncio.Future):
                        loop.call_soon_threadsafe(settle, target, result, error)
                    else:
                        loop.call_soon_threadsafe(target, result, error)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    pass
            finally:
                with self._lock:
                    self._pending -= 1


def settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """`future`'s result or error, unless it is done already (cancelled by its waiter)."""
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
