"""How noisy a camera is: its noise sigma, from the difference of consecutive frames.

Why: a super-resolution model sharpens what it is given; on a noisy camera it sharpens the noise too, and a
recognizer then does worse than on bicubic (models/weights/README.md, "Strength by noise"). For H.264 the
encoder's quantiser is in the stream (common/qp.py); sensor noise is in no side data, and from one small
face it cannot be told from texture (a 16 px face gives ~200 pixels, and skin, hair and edges vary as much
as the noise). A camera's noise is a property of the camera (its gain), not of a face, and a video gives
many looks at the same static scene: in a pixel that did not change, the difference of two frames with
independent Gaussian noise of sigma s is N(0, 2 s^2). In 8 x 8 blocks of that difference, motion and edges
only add spread: the quietest quarter of the blocks (still, or flat) reads the noise alone (eq. 1-2 below;
blocks with many clipped pixels are left out: clipping cuts the noise off).

Values are on the 0-255 luma scale, measured after the camera's compression: what the model is given.
Noise added per BGR channel with sigma s shows in luma with 0.67 s (the BT.601 weights' norm), less after
JPEG or H.264 smooth it. A stream with inter frames (H.264's P and B) is measured at its intra frames only,
each against the frame decoded just before it: an inter frame copies most of a still scene from its
reference (skip blocks), noise and all, so two inter frames hardly differ, while an intra frame brings fresh
noise; and the frame before it is a frame away, where the previous intra frame is a GOP away (1-2 s of
motion: a hand-held busy 1080p clip reads 2.3 between frames 1 s apart, 0.4-0.9 between neighbours). Measured
on a 360p clip at CRF 23 with an intra frame every 15: 0.44 without noise, 0.93 with sigma 4, 2.9 with sigma 8
(the median over all neighbouring frames: 1.4 with sigma 8); `update_frame`.

Example:
    >>> rng = np.random.default_rng(0)
    >>> scene = rng.uniform(0, 255, (240, 320, 3))
    >>> camera = lambda: np.clip(scene + rng.normal(0, 6, scene.shape), 0, 255).astype(np.uint8)
    >>> meter = TemporalNoise()
    >>> [meter.update(camera()) for _ in range(3)][0] is None  # the first frame has nothing to compare with
    True
    >>> round(meter.value / LUMA_GAIN)  # the sigma added per channel
    6
"""
from __future__ import annotations

from collections import deque

import numpy as np
from scipy import stats

_INTRA = 1  # AVPictureType AV_PICTURE_TYPE_I, as PyAV's frame.pict_type gives it
#: BT.601 luma weights in OpenCV's BGR order.
_LUMA = np.array([0.114, 0.587, 0.299], np.float32)
#: The luma sigma of noise of sigma 1 added independently to each BGR channel.
LUMA_GAIN = float(np.sqrt((_LUMA ** 2).sum()))
#: Side of the square blocks of the difference whose spread is measured (eq. 1), and which quantile of
#: their spreads is taken: the quietest quarter of a frame is still, or flat (a flat wall that pans by
#: changes no pixel), where the difference is noise alone.
BLOCK = 8
QUANTILE = 0.25
CLIPPED = 0.1  # a block with a larger share of pixels at 0 or 255 is left out
#: Blocks compared per frame pair at most: every k-th block of every k-th block row (noise is the same
#: everywhere, so a sample serves as well as the whole frame: ~0.5 ms a frame at 360p and at 1080p).
#: Whole blocks, not a strided grid of pixels: a grid's "block" would span k times more of the scene, and
#: a hand-held camera's drift of a pixel then reads as noise in it (1.4-4.0 instead of 0.4-0.9 on the
#: 1080p arcade clip).
BLOCKS = 1024
#: The QUANTILE of the sample sigma of BLOCK x BLOCK Gaussian values is below sigma by this factor:
#: (n - 1) s^2 / sigma^2 is chi-square with n - 1 = 63 degrees of freedom (eq. 2).
_BIAS = float(np.sqrt(stats.chi2.ppf(QUANTILE, BLOCK * BLOCK - 1) / (BLOCK * BLOCK - 1)))


