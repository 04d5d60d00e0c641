"""Recognition: gallery building, per-track voting, identities.jsonl, the dlib embedder."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.errors import ConfigError, PipelineError, SinkError
from pipeline.recognition import (UNKNOWN, DlibEmbedder, Embedder, Gallery, GalleryMatcher,
                                  dlib_available, face_distance, l2_normalize)
from pipeline.records import AlignedFace, Detection, EnhancedFace
from pipeline.run_folder import read_identities

KNN = Path(__file__).resolve().parents[2] / "shared/data/stills/identity/knn_examples"
RED, BLUE, GREEN, GREY = (0, 0, 255), (255, 0, 0), (0, 255, 0), (128, 128, 128)


class MeanColour(Embedder):
    """Deterministic toy embedder: the face's mean BGR colour as a unit vector."""

    input_size, metric, threshold = 16, "euclidean", 0.3

    def embed(self, face: np.ndarray) -> np.ndarray:
        return l2_normalize(face.reshape(-1, 3).mean(0) + 1.0)


def solid(colour: tuple[int, int, int], size: int = 16) -> np.ndarray:
    return np.full((size, size, 3), colour, np.uint8)


def enhanced(track_id: int, frame_index: int, colour: tuple[int, int, int]) -> EnhancedFace:
    det = Detection(np.array([0.0, 0, 8, 8]), 0.9, np.zeros((5, 2)))
    face = AlignedFace(track_id, frame_index, solid(GREY, 8), np.eye(2, 3), 8, 0.5, det)
    return EnhancedFace(face, solid(colour, 32), scale=4.0)


@pytest.fixture
def gallery() -> Gallery:
    return Gallery.from_images({"red": [solid(RED)], "blue": [solid(BLUE), solid((250, 10, 10))]},
                               MeanColour())


def test_face_distance_metrics() -> None:
    a, b = l2_normalize(np.array([[1.0, 0], [0, 1]])), l2_normalize(np.array([[1.0, 1], [1, 0]]))
    np.testing.assert_allclose(face_distance(a, b), [[0.765367, 0], [0.765367, 1.414214]], atol=1e-5)
    np.testing.assert_allclose(face_distance(a[0], b, "cosine"), [1 - 0.707107, 0], atol=1e-5)
    with pytest.raises(ValueError):
        face_distance(a, b, "manhattan")  # type: ignore[arg-type]


def test_gallery_nearest(gallery: Gallery) -> None:
    emb = MeanColour()
    assert gallery.identities == ["blue", "red"] and len(gallery.embeddings) == 3
    assert gallery.nearest(emb.embed(solid((20, 20, 230))))[0] == "red"
    name, dist = gallery.nearest(emb.embed(solid((252, 8, 8))))
    assert name == "blue" and dist < 0.02


def test_gallery_from_folder(tmp_path: Path) -> None:
    for name, colour in [("alice", RED), ("bob", BLUE)]:
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "1.jpg"), solid(colour, 40))
        cv2.imwrite(str(tmp_path / name / "2.PNG"), solid(colour, 40))
    (tmp_path / "bob" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "bob" / "notes.txt").write_text("ignored")
    cv2.imwrite(str(tmp_path / "bob" / "noface.jpg"), solid(GREEN, 40))
    (tmp_path / "README.md").write_text("ignored")

    def align(photo: np.ndarray) -> np.ndarray | None:  # "no face" for green photos
        return None if photo[0, 0, 1] > 200 else photo[10:30, 10:30]

    g = Gallery.from_folder(tmp_path, MeanColour(), align=align)
    assert g.names == ["alice", "alice", "bob", "bob"]
    assert [Path(s).name for s in g.sources] == ["1.jpg", "2.PNG", "1.jpg", "2.PNG"]
    with pytest.raises(ConfigError, match="not found"):
        Gallery.from_folder(tmp_path / "missing", MeanColour())
    with pytest.raises(ConfigError, match="no usable"):
        Gallery.from_folder(tmp_path, MeanColour(), align=lambda photo: None)


def test_gallery_accepts_webp_photos(tmp_path: Path) -> None:
    (tmp_path / "carol").mkdir()
    cv2.imwrite(str(tmp_path / "carol" / "1.webp"), solid(RED, 40), [cv2.IMWRITE_WEBP_QUALITY, 101])
    g = Gallery.from_folder(tmp_path, MeanColour())
    assert g.names == ["carol"] and [Path(s).name for s in g.sources] == ["1.webp"]


