"""Keep a long run's resident memory flat: give glibc's free heap memory back to the system now and then.

Why: several threads (decoder, main, enhance, sink) allocate and free large blocks (decoded frames, the
detector's pyramid levels) in different malloc arenas. Those heaps fragment and glibc rarely gives their
free pages back, so RSS grew by ~45 MB per minute on the looped 1080p arcade clip with the Python heap
flat (BENCHMARKS.md, "Soak"). `malloc_trim(0)` returns the free pages of every arena, inside the heaps too.

Why not fixed malloc thresholds (`mallopt` M_MMAP_THRESHOLD / M_TRIM_THRESHOLD, what this module did at
first): they keep RSS flat by making every large block its own mapping, mapped, page-faulted and zeroed
again on every frame, and fixing either one turns off glibc's adaptive threshold. That made MTCNN 2.7x
slower on 360p frames (0.075 -> 0.20 s a frame, BENCHMARKS.md "Allocator, revisited"). One trim every few seconds
costs a few hundredths of a second (the next frame faults its working set in again).

Example:
    >>> trimmer = start_trimming(interval_s=10.0)  # doctest: +SKIP   (a daemon thread; a run stops it)
    >>> trimmer.stop()  # doctest: +SKIP
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading

log = logging.getLogger(__name__)

TRIM_INTERVAL_S = 10.0
# A user who set glibc's malloc tunables manages the allocator: this module then does nothing.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (macOS, musl) or the user tuned malloc."""
    if any(name in os.environ for name in USER_SETTINGS):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


class Trimmer:
    """A daemon thread calling malloc_trim(0) every `interval_s` seconds until `stop()`."""

    def __init__(self, trim, interval_s: float) -> None:
        self.trims = 0
        self._trim, self._interval = trim, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._trim(0)
            self.trims += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def start_trimming(interval_s: float = TRIM_INTERVAL_S) -> Trimmer | None:
    """Start trimming the heaps every `interval_s` s; None where that is not glibc or the user set
    malloc tunables in the environment (nothing started)."""
    trim = _malloc_trim()
    if trim is None:
        log.debug("malloc_trim unavailable or malloc tuned by the user; allocator left alone")
        return None
    return Trimmer(trim, interval_s)
