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
