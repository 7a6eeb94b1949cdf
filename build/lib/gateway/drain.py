"""Shutdown, as the requests in flight see it: process-wide, like the signal that starts it.

    drain.track(interrupt)     # the pump, while it serves one request
    drain.untrack(interrupt)
    drain.begin()       # SIGTERM arrived: /readyz says draining
    drain.end_all()     # the grace period is over: interrupt every open request

`interrupt()` is the pump's: it ends its request with an error the client
can read (an SSE error event and `[DONE]`, or a 503).
"""

from __future__ import annotations

from collections.abc import Callable

_open: set[Callable[[], None]] = set()
_draining = False


def draining() -> bool:
    return _draining


def begin() -> None:
    global _draining
    _draining = True


def track(interrupt: Callable[[], None]) -> Callable[[], None]:
    _open.add(interrupt)
    return interrupt


def untrack(interrupt: Callable[[], None]) -> None:
    _open.discard(interrupt)


def end_all() -> int:
    """Interrupt every open request; returns how many."""
    pending = list(_open)
    for interrupt in pending:
        interrupt()
    return len(pending)
