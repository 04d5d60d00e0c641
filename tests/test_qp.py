"""The stream's H.264 quantiser (common/qp.py) and the enhance stage's strength (pipeline/enhance.py)."""
from __future__ import annotations

import gc
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from skimage import data as skdata

from common.config import build
from common import memory, qp
from common.qp import QPMap, export_qp, qp_map
from models.camera import CameraModel
from pipeline.align import align_face
from pipeline.enhance import LOW_STRENGTH, QP_FULL, QP_LOW, Enhancer, EnhancerConfig, bicubic, blend, strength_for
from pipeline.errors import ConfigError
from pipeline.records import AlignedFace, Detection, EnhancedFace, Frame
from pipeline.run_folder import FaceRecord, validate_record
from pipeline.source import open_source

pytestmark = pytest.mark.skipif("libx264" not in av.codecs_available, reason="this PyAV has no libx264 encoder")


def write_clip(path: Path, frames: list[np.ndarray], codec: str = "libx264", **options: str) -> Path:
    """The BGR frames as a 10 fps clip at `path` (`codec`: libx264, yuv420p, or mjpeg, yuvj420p)."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10, options=options)
        stream.width, stream.height, stream.time_base = w, h, Fraction(1, 10)
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        container.mux(stream.encode(None))
    return path


def encode(frames: list[np.ndarray], path: Path | None = None, **options: str):
    """The frames through libx264 with `options`; written to `path` (a clip), else decoded back in memory
    with the QP side data: [(image, QPMap | None, picture type)]."""
    if path is not None:
        return write_clip(path, frames, **options)
    return [(f.to_ndarray(format="bgr24"), qp_map(f), f.pict_type) for f in decoded(frames, **options)]


def decoded(frames: list[np.ndarray], **options: str) -> list[av.VideoFrame]:
    """The frames through libx264 with `options` and back in memory, decoded with the QP side data on."""
    h, w = frames[0].shape[:2]
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt, enc.options = w, h, "yuv420p", options
    packets = [p for f in frames for p in enc.encode(av.VideoFrame.from_ndarray(f, format="bgr24"))]
    packets += list(enc.encode(None))
    dec = av.CodecContext.create("h264", "r")
    export_qp(dec)
    return [f for p in packets for f in dec.decode(p)] + list(dec.decode(None))


def astronaut(w: int = 96, h: int = 64) -> np.ndarray:
    return cv2.resize(skdata.astronaut()[..., ::-1], (w, h), interpolation=cv2.INTER_AREA)


# -- the QP map -------------------------------------------------------------------------------------
@pytest.mark.parametrize("quantiser", [24, 33])
def test_qp_map_reads_the_encoders_quantiser_of_every_macroblock(quantiser):
    # constant QP (intra frames not made finer: ipratio 1), one intra frame
    (image, blocks, _), = encode([astronaut(100, 70)], **{"x264-params": f"qp={quantiser}:ipratio=1"})
    assert blocks is not None and blocks.block == 16
    assert blocks.grid.shape == (5, 7)  # ceil(70 / 16) x ceil(100 / 16) macroblocks
    assert (blocks.grid == quantiser).all()


def test_inter_frames_are_put_on_the_intra_scale():
    # CRF mode quantises P and B frames 3-5 steps coarser than the intra frame for the same quality
    frames = [np.roll(astronaut(), 2 * k, axis=1) for k in range(8)]
    decoded = encode(frames, crf="30", g="30")
    kinds = [av.video.frame.PictureType(t).name for _, _, t in decoded]
    assert kinds[0] == "I" and "I" not in kinds[1:] and "P" in kinds
    medians = [float(np.median(b.grid)) for _, b, _ in decoded]
    assert all(abs(m - medians[0]) <= 3 for m in medians[1:]), medians


def test_picture_types_are_pyavs():
    assert {qp._PICTURE_TYPES[int(getattr(av.video.frame.PictureType, k))] for k in "IPB"} == set("IPB")


def test_the_finest_inter_frames_stay_on_the_scale():
    frames = [np.roll(astronaut(), 2 * k, axis=1) for k in range(6)]
    decoded = encode(frames, **{"x264-params": "qp=1:keyint=30"})  # P/B frames at QP 1-3, below their offsets
    assert any(av.video.frame.PictureType(t).name != "I" for _, _, t in decoded)
    assert all(b.grid.min() >= 0 for _, b, _ in decoded)  # tracks.jsonl's schema: qp >= 0


def test_frames_without_quantiser_side_data_have_no_map():
    enc = encode([astronaut()], path=None, crf="30")
    assert enc[0][1] is not None
    dec = av.CodecContext.create("mpeg4", "w")  # not H.264: no map
    dec.width, dec.height, dec.pix_fmt, dec.time_base = 96, 64, "yuv420p", Fraction(1, 10)
    packets = list(dec.encode(av.VideoFrame.from_ndarray(astronaut(), format="bgr24"))) + list(dec.encode(None))
    back = av.CodecContext.create("mpeg4", "r")
    export_qp(back)
    frames = [f for p in packets for f in back.decode(p)] + list(back.decode(None))
    assert frames and qp_map(frames[0]) is None


@pytest.mark.parametrize("budget_frames", [3, None])
def test_frames_whose_map_was_read_are_freed_within_the_budget(tmp_path, monkeypatch, budget_frames):
    # PyAV keeps a frame whose side data was read in a reference cycle: without the budget (None) every
    # decoded frame stays in memory until a full collection (here: never, the collector is off)
    clip = encode([np.roll(astronaut(), 3 * k, axis=1) for k in range(12)], path=tmp_path / "c.mp4", crf="30")
    frame_bytes = 96 * 64 * 3 // 2
    monkeypatch.setattr(memory, "CYCLE_BUDGET", budget_frames * frame_bytes if budget_frames else 1 << 40)
    monkeypatch.setattr(memory, "_debt", memory.CycleDebt())
    alive = []
    gc.collect()
    gc.disable()
    try:
        with av.open(str(clip)) as container:
            stream = container.streams.video[0]
            export_qp(stream.codec_context)
            for frame in container.decode(stream):
                assert qp_map(frame) is not None
                alive.append(sum(isinstance(o, av.VideoFrame) for o in gc.get_objects()))
            del frame
    finally:
        gc.enable()
    assert len(alive) == 12
    if budget_frames is None:  # the cycle: no frame is ever freed
        assert alive == sorted(alive) and alive[-1] >= 12, alive
    else:  # the frames owed (at most the budget), the current one and the one the decoder holds
        assert max(alive) <= budget_frames + 2, alive


def test_a_faces_qp_is_the_median_of_the_blocks_under_its_box():
    grid = QPMap(np.array([[20, 22, 40], [24, 26, 40]], np.int16), block=16)
    assert grid.at((0, 0, 31, 31)) == 23.0          # four blocks
    assert grid.at((33, 0, 47, 10)) == 40.0         # one block
    assert grid.at((-20, -20, 5, 5)) == 20.0        # clipped to the frame
    assert grid.at((60, 0, 80, 10)) is None         # outside the map


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_a_turned_map_follows_the_turned_frame_pixel_by_pixel(turns):
    grid = QPMap(np.arange(6, dtype=np.int16).reshape(2, 3), block=16)
    width, height = 40, 24  # not whole blocks: the padding moves when the frame turns
    frame = np.array([[grid.at((x, y, x, y)) for x in range(width)] for y in range(height)], np.uint8)
    turned_frame = cv2.rotate(frame, {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180,
                                      3: cv2.ROTATE_90_CLOCKWISE}[turns])  # as VideoSource turns frames
    turned = grid.rotated(turns, width, height)
    h, w = turned_frame.shape
    assert all(turned.at((x, y, x, y)) == turned_frame[y, x] for y in range(h) for x in range(w))


def test_video_source_frames_carry_the_streams_qp(tmp_path):
    clip = encode([astronaut()] * 3, path=tmp_path / "qp.mp4", **{"x264-params": "qp=31:ipratio=1:keyint=1"})
    with open_source(clip) as src:
        frames = list(src)
    assert len(frames) == 3
    assert all(f.qp is not None and (f.qp.grid == 31).all() for f in frames)
    det = Detection(np.array([20.0, 10.0, 60.0, 50.0]), 0.99,
                    np.array([[32, 24], [48, 24], [40, 32], [34, 40], [46, 40]], np.float64))
    assert align_face(frames[0], det, track_id=1, frame_index=0).qp == 31.0
    assert align_face(frames[0].image, det, track_id=1, frame_index=0).qp is None  # an image alone has no QP


def test_camera_model_gives_the_qp_map_for_h264_only():
    rng = np.random.default_rng(0)
    image, blocks = CameraModel.parse("h264crf36").degrade(astronaut(), rng)
    assert image.shape == (64, 96, 3) and blocks is not None and blocks.grid.shape == (4, 6)
    assert 30 <= np.median(blocks.grid) <= 42
    assert CameraModel.parse("noise8+jpeg50").degrade(astronaut(), rng)[1] is None


# -- strength -----------------------------------------------------------------------------------------
def test_strength_falls_from_full_to_low_over_the_coarse_quantisers():
    assert strength_for(None) == 1.0 and strength_for(QP_FULL) == 1.0 and strength_for(10) == 1.0
    assert strength_for(QP_LOW) == pytest.approx(LOW_STRENGTH) and strength_for(51) == pytest.approx(LOW_STRENGTH)
    values = [strength_for(q) for q in np.linspace(QP_FULL, QP_LOW, 10)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert strength_for(40, strength=0.5) == pytest.approx(0.5 * LOW_STRENGTH)  # a share of the user's strength
    assert strength_for(40, compression_aware=False) == 1.0


def test_blend_is_bicubic_plus_a_share_of_the_models_detail():
    base = np.full((4, 4, 3), 100, np.uint8)
    detail = np.full((4, 4, 3), 200, np.uint8)
    assert (blend(base, detail, 0.25) == 125).all() and (blend(base, detail, 0.0) == 100).all()
    assert (blend(base, detail, 1.0) == 200).all()


def face_with(qp: float | None = None, side: int = 20, noise: float | None = None) -> AlignedFace:
    """The astronaut's face as an aligned `side` px crop, from blocks quantised at `qp` by a camera of `noise`."""
    crop = cv2.resize(skdata.astronaut()[30:230, 140:340, ::-1], (side, side), interpolation=cv2.INTER_AREA)
    return AlignedFace(1, 0, np.ascontiguousarray(crop), np.eye(2, 3), side, 0.5,
                       Detection(np.array([0, 0, side, side], np.float64), 0.99, np.zeros((5, 2))), qp=qp,
                       noise=noise)


