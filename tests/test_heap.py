"""Large blocks come from mmap once serving starts (glibc): a request's big transient buffers,
freed while other streams' blocks live on, leave no holes in the heap that the process keeps."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

# In a fresh interpreter: 40 "requests" each read a 100 KB body and keep a 100 KB message (as
# 40 streams opening together do), then the bodies are freed. Prints the heap's growth in bytes.
_PATTERN = """
import ctypes, sys
from gateway import heap
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] == "on":
    assert heap.mmap_large_blocks()
before = libc.mallinfo2().arena
bodies = [bytes([65 + i % 26]) * 100_000 for i in range(40)]
kept = [body.decode() + "." for body in bodies]
del bodies
print(libc.mallinfo2().arena - before)
"""

glibc = pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="not glibc 2.33+")


def _heap_growth(setting: str) -> int:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    done = subprocess.run([sys.executable, "-c", _PATTERN, setting], capture_output=True, text=True, timeout=60, env=env, cwd=root)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@glibc
def test_freed_large_buffers_leave_no_heap_behind():
    assert _heap_growth("off") > 3_000_000  # glibc's default: the bodies' holes stay in the heap
    assert _heap_growth("on") < 500_000

