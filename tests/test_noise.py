"""The camera's noise measured on the stream (common/noise.py) and the enhance stage's strength by it."""
from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
from skimage import data as skdata

from benchmarks.identity import camera_noise
from common.noise import LUMA_GAIN, TemporalNoise, block_luma, difference_sigma, luma_plane
from models.camera import CameraModel
from pipeline.enhance import (LOW_STRENGTH, NOISE_FULL, NOISE_LOW, Enhancer, EnhancerConfig, bicubic, blend,
                              strength_for)
from pipeline.records import EnhancedFace
from pipeline.run_folder import FaceRecord, validate_record
from pipeline.source import SourceConfig, open_source
from tests.test_qp import face_with, write_clip


def scene() -> np.ndarray:
    return np.ascontiguousarray(skdata.astronaut()[:, :, ::-1])  # 512 x 512 BGR: texture, edges, flat areas


def camera(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of `sigma` on each BGR channel, as models.camera adds it."""
    return np.clip(image + rng.normal(0.0, sigma, image.shape) + 0.5, 0, 255).astype(np.uint8)


def measure(frames) -> float | None:
    meter = TemporalNoise()
    for frame in frames:
        meter.update(frame)
    return meter.value


@pytest.mark.parametrize("sigma", [1.0, 3.0, 8.0])
def test_the_noise_added_to_a_still_scene_is_measured(sigma):
    rng = np.random.default_rng(0)
    value = measure(camera(scene(), sigma, rng) for _ in range(6))
    assert value == pytest.approx(sigma * LUMA_GAIN, rel=0.1)


def test_a_noiseless_camera_reads_zero_and_one_frame_reads_nothing():
    assert measure([scene()]) is None
    assert measure([scene()] * 4) == 0.0


def test_motion_and_a_change_of_exposure_are_not_read_as_noise():
    """A bright patch crossing a third of the frame, and the whole frame 12 levels brighter from one frame to
    the next: the still quarter of the blocks still reads the camera's noise alone."""
    rng = np.random.default_rng(1)
    frames = []
    for i in range(8):
        image = scene().astype(np.int16)
        image[100:300, 40 * i:40 * i + 170] = 255 - image[100:300, 40 * i:40 * i + 170]  # a moving object
        frames.append(camera(np.clip(image + 12 * (i % 2), 0, 255), 3.0, rng))
    assert measure(frames) == pytest.approx(3.0 * LUMA_GAIN, rel=0.15)
    # A pan of 2 px a frame over this sharp, busy scene without noise: its edges' motion reads as some noise
    # (2.0), below the strength's low end; real footage is smoother (a hand-held 1080p clip reads 0.4-0.9).
    assert measure(np.roll(scene(), 2 * i, axis=1) for i in range(6)) < NOISE_LOW


def test_a_new_frame_size_or_a_reset_starts_afresh():
    rng = np.random.default_rng(2)
    meter = TemporalNoise()
    for _ in range(3):
        meter.update(camera(scene(), 8.0, rng))
    assert meter.value > 4
    assert meter.update(scene()[:256]) is None  # another stream: nothing to compare with yet
    meter.update(scene()[:256])
    assert meter.value == 0.0
    meter.reset()
    assert meter.value is None


def test_the_window_is_a_running_median():
    rng = np.random.default_rng(3)
    meter = TemporalNoise(window=5)
    for _ in range(6):
        meter.update(camera(scene(), 8.0, rng))
    for _ in range(2):  # two frames of another camera (say a clean key frame) move the median little
        meter.update(scene())
    assert meter.value > 4
    for _ in range(5):
        meter.update(scene())
    assert meter.value == 0.0
    with pytest.raises(ValueError, match="window"):
        TemporalNoise(window=0)


def test_a_frame_smaller_than_a_block_reads_zero():
    assert difference_sigma(block_luma(np.zeros((4, 4, 3), np.uint8)), block_luma(np.ones((4, 4, 3), np.uint8))) == 0


def test_clipped_blocks_are_left_out():
    """Noise on black (or white) is cut off at 0 (255): such blocks would read too little noise."""
    rng = np.random.default_rng(8)
    half_black = scene().copy()
    half_black[:, :256] = 0
    frames = [camera(half_black, 8.0, rng) for _ in range(4)]
    assert measure(frames) == pytest.approx(8.0 * LUMA_GAIN, rel=0.1)
    assert block_luma(frames[0])[1].mean() > 0.45  # the black half's blocks are marked clipped


def test_a_sample_of_blocks_serves_a_large_frame():
    big = cv2.resize(scene(), (1920, 1080))
    assert block_luma(big)[0].shape[0] <= 1100 and block_luma(big)[0].shape[1] == 64
    rng = np.random.default_rng(4)
    assert measure(camera(big, 4.0, rng) for _ in range(4)) == pytest.approx(4.0 * LUMA_GAIN, rel=0.1)


def test_the_y_plane_of_a_decoded_frame_reads_as_its_bgr_image():
    rng = np.random.default_rng(5)
    frames = [av.VideoFrame.from_ndarray(camera(scene(), 4.0, rng), format="bgr24").reformat(format="yuv420p")
              for _ in range(4)]
    y, limited = luma_plane(frames[0])
    assert y.shape == (512, 512) and y.dtype == np.uint8 and limited
    from_y = TemporalNoise()
    for f in frames:
        from_y.update(*luma_plane(f))
    from_bgr = measure(f.to_ndarray(format="bgr24") for f in frames)
    assert from_y.value == pytest.approx(from_bgr, rel=0.1)
    rgb = av.VideoFrame.from_ndarray(scene(), format="bgr24")  # no Y plane: converted
    assert luma_plane(rgb)[0].shape == (512, 512, 3) and not luma_plane(rgb)[1]


def test_an_intra_only_camera_is_measured_at_every_frame(tmp_path):
    """An MJPEG camera: every frame is a picture of its own."""
    rng = np.random.default_rng(6)
    still = cv2.resize(scene(), (320, 240))
    for name, sigma, low, high in [("noisy", 6.0, 2.5, 5.0), ("clean", 0.0, 0.0, 0.5)]:
        clip = write_clip(tmp_path / f"{name}.mkv", [camera(still, sigma, rng) for _ in range(8)], "mjpeg",
                          flags="+qscale", global_quality=str(3 * 118))  # a fixed quantiser, as a camera's
        with open_source(str(clip), SourceConfig()) as src:
            frames = list(src)
        assert frames[0].noise is None and src.noise == frames[-1].noise
        assert all(low <= f.noise <= high for f in frames[1:]), (name, [f.noise for f in frames])


@pytest.mark.skipif("libx264" not in av.codecs_available, reason="this PyAV has no libx264 encoder")
def test_an_h264_camera_is_measured_between_its_intra_frames(tmp_path):
    """Inter frames copy the still scene's noise from their reference: only intra frames (every 4th here) are
    measured, each against the frame before it; the estimate holds in between."""
    rng = np.random.default_rng(7)
    still = cv2.resize(scene(), (320, 240))
    clip = write_clip(tmp_path / "noisy.mp4", [camera(still, 6.0, rng) for _ in range(13)], crf="18", g="4",
                      bf="0")
    with open_source(str(clip), SourceConfig()) as src:
        noise = [f.noise for f in src]
    assert noise[:4] == [None] * 4  # the first frame has none before it; the next intra frame is frame 4
    assert all(2.5 <= n <= 5.0 for n in noise[4:]), noise
    assert noise[4:8] == [noise[4]] * 4 and noise[8:12] == [noise[8]] * 4  # one value per GOP


@pytest.mark.skipif("libx264" not in av.codecs_available, reason="this PyAV has no libx264 encoder")
def test_an_intra_frame_is_compared_with_the_frame_before_it_not_a_gop_away(tmp_path):
    """A noiseless camera panning 1 px a frame, an intra frame every 10: against the frame before it an intra
    frame has moved by a pixel (reads 1.1), against the previous intra frame by 10 (would read 5.2)."""
    smooth = cv2.GaussianBlur(cv2.resize(scene(), (320, 240)), (0, 0), 2)
    clip = write_clip(tmp_path / "pan.mp4", [np.roll(smooth, i, axis=1) for i in range(31)], crf="18", g="10",
                      bf="0")
    with open_source(str(clip), SourceConfig()) as src:
        noise = [f.noise for f in src]
    assert noise[:10] == [None] * 10 and all(n < NOISE_FULL for n in noise[10:]), noise


def test_a_folder_of_one_cameras_frames_is_measured_and_unrelated_photos_are_not(tmp_path):
    rng = np.random.default_rng(9)
    still = cv2.resize(scene(), (320, 240))
    for mode in ("sequence", "photos"):
        folder = tmp_path / mode
        folder.mkdir()
        for i in range(5):
            cv2.imwrite(str(folder / f"frame_{i:04d}.png"), camera(still, 6.0, rng))
        with open_source(str(folder), SourceConfig(folder_mode=mode)) as src:
            noise = [f.noise for f in src]
        if mode == "sequence":
            assert noise[0] is None and all(3.5 <= n <= 4.5 for n in noise[1:]), noise  # 6 x 0.67 = 4.0
        else:
            assert noise == [None] * 5 and src.noise is None


def test_a_site_reports_each_cameras_noise(tmp_path):
    """Two cameras in one process, a noisy one and a clean one: DIR/summary.json and DIR/index.html say which."""
    from pipeline.cameras import cameras_from_sources
    from pipeline.runner import Runner

    rng = np.random.default_rng(10)
    still = cv2.resize(scene(), (320, 240))
    clips = [write_clip(tmp_path / f"{name}.mkv", [camera(still, sigma, rng) for _ in range(6)], "mjpeg",
                        flags="+qscale", global_quality=str(3 * 118)) for name, sigma in (("noisy", 6.0), ("clean", 0))]
    cameras = cameras_from_sources([str(c) for c in clips], None, ["enhance.method=bicubic", "runtime.progress=false"])
    summary = Runner(cameras[0].config, cameras, tmp_path / "site").run()
    assert 2.5 <= summary["cameras"]["cam1"]["noise_sigma"] <= 5.0 and summary["cameras"]["cam2"]["noise_sigma"] < 0.5
    index = (tmp_path / "site/index.html").read_text()
    assert "<th>noise sigma</th>" in index and f"<td>{summary['cameras']['cam1']['noise_sigma']}</td>" in index


# -- strength ----------------------------------------------------------------------------------------------------
def test_strength_falls_from_full_to_low_over_noisy_cameras():
    assert strength_for(noise=None) == 1.0 and strength_for(noise=NOISE_FULL) == 1.0
    assert strength_for(noise=NOISE_LOW) == pytest.approx(LOW_STRENGTH) and strength_for(noise=20) == LOW_STRENGTH
    values = [strength_for(noise=n) for n in np.linspace(NOISE_FULL, NOISE_LOW, 10)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert strength_for(noise=20, noise_aware=False) == 1.0
    # with both damages the lower share wins: a fine quantiser does not restore a noisy camera's strength
    assert strength_for(qp=20, noise=20) == LOW_STRENGTH and strength_for(qp=40, noise=0.5) == LOW_STRENGTH


def test_enhancer_lowers_the_strength_on_noisy_cameras_only(tiny_weights):
    enh = Enhancer(EnhancerConfig(weights=str(tiny_weights), output_size=64, runtime="torch"))
    plain, noisy, quiet = enh([face_with(noise=None), face_with(noise=6.0), face_with(noise=0.4)])
    assert plain.strength == 1.0 and quiet.strength == 1.0 and np.array_equal(quiet.sr, plain.sr)
    assert noisy.strength == pytest.approx(LOW_STRENGTH)
    assert np.array_equal(noisy.sr, blend(bicubic(face_with(noise=6.0).crop, 64), plain.sr, LOW_STRENGTH))
    off = Enhancer(EnhancerConfig(weights=str(tiny_weights), output_size=64, runtime="torch", noise_aware=False))
    assert np.array_equal(off([face_with(noise=6.0)])[0].sr, plain.sr)


def test_tracks_jsonl_records_the_cameras_noise():
    rec = FaceRecord.of(EnhancedFace(face_with(noise=3.14159), np.zeros((64, 64, 3), np.uint8), 3.2, "arasfsr",
                                     strength=0.25), 64, None, comparison=False).to_dict()
    validate_record(rec)
    assert rec["noise"] == 3.14
    with pytest.raises(ValueError, match="noise"):
        validate_record({**rec, "noise": -1})


# -- the identity benchmark's cameras ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, low, high", [("clean", 0, 0), ("jpeg50", 0, 0), ("noise8+jpeg50", NOISE_LOW, 8)])
def test_the_benchmarks_cameras_read_as_the_source_would_read_them(name, low, high):
    small = cv2.resize(scene(), (48, 48), interpolation=cv2.INTER_AREA)
    cam, rng = CameraModel.parse(name), np.random.default_rng(7)
    first = cam(small, rng)
    assert low <= camera_noise(small, first, cam, rng) <= high
