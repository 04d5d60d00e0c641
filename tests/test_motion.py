"""Detecting where the picture changed (detect.motion): the mask, the regions, the detector on them, a run."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from pipeline.config import load_config
from pipeline.demo import make_demo_clip
from pipeline.detect import MTCNNDetector
from pipeline.motion import REGION_COST, MotionMask, grow, merge_regions, worth_searching
from pipeline.runner import Runner

ROOT = Path(__file__).resolve().parents[1]


def scene(rng: np.random.Generator, noise: float = 0.0, shape=(360, 640)) -> np.ndarray:
    """A still scene (smooth gradients) with the camera's noise of sigma `noise`."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    still = np.stack([60 + 40 * xx / shape[1], 70 + 30 * yy / shape[0], 80 + 0 * xx], -1)
    return (still + rng.normal(0, noise, still.shape)).clip(0, 255).astype(np.uint8)


def test_a_still_scene_has_no_motion_and_a_moved_object_is_boxed():
    rng = np.random.default_rng(0)
    motion = MotionMask(threshold=12.0)
    assert motion.update(scene(rng, 3.0)).shape == (0, 4)  # the first frame only sets the background
    for _ in range(5):
        assert motion.update(scene(rng, 3.0)).shape == (0, 4), "the noise of a still scene is no motion"
    moved = scene(rng, 3.0)
    moved[100:160, 300:340] = 230  # a 40 x 60 px object came in
    [box] = motion.update(moved)
    cell = 640 / 320  # the mask is 320 px wide: a cell is 2 frame px
    assert np.allclose(box, [300, 100, 340, 160], atol=cell)


def test_the_threshold_rises_with_the_cameras_noise():
    """Noise of sigma 30 at full resolution is about 15 at the mask's half resolution: moved without the
    camera's noise given, still with it (3 sigma, scaled to the mask)."""
    frames = [scene(np.random.default_rng(k), 30.0) for k in range(3)]
    blind, aware = MotionMask(threshold=12.0), MotionMask(threshold=12.0)
    for f in frames[:2]:
        blind.update(f)
        aware.update(f, noise=30.0)
    assert len(blind.update(frames[2])) > 0
    assert aware.update(frames[2], noise=30.0).shape == (0, 4)


def test_a_frame_of_another_size_starts_a_new_background():
    rng = np.random.default_rng(1)
    motion = MotionMask()
    motion.update(scene(rng))
    assert motion.update(scene(rng, shape=(240, 320))).shape == (0, 4)  # the new size's first frame
    assert motion.update(scene(rng, shape=(240, 320))).shape == (0, 4)
    moved = scene(rng, shape=(240, 320))
    moved[50:90, 100:130] = 230
    assert np.allclose(motion.update(moved), [[100, 50, 130, 90]])  # compared with the new background


def test_changes_in_ignored_parts_are_not_motion():
    """A burned-in clock in the top-left corner ticks; a person moves elsewhere: only the person is motion."""
    rng = np.random.default_rng(2)
    motion = MotionMask(threshold=12.0, ignore=((0.0, 0.0, 0.25, 0.1),))
    motion.update(scene(rng))
    frame = scene(rng)
    frame[5:30, 10:150] = 255  # the clock's digits: inside the ignored box (160 x 36 px)
    frame[200:260, 400:440] = 230
    [box] = motion.update(frame)
    assert np.allclose(box, [400, 200, 440, 260], atol=2)
    motion = MotionMask(threshold=12.0, ignore=((0.0, 0.0, 0.25, 0.1),))
    motion.update(scene(rng))
    edge = scene(rng)
    edge[5:30, 150:170] = 255  # a change across the box's edge (x = 160): the part outside it is motion
    [box] = motion.update(edge)
    assert box[0] >= 158 and box[2] == pytest.approx(170, abs=2)


