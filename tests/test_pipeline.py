"""Config, select and enhance stages, and the whole pipeline end to end (in process and via the CLI)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from pipeline.config import load_config, valid_keys
from pipeline.demo import demo_frames, make_demo_clip
from pipeline.enhance import Enhancer, EnhancerConfig
from pipeline.errors import ConfigError
from pipeline.records import AlignedFace, Detection
from pipeline.recognition import Embedder, Gallery, GalleryMatcher, l2_normalize
from pipeline.run_folder import load_run, validate_record
from pipeline.runner import CameraRun, Pacer, Runner
from pipeline.select import SelectConfig, Selector

ROOT = Path(__file__).resolve().parents[1]
VIDEO = ROOT.parent / "shared" / "data" / "video"


def face(track_id: int, frame_index: int, side: int = 32, quality: float = 0.5, score: float = 0.99,
         box_side: float = 40.0) -> AlignedFace:
    rng = np.random.default_rng(frame_index)
    det = Detection(np.array([0, 0, box_side, box_side]), score, np.zeros((5, 2)))
    crop = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    return AlignedFace(track_id, frame_index, crop, np.eye(2, 3), side, quality, det)


# -- config ---------------------------------------------------------------------------------------
def test_default_yaml_documents_every_key_with_the_code_defaults(tmp_path):
    # The file is comments only (the defaults live in the dataclasses); uncommented, it lists every key
    # with exactly the code's default.
    text = (ROOT / "configs/default.yaml").read_text()
    assert yaml.safe_load(text) is None
    documented = "\n".join(line[2:] for line in text.splitlines() if line.startswith("# "))
    data = yaml.safe_load(documented)
    assert {s: sorted(v) for s, v in data.items()} == {s: sorted(valid_keys(s)) for s in data}
    assert sorted(data) == sorted(load_config(None).to_dict())
    (tmp_path / "documented.yaml").write_text(documented)
    assert load_config(tmp_path / "documented.yaml").to_dict() == load_config(None).to_dict()
    assert load_config(ROOT / "configs/default.yaml").to_dict() == load_config(None).to_dict()


@pytest.mark.parametrize("text,message", [
    ("enhance: {outputsize: 160}", "unknown config key enhance.outputsize"),
    ("detect: {every: two}", "detect.every must be an integer >= 1, got 'two'"),
    ("detect: {every: 0}", "detect.every must be an integer >= 1, got 0"),
    ("detect: {factor: 1.5}", "detect.factor must be in (0, 1), got 1.5"),
    ("runtime: {max_frames: 2.5}", "runtime.max_frames must be an integer >= 1 or null, got 2.5"),
    ("align: {min_size: 4}", "align.min_size must be an integer >= 8, got 4"),
    ("select: 3", "select must be a mapping of keys, got 3"),
    ("track: {max_age: 0}", "track.max_age must be an integer >= 1, got 0"),
    ("track: {low_thresh: 0.99}", "track.low_thresh must be in [0, high_thresh=0.95], got 0.99"),
    ("track: {iou_threshold: 0}", "track.iou_threshold must be in (0, 1], got 0"),
])
def test_preset_errors_name_the_dotted_key(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "bad.yaml")
    assert message in str(err.value)


@pytest.mark.parametrize("preset", ["default", "cctv", "cpu-fast", "small-faces"])
def test_presets_load(preset):
    cfg = load_config(ROOT / f"configs/{preset}.yaml")
    assert cfg.enhance.output_size == 112
    assert cfg.enhance.method == "bicubic" or (ROOT / cfg.enhance.weights).is_file()  # shipped weights only


def test_overrides_and_errors():
    cfg = load_config(None, ["enhance.output_size=160", "detect.every=3", "detect.thresholds=[0.5, 0.6, 0.7]"])
    assert cfg.enhance.output_size == 160 and cfg.track.stride == 3 and cfg.detect.thresholds == (0.5, 0.6, 0.7)
    with pytest.raises(ConfigError, match="unknown config key enhance.outputsize; valid keys in enhance: .*output_size"):
        load_config(None, ["enhance.outputsize=160"])
    with pytest.raises(ConfigError, match="unknown config section 'enhanse'"):
        load_config(None, ["enhanse.output_size=1"])
    with pytest.raises(ConfigError, match="enhance.method must be one of arasfsr, bicubic"):
        load_config(None, ["enhance.method=sharp"])
    with pytest.raises(ConfigError, match="track.stride"):
        load_config(None, ["track.stride=2"])  # derived from detect.every


# -- select ---------------------------------------------------------------------------------------
def test_select_every_k_and_size_and_score_filters():
    sel = Selector(SelectConfig(every_k=2, min_face_size=20, min_score=0.9))
    faces = [face(1, i) for i in range(6)] + [face(2, 0, box_side=10), face(3, 0, score=0.5)]
    assert [f.frame_index for f in sel(faces)] == [0, 2, 4]
    assert sel.skipped == {"too_small": 1, "below_score": 1, "not_selected": 3}


def test_select_best_n_is_emitted_when_the_track_ends():
    sel = Selector(SelectConfig(every_k=0, best_n=2))
    qualities = [0.1, 0.9, 0.3, 0.8, 0.2]
    assert sel([face(7, i, quality=q) for i, q in enumerate(qualities)]) == []
    assert [f.frame_index for f in sel.end_tracks([7])] == [1, 3]
    assert sel.end_tracks([7]) == []  # released
    sel([face(8, 0)])
    assert [f.track_id for f in sel.end_tracks([9, 8])] == [8]


# -- enhance --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["bicubic", "arasfsr"])
@pytest.mark.parametrize("output_size", [112, 150, 160])
def test_enhance_any_crop_size_to_the_output_size(method, output_size, tiny_weights):
    enh = Enhancer(EnhancerConfig(method=method, weights=str(tiny_weights), output_size=output_size, batch_size=2))
    faces = [face(1, 0, side=14), face(1, 1, side=60), face(2, 2, side=14), face(2, 3, side=200), face(3, 4, side=14)]
    out = enh(faces)
    assert [o.face.frame_index for o in out] == [0, 1, 2, 3, 4]  # order kept across size groups and batches
    assert all(o.sr.shape == (output_size, output_size, 3) and o.sr.dtype == np.uint8 for o in out)
    assert out[0].scale == pytest.approx(output_size / 14)


def test_enhance_batches_equal_to_one_at_a_time(tiny_weights):
    enh = Enhancer(EnhancerConfig(method="arasfsr", weights=str(tiny_weights), batch_size=8))
    faces = [face(1, 0, side=20), face(1, 1, side=31), face(2, 2, side=20), face(3, 3, side=14)]  # sizes mixed
    together = enh(faces)  # one model call: every size group encoded, all decoded together
    alone = [enh([f])[0] for f in faces]
    assert all(np.abs(a.sr.astype(int) - b.sr.astype(int)).max() <= 1 for a, b in zip(together, alone))


def test_enhance_bad_weights_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConfigError, match="enhance.weights"):
        Enhancer(EnhancerConfig(method="arasfsr", weights=str(bad)))


# -- end to end -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_clip(tmp_path_factory):
    return make_demo_clip(tmp_path_factory.mktemp("clip") / "demo.mp4", n_frames=30)


def check_run(out: Path, summary: dict, output_size: int) -> list[dict]:
    lines = [json.loads(line) for line in (out / "tracks.jsonl").read_text().splitlines()]
    for rec in lines:
        validate_record(rec)
    records = [r for r in lines if r["type"] == "face"]
    check_track_ends(lines)
    for rec in records:
        img = cv2.imread(str(out / rec["image"]))
        assert img.shape == (output_size, output_size, 3)
    keys = {(r["track_id"], r["frame_index"]) for r in records}
    assert len(keys) == len(records)  # each face written once
    # an id is never reused: a track's faces are never further apart than the tracker keeps a lost track
    cfg = summary["config"]
    max_gap = (cfg["track"]["max_age"] + 1) * cfg["detect"]["every"]
    for tid in {r["track_id"] for r in records}:
        frames = sorted(r["frame_index"] for r in records if r["track_id"] == tid)
        assert all(b - a <= max_gap for a, b in zip(frames, frames[1:])), (tid, frames)
    assert summary["frames_processed"] == summary["frames_decoded"]
    assert summary["tracks"] == len({r["track_id"] for r in records})
    assert json.loads((out / "summary.json").read_text())["faces_written"] == len(records)
    return records


def check_track_ends(lines: list[dict]) -> None:
    """One track_end line per track, after the track's faces, consistent with them."""
    ends = [(i, r) for i, r in enumerate(lines) if r["type"] == "track_end"]
    assert len({r["track_id"] for _, r in ends}) == len(ends)
    faces = [(i, r) for i, r in enumerate(lines) if r["type"] == "face"]
    assert {r["track_id"] for _, r in ends} == {r["track_id"] for _, r in faces}
    for i, end in ends:
        mine = [(j, r) for j, r in faces if r["track_id"] == end["track_id"]]
        frames = [r["frame_index"] for _, r in mine]
        assert max(j for j, _ in mine) < i, "the end comes after the track's last face"
        assert end["faces_written"] == len(mine) <= end["faces_seen"]
        assert end["first_frame"] <= min(frames) and max(frames) <= end["last_frame"] <= end["frame_index"]
        best = max(mine, key=lambda jr: (jr[1]["quality"], -jr[1]["frame_index"]))[1]
        assert (end["best_quality"], end["best_frame"]) == (best["quality"], best["frame_index"])


