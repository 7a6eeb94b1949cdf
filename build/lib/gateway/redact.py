"""One redaction layer over every secret the gateway knows.

    SECRETS.add(upstream_key, *header_values)      # at app start, from the config
    SECRETS("upstream said: bad key sk-...")       # -> "upstream said: bad key ***"
    SECRETS.scrub(text, client_key)                # with one request's own secret too

Applied at every boundary: log records (in the log listener, off the event
loop), client-facing error messages, tool results before the model reads them,
and `toolgate check`. Values shorter than `MIN_LENGTH` are not redacted (they
would blank ordinary words); the config warns about such secrets.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

MIN_LENGTH = 6
MASK = "***"


class Redactor:
    def __init__(self) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def add(self, *values: str | None) -> None:
        with self._lock:
            fresh = {v for v in values if v and len(v) >= MIN_LENGTH} - self._values
            if not fresh:
                return
            self._values |= fresh
            self._pattern = _compile(self._values)

    def __call__(self, text: str) -> str:
        pattern = self._pattern
        return text if pattern is None else pattern.sub(MASK, text)

    def scrub(self, text: str, *extra: str) -> str:
        """`text` with the known secrets and `extra` (one request's own) masked."""
        text = self(text)
        for value in extra:
            if value and len(value) >= MIN_LENGTH:
                text = text.replace(value, MASK)
        return text


def _compile(values: Iterable[str]) -> re.Pattern[str]:
    # Longest first, so a secret that contains another is masked whole.
    return re.compile("|".join(re.escape(v) for v in sorted(values, key=len, reverse=True)))


# The process's secrets: filled from the config when an app is created.
SECRETS = Redactor()