def test_regions_are_padded_cut_to_the_frame_and_merged():
    boxes = np.array([[10, 10, 30, 30], [25, 25, 60, 60], [500, 500, 510, 510], [580, 40, 590, 50]])
    grown = grow(boxes, pad=0.25, min_side=24)
    assert np.allclose(grown[0], [5, 5, 35, 35])  # 20 px box: 5 px on every side
    assert np.allclose(grown[3], [573, 33, 597, 57])  # 10 px box: grown to 24 px about its centre
    regions = merge_regions(grown, height=100, width=600)
    # the first two overlap: one region around both; the third lies outside the frame; the fourth is cut
    assert regions.tolist() == [[5, 5, 69, 69], [573, 33, 597, 57]]
    assert merge_regions(np.zeros((0, 4)), 100, 600).shape == (0, 4)
    # merging can make a region overlap another one it did not before: merged until none overlap
    chain = merge_regions(np.array([[0, 0, 10, 10], [20, 0, 30, 10], [5, 5, 25, 8]]), 50, 50)
    assert chain.tolist() == [[0, 0, 30, 10]]


def test_parts_are_searched_only_when_cheaper_than_the_whole_frame():
    """Each part costs its pixels and REGION_COST more (its own pyramid); on a frame the detector shrinks
    (scale < 1) that fixed cost is more of the frame's pixels."""
    small = np.array([[0, 0, 40, 40]])
    assert worth_searching(small, 720, 1280, 1.0, 0.5)
    assert worth_searching(np.zeros((0, 4), int), 360, 640, 1.0, 0.5)  # nothing changed, no tracks
    many = np.array([[x, 0, x + 40, 40] for x in range(0, 640, 50)])  # 13 parts of a 640 x 360 frame
    assert 13 * 40 * 40 < 0.5 * 360 * 640 < 13 * (40 * 40 + REGION_COST)
    assert not worth_searching(many, 360, 640, 1.0, 0.5)
    big = np.array([[0, 0, 640, 200]])  # more than half of the frame
    assert not worth_searching(big, 360, 640, 1.0, 0.5)
    assert worth_searching(np.array([[0, 0, 100, 100]]), 200, 400, 1.0, 0.5)
    assert not worth_searching(np.array([[0, 0, 100, 100]]), 200, 400, 0.5, 0.5)


@pytest.fixture(scope="module")
def detector():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield MTCNNDetector(device="cpu", min_face_size=20)
    torch.set_num_threads(threads)


def test_detecting_a_region_finds_the_face_the_full_frame_detection_finds(detector):
    frame = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)  # 512 x 512, one face
    [full] = detector.detect([frame])[0][:1]
    region = merge_regions(grow(full.box[None], pad=0.5, min_side=60), *frame.shape[:2])
    assert region[0, 2] - region[0, 0] < 0.5 * frame.shape[1]  # a small part of the frame
    [found] = detector.detect_regions(frame, region)
    # the same face; P-Net's windows lie on the part's grid, not the frame's: within 3 % of the face's size
    side = full.box[2] - full.box[0]
    assert np.allclose(found.box, full.box, atol=0.03 * side)
    assert np.allclose(found.landmarks, full.landmarks, atol=0.03 * side)
    assert found.score == pytest.approx(full.score, abs=0.01)
    # a part of the frame without the face: nothing; no parts: nothing
    assert detector.detect_regions(frame, np.array([[400, 400, 500, 500]])) == []
    assert detector.detect_regions(frame, np.zeros((0, 4), int)) == []


def test_parts_of_different_sizes_find_each_face_once(detector):
    """Two faces of different sizes, a part around each (one pyramid per part size): the faces a whole-frame
    detection finds, each once; a third part overlapping the first one does not find the first face twice."""
    face = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    frame = np.full((512, 1024, 3), 90, np.uint8)
    frame[:, :512] = face
    frame[256:, 640:896] = cv2.resize(face, (256, 256), interpolation=cv2.INTER_AREA)
    full = detector.detect([frame])[0]
    assert len(full) == 2
    regions = merge_regions(grow(np.array([d.box for d in full]), pad=0.5, min_side=60), *frame.shape[:2])
    found = detector.detect_regions(frame, np.concatenate([regions, [[250, 40, 300, 90]]]))
    assert len(found) == 2
    for want in full:  # a 42 px face: P-Net's windows 7 px apart, on the part's grid not the frame's
        side = want.box[2] - want.box[0]
        assert min(np.abs(f.box - want.box).max() for f in found) <= 0.06 * side


