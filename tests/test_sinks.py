"""DiskSink and the run folder: output layout, tracks.jsonl records and track ends, atomic writes, disk errors,
existing runs, and `load_run` reading it all back."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.cli import signals_deferred
from pipeline import sinks
from pipeline.errors import PipelineError, SinkError
from pipeline.records import AlignedFace, Detection, EnhancedFace, TrackEnd
from pipeline.report import write_report
from pipeline.run_folder import (REPORT_GENERATOR, TRACK_RECORD_SCHEMA, FaceRecord, IdentityRecord, RunFolder,
                                 load_run, validate_record)
from pipeline.sinks import DiskSink

S = 64


def make_face(track_id: int = 1, frame_index: int = 0, crop: int = 20, size: int = S,
              pts: float | None = 0.5, quality: float = 0.7) -> EnhancedFace:
    rng = np.random.default_rng(track_id * 1000 + frame_index)
    det = Detection(np.array([10.0, 20.0, 40.5, 55.25]), 0.987654,
                    np.array([[15, 30], [30, 30], [22, 38], [17, 46], [28, 46]], float))
    aligned = AlignedFace(track_id, frame_index, rng.integers(0, 255, (crop, crop, 3), np.uint8),
                          np.eye(2, 3), crop, quality, det, pts)
    return EnhancedFace(aligned, rng.integers(0, 255, (size, size, 3), np.uint8), scale=size / crop)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_layout_records_and_images(tmp_path: Path) -> None:
    faces = [make_face(1, 0), make_face(1, 3, pts=None), make_face(7, 3, crop=33)]
    with DiskSink(tmp_path, S) as sink:
        for f in faces:
            sink.write(f)
        sink.write_summary({"faces": sink.count, "tracks": len(sink.track_ids), "fps": np.float32(2.5)})
    recs = read_jsonl(tmp_path / "tracks.jsonl")
    assert [(r["track_id"], r["frame_index"]) for r in recs] == [(1, 0), (1, 3), (7, 3)]
    for rec, face in zip(recs, faces):
        validate_record(rec)
        assert set(TRACK_RECORD_SCHEMA["required"]) <= rec.keys()
        sr = cv2.imread(str(tmp_path / rec["image"]))
        np.testing.assert_array_equal(sr, face.sr)  # PNG is lossless
        lr = cv2.imread(str(tmp_path / rec["lr_image"]))
        np.testing.assert_array_equal(lr, face.face.crop)
        assert cv2.imread(str(tmp_path / rec["bicubic_image"])).shape == (S, S, 3)
    r = recs[0]
    assert r["image"] == "tracks/1/0.png" and r["output_size"] == S and r["crop_size"] == 20
    assert r["bbox"] == [10.0, 20.0, 40.5, 55.25] and len(r["landmarks"]) == 5
    assert r["det_score"] == 0.9877 and r["scale"] == 3.2 and r["method"] == "arasfsr"
    assert recs[1]["pts_time"] is None and recs[0]["pts_time"] == 0.5
    assert json.loads((tmp_path / "summary.json").read_text()) == {"faces": 3, "tracks": 2, "fps": 2.5}
    assert not list(tmp_path.rglob("*.tmp"))


def test_no_comparison_images_and_pts_override(tmp_path: Path) -> None:
    with DiskSink(tmp_path, S, save_comparison=False) as sink:
        rec = sink.write(make_face(2, 5), pts_time=1.25)
    assert rec["pts_time"] == 1.25 and rec["lr_image"] is None and rec["bicubic_image"] is None
    assert sorted(p.name for p in (tmp_path / "tracks/2").iterdir()) == ["5.png"]
    validate_record(rec)


def test_wrong_sr_size_is_rejected(tmp_path: Path) -> None:
    with DiskSink(tmp_path, S) as sink:
        with pytest.raises(ValueError, match="64x64x3"):
            sink.write(make_face(size=S + 1))
    assert (tmp_path / "tracks.jsonl").read_text() == ""


def test_existing_run_refused_unless_overwrite(tmp_path: Path) -> None:
    with DiskSink(tmp_path, S) as sink:
        sink.write(make_face(1, 0))
    (tmp_path / "identities.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(SinkError, match="already holds a run"):
        DiskSink(tmp_path, S).open()
    assert len(read_jsonl(tmp_path / "tracks.jsonl")) == 1  # untouched
    with DiskSink(tmp_path, S, overwrite=True) as sink:
        sink.write(make_face(9, 9))
    assert [r["track_id"] for r in read_jsonl(tmp_path / "tracks.jsonl")] == [9]
    assert not (tmp_path / "tracks/1").exists() and not (tmp_path / "identities.jsonl").exists()
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "identities.jsonl").write_text("{}\n")
    with pytest.raises(SinkError, match=r"\(identities.jsonl\)"):
        DiskSink(tmp_path / "other", S).open()


def test_unwritable_out_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SinkError) as e:
        DiskSink(blocker / "run", S).open()
    assert str(blocker) in str(e.value) and "\n" not in str(e.value)


def test_full_disk_on_image_keeps_earlier_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with DiskSink(tmp_path, S) as sink:
        sink.write(make_face(1, 0))
        real_replace = os.replace

        def full(src: str, dst: str) -> None:
            if str(dst).endswith("/1.png"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_replace(src, dst)

        monkeypatch.setattr(sinks.os, "replace", full)
        with pytest.raises(SinkError) as e:
            sink.write(make_face(1, 1))
        monkeypatch.undo()
        sink.write(make_face(1, 2))  # the sink still works once space is back
    msg = str(e.value)
    assert "No space left on device" in msg and "tracks/1/1.png" in msg and "\n" not in msg
    recs = read_jsonl(tmp_path / "tracks.jsonl")
    assert [r["frame_index"] for r in recs] == [0, 2]  # no line for the failed face
    assert not (tmp_path / "tracks/1/1.png").exists() and not list(tmp_path.rglob("*.tmp"))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_full_disk_on_jsonl(tmp_path: Path) -> None:
    sink = DiskSink(tmp_path, S).open()
    sink._jsonl.close()
    sink._jsonl = open("/dev/full", "ab", buffering=0)  # every write: ENOSPC
    with pytest.raises(SinkError, match="tracks.jsonl: No space left on device"):
        sink.write(make_face())
    sink.close()


def test_summary_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with DiskSink(tmp_path, S) as sink:
        sink.write_summary({"faces": 1})

        def denied(src: str, dst: str) -> None:
            raise OSError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(sinks.os, "replace", denied)
        with pytest.raises(SinkError, match="summary.json: Permission denied"):
            sink.write_summary({"faces": 2})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"faces": 1}
    assert not list(tmp_path.glob(".*.tmp"))


def test_write_after_close(tmp_path: Path) -> None:
    sink = DiskSink(tmp_path, S).open()
    sink.close()
    sink.close()
    with pytest.raises(RuntimeError, match="not open"):
        sink.write(make_face())


@pytest.mark.parametrize("change, problem", [
    ({"track_id": -1}, "track_id"),
    ({"track_id": True}, "track_id"),
    ({"bbox": [1, 2, 3]}, "bbox"),
    ({"bbox": [5, 2, 3, 4]}, "bbox"),
    ({"landmarks": [[1, 2]] * 4}, "landmarks"),
    ({"det_score": 1.5}, "det_score"),
    ({"scale": 0}, "scale"),
    ({"quality": float("nan")}, "quality"),
    ({"image": "/etc/passwd"}, "image"),
    ({"image": "tracks/2/0.png"}, "image"),
    ({"method": ""}, "method"),
    ({"output_size": "128"}, "output_size"),
])
def test_validate_record_rejects(change: dict, problem: str) -> None:
    rec = {"track_id": 1, "frame_index": 0, "pts_time": 0.0, "bbox": [0, 0, 10, 10],
           "landmarks": [[1, 2]] * 5, "det_score": 0.9, "crop_size": 10, "scale": 2.0,
           "output_size": 20, "image": "tracks/1/0.png", "quality": None, "method": "bicubic"}
    validate_record(rec)
    with pytest.raises(ValueError, match=problem):
        validate_record({**rec, **change})
    incomplete = dict(rec)
    del incomplete["pts_time"]
    with pytest.raises(ValueError, match="missing 'pts_time'"):
        validate_record(incomplete)


def end(track_id: int, frame_index: int = 20, first: int = 0, last: int = 9, seen: int = 10,
        reason: str = "lost") -> TrackEnd:
    return TrackEnd(track_id, frame_index, first, last, seen, reason)


def test_track_end_line_summarises_the_faces_written(tmp_path: Path) -> None:
    with DiskSink(tmp_path, S) as sink:
        for frame, q in [(2, 0.5), (4, 0.9), (6, 0.9), (8, 0.1)]:
            sink.write(make_face(1, frame, quality=q))
        sink.write(make_face(7, 3))
        rec = sink.end_track(end(1))
        assert sink.end_track(end(1)) is None  # its state is released: no second line
        assert sink.end_track(end(5)) is None  # a track without faces gets no line
    lines = read_jsonl(tmp_path / "tracks.jsonl")
    assert [(r["type"], r["track_id"]) for r in lines] == [("face", 1)] * 4 + [("face", 7), ("track_end", 1)]
    assert lines[-1] == rec == {"type": "track_end", "track_id": 1, "frame_index": 20, "first_frame": 0,
                                "last_frame": 9, "faces_seen": 10, "faces_written": 4, "best_quality": 0.9,
                                "best_frame": 4, "reason": "lost", "camera": None}  # first of the best on ties
    validate_record(rec)


@pytest.mark.parametrize("change, problem", [
    ({"faces_written": 11}, "faces_written > faces_seen"),
    ({"faces_written": 0}, "faces_written"),
    ({"best_frame": 12}, "best_frame <= last_frame"),
    ({"reason": "bored"}, "reason"),
    ({"first_frame": -1}, "first_frame"),
])
def test_validate_track_end_rejects(change: dict, problem: str) -> None:
    rec = {"type": "track_end", "track_id": 1, "frame_index": 20, "first_frame": 0, "last_frame": 9,
           "faces_seen": 10, "faces_written": 4, "best_quality": None, "best_frame": 4, "reason": "stream_end"}
    validate_record(rec)
    with pytest.raises(ValueError, match=problem):
        validate_record({**rec, **change})


def test_load_run_round_trips_what_the_sinks_wrote(tmp_path: Path) -> None:
    with DiskSink(tmp_path, S) as sink:
        written = [sink.write(make_face(1, 0)), sink.write(make_face(7, 3, crop=33, pts=None)),
                   sink.write(make_face(1, 4, quality=0.9))]
        ended = sink.end_track(end(1, frame_index=9, last=4, seen=5))
        sink.write_summary({"faces_written": 3})
    idents = [IdentityRecord(1, "alice", 0.31, 2, 2, 4, final=True),
              IdentityRecord(7, "unknown", 0.7, 1, 1, 3, candidate="bob")]
    (tmp_path / "identities.jsonl").write_text("".join(json.dumps(i.to_dict()) + "\n" for i in idents))
    with open(tmp_path / "tracks.jsonl", "a") as f:
        f.write('{"type": "face", "track_id": 99, "frame_ind')  # a line torn by a crash
    run = load_run(tmp_path)
    assert all(isinstance(f, FaceRecord) for f in run.faces)
    assert [f.to_dict() for f in run.faces] == written
    assert list(run.track_ends) == [1] and run.track_ends[1].to_dict() == ended
    assert run.track_ends[1].faces_written == 2 and run.track_ends[1].best_frame == 4
    assert run.identities == {1: idents[0], 7: idents[1]} and run.identities[7].candidate == "bob"
    assert run.summary == {"faces_written": 3} and run.folder == tmp_path
    assert {t: [f.frame_index for f in fs] for t, fs in run.tracks().items()} == {1: [0, 4], 7: [3]}
    assert run.faces[1].pts_time is None and run.faces[1].crop_size == 33
    assert (tmp_path / run.faces[0].image).is_file() and (tmp_path / run.faces[0].lr_image).is_file()


def test_load_run_reads_lines_without_type_and_refuses_other_folders(tmp_path: Path) -> None:
    with DiskSink(tmp_path, S) as sink:
        rec = sink.write(make_face(2, 5))
    old = {k: v for k, v in rec.items() if k != "type"}  # a run written before track ends existed
    (tmp_path / "tracks.jsonl").write_text(json.dumps(old) + "\n" + json.dumps({**old, "image": "/etc/passwd"}) + "\n")
    run = load_run(tmp_path)
    assert [f.to_dict() for f in run.faces] == [rec]  # the line with a path outside the folder is skipped
    assert run.track_ends == {} and run.identities == {} and run.summary == {}
    with pytest.raises(PipelineError, match="no tracks.jsonl"):
        load_run(tmp_path / "nothing")


# -- holding the run folder ------------------------------------------------------------------------
def test_a_held_folder_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with RunFolder(tmp_path) as folder:
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
        for overwrite in (False, True):
            with pytest.raises(SinkError, match=rf"in use by another run \(pid {os.getpid()}\)"):
                RunFolder(tmp_path, overwrite=overwrite).open()
        with DiskSink(folder, S) as sink:  # the holder hands it to its sink
            sink.write(make_face())
        with pytest.raises(SinkError, match="in use"):  # the sink does not release a folder it was handed
            RunFolder(tmp_path).open()
    assert not (tmp_path / ".lock").exists()
    with DiskSink(tmp_path, S, overwrite=True):  # free again
        pass


def test_a_stale_lock_file_does_not_block(tmp_path: Path) -> None:
    (tmp_path / ".lock").write_text("999999\n")  # left by a killed run: the kernel released its lock
    with RunFolder(tmp_path):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"


def test_ctrl_c_while_the_lock_is_taken_leaves_no_lock_file(tmp_path: Path, monkeypatch) -> None:
    """The signal comes after .lock is created but before the holder is recorded (what a Ctrl-C at start-up
    met on a loaded machine): it still ends the open, and the file goes with it."""
    truncate, steps = os.ftruncate, []

    def ctrl_c_then_truncate(fd: int, length: int) -> None:
        signal.raise_signal(signal.SIGINT)  # Python's own Ctrl-C handler: KeyboardInterrupt
        steps.append("truncated")  # the interrupt waits for the lock to be recorded
        truncate(fd, length)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # not what an earlier test left
    try:
        monkeypatch.setattr(os, "ftruncate", ctrl_c_then_truncate)
        with pytest.raises(KeyboardInterrupt):
            RunFolder(tmp_path).open()
        monkeypatch.undo()
        assert steps == ["truncated"] and not (tmp_path / ".lock").exists()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back
    finally:
        signal.signal(signal.SIGINT, previous)
    with RunFolder(tmp_path):  # and the folder is free
        pass


def test_signals_deferred_delivers_after_the_block_to_the_handler_in_place() -> None:
    came: list[str] = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: came.append("handled"))
    try:
        with signals_deferred():
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
            came.append("block ended")
        assert came == ["block ended", "handled", "handled"]
    finally:
        signal.signal(signal.SIGTERM, previous)


def previous_run(folder: Path) -> None:
    """A finished run (report included) plus what a killed one leaves: a temporary file."""
    with DiskSink(folder, S) as sink:
        sink.write(make_face(1, 0))
        sink.write(make_face(12, 4))
        sink.write_summary({"faces": 2})
    write_report(folder)
    (folder / "input").mkdir()
    (folder / "input" / "demo.mp4").write_bytes(b"clip")
    (folder / "tracks" / "12" / ".5.png.123.456.tmp").write_bytes(b"part")


def test_overwrite_deletes_only_what_a_run_wrote(tmp_path: Path) -> None:
    previous_run(tmp_path)
    mine = {"notes.txt": "mine", "tracks/README.txt": "mine too", "tracks/12/me.jpg": "x", "input/cam.mp4": "y",
            "tracks/abc/1.png": "not a track id"}
    for name, text in mine.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(SinkError, match=r"already holds a run \(index.html, input, summary.json, tracks, "
                                        r"tracks.jsonl\)"):
        RunFolder(tmp_path).open()
    with RunFolder(tmp_path, overwrite=True):
        left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted([*mine, ".lock"])
    assert all((tmp_path / name).read_text() == text for name, text in mine.items())
    assert not (tmp_path / "tracks/1").exists(), "a track folder emptied of our images goes"


@pytest.mark.parametrize("name,text", [
    ("index.html", "<html>my own page</html>"),
    ("summary.json", "not json"),
    ("tracks.jsonl", "[1, 2]\n"),
])
def test_a_users_file_where_a_run_writes_is_refused_and_kept(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    for overwrite in (False, True):
        with pytest.raises(SinkError, match=rf"{tmp_path / name} was not written by this program"):
            DiskSink(tmp_path, S, overwrite=overwrite).open()
    assert (tmp_path / name).read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], "nothing else was created or left"


def test_our_report_is_recognised_by_its_generator_tag(tmp_path: Path) -> None:
    with DiskSink(tmp_path, S) as sink:
        sink.write(make_face())
    write_report(tmp_path)
    assert f'<meta name="generator" content="{REPORT_GENERATOR}">' in (tmp_path / "index.html").read_text()
    (tmp_path / "tracks.jsonl").unlink()
    shutil.rmtree(tmp_path / "tracks")
    with pytest.raises(SinkError, match=r"already holds a run \(index.html\)"):
        RunFolder(tmp_path).open()
    with RunFolder(tmp_path, overwrite=True):
        assert not (tmp_path / "index.html").exists()
