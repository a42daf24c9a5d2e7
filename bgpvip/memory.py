"""Give freed heap memory back to the kernel (glibc), so resident memory follows the live data.

A speaker's work comes in bursts: the first list of 10,000 Services decodes 18 MB of JSON in
pages, a relist does it again, a resync parses ExaBGP's whole RIB. Python frees those objects,
but glibc's malloc keeps the freed pages of its heaps mapped (it only returns the free top of a
heap, and only the main one), so without help the process stays at the size of its biggest
burst. `malloc_trim(0)` returns every free page of every heap with `madvise(MADV_DONTNEED)`.

`release_if_worth_it` calls it only when the heaps hold more than `threshold` free bytes
(`mallinfo2`, glibc 2.33+): checking costs microseconds, trimming a few milliseconds. On other
C libraries (musl) both are unavailable and it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        libc.mallinfo2.argtypes = []
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()

DEFAULT_THRESHOLD = 4 << 20
"""Free heap bytes above which a trim is worth its few milliseconds."""


def free_heap_bytes() -> int | None:
    """Bytes malloc holds free in its heaps (not counting mmapped chunks), or None off glibc."""
    if _LIBC is None:
        return None
    return int(_LIBC.mallinfo2().fordblks)


def release_if_worth_it(threshold: int = DEFAULT_THRESHOLD) -> int:
    """Trim when more than `threshold` bytes are free; returns the free bytes it found then
    (0 when it did not trim)."""
    free = free_heap_bytes()
    if _LIBC is None or free is None or free <= threshold:
        return 0
    _LIBC.malloc_trim(0)
    return free
