"""Alignment: transform recovery, native crop size, recognizer window, degenerate input, quality."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.align import (ARCFACE_112, TEMPLATE, Aligner, UnalignableFaceError, align_face,
                            estimate_transform, face_quality, frontalness, recognizer_window,
                            to_recognizer)
from pipeline.records import Detection, Frame, TrackState, TrackUpdate


def similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    r = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([r, np.array(shift)[:, None]])


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def invert(m: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(m)


def det_for(landmarks: np.ndarray) -> Detection:
    lo, hi = landmarks.min(0), landmarks.max(0)
    return Detection(np.r_[lo, hi].astype(float), 0.99, landmarks)


def face_at(side: float, origin=(200.0, 120.0), angle: float = 0.0) -> Detection:
    """A detection whose canonical frame is `side` frame pixels, rotated by `angle`."""
    return det_for(apply(similarity(angle, side, origin), TEMPLATE.points))


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)


def test_estimate_transform_recovers_inverse_similarity():
    size = 100
    known = similarity(20.0, 0.3, (310.0, 145.0))  # crop pixels -> frame pixels
    landmarks = apply(known, TEMPLATE.for_size(size))
    m = estimate_transform(landmarks, size)
    assert np.abs(m - invert(known)).max() < 1e-3
    assert np.abs(apply(m, landmarks) - TEMPLATE.for_size(size)).max() < 1e-6


def test_one_bad_landmark_is_rejected():
    size = 80
    known = similarity(-10.0, 1.2, (50.0, 40.0))
    landmarks = apply(known, TEMPLATE.for_size(size))
    landmarks[4] += [30.0, -25.0]  # a wildly wrong mouth corner
    m = estimate_transform(landmarks, size)
    good = apply(m, landmarks[:4]) - TEMPLATE.for_size(size)[:4]
    assert np.abs(good).max() < 1e-3


def test_crop_is_native_size_and_square(frame):
    small = align_face(frame, face_at(40), track_id=1, frame_index=0)
    big = align_face(frame, face_at(80, angle=15), track_id=1, frame_index=0)
    assert small.crop.shape == (40, 40, 3) and small.crop_size == 40
    assert big.crop.shape == (80, 80, 3) and big.crop_size == 80
    for f in (small, big):  # the warp neither up- nor down-samples
        assert abs(np.sqrt(abs(np.linalg.det(f.transform[:, :2]))) - 1.0) < 0.02
    odd = align_face(frame, face_at(37.4), track_id=1, frame_index=0)
    assert odd.crop.shape == (37, 37, 3)


def test_tiny_face_crop_respects_min_size(frame):
    # A 14 px face box: the canonical frame is ~25 px, still above 8.
    lm = apply(similarity(0, 14 / 0.55, (300.0, 300.0)), TEMPLATE.points)
    f = align_face(frame, det_for(lm), 1, 0)
    assert 8 <= f.crop_size <= 30 and f.crop.shape[:2] == (f.crop_size, f.crop_size)
    tiny = align_face(frame, face_at(4), 1, 0)
    assert tiny.crop.shape == (8, 8, 3)


def test_max_size_shrinks_consistently(frame):
    det = face_at(120)
    full = align_face(frame, det, 1, 0)
    capped = align_face(frame, det, 1, 0, max_size=60)
    assert capped.crop.shape == (60, 60, 3)
    # The recorded transform still maps the landmarks onto the template of the capped size.
    assert np.abs(apply(capped.transform, det.landmarks) - TEMPLATE.for_size(60)).max() < 1e-6
    ref = cv2.resize(full.crop, (60, 60), interpolation=cv2.INTER_AREA)
    assert np.abs(ref.astype(int) - capped.crop.astype(int)).mean() < 1.0


def test_crop_content_matches_transform():
    # A frame already in canonical framing: the crop is the frame itself.
    img = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    f = align_face(Frame(3, 0.12, img), det_for(TEMPLATE.for_size(64)), 7, 3)
    assert np.array_equal(f.crop, img)
    assert (f.track_id, f.frame_index, f.pts_time) == (7, 3, 0.12)


@pytest.mark.parametrize("size", [112, 150, 160])
def test_recognizer_window_maps_template_to_arcface(size):
    m = recognizer_window(size)
    assert np.abs(apply(m, TEMPLATE.for_size(size)) - ARCFACE_112).max() < 0.5


@pytest.mark.parametrize("size", [112, 150, 160])
def test_to_recognizer_puts_landmarks_at_arcface_points(size):
    # Dots drawn at the template points of an SR-sized image land on the ArcFace points.
    img = np.zeros((size, size, 3), np.uint8)
    pts = TEMPLATE.for_size(size)
    for x, y in pts:
        cv2.circle(img, (int(round(x)), int(round(y))), max(2, size // 40), (255, 255, 255), -1)
    out = to_recognizer(img)
    assert out.shape == (112, 112, 3)
    gray = out[..., 0].astype(float)
    for px, py in ARCFACE_112:
        x0, y0 = int(px) - 6, int(py) - 6
        win = gray[y0:y0 + 13, x0:x0 + 13]
        ys, xs = np.mgrid[y0:y0 + 13, x0:x0 + 13]
        c = np.array([(xs * win).sum(), (ys * win).sum()]) / win.sum()
        assert np.abs(c - [px, py]).max() < 1.0


@pytest.mark.parametrize("landmarks", [
    np.full((5, 2), 100.0),
    np.array([[10, 10], [10.1, 10], [10, 10.1], [10, 10], [10.1, 10.1]]),
    np.array([[np.nan, 1], [2, 2], [3, 3], [4, 4], [5, 5]]),
    np.zeros((4, 2)),
])
def test_degenerate_landmarks_raise(landmarks, frame):
    with pytest.raises(ValueError):
        estimate_transform(landmarks, 64)
    with pytest.raises(UnalignableFaceError):
        align_face(frame, Detection(np.array([0, 0, 10, 10.0]), 0.99, landmarks), 1, 0)


def test_aligner_stage_skips_unalignable_and_unconfirmed(frame):
    good, bad = face_at(50), Detection(np.zeros(4), 0.99, np.full((5, 2), 3.0))
    ups = [TrackUpdate(1, 5, good, TrackState.CONFIRMED),
           TrackUpdate(2, 5, bad, TrackState.CONFIRMED),
           TrackUpdate(3, 5, good, TrackState.TENTATIVE),
           TrackUpdate(4, 5, None, TrackState.CONFIRMED)]
    out = Aligner()(Frame(5, 0.2, frame), ups)
    assert [(f.track_id, f.crop_size, f.pts_time) for f in out] == [(1, 50, 0.2)]


def test_frontal_beats_profile():
    frontal = TEMPLATE.for_size(64)
    turned = frontal.copy()
    turned[2, 0] += 12  # nose slides toward the right eye (yaw)
    tilted = frontal.copy()
    tilted[2, 1] += 12  # nose toward the mouth (pitch)
    assert frontalness(frontal) > 0.95
    assert frontalness(turned) < 0.5 * frontalness(frontal)
    assert frontalness(tilted) < frontalness(frontal)
    # Roll does not matter: alignment removes it.
    rolled = apply(similarity(30, 1.0, (5, 5)), frontal)
    assert abs(frontalness(rolled) - frontalness(frontal)) < 1e-9
    crop = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert face_quality(crop, det_for(frontal)) > face_quality(crop, det_for(turned))


def test_blur_and_size_lower_quality():
    from skimage import data

    face = cv2.cvtColor(data.astronaut()[40:200, 150:310], cv2.COLOR_RGB2BGR)
    sharp = cv2.resize(face, (64, 64), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 2.0)
    det = det_for(TEMPLATE.for_size(64))
    q_sharp, q_blur = face_quality(sharp, det), face_quality(blurred, det)
    assert 0.0 <= q_blur < q_sharp <= 1.0
    small = cv2.resize(face, (24, 24), interpolation=cv2.INTER_AREA)
    assert face_quality(small, det_for(TEMPLATE.for_size(24))) < q_sharp
    assert face_quality(np.zeros((0, 0, 3), np.uint8), det) == 0.0
