"""Tests for pipeline.detect (the MTCNN cascade).

The reference numbers are the stock facenet-pytorch 2.6.0 MTCNN on skimage's astronaut
(RGB in; our detector takes BGR).
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.demo import demo_frames
from pipeline.detect import (
    ROI_PAD,
    DetectorConfig,
    MTCNNDetector,
    nms,
    pyramid_level,
    pyramid_scales,
    resample_windows,
    roi_windows,
    summed_area_table,
    weights_dir,
)
from trackers import SortTracker, TrackerConfig
from trackers.sort import iou_matrix
from pipeline.errors import ConfigError, PipelineError
from pipeline.records import Detection

log = logging.getLogger(__name__)

ASTRONAUT_BOX = np.array([181.1, 62.2, 267.7, 172.1])
ASTRONAUT_SCORE = 0.999998
GROUPS = Path(__file__).resolve().parents[1].parent / "shared/data/stills/groups"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run these tests on one intra-op thread: on a shared 2-core machine, OpenMP threads that wait
    for a busy core make MTCNN's many small ops several times slower; one thread keeps this file
    well under a minute whatever else runs. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def detector() -> MTCNNDetector:
    try:
        weights_dir()
    except PipelineError as exc:
        pytest.skip(str(exc))
    return MTCNNDetector(device="cpu")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])  # RGB -> BGR


def _as_array(dets: list[Detection]) -> np.ndarray:
    """N x 15: box, score, landmarks."""
    return np.array([np.concatenate([d.box, [d.score], d.landmarks.ravel()]) for d in dets]).reshape(-1, 15)


# --- the reference ---------------------------------------------------------------------------


def test_astronaut_matches_stock_facenet_pytorch(detector, astronaut):
    [faces] = detector.detect([astronaut])
    assert len(faces) == 1
    face = faces[0]
    np.testing.assert_allclose(face.box, ASTRONAUT_BOX, atol=2.0)
    assert face.score > 0.999
    assert face.landmarks.shape == (5, 2)


def test_astronaut_landmarks_are_plausible(detector, astronaut):
    [[face]] = detector.detect([astronaut])
    x1, y1, x2, y2 = face.box
    pts = face.landmarks
    assert np.all((pts[:, 0] > x1) & (pts[:, 0] < x2) & (pts[:, 1] > y1) & (pts[:, 1] < y2))
    left_eye, right_eye, nose, mouth_left, mouth_right = pts
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def test_large_frame_is_downscaled_and_mapped_back(detector, astronaut):
    big = cv2.resize(astronaut, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)  # 1536 px > max_side
    side = detector.config.max_side
    assert max(big.shape[:2]) > side
    [faces] = detector.detect([big])
    assert len(faces) == 1
    # exactly the detection on the down-scaled frame, mapped back to frame pixels ...
    small = cv2.resize(big, (side, side), interpolation=cv2.INTER_AREA)
    [[face_small]] = detector.detect([small])
    scale = big.shape[0] / side
    np.testing.assert_allclose(faces[0].box, face_small.box * scale, atol=1e-3)
    np.testing.assert_allclose(faces[0].landmarks, face_small.landmarks * scale, atol=1e-3)
    # ... and the astronaut's face: MTCNN boxes move a few px with the pyramid's sampling,
    # so allow 4 px at the original scale (12 px here, on a 260 x 330 px box)
    np.testing.assert_allclose(faces[0].box, 3 * ASTRONAUT_BOX, atol=12.0)
    assert faces[0].score > 0.99


# Today's cascade before the speed-ups of issue 11 (channels-last P-Net, pyramid levels from the
# summed-area table): its boxes on the astronaut and on a generated frame with three pasted faces.
# The speed-ups must not move them.
BEFORE_SPEEDUPS = {
    (12, "astronaut"): [[181.84, 63.51, 266.97, 174.05]],
    (12, "scene"): [[99.91, 44.90, 135.76, 89.98], [323.26, 316.01, 342.81, 340.30], [525.53, 70.01, 536.35, 83.23]],
    (20, "astronaut"): [[181.05, 62.16, 267.75, 172.05]],
    (20, "scene"): [[100.47, 45.72, 134.23, 87.93], [322.50, 315.28, 342.85, 340.83], [525.08, 69.91, 536.24, 83.32]],
}


def scene_with_faces(astronaut: np.ndarray) -> np.ndarray:
    """480 x 640: a noisy colour gradient with the astronaut pasted at 200, 120 and 70 px."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:480, 0:640]
    background = np.stack([xx * 0.3 + 40, yy * 0.3 + 60, (xx + yy) * 0.15 + 80], -1)
    frame = np.clip(background + rng.normal(0, 6, background.shape), 0, 255).astype(np.uint8)
    for side, (y, x) in ((200, (20, 30)), (120, (300, 280)), (70, (60, 500))):
        frame[y : y + side, x : x + side] = cv2.resize(astronaut, (side, side), interpolation=cv2.INTER_AREA)
    return frame


