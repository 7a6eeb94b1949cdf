"""The tools' pool: one per process for every tool's blocking work (sync Python tools,
HTML reduction, file reads); its size is set from config (`loop.tool_threads`).

    result = await WORKERS.run(reduce_html, text)     # raises WorkersBusy when full
"""

from __future__ import annotations

from gateway.threads import Busy as WorkersBusy
from gateway.threads import Threads

WORKERS = Threads("toolgate-tool", threads=8, queued=64)

__all__ = ["WORKERS", "WorkersBusy"]
