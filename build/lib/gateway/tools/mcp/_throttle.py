"""A token bucket for log lines about one server: a burst, then a steady rate, the rest counted.

    throttle = Throttle(burst=100, per_s=10, report=lambda n: logger.warning("dropped %d lines", n))
    if throttle.admit():
        logger.info(line)
    ...
    throttle.flush()  # at the end: reports what was dropped since the last report

Once dry the bucket stays shut until it is half full again, so lines come through in runs
(a few dozen lines of one traceback read better than one line every tenth of a second),
and the summary of what was dropped is one line per run rather than one per admitted line.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class Throttle:
    def __init__(
        self,
        *,
        burst: int,
        per_s: float,
        report: Callable[[int], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._burst = float(burst)
        self._per_s = per_s
        self._report = report
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._shut = False
        self.dropped = 0  # since the last report

    def shut(self) -> bool:
        """Whether lines are being dropped now; reports the drops when the bucket reopens."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._per_s)
        self._stamp = now
        if self._shut and self._tokens >= self._burst / 2 - 1e-9:  # due()'s wait, float-rounded
            self._shut = False
            self.flush()
        return self._shut

    def admit(self) -> bool:
        """Takes a token for one line, or counts the line as dropped."""
        if not self.shut() and self._tokens >= 1:
            self._tokens -= 1
            return True
        self._shut = True
        self.dropped += 1
        return False

    def refuse(self, lines: int) -> None:
        """Counts lines dropped without asking (the rest of a chunk once the bucket is dry)."""
        self.dropped += lines

    def due(self) -> float:
        """Seconds until the bucket reopens (and the drops are reported); inf while open."""
        if not self._shut:
            return math.inf
        elapsed = self._clock() - self._stamp
        return max(0.0, (self._burst / 2 - self._tokens) / self._per_s - elapsed)

    def flush(self) -> None:
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            self._report(dropped)