@pytest.mark.parametrize("min_face", [12, 20])
def test_boxes_are_those_of_the_cascade_before_the_speedups(astronaut, min_face):
    detector = MTCNNDetector(device="cpu", min_face_size=min_face)
    for name, image in (("astronaut", astronaut), ("scene", scene_with_faces(astronaut))):
        [faces] = detector.detect([image])
        np.testing.assert_allclose([f.box for f in faces], BEFORE_SPEEDUPS[min_face, name], atol=0.05)


def test_profile_counts_the_work_of_each_stage(astronaut):
    detector = MTCNNDetector(device="cpu", min_face_size=20)
    detector.detect([astronaut, astronaut])
    profile = detector.profile
    scales = pyramid_scales(512, 512, 20, detector.config.factor)
    assert profile.frames == 2
    assert profile.pnet_pixels == 2 * sum(int(512 * s + 1) ** 2 for s in scales)
    assert profile.rnet_windows > profile.onet_windows >= 2  # R-Net rejects most of P-Net's proposals
    assert set(profile.seconds) == {"pnet", "rnet", "onet", "other"}
    assert all(v > 0 for v in profile.seconds.values())


# --- no faces, batching, inputs -------------------------------------------------------------


def test_blank_and_noise_frames_have_no_faces(detector):
    blank = np.full((240, 320, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert detector.detect([blank, noise]) == [[], []]


def test_empty_and_tiny_inputs(detector):
    assert detector.detect([]) == []
    assert detector.detect([np.zeros((8, 8, 3), np.uint8)]) == [[]]  # smaller than one P-Net window


@pytest.mark.parametrize("thresholds", [(0.6, 1.0, 0.7), (0.6, 0.7, 1.0)], ids=["r-net", "o-net"])
def test_stage_rejecting_every_window_gives_no_faces(astronaut, thresholds):
    detector = MTCNNDetector(device="cpu", thresholds=thresholds, min_face_size=60)
    assert detector.detect([astronaut, astronaut]) == [[], []]


def test_batched_equals_one_at_a_time(detector, astronaut):
    shifted = np.ascontiguousarray(np.roll(astronaut[:, ::-1], 40, axis=0))  # same size, face moved
    crop = np.ascontiguousarray(astronaut[30:330, 120:400])  # another size: its own group
    frames = [astronaut, crop, shifted]
    batched = detector.detect(frames)
    single = [detector.detect([f])[0] for f in frames]
    assert [len(b) for b in batched] == [len(s) for s in single] == [1, 1, 1]
    for b, s in zip(batched, single):
        np.testing.assert_allclose(_as_array(b), _as_array(s), atol=1e-3)
    # the crop's face is the astronaut's, shifted by the crop origin
    np.testing.assert_allclose(batched[1][0].box, ASTRONAUT_BOX - [120, 30, 120, 30], atol=3.0)


def test_detections_sorted_by_score(detector):
    if not GROUPS.is_dir():
        pytest.skip(f"shared test images not found at {GROUPS}")
    image = cv2.imread(str(GROUPS / "multiface.jpg"))
    [faces] = detector.detect([image])
    scores = [f.score for f in faces]
    assert len(faces) > 1 and scores == sorted(scores, reverse=True)


def test_grayscale_and_bgra_are_converted(detector, astronaut):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(astronaut, cv2.COLOR_BGR2BGRA)
    faces_gray, faces_gray1, faces_bgra = detector.detect([gray, gray[:, :, None], bgra])
    assert len(faces_gray) == len(faces_gray1) == 1
    np.testing.assert_allclose(faces_gray[0].box, ASTRONAUT_BOX, atol=6.0)
    np.testing.assert_allclose(_as_array(faces_bgra), _as_array(detector.detect([astronaut])[0]), atol=1e-4)


@pytest.mark.parametrize(
    "frame",
    [np.zeros((32, 32, 3), np.float32), np.zeros((32, 32, 2), np.uint8), np.zeros((0, 32, 3), np.uint8), "image"],
    ids=["float", "two-channels", "empty", "string"],
)
def test_bad_frames_are_rejected(detector, frame):
    with pytest.raises(PipelineError, match="frame 0"):
        detector.detect([frame])


# --- configuration and weights --------------------------------------------------------------


def test_config_overrides_and_errors(detector):
    assert MTCNNDetector(DetectorConfig(factor=0.5), device="cpu", min_face_size=40).config == DetectorConfig(
        min_face_size=40, factor=0.5, device="cpu"
    )
    with pytest.raises(ConfigError, match="min_face_szie"):
        MTCNNDetector(min_face_szie=10)
    with pytest.raises(ConfigError, match="thresholds"):
        DetectorConfig(thresholds=(0.6, 0.7))
    with pytest.raises(ConfigError, match="factor"):
        DetectorConfig(factor=1.5)
    with pytest.raises(ConfigError, match="device"):
        MTCNNDetector(device="tpu:0")


def test_missing_wheel_names_the_fix(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "facenet_pytorch" else real(name, *a))
    with pytest.raises(PipelineError, match="pip install --no-deps facenet-pytorch==2.6.0"):
        MTCNNDetector(device="cpu")


# --- building blocks ------------------------------------------------------------------------


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float, mode: str) -> list[int]:
    """Textbook greedy NMS, one box at a time (the slow reference)."""
    pad = 1.0 if mode == "min" else 0.0
    area = (boxes[:, 2] - boxes[:, 0] + pad) * (boxes[:, 3] - boxes[:, 1] + pad)
    suppressed, keep = np.zeros(len(boxes), bool), []
    for i in np.argsort(-scores, kind="stable"):
        if suppressed[i]:
            continue
        keep.append(int(i))
        iw = np.clip(np.minimum(boxes[i, 2], boxes[:, 2]) - np.maximum(boxes[i, 0], boxes[:, 0]) + pad, 0, None)
        ih = np.clip(np.minimum(boxes[i, 3], boxes[:, 3]) - np.maximum(boxes[i, 1], boxes[:, 1]) + pad, 0, None)
        inter = iw * ih
        union = np.minimum(area[i], area) if mode == "min" else area[i] + area - inter
        suppressed |= (inter / union > threshold) & (groups == groups[i])
    return keep


@pytest.mark.parametrize("mode,threshold", [("union", 0.5), ("union", 0.7), ("min", 0.7)])
def test_nms_matches_textbook_greedy(mode, threshold):
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(1, 300))
        corner = rng.uniform(-40, 400, (n, 2))
        boxes = np.floor(np.concatenate([corner, corner + rng.uniform(2, 120, (n, 2))], 1)).astype(np.float32)
        scores = rng.uniform(0, 1, n).astype(np.float32)
        scores[: n // 4] = 1.0  # saturated scores tie, as P-Net's and O-Net's often do
        groups = rng.integers(0, 3, n)
        kept = nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups), threshold, mode)
        assert kept.tolist() == _greedy_nms(boxes.astype(np.float64), scores, groups, threshold, mode)


