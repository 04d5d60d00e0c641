"""SortTracker: identity over time, BYTE pass, gating, deletion, stride, degenerate boxes."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.records import Detection, TrackState
from trackers import SortTracker, TrackerConfig, iou_matrix


def face(cx: float, cy: float, side: float = 40.0, score: float = 0.99) -> Detection:
    box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
    return Detection(box=box, score=score, landmarks=np.tile([cx, cy], (5, 1)))


def ids(updates, state: TrackState | None = None) -> list[int]:
    return [u.track_id for u in updates if state is None or u.state == state]


def test_linear_motion_keeps_one_id():
    trk = SortTracker()
    seen = set()
    for f in range(50):
        ups = trk.update(f, [face(100 + 4 * f, 200 + 1.5 * f)])
        assert len(ups) == 1 and ups[0].detection is not None
        seen.add(ups[0].track_id)
    assert seen == {1}
    assert ups[0].state == TrackState.CONFIRMED
    # The filtered box follows the face.
    assert np.allclose(ups[0].box, face(100 + 4 * 49, 200 + 1.5 * 49).box, atol=2.0)


def test_crossing_faces_keep_their_ids():
    trk = SortTracker()
    tracks: dict[int, list[float]] = {}
    for f in range(40):
        a = face(100 + 8 * f, 200)  # left to right
        b = face(420 - 8 * f, 212)  # right to left, slightly lower; they cross at f = 20
        for u in trk.update(f, [a, b]):
            if u.detection is not None:
                tracks.setdefault(u.track_id, []).append(float(u.detection.box[0]))
    assert set(tracks) == {1, 2}
    # Each id keeps moving in one direction: no swap at the crossing.
    for xs in tracks.values():
        steps = np.sign(np.diff(xs))
        assert np.all(steps == steps[0])


def test_track_removed_after_max_age_and_id_not_reused():
    trk = SortTracker(TrackerConfig(min_hits=1, max_age=5))
    for f in range(5):
        assert ids(trk.update(f, [face(100, 100)])) == [1]
    # Gone for max_age detection frames: LOST but kept.
    for f in range(5, 10):
        ups = trk.update(f, [])
        assert [(u.track_id, u.state) for u in ups] == [(1, TrackState.LOST)]
        assert ups[0].detection is None
    assert ids(trk.update(10, [])) == []  # one more miss: deleted
    # The same face comes back at the same place: a new id.
    assert ids(trk.update(11, [face(100, 100)])) == [2]


def test_lost_track_recovers_within_max_age():
    trk = SortTracker(TrackerConfig(min_hits=1, max_age=5))
    for f in range(5):
        trk.update(f, [face(100, 100)])
    for f in range(5, 8):
        trk.update(f, [])
    ups = trk.update(8, [face(100, 100)])
    assert [(u.track_id, u.state) for u in ups] == [(1, TrackState.CONFIRMED)]


def test_low_score_keeps_track_but_never_starts_one():
    cfg = TrackerConfig(min_hits=2, max_age=2)
    trk = SortTracker(cfg)
    for f in range(3):
        trk.update(f, [face(100 + 2 * f, 100)])
    # 10 frames of low-score detections only: the track stays CONFIRMED with the detection.
    for f in range(3, 13):
        ups = trk.update(f, [face(100 + 2 * f, 100, score=0.8)])
        assert [(u.track_id, u.state) for u in ups] == [(1, TrackState.CONFIRMED)]
        assert ups[0].detection is not None and ups[0].detection.score == 0.8
    # A low-score detection far from any track starts nothing...
    assert ids(trk.update(13, [face(100 + 26, 100), face(500, 500, score=0.8)])) == [1]
    # ...and one below low_thresh is ignored even on top of the track.
    ups = trk.update(14, [face(100 + 28, 100, score=0.5)])
    assert ups[0].state == TrackState.LOST and ups[0].detection is None


def test_low_score_does_not_feed_tentative_tracks():
    trk = SortTracker(TrackerConfig(min_hits=3))
    assert ids(trk.update(0, [face(100, 100)]), TrackState.TENTATIVE) == [1]
    # The BYTE pass only serves confirmed tracks: the tentative one misses and is dropped.
    assert ids(trk.update(1, [face(100, 100, score=0.8)])) == []


def test_min_hits_gating():
    trk = SortTracker(TrackerConfig(min_hits=3))
    states = [trk.update(f, [face(100 + f, 100)])[0].state for f in range(4)]
    assert states == [TrackState.TENTATIVE, TrackState.TENTATIVE,
                      TrackState.CONFIRMED, TrackState.CONFIRMED]
    # A tentative track that misses one detection frame is dropped; its id is not reused.
    trk2 = SortTracker(TrackerConfig(min_hits=3))
    trk2.update(0, [face(100, 100)])
    assert trk2.update(1, []) == []
    assert ids(trk2.update(2, [face(100, 100)])) == [2]


def test_stride_with_predict_keeps_id():
    stride = 3
    trk = SortTracker(TrackerConfig(stride=stride, min_hits=2, max_age=2))
    seen = set()
    for f in range(60):
        if f % stride == 0:
            ups = trk.update(f, [face(100 + 5 * f, 150 + 2 * f, side=30)])
            assert len(ups) == 1 and ups[0].detection is not None
        else:
            ups = trk.predict(f)
            assert len(ups) == 1 and ups[0].detection is None
            # Once the velocity is learnt, the box coasts along the motion between detections.
            assert f < 10 or abs((ups[0].box[0] + ups[0].box[2]) / 2 - (100 + 5 * f)) < 10
        seen.add(ups[0].track_id)
    assert seen == {1} and ups[0].state == TrackState.CONFIRMED


def test_stride_scales_max_age():
    # max_age=2 detection frames at stride 3 = 6 video frames without a match.
    trk = SortTracker(TrackerConfig(stride=3, min_hits=1, max_age=2))
    trk.update(0, [face(100, 100)])
    assert ids(trk.predict(1)) == ids(trk.predict(2)) == [1]
    assert [u.state for u in trk.update(3, [])] == [TrackState.LOST]
    assert ids(trk.predict(4)) == ids(trk.predict(5)) == [1]
    assert ids(trk.update(6, [])) == [1]  # 6 video frames without a match: still here
    assert ids(trk.predict(7)) == []  # 7 > 6: deleted


def test_predict_equals_update_none_and_frames_must_increase():
    trk = SortTracker(TrackerConfig(min_hits=1))
    trk.update(0, [face(100, 100)])
    assert ids(trk.update(1, None)) == [1]
    with pytest.raises(ValueError):
        trk.update(1, [])


def test_zero_area_boxes_no_nan():
    trk = SortTracker(TrackerConfig(min_hits=1))
    zero = Detection(np.array([50.0, 50.0, 50.0, 50.0]), 0.99, np.zeros((5, 2)))
    flat = Detection(np.array([50.0, 50.0, 80.0, 50.0]), 0.99, np.zeros((5, 2)))
    for f, det in enumerate([zero, zero, flat, zero]):
        for u in trk.update(f, [det]):
            assert np.all(np.isfinite(u.box))
    for f in range(4, 40):  # coasting a collapsed track stays finite too
        for u in trk.predict(f):
            assert np.all(np.isfinite(u.box))
    nan = Detection(np.array([np.nan, 0, 10, 10]), 0.99, np.zeros((5, 2)))
    for u in trk.update(40, [nan]):
        assert np.all(np.isfinite(u.box))


def test_iou_matrix_and_config_validation():
    a = np.array([[0, 0, 10, 10], [5, 5, 5, 5]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], float)
    m = iou_matrix(a, b)
    assert np.allclose(m, [[1.0, 1 / 3], [0.0, 0.0]])
    assert iou_matrix(a, np.zeros((0, 4))).shape == (2, 0)
    with pytest.raises(ConfigError):
        TrackerConfig(stride=0)
    with pytest.raises(ConfigError):
        TrackerConfig(low_thresh=0.99, high_thresh=0.9)


def test_face_reappearing_where_it_was_last_seen_keeps_its_id():
    """Someone walks down, stops, is occluded for 25 frames, and reappears at the same place: the
    prediction has coasted away on the old velocity, the last observed box has not."""
    trk = SortTracker()
    for f in range(20):
        trk.update(f, [face(300, 100 + 3 * f)])  # moving down 3 px / frame (side 40)
    for f in range(20, 45):
        trk.update(f, [])  # occluded: the detector runs and sees nothing
    ups = trk.update(45, [face(300, 157)])
    assert ids(ups) == [1] and ups[0].detection is not None