def test_demo_clip_end_to_end_with_arasfsr(demo_clip, tiny_weights, tmp_path):
    cfg = load_config(ROOT / "configs/default.yaml", ["enhance.method=arasfsr", f"enhance.weights={tiny_weights}",
                                                      "enhance.output_size=150", "runtime.progress=false"])
    out = tmp_path / "run"
    summary = Runner(cfg, str(demo_clip), out).run()
    records = check_run(out, summary, 150)
    assert summary["frames_processed"] == 30 and summary["frames_dropped"] == 0
    assert summary["tracks"] == 1, "one face moving across the frame is one track"
    # the face shrinks from 80 to 16 px: crops shrink, the output size does not
    sizes = [r["crop_size"] for r in records]
    assert sizes[0] > 2.5 * sizes[-1] and all(r["output_size"] == 150 for r in records)
    assert records[-1]["method"] == "arasfsr"
    assert (out / "index.html").is_file()


def test_roi_detects_between_full_detections(demo_clip, tmp_path):
    """detect.every=3: without roi the frames between detections are only predicted; with it the
    tracked face is looked for around its expected box on them too, so about three times the faces
    are detected and written, for a small share of the detector's time."""
    runs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # MTCNN's many small ops: several times faster on a busy machine
    try:
        for roi in (False, True):
            cfg = load_config(ROOT / "configs/default.yaml", ["detect.every=3", f"detect.roi={str(roi).lower()}",
                                                              "detect.device=cpu", "enhance.method=bicubic",
                                                              "select.every_k=1", "runtime.progress=false"])
            out = tmp_path / f"roi_{roi}"
            runs[roi] = Runner(cfg, str(demo_clip), out).run()
            check_run(out, runs[roi], 112)
    finally:
        torch.set_num_threads(threads)
    without, with_roi = runs[False], runs[True]
    assert without["faces_detected"] <= 10 < 2 * without["faces_detected"] <= with_roi["faces_detected"] <= 30
    assert with_roi["faces_written"] > 1.5 * without["faces_written"]
    assert with_roi["tracks"] == without["tracks"] == 1
    assert with_roi["stages"]["detect"]["items"] > without["stages"]["detect"]["items"] == 10