def _reference_crop(image: torch.Tensor, window: list[int], size: int) -> torch.Tensor:
    """One window resized per axis with F.interpolate: "area" when shrinking, bilinear when enlarging."""
    x0, y0, x1, y1 = window
    crop = image[y0:y1, x0:x1].permute(2, 0, 1)[None].float()
    for dim, length in ((2, y1 - y0), (3, x1 - x0)):
        target = (size, crop.shape[3]) if dim == 2 else (crop.shape[2], size)
        crop = (F.interpolate(crop, size=target, mode="area") if length >= size
                else F.interpolate(crop, size=target, mode="bilinear", align_corners=False))
    return crop[0]


def test_resample_windows_area_when_shrinking_bilinear_when_enlarging():
    rng = np.random.default_rng(2)
    images = torch.from_numpy(rng.integers(0, 256, (2, 50, 70, 3), dtype=np.uint8))
    table = summed_area_table(images)
    windows = torch.tensor([
        [0, 0, 70, 50], [10, 10, 60, 35],  # larger than 24: area
        [5, 7, 17, 19], [3, 3, 4, 4], [60, 40, 70, 50],  # smaller: bilinear (12 px, 1 px, at the corner)
        [30, 2, 31, 40], [10, 10, 60, 23],  # one side of each kind
    ])
    index = torch.tensor([0, 1, 1, 1, 0, 1, 0])
    for size in (24, 48):
        for frames in (images, None):  # pixels given, or recovered from the table
            got = resample_windows(table, index, windows, size, frames)
            assert got.shape == (len(windows), 3, size, size)
            for k, window in enumerate(windows.tolist()):
                want = _reference_crop(images[index[k]], window, size)
                torch.testing.assert_close(got[k], want, atol=2e-3, rtol=0)
    # windows of at least the output size: exactly the area resampling (the stock MTCNN's kernel)
    big = windows[:2]
    for k, (x0, y0, x1, y1) in enumerate(big.tolist()):
        crop = images[index[k], y0:y1, x0:x1].permute(2, 0, 1)[None].float()
        torch.testing.assert_close(resample_windows(table, index[:2], big, 24)[k],
                                   F.interpolate(crop, size=(24, 24), mode="area")[0], atol=1e-3, rtol=0)


