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

Second: objects that only the cycle collector frees. PyAV keeps a frame whose side data was read (the QP
map, common/qp.py) in a reference cycle, so its pixels (3 MB at 1080p) stay until a *full* collection, which
Python runs seldom in a process holding a model: a 30-minute soak of the 1080p clip grew 350 MB. Code that
makes such cycles says how many bytes they hold (`owe_cycles`); past CYCLE_BUDGET one full collection frees
them. `freeze_long_lived`, once the models are loaded, takes their ~200k objects out of the collector's scans:
a full collection then costs 35 ms instead of 155 (1080p arcade clip, BENCHMARKS.md "Soak").

Third: glibc's heaps fragment under the detector's batches. MTCNN's pyramid tensors
(several MB each) change size with the frames per call (1-4 on a live camera: what is queued, split by
the pacer), small long-lived blocks settle between them, and the main thread's heap grows: a live camera
at 360p rose 14-22 MB/min over 30 minutes, the free memory inside the main heap from 0.3 to 0.8 GB in three
minutes, with the memory in use flat (BENCHMARKS.md, "A live camera"). jemalloc's size classes do not
fragment so: 5 minutes of that camera stayed at 0.5-0.6 GB (glibc: 0.7 -> 1.3), and the 30-minute soak with the
model peaked at 1.4 GB instead of 2.0, processing 17 % more frames. So `run_stream.py` restarts itself once
under jemalloc where the library is installed (Debian: libjemalloc2), with purging off (`JEMALLOC_CONF`): jemalloc's
default purge after 10 s made every new block fault its pages in again and detection 2x slower (the same
cost as glibc's fixed mmap threshold, "Allocator, revisited"); unpurged it detects as fast as glibc.
FACESR_ALLOCATOR=system keeps the system allocator.

Example:
    >>> trimmer = start_trimming(interval_s=10.0)  # doctest: +SKIP   (a daemon thread; a run stops it)
    >>> trimmer.stop()  # doctest: +SKIP
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import sys
import threading
import time

log = logging.getLogger(__name__)

TRIM_INTERVAL_S = 10.0
#: Bytes held only by reference cycles (`owe_cycles`) after which a full collection runs: ~20 frames of 1080p.
CYCLE_BUDGET = 64 << 20
# A user who set glibc's malloc tunables manages the allocator: this module then does nothing.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
#: Where jemalloc is when installed from the distribution (Debian/Ubuntu: libjemalloc2; Fedora: jemalloc).
JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                  "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2")
#: Never purge freed pages (decay -1): a purged page is faulted in again by the next block, which doubled
#: detection's time; what is kept is reused, so the resident size follows the run's peak in use. One arena
#: (narenas:1): every thread's freed pages serve every other thread, so what is kept is the peak of the whole
#: process, not the sum of each arena's own peak (jemalloc's default: 4 arenas per CPU, threads spread over
#: them). On the live soak it rose in steps to a ceiling and held it; detection as fast (BENCHMARKS.md, "One arena").
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1,narenas:1"
#: Environment switch: "system" keeps the C library's allocator; anything else (or unset): jemalloc if installed.
ALLOCATOR_ENV = "FACESR_ALLOCATOR"


def allocator() -> str:
    """"jemalloc" when it serves this process's malloc, else "system"."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            return "jemalloc" if any("libjemalloc" in line for line in maps) else "system"
    except OSError:  # not Linux
        return "system"


def find_jemalloc() -> str | None:
    """The installed jemalloc library, or None."""
    return next((p for p in JEMALLOC_PATHS if os.path.isfile(p)), None)


def jemalloc_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment variables that start a process under jemalloc with this module's settings
    (`LD_PRELOAD`, and `MALLOC_CONF` unless the user set one); {} where jemalloc is not installed,
    FACESR_ALLOCATOR=system, or the user tuned glibc's malloc (`environ`: os.environ by default).

    Example:
        >>> jemalloc_env()  # doctest: +SKIP
        {'LD_PRELOAD': '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2', 'MALLOC_CONF': 'dirty_decay_ms:-1,...'}
    """
    environ = os.environ if environ is None else environ
    if environ.get(ALLOCATOR_ENV) == "system" or any(name in environ for name in USER_SETTINGS):
        return {}
    library = find_jemalloc()
    if library is None:
        return {}
    preload = environ.get("LD_PRELOAD", "").split()
    preload = " ".join(preload if library in preload else [library, *preload])  # a restarted process has it
    return {"LD_PRELOAD": preload, "MALLOC_CONF": environ.get("MALLOC_CONF", JEMALLOC_CONF)}


def restart_under_jemalloc(argv: list[str]) -> None:
    """Replace this process by `python argv...` with jemalloc preloaded (see the module's docstring), once:
    returns (doing nothing) where it is not installed, already loaded, FACESR_ALLOCATOR=system, or the user
    tuned glibc's malloc. Call it first thing in a script's __main__, before threads or files exist."""
    if allocator() == "jemalloc" or os.environ.get("_FACESR_REEXEC") or not sys.executable:
        return
    preload = jemalloc_env()
    if not preload:
        return
    env = dict(os.environ, _FACESR_REEXEC="1", **preload)  # a preload that did not take is not retried forever
    os.execve(sys.executable, [sys.executable, *argv], env)


def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (macOS, musl) or the user tuned malloc."""
    if any(name in os.environ for name in USER_SETTINGS) or allocator() == "jemalloc":
        return None  # jemalloc keeps its own heaps: glibc's are empty
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
        log.debug("malloc_trim unavailable, malloc tuned by the user, or jemalloc in use; allocator left alone")
        return None
    return Trimmer(trim, interval_s)


class CycleDebt:
    """Bytes that only the cycle collector can free, paid with one full collection past CYCLE_BUDGET (by
    whichever thread owes the byte that passes it)."""

    def __init__(self) -> None:
        self.owed = 0
        self.collections = 0
        self.seconds = 0.0  # spent collecting, for the log
        self._lock = threading.Lock()

    def owe(self, nbytes: int) -> None:
        with self._lock:
            self.owed += nbytes
            if self.owed < CYCLE_BUDGET:
                return
            self.owed = 0
        t0 = time.perf_counter()
        gc.collect()
        with self._lock:
            self.collections += 1
            self.seconds += time.perf_counter() - t0
            if self.collections in (1, 10, 100) or self.collections % 1000 == 0:
                log.debug("%d full collections for objects in reference cycles, %.1f ms each on average",
                          self.collections, 1e3 * self.seconds / self.collections)


_debt = CycleDebt()


def owe_cycles(nbytes: int) -> None:
    """Record `nbytes` now held only by a reference cycle (freed at the next full collection)."""
    _debt.owe(nbytes)


def freeze_long_lived() -> None:
    """Collect, then move every object alive now out of the cycle collector's scans (gc.freeze): call it once
    the models are loaded and before the sources start, so that later full collections scan only what the run
    makes. A frozen object is still freed when its last reference goes; only a cycle among frozen objects
    would stay, and everything alive at this point lives as long as the run."""
    gc.collect()
    gc.freeze()
