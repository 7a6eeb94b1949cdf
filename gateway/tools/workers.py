"""A bounded pool of daemon threads for tools' blocking work.

    result = await WORKERS.run(reduce_html, text)     # raises WorkersBusy when full

Separate from the event loop's default executor, which resolves DNS for the
upstream and for `fetch_url`: a tool whose thread hangs past its timeout keeps
that thread, but never delays a name lookup. The threads are daemons, so a hung
tool cannot hold the process at exit either. At most `threads` calls run and
`queued` more wait; past that a call fails at once instead of queueing without
bound.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class WorkersBusy(Exception):
    """Every worker thread is busy and the queue is full."""


class Workers:
    def __init__(self, threads: int = 8, queued: int = 64) -> None:
        self.threads = max(1, threads)
        self.queued = max(0, queued)
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future, asyncio.AbstractEventLoop]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        self._pending = 0  # submitted and not yet finished, hung ones included

    @property
    def pending(self) -> int:
        return self._pending

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """Run `func(*args)` on a worker thread; cancelling the await abandons the thread's result."""
        with self._lock:
            if self._pending >= self.threads + self.queued:
                raise WorkersBusy(f"all {self.threads} tool worker threads are busy")
            self._pending += 1
            if self._started < min(self.threads, self._pending):
                self._started += 1
                threading.Thread(target=self._work, name=f"toolgate-tool-{self._started}", daemon=True).start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._jobs.put((lambda: func(*args), future, loop))
        return await future

    def _work(self) -> None:
        while True:
            job, future, loop = self._jobs.get()
            try:
                if future.cancelled():
                    continue
                try:
                    result, error = job(), None
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


# One pool per process for every tool; its size is set from config (`loop.tool_threads`).
WORKERS = Workers()
