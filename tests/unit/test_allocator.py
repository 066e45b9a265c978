"""The operator's allocator settings take effect on this machine's glibc (the image's is glibc too)."""

from __future__ import annotations

import re
import subprocess
import sys

CHILD = """
import ctypes, sys, threading
from tessera.operator import allocator
if sys.argv[1] == "cap":
    assert allocator.limit_arenas()
def work():
    started.wait()  # all alive at once: an exited thread's arena would go to the next one
    kept.append([bytes(4096) for _ in range(100)])  # above pymalloc's limit: from malloc
    done.wait()
kept = []
started, done = threading.Barrier(6), threading.Barrier(6)
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
del kept
assert allocator.give_back()
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


def arenas(*args: str) -> int:
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return len(re.findall(r"^Arena \d+:", done.stderr, re.MULTILINE))


def test_six_allocating_threads_share_the_capped_arenas_and_the_heap_is_trimmed() -> None:
    assert arenas("default") >= 7  # the baseline: the main thread's arena and one per thread
    assert arenas("cap") <= 2
