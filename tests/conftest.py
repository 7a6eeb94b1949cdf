"""Suite-wide checks.

Every scripted turn is used: a test fails at teardown when a `FakeLLM` (or an in-process
`support.ScriptedUpstream`) it created still holds turns it was given (pytest-httpx's "every response was requested"), so a test that scripted a
second round the gateway never asked for cannot pass by accident. A test that scripts spares on
purpose says so: ``@pytest.mark.fakellm(assert_all_used=False)``.

Every test also leaves logging as it found it: `toolgate`'s command line sets logging up for
the process (`logs.setup`: a queue, a writer thread, handlers on the root and uvicorn loggers),
and a test that runs `cli.main()` in-process would otherwise leave that writer on its captured
stderr, closed once the test ends: every later line would be a "Logging error".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from gateway import logs
from tests.fakellm import FakeLLM
from tests.support import ScriptedUpstream

_CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_CALL_FAILED] = True  # its own failure says more than the unused turns would
    return report


@pytest.fixture(autouse=True)
def scripted_turns_all_used(request: pytest.FixtureRequest):
    fakes: list[FakeLLM] = []
    scripted: list[ScriptedUpstream] = []
    FakeLLM.watchers.append(fakes)
    ScriptedUpstream.watchers.append(scripted)
    try:
        yield
    finally:
        FakeLLM.watchers.remove(fakes)
        ScriptedUpstream.watchers.remove(scripted)
    marker = request.node.get_closest_marker("fakellm")
    if (marker and not marker.kwargs.get("assert_all_used", True)) or request.node.stash.get(_CALL_FAILED, False):
        return
    lines = [f"FakeLLM({f.host_type!r}) got {f.request_count} request(s); never used: {list(f.unused)!r:.400}" for f in fakes if f.unused]
    lines += [f"ScriptedUpstream got {len(s.requests)} request(s); never used: {list(s.unused)!r:.400}" for s in scripted if s.unused]
    if lines:
        pytest.fail("scripted turns were never requested:\n  " + "\n  ".join(lines), pytrace=False)


_LOGGERS = ("", "toolgate", "toolgate.access", "uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture(autouse=True)
def logging_as_found() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    yield
    if all(lg.handlers == handlers for lg, (handlers, _, _) in zip(loggers, saved)):
        return
    logs.stop()
    for lg, (handlers, level, propagate) in zip(loggers, saved):
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