def test_small_windows_are_upsampled_smoothly_not_in_blocks():
    """A 12 px window holding a vertical edge, enlarged to R-Net's 24 px: bilinear puts a ramp
    across the edge; box averaging ("area") would repeat pixels into 2 x 2 blocks."""
    ramp = torch.arange(12).repeat(12, 1) * 20  # 12 x 12, each column 20 grey levels brighter
    image = ramp[None, :, :, None].expand(1, 12, 12, 3).to(torch.uint8).contiguous()
    crop = resample_windows(summed_area_table(image), torch.tensor([0]), torch.tensor([[0, 0, 12, 12]]), 24)[0, 0]
    row = crop[0]
    assert len(torch.unique(row)) > 12  # more grey levels than the 12 source columns
    steps = row[2:-1].diff()  # away from the clamped edges: a smooth ramp of 10 levels per output pixel
    torch.testing.assert_close(steps, torch.full_like(steps, 10.0), atol=1e-3, rtol=0)
    assert torch.equal(crop, crop[:1].expand_as(crop))  # and no change down the columns


def test_pyramid_starts_above_scale_one_below_pnet_window():
    assert pyramid_scales(100, 100, 12, 0.709)[0] == 1.0
    assert pyramid_scales(100, 100, 20, 0.709)[0] == pytest.approx(0.6)
    scales = pyramid_scales(100, 100, 8, 0.709)
    assert scales[0] == pytest.approx(1.5)  # 8 px faces: the frame is enlarged 1.5x for P-Net's 12 px window
    assert all(a > b for a, b in zip(scales, scales[1:]))
    assert 100 * scales[-1] >= 12 > 100 * scales[-1] * 0.709
    assert pyramid_scales(10, 100, 12, 0.709) == []  # shorter than one window


