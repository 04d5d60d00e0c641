"""Decoded frames to BGR (common/frames.py): same pixels as PyAV's own conversion, no thread per frame."""
from __future__ import annotations

import gc
import os
import threading

import av
import cv2
import numpy as np
import pytest
from skimage import data as skdata

from common.frames import to_bgr
from common.qp import qp_map
from tests.test_qp import decoded as qp_clip

pytestmark = pytest.mark.skipif("libx264" not in av.codecs_available, reason="this PyAV has no libx264 encoder")


def decoded(n: int, w: int = 320, h: int = 240) -> list[av.VideoFrame]:
    """n frames of a moving astronaut through libx264 and back, decoded with the QP side data on."""
    still = cv2.resize(skdata.astronaut()[..., ::-1], (w + n, h), interpolation=cv2.INTER_AREA)
    return qp_clip([np.ascontiguousarray(still[:, i:i + w]) for i in range(n)], preset="ultrafast")


def threads_now() -> int:
    return len(os.listdir("/proc/self/task"))


def test_to_bgr_gives_pyav_s_own_conversion_bit_for_bit():
    frames = decoded(5)
    assert len(frames) == 5
    for frame in frames:
        image = to_bgr(frame)
        assert image.shape == (240, 320, 3) and image.dtype == np.uint8
        assert np.array_equal(image, frame.to_ndarray(format="bgr24"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc to count threads")
def test_frames_kept_alive_add_no_threads():
    # Frames whose QP map was read stay alive until a full collection (common/qp.py): with the collector
    # off all 40 stay. PyAV's per-frame conversion gives each its own swscale context and worker threads
    # (measured: 2 + 2 x 60 threads for 60 frames held); one converter per thread adds none per frame.
    frames = decoded(40)
    gc.disable()
    try:
        before = threads_now()
        held = []
        for frame in frames:
            to_bgr(frame)
            qp_map(frame)
            held.append(frame)
        frames.clear()
        assert threads_now() <= before + 2
    finally:
        gc.enable()
        del held
        gc.collect()


def test_each_thread_converts_with_its_own_converter():
    frames = decoded(12)
    expected = [f.to_ndarray(format="bgr24") for f in frames]
    results: dict[int, list[np.ndarray]] = {}

    def convert(k: int) -> None:
        results[k] = [to_bgr(f) for f in frames[k::2]]

    workers = [threading.Thread(target=convert, args=(k,)) for k in range(2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for k in range(2):
        assert all(np.array_equal(a, b) for a, b in zip(results[k], expected[k::2], strict=True))
