"""Decoded video frames to numpy BGR, with one colour converter per thread.

Why not PyAV's `frame.to_ndarray(format="bgr24")`: it gives every frame a converter of its own (a swscale
context), and FFmpeg 8's swscale starts worker threads for each context (two per context on a 2-core machine),
which live as long as the frame. A frame whose QP side data was read lives until the next full cycle
collection (common/qp.py, common/memory.py): at 360p that is ~185 frames, so a live camera kept 34-214 threads
coming and going (BENCHMARKS.md, "A live camera: a thread per frame, then the detector's heap"; the memory
that run gained came mostly from glibc's heap under the detector, common/memory.py).
One converter per converting thread (the source's reader, or the thread that reads a live camera) is made
once and reused frame after frame: the output is the same, bit for bit, and sooner (0.77 instead of
1.30 ms a 1080p frame, 0.12 instead of 0.45 at 360p).

Example:
    >>> import av  # doctest: +SKIP
    >>> with av.open("clip.mp4") as container:  # doctest: +SKIP
    ...     image = to_bgr(next(container.decode(video=0)))  # H x W x 3 uint8
"""
from __future__ import annotations

import threading

import numpy as np

#: swscale's threads per converter. One: the conversion runs beside detection and enhancement, which already
#: use every core (two threads: 0.62 instead of 0.77 ms a 1080p frame on an idle 2-core machine, 0.19
#: instead of 0.12 at 360p). It also keeps a converter that a forked worker (a DataLoader's) inherits usable:
#: a context with worker threads would lose them in the fork.
THREADS = 1

_local = threading.local()


def to_bgr(frame) -> np.ndarray:
    """`frame` (an av.VideoFrame) as H x W x 3 uint8 BGR, converted by this thread's converter."""
    converter = getattr(_local, "converter", None)
    if converter is None:
        from av.video.reformatter import VideoReformatter  # PyAV only where frames are decoded

        converter = _local.converter = VideoReformatter()
    return converter.reformat(frame, format="bgr24", threads=THREADS).to_ndarray()
