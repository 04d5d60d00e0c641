"""Camera models: what a surveillance camera does to a frame after the optics (noise, JPEG, H.264).

One place for the degradations that both the identity benchmark (benchmarks/identity.py) and
training (models/data.py, `FrameDegradation`) apply, so that the model is trained on exactly the
damage it is judged on. Every function takes and returns an H x W x 3 uint8 image in the
pipeline's frame convention (BGR); the encoders see colour the way a camera's encoder does.

A camera model is named by a short string, parts joined by "+":

    clean                 nothing
    noise8                additive Gaussian noise, sigma 8 on the 0-255 scale
    jpeg50                JPEG at quality 50
    h264crf30             H.264 (libx264 through PyAV, yuv420p) at CRF 30, decoded back
    noise8+jpeg50         noise first, then compression (the order a camera applies them)

Example:
    >>> import numpy as np
    >>> frame = np.full((48, 64, 3), 128, np.uint8)
    >>> cam = CameraModel.parse("noise8+jpeg50")
    >>> cam.name, cam(frame, np.random.default_rng(0)).shape
    ('noise8+jpeg50', (48, 64, 3))
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np

from common.frames import to_bgr
from common.qp import QPMap, export_qp, qp_map

_PART = re.compile(r"^(?:(clean)|noise(\d+(?:\.\d+)?)|jpeg(\d+)|h264crf(\d+))$")


def add_noise(bgr: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise (sensor read noise at a fixed gain), rounded and clipped."""
    if sigma <= 0:
        return bgr.copy()
    return np.clip(bgr + rng.normal(0.0, sigma, bgr.shape) + 0.5, 0, 255).astype(np.uint8)


def jpeg(bgr: np.ndarray, quality: int) -> np.ndarray:
    """JPEG-compress and decode (OpenCV's libjpeg, 4:2:0 chroma as cameras use)."""
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def h264(bgr: np.ndarray, crf: int) -> np.ndarray:
    """Encode the frame as the first (intra) frame of an H.264 clip with libx264 at `crf`, decode it back.

    yuv420p needs even sides: odd frames are padded by edge replication for the encoder and the
    padding is cut off again. The intra frame is what a camera sends at every key frame, and what
    a static scene's later frames copy."""
    return h264_with_qp(bgr, crf)[0]


def h264_with_qp(bgr: np.ndarray, crf: int) -> tuple[np.ndarray, QPMap | None]:
    """`h264`, and the decoded frame's QP map (common.qp), as the pipeline's source reads it from a stream."""
    import av  # PyAV: a dependency of the pipeline's source stage anyway

    h, w = bgr.shape[:2]
    padded = cv2.copyMakeBorder(bgr, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height = padded.shape[1], padded.shape[0]
    codec.pix_fmt = "yuv420p"
    codec.options = {"crf": str(int(crf)), "preset": "veryfast", "tune": "zerolatency"}
    packets = list(codec.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format="bgr24")))
    packets += list(codec.encode(None))
    decoder = av.CodecContext.create("h264", "r")
    export_qp(decoder)
    frames = [f for p in packets for f in decoder.decode(p)] + list(decoder.decode(None))
    if not frames:
        raise RuntimeError("H.264 round trip produced no frame")
    return np.ascontiguousarray(to_bgr(frames[0])[:h, :w]), qp_map(frames[0])


@dataclass(frozen=True)
class CameraModel:
    """noise sigma (0: none), then one compression: JPEG quality or H.264 CRF (None: none)."""

    noise: float = 0.0
    jpeg_quality: int | None = None
    h264_crf: int | None = None

    def __post_init__(self) -> None:
        if self.jpeg_quality is not None and self.h264_crf is not None:
            raise ValueError("a camera model compresses once: JPEG or H.264, not both")
        if self.noise < 0:
            raise ValueError(f"noise sigma must be >= 0, got {self.noise}")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"JPEG quality must be in [1, 100], got {self.jpeg_quality}")
        if self.h264_crf is not None and not 0 <= self.h264_crf <= 51:
            raise ValueError(f"H.264 CRF must be in [0, 51], got {self.h264_crf}")

    @classmethod
    def parse(cls, name: str) -> CameraModel:
        """'clean', 'noise8', 'jpeg50', 'h264crf30', or parts joined by '+' (see the module docstring)."""
        noise, q, crf = 0.0, None, None
        for part in str(name).strip().lower().split("+"):
            m = _PART.match(part)
            if m is None:
                raise ValueError(f"unknown camera model part {part!r} in {name!r}; "
                                 "valid: clean, noise<sigma>, jpeg<quality>, h264crf<crf>")
            if m[2]:
                noise = float(m[2])
            if m[3]:
                q = int(m[3])
            if m[4]:
                crf = int(m[4])
        return cls(noise, q, crf)

    @property
    def name(self) -> str:
        parts = [f"noise{self.noise:g}"] if self.noise else []
        parts += [f"jpeg{self.jpeg_quality}"] if self.jpeg_quality is not None else []
        parts += [f"h264crf{self.h264_crf}"] if self.h264_crf is not None else []
        return "+".join(parts) or "clean"

    def __call__(self, bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.degrade(bgr, rng)[0]

    def degrade(self, bgr: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, QPMap | None]:
        """The degraded frame, and its QP map when the camera encodes H.264 (else None), as a decoder
        of the camera's stream would see it."""
        img = add_noise(bgr, self.noise, rng) if self.noise else bgr
        blocks = None
        if self.jpeg_quality is not None:
            img = jpeg(img, self.jpeg_quality)
        if self.h264_crf is not None:
            img, blocks = h264_with_qp(img, self.h264_crf)
        return (img if img is not bgr else bgr.copy()), blocks
