"""Keep a long run's resident memory flat: glibc malloc settings for a process that streams video.

Why: glibc serves a large block (a decoded frame, a detector pyramid level) from its heap once the
dynamic mmap threshold has risen past that size, and several threads (decoder, main, enhance, sink)
allocate and free such blocks in different arenas. Those heaps fragment and are rarely given back, so
RSS grew by ~45 MB per minute on the looped 1080p arcade clip with the Python heap flat; with these
settings it stays flat (BENCHMARKS.md, "Soak"; limiting the arenas instead, MALLOC_ARENA_MAX=2, did
not). A fixed mmap threshold makes every large block its own mapping, returned to the system when
freed, and a low trim threshold gives back the free top of the heaps.

Example:
    >>> tune_allocator()  # doctest: +SKIP   (at start-up, before the worker threads)
    True
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024  # bytes: glibc's initial value, made fixed (a 270p BGR frame is ~390 KB)
TRIM_THRESHOLD = 128 * 1024  # glibc's default
# A user's own MALLOC_* environment settings win: glibc has applied them already.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_allocator() -> bool:
    """Set glibc's mmap and trim thresholds for streaming; False where that is not glibc (nothing done)
    or the user set them in the environment."""
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt): its own defaults stay
        return False
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        log.debug("mallopt refused the thresholds; allocator defaults kept")
    return ok
