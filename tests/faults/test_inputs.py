"""Fault tests: inputs that used to give silently wrong results, or blamed the wrong thing.

  * a video file cut short (a copy that did not finish) is read up to the cut, with a warning and
    `frames_expected` / `truncated` in summary.json;
  * a phone video stored sideways with a rotation tag (display matrix) is turned upright before
    detection;
  * checkpoints that cannot give a model (stored config not JSON, a model that cannot be built,
    NaN/Inf weights) are one error naming the file;
  * non-finite model output at run time: the face is written with bicubic, counted in summary.json.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from common.cli import EXIT_USER_ERROR
from fault_checks import assert_one_error_line
from models.checkpoint import FORMAT, _write, build_model, save_checkpoint
from pipeline.demo import demo_frames
from pipeline.enhance import Enhancer, EnhancerConfig, bicubic
from pipeline.source import open_source

CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_clip(path: Path, frames, fps: int = 15, rotation: int | None = None) -> Path:
    """An mp4 of BGR `frames`, its index (moov) first, as phones and `-movflags faststart` write it,
    so that a copy cut short still plays up to the cut; `rotation`: a display-matrix tag
    (counter-clockwise degrees, as FFmpeg reads it back)."""
    frames = list(frames)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream(CODEC, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        out.mux(stream.encode(None))
    return path


def cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    short = path.with_name(f"{path.stem}_cut{round(fraction * 100)}{path.suffix}")
    short.write_bytes(data[:int(len(data) * fraction)])
    return short


def read_all(path: Path):
    with open_source(path) as src:
        frames = [f.image for f in src]
    return frames, src


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory) -> Path:
    """30 frames (2 s) of the demo face, 40 px down to 16 px."""
    return write_clip(tmp_path_factory.mktemp("clip") / "faces.mp4", demo_frames(30, face_from=40))


# -- truncated files --------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.5, 0.75, 0.9, 0.99])
def test_a_file_cut_short_is_flagged_truncated(face_clip, fraction, caplog):
    frames, src = read_all(cut(face_clip, fraction))
    assert 0 < len(frames) < 30
    assert src.frame_count == 30 and src.truncated
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"decoded {len(frames)} of 30 frames expected" in m and "truncated" in m for m in warning), warning


def test_a_complete_file_is_not_truncated(face_clip, caplog):
    frames, src = read_all(face_clip)
    assert len(frames) == 30 and src.frame_count == 30 and not src.truncated
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_file_without_a_frame_index_is_checked_against_its_duration(tmp_path):
    # MKV stores no frame count: the expected count comes from the duration x the frame rate
    path = tmp_path / "clip.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(CODEC, rate=15)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for frame in demo_frames(30, face_from=40):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        out.mux(stream.encode(None))
    frames, src = read_all(path)
    assert len(frames) == 30 and src.frame_count == 30 and not src.truncated
    frames, src = read_all(cut(path, 0.6))
    assert len(frames) < 25 and src.truncated


def test_a_truncated_run_says_so_and_still_writes_what_it_decoded(run_process, face_clip, tmp_path):
    short = cut(face_clip, 0.75)
    out = tmp_path / "out"
    res = run_process("--source", short, "--out", out, "--set", "enhance.method=bicubic", "-q")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["truncated"] is True and summary["frames_expected"] == 30
    assert 0 < summary["frames_decoded"] < 30
    assert f"decoded {summary['frames_decoded']} of 30 frames expected" in res.stderr
    assert "truncated" in (out / "index.html").read_text()


# -- rotation tags -----------------------------------------------------------------------------------
def _marker_frame() -> np.ndarray:
    """64 x 32 (wide), a white block in the top-left corner."""
    img = np.zeros((32, 64, 3), np.uint8)
    img[:12, :12] = 255
    return img


@pytest.mark.parametrize("rotation,stored", [
    # the tag says how far the stored picture must turn counter-clockwise to be shown upright
    (90, lambda im: np.rot90(im, -1)),   # stored turned clockwise (a phone held one way)
    (-90, lambda im: np.rot90(im, 1)),   # stored turned counter-clockwise (held the other way)
    (180, lambda im: np.rot90(im, 2)),   # upside down
])
def test_frames_with_a_rotation_tag_come_out_upright(tmp_path, rotation, stored):
    upright = _marker_frame()
    path = write_clip(tmp_path / "rotated.mp4", [np.ascontiguousarray(stored(upright))] * 3, rotation=rotation)
    frames, _ = read_all(path)
    assert len(frames) == 3
    for frame in frames:
        assert frame.shape == upright.shape
        assert frame[:12, :12].mean() > 200 and frame[20:, 52:].mean() < 50  # the block is back top-left


def test_a_sideways_phone_video_still_finds_the_faces(run_cli, tmp_path):
    # Stored turned clockwise with the tag that turns it back: MTCNN finds no sideways face, so
    # without the rotation this run writes nothing.
    frames = [np.ascontiguousarray(np.rot90(f, -1)) for f in demo_frames(12, face_from=80, face_to=60)]
    path = write_clip(tmp_path / "phone.mp4", frames, rotation=90)
    out = tmp_path / "out"
    code, stdout, err = run_cli("--source", path, "--out", out, "--set", "enhance.method=bicubic",
                                "--set", "track.min_hits=1", "-q")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["faces_written"] > 0
    record = json.loads((out / "tracks.jsonl").read_text().splitlines()[0])
    x0, y0, x1, y1 = record["bbox"]
    assert x1 <= 640 and y1 <= 360  # boxes in the upright (640 x 360) frame


# -- checkpoints --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model({"encoder": {"name": "edsr", "n_resblocks": 1, "n_feats": 8}, "decoder": {"hidden": 16},
                         "local_frequency": {"latent": 4, "width": 8}})
    path = save_checkpoint(model, tmp_path_factory.mktemp("w") / "tiny.safetensors")
    return path, model.config


def _rewrite(src, dst, config_text: str, tensors=None):
    _write(tensors or load_file(str(src)), dst, {"format": FORMAT, "config": config_text, "metadata": "{}"})
    return dst


@pytest.mark.parametrize("case,needle", [
    ("not_json", "stored model config is not JSON"),
    ("impossible", "describes a model that cannot be built"),
    ("nan", "NaN or infinite weights"),
    ("inf", "NaN or infinite weights"),
])
def test_unusable_checkpoints_are_named_not_blamed_on_the_device(run_cli, tmp_path, tiny_checkpoint, case, needle):
    src, config = tiny_checkpoint
    bad = tmp_path / f"{case}.safetensors"
    if case == "not_json":
        _rewrite(src, bad, "{encoder: edsr")
    elif case == "impossible":  # valid keys, but a layer of 10^13 channels cannot be allocated
        _rewrite(src, bad, json.dumps({**config, "encoder": {**config["encoder"], "n_feats": 10 ** 13}}))
    else:
        tensors = load_file(str(src))
        name = sorted(tensors)[0]
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = float("nan") if case == "nan" else float("inf")
        _rewrite(src, bad, json.dumps(config), tensors)
    code, out, err = run_cli("--source", tmp_path / "x.mp4", "--out", tmp_path / "out",
                             "--set", f"enhance.weights={bad}", "--set", "enhance.device=cpu")
    assert code == EXIT_USER_ERROR
    line = assert_one_error_line(err, f"checkpoint {bad}", needle)
    assert "enhance.device" not in line


# -- non-finite model output --------------------------------------------------------------------------
def _nan_for_odd_items(real):
    def upscale(self, lr, size, amp=None):
        sr = real(self, lr, size, amp=amp)
        sr[1::2] = float("nan")
        return sr
    return upscale


def test_non_finite_model_output_falls_back_to_bicubic(tiny_checkpoint, monkeypatch, caplog):
    from models.arasfsr import ARASFSR
    from test_pipeline import face

    monkeypatch.setattr(ARASFSR, "upscale", _nan_for_odd_items(ARASFSR.upscale))
    enh = Enhancer(EnhancerConfig(method="arasfsr", weights=str(tiny_checkpoint[0]), device="cpu"))
    faces = [face(1, i, side=20) for i in range(4)]
    out = enh(faces)
    assert [o.method for o in out] == ["arasfsr", "bicubic", "arasfsr", "bicubic"]
    assert np.array_equal(out[1].sr, bicubic(faces[1].crop, 112))
    assert enh.fallbacks == 2
    assert any("not finite" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_a_run_counts_the_faces_written_with_bicubic(run_cli, face_clip, tiny_checkpoint, monkeypatch, tmp_path):
    from models.arasfsr import ARASFSR

    real = ARASFSR.upscale
    monkeypatch.setattr(ARASFSR, "upscale", lambda self, lr, size, amp=None: real(self, lr, size, amp) * float("nan"))
    out = tmp_path / "out"
    code, stdout, err = run_cli("--source", face_clip, "--out", out, "--set", f"enhance.weights={tiny_checkpoint[0]}",
                                "--set", "enhance.device=cpu", "--set", "track.min_hits=1", "-q")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "tracks.jsonl").read_text().splitlines()]
    faces = [r for r in records if r["type"] == "face"]
    assert summary["faces_written"] == len(faces) > 0
    assert summary["faces_bicubic_fallback"] == len(faces)  # every face here went through the model
    assert all(r["method"] == "bicubic" for r in faces)
