"""SortTracker: identity over time, BYTE pass, gating, deletion and track ends, stride, degenerate boxes,
and the association round as a pure function."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.records import Detection, TrackEnd, TrackState
from trackers import SortTracker, TrackerConfig, associate, iou_matrix


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


def test_expected_boxes_are_the_next_predictions_and_leave_the_tracker_unchanged():
    trk = SortTracker(TrackerConfig(min_hits=1))
    assert trk.expected_boxes(0).shape == (0, 4)
    for f in range(20):
        trk.update(f, [face(100 + 5 * f, 150 + 2 * f, side=30), face(400, 300, side=50)])
    expected = trk.expected_boxes(23)
    assert expected.shape == (2, 4)
    np.testing.assert_allclose(expected[0], face(100 + 5 * 23, 150 + 2 * 23, side=30).box, atol=2.0)  # moved on
    np.testing.assert_allclose(expected[1], face(400, 300, side=50).box, atol=1.0)
    np.testing.assert_allclose(trk.expected_boxes(23), expected)  # asking twice: the same answer
    ups = trk.predict(23)
    np.testing.assert_allclose([u.box for u in ups], expected, atol=1e-9)  # what predict then gives


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


# -- track ends -----------------------------------------------------------------------------------
def test_track_end_is_emitted_once_after_max_age():
    trk = SortTracker(TrackerConfig(min_hits=2, max_age=3, stride=2))
    for f in range(0, 10, 2):  # detected on frames 0, 2, 4, 6, 8
        trk.update(f, [face(100, 100)])
        trk.predict(f + 1)
        assert trk.pop_ended() == []
    ended = []
    for f in range(10, 30):  # the face is gone; the detector keeps running on even frames
        ups = trk.update(f, []) if f % 2 == 0 else trk.predict(f)
        for e in trk.pop_ended():
            ended.append(e)
            assert ids(ups) == [], "an ended track is no longer live"
    # max_age = 3 detection frames = 6 video frames without a match after frame 8: ends on frame 15
    assert ended == [TrackEnd(track_id=1, frame_index=15, first_frame=0, last_frame=8, faces_seen=5, reason="lost")]
    trk.finish()
    assert trk.pop_ended() == []  # already ended: not again


def test_tentative_track_ends_unconfirmed_and_live_tracks_end_at_finish():
    trk = SortTracker(TrackerConfig(min_hits=3))
    trk.update(0, [face(100, 100), face(400, 100)])
    trk.update(1, [face(100, 100)])  # the face at x=400 was a one-frame blip
    assert [(e.track_id, e.reason, e.first_frame, e.last_frame) for e in trk.pop_ended()] == [(2, "unconfirmed", 0, 0)]
    trk.update(2, [face(100, 100)])
    trk.finish()
    assert trk.pop_ended() == [TrackEnd(1, frame_index=2, first_frame=0, last_frame=2, faces_seen=3,
                                        reason="stream_end")]
    assert trk.num_tracks == 0 and trk.pop_ended() == []
    trk.finish()
    assert trk.pop_ended() == []


def test_every_track_ends_exactly_once():
    rng = np.random.default_rng(0)
    trk = SortTracker(TrackerConfig(min_hits=2, max_age=2))
    seen: set[int] = set()
    ended: list[int] = []
    for f in range(200):  # faces blinking in and out at 4 places, with noise
        dets = [face(x + rng.normal(0, 2), 100, score=float(rng.choice([0.99, 0.8])))
                for x in (100, 250, 400, 550) if rng.random() < 0.6]
        ups = trk.update(f, dets)
        gone = [e.track_id for e in trk.pop_ended()]
        assert not set(gone) & set(ids(ups)), "an ended track never comes back"
        seen.update(ids(ups))
        ended.extend(gone)
    trk.finish()
    ended.extend(e.track_id for e in trk.pop_ended())
    assert len(ended) == len(set(ended)) and seen <= set(ended) and len(ended) > 10


# -- association ----------------------------------------------------------------------------------
def test_associate_matches_and_leaves_the_rest_on_both_sides():
    tracks = np.array([[0, 0, 10, 10], [100, 100, 110, 110], [300, 0, 310, 10]], float)
    dets = np.array([[101, 100, 111, 110], [1, 0, 11, 10], [500, 500, 510, 510]], float)
    result = associate(tracks, dets, 0.3)
    assert sorted(result.matches) == [(0, 1), (1, 0)]
    assert result.unmatched_tracks == [2] and result.unmatched_detections == [2]
    nothing = associate(np.zeros((0, 4)), dets, 0.3)
    assert nothing.matches == [] and nothing.unmatched_tracks == [] and nothing.unmatched_detections == [0, 1, 2]


def test_associate_gates_on_the_threshold_and_buffer_widens():
    track, det = np.array([[0, 0, 10, 10]], float), np.array([[8, 0, 18, 10]], float)  # IoU 2/18
    assert associate(track, det, 0.3) == ([], [0], [0])  # the only pair, but below the threshold
    assert associate(track, det, 0.1).matches == [(0, 0)]
    assert associate(track, det, 0.3, buffer=0.5).matches == [(0, 0)]  # widened boxes overlap enough


def test_associate_prefers_more_acceptable_pairs_over_one_best_pair():
    tracks = np.array([[0, 0, 10, 10], [6, 0, 16, 10]], float)
    dets = np.array([[1, 0, 11, 10], [-4, 0, 6, 10]], float)
    iou = iou_matrix(tracks, dets)
    assert iou[0, 0] > 0.8 and iou[1, 0] > 0.3 and iou[0, 1] > 0.4 and iou[1, 1] == 0  # the premise
    # Taking the best pair (0, 0) would leave track 1 without a match; both tracks can be matched.
    assert sorted(associate(tracks, dets, 0.3).matches) == [(0, 1), (1, 0)]