def test_enhancer_lowers_the_strength_on_coarse_blocks_only(tiny_weights):
    enh = Enhancer(EnhancerConfig(weights=str(tiny_weights), output_size=64, runtime="torch"))
    plain, coarse, fine = enh([face_with(None), face_with(40.0), face_with(20.0)])
    full = plain.sr
    assert plain.strength == 1.0 and fine.strength == 1.0 and np.array_equal(fine.sr, full)
    assert coarse.strength == pytest.approx(LOW_STRENGTH) and coarse.method == "arasfsr"
    flat = bicubic(face_with(40.0).crop, 64)
    assert np.array_equal(coarse.sr, blend(flat, full, LOW_STRENGTH))
    assert not np.array_equal(coarse.sr, full) and not np.array_equal(coarse.sr, flat)
    off = Enhancer(EnhancerConfig(weights=str(tiny_weights), output_size=64, runtime="torch", compression_aware=False))
    assert np.array_equal(off([face_with(40.0)])[0].sr, full)


def test_strength_zero_is_bicubic_without_loading_the_model(tiny_weights):
    enh = Enhancer(EnhancerConfig(weights=str(tiny_weights), output_size=64, strength=0.0))
    out, = enh([face_with(20.0)])
    assert enh.model is None and enh.name == "bicubic" and out.method == "bicubic" and out.strength is None
    assert np.array_equal(out.sr, bicubic(face_with(20.0).crop, 64))


@pytest.mark.parametrize("value", [1.5, -0.1, "half"])
def test_a_bad_strength_is_a_one_line_config_error(value):
    with pytest.raises(ConfigError, match="enhance.strength"):
        build(EnhancerConfig, {"strength": value}, where="enhance")


def test_tracks_jsonl_records_the_faces_qp_and_strength():
    face = face_with(33.25)
    rec = FaceRecord.of(EnhancedFace(face, np.zeros((64, 64, 3), np.uint8), 3.2, "arasfsr", strength=0.5417),
                        64, None, comparison=False).to_dict()
    validate_record(rec)
    assert rec["qp"] == 33.25 and rec["strength"] == 0.542
    with pytest.raises(ValueError, match="strength"):
        validate_record({**rec, "strength": 1.5})