class MeanColour(Embedder):
    """A toy embedder (mean colour), so that recognition runs without dlib."""

    input_size, threshold = 16, 10.0

    def embed(self, face: np.ndarray) -> np.ndarray:
        return l2_normalize(face.reshape(-1, 3).mean(0) + 1.0)


def test_tracks_end_while_the_run_goes_on(tmp_path, monkeypatch):
    """The face leaves for 8 frames and comes back: its first track ends (lost) while the input still
    runs, and its track_end line and final identity are written then, before the second track's first
    face; the second track ends with the input, the same way."""
    frames = list(demo_frames(60))[:36]
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        if 12 <= i < 20:
            frame = np.full_like(frame, 90)  # nobody there
        cv2.imwrite(str(folder / f"{i:03d}.png"), frame)
    out = tmp_path / "run"
    matcher = GalleryMatcher(Gallery.from_images({"astronaut": [frames[0][60:120, 20:80]]}, MeanColour()),
                             MeanColour(), out / "identities.jsonl", overwrite=True)
    monkeypatch.setattr(CameraRun, "_make_matcher", lambda self, detector: matcher)
    cfg = load_config(ROOT / "configs/default.yaml", ["runtime.progress=false", "enhance.method=bicubic",
                                                      "track.max_age=3", "select.every_k=3", "select.best_n=2"])
    summary = Runner(cfg, str(folder), out).run()
    records = check_run(out, summary, 112)
    lines = [json.loads(line) for line in (out / "tracks.jsonl").read_text().splitlines()]
    ends = [r for r in lines if r["type"] == "track_end"]
    assert [(e["track_id"], e["reason"]) for e in ends] == [(1, "lost"), (2, "stream_end")]
    first, second = ends
    assert first["last_frame"] == 11 and first["frame_index"] == 15  # 4 detection frames without the face
    assert second["first_frame"] == 20 and second["last_frame"] == second["frame_index"] == 35
    assert lines.index(first) < min(i for i, r in enumerate(lines) if r["track_id"] == 2)
    # best-N faces come out when the track ends, not only every 3rd face
    assert {r["frame_index"] for r in records if r["track_id"] == 1} - set(range(0, 12, 3))
    events = [json.loads(line) for line in (out / "identities.jsonl").read_text().splitlines()]
    assert [(e["track_id"], e["final"]) for e in events] == [(1, False), (1, True), (2, False), (2, True)]
    run = load_run(out)  # what a user (and the report) reads back
    assert [f.to_dict() for f in run.faces] == records
    assert {t: e.to_dict() for t, e in run.track_ends.items()} == {1: first, 2: second}
    assert run.identities[1].final and run.identities[1].identity == "astronaut"
    assert run.summary["tracks"] == 2 and "tracked frames 0-11" in (out / "index.html").read_text()


