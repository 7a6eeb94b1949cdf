"""Suite-wide checks.

Every scripted turn is used: a test fails at teardown when a `FakeLLM` (or an in-process
`support.ScriptedUpstream`) it created still holds turns it was given (pytest-httpx's "every response was requested"), so a test that scripted a
second round the gateway never asked for cannot pass by accident. A test that scripts spares on
purpose says so: ``@pytest.mark.fakellm(assert_all_used=False)``.
"""

from __future__ import annotations

import pytest

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
