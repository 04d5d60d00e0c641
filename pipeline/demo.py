"""The bundled default input: a short clip generated from skimage.data.astronaut().

The face moves across a 640 x 360 frame while it shrinks from 80 px to 16 px wide, and every
frame is JPEG-compressed (quality 40) before encoding, like a cheap CCTV camera.

`run_stream.py --source demo` writes it into the run folder (`pipeline.run_folder.DEMO_CLIP`).

Example:
    >>> path = make_demo_clip("out/demo/input/demo.mp4")  # doctest: +SKIP
"""
from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

log = logging.getLogger(__name__)

FACE_BOX = (181, 62, 268, 172)  # the astronaut's face, xyxy (MTCNN on the 512 x 512 image)
HEAD = (120, 0, 340, 240)  # the region pasted into the frame: head and shoulders


def demo_frames(n_frames: int = 60, size: tuple[int, int] = (640, 360), face_from: float = 80,
                face_to: float = 16, jpeg_quality: int = 40, seed: int = 0):
    """Yield BGR frames of the astronaut's head moving left to right and shrinking."""
    from skimage import data  # scikit-image ships the image; no download

    astronaut = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    x0, y0, x1, y1 = HEAD
    head = astronaut[y0:y1, x0:x1]
    face_width = FACE_BOX[2] - FACE_BOX[0]
    width, height = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([60 + 40 * xx / width, 70 + 30 * yy / height, 80 + 20 * (xx + yy) / (width + height)], -1)
    for i in range(n_frames):
        t = i / max(n_frames - 1, 1)
        scale = (face_from + (face_to - face_from) * t) / face_width
        patch = cv2.resize(head, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        frame = (background + rng.normal(0, 3, background.shape)).clip(0, 255).astype(np.uint8)
        px = int(20 + t * (width - 40 - patch.shape[1]))
        py = int((height - patch.shape[0]) * (0.3 + 0.2 * t))
        frame[py:py + patch.shape[0], px:px + patch.shape[1]] = patch
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        yield cv2.imdecode(buf, cv2.IMREAD_COLOR)


def make_demo_clip(path: str | Path, n_frames: int = 60, fps: int = 15, size: tuple[int, int] = (640, 360)) -> Path:
    """Write the demo clip (`size`: width, height; H.264 if this PyAV has it, else MPEG-4) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        stream.time_base = Fraction(1, fps)
        if codec == "mpeg4":
            stream.bit_rate = 2_000_000
        for frame in demo_frames(n_frames, size):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    log.info("demo clip: %s (%d frames, %s)", path, n_frames, codec)
    return path