@pytest.mark.parametrize("detect,enhance", [(1, 3), (3, 0), (0, 0)])
def test_torch_threads_per_stage(detect, enhance, demo_clip, tmp_path, monkeypatch):
    """detect.threads / enhance.threads set torch's CPU threads of the detecting and the enhance thread
    (0: the count the process had), and the caller's own count comes back after the run."""
    seen: dict[str, set[int]] = {}
    pacer_run = Pacer.run

    def recording_run(self, fn, items, stop):  # Pacer.run is what both stages call, in their own threads
        seen.setdefault(threading.current_thread().name, set()).add(torch.get_num_threads())
        return pacer_run(self, fn, items, stop)

    monkeypatch.setattr(Pacer, "run", recording_run)
    before = torch.get_num_threads()
    cfg = load_config(None, ["runtime.progress=false", "enhance.method=bicubic", "runtime.max_frames=4",
                             f"detect.threads={detect}", f"enhance.threads={enhance}"])
    Runner(cfg, str(demo_clip), tmp_path / "run").run()
    assert seen == {"MainThread": {detect or before}, "enhance": {enhance or before}}
    assert torch.get_num_threads() == before


def test_progress_bar_counts_frames_whose_faces_are_written(demo_clip, tmp_path, monkeypatch):
    """The bar moves when a frame's faces have been enhanced and written (the sink moves it), not when the
    frame is read: with an enhancer slower than the detector it used to reach the end long before the
    faces were written. It ends at the clip's frame count, after the last face."""
    enhance = Enhancer.__call__

    def slow(self, faces):
        time.sleep(0.05)
        return enhance(self, faces)

    monkeypatch.setattr(Enhancer, "__call__", slow)
    seen = []
    advance = Runner._advance

    def recording(self, frames):
        advance(self, frames)
        written = sum(c.counts["faces_written"] for c in self.cameras.values())
        processed = sum(c.counts["frames_processed"] for c in self.cameras.values())
        seen.append((self._bar.n, self._bar.total, written, processed))

    monkeypatch.setattr(Runner, "_advance", recording)
    cfg = load_config(None, ["runtime.progress=true", "enhance.method=bicubic", "runtime.max_frames=24",
                             "detect.batch=2", "enhance.batch_size=1"])
    summary = Runner(cfg, str(demo_clip), tmp_path / "run").run()
    assert summary["faces_written"] > 0
    counts = [n for n, _, _, _ in seen]
    assert counts == sorted(counts) and counts[-1] == seen[-1][1] == 24
    assert all(n <= processed for n, _, _, processed in seen)
    # at 100 % every face is written; a bar of frames read got there with faces still waiting for the enhancer
    assert seen[-1][2] == summary["faces_written"]
    assert seen[len(seen) // 2][2] < summary["faces_written"]


def test_thread_settings_are_checked():
    with pytest.raises(ConfigError, match="enhance.threads"):
        load_config(None, ["enhance.threads=-1"])
    with pytest.raises(ConfigError, match="detect.threads"):
        load_config(None, ["detect.threads=1000"])


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_stream.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_cli_runs_the_demo_source_with_the_shipped_weights(tmp_path):
    out = tmp_path / "demo"
    res = run_cli("--source", "demo", "--out", str(out), "-q", "--set", "runtime.max_frames=8")
    assert res.returncode == 0, res.stderr
    assert "written to" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_processed"] == 8 and summary["enhance_method"] == "arasfsr"
    assert summary["faces_written"] > 0


@pytest.mark.parametrize("args,message", [
    (["--source", "/nonexistent/clip.mp4"], "/nonexistent/clip.mp4"),
    (["--source", "demo", "--set", "enhance.outptu_size=3"], "unknown config key enhance.outptu_size"),
    (["--source", "demo", "--config", "/nonexistent.yaml"], "/nonexistent.yaml"),
    (["--source", "demo", "--set", "enhance.method=arasfsr", "--set", "enhance.weights=README.md"], "enhance.weights"),
])
def test_cli_bad_input_gives_one_line_error(args, message, tmp_path):
    res = run_cli(*args, "--out", str(tmp_path / "o"), "-q")
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_max_frames_is_kept_exactly_whatever_the_detector_batch(tmp_path, demo_clip):
    """runtime.max_frames = 6 with batches of 4 frames: 6 frames, not the 8 of two whole batches."""
    cfg = load_config(None, ["runtime.progress=false", "enhance.method=bicubic", "runtime.max_frames=6",
                             "detect.batch=4"])
    assert Runner(cfg, str(demo_clip), tmp_path / "run").run()["frames_processed"] == 6


def test_cli_refuses_to_overwrite_a_previous_run(tmp_path, demo_clip):
    out = tmp_path / "o"
    assert run_cli("--source", str(demo_clip), "--out", str(out), "-q", "--set", "runtime.max_frames=4").returncode == 0
    before = (out / "tracks.jsonl").read_bytes()
    res = run_cli("--source", str(demo_clip), "--out", str(out), "-q")
    assert res.returncode != 0 and "already holds a run" in res.stderr
    assert (out / "tracks.jsonl").read_bytes() == before  # nothing already written is lost


def test_cli_unwritable_output_is_a_clean_error(tmp_path, demo_clip):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = run_cli("--source", str(demo_clip), "--out", str(blocker / "sub"), "-q")
    assert res.returncode != 0 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr


# -- shared videos (development data; skipped when absent) ---------------------------------------
def shared_video(name: str) -> Path:
    path = VIDEO / name
    if not path.is_file():
        pytest.skip(f"shared video {path} not present (development data is not committed)")
    return path


@pytest.mark.parametrize("name,overrides", [
    ("cctv_walking_270p.mp4", []),
    ("cctv_classroom_270p.mp4", []),
    ("stage_360p_two_faces.mp4", ["detect.every=5", "detect.min_face_size=28"]),
    ("arcade_1080p_multiface.mp4", ["detect.every=3", "detect.max_side=960"]),
])
def test_shared_video_end_to_end(name, overrides, tmp_path):
    import av

    path = shared_video(name)
    with av.open(str(path)) as c:
        in_file = sum(1 for _ in c.decode(video=0))
    # bicubic keeps CI time bounded on 2 cores (hundreds of faces); ARASFSR runs in the demo-clip tests
    cfg = load_config(ROOT / "configs/default.yaml", ["runtime.progress=false", "enhance.method=bicubic", *overrides])
    out = tmp_path / "run"
    summary = Runner(cfg, str(path), out).run()
    records = check_run(out, summary, 112)
    assert summary["frames_processed"] == in_file, "a file input must not lose a frame"
    assert summary["faces_detected"] > 0 and records


def test_no_faces_clip_gives_zero_tracks_and_exit_0(tmp_path):
    path = shared_video("cctv_no_faces_432p.mp4")
    out = tmp_path / "run"
    res = run_cli("--source", str(path), "--out", str(out), "-q", "--set", "detect.every=25", "--set", "enhance.method=bicubic",
                  "--set", "detect.min_face_size=20", "--set", "detect.max_side=480")
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tracks"] == 0 and summary["frames_processed"] == summary["frames_decoded"]


def test_pacer_sizes_calls_to_about_call_s_and_stops_between_calls(monkeypatch):
    """Items that cost 0.2 s each (a fake clock): calls of 2 fit CALL_S = 0.5 s, free items ride along, and
    no call starts after a stop request."""
    import pipeline.runner as runner_module

    clock = [0.0]
    monkeypatch.setattr(runner_module.time, "perf_counter", lambda: clock[0])
    calls: list[list[str]] = []
    stop = threading.Event()

    def work(items: list[str]) -> list[str]:
        calls.append(items)
        clock[0] += 0.2 * sum(x == "model" for x in items)
        if len(calls) == 3:
            stop.set()
        return [x.upper() for x in items]

    pacer = Pacer(most=32, weight=lambda x: int(x == "model"))
    out, seconds = pacer.run(work, ["model", "model", "free", "model", "model", "free", "model", "model"], stop)
    assert calls == [["model"], ["model", "free", "model"], ["model", "free", "model"]]
    assert out == ["MODEL", "MODEL", "FREE", "MODEL", "MODEL", "FREE", "MODEL"] and seconds == pytest.approx(1.0)
    assert Pacer(most=3).run(lambda xs: xs, list(range(20)), threading.Event())[0] == list(range(20))


def test_pacer_splits_what_one_call_cannot_hold_into_equal_calls(monkeypatch):
    """Items costing a third of CALL_S each (a fake clock): calls hold 3; 4 items go as 2 + 2, not 3 + 1, and 7 as
    3 + 2 + 2: fewer distinct batch shapes for the detector (its pyramid tensors change size with them)."""
    import pipeline.runner as runner_module

    clock = [0.0]
    monkeypatch.setattr(runner_module.time, "perf_counter", lambda: clock[0])
    calls: list[list[int]] = []

    def work(items: list[int]) -> list[int]:
        calls.append(items)
        clock[0] += len(items) * runner_module.CALL_S / 3
        return items

    pacer = Pacer(most=4)
    pacer.size = 3
    assert pacer.run(work, [0, 1, 2, 3], threading.Event())[0] == [0, 1, 2, 3]
    assert calls == [[0, 1], [2, 3]] and pacer.size == 3
    calls.clear()
    assert pacer.run(work, list(range(7)), threading.Event())[0] == list(range(7))
    assert calls == [[0, 1, 2], [3, 4], [5, 6]]
