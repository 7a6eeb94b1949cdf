"""Every test leaves logging as it found it.

`toolgate`'s command line sets logging up for the process (`logs.setup`: a queue, a writer
thread, handlers on the root and uvicorn loggers). A test that runs `cli.main()` in-process
would leave that writer pointing at the test's captured stderr, closed once the test ends,
and every later line would be a "Logging error" (and the `toolgate` logger at WARNING).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from gateway import logs

_NAMES = ("", "toolgate", "toolgate.access", "uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture(autouse=True)
def _logging_as_found() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _NAMES]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    yield
    if all(lg.handlers == handlers for lg, (handlers, _, _) in zip(loggers, saved)):
        return
    logs.stop()
    for lg, (handlers, level, propagate) in zip(loggers, saved):
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
