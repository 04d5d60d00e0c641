"""The fuse stage (pipeline/fuse.py): a noisy camera's face averaged with its track's previous frames."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from pipeline.config import load_config
from pipeline.enhance import Enhancer, EnhancerConfig
from pipeline.errors import ConfigError
from pipeline.fuse import FuseConfig, TemporalFusion, correlation, fuse_crops, luma, merge_weights, register
from pipeline.records import AlignedFace, Detection, EnhancedFace
from pipeline.run_folder import FaceRecord, validate_record
from pipeline.runner import Runner
from tests.test_qp import write_clip

FACE = np.ascontiguousarray(skdata.astronaut()[30:230, 140:340, ::-1])  # 200 px BGR, the face in canonical-ish framing


def view(side: int, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """The face as a camera with a `side` px face sees it (its lens blurs about half a pixel), the framing
    shifted by (dx, dy) px of that crop (the landmarks' jitter)."""
    s = FACE.shape[0] / side
    shifted = cv2.warpAffine(FACE, np.float32([[1, 0, dx * s], [0, 1, dy * s]]), FACE.shape[1::-1],
                             flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    return cv2.resize(cv2.GaussianBlur(shifted, (0, 0), 0.5 * s), (side, side), interpolation=cv2.INTER_AREA)


def noisy(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(image + rng.normal(0.0, sigma, image.shape) + 0.5, 0, 255).astype(np.uint8)


def aligned(crop: np.ndarray, index: int, noise: float | None, track: int = 1) -> AlignedFace:
    side = crop.shape[0]
    return AlignedFace(track, index, crop, np.eye(2, 3), side, 0.5,
                       Detection(np.array([0, 0, side, side], np.float64), 0.99, np.zeros((5, 2))), noise=noise)


def error(crop: np.ndarray, truth: np.ndarray) -> float:
    """RMS difference, away from the border (the registration replicates the border it shifts in)."""
    d = crop.astype(np.float64) - truth
    return float(np.sqrt((d[2:-2, 2:-2] ** 2).mean()))


def test_register_undoes_a_shift_and_a_size_change():
    reference = view(24)
    moving = view(27, 1.6, -1.1)  # another frame: the face 27 px, the framing off by 1.4 / 1.2 px of 24
    unregistered = cv2.resize(moving, (24, 24), interpolation=cv2.INTER_AREA)
    out, corr = register(reference, moving)
    assert out.shape == reference.shape and out.dtype == np.uint8
    assert corr > 0.99
    assert error(out, reference) < 0.4 * error(unregistered, reference)


def test_another_face_or_a_flat_crop_does_not_register_as_the_face():
    face = view(24)
    other = cv2.resize(np.ascontiguousarray(skdata.coffee()[:, 100:500, ::-1]), (24, 24), interpolation=cv2.INTER_AREA)
    reg = register(face, other)
    assert reg is None or reg[1] < 0.9
    assert fuse_crops(face, [other, np.full_like(face, 128)], 0.9, 6.0)[1] == 1
    assert correlation(np.ones((4, 4), np.float32), np.ones((4, 4), np.float32)) == 0.0  # no contrast: no match


def test_the_mean_of_n_noisy_frames_has_about_1_over_sqrt_n_of_the_noise():
    rng = np.random.default_rng(0)
    fusion = TemporalFusion(FuseConfig(frames=8))
    offsets = np.cumsum(rng.normal(0, 0.3, (8, 2)), axis=0)
    offsets -= offsets[-1]  # the newest frame is the reference
    crops = [noisy(view(24, dx, dy), 8.0, rng) for dx, dy in offsets]
    luma = 8.0 * 0.668  # the camera's noise as common.noise reads it (luma of 8 on each of B, G, R)
    faces = fusion([aligned(c, i, luma) for i, c in enumerate(crops)])
    assert [f.fused for f in faces] == list(range(1, 9))
    truth = view(24).astype(np.float64)
    assert error(faces[-1].crop, truth) < 0.5 * error(crops[-1], truth)  # 1 / sqrt(8) = 0.35, perfectly registered
    # the noise left: close to 1 / sqrt(8) of the camera's (each registered look a little smoothed, and weighted)
    assert luma / np.sqrt(8) <= faces[-1].crop_noise < luma / np.sqrt(5)
    assert faces[-1].noise == luma  # the record keeps the camera's noise


def test_copies_of_the_same_noise_are_no_new_look_at_it():
    """An H.264 inter frame copies a still face's block from its reference, noise and all: the mean of such
    frames is no less noisy, and the enhancer must not be told it is."""
    rng = np.random.default_rng(5)
    first = noisy(view(24), 8.0, rng)
    copies = [first.copy() for _ in range(7)]
    crop, n, left = fuse_crops(first, copies, 0.9, 5.3)
    assert n == 8 and np.array_equal(crop, first) and left == pytest.approx(5.3, rel=0.05)
    fresh = [noisy(view(24), 8.0, rng) for _ in range(7)]
    assert fuse_crops(first, fresh, 0.9, 5.3)[2] < 5.3 / 2


def test_a_part_of_the_face_that_changed_keeps_the_new_frames_pixels():
    """A mouth that moved between frames: the still parts are averaged (less noise), the changed part is the
    new frame's (no ghost of the old mouth)."""
    rng = np.random.default_rng(4)
    before = view(32)
    after = before.copy()
    after[20:28, 10:22] = 255 - after[20:28, 10:22]  # the lower face changed
    crops = [noisy(before, 6.0, rng) for _ in range(7)] + [noisy(after, 6.0, rng)]
    w = merge_weights(luma(crops[0]) - luma(crops[-1]), 6.0)
    assert w[4:14, 4:28].mean() > 0.8 and w[21:27, 12:20].max() < 0.1
    fused, n, _ = fuse_crops(crops[-1], crops[:-1], 0.5, 6.0)
    assert n == 8
    changed, still = (slice(21, 27), slice(12, 20)), (slice(4, 14), slice(4, 28))
    assert error(fused[changed], after[changed]) < 1.5 * error(crops[-1][changed], after[changed])  # no ghost
    assert error(fused[still], after[still]) < 0.6 * error(crops[-1][still], after[still])  # averaged


def test_only_noisy_cameras_are_fused():
    rng = np.random.default_rng(1)
    for noise in (None, 0.4, 1.4):
        fusion = TemporalFusion(FuseConfig(frames=8, min_noise=1.5))
        crops = [noisy(view(24), 1.0, rng) for _ in range(4)]
        out = fusion([aligned(c, i, noise) for i, c in enumerate(crops)])
        assert [f.fused for f in out] == [1, 1, 1, 1]
        assert all(f.crop is c for f, c in zip(out, crops))
    off = TemporalFusion(FuseConfig(frames=1))
    assert [f.fused for f in off([aligned(view(24), i, 6.0) for i in range(3)])] == [1, 1, 1] and off.tracks == 0


def test_a_track_keeps_its_last_frames_only_and_lets_them_go_when_it_ends():
    rng = np.random.default_rng(2)
    fusion = TemporalFusion(FuseConfig(frames=4, max_gap=10))
    out = fusion([aligned(noisy(view(24), 6.0, rng), i, 6.0) for i in range(6)])
    assert [f.fused for f in out] == [1, 2, 3, 4, 4, 4]  # itself and the 3 frames before it
    # frames too far back are not used: a face 11 frames after the last one starts afresh
    assert fusion([aligned(noisy(view(24), 6.0, rng), 16, 6.0)])[0].fused == 1
    # tracks are separate
    assert fusion([aligned(noisy(view(24), 6.0, rng), 17, 6.0, track=2)])[0].fused == 1
    assert fusion.tracks == 2
    fusion.end_tracks([1, 2])
    assert fusion.tracks == 0


def test_the_enhancer_gives_a_fused_face_the_strength_of_the_noise_left_in_it(tiny_weights):
    enh = Enhancer(EnhancerConfig(weights=str(tiny_weights), output_size=64, runtime="torch"))
    one = aligned(view(24), 0, 4.0)
    many = aligned(view(24), 0, 4.0)
    many.fused, many.fused_noise = 8, 4.0 / np.sqrt(8)  # 1.41: below NOISE_FULL
    assert enh.strength(one) < 1.0 and enh.strength(many) == 1.0


def test_settings_and_the_record():
    assert load_config(None).fuse == FuseConfig()
    assert load_config(None, ["fuse.frames=1"]).fuse.frames == 1
    with pytest.raises(ConfigError, match="fuse.frames"):
        load_config(None, ["fuse.frames=0"])
    with pytest.raises(ConfigError, match="fuse.min_correlation"):
        load_config(None, ["fuse.min_correlation=1.5"])
    face = aligned(view(24), 0, 6.0)
    face.fused = 5
    rec = FaceRecord.of(EnhancedFace(face, np.zeros((64, 64, 3), np.uint8), 2.7, "arasfsr", strength=1.0),
                        64, None, comparison=False).to_dict()
    validate_record(rec)
    assert rec["fused"] == 5
    with pytest.raises(ValueError, match="fused"):
        validate_record({**rec, "fused": 0})


@pytest.mark.parametrize("sigma", [0.0, 6.0])
def test_a_noisy_cameras_faces_are_written_fused_and_a_clean_ones_are_not(sigma, tmp_path):
    """An MJPEG camera filming the astronaut (its noise measured at every frame): the faces of the noisy one
    are the mean of several frames, in tracks.jsonl and in the LR image written; the clean one's are not."""
    rng = np.random.default_rng(3)
    still = cv2.resize(np.ascontiguousarray(skdata.astronaut()[:, :, ::-1]), (320, 320))
    clip = write_clip(tmp_path / "cam.mkv", [noisy(still, sigma, rng) for _ in range(12)], "mjpeg",
                      flags="+qscale", global_quality=str(2 * 118))
    cfg = load_config(None, ["runtime.progress=false", "enhance.method=bicubic", "track.min_hits=1"])
    summary = Runner(cfg, str(clip), tmp_path / "run").run()
    faces = [json.loads(line) for line in (tmp_path / "run/tracks.jsonl").read_text().splitlines()]
    faces = [f for f in faces if f["type"] == "face"]
    assert len(faces) >= 8
    fused = [f["fused"] for f in faces]
    assert summary["faces_fused"] == sum(n > 1 for n in fused)
    if sigma:
        assert max(fused) == 8 and fused == sorted(fused)
    else:
        assert set(fused) == {1}
