"""Progress of the calls of one round, coalesced and throttled on its way to the client.

    board = Board(queue, interval_s=0.25)        # queue: the round's, also fed with outcomes
    with listening(board.listener(call_id, name)):
        await tool.call(arguments)               # the tool reports as often as it likes
    ...
    item = await queue.get()                     # a call id whose progress is due
    note = board.take(item.call_id)              # its latest report, or None

A server may report thousands of times a second. Each call keeps only its latest report
and at most one flag in the queue, and a call's flag is raised at most once per
``interval_s``: the queue never holds more than one flag per call, and the client sees
a few lines a second per call, the newest each time.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass

from gateway.redact import SECRETS
from gateway.tools.base import Progress

MESSAGE_CHARS = 200


@dataclass(frozen=True, slots=True)
class Note:
    """A call's latest progress, as the client may see it (message redacted, one line, cut)."""

    call_id: str
    name: str
    progress: float
    total: float | None
    message: str | None


@dataclass(frozen=True, slots=True)
class Due:
    """Queued for the round's consumer: this call has progress to show."""

    call_id: str


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _message(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    line = " ".join(value[: 4 * MESSAGE_CHARS].split())
    return SECRETS(line)[:MESSAGE_CHARS]


class Board:
    def __init__(self, queue: asyncio.Queue, interval_s: float = 0.25) -> None:
        self._queue = queue
        self._interval = interval_s
        self._latest: dict[str, Note] = {}
        self._flagged: set[str] = set()
        self._shown: dict[str, float] = {}  # call id -> when its progress was last taken
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._closed: set[str] = set()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()

    def listener(self, call_id: str, name: str) -> Progress:
        def report(progress: float, total: float | None, message: str | None) -> None:
            if threading.get_ident() != self._thread:  # a tool's blocking work on a worker thread
                self._loop.call_soon_threadsafe(report, progress, total, message)
                return
            value = _number(progress)
            if value is None or call_id in self._closed:
                return
            self._latest[call_id] = Note(call_id, name, value, _number(total), _message(message))
            if call_id in self._flagged:
                return  # coalesced: the flag already queued will carry this report
            self._flagged.add(call_id)
            wait = self._shown.get(call_id, -math.inf) + self._interval - time.monotonic()
            if wait <= 0:
                self._queue.put_nowait(Due(call_id))
            else:
                self._timers[call_id] = self._loop.call_later(wait, self._raise, call_id)

        return report

    def _raise(self, call_id: str) -> None:
        self._timers.pop(call_id, None)
        if call_id not in self._closed:
            self._queue.put_nowait(Due(call_id))

    def take(self, call_id: str) -> Note | None:
        self._flagged.discard(call_id)
        self._shown[call_id] = time.monotonic()
        return self._latest.pop(call_id, None)

    def close(self, call_id: str) -> None:
        """The call finished: later reports, and one still pending, are not shown."""
        self._closed.add(call_id)
        self._latest.pop(call_id, None)
        timer = self._timers.pop(call_id, None)
        if timer is not None:
            timer.cancel()

    def close_all(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
