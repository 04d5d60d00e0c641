"""`prepare.py`: one aligned face per photo, with the pipeline's aligner; what is skipped and why."""
import json

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

import prepare
from models.data import FaceSet
from pipeline.align import TEMPLATE
from pipeline.records import Detection


def template_face(side: int, offset: float) -> Detection:
    """A detection whose canonical frame is side x side px, its corner at (offset, offset)."""
    landmarks = TEMPLATE.for_size(side) + offset
    return Detection(np.array([offset, offset, offset + side, offset + side], float), 0.99, landmarks)


class StubDetector:
    """Faces by photo size (photos are padded by half their side before detection)."""

    def __init__(self, faces: dict[int, list[Detection]]):
        self.faces = faces

    def detect(self, frames):
        return [self.faces.get(f.shape[0] // 2, []) for f in frames]


def test_prepare_writes_aligned_faces_and_counts_what_it_skips(tmp_path):
    src, out = tmp_path / "photos", tmp_path / "out"
    src.mkdir()
    rng = np.random.default_rng(0)
    photo = cv2.GaussianBlur(rng.integers(0, 255, (160, 160, 3), dtype=np.uint8), (0, 0), 3.0)
    photo = cv2.normalize(photo, None, 0, 255, cv2.NORM_MINMAX)  # smooth but sharp enough for min_sharpness
    cv2.imwrite(str(src / "a face.png"), photo)  # the face fills the photo: native 160 px
    for name, side in (("nothing.png", 150), ("two.png", 170), ("tiny.png", 180)):
        cv2.imwrite(str(src / name), rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
    cv2.imwrite(str(src / "flat.png"), np.full((190, 190, 3), 128, np.uint8))
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    (src / "notes.txt").write_text("not a photo")
    detector = StubDetector({160: [template_face(160, 80)],
                             170: [template_face(100, 100), template_face(95, 120)],
                             180: [template_face(60, 150)]})
    counts = prepare.prepare(src, out, size=128, min_sharpness=10.0, detector=detector)
    assert {k: counts[k] for k in ("photos", "written", "unreadable", "too_blurry", "no_face", "ambiguous",
                                   "too_small", "unalignable")} == {
        "photos": 6, "written": 1, "unreadable": 1, "too_blurry": 1, "no_face": 1, "ambiguous": 1, "too_small": 1,
        "unalignable": 0}
    faces = FaceSet.load(out, split=None)
    assert faces.images.shape == (1, 128, 128, 3) and faces.masks.all()  # the photo covers the whole frame
    # the canonical frame is the photo itself, shrunk by the aligner (warp at native size, then area)
    expected = cv2.cvtColor(cv2.resize(photo, (128, 128), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    error = [np.abs(faces.images[0].astype(int) - np.roll(expected, d, axis=(0, 1)).astype(int)).mean() for d in (0, 2)]
    assert error[0] < 4 and error[1] > 4 * error[0], error  # the same pixels (JPEG q95), not shifted ones
    assert faces.names == ["a_face.jpg"]
    assert json.loads((out / "prepare.json").read_text())["counts"]["written"] == 1


def test_prepare_cli_errors_are_one_line(tmp_path, capsys):
    assert prepare.main(["--src", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"error: source folder {tmp_path / 'missing'} does not exist"
    assert prepare.main(["--src", str(tmp_path), "--out", str(tmp_path / "o"), "--size", "8"]) == 2
    assert capsys.readouterr().err.strip() == "error: --size must be >= 16, got 8"


def test_prepare_skips_a_photo_without_a_face(tmp_path, capsys):
    from pipeline.detect import weights_dir
    from pipeline.errors import PipelineError

    try:
        weights_dir()
    except PipelineError as exc:  # pragma: no cover - MTCNN weights (facenet-pytorch wheel) not installed
        pytest.skip(str(exc))
    src = tmp_path / "photos"
    src.mkdir()
    cv2.imwrite(str(src / "blank.png"), np.full((200, 200, 3), 180, np.uint8))
    face = cv2.cvtColor(cv2.resize(astronaut(), (256, 256), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(src / "astro naut.jpg"), face)  # a name with a space
    code = prepare.main(["--src", str(src), "--out", str(tmp_path / "out"), "--size", "64"])
    out = capsys.readouterr().out
    assert code == 0 and "2 photos -> 1 faces" in out and "1 no face" in out
    faces = FaceSet.load(tmp_path / "out", split=None)
    assert faces.images.shape == (1, 64, 64, 3) and faces.masks.any()
    assert json.loads((tmp_path / "out/prepare.json").read_text())["counts"]["no_face"] == 1


def test_prepare_reads_webp_photos(tmp_path):
    class NoFaces:  # the detector's interface; every photo reaches it, none has a face
        def detect(self, images):
            self.seen = [img.shape for img in images]
            return [[] for _ in images]

    src = tmp_path / "photos"
    src.mkdir()
    cv2.imwrite(str(src / "a.webp"), np.full((40, 30, 3), 90, np.uint8))
    cv2.imwrite(str(src / "b.PNG"), np.full((40, 30, 3), 90, np.uint8))
    (src / "notes.txt").write_text("not a photo")
    detector = NoFaces()
    counts = prepare.prepare(src, tmp_path / "out", size=32, detector=detector)
    assert counts["photos"] == 2 and counts["unreadable"] == 0 and counts["no_face"] == 2
    assert detector.seen == [(80, 70, 3)] * 2  # decoded and padded by half the longer side


def test_repack_copies_a_prepared_set_as_webp(tmp_path, capsys):
    from models.data import write_prepared

    face = cv2.resize(astronaut()[:300, 100:400], (64, 64), interpolation=cv2.INTER_AREA)
    faces = [face, np.roll(face, 5, axis=1)]
    src = write_prepared(tmp_path / "src", faces, ["train", "val"]).parent
    assert prepare.main(["--src", str(src), "--out", str(tmp_path / "w"), "--repack", "95"]) == 0
    assert "2 faces" in capsys.readouterr().out
    for split in ("train", "val"):
        before, after = FaceSet.load(src, split), FaceSet.load(tmp_path / "w", split)
        assert after.names[0].endswith(".webp") and (after.masks == before.masks).all()
        assert cv2.PSNR(after.images[0], before.images[0]) > 38  # the same faces, re-encoded
    assert prepare.main(["--src", str(src), "--out", str(tmp_path / "x"), "--repack", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --repack must be a quality in 1..100, got 0"
