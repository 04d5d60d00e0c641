"""Where a camera's picture changed: the parts of a frame worth running the detector on.

A fixed CCTV camera looks at the same still scene most of the time, and the detector's cost grows with the
pixels it searches (P-Net's pyramid over the whole frame). With `detect.motion`, each frame due for detection
is compared with a running background at low resolution; the detector then searches only the parts that
changed (padded, so a head above a moving body is inside) and the parts where the live tracks' faces are
expected (a face that stands still keeps its track), and the whole frame every `detect.motion_full_every`-th
detection (a face that came in still, or was missed while it moved) and whenever searching the parts would
cost more than `detect.motion_max_area` of a whole detection (`worth_searching`: a pan, the lights, a shaking
camera, many people).
This is what NVR software does before running its detectors (Frigate's motion masks); measured on the
shared clips in BENCHMARKS.md, "Detecting where the picture moved".

Example:
    >>> import numpy as np
    >>> motion = MotionMask(threshold=12.0)
    >>> still = np.full((240, 320, 3), 90, np.uint8)
    >>> motion.update(still).shape, motion.update(still).shape   # the first frame only sets the background
    ((0, 4), (0, 4))
    >>> moved = still.copy(); moved[100:140, 200:240] = 200     # something bright came in
    >>> motion.update(moved).round()                           # xyxy, frame pixels
    array([[200., 100., 240., 140.]])
"""
from __future__ import annotations

import cv2
import numpy as np

MASK_WIDTH = 320  # px: the background's width (a 1080p frame in cells of 6 px, still 2-3 cells per 16 px face)
BACKGROUND_RATE = 0.5  # the share of each new frame in the background: what moved leaves it within ~3 frames
MOTION_PAD = 0.25  # a changed part is searched with this many of its longer side around it (the head above a body)
NOISE_FACTOR = 3.0  # a pixel moved when it changed by more than this many times the camera's noise sigma
# What searching one part costs beyond its pixels, in pixels of the detection's grid: each part is its own P-Net
# pyramid and R-/O-Net calls, ~6-8 ms on one CPU thread, what ~20,000 pixels of a whole frame cost
# (BENCHMARKS.md, "Detecting where the picture moved").
REGION_COST = 20_000


class MotionMask:
    """A camera's running background at low resolution; `update(frame)` returns the boxes that changed.

    The frame is shrunk to MASK_WIDTH px wide (area averaging, which also averages the noise away), in gray,
    and compared with the background: pixels that changed by more than `threshold` gray levels (or
    NOISE_FACTOR x the camera's noise sigma, if higher) are grouped into connected boxes (`changed_boxes`).
    A frame of another size (the camera came back at another resolution) starts a new background. Changes
    inside the `ignore` boxes ([x0, y0, x1, y1] in shares of the frame: a burned-in clock, a screen) are not
    motion."""

    def __init__(self, threshold: float = 12.0, ignore: tuple[tuple[float, ...], ...] = ()) -> None:
        self.threshold, self.ignore = threshold, ignore
        self.background: np.ndarray | None = None
        self._shape: tuple[int, ...] = ()
        self._watched: np.ndarray | None = None  # the mask's cells outside the ignored boxes

    def update(self, frame: np.ndarray, noise: float | None = None) -> np.ndarray:
        """BGR (or gray) uint8 frame -> N x 4 xyxy boxes in frame pixels where it differs from the
        background (none for the first frame), then blends the frame into the background."""
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame[..., :3], cv2.COLOR_BGR2GRAY)
        height, width = gray.shape
        scale = min(1.0, MASK_WIDTH / width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA).astype(np.float32)
        if self.background is None or frame.shape != self._shape:
            self.background, self._shape = small, frame.shape
            self._watched = np.ones(small.shape, bool)
            rows, cols = small.shape
            for x0, y0, x1, y1 in self.ignore:  # every cell a box touches
                self._watched[int(y0 * rows):int(np.ceil(y1 * rows)), int(x0 * cols):int(np.ceil(x1 * cols))] = False
            return np.zeros((0, 4))
        # Area averaging over scale^-2 pixels divides the noise's sigma by 1 / scale.
        level = max(self.threshold, NOISE_FACTOR * (noise or 0.0) * scale)
        changed = (np.abs(small - self.background) > level) & self._watched
        cv2.accumulateWeighted(small, self.background, BACKGROUND_RATE)
        return changed_boxes(changed, (width / size[0], height / size[1]))


def changed_boxes(changed: np.ndarray, cell: tuple[float, float]) -> np.ndarray:
    """The bounding boxes (N x 4 xyxy, in frame pixels: a mask cell is `cell` = (w, h) px) of the groups of
    changed cells that lie within one cell of each other (a body's outline changes more than its middle).
    A group of one cell is dropped: at MASK_WIDTH a cell is far smaller than a face, so it is noise."""
    near = cv2.dilate(changed.astype(np.uint8), np.ones((3, 3), np.uint8))
    count, labels = cv2.connectedComponents(near, connectivity=8)
    ys, xs = np.nonzero(changed)
    group = labels[ys, xs]
    cells = np.bincount(group, minlength=count)
    x0, y0 = np.full(count, np.inf), np.full(count, np.inf)
    x1, y1 = np.full(count, -np.inf), np.full(count, -np.inf)
    np.minimum.at(x0, group, xs)
    np.minimum.at(y0, group, ys)
    np.maximum.at(x1, group, xs + 1)
    np.maximum.at(y1, group, ys + 1)
    keep = np.flatnonzero(cells > 1)
    return np.stack([x0[keep] * cell[0], y0[keep] * cell[1], x1[keep] * cell[0], y1[keep] * cell[1]], 1)


def grow(boxes: np.ndarray, pad: float, min_side: float) -> np.ndarray:
    """N x 4 xyxy boxes padded by `pad` x their longer side on every side, and to at least `min_side` wide
    and high, about the same centre."""
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    centre, size = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
    half = np.maximum(size / 2 + pad * size.max(1, keepdims=True), min_side / 2)
    return np.concatenate([centre - half, centre + half], 1)


def merge_regions(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """`boxes` (N x 4 xyxy) cut to an H x W frame and merged while any two overlap (the box around both), so
    that the detector searches each part of the frame once and a face in two boxes whole. Boxes wholly
    outside the frame are dropped. Returns M x 4 int xyxy, pixel edges (x1, y1 exclusive)."""
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    regions = [[max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)]
               for x0, y0, x1, y1 in boxes]
    regions = [r for r in regions if r[2] - r[0] >= 1 and r[3] - r[1] >= 1]
    merged = True
    while merged:  # a handful of boxes per frame: the quadratic sweep takes microseconds
        merged = False
        for i, j in ((i, j) for i in range(len(regions)) for j in range(i + 1, len(regions))):
            a, b = regions[i], regions[j]
            if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                regions[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
                del regions[j]
                merged = True
                break
    out = np.array(regions, dtype=float).reshape(-1, 4)
    return np.concatenate([np.floor(out[:, :2]), np.ceil(out[:, 2:])], 1).astype(int)


def worth_searching(regions: np.ndarray, height: int, width: int, scale: float, max_share: float) -> bool:
    """Whether searching `regions` (M x 4 xyxy, merged) of an H x W frame costs less than `max_share` of
    detecting the whole frame: their pixels and REGION_COST per region (`scale`: the detection's grid per frame
    pixel, below 1 when detect.max_side shrinks the frame) against the frame's pixels."""
    area = float(np.prod(regions[:, 2:] - regions[:, :2], axis=1).sum()) if len(regions) else 0.0
    return area + len(regions) * REGION_COST / scale**2 <= max_share * height * width
