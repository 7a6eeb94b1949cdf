"""A Python-function tool for S7: ``[tools.python.bench] functions = ["bench.tools:nap"]``."""

from __future__ import annotations

import asyncio


async def nap(ms: int = 100) -> str:
    """Sleep for a while, then say how long.

    Args:
        ms: How many milliseconds to sleep.
    """
    await asyncio.sleep(ms / 1000)
    return f"slept {ms} ms"