def test_matcher_votes_and_events(tmp_path: Path, gallery: Gallery) -> None:
    out = tmp_path / "identities.jsonl"
    m = GalleryMatcher(gallery, MeanColour(), out)
    # track 1: mostly red with one blue frame; track 2: grey (no one); track 3: blue then red wins
    stream = [(1, 0, RED), (2, 0, GREY), (1, 1, RED), (3, 1, BLUE), (1, 2, BLUE), (3, 2, (10, 10, 240)),
              (1, 3, RED), (3, 3, (5, 5, 250)), (2, 4, GREY)]
    events = [m.update(enhanced(t, f, c)) for t, f, c in stream]
    changes = [(e["track_id"], e["identity"], e["frame_index"]) for e in events if e]
    assert changes == [(1, "red", 0), (2, UNKNOWN, 0), (3, "blue", 1), (3, "red", 3)]
    assert len(out.read_text().splitlines()) == 4  # flushed as they happen
    assert m.decision(1) == {"track_id": 1, "identity": "red", "score": 0.0, "votes": 3,
                             "frames": 4, "frame_index": 3, "final": False}
    final = m.end_track(1)
    assert final is not None and final["final"] and m.decision(1) is None
    m.close()
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(e["track_id"], e["final"]) for e in lines[4:]] == [(1, True), (2, True), (3, True)]
    last = read_identities(out)
    assert {t: e.identity for t, e in last.items()} == {1: "red", 2: UNKNOWN, 3: "red"}
    assert last[2].score > 0.3 and last[3].votes == 2 and last[3].frames == 3


def test_matcher_min_votes(tmp_path: Path, gallery: Gallery) -> None:
    out = tmp_path / "identities.jsonl"
    with GalleryMatcher(gallery, MeanColour(), out, min_votes=2) as m:
        assert m.update(enhanced(1, 0, RED)) is None  # one vote: not reported yet
        assert m.update(enhanced(1, 1, RED))["identity"] == "red"
        assert m.update(enhanced(2, 1, BLUE)) is None
        assert not out.exists() or len(out.read_text().splitlines()) == 1
    last = read_identities(out)
    assert last[1].identity == "red" and last[1].final
    assert last[2].identity == UNKNOWN and last[2].candidate == "blue" and last[2].votes == 1


