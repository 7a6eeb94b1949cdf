"""The benchmark's upstream: ``tests.fakellm`` with a scripted "bench brain".

    python -m bench.fake --port 0 --chunks 100 --nap-calls 8 --nap-ms 100 --slow-chunk-ms 50

Prints the fake's URL, then serves until SIGTERM. Every chat request is answered by
``bench_turn`` (a callable turn, kept topped up in the fake's script), which extends the
fake's demo brain:

- the upstream model name picks the latency: ``fake-model-50ms`` waits 50 ms before every
  answer (S4's 50 ms rounds); ``slow`` streams its chunks ``--slow-chunk-ms`` apart (S5);
  ``paced`` streams them ``--paced-chunk-ms`` apart (S3-paced: one chunk per network read,
  as a real model sends);
- offered ``nap`` (S7): ``--nap-calls`` parallel calls of ``nap(ms=--nap-ms)`` in one round;
- offered ``sleep`` (S7 over stdio MCP): the same calls as ``sleep(seconds=--nap-ms / 1000)``;
- offered ``add`` (S4 with the stdio MCP server): one ``add(a=2, b=3)`` call;
- otherwise the demo brain: ``calculate`` when offered and the user wrote arithmetic, an
  answer from the tool results after a tool round, else "You said: ...".
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

from tests.fakellm import Calls, FakeLLM, Reply, demo_turn

_LATENCY = re.compile(r"-(\d+)ms$")
_REFILL_LOW = 2_000
_REFILL_BATCH = 10_000


def brain(nap_calls: int, nap_ms: int, slow_chunk_s: float, paced_chunk_s: float = 0.001) -> Callable[[dict[str, Any]], Reply | Calls]:
    def bench_turn(body: dict[str, Any]) -> Reply | Calls:
        model = str(body.get("model") or "")
        messages = body.get("messages") or []
        offered = set()
        if body.get("tool_choice") != "none":
            offered = {t.get("function", {}).get("name") for t in body.get("tools") or () if isinstance(t, dict)}
        last_is_tool = bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"
        turn: Reply | Calls
        if not last_is_tool and "nap" in offered:
            turn = Calls([("nap", {"ms": nap_ms})] * nap_calls)
        elif not last_is_tool and "sleep" in offered:  # S7 over stdio MCP (tests/mcp_server.py's sleep)
            turn = Calls([("sleep", {"seconds": nap_ms / 1000})] * nap_calls)
        elif not last_is_tool and "add" in offered:
            turn = Calls([("add", {"a": 2, "b": 3})])
        else:
            turn = demo_turn(body)
        if model in ("slow", "paced") and isinstance(turn, Reply):
            turn = dataclasses.replace(turn, chunk_delay_s=slow_chunk_s if model == "slow" else paced_chunk_s)
        latency = _LATENCY.search(model)
        if latency:
            turn = dataclasses.replace(turn, delay_s=int(latency.group(1)) / 1000)
        return turn

    return bench_turn


async def keep_scripted(fake: FakeLLM, turn: Callable[[dict[str, Any]], Any]) -> None:
    """Keep the script from running dry, so every request gets ``turn`` (public API only)."""
    batch = [turn] * _REFILL_BATCH
    while True:
        if fake.pending < _REFILL_LOW:
            fake.push(*batch)
        await asyncio.sleep(0.005)


async def _probe(fake: FakeLLM) -> bytes:
    """One request to ourselves, so a broken fake fails at start, not mid-benchmark;
    returns what it answered when that is no 200, else b"" ."""
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    body = b'{"model":"probe","messages":[{"role":"user","content":"hi"}]}'
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return b"" if data.startswith(b"HTTP/1.1 200") else data


async def serve(args: argparse.Namespace) -> None:
    fake = FakeLLM("openai", latency_s=args.latency_ms / 1000, chunks=args.chunks or None, record=False)
    await fake.start(port=args.port)
    refill = asyncio.create_task(keep_scripted(fake, brain(args.nap_calls, args.nap_ms, args.slow_chunk_ms / 1000, args.paced_chunk_ms / 1000)))
    await asyncio.sleep(0.01)
    problem = await _probe(fake)
    if problem:
        raise SystemExit(f"bench.fake: tests.fakellm answers its probe with {problem[:400]!r}")
    print(fake.url, flush=True)
    try:
        await fake.serve_until_signalled()
    finally:
        refill.cancel()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fake", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="before every answer (all models)")
    parser.add_argument("--chunks", type=int, default=100, help="content deltas per stream")
    parser.add_argument("--nap-calls", type=int, default=8)
    parser.add_argument("--nap-ms", type=int, default=100)
    parser.add_argument("--slow-chunk-ms", type=float, default=50.0)
    parser.add_argument("--paced-chunk-ms", type=float, default=1.0)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