def test_pyramid_levels_enlarge_bilinear_and_shrink_by_area():
    rng = np.random.default_rng(3)
    rgb = torch.from_numpy(rng.integers(0, 256, (2, 20, 30, 3), dtype=np.uint8))
    table = summed_area_table(rgb)
    images = rgb.permute(0, 3, 1, 2).float()
    up = pyramid_level(rgb, table, (31, 46))
    torch.testing.assert_close(up, F.interpolate(images, size=(31, 46), mode="bilinear", align_corners=False))
    assert not torch.allclose(up, F.interpolate(images, size=(31, 46), mode="area"))  # not pixel repetition
    for size in ((15, 22), (20, 30), (7, 29), (1, 1)):  # from the summed-area table: the same as "area"
        down = pyramid_level(rgb, table, size)
        torch.testing.assert_close(down, F.interpolate(images, size=size, mode="area"))
        assert down.is_contiguous(memory_format=torch.channels_last)


def test_min_face_below_pnet_window_runs_on_enlarged_levels(astronaut):
    detector = MTCNNDetector(device="cpu", min_face_size=8)
    small = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)  # face about 22 px
    [faces] = detector.detect([small])
    assert len(faces) >= 1
    np.testing.assert_allclose(faces[0].box, ASTRONAUT_BOX / 4, atol=3.0)


