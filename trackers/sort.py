"""SORT / BYTE-style multi-face tracker (Kalman filter + Hungarian assignment on IoU).

Written for this project from the published ideas (SORT: Bewley et al. 2016; ByteTrack: Zhang
et al. 2022); no code was taken from either project.

How one detection frame is processed (`update(frame_index, detections)`):

1. every live track is predicted forward to `frame_index` (one Kalman step per video frame);
2. detections are split by score: high (>= high_thresh), low (low_thresh <= score < high_thresh),
   the rest are dropped;
3. pass 1: Hungarian assignment (`associate`) of high detections to all live tracks on IoU
   (>= iou_threshold);
   then a rescue round for what is left, on *buffered* IoU (both boxes widened by
   `buffer` x their size on each side, the C-BIoU idea): a newborn track has no velocity yet, and
   with the detector on every k-th frame a face walking across the image moves by a large part
   of its own width between detections, so plain IoU would drop to 0 and spawn a new id;
   then a recovery round for LOST tracks on buffered IoU with their last *observed* box (the
   OC-SORT idea): after an occlusion a face reappears near where it was last seen, while the
   prediction has coasted away on its old velocity;
4. pass 2 (BYTE): low detections are assigned to the *confirmed* tracks left over from pass 1
   (>= low_iou_threshold). Low scores mostly come from blurred / occluded / turned faces of
   people we already follow, so they may keep a track alive but never start one;
5. high detections still unmatched start new TENTATIVE tracks;
6. unmatched tentative tracks are deleted at once (a one-frame blip is not a face track);
   unmatched confirmed tracks become LOST and are deleted after `max_age` detection frames.

Every deleted track is reported once as a `TrackEnd` by `pop_ended()`; at the end of the input,
`finish()` ends every live track the same way, so downstream stages release per-track state through
one code path.

Frames on which the detector did not run go through `predict(frame_index)` (same as
`update(frame_index, None)`): tracks coast on their Kalman prediction, nothing is matched,
created or deleted for lack of a match. An empty list, `update(i, [])`, is different: it means
"the detector ran and saw nothing", so every track takes a miss.

Units: `min_hits` counts matched detection frames and `max_age` counts detection frames, so one
config works for any detector stride; internally a track is deleted after
`max_age * stride` video frames without a match.

Example:
    >>> import numpy as np
    >>> from pipeline.records import Detection, TrackState
    >>> trk = SortTracker(TrackerConfig(min_hits=2, stride=2))
    >>> def face(x):
    ...     return Detection(np.array([x, 50.0, x + 40, 100.0]), 0.99, np.zeros((5, 2)))
    >>> [u.state.value for u in trk.update(0, [face(10.0)])]
    ['tentative']
    >>> [u.detection is None for u in trk.predict(1)]
    [True]
    >>> [(u.track_id, u.state.value) for u in trk.update(2, [face(14.0)])]
    [(1, 'confirmed')]
    >>> trk.finish(); [(e.track_id, e.first_frame, e.last_frame, e.reason) for e in trk.pop_ended()]
    [(1, 0, 2, 'stream_end')]
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
from filterpy.kalman import KalmanFilter
from scipy.optimize import linear_sum_assignment

from common.config import setting, validate
from pipeline.errors import ConfigError
from pipeline.records import Detection, TrackEnd, TrackState, TrackUpdate

log = logging.getLogger(__name__)

MIN_SIDE = 1.0  # px; boxes are widened to at least this so area and aspect stay finite
_NO_MATCH = 1e6  # Hungarian cost of a pair below the IoU threshold


@dataclass
class TrackerConfig:
    """Tracker settings.

    iou_threshold: min IoU for the first (high-score) pass.
    buffer: box widening per side (fraction of its size) for the buffered-IoU rescue round.
    low_iou_threshold: min IoU for the BYTE pass; stricter, because low-score boxes are less
        reliable and should only be taken when they sit where a track is expected.
    high_thresh / low_thresh: MTCNN's O-Net keeps faces >= 0.7 and real, clear faces score
        >= 0.95 almost always, so 0.95 starts tracks and 0.7..0.95 only sustains them.
    min_hits: consecutive matched detection frames before a track is CONFIRMED.
    max_age: detection frames a confirmed track may go unmatched before it is deleted.
    stride: the detector runs on every `stride`-th video frame.
    """

    iou_threshold: float = setting(0.3, gt=0.0, hi=1.0)
    buffer: float = setting(0.5, lo=0.0)
    low_iou_threshold: float = setting(0.5, gt=0.0, hi=1.0)
    high_thresh: float = setting(0.95, lo=0.0, hi=1.0)
    low_thresh: float = setting(0.7, lo=0.0, hi=1.0)
    min_hits: int = setting(3, lo=1)
    max_age: int = setting(30, lo=1)
    stride: int = setting(1, lo=1)

    def __post_init__(self) -> None:
        validate(self)
        if self.low_thresh > self.high_thresh:
            raise ConfigError(f"must be in [0, high_thresh={self.high_thresh!r}], got {self.low_thresh!r}", "low_thresh")

    @property
    def max_age_frames(self) -> int:
        """`max_age` in video frames."""
        return self.max_age * self.stride


def _sanitize(box: np.ndarray) -> np.ndarray:
    """xyxy float box with each side >= MIN_SIDE (kept centred), so IoU/area/aspect are finite."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = max(abs(x2 - x1), MIN_SIDE), max(abs(y2 - y1), MIN_SIDE)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _box_to_z(box: np.ndarray) -> np.ndarray:
    """xyxy -> measurement [cx, cy, area, aspect w/h] (column vector)."""
    w, h = box[2] - box[0], box[3] - box[1]
    return np.array([[(box[0] + box[2]) / 2], [(box[1] + box[3]) / 2], [w * h], [w / h]])