def test_build_matcher_uses_detector_and_aligner(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from pipeline.align import TEMPLATE
    from pipeline.recognition import build_matcher

    class FakeDetector:  # one 60 px face in the middle of every photo
        def detect(self, frames: list[np.ndarray]) -> list[list[Detection]]:
            h, w = frames[0].shape[:2]
            lm = TEMPLATE.points * 60 + [w / 2 - 30, h / 2 - 30]
            return [[Detection(np.array([w / 2 - 30, h / 2 - 30, w / 2 + 30, h / 2 + 30]), 0.99, lm)]]

    for name, colour in [("alice", RED), ("bob", BLUE)]:
        (tmp_path / "gallery" / name).mkdir(parents=True)
        photo = solid(GREY, 200)
        photo[70:130, 70:130] = colour  # the "face"; the grey border is cut away by the aligner
        cv2.imwrite(str(tmp_path / "gallery" / name / "a.png"), photo)
    settings = SimpleNamespace(gallery=str(tmp_path / "gallery"), threshold=0.1, min_votes=1)
    (tmp_path / "identities.jsonl").write_text("old run\n")  # DiskSink(overwrite=True) clears it
    with build_matcher(settings, FakeDetector(), tmp_path, embedder=MeanColour()) as m:
        assert m.gallery.names == ["alice", "bob"] and m.threshold == 0.1
        (tmp_path / "identities.jsonl").unlink()
        assert m.update(enhanced(4, 0, BLUE))["identity"] == "bob"
    assert read_identities(tmp_path / "identities.jsonl")[4].identity == "bob"


def test_matcher_options(tmp_path: Path, gallery: Gallery) -> None:
    with GalleryMatcher(gallery, MeanColour(), stride=2) as m:
        for f, colour in enumerate([RED, BLUE, RED, BLUE, RED]):
            m.update(enhanced(5, f, colour))
        assert m.decision(5)["frames"] == 3 and m.decision(5)["votes"] == 3  # frames 0, 2, 4
    loose = GalleryMatcher(gallery, MeanColour(), threshold=2.0)
    assert loose.update(enhanced(1, 0, GREY))["identity"] in {"red", "blue"}
    crop = GalleryMatcher(gallery, MeanColour(), use="crop")  # the LR crop is grey
    assert crop.update(enhanced(1, 0, RED))["identity"] == UNKNOWN
    (tmp_path / "identities.jsonl").write_text("old\n")
    with pytest.raises(SinkError, match="already exists"):
        GalleryMatcher(gallery, MeanColour(), tmp_path / "identities.jsonl")
    with GalleryMatcher(gallery, MeanColour(), tmp_path / "identities.jsonl", overwrite=True) as m:
        m.update(enhanced(1, 0, RED))
    assert [e.identity for e in read_identities(tmp_path / "identities.jsonl").values()] == ["red"]


def test_dlib_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    with pytest.raises(PipelineError, match=r"pip install -e \.\[recognition\]"):
        DlibEmbedder()


needs_dlib = pytest.mark.skipif(not dlib_available(),
                                reason="dlib not installed (pip install -e .[recognition])")


@pytest.fixture(scope="module")
def dlib_embedder() -> DlibEmbedder:
    return DlibEmbedder()


@needs_dlib
def test_dlib_same_face_closer_than_other_image(dlib_embedder: DlibEmbedder) -> None:
    from skimage import data

    astro = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)  # face at about x 175-265, y 76-166
    a = astro[50:190, 150:290]
    b = cv2.GaussianBlur(cv2.resize(astro[56:196, 144:284], (70, 70), interpolation=cv2.INTER_AREA),
                         (3, 3), 0)  # shifted, half size, blurred
    cat = cv2.cvtColor(data.chelsea(), cv2.COLOR_RGB2BGR)[20:220, 120:320]
    ea, eb, ec = dlib_embedder.embed_batch([a, b, cat])
    assert ea.shape == (128,) and ea.dtype == np.float32
    np.testing.assert_allclose(dlib_embedder.embed(a), ea, atol=1e-5)
    same, other = face_distance(ea, eb[None])[0], face_distance(ea, ec[None])[0]
    assert same < dlib_embedder.threshold == 0.6 and same < other - 0.15, (same, other)


@needs_dlib
@pytest.mark.skipif(not KNN.is_dir(), reason=f"development data not found: {KNN}")
def test_dlib_gallery_identifies_low_resolution_probes(dlib_embedder: DlibEmbedder) -> None:
    """Real people: gallery from knn_examples/train, probes are test photos' faces reduced to
    48 px (a CCTV-sized face) and bicubic-upscaled back, as a stand-in for the SR output."""
    gallery = Gallery.from_folder(KNN / "train", dlib_embedder, align=dlib_embedder.align_photo)
    assert gallery.identities == ["alex_lacamoire", "biden", "kit_harington", "obama", "rose_leslie"]
    expected = {"alex_lacamoire1.jpg": "alex_lacamoire", "johnsnow_test1.jpg": "kit_harington",
                "obama1.jpg": "obama"}
    m = GalleryMatcher(gallery, dlib_embedder)
    for track_id, (name, who) in enumerate(expected.items()):
        chip = dlib_embedder.align_photo(cv2.imread(str(KNN / "test" / name)))
        assert chip is not None, name
        lr = cv2.resize(chip, (48, 48), interpolation=cv2.INTER_AREA)
        face = AlignedFace(track_id, 0, lr, np.eye(2, 3), 48, 1.0,
                           Detection(np.zeros(4), 1.0, np.zeros((5, 2))))
        sr = cv2.resize(lr, (128, 128), interpolation=cv2.INTER_CUBIC)  # stand-in for SR
        event = m.update(EnhancedFace(face, sr, 128 / 48))
        assert event is not None and event["identity"] == who, (name, event)
    from skimage import data

    stranger = dlib_embedder.align_photo(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    assert gallery.nearest(dlib_embedder.embed(stranger))[1] > dlib_embedder.threshold
