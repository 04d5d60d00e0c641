"""Faults of the sources, tried as a user meets them: a camera that never answers (closed port), one
that accepts the connection and then says nothing, and the operator stopping a run that is still
waiting for its camera. Each must end in bounded time with one `error:` line naming the camera (its
password masked) and a non-zero exit, never a retry loop that runs forever."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import SourceError
from pipeline.source import SourceConfig, open_source
from rtsp_server import free_port

ROOT = Path(__file__).resolve().parents[2]
FAST = dict(open_timeout=1.0, read_timeout=1.0, backoff_initial=0.2, backoff_max=0.5)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte; yields its port."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed at teardown
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in held:
            conn.close()


def first_frame_error(url: str, timeout: float) -> tuple[str, float]:
    """The SourceError message of a live source that never delivers, and how long it took."""
    t0 = time.monotonic()
    with open_source(url, SourceConfig(first_frame_timeout=timeout, **FAST)) as src:
        with pytest.raises(SourceError) as info:
            while src.read(timeout=30) is not None:
                pass
    return str(info.value), time.monotonic() - t0


@pytest.mark.parametrize("kind", ["closed port", "silent server"])
def test_live_source_that_never_delivers_fails_in_bounded_time(kind, silent_server):
    port = free_port() if kind == "closed port" else silent_server
    message, took = first_frame_error(f"rtsp://admin:s3cret@127.0.0.1:{port}/cam", timeout=2.0)
    assert message.startswith(f"rtsp://admin:***@127.0.0.1:{port}/cam: no video frame within 2 s"), message
    assert "s3cret" not in message and "\n" not in message
    # The deadline, plus at most one connection attempt (open_timeout) and scheduling slack.
    assert 2.0 <= took < 2.0 + FAST["open_timeout"] + 2.0, took


def run_cli(url: str, out: Path, *overrides: str) -> subprocess.Popen:
    sets = [a for s in ("source.open_timeout=1", "source.read_timeout=1", "source.backoff_max=0.5", *overrides)
            for a in ("--set", s)]
    return subprocess.Popen([sys.executable, str(ROOT / "run_stream.py"), "--source", url, "--out", str(out),
                             "--set", "enhance.method=bicubic", *sets],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli_unreachable_camera_fails_with_one_error_line(tmp_path):
    url = f"rtsp://admin:s3cret@127.0.0.1:{free_port()}/cam"
    proc = run_cli(url, tmp_path / "out", "source.first_frame_timeout=2")
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr and "s3cret" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: rtsp://admin:***@127.0.0.1:") and "no video frame within 2 s" in last, last
    assert "source.first_frame_timeout" in last


def test_cli_stopped_while_waiting_for_a_silent_camera_is_not_a_success(tmp_path, silent_server):
    out = tmp_path / "out"
    proc = run_cli(f"rtsp://127.0.0.1:{silent_server}/cam", out)  # default first_frame_timeout: 30 s
    try:
        # Wait until the run is really waiting for the camera (its first failed attempt), then stop it.
        deadline = time.monotonic() + 90
        for line in proc.stderr:
            if "retry 1/unlimited" in line or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == \
        f"error: rtsp://127.0.0.1:{silent_server}/cam: stopped before the source delivered any frame"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["frames_decoded"] == 0
    assert summary["error"] and "stopped before the source delivered any frame" in summary["error"]


# -- folders: unrelated photos or the frames of a video --------------------------------------------
@pytest.mark.parametrize("names, sequence", [
    (["frame_000001.png", "frame_000002.png", "frame_000003.png"], True),
    (["0.jpg", "2.jpg", "4.jpg", "6.jpg"], True),  # every 2nd frame of a video
    (["img10.png", "img8.png", "img9.png"], True),  # order of listing does not matter
    (["1.jpg", "2.jpg", "3.jpg", "5.jpg"], False),  # a gap: photos picked from a larger set
    (["1.jpg", "2.jpg", "party.jpg"], False),
    (["a1.jpg", "b2.jpg"], False),
    (["frame_1.png", "frame_2.jpg"], False),
    (["frame_1.png"], False),
])
def test_numbered_frames_are_told_from_photos(names, sequence):
    from pipeline.source import is_frame_sequence

    assert is_frame_sequence(names) is sequence


def write_photos(folder: Path, names: list[str]) -> list[str]:
    """One astronaut face per image, at nearly the same place in each (so a tracker would link them)."""
    import cv2

    from pipeline.demo import demo_frames

    folder.mkdir()
    for name, image in zip(names, demo_frames(60, size=(320, 240), face_from=60, face_to=40)):
        cv2.imwrite(str(folder / name), image)
    return names


def run_folder(folder: Path, out: Path, *overrides: str) -> tuple[str, dict, list[dict]]:
    sets = [a for s in ("enhance.method=bicubic", "output.save_comparison=false", *overrides) for a in ("--set", s)]
    res = subprocess.run([sys.executable, str(ROOT / "run_stream.py"), "--source", str(folder), "--out", str(out),
                          "-q", *sets], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    summary = json.loads((out / "summary.json").read_text())
    # Every detected face is either written or counted under the reason it was not.
    assert summary["faces_detected"] == summary["faces_written"] + sum(summary["faces_not_written"].values())
    lines = [json.loads(line) for line in (out / "tracks.jsonl").read_text().splitlines()]
    return res.stdout, summary, lines


def test_folder_of_photos_writes_every_face_with_its_file_name(tmp_path):
    names = write_photos(tmp_path / "photos", ["beach.jpg", "IMG_7.jpg", "party.png", "zoo.jpg"])
    _, summary, lines = run_folder(tmp_path / "photos", tmp_path / "out")
    faces = [r for r in lines if r["type"] == "face"]
    assert summary["folder_mode"] == "photos"
    assert summary["faces_detected"] == summary["faces_written"] == len(faces) == 4
    assert sorted(r["source_file"] for r in faces) == sorted(names)
    assert len({r["track_id"] for r in faces}) == 4  # nothing linked across photos
    assert [r["reason"] for r in lines if r["type"] == "track_end"] == ["photo"] * 4

    from pipeline.run_folder import load_run

    assert sorted(f.source_file for f in load_run(tmp_path / "out").faces) == sorted(names)


def test_frame_sequence_is_tracked_and_the_faces_not_written_are_explained(tmp_path):
    write_photos(tmp_path / "frames", [f"frame_{i:04d}.png" for i in range(4)])
    stdout, summary, lines = run_folder(tmp_path / "frames", tmp_path / "out")
    faces = [r for r in lines if r["type"] == "face"]
    assert summary["folder_mode"] == "sequence"
    assert len({r["track_id"] for r in faces}) == 1
    assert [r["source_file"] for r in faces] == ["frame_0002.png", "frame_0003.png"]
    # the first two faces came before the track was confirmed (track.min_hits=3)
    assert summary["faces_detected"] == 4 and summary["faces_not_written"]["unconfirmed_track"] == 2
    assert "4 faces detected, 2 faces in 1 tracks written" in stdout and "(not written: 2 unconfirmed track)" in stdout


def test_folder_mode_option_overrides_the_names(tmp_path):
    write_photos(tmp_path / "frames", [f"frame_{i:04d}.png" for i in range(3)])
    stdout, summary, _ = run_folder(tmp_path / "frames", tmp_path / "out", "source.folder_mode=photos",
                                    "select.min_face_size=1000")
    assert summary["folder_mode"] == "photos" and summary["faces_written"] == 0
    assert summary["faces_not_written"]["too_small"] == 3 and "(not written: 3 too small)" in stdout
