"""Large blocks come from mmap once serving starts (glibc): freed, they go back to the OS."""

from __future__ import annotations

import ctypes

import pytest

from gateway import heap


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mapped() -> int:
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _Mallinfo2
    return int(libc.mallinfo2().hblkhd)  # bytes in mmapped blocks


glibc = pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="not glibc 2.33+")


@glibc
def test_a_block_above_the_threshold_is_mapped_and_given_back_when_freed():
    assert heap.mmap_large_blocks() is True
    before = _mapped()
    block = b"x" * 100_000  # below glibc's default 128 KiB threshold: the heap's, without the setting
    assert _mapped() - before >= 100_000
    del block
    assert _mapped() - before < 100_000


@glibc
def test_a_small_block_stays_on_the_heap():
    heap.mmap_large_blocks()
    before = _mapped()
    block = b"x" * 16_000
    assert _mapped() == before
    del block
