"""``python -m gateway.fakellm``: one fake on 127.0.0.1 until SIGINT or SIGTERM.

Prints one line, the URL a toolgate config should hold, then serves.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Sequence

from .server import FakeLLM
from .wire import HOST_TYPES, QUIRKS


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.fakellm", description="A scripted fake LLM host.")
    parser.add_argument("--host-type", choices=list(HOST_TYPES), default="openai")
    parser.add_argument("--port", type=int, default=9100, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="wait before every chat answer")
    parser.add_argument("--chunks", type=int, default=0, help="stream content in exactly N deltas (0: per word)")
    parser.add_argument("--quirk", action="append", choices=QUIRKS, default=[], metavar="NAME",
                        help=f"repeatable; one of: {', '.join(QUIRKS)}")
    parser.add_argument("--no-record", action="store_true", help="keep no request log (long benchmark runs)")
    args = parser.parse_args(argv)
    fake = FakeLLM(args.host_type, args.quirk, args.latency_ms / 1000, args.chunks or None, record=not args.no_record)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(fake, args.port))
    return 0


async def _serve(fake: FakeLLM, port: int) -> None:
    await fake.start(port=port)
    print(fake.url, flush=True)
    await fake.serve_until_signalled()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    # This process is the caller, so it picks the loop: uvloop when installed, for the benchmark.
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    raise SystemExit(main())