def _astronaut_face_at(astronaut: np.ndarray, width: int, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole astronaut photo shrunk (antialiased) so her face box is `width` px wide, then JPEG."""
    side = round(astronaut.shape[0] * width / (ASTRONAUT_BOX[2] - ASTRONAUT_BOX[0]))
    small = cv2.resize(astronaut, (side, side), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR), ASTRONAUT_BOX * side / astronaut.shape[0]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(iou_matrix(np.asarray([a], float), np.asarray([b], float))[0, 0])


@pytest.mark.parametrize("width,quality", [(11, 60), (12, 50)])
def test_tiny_jpeg_face_is_found_thanks_to_smooth_crops(astronaut, monkeypatch, width, quality):
    """An 11-12 px JPEG face: R-Net and O-Net see it enlarged 2-4x. With bilinear crops it is found;
    with the stock kernel (box averaging, i.e. blocks of repeated pixels) the same cascade misses it."""
    import pipeline.detect as detect_module

    image, box = _astronaut_face_at(astronaut, width, quality)
    detector = MTCNNDetector(device="cpu", min_face_size=12)
    [faces] = detector.detect([image])
    assert any(_iou(f.box, box) > 0.3 and f.score > 0.9 for f in faces)

    def blocky(table, index, windows, size, images=None):
        return detect_module._area_windows(table, index, windows, size).permute(0, 3, 1, 2)

    monkeypatch.setattr(detect_module, "resample_windows", blocky)
    [faces] = detector.detect([image])
    assert not any(_iou(f.box, box) > 0.3 for f in faces)


@pytest.mark.parametrize("quality", [50, 60])
def test_small_faces_preset_finds_a_10px_jpeg_face_the_cctv_preset_misses(astronaut, quality):
    from pipeline.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    image, box = _astronaut_face_at(astronaut, 10, quality)
    found = {}
    for preset in ("cctv", "small-faces"):
        settings = load_config(root / f"{preset}.yaml", ["detect.device=cpu"]).detect.detector()
        [faces] = MTCNNDetector(settings).detect([image])
        found[preset] = any(_iou(f.box, box) > 0.3 for f in faces)
    assert found == {"cctv": False, "small-faces": True}


# --- region-of-interest detection (detect.roi) ---------------------------------------------


def test_roi_windows_are_squares_around_the_box_inside_the_frame():
    boxes = np.array([[100, 100, 140, 130], [0, 5, 20, 25], [590, 300, 640, 360], [10, 10, 400, 400]])
    windows = roi_windows(boxes, 360, 640)
    side = round(40 * (1 + 2 * ROI_PAD))
    assert windows[0].tolist() == [120 - side // 2, 115 - side // 2, side]  # centred on the box
    assert windows[1].tolist() == [0, 0, 60]  # moved inside at the top-left corner, not cut
    assert windows[2].tolist() == [640 - 180, 360 - 180, 180]  # and at the bottom-right one
    assert windows[3].tolist() == [25, 0, 360]  # never larger than the frame (still centred across)
    assert roi_windows(np.zeros((0, 4)), 360, 640).shape == (0, 3)


def _pnet_pixels(detector: MTCNNDetector, detect) -> tuple[list[Detection], int]:
    before = detector.profile.pnet_pixels
    found = detect()
    return found, detector.profile.pnet_pixels - before


def test_roi_frames_find_the_tracked_face_at_a_fraction_of_the_cost(detector):
    """A face moving across a noisy frame, full detection every 3rd frame: on the frames between,
    the regions around the tracker's expected box find the face a full detection finds (IoU > 0.5),
    with P-Net looking at a tenth of the pixels at most."""
    tracker = SortTracker(TrackerConfig(min_hits=1, stride=3))
    full_cost, roi_cost = [], []
    for i, frame in enumerate(demo_frames(15, face_from=70, face_to=40, seed=1)):
        [full], cost = _pnet_pixels(detector, lambda: detector.detect([frame]))
        full_cost.append(cost)
        assert len(full) == 1
        if i % 3:
            found, cost = _pnet_pixels(detector, lambda: detector.detect_around(frame, tracker.expected_boxes(i)))
            roi_cost.append(cost)
            assert len(found) == 1 and _iou(found[0].box, full[0].box) > 0.5, i
            assert found[0].score > 0.9 and found[0].landmarks.shape == (5, 2)
            tracker.update(i, found)
        else:
            tracker.update(i, full)
    assert len(roi_cost) == 10 and max(roi_cost) < 0.1 * min(full_cost)


def test_roi_keeps_one_face_where_regions_overlap_and_drops_faces_cut_by_the_edge(detector, astronaut):
    frame = scene_with_faces(astronaut)
    [full] = detector.detect([frame])
    boxes = np.array([f.box for f in full])
    twice = detector.detect_around(frame, np.concatenate([boxes, boxes + 2]))  # every region twice, overlapping
    np.testing.assert_allclose(sorted(f.box[0] for f in twice), sorted(boxes[:, 0]), atol=3.0)
    # a region expecting a face 1.5 box sides left of the real one: the real face is cut or off-centre
    side = boxes[0, 2] - boxes[0, 0]
    assert detector.detect_around(frame, boxes[:1] - [1.5 * side, 0, 1.5 * side, 0]) == []
    assert detector.detect_around(frame, np.zeros((0, 4))) == []


# --- shared still images --------------------------------------------------------------------


def test_group_stills(detector):
    if not GROUPS.is_dir():
        pytest.skip(f"shared test images not found at {GROUPS} (development data, not in the repo)")
    paths = sorted(p for p in GROUPS.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    assert paths, f"no images in {GROUPS}"
    counts = {}
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert image is not None, f"cannot decode {path}"
        [faces] = detector.detect([image])
        assert all(0.7 < f.score <= 1.0 and f.box[2] > f.box[0] and f.box[3] > f.box[1] for f in faces)
        counts[path.name] = len(faces)
    total = sum(counts.values())
    summary = ", ".join(f"{name}: {n}" for name, n in counts.items())
    log.info("MTCNN faces per image (defaults): %s; total %d", summary, total)
    print(f"\nMTCNN faces per image (defaults): {summary}; total {total}")
    assert total > 0
    assert sum(n > 0 for n in counts.values()) >= len(counts) // 2  # most group photos have faces