def block_luma(image: np.ndarray, blocks: int = BLOCKS, limited: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """At most about `blocks` BLOCK x BLOCK blocks of an H x W x 3 BGR (or H x W grey) uint8 image, the
    same blocks for every frame of one size: their BT.601 luma on the 0-255 scale (n x BLOCK^2 float32;
    `limited`: the image is a Y plane of video's limited range 16-235, stretched to 0-255), and which
    blocks are clipped (more than CLIPPED of their pixels at the range's ends in a channel: 0 or 255, 16 or
    235 for `limited`): clipping cuts off the noise there (a few clipped pixels of a noisy block do not: with
    sigma 8 most blocks of a bright photo have one)."""
    rows, cols = image.shape[0] // BLOCK, image.shape[1] // BLOCK
    step = max(1, int(np.ceil(np.sqrt(rows * cols / blocks))))
    channels = 1 if image.ndim == 2 else image.shape[2]
    tiles = image[:rows * BLOCK, :cols * BLOCK].reshape(rows, BLOCK, cols, BLOCK, channels)[::step, :, ::step]
    tiles = tiles.swapaxes(1, 2).reshape(-1, BLOCK * BLOCK, channels)
    low, high = (16, 235) if limited else (0, 255)
    clipped = ((tiles <= low) | (tiles >= high)).any(axis=2).mean(axis=1) > CLIPPED
    y = tiles[..., 0].astype(np.float32) if tiles.shape[-1] == 1 else tiles.astype(np.float32) @ _LUMA
    return ((y - 16.0) * np.float32(255.0 / 219.0) if limited else y), clipped


def difference_sigma(previous: tuple[np.ndarray, np.ndarray], current: tuple[np.ndarray, np.ndarray]) -> float:
    """The noise sigma of one frame pair, from the `block_luma` of the two frames. The difference d of two
    frames is N(0, 2 sigma^2) where the scene did not change; per block not clipped in either frame, std(d):

        sigma = quantile_QUANTILE(std_block(d)) / (sqrt(2) x _BIAS)                         (1), (2)

    Motion and texture only raise a block's spread, so the low quantile reads the still or flat blocks; a
    change of exposure shifts a block's mean, which std ignores. 0 when no block is left."""
    keep = ~(previous[1] | current[1])
    if not keep.any():
        return 0.0
    spread = (current[0][keep] - previous[0][keep]).std(axis=1, ddof=1)
    return float(np.quantile(spread, QUANTILE) / (np.sqrt(2.0) * _BIAS))


def luma_plane(frame) -> tuple[np.ndarray, bool]:
    """A decoded PyAV VideoFrame's luma as an H x W uint8 view of its Y plane (no conversion), and whether
    it is in video's limited range (16-235; `block_luma`'s `limited`); frames without a Y plane (RGB,
    palette) are converted to BGR instead."""
    name = frame.format.name
    if name.startswith(("yuv", "nv12", "nv21")) and "p1" not in name and "le" not in name and "be" not in name:
        plane = frame.planes[0]
        y = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:frame.height, :frame.width]
        full = name.startswith("yuvj") or int(frame.color_range) == 2  # AVCOL_RANGE_JPEG
        return y, not full
    from common.frames import to_bgr  # PyAV only where frames are decoded

    return to_bgr(frame), False


class TemporalNoise:
    """A camera's running noise sigma: the median of eq. (1)-(2) over the last `window` frame pairs, so that
    a passing crowd or a pan moves it little; a change of frame size (a new stream) starts it afresh.

    Example: see the module docstring; `value` is None until two frames of one size were seen.
    """

    def __init__(self, window: int = 25, blocks: int = BLOCKS) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.blocks = blocks
        self._previous: tuple[np.ndarray, np.ndarray] | None = None
        self._recent: deque[float] = deque(maxlen=window)
        self._value: float | None = None
        self._before = self._previous_frame = None  # update_frame's last frame, and the one `_previous` is of

    @property
    def value(self) -> float | None:
        # Kept as a number, not computed from the window here: other threads read it (the metrics endpoint)
        # while the source's reader updates the window.
        return self._value

    def reset(self) -> None:
        """Forget the stream so far (a reconnect: the next frame may show another scene or gain)."""
        self._forget()
        self._before = self._previous_frame = None

    def _forget(self) -> None:
        self._previous = None
        self._recent.clear()
        self._value = None

    def update_frame(self, frame) -> float | None:
        """`update` with the decoded PyAV VideoFrames of a stream, in order, read from their Y planes
        (`luma_plane`): each intra frame against the frame decoded just before it (the module docstring says
        why); every frame of an intra-only stream (MJPEG), a GOP at a time on H.264 (typically every 1-2 s on
        a camera). Holds a reference to the last frame."""
        before, self._before = self._before, frame
        if before is None or not (frame.key_frame or int(frame.pict_type) == _INTRA):
            return self.value
        if before is not self._previous_frame:  # else its blocks are `_previous` already (an intra-only stream)
            self._previous = None
            self.update(*luma_plane(before))
        self._previous_frame = frame
        return self.update(*luma_plane(frame))

    def update(self, image: np.ndarray, limited: bool = False) -> float | None:
        """Add the next decoded frame (BGR or grey uint8; `limited`: see `block_luma`); returns the running
        sigma (None: not yet known)."""
        current = block_luma(image, self.blocks, limited)
        if self._previous is not None and self._previous[0].shape != current[0].shape:
            self._forget()
        if self._previous is not None:
            self._recent.append(difference_sigma(self._previous, current))
            self._value = float(np.median(self._recent))
        self._previous = current
        return self.value
