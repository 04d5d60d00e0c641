"""The identity benchmark (benchmarks/identity.py): pairs, probe geometry, camera models, scoring, CLI."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from common.cli import EXIT_USER_ERROR
from models.camera import CameraModel, h264, jpeg
from pipeline.errors import ConfigError
from pipeline.recognition import DlibEmbedder, dlib_available
from trackers.sort import iou_matrix

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("identity_benchmark", ROOT / "benchmarks/identity.py")
identity = importlib.util.module_from_spec(_spec)
sys.modules["identity_benchmark"] = identity  # dataclasses look their module up by name
_spec.loader.exec_module(identity)

LFW = identity.DATA
needs_dlib = pytest.mark.skipif(not dlib_available(), reason="dlib not installed (pip install -e .[recognition])")
needs_lfw = pytest.mark.skipif(not LFW.is_dir(), reason=f"identity data not found: {LFW}")


def _people(n: int = 40) -> dict[str, list[str]]:
    """A synthetic listing: person k has 1 + k % 4 photos."""
    return {f"P{k:02d}": [f"P{k:02d}/P{k:02d}_{i:04d}.jpg" for i in range(1, 2 + k % 4)] for k in range(n)}


def _astronaut(side: int = 256) -> np.ndarray:
    bgr = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    return cv2.resize(bgr, (side, side), interpolation=cv2.INTER_AREA)


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a.astype(np.float64) - b) ** 2).mean()))


# --- pairs -------------------------------------------------------------------------------------


def test_pairs_are_deterministic_and_seed_dependent() -> None:
    people = _people()
    a, b = identity.make_pairs(people, 20, seed=0), identity.make_pairs(people, 20, seed=0)
    assert a == b
    assert identity.make_pairs(people, 20, seed=1) != a
    assert identity.make_pairs(dict(reversed(people.items())), 20, seed=0) == a  # sorted listing, not dict order


def test_pairs_are_balanced_and_valid() -> None:
    people = _people()
    pairs = identity.make_pairs(people, 21, seed=3)
    same, diff = [p for p in pairs if p.same], [p for p in pairs if not p.same]
    assert (len(same), len(diff)) == (11, 10)
    photos = {f for fs in people.values() for f in fs}
    for p in pairs:
        assert p.gallery in photos and p.probe in photos
    for p in same:  # one person, two different photos; one same pair per person
        assert p.gallery_person == p.probe_person and p.gallery != p.probe
    assert len({p.probe_person for p in same}) == len(same)
    for p in diff:  # two people; the probe is one of the same pairs' probes
        assert p.gallery_person != p.probe_person
        assert p.probe in {s.probe for s in same}
    assert len(set(pairs)) == len(pairs)


def test_pairs_skip_unusable_photos_and_refuse_too_many() -> None:
    people = _people()
    asked: list[str] = []

    def usable(photo: str) -> bool:
        asked.append(photo)
        return not photo.endswith("_0001.jpg")

    pairs = identity.make_pairs(people, 10, seed=0, usable=usable)
    assert all(not f.endswith("_0001.jpg") for p in pairs for f in (p.gallery, p.probe))
    assert len(asked) < sum(map(len, people.values()))  # lazily: only the photos the draw reaches
    with pytest.raises(ConfigError, match="same-person pairs"):
        identity.make_pairs(people, 200, seed=0)


# --- probe geometry ----------------------------------------------------------------------------


@pytest.mark.parametrize("width", [12, 16, 24])
def test_shrink_to_face_width_gives_a_face_of_w_pixels(width: int) -> None:
    photo = np.zeros((250, 250, 3), np.uint8)
    photo[70:170, 60:160] = 255  # a 100 px "face"
    box = (60, 70, 160, 170)
    small, small_box = identity.shrink_to_face_width(photo, box, width)
    assert small.shape[:2] == (round(250 * width / 100),) * 2
    assert small_box[2] - small_box[0] == pytest.approx(width, abs=0.6)
    # the bright square measured in the output: its mass along the middle row / column is W px
    cy, cx = (int(round((small_box[1] + small_box[3]) / 2)), int(round((small_box[0] + small_box[2]) / 2)))
    assert small[cy, :, 0].astype(float).sum() / 255 == pytest.approx(width, abs=0.5)
    assert small[:, cx, 0].astype(float).sum() / 255 == pytest.approx(width, abs=0.5)


def test_shrink_to_face_width_on_a_photo() -> None:
    photo = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)  # 512 x 512
    small, box = identity.shrink_to_face_width(photo, (170, 40, 298, 190), 16)
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8
    np.testing.assert_allclose(box, [21.25, 5.0, 37.25, 23.75])


def test_iou() -> None:  # the benchmark matches detections with the tracker's IoU
    def iou(a, b):
        return float(iou_matrix(np.array([a], float), np.array([b], float))[0, 0])

    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


# --- camera models -----------------------------------------------------------------------------


def _blockiness(img: np.ndarray) -> float:
    """Mean horizontal step across 8 px block boundaries / elsewhere (1: no blocks)."""
    g = np.abs(np.diff(img.astype(np.float64), axis=1)).mean(axis=(0, 2))
    at_edge = np.arange(len(g)) % 8 == 7
    return float(g[at_edge].mean() / g[~at_edge].mean())


def test_clean_camera_is_identity() -> None:
    img, rng = _astronaut(64), np.random.default_rng(0)
    out = CameraModel.parse("clean")(img, rng)
    assert np.array_equal(out, img) and out is not img


def test_jpeg_camera_compresses_like_jpeg() -> None:
    img = _astronaut()
    outs = {q: CameraModel.parse(f"jpeg{q}")(img, np.random.default_rng(0)) for q in (30, 50, 70, 95)}
    errors = [_rms(outs[q], img) for q in (30, 50, 70, 95)]
    assert errors[0] > errors[1] > errors[2] > errors[3] > 1.0, errors  # lower quality, larger error
    assert _blockiness(outs[30]) > _blockiness(img) + 0.2  # 8 x 8 DCT blocks appear
    # quantisation is (nearly) idempotent: compressing the decoded image again changes it far less
    assert _rms(jpeg(outs[50], 50), outs[50]) < 0.25 * errors[1]


def test_noise_camera_adds_sigma_8() -> None:
    gray = np.full((128, 128, 3), 128, np.uint8)
    out = CameraModel.parse("noise8")(gray, np.random.default_rng(0))
    residual = out.astype(np.float64) - 128
    assert residual.std() == pytest.approx(8.0, abs=0.25) and abs(residual.mean()) < 0.3
    assert np.array_equal(out, CameraModel.parse("noise8")(gray, np.random.default_rng(0)))  # seeded
    assert not np.array_equal(out, CameraModel.parse("noise8")(gray, np.random.default_rng(1)))
    img = _astronaut(64)
    both = CameraModel.parse("noise8+jpeg50")(img, np.random.default_rng(0))
    assert _rms(both, img) > _rms(jpeg(img, 50), img)


def test_h264_camera_error_grows_with_crf() -> None:
    img = _astronaut(96)
    errors = [_rms(CameraModel.parse(f"h264crf{c}")(img, np.random.default_rng(0)), img) for c in (18, 30, 36)]
    assert 0.5 < errors[0] < errors[1] < errors[2], errors
    odd = img[:31, :47]
    assert h264(odd, 30).shape == odd.shape  # odd frames are padded for yuv420p and cut back


@pytest.mark.parametrize("name", ["", "jpeg", "blur3", "jpeg0", "jpeg101", "h264crf60", "noise-1",
                                  "jpeg50+h264crf30", "clean+", "jpeg 50"])
def test_camera_parse_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        CameraModel.parse(name)


def test_camera_names_round_trip() -> None:
    for name in ("clean", "noise8", "jpeg50", "h264crf30", "noise8+jpeg50", "noise4.5+h264crf36"):
        assert CameraModel.parse(name).name == name
    assert CameraModel.parse("JPEG50+noise8").name == "noise8+jpeg50"


# --- cells, rows, scores -----------------------------------------------------------------------


def test_parse_cells() -> None:
    cells = identity.parse_cells("clean@16, noise8+jpeg50@24,clean@16")
    assert [c.name for c in cells] == ["clean@16", "noise8+jpeg50@24"]
    assert cells[1].width == 24 and cells[1].camera == CameraModel(8.0, 50)
    assert len(identity.parse_cells(identity.FULL_CELLS)) == 12
    for bad in ("clean", "foo@16", "jpeg50@x", "jpeg50@2", "@16", ","):
        with pytest.raises(ConfigError):
            identity.parse_cells(bad)


def test_parse_methods(tmp_path: Path) -> None:
    w = tmp_path / "my_model.safetensors"
    w.write_bytes(b"x")
    rows = identity.parse_methods(["bicubic", str(w), f"other={w}"])
    assert [(m.name, m.method) for m in rows] == [("bicubic", "bicubic"), ("my_model", "arasfsr"),
                                                  ("other", "arasfsr")]
    default = identity.parse_methods(None)
    assert default[0].name == "bicubic"
    assert {m.weights for m in default[1:]} == {f"models/weights/{p.name}"
                                               for p in (ROOT / "models/weights").glob("*.safetensors")}
    tuned = identity.parse_methods([f"half={w}@strength=0.5,compression_aware=false"])[0]
    assert (tuned.name, tuned.weights, tuned.options) == ("half", str(w), (("strength", 0.5),
                                                                             ("compression_aware", False)))
    with pytest.raises(ConfigError, match="key=value"):
        identity.parse_methods([f"{w}@strength=0.5,oops"])
    with pytest.raises(ConfigError, match="not found"):
        identity.parse_methods([str(tmp_path / "missing.safetensors")])
    with pytest.raises(ConfigError, match="named"):
        identity.parse_methods([str(w), str(w)])


def test_auc_and_scores() -> None:
    same = np.array([True, True, False, False])
    assert identity.auc_score(np.array([0.2, 0.3, 0.7, 0.8]), same) == 1.0
    assert identity.auc_score(np.array([0.8, 0.7, 0.3, 0.2]), same) == 0.0
    assert identity.auc_score(np.full(4, 0.5), same) == 0.5
    assert identity.auc_score(np.array([0.2, 0.7, 0.3, 0.8]), same) == 0.75
    assert identity.auc_score(np.array([0.2, 0.3]), np.array([True, True])) is None
    # one lost probe (NaN), one wrong decision at 0.6 (a same pair at 0.65)
    r = identity.score_cell(np.array([0.3, 0.65, np.nan, 0.9]), same)
    assert r == {"pairs": 4, "lost": 1, "auc": 1.0, "accuracy": round(2 / 3, 4), "accuracy_all": 0.5}


def test_bootstrap_intervals_hold_the_difference_and_narrow_with_more_pairs() -> None:
    rng = np.random.default_rng(0)

    def draw(n):  # a base method right 70 % of the time, a better one 80 %; one cell with lost probes
        same = rng.random(n) < 0.5
        right = lambda p: np.where((rng.random((2, n)) < p) == same, 0.3, 0.9)  # noqa: E731
        base, better = right(0.7), right(0.8)
        base[1, :n // 10] = better[1, :n // 10] = np.nan
        return better, base, same

    widths = []
    for n in (100, 1600):
        better, base, same = draw(n)
        cells, mean = identity.bootstrap_deltas(better, base, same)
        points = [100 * (identity.score_cell(m, same)["accuracy"] - identity.score_cell(b, same)["accuracy"])
                  for m, b in zip(better, base)]
        assert all(lo <= p <= hi for (lo, hi), p in zip(cells, points))
        assert mean[0] <= np.mean(points) <= mean[1]
        widths.append(mean[1] - mean[0])
        again = identity.bootstrap_deltas(better, base, same)
        assert np.array_equal(again[0], cells) and np.array_equal(again[1], mean)  # seeded
    assert widths[1] < widths[0] / 2  # 16 x the pairs: a quarter of the width, give or take
    assert mean[0] > 0  # with 1,600 pairs the 10-point gain is told from noise


def test_detector_settings() -> None:
    assert identity.detector_settings().min_face_size == 12
    assert identity.detector_settings(["min_face_size=8"]).min_face_size == 8
    assert identity.detector_settings(["thresholds=[0.5,0.6,0.7]"]).thresholds == (0.5, 0.6, 0.7)
    for bad in (["min_face_size"], ["no_such_key=1"], ["min_face_size=0"]):
        with pytest.raises(ConfigError):
            identity.detector_settings(bad)


@pytest.mark.parametrize("args, message", [
    (["--cells", "bogus@16"], "bad cell"),
    (["--weights", "no/such.safetensors"], "weights file not found"),
    (["--detect", "no_such_key=1"], "unknown"),
    (["--data", "/no/such/folder", "--weights", "bicubic"], "identity data not found"),
])
def test_cli_user_errors(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert identity.main([*args, "--no-progress"]) == EXIT_USER_ERROR  # the one exit code for user errors
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


# --- dlib: the canonical descriptor path and the end-to-end run ---------------------------------


@needs_dlib
def test_dlib_canonical_realign_is_fixed_and_close_to_hog() -> None:
    from pipeline.align import align_face
    from pipeline.detect import MTCNNDetector
    from pipeline.enhance import bicubic

    photo = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    [det] = MTCNNDetector(device="cpu", min_face_size=40).detect([photo])[0][:1]
    face = bicubic(align_face(photo, det, 0, 0).crop, 160)
    hog, canonical, chips = DlibEmbedder(), DlibEmbedder(realign="canonical"), DlibEmbedder(realign=False)
    reference = chips.embed(hog.align_photo(photo))  # the benchmark's gallery path

    def no_hog(*args: object) -> None:
        raise AssertionError("the HOG detector must not run with realign='canonical'")

    canonical._detector = no_hog
    calls: list[int] = []
    detector = hog._detector
    hog._detector = lambda *args: calls.append(1) or detector(*args)
    v = canonical.embed(face)
    assert np.linalg.norm(v - hog.embed(face)) < 0.15  # same framing as dlib's own box, within noise
    assert calls  # the default (realign=True) still looks for the face with HOG first
    assert np.linalg.norm(v - reference) < 0.3  # the same person as the full-resolution reference
    with pytest.raises(ConfigError):
        DlibEmbedder(realign="hog")


def test_list_people_takes_every_image_suffix(tmp_path: Path) -> None:
    for person, name in [("ann", "1.webp"), ("ann", "2.JPG"), ("bo", "1.png"), ("bo", "notes.txt")]:
        (tmp_path / person).mkdir(exist_ok=True)
        (tmp_path / person / name).write_bytes(b"")
    assert identity.list_people(tmp_path) == {"ann": ["ann/1.webp", "ann/2.JPG"], "bo": ["bo/1.png"]}


@needs_dlib
@needs_lfw
def test_make_probe_is_deterministic() -> None:
    from pipeline.detect import MTCNNDetector

    people = identity.list_people(LFW)
    photo_name = people[sorted(people)[0]][0]
    photo = cv2.imread(str(LFW / photo_name))
    box = DlibEmbedder().face_box(photo)
    assert box is not None
    cell = identity.Cell.parse("noise8+jpeg50@24")
    det = MTCNNDetector(identity.detector_settings())
    a, b = (identity.make_probe(photo, box, cell, det, name=photo_name, seed=0) for _ in range(2))
    assert not a.lost and a.iou > identity.IOU_FOUND
    assert np.array_equal(a.crop, b.crop)
    assert a.crop.shape[0] == a.crop.shape[1] >= 8
    # the face carries its camera's noise as the source measures it on a stream (common.noise)
    assert a.face.noise == b.face.noise and a.face.noise > 2
    clean = identity.make_probe(photo, box, identity.Cell.parse("clean@24"), det, name=photo_name, seed=0)
    assert clean.face.noise == 0.0


@needs_dlib
@needs_lfw
def test_a_track_probe_is_its_own_frame_fused_with_the_tracks_earlier_frames() -> None:
    """--track-frames K: the probe's frame is the single-frame protocol's; on a noisy camera the pipeline's
    fuse stage averages it with the track's earlier frames (the person moving a little), on a clean one not."""
    from pipeline.detect import MTCNNDetector
    from pipeline.fuse import FuseConfig

    people = identity.list_people(LFW)
    photo_name = people[sorted(people)[0]][0]
    photo = cv2.imread(str(LFW / photo_name))
    box = DlibEmbedder().face_box(photo)
    det = MTCNNDetector(identity.detector_settings())
    motion = identity.track_motion(np.random.default_rng(0), 8)
    assert motion.shape == (8, 2) and np.array_equal(motion[-1], [0, 0]) and 0 < np.abs(motion).max() < 5
    for cell, fused in [("noise8+jpeg50@24", True), ("clean@24", False)]:
        c = identity.Cell.parse(cell)
        one = identity.make_probe(photo, box, c, det, name=photo_name, seed=0)
        track = identity.make_probe(photo, box, c, det, name=photo_name, seed=0, track_frames=8,
                                    fuse=FuseConfig(frames=8))
        assert not one.lost and not track.lost and one.iou == track.iou and one.face.noise == track.face.noise
        if fused:
            assert 4 <= track.face.fused <= 8 and not np.array_equal(track.crop, one.crop)
            assert track.face.frame_index == 7
        else:
            assert track.face.fused == 1 and np.array_equal(track.crop, one.crop)