def _x_to_box(x: np.ndarray) -> np.ndarray:
    """Kalman state -> xyxy, with area and aspect clamped positive."""
    s = max(float(x[2, 0]), MIN_SIDE * MIN_SIDE)
    r = min(max(float(x[3, 0]), 0.1), 10.0)  # faces are never 10x wider than tall
    w = np.sqrt(s * r)
    h = s / w
    cx, cy = float(x[0, 0]), float(x[1, 0])
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _widen(boxes: np.ndarray, buffer: float) -> np.ndarray:
    """Boxes (N x 4) grown by `buffer` x width / height on each side."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    pad = np.stack([-w, -h, w, h], axis=1) * buffer
    return boxes + pad


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a (N x 4) and b (M x 4), xyxy -> N x M; 0 where undefined."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a, b = a[:, None, :], b[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda t: (t[..., 2] - t[..., 0]) * (t[..., 3] - t[..., 1])  # noqa: E731
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


class Association(NamedTuple):
    """Result of one matching round: (track row, detection column) pairs and what is left on each side."""

    matches: list[tuple[int, int]]
    unmatched_tracks: list[int]
    unmatched_detections: list[int]


def associate(track_boxes: np.ndarray, det_boxes: np.ndarray, threshold: float,
              buffer: float = 0.0) -> Association:
    """One matching round: max-IoU one-to-one assignment of detections to tracks (both N x 4 xyxy),
    keeping only pairs with IoU >= threshold, IoU taken on boxes widened by `buffer` (see `_widen`).

    Pairs below the threshold get a huge cost *before* solving, so the solver first maximises
    the number of acceptable pairs instead of trading one good pair for two poor ones. Pure: it
    only looks at the boxes.

    Example:
        >>> t = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float)
        >>> d = np.array([[1, 0, 11, 10], [200, 200, 210, 210]], float)
        >>> associate(t, d, 0.3)
        Association(matches=[(0, 0)], unmatched_tracks=[1], unmatched_detections=[1])
    """
    iou = iou_matrix(_widen(track_boxes, buffer), _widen(det_boxes, buffer))
    matches: list[tuple[int, int]] = []
    if iou.size:
        cost = np.where(iou >= threshold, 1.0 - iou, _NO_MATCH)
        rows, cols = linear_sum_assignment(cost)
        matches = [(int(r), int(c)) for r, c in zip(rows, cols) if iou[r, c] >= threshold]
    matched_t, matched_d = {r for r, _ in matches}, {c for _, c in matches}
    return Association(matches, [r for r in range(len(track_boxes)) if r not in matched_t],
                       [c for c in range(len(det_boxes)) if c not in matched_d])


class _Track:
    """One face track: a 7-state constant-velocity Kalman filter on [cx, cy, s, r, vx, vy, vs].

    Noise is set relative to the face size each step (a 20 px and a 200 px face jitter by the
    same fraction of their size, not by the same number of pixels)."""

    def __init__(self, track_id: int, det: Detection, box: np.ndarray, frame_index: int):
        kf = KalmanFilter(dim_x=7, dim_z=4)
        kf.F = np.eye(7)
        kf.F[0, 4] = kf.F[1, 5] = kf.F[2, 6] = 1.0  # dt = one video frame
        kf.H = np.eye(4, 7)
        kf.x[:4] = _box_to_z(box)
        side = self._side(kf.x)
        s = float(kf.x[2, 0])
        # Position/size are measured; velocities are unknown at birth, hence the wide prior.
        kf.P = np.diag([(0.1 * side) ** 2, (0.1 * side) ** 2, (0.2 * s) ** 2, 0.1 ** 2,
                        (0.5 * side) ** 2, (0.5 * side) ** 2, (0.2 * s) ** 2])
        self.kf = kf
        self.track_id = track_id
        self.hits = 1  # consecutive matched detection frames
        self.matched = 1  # matched detection frames in all
        self.first_frame = self.last_frame = frame_index  # first / last frame with a matched detection
        self.confirmed = False
        self.frames_since_update = 0  # video frames
        self.missed = False  # unmatched on the latest detection frame
        self.detection: Detection | None = det
        self.last_box = box  # the last observed (not predicted) box, for recovery after occlusion

    @staticmethod
    def _side(x: np.ndarray) -> float:
        return float(np.sqrt(max(float(x[2, 0]), MIN_SIDE * MIN_SIDE)))

    @staticmethod
    def _stop_shrinking(x: np.ndarray) -> None:
        if x[2, 0] + x[6, 0] <= MIN_SIDE * MIN_SIDE:  # shrinking through zero area: stop
            x[6, 0] = 0.0

    def box_after(self, steps: int) -> np.ndarray:
        """The box the filter expects `steps` frames on (its predicted mean), the filter unchanged."""
        x = self.kf.x.copy()
        for _ in range(steps):
            self._stop_shrinking(x)
            x = self.kf.F @ x
        return _x_to_box(x)

    def predict(self, steps: int) -> None:
        for _ in range(steps):
            x = self.kf.x
            self._stop_shrinking(x)
            side, s = self._side(x), max(float(x[2, 0]), 1.0)
            q = np.diag([(0.02 * side) ** 2, (0.02 * side) ** 2, (0.02 * s) ** 2, 1e-4,
                         (0.01 * side) ** 2, (0.01 * side) ** 2, (0.01 * s) ** 2])
            self.kf.predict(Q=q)
        self.frames_since_update += steps
        self.detection = None

    def correct(self, det: Detection, box: np.ndarray, frame_index: int) -> None:
        z = _box_to_z(box)
        side, s = self._side(z), float(z[2, 0])
        r = np.diag([(0.05 * side) ** 2, (0.05 * side) ** 2, (0.1 * s) ** 2, 0.05 ** 2])
        self.kf.update(z, R=r)
        self.hits += 1
        self.matched += 1
        self.last_frame = frame_index
        self.frames_since_update = 0
        self.missed = False
        self.detection = det
        self.last_box = box

    @property
    def box(self) -> np.ndarray:
        return _x_to_box(self.kf.x)


class SortTracker:
    """Multi-face tracker. See the module docstring for the algorithm and the API contract.

    update(frame_index, detections) -> list[TrackUpdate]: a detection frame (None = no detection).
    predict(frame_index) -> list[TrackUpdate]: a frame without detection.
    expected_boxes(frame_index) -> N x 4: where the live tracks are expected on a coming frame (no update).
    pop_ended() -> list[TrackEnd]: the tracks that ended since the last call.
    finish(reason="stream_end"): the input has ended; every live track ends (reported by the next
    `pop_ended`). `dropped` counts the detections that reached no track, by reason.

    Every update/predict returns one TrackUpdate per live track (TENTATIVE, CONFIRMED or LOST),
    ordered by track id; `detection` is the Detection matched on this frame (None when predicted
    only) and `box` the filtered box. Frame indices must increase; gaps are fine (tracks are
    predicted through them). Track ids start at `first_id` (1; a camera's tracker that takes over from
one that died starts above the ids already written) and are never reused by this tracker. A track
    that leaves the live list is reported exactly once by `pop_ended`.
    """

    def __init__(self, config: TrackerConfig | None = None, first_id: int = 1) -> None:
        self.config = config or TrackerConfig()
        self._tracks: list[_Track] = []
        self._ended: list[TrackEnd] = []
        self._next_id = first_id
        self._frame: int | None = None
        # Detections that reached no track, by reason: "invalid_box" (non-finite), "below_score"
        # (< low_thresh), "low_score_no_track" (< high_thresh and no confirmed track to keep alive).
        self.dropped: Counter[str] = Counter()

    def predict(self, frame_index: int) -> list[TrackUpdate]:
        """Advance all tracks to `frame_index` without a detector result."""
        return self.update(frame_index, None)

    def update(self, frame_index: int, detections: Sequence[Detection] | None) -> list[TrackUpdate]:
        """Process one frame; `detections=None` means the detector did not run on it."""
        self._advance(frame_index)
        if detections is not None:
            self._associate(list(detections))
        return self._emit(frame_index)

    def expected_boxes(self, frame_index: int) -> np.ndarray:
        """Where the live tracks' faces are expected on `frame_index` (after the last frame seen), as
        N x 4 xyxy in track id order, without advancing the tracker: for a detector that looks only
        there (detect.roi)."""
        steps = 1 if self._frame is None else min(frame_index - self._frame, self.config.max_age_frames + 1)
        boxes = [t.box_after(max(steps, 0)) for t in sorted(self._tracks, key=lambda t: t.track_id)]
        return np.array(boxes, dtype=float).reshape(-1, 4)

    def pop_ended(self) -> list[TrackEnd]:
        """The tracks that ended since the last call, in the order they ended; each is reported once."""
        ended, self._ended = self._ended, []
        return ended

    def finish(self, reason: str = "stream_end") -> None:
        """End every live track: the input is over (or, reason "photo", the photo is: see TrackEnd)."""
        for t in sorted(self._tracks, key=lambda t: t.track_id):
            self._end(t, reason)
        self._tracks = []

    def _end(self, t: _Track, reason: str) -> None:
        self._ended.append(TrackEnd(track_id=t.track_id, frame_index=self._frame, first_frame=t.first_frame,
                                    last_frame=t.last_frame, faces_seen=t.matched, reason=reason))

    def _advance(self, frame_index: int) -> None:
        if self._frame is not None and frame_index <= self._frame:
            raise ValueError(f"frame_index must increase: got {frame_index} after {self._frame}")
        steps = 1 if self._frame is None else frame_index - self._frame
        self._frame = frame_index
        # A long gap kills every track anyway; do not loop over thousands of predictions.
        steps = min(steps, self.config.max_age_frames + 1)
        for t in self._tracks:
            t.predict(steps)
        limit = self.config.max_age_frames
        for t in self._tracks:
            if t.frames_since_update > limit:
                self._end(t, "lost")
        self._tracks = [t for t in self._tracks if t.frames_since_update <= limit]

    def _associate(self, detections: list[Detection]) -> None:
        cfg, frame = self.config, self._frame
        dets, boxes = [], []
        for d in detections:
            if not np.all(np.isfinite(d.box[:4])) or not np.isfinite(d.score):
                log.warning("tracker: dropping a detection with a non-finite box/score")
                self.dropped["invalid_box"] += 1
                continue
            dets.append(d)
            boxes.append(_sanitize(np.asarray(d.box, dtype=float)))
        det_boxes = np.array(boxes).reshape(-1, 4)
        high = [i for i, d in enumerate(dets) if d.score >= cfg.high_thresh]
        low = [i for i, d in enumerate(dets) if cfg.low_thresh <= d.score < cfg.high_thresh]
        self.dropped["below_score"] += len(dets) - len(high) - len(low)
        tracks = self._tracks
        # Both taken before any correction: every round compares against the same predictions.
        predicted = np.array([t.box for t in tracks]).reshape(-1, 4)
        observed = np.array([t.last_box for t in tracks]).reshape(-1, 4)
        unmatched = list(range(len(tracks)))

        def match(candidates: list[int], track_boxes: np.ndarray, pool: list[int], threshold: float,
                  buffer: float = 0.0) -> list[int]:
            """One round: `pool` detections against the `candidates` tracks; returns the detections left."""
            result = associate(track_boxes[candidates], det_boxes[pool], threshold, buffer)
            for r, k in result.matches:
                tracks[candidates[r]].correct(dets[pool[k]], det_boxes[pool[k]], frame)
                unmatched.remove(candidates[r])
            return [pool[k] for k in result.unmatched_detections]

        # Pass 1: high-score detections against every live track.
        free = match(list(unmatched), predicted, high, cfg.iou_threshold)
        # Rescue round on buffered IoU: only leftovers, so precise matches always win.
        free = match(list(unmatched), predicted, free, cfg.iou_threshold, cfg.buffer)
        # Recovery round (OC-SORT's observation-centric idea): a face that reappears after an occlusion is
        # usually where it was last seen, while the Kalman prediction has coasted away on its old velocity.
        free = match([ti for ti in unmatched if tracks[ti].missed], observed, free, cfg.iou_threshold, cfg.buffer)
        # Pass 2 (BYTE): low-score detections against confirmed tracks left over.
        left = match([ti for ti in unmatched if tracks[ti].confirmed], predicted, low, cfg.low_iou_threshold)
        self.dropped["low_score_no_track"] += len(left)

        # Bookkeeping for tracks that got (or missed) a detection on this detection frame.
        kept = []
        for ti, t in enumerate(tracks):
            if ti not in unmatched:
                t.confirmed = t.confirmed or t.hits >= cfg.min_hits
                kept.append(t)
            elif t.confirmed:
                t.missed = True
                t.hits = 0
                kept.append(t)
            else:  # an unconfirmed track that missed ends (its id is not reused)
                self._end(t, "unconfirmed")

        for i in free:  # high detections still unmatched start new tracks
            t = _Track(self._next_id, dets[i], det_boxes[i], frame)
            t.confirmed = cfg.min_hits <= 1
            self._next_id += 1
            kept.append(t)
        self._tracks = kept

    def _emit(self, frame_index: int) -> list[TrackUpdate]:
        out = []
        for t in sorted(self._tracks, key=lambda t: t.track_id):
            if not t.confirmed:
                state = TrackState.TENTATIVE
            elif t.missed:
                state = TrackState.LOST
            else:
                state = TrackState.CONFIRMED
            out.append(TrackUpdate(track_id=t.track_id, frame_index=frame_index,
                                   detection=t.detection, state=state, box=t.box))
        return out

    @property
    def num_tracks(self) -> int:
        """Live tracks (any state)."""
        return len(self._tracks)
