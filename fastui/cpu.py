"""CPU process settings for training: torch threads and glibc's treatment of large allocations.

Why the allocator matters: glibc serves every allocation above its mmap threshold (128 KiB to 32 MiB, adaptive) with
a fresh ``mmap`` and returns it with ``munmap`` on free, so each activation tensor of a training step costs page
faults and zeroed pages again on every iteration. :func:`keep_freed_memory` tells glibc to serve them from the heap
and keep freed memory for reuse (``mallopt``), which is what tcmalloc/jemalloc preloading buys, without a preload.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time

__all__ = ["idle_cores", "keep_freed_memory", "pick_threads"]

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_kept = False


def keep_freed_memory() -> bool:
    """Large allocations from the heap, freed memory kept (glibc ``mallopt``); True if it took effect.

    No-op (False) off Linux/glibc. Idempotent. Costs: the process keeps its peak heap instead of returning it to the
    system between iterations, which a training process reaches every iteration anyway.
    """
    global _kept
    if _kept:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _kept = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _kept


def idle_cores(window_s: float = 0.5) -> float | None:
    """Cores idle over the next ``window_s`` seconds, from two reads of ``/proc/stat`` (None where unavailable).

    Why not the load average: it remembers the last minute (a ``pip install`` just before a run reads as a busy
    core), so it picked one thread on an idle 2-core machine.
    """

    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        return vals[3] + (vals[4] if len(vals) > 4 else 0), sum(vals)  # idle + iowait, total

    try:
        idle0, total0 = read()
        time.sleep(window_s)
        idle1, total1 = read()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (idle1 - idle0) / (total1 - total0)


def pick_threads(requested: int = 0) -> int:
    """Threads for this process: ``requested``, else ``OMP_NUM_THREADS``, else the cores idle right now.

    Why: on a shared machine, more OpenMP threads than idle cores spin and run many times slower than one thread.
    """
    if requested > 0:
        return requested
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    cores = os.cpu_count() or 1
    idle = idle_cores()
    if idle is None:
        return cores
    return max(1, min(cores, int(idle + 0.5)))