@needs_dlib
@needs_lfw
def test_end_to_end_quick_run_writes_the_schema(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    rc = identity.main(["--pairs", "8", "--cells", "clean@24", "--weights", "bicubic", "--no-progress",
                        "--json", str(out / "r.json"), "--markdown", str(out / "r.md")])
    assert rc == 0
    report = json.loads((out / "r.json").read_text())
    assert set(report) >= {"settings", "cells", "methods", "results", "summary"}
    s = report["settings"]
    assert s["pairs"] == 8 and s["same_pairs"] == 4 and s["different_pairs"] == 4
    assert "canonical" in s["descriptor"]["probe"] and s["detector"]["min_face_size"] == 12
    assert report["cells"] == [{"name": "clean@24", "width": 24, "camera": "clean"}]
    [row] = report["results"]
    assert set(row) == {"method", "cell", "width", "camera", "pairs", "lost", "auc", "accuracy",
                        "accuracy_all", "delta_accuracy", "delta_auc", "delta_accuracy_ci95"}
    assert row["delta_accuracy_ci95"] is None and report["summary"]["bicubic"]["mean_delta_accuracy_ci95"] is None
    assert row["method"] == "bicubic" and row["pairs"] == 8 and 0 <= row["lost"] <= 8
    assert 0.0 <= row["accuracy_all"] <= row["accuracy"] <= 1.0 and row["delta_accuracy"] == 0.0
    assert set(report["summary"]) == {"bicubic"} and "min_delta" in report["summary"]["bicubic"]
    table = (out / "r.md").read_text()
    assert "| bicubic |" in table and "| lost |" in table and table.strip() in capsys.readouterr().out