def test_regions_of_a_downscaled_frame_find_what_its_full_detection_finds():
    """detect.max_side shrinks large frames before detection; the regions are searched on the same grid,
    so they find the same faces (none smaller than a full detection would)."""
    detector = MTCNNDetector(device="cpu", min_face_size=20, max_side=400)
    frame = cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), (800, 800))
    [full] = detector.detect([frame])[0][:1]
    region = merge_regions(grow(full.box[None], pad=0.5, min_side=60), *frame.shape[:2])
    [found] = detector.detect_regions(frame, region)
    assert np.allclose(found.box, full.box, atol=0.03 * (full.box[2] - full.box[0]))


@pytest.fixture(scope="module")
def demo_clip(tmp_path_factory):
    return make_demo_clip(tmp_path_factory.mktemp("clip") / "demo.mp4", n_frames=30)


def test_a_run_with_motion_finds_the_same_face_for_less_detection(demo_clip, tmp_path):
    """The demo clip: a face moving over a still background. With detect.motion the detector searches the
    moving face's part of each frame (and the whole frame every 10th detection here): the same track and
    about the same faces, for a fraction of P-Net's pixels."""
    runs, pixels = {}, {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for motion in (False, True):
            cfg = load_config(ROOT / "configs/default.yaml", [
                f"detect.motion={str(motion).lower()}", "detect.motion_full_every=10", "detect.device=cpu",
                "enhance.method=bicubic", "select.every_k=1", "runtime.progress=false", "output.report=false"])
            runner = Runner(cfg, str(demo_clip), tmp_path / f"motion_{motion}")
            runs[motion] = runner.run()
            pixels[motion] = next(iter(runner.cameras.values())).detector.profile.pnet_pixels
    finally:
        torch.set_num_threads(threads)
    plain, moving = runs[False], runs[True]
    assert moving["tracks"] == plain["tracks"] == 1
    assert moving["faces_written"] >= plain["faces_written"] - 1
    assert moving["faces_detected"] >= plain["faces_detected"] - 1
    assert pixels[True] < 0.6 * pixels[False]
    # every 10th detection whole (the first included); of the 27 others, those where the parts cost less than
    # half a whole detection (not the first frames, with the face large) in parts: counted in summary.json
    assert plain["frames_detected_in_parts"] == 0
    assert 15 <= moving["frames_detected_in_parts"] <= 27


@pytest.mark.parametrize("text,message", [
    ("detect: {motion: maybe}", "detect.motion must be"),
    ("detect: {motion_threshold: 0}", "detect.motion_threshold must be"),
    ("detect: {motion_full_every: 0}", "detect.motion_full_every must be an integer >= 1"),
    ("detect: {motion_max_area: 1.5}", "detect.motion_max_area must be"),
    ("detect: {motion_ignore: [[0, 0, 0.3]]}", r"detect.motion_ignore must be a list of boxes \[x0, y0, x1, y1\]"),
    ("detect: {motion_ignore: [[0.5, 0, 0.3, 0.1]]}", r"x0 < x1, y0 < y1\), got \[\[0.5, 0, 0.3, 0.1\]\]"),
    ("detect: {motion_ignore: [[0, 0, 1.5, 0.1]]}", r"detect.motion_ignore must be a list of numbers in \[0, 1\]"),
    ("detect: {motion_ignore: [0, 0, 0.5, 0.1]}", r"detect.motion_ignore must be a list of numbers in \[0, 1\], got 0"),
])
def test_motion_settings_are_checked(tmp_path, text, message):  # one line naming the key, as every setting
    from pipeline.errors import ConfigError

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_ignored_parts_load_as_boxes():
    cfg = load_config(None, ["detect.motion_ignore=[[0, 0, 0.3, 0.06], [0.8, 0.0, 1, 0.5]]"])
    assert cfg.detect.motion_ignore == ((0, 0, 0.3, 0.06), (0.8, 0.0, 1, 0.5))
    assert cfg.to_dict()["detect"]["motion_ignore"] == cfg.detect.motion_ignore  # summary.json's config
