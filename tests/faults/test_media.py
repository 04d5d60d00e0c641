"""Fault tests: what cameras, phones and disks hand the pipeline that is unusual but legal (or plainly broken):
other codecs, a stream whose resolution changes, a video too small for any face, a file with no video, a
folder of odd images, a disk that fills up mid-run, and a run killed with SIGKILL. Each asserts what a user
relies on: the right exit code, one `error:` line when it fails, no traceback, and every record on disk valid
with its images."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from background_run import Run, check_records
from fault_checks import assert_one_error_line
from skimage import data

from common.cli import EXIT_USER_ERROR
from pipeline.demo import demo_frames

BICUBIC = ("--set", "enhance.method=bicubic", "--set", "track.min_hits=1", "-q")


def encode(path: Path, frames, codec: str, container: str | None = None, pix_fmt: str = "yuv420p",
           options: dict | None = None) -> Path:
    if codec not in av.codecs_available:
        pytest.skip(f"this FFmpeg build has no {codec} encoder")
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=15, options=options or {})
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return list(demo_frames(4, face_from=48))


@pytest.mark.parametrize("name,codec,pix_fmt,options", [
    ("vp9.webm", "libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8"}),
    ("mjpeg.avi", "mjpeg", "yuvj420p", {}),
    ("hevc.mp4", "libx265", "yuv420p", {"preset": "ultrafast", "x265-params": "log-level=error"}),
])
def test_other_codecs_give_every_face(run_cli, tmp_path, frames, name, codec, pix_fmt, options):
    clip = encode(tmp_path / name, frames, codec, pix_fmt=pix_fmt, options=options)
    code, _, err = run_cli("--source", clip, "--out", tmp_path / "run", *BICUBIC)
    assert code == 0 and "Traceback" not in err, err
    assert len(check_records(tmp_path / "run")) == len(frames)


def test_resolution_change_mid_stream(run_cli, tmp_path, frames):
    """An MPEG-TS stream whose second half is 320 x 180 (a camera switching profile): both halves are read."""
    first = encode(tmp_path / "a.ts", frames, "libx264", container="mpegts")
    second = encode(tmp_path / "b.ts", [cv2.resize(f, (320, 180)) for f in frames], "libx264", container="mpegts")
    clip = tmp_path / "switch.ts"
    clip.write_bytes(first.read_bytes() + second.read_bytes())
    code, _, err = run_cli("--source", clip, "--out", tmp_path / "run", *BICUBIC)
    assert code == 0 and "Traceback" not in err, err
    seen = {f["frame_index"] for f in check_records(tmp_path / "run")}
    assert seen & set(range(4)) and seen & set(range(4, 8)), seen


def test_a_video_too_small_for_any_face_is_a_run_with_no_faces(run_cli, tmp_path):
    clip = encode(tmp_path / "tiny.mp4", [np.zeros((2, 2, 3), np.uint8)] * 5, "mpeg4")
    code, _, err = run_cli("--source", clip, "--out", tmp_path / "run", *BICUBIC)
    assert code == 0 and "Traceback" not in err, err
    assert check_records(tmp_path / "run") == []


def test_a_file_with_audio_only_is_one_error(run_cli, tmp_path):
    path = tmp_path / "voice.m4a"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=44100)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    code, _, err = run_cli("--source", path, "--out", tmp_path / "run", *BICUBIC)
    assert code == EXIT_USER_ERROR
    assert_one_error_line(err, str(path), "no video stream")


def test_a_folder_of_odd_images(run_cli, tmp_path, caplog):
    """16-bit, RGBA, grey and very large images are faces like any other; corrupt and empty files are skipped
    with a warning naming them, and the run goes on."""
    face = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_plain.jpg"), face)
    cv2.imwrite(str(folder / "b_16bit.png"), face.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "c_rgba.png"), np.dstack([face, np.full(face.shape[:2], 200, np.uint8)]))
    cv2.imwrite(str(folder / "d_grey.png"), cv2.cvtColor(face, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "e_huge.jpg"), cv2.resize(face, (4000, 4000)))
    (folder / "f_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 20)
    (folder / "g_empty.png").write_bytes(b"")
    code, _, err = run_cli("--source", folder, "--out", tmp_path / "run", *BICUBIC)
    assert code == 0 and "Traceback" not in err, err
    assert len(check_records(tmp_path / "run")) == 5
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "f_corrupt.jpg" in warnings and "g_empty.png" in warnings, warnings


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (needs root and a kernel that lets us mount: skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full disk is made with a small tmpfs, which needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_error_and_keeps_what_was_written(run_cli, tmp_path, small_disk, frames):
    clip = encode(tmp_path / "clip.webm", frames * 4, "libvpx-vp9", options={"deadline": "realtime", "cpu-used": "8"})
    code, _, err = run_cli("--source", clip, "--out", small_disk / "run", *BICUBIC)
    assert code == EXIT_USER_ERROR
    assert_one_error_line(err, "No space left on device")
    assert 0 < len(check_records(small_disk / "run")) < len(frames) * 4


def test_sigkill_mid_run_leaves_only_valid_records(long_face_clip, tmp_path):
    run = Run(long_face_clip, tmp_path / "run", "--set", "enhance.method=bicubic")
    run.wait_for(lambda: run.faces_on_disk() >= 5, "the first faces")
    run.proc.kill()
    run.proc.wait(timeout=30)
    assert len(check_records(run.out)) >= 5
