"""Typed records passed between pipeline stages (see DESIGN.md, "Records").

Each stage takes the previous stage's records and returns its own; all image data is numpy.

Example:
    >>> import numpy as np

from common.qp import QPMap
    >>> f = Frame(index=0, pts_time=0.0, image=np.zeros((4, 4, 3), np.uint8), source_id="demo")
    >>> f.image.shape
    (4, 4, 3)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np


@dataclass
class Frame:
    """One decoded frame. `image` is H x W x 3 uint8 BGR; `pts_time` may be None (first RTSP frame);
    `source_file`: the image's file name for a folder source (None for videos and cameras);
    `decoded_at`: wall-clock time (time.time()) it was decoded: a face's end-to-end latency starts
    there, also when the face is written by another process (pipeline.cluster); `qp`: the H.264
    quantiser of each block (common.qp; None for other codecs and images); `noise`: the camera's noise
    sigma measured on the stream up to this frame (common.noise; None for unrelated photos, and until two
    intra frames were seen)."""

    index: int
    pts_time: float | None
    image: np.ndarray
    source_id: str = ""
    source_file: str | None = None
    decoded_at: float | None = None
    qp: QPMap | None = None
    noise: float | None = None


@dataclass
class Detection:
    """A face: box xyxy in frame pixels, score in [0, 1], landmarks 5 x 2
    (left eye, right eye, nose, mouth left, mouth right; "left" = image left)."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def size(self) -> float:
        """Face size in pixels: the longer side of the box."""
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


class TrackState(str, Enum):
    TENTATIVE = "tentative"
    CONFIRMED = "confirmed"
    LOST = "lost"


@dataclass
class TrackUpdate:
    """A track's state at one frame. `detection` is the detection matched in this frame
    (None when the track was only predicted)."""

    track_id: int
    frame_index: int
    detection: Detection | None
    state: TrackState
    box: np.ndarray | None = None  # the tracker's (filtered) box, xyxy


@dataclass(frozen=True)
class TrackEnd:
    """A track has ended; the tracker emits this exactly once per track, and it travels down the same
    queues as the faces, after the track's last face, so every stage that keeps per-track state
    (select, recognition, sink) can finish the track and release that state.

    `frame_index`: the frame on which the end was decided; `first_frame` / `last_frame`: the first
    and last frames with a detection matched to the track; `faces_seen`: how many detections were
    matched to it; `reason`: "lost" (unmatched for `max_age` detection frames), "unconfirmed" (a
    tentative track that missed a detection), "stream_end" (still alive when the input ended),
    "photo" (a face of a folder of unrelated photos: every face is its own track, ended with its photo)
    or "worker_lost" (cut when the camera's worker died, see pipeline.cluster: the faces it held back
    for selection died with it; `first_frame`, `last_frame` and `faces_seen` then count the faces
    written, the only ones the driver knows of; a restarted worker goes on with new tracks).

    Example:
        >>> TrackEnd(track_id=3, frame_index=90, first_frame=10, last_frame=60, faces_seen=51,
        ...          reason="lost").last_frame
        60
    """

    track_id: int
    frame_index: int
    first_frame: int
    last_frame: int
    faces_seen: int
    reason: str
    camera: str = ""  # the camera's id in a multi-camera run (pipeline.cameras); "" for a single source


@dataclass
class AlignedFace:
    """An aligned LR face in canonical framing at its native resolution.

    `transform` is the 2 x 3 similarity matrix mapping frame pixels to crop pixels; `qp`: the median
    H.264 quantiser of the frame's blocks under the face (None when the frame has no QP map); `noise`: the
    camera's noise sigma when the frame was decoded (the Frame's); `fused`: how many frames of the track
    the crop is the mean of (pipeline.fuse; 1: this frame's alone), `fused_noise`: the noise sigma left in
    such a mean (None: not fused)."""

    track_id: int
    frame_index: int
    crop: np.ndarray  # h x w x 3 uint8 BGR
    transform: np.ndarray
    crop_size: int
    quality: float
    detection: Detection
    pts_time: float | None = None
    source_file: str | None = None  # the Frame's
    decoded_at: float | None = None  # the Frame's
    camera: str = ""  # the camera's id in a multi-camera run (pipeline.cameras); "" for a single source
    qp: float | None = None
    noise: float | None = None
    fused: int = 1
    fused_noise: float | None = None

    @property
    def crop_noise(self) -> float | None:
        """The noise sigma left in the crop: the camera's, or what is left of it in a mean of frames."""
        return self.noise if self.fused_noise is None else self.fused_noise


@dataclass
class EnhancedFace:
    """An aligned face plus its super-resolved image at the configured output size. `strength`: the
    share of the model's detail added over bicubic (pipeline.enhance; None when no model ran)."""

    face: AlignedFace
    sr: np.ndarray  # S x S x 3 uint8 BGR
    scale: float
    method: str = "arasfsr"
    strength: float | None = None
    extras: dict = field(default_factory=dict)
