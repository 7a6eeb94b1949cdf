"""The C heap under many open streams: large blocks straight from the OS.

    heap.mmap_large_blocks()        # once per serving process; False where there is nothing to set

glibc serves blocks below its mmap threshold (128 KiB at first, rising up to 32 MiB as large
blocks are freed) from its heap. A request's transient buffers of that size (the body as read,
the upstream payload, orjson's output) freed between blocks that live on (other streams'
parsed messages) leave holes the heap cannot give back, so the process grows with what
requests did, not with what they hold. With the threshold fixed at 64 KiB, larger blocks are
mapped and unmapped whole. Measured with `bench/memtrace.py --prompt-bytes 100000` (100 open
streams, a 100 KB prompt each): 240 → 136 KiB of RSS per stream, the aiohttp floor's 134.
Small requests allocate no block that large: nothing changes for them. Neither does the
response store's batch, which keeps clear of SQLite's statement journals (a 64 KiB buffer each,
see store/_sqlite.py).
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
LARGE_BLOCK = 64 * 1024


def mmap_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Blocks of `threshold` bytes and more come from mmap; True when set (glibc), else False
    (musl's `mallopt` does nothing, macOS has none)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold) == 1)
