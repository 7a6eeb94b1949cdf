"""The one backoff schedule: capped exponential delays with jitter.

    for attempt in range(upstream.retries):
        await asyncio.sleep(backoff(attempt, first_s=0.25, cap_s=8.0, jitter=0.5))

Jitter spreads the retries of many requests (or replicas) that failed together,
so they do not come back at the same instant.
"""

from __future__ import annotations

import random


def backoff(attempt: int, *, first_s: float, cap_s: float, jitter: float = 0.2) -> float:
    """Seconds to wait before retry `attempt` (0 first): first_s doubled each time, at most
    cap_s, times a random factor within 1 ± jitter."""
    return min(cap_s, first_s * 2 ** min(attempt, 32)) * random.uniform(1 - jitter, 1 + jitter)
