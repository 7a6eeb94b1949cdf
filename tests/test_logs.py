"""The log queue: a stuck stream never blocks the event loop, drops are counted, secrets never leave."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
from gateway import logs
from gateway.redact import SECRETS

NAMES = ("toolgate", "toolgate.access", "uvicorn", "uvicorn.error", "uvicorn.access")


class StuckStream:
    """A log pipe nobody reads: every write() waits until `release` is set."""

    def __init__(self, stuck: bool = True) -> None:
        self.entered = threading.Event()  # a write is under way (and, while stuck, waiting)
        self.release = threading.Event()
        if not stuck:
            self.release.set()
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        self.entered.set()
        self.release.wait(10)
        self.parts.append(text)

    def flush(self) -> None:
        pass

    def lines(self) -> list[dict]:
        return [orjson.loads(line) for line in "".join(self.parts).splitlines()]


@contextmanager
def routed(stream: StuckStream, level: str = "INFO", **options) -> Iterator[logs._Dropping]:
    """`logs.setup` for one test; every logger is as it was afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    named = {name: (lg.handlers[:], lg.propagate, lg.level) for name, lg in ((n, logging.getLogger(n)) for n in NAMES)}
    try:
        yield logs.setup(level, stream=stream, **options)
    finally:
        stream.release.set()
        logs.stop()
        root.handlers[:], level_ = saved
        root.setLevel(level_)
        for name, (handlers, propagate, lvl) in named.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.propagate = propagate
            logger.setLevel(lvl)


async def test_a_stuck_stream_never_blocks_and_the_drops_are_counted():
    stream = StuckStream()
    log = logging.getLogger("toolgate")
    with routed(stream, queue_lines=100):
        log.info("line 0")
        assert await asyncio.to_thread(stream.entered.wait, 5)  # the listener is stuck writing line 0
        started = time.monotonic()
        for i in range(1, 1000):
            log.info("line %d", i)
        took = time.monotonic() - started
        await asyncio.sleep(0)  # the loop is free
        stream.release.set()
        logs.stop()
    assert took < 0.5, f"logging 999 lines took {took:.3f} s with the stream stuck"
    messages = [line["message"] for line in stream.lines()]
    # Line 0 was being written, 100 waited in the queue, the other 899 were dropped.
    assert messages == ["line 0", "log queue was full: 899 line(s) dropped", *(f"line {i}" for i in range(1, 101))]


def test_secrets_never_reach_the_log_at_any_level():
    canary = f"sk-canary-{uuid.uuid4().hex}"
    SECRETS.add(canary)
    stream = StuckStream(stuck=False)
    log = logging.getLogger("toolgate")
    with routed(stream, level="DEBUG"):
        log.debug("debug %s", canary)
        log.warning(f"warning {canary}")
        logs.request_line({"request_id": "r1", "error": f"upstream said {canary}", "nested": {"key": canary}})
        try:
            raise ValueError(f"bad key {canary}")
        except ValueError:
            log.exception("failed")
        logging.getLogger("httpx").info("HTTP Request: GET http://x/?key=%s", canary)
    text = "".join(stream.parts)
    assert canary not in text
    lines = stream.lines()
    assert len(lines) == 5 and lines[0]["message"] == "debug ***" and lines[1]["message"] == "warning ***"
    assert lines[2]["error"] == "upstream said ***" and lines[2]["nested"] == {"key": "***"}
    assert "ValueError: bad key ***" in lines[3]["error"]


def test_uvicorn_lines_come_out_as_json():
    stream = StuckStream(stuck=False)
    with routed(stream):
        logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
        logging.getLogger("uvicorn").warning("Invalid HTTP request received.")
        logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/", "1.1", 200)
        logging.getLogger("uvicorn.error").debug("not at INFO")
    lines = stream.lines()
    assert [(line["logger"], line["level"], line["message"]) for line in lines] == [
        ("uvicorn.error", "info", "Started server process [42]"),
        ("uvicorn", "warning", "Invalid HTTP request received."),
        ("uvicorn.access", "info", '127.0.0.1:1 - "GET / HTTP/1.1" 200'),
    ]
    assert all(isinstance(line["ts"], float) for line in lines)


# -- the request line, and every worker's lines -------------------------------------------------

KEYS = "k-first-0123456789abcdef,k-second-0123456789abcdef"


async def test_the_request_line_names_the_client_the_key_the_upstream_model_and_the_first_token(caplog):
    from tests.support import ScriptedUpstream, chunk, gateway, settings, sse_body

    caplog.set_level(logging.INFO, logger="toolgate.access")
    upstream = ScriptedUpstream(sse_body(chunk({"role": "assistant", "content": "hi"}, finish="stop")))
    async with gateway(settings(environ={"TOOLGATE_API_KEYS": KEYS}), upstream) as client:
        headers = {"authorization": "Bearer k-second-0123456789abcdef"}
        ok = await client.post("/v1/chat/completions", json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}, headers=headers)
        refused = await client.post("/v1/chat/completions", json={"model": "m", "messages": []}, headers={"authorization": "Bearer wrong"})
    assert (ok.status_code, refused.status_code) == (200, 401)
    served, rejected = [r.fields for r in caplog.records if r.name == "toolgate.access"]
    assert served["client"] == "127.0.0.1" and served["key"] == "key2"
    assert served["upstream_model"] == "up-model"
    assert isinstance(served["ttft_ms"], float) and 0 < served["ttft_ms"] <= served["duration_ms"]
    assert rejected["status"] == 401 and rejected["client"] == "127.0.0.1" and rejected["key"] is None
    assert "k-second" not in orjson.dumps([served, rejected]).decode()


def _serve_workers(level: str) -> list[dict]:
    import os
    import signal
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOOLGATE_", "OTEL_"))}
    env["TOOLGATE_UPSTREAM_URL"] = "http://127.0.0.1:9/v1"  # never called: /readyz and /metrics only
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--workers", "2", "--port", str(port), "--log-level", level],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        time.sleep(0.5)  # the second worker's startup lines
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    lines = err.decode().splitlines()
    assert lines
    return [orjson.loads(line) for line in lines]  # every line is JSON, or this raises


def test_every_worker_logs_json_at_the_level_asked():
    lines = _serve_workers("info")
    started = {line["message"] for line in lines if line["logger"] == "uvicorn.error" and line["message"].startswith("Started server process")}
    assert len(started) == 2  # both workers, through the JSON pipeline
    quiet = _serve_workers("warning")
    assert quiet and all(line["level"] in ("warning", "error", "critical") for line in quiet)
