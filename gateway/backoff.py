"""The one backoff schedule: capped exponential delays with jitter.

    for attempt in range(upstream.retries):
        await asyncio.sleep(backoff(attempt, first_s=0.25, cap_s=8.0, jitter=0.5))

Jitter spreads the retries of many requests (or replicas) that failed together,
so they do not come back at the same instant. `Patience` says how late a retry's
wait may end for the one who waits on it.
"""

from __future__ import annotations

import math
import random


class Patience:
    """How late a retry's wait may end (event-loop time) before the client must hear
    something. A streamed response's status goes out with its first keepalive: a retry that
    would wait past it is not made, so the client gets the upstream's own status (a 429 and its
    Retry-After, which it can act on) rather than a 200 and an error event. Once the status is
    out, `until` is infinite: later waits cost the client nothing it could have had."""

    __slots__ = ("until",)

    def __init__(self, until: float = math.inf) -> None:
        self.until = until


def backoff(attempt: int, *, first_s: float, cap_s: float, jitter: float = 0.2) -> float:
    """Seconds to wait before retry `attempt` (0 first): first_s doubled each time, at most
    cap_s, times a random factor within 1 ± jitter."""
    delay: float = min(cap_s, first_s * 2 ** min(attempt, 32))
    return delay * random.uniform(1 - jitter, 1 + jitter)
