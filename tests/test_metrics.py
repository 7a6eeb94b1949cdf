"""/metrics: what operators count on, named as Prometheus says, true in every worker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import httpx
import pytest
from prometheus_client import REGISTRY

from gateway import metrics
from tests.support import ScriptedUpstream, call, chunk, completion, gateway, settings, sse_body

PROMTOOL = shutil.which("promtool")


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def promtool_problems(text: str) -> str:
    """`promtool check metrics` on an exposition: its complaints ('' when clean)."""
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    return (done.stdout + done.stderr).strip() if done.returncode else ""


async def test_a_retry_is_an_attempt_and_a_rejection_is_a_request():
    before = {
        "503": value("toolgate_upstream_attempts_total", upstream="default", status="503"),
        "200": value("toolgate_upstream_attempts_total", upstream="default", status="200"),
        "retries": value("toolgate_upstream_retries_total", upstream="default", reason="503"),
        "rejected": value("toolgate_requests_total", api="chat", model="", status="404"),
        "served": value("toolgate_requests_total", api="chat", model="m", status="200"),
    }
    upstream = ScriptedUpstream(httpx.Response(503, json={"error": {"message": "warming up"}}, headers={"retry-after": "0"}), completion("hi"))
    config = settings({"upstreams": {"default": {"url": "http://upstream.test/v1", "retries": 2}}})
    async with gateway(config, upstream) as client:
        served = await client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        missing = await client.post("/v1/chat/completions", json={"model": "gone", "messages": [{"role": "user", "content": "hi"}]})
        scraped = (await client.get("/metrics")).text
    assert (served.status_code, missing.status_code) == (200, 404)
    assert value("toolgate_upstream_attempts_total", upstream="default", status="503") - before["503"] == 1
    assert value("toolgate_upstream_attempts_total", upstream="default", status="200") - before["200"] == 1
    assert value("toolgate_upstream_retries_total", upstream="default", reason="503") - before["retries"] == 1
    assert value("toolgate_requests_total", api="chat", model="", status="404") - before["rejected"] == 1
    assert value("toolgate_requests_total", api="chat", model="m", status="200") - before["served"] == 1
    assert 'toolgate_tool_source_up{source="builtin"} 1.0' in scraped
    assert 'toolgate_build_info{python="' in scraped and 'version="0.1.0"} 1.0' in scraped


async def test_tool_calls_by_source_tool_and_outcome_and_time_to_first_token():
    before = {
        "calc": value("toolgate_tool_calls_total", source="builtin", tool="calculate", outcome="ok"),
        "bad": value("toolgate_tool_calls_total", source="builtin", tool="current_time", outcome="bad_arguments"),
        "unknown": value("toolgate_tool_calls_total", source="(none)", tool="(unknown)", outcome="unknown_tool"),
        "ttft": value("toolgate_time_to_first_token_seconds_count", model="m"),
        "attempts": value("toolgate_upstream_attempts_total", upstream="default", status="200"),
    }
    tool_round = sse_body(
        chunk({"role": "assistant", "tool_calls": [{"index": 0, **call("calculate", {"expression": "1+1"}, "a")}]}),
        chunk({"tool_calls": [{"index": 1, **call("current_time", "[]", "b")}]}),
        chunk({"tool_calls": [{"index": 2, **call("nope", {}, "c")}]}, finish="tool_calls"),
    )
    upstream = ScriptedUpstream(tool_round, sse_body(chunk({"role": "assistant", "content": "2"}, finish="stop")))
    async with gateway(settings(), upstream) as client:
        reply = await client.post("/v1/chat/completions", json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200
    assert value("toolgate_tool_calls_total", source="builtin", tool="calculate", outcome="ok") - before["calc"] == 1
    assert value("toolgate_tool_calls_total", source="builtin", tool="current_time", outcome="bad_arguments") - before["bad"] == 1
    assert value("toolgate_tool_calls_total", source="(none)", tool="(unknown)", outcome="unknown_tool") - before["unknown"] == 1
    assert value("toolgate_time_to_first_token_seconds_count", model="m") - before["ttft"] == 1
    assert value("toolgate_upstream_attempts_total", upstream="default", status="200") - before["attempts"] == 2


async def test_a_non_streamed_request_has_no_time_to_first_token():
    before = value("toolgate_time_to_first_token_seconds_count", model="m")
    async with gateway(settings(), ScriptedUpstream(completion("hi"))) as client:
        assert (await client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})).status_code == 200
    assert value("toolgate_time_to_first_token_seconds_count", model="m") == before


def test_tool_labels_are_capped(monkeypatch):
    monkeypatch.setattr(metrics, "MAX_TOOL_SERIES", 2)
    monkeypatch.setattr(metrics, "_tools", set())
    before = value("toolgate_tool_calls_total", source="big", tool="(other)", outcome="ok")
    for i in range(5):
        metrics.tool_call("big", f"tool_{i}", "ok", 0.01)
    metrics.tool_call("big", "tool_0", "ok", 0.01)  # one of the first two keeps its own series
    assert value("toolgate_tool_calls_total", source="big", tool="tool_0", outcome="ok") == 2
    assert value("toolgate_tool_calls_total", source="big", tool="tool_2", outcome="ok") == 0
    assert value("toolgate_tool_calls_total", source="big", tool="(other)", outcome="ok") - before == 3


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian's prometheus package)")
async def test_promtool_finds_nothing_to_lint():
    async with gateway(settings(), ScriptedUpstream(completion("hi"))) as client:
        await client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        text = (await client.get("/metrics")).text
    assert "toolgate_upstream_attempts_total" in text
    assert promtool_problems(text) == ""


WORKER = textwrap.dedent(
    """
    import sys
    from gateway import metrics
    metrics.build_info("0.1.0")
    metrics.upstream_attempt("default", "200", 0.1)
    metrics.upstream_retry("default", "429")
    metrics.IN_FLIGHT.inc()
    metrics.SOURCE_UP.labels("files").set(int(sys.argv[1]))
    print("ok", flush=True)
    """
)

READER = textwrap.dedent(
    """
    import sys
    from gateway import metrics
    for pid in sys.argv[1:]:
        metrics.process_dead(int(pid))
    sys.stdout.write(metrics.render()[0].decode())
    """
)


def test_several_workers_sum_and_a_dead_one_leaves_the_live_gauges(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": os.getcwd()}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, up], env=env, stdout=subprocess.PIPE) for up in ("1", "0")]
    pids = []
    for worker in workers:
        worker.communicate(timeout=30)
        pids.append(str(worker.pid))

    def scrape(*dead: str) -> str:
        return subprocess.run([sys.executable, "-c", READER, *dead], env=env, capture_output=True, text=True, timeout=30, check=True).stdout

    both = scrape()
    assert 'toolgate_upstream_attempts_total{status="200",upstream="default"} 2.0' in both
    assert 'toolgate_upstream_retries_total{reason="429",upstream="default"} 2.0' in both
    assert 'version="0.1.0"} 1.0' in both  # the same build, not one per worker
    assert "toolgate_requests_in_flight 2.0" in both
    assert 'toolgate_tool_source_up{source="files"} 0.0' in both  # down in one worker: not up
    if PROMTOOL is not None:
        assert promtool_problems(both) == ""
    after = scrape(pids[1])  # the worker where the source was down died
    assert "toolgate_requests_in_flight 1.0" in after
    assert 'toolgate_tool_source_up{source="files"} 1.0' in after
    assert 'toolgate_upstream_attempts_total{status="200",upstream="default"} 2.0' in after  # counters keep their history


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian's prometheus package)")
def test_promtool_would_say_so():
    assert "_total" in promtool_problems("# HELP x_count c\n# TYPE x_count counter\nx_count 1\n")
