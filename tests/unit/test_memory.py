"""bgpvip.memory: freed heap pages go back to the kernel after a burst, and only then."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from bgpvip import memory

pytestmark = pytest.mark.skipif(
    memory.free_heap_bytes() is None, reason="needs glibc's malloc_trim and mallinfo2"
)


def test_a_fragmented_heap_is_trimmed_and_resident_memory_drops() -> None:
    # In a fresh interpreter, so that the figures are this test's own.
    code = textwrap.dedent(
        """
        from bgpvip import memory
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) * 1024
        # 64 MB of 2-KiB blocks (malloc's heap, not mmap), then free all but every 64th: the
        # survivors pin the heap's top, so malloc cannot give the freed pages back by itself
        blocks = [bytearray(2048) for _ in range(32768)]
        keep = blocks[::64]
        del blocks
        before, free = rss(), memory.free_heap_bytes()
        assert memory.release_if_worth_it(threshold=free + 1) == 0  # not worth it: nothing done
        assert rss() > before - (8 << 20)
        found = memory.release_if_worth_it(threshold=4 << 20)
        print(free >> 20, found >> 20, (before - rss()) >> 20, len(keep))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    free_mb, found_mb, dropped_mb, _ = map(int, proc.stdout.split())
    assert free_mb >= 50 and found_mb >= 50
    assert dropped_mb >= 40, proc.stdout


def test_nothing_is_done_below_the_threshold() -> None:
    free = memory.free_heap_bytes()
    assert free is not None
    assert memory.release_if_worth_it(threshold=free + (1 << 30)) == 0
