"""A small asyncio HTTP/1.1 load generator: the harness runs it as its own pinned process.

    python -m bench.load closed --url http://127.0.0.1:8080/v1/chat/completions --body body.json \
        -c 16 --warmup 1 --duration 10 --max-requests 200000 [--stream]
    python -m bench.load hold --url ... --body body.json -n 500 --timeout 60
    python -m bench.load closed --url http://127.0.0.1:8080/v1/responses --body body.json \
        --done "event: response.completed"

``closed``: ``-c`` keep-alive connections, each sending its next request when the last one
has been read to the end. Stdout says ``GO`` when the measured window opens (after the
warmup), ``END`` when it closes (duration or request cap reached), then ``RESULT {json}``:
requests/s, latency and time-to-first-body-byte percentiles (ms), statuses, errors, and a
count of ``x-toolgate-rounds`` / ``x-toolgate-tool-calls`` values seen.

``hold``: ``-n`` streams opened at once; ``OPEN k`` once all have sent their first body
byte (or the open timeout passed), then ``RESULT`` when all have ended. Used to measure
memory per open stream.

A stream counts as complete when it carries ``--done`` (default ``data: [DONE]``, the chat
stream's last line; a Responses stream ends with its ``event: response.completed`` instead).

wrk is faster for plain POSTs; this one exists for streams (first-byte timing), tool loops,
many open streams, and as the fallback where wrk is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from urllib.parse import urlsplit

_WATCHED = (b"x-toolgate-rounds", b"x-toolgate-tool-calls")


class Target:
    def __init__(self, url: str, body: bytes, headers: Sequence[str] = (), done: bytes = b"data: [DONE]") -> None:
        parts = urlsplit(url)
        self.done = done
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        extra = "".join(f"{h}\r\n" for h in headers)
        self.request = (
            f"POST {parts.path or '/'} HTTP/1.1\r\nhost: {parts.netloc}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{extra}\r\n"
        ).encode() + body

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port, limit=1 << 20)


class Result:
    __slots__ = ("status", "ttfb", "done", "close", "watched", "events", "frames")

    def __init__(self) -> None:
        self.status = 0
        self.ttfb = 0.0
        self.done = False  # a stream ended with [DONE]; a JSON body read whole
        self.close = False
        self.watched: list[bytes] = []
        self.events = 0  # SSE `data:` lines the client received
        self.frames = 0  # HTTP body chunks they came in


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: Target,
                   on_first_byte=None) -> Result:
    """Send one request, read its response to the end."""
    result = Result()
    writer.write(target.request)
    head = await reader.readuntil(b"\r\n\r\n")
    result.status = int(head[9:12])
    length = -1
    chunked = False
    sse = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"content-type":
            sse = b"event-stream" in value
        elif name == b"connection":
            result.close = b"close" in value.lower()
        elif name in _WATCHED:
            result.watched.append(name + b"=" + value.strip())
    if length >= 0:
        if length:
            await reader.readexactly(length)
        result.ttfb = time.perf_counter()
        result.done = True
        return result
    if not chunked:  # the body ends when the connection does
        await reader.read()
        result.ttfb = time.perf_counter()
        result.close = result.done = True
        return result
    tail = b""
    at_line_start = True
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers are sent: the blank line
            break
        data = await reader.readexactly(size + 2)
        payload = data[:-2]
        result.frames += 1
        result.events += payload.count(b"\ndata:") + (at_line_start and payload.startswith(b"data:"))
        at_line_start = payload.endswith(b"\n")
        if not result.ttfb:
            result.ttfb = time.perf_counter()
            if on_first_byte is not None:
                on_first_byte()
        if not result.done:
            # The marker may straddle two chunks: search the end of the last one with this one.
            result.done = target.done in tail + payload
            tail = payload[-len(target.done) :]
    result.done = result.done or not sse
    return result


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summary(values: list[float]) -> dict:
    ms = [v * 1000 for v in values]
    return {"p50": pct(ms, 0.5), "p90": pct(ms, 0.9), "p99": pct(ms, 0.99), "mean": sum(ms) / len(ms) if ms else None}


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def closed(args: argparse.Namespace, target: Target) -> dict:
    latencies: list[float] = []
    ttfbs: list[float] = []
    statuses: Counter = Counter()
    errors: Counter = Counter()
    watched: Counter = Counter()
    events = [0, 0]  # SSE events, HTTP body chunks: summed over measured requests
    window = [float("inf"), float("inf")]
    full = asyncio.Event()
    stopping = False
    incomplete = 0

    async def worker() -> None:
        nonlocal incomplete
        conn = None
        while not stopping:
            try:
                if conn is None:
                    conn = await target.connect()
                t0 = time.perf_counter()
                result = await exchange(*conn, target)
                t1 = time.perf_counter()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                if window[0] <= time.perf_counter() <= window[1]:
                    errors[type(exc).__name__] += 1
                if conn is not None:
                    conn[1].close()
                conn = None
                await asyncio.sleep(0.01)
                continue
            if result.close:
                conn[1].close()
                conn = None
            # Counted by completion time: requests/s over a short window stays unbiased.
            if window[0] <= t1 <= window[1]:
                statuses[result.status] += 1
                if result.status != 200:
                    continue
                if not result.done:
                    incomplete += 1
                latencies.append(t1 - t0)
                ttfbs.append(result.ttfb - t0)
                watched.update(w.decode() for w in result.watched)
                events[0] += result.events
                events[1] += result.frames
                if len(latencies) >= args.max_requests:
                    full.set()
        if conn is not None:
            conn[1].close()

    tasks = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
    await asyncio.sleep(args.warmup)
    window[0] = time.perf_counter()
    say("GO")
    try:
        await asyncio.wait_for(full.wait(), args.duration)
    except TimeoutError:
        pass
    window[1] = time.perf_counter()
    say("END")
    stopping = True
    _, pending = await asyncio.wait(tasks, timeout=10)
    for task in pending:
        task.cancel()
    seconds = window[1] - window[0]
    return {
        "mode": "closed",
        "concurrency": args.concurrency,
        "seconds": seconds,
        "requests": len(latencies),
        "rps": len(latencies) / seconds,
        "latency_ms": summary(latencies),
        "ttfb_ms": summary(ttfbs),
        "statuses": {str(k): v for k, v in statuses.items()},
        "errors": dict(errors),
        "incomplete": incomplete,
        "watched": dict(watched),
        # Per stream: SSE events the client saw, and the HTTP body chunks they came in.
        "events_per_request": events[0] / len(latencies) if latencies else None,
        "frames_per_request": events[1] / len(latencies) if latencies else None,
    }


async def hold(args: argparse.Namespace, target: Target) -> dict:
    opened = 0
    all_open = asyncio.Event()
    results: list[Result | BaseException] = []
    started = time.perf_counter()

    def first_byte() -> None:
        nonlocal opened
        opened += 1
        if opened >= args.streams:
            all_open.set()

    async def one() -> None:
        reader, writer = await target.connect()
        try:
            results.append(await exchange(reader, writer, target, first_byte))
        finally:
            writer.close()

    async def guarded() -> None:
        try:
            await one()
        except Exception as exc:  # counted, not raised: all 500 must be accounted for
            results.append(exc)

    tasks = [asyncio.create_task(guarded()) for _ in range(args.streams)]
    try:
        await asyncio.wait_for(all_open.wait(), args.open_timeout)
    except TimeoutError:
        pass
    open_s = time.perf_counter() - started
    say(f"OPEN {opened}")
    _, pending = await asyncio.wait(tasks, timeout=args.timeout)
    for task in pending:
        task.cancel()
    done = sum(1 for r in results if isinstance(r, Result) and r.status == 200 and r.done)
    return {
        "mode": "hold",
        "streams": args.streams,
        "opened": opened,
        "open_s": open_s,
        "served": done,
        "statuses": dict(Counter(str(r.status) for r in results if isinstance(r, Result))),
        "errors": dict(Counter(type(r).__name__ for r in results if not isinstance(r, Result))),
        "unfinished": len(pending),
        "seconds": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("closed", "hold"):
        p = sub.add_parser(mode)
        p.add_argument("--url", required=True)
        p.add_argument("--body", required=True, help="file with the JSON body")
        p.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
        p.add_argument("--done", default="data: [DONE]", help="the bytes that mark a stream complete")
    c = sub.choices["closed"]
    c.add_argument("-c", "--concurrency", type=int, default=1)
    c.add_argument("--warmup", type=float, default=0.5, help="seconds not measured")
    c.add_argument("--duration", type=float, default=5.0, help="seconds measured, at most")
    c.add_argument("--max-requests", type=int, default=1_000_000, help="requests measured, at most")
    h = sub.choices["hold"]
    h.add_argument("-n", "--streams", type=int, default=500)
    h.add_argument("--open-timeout", type=float, default=30.0)
    h.add_argument("--timeout", type=float, default=120.0, help="for all streams to end")
    args = parser.parse_args(argv)
    with open(args.body, "rb") as f:
        target = Target(args.url, f.read(), args.header, args.done.encode())
    run = closed if args.mode == "closed" else hold
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args, target))
    else:
        result = uvloop.run(run(args, target))
    say("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
