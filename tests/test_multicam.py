"""Many cameras in one process (pipeline.cameras, Runner with a list of cameras): the cameras file's
checks, outputs per camera equal to single-camera runs, a camera that fails alone, and live metrics."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.cameras import SHARED, load_cameras
from pipeline.config import load_config
from pipeline.demo import make_demo_clip
from pipeline.errors import ConfigError
from pipeline.metrics import MetricsServer
from pipeline.run_folder import load_run
from pipeline.runner import Runner

ROOT = Path(__file__).resolve().parents[1]
# Cheap settings: the shared stages are what is tested, not the model.
FAST = ["enhance.method=bicubic", "detect.min_face_size=20", "detect.max_side=320", "output.report=true",
        "runtime.progress=false"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_demo_clip(tmp_path_factory.mktemp("multicam") / "clip.mp4", n_frames=24)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cameras.yaml"
    path.write_text(text)
    return path


def test_the_example_cameras_file_loads_with_per_camera_settings():
    lobby, door, gate = load_cameras(ROOT / "configs/cameras.example.yaml")
    preset = load_config(ROOT / "configs/cctv.yaml")
    assert (lobby.id, door.id, gate.id) == ("lobby", "door", "gate")
    assert preset.detect.motion and lobby.config.detect.motion and not gate.config.detect.motion  # a panning camera
    assert lobby.config.detect.min_face_size == 16 != preset.detect.min_face_size
    assert door.config.detect.min_face_size == preset.detect.min_face_size  # only lobby's changed
    assert door.config.detect.motion_ignore == ((0.0, 0.0, 0.3, 0.06),) and lobby.config.detect.motion_ignore == ()
    assert door.config.select.best_n == 3 and lobby.config.select.best_n == preset.select.best_n
    assert door.source == "recordings/door.mp4" and door.config.source.queue_size == 16  # the long form
    assert lobby.config.source.queue_size == preset.source.queue_size
    assert lobby.config.enhance == preset.enhance  # the rest is the preset's


def test_set_overrides_apply_to_every_camera_under_its_own_settings(tmp_path):
    path = write(tmp_path, "cameras:\n  - {id: a, source: a.mp4, detect: {min_face_size: 30}}\n"
                           "  - {id: b, source: b.mp4}\n")
    a, b = load_cameras(path, ["detect.every=3", "detect.min_face_size=20"])
    assert (a.config.detect.min_face_size, a.config.detect.every) == (30, 3)  # the camera's own setting wins
    assert (b.config.detect.min_face_size, b.config.detect.every) == (20, 3)


@pytest.mark.parametrize("text, message", [
    ("cameras: []\n", "cameras must be a non-empty list"),
    ("camera:\n  - {id: a, source: a.mp4}\n", "unknown key 'camera'; valid keys: config, cameras"),
    ("cameras:\n  - {id: a, source: a.mp4}\n  - {id: a, source: b.mp4}\n", "camera id 'a' is used twice"),
    ("cameras:\n  - {id: 'front door', source: a.mp4}\n", "id must be letters, digits"),
    ("cameras:\n  - {id: a}\n", "cameras[0] (a): source must be"),
    ("cameras:\n  - {id: a, source: {queue_size: 3}}\n", "cameras[0] (a): source must be"),
    ("cameras:\n  - {id: a, source: {uri: a.mp4, queue_sise: 3}}\n", "unknown config key source.queue_sise"),
    ("cameras:\n  - {id: a, source: a.mp4, detect: {min_fac_size: 3}}\n", "unknown config key detect.min_fac_size"),
    ("cameras:\n  - {id: a, source: a.mp4, detect: {every: 0}}\n", "cameras[0] (a): detect.every must be an integer >= 1"),
    ("cameras:\n  - {id: a, source: a.mp4, detect: {threads: 2}}\n", "detect.threads is shared by all cameras"),
    ("cameras:\n  - {id: a, source: a.mp4, runtime: {max_frames: 2}}\n", "runtime.max_frames is shared by all cameras"),
    ("config: nowhere.yaml\ncameras:\n  - {id: a, source: a.mp4}\n", "nowhere.yaml not found"),
])
def test_cameras_file_mistakes_are_config_errors_naming_the_camera_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as exc:
        load_cameras(write(tmp_path, text))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_every_shared_key_exists():
    """SHARED names real settings (a renamed key must not leave a check that can never fire)."""
    cfg = load_config()
    for section, keys in SHARED.items():
        for key in keys or ():
            assert hasattr(getattr(cfg, section), key), f"{section}.{key}"


def test_cli_refuses_a_bad_cameras_file_in_one_line(tmp_path):
    path = write(tmp_path, "cameras:\n  - {id: a, source: a.mp4}\n  - {id: a, source: b.mp4}\n")
    res = subprocess.run([sys.executable, str(ROOT / "run_stream.py"), "--cameras", str(path), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1
    assert "camera id 'a' is used twice" in res.stderr
    assert not (tmp_path / "out").exists()  # nothing was started


def face_lines(folder: Path) -> list[tuple]:
    run = load_run(folder)
    return [(r.track_id, r.frame_index, r.method, r.crop_size) for recs in run.tracks().values() for r in recs]


@pytest.mark.parametrize("workers", [1, 2])
def test_cameras_share_the_stages_and_write_what_single_runs_write(clip, tmp_path, workers):
    """Two cameras on the same clip in one process (one detecting thread: their frames detected in the
    same calls; two: each camera in its own thread at a time) write the same faces as a run of the clip
    alone; a third, missing file fails alone."""
    single = Runner(load_config(None, FAST), str(clip), tmp_path / "single").run()
    expected = face_lines(tmp_path / "single")
    assert expected and single["faces_written"] == len(expected)

    path = write(tmp_path, f"cameras:\n  - {{id: a, source: {clip}}}\n  - {{id: b, source: {clip}}}\n"
                           f"  - {{id: gone, source: {tmp_path / 'missing.mp4'}}}\n")
    cameras = load_cameras(path, [*FAST, f"detect.workers={workers}"])
    runner = Runner(cameras[0].config, cameras, tmp_path / "multi")
    summary = runner.run()
    assert runner.failed == ["gone"] and summary["failed"] == ["gone"]
    for cam in ("a", "b"):
        assert face_lines(tmp_path / "multi" / cam) == expected
        run = load_run(tmp_path / "multi" / cam)
        assert {r.camera for recs in run.tracks().values() for r in recs} == {cam}
        assert {e.camera for e in run.track_ends.values()} == {cam}
        assert run.summary["camera"] == cam and run.summary["state"] == "finished"
        assert run.summary["frames_processed"] == single["frames_processed"]
        assert summary["cameras"][cam]["faces_written"] == single["faces_written"]
        assert (tmp_path / "multi" / cam / "index.html").is_file()
    gone = json.loads((tmp_path / "multi/gone/summary.json").read_text())
    assert gone["state"] == "failed" and "missing.mp4" in gone["error"] and gone["frames_decoded"] == 0
    assert summary["faces_written"] == 2 * single["faces_written"]
    index = (tmp_path / "multi/index.html").read_text()
    assert all(f'href="{cam}/index.html"' in index for cam in ("a", "b", "gone"))


def test_a_camera_that_fails_makes_the_cli_exit_3_naming_it(clip, tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(ROOT / "run_stream.py"), "--source", str(clip), "--source",
                          "rtsp://admin:hunter2@127.0.0.1:9/none", "--out", str(out), "-q",
                          "--set", "source.first_frame_timeout=2", "--set", "source.open_timeout=1",
                          *[x for s in FAST for x in ("--set", s)]],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 3, res.stderr
    assert "error: camera cam2 failed: rtsp://admin:***@127.0.0.1:9/none" in res.stderr
    assert "hunter2" not in res.stderr + res.stdout + (out / "summary.json").read_text()
    assert "Traceback" not in res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == ["cam2"] and summary["cameras"]["cam1"]["state"] == "finished"
    assert summary["cameras"]["cam1"]["faces_written"] > 0


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_endpoint_serves_the_summary_numbers_of_each_camera(clip, tmp_path):
    cameras = load_cameras(write(tmp_path, f"cameras:\n  - {{id: a, source: {clip}}}\n"
                                           f"  - {{id: b, source: {clip}, detect: {{every: 2}}}}\n"), FAST)
    runner = Runner(cameras[0].config, cameras, tmp_path / "out")
    with MetricsServer(0, runner.snapshot) as server:
        summary = runner.run()
        values = scrape(server.url)
    for cam in ("a", "b"):
        own = json.loads((tmp_path / "out" / cam / "summary.json").read_text())
        for key in ("frames_decoded", "frames_processed", "frames_dropped", "reconnects", "faces_detected",
                    "faces_written"):
            assert values[(f"facesr_{key}_total", (("camera", cam),))] == own[key] == summary["cameras"][cam][key]
        assert values[("facesr_camera_state", (("camera", cam), ("state", "finished")))] == 1
        calls = values[("facesr_stage_seconds_count", (("camera", cam), ("stage", "detect")))]
        assert calls >= 1
        assert values[("facesr_stage_seconds_sum", (("camera", cam), ("stage", "detect")))] == \
            pytest.approx(own["stages"]["detect"]["seconds"], abs=2e-3)
    # camera b detects every 2nd frame: half the detections of a, on the same clip
    assert summary["cameras"]["b"]["frames_processed"] == summary["cameras"]["a"]["frames_processed"]


def test_scheduler_never_gives_a_camera_to_two_threads_and_serves_every_camera():
    """Four threads claiming and releasing five cameras as fast as they can: no camera is ever held by two
    threads at once (its frames would be tracked out of order), and every camera is served about as often."""
    import threading
    import time

    from pipeline.runner import CameraScheduler

    cams = [f"cam{i}" for i in range(5)]
    sched = CameraScheduler(cams, share=2)
    held: dict[str, int] = dict.fromkeys(cams, 0)
    served: dict[str, int] = dict.fromkeys(cams, 0)
    clashes = []
    lock = threading.Lock()
    stop = time.monotonic() + 1.0

    def worker():
        while time.monotonic() < stop:
            got = sched.claim(0.1)
            with lock:
                for c in got:
                    held[c] += 1
                    served[c] += 1
                    if held[c] > 1:
                        clashes.append(c)
            time.sleep(0.001)
            with lock:
                for c in got:
                    held[c] -= 1
            sched.release(got)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not clashes
    assert min(served.values()) > 0.5 * max(served.values()), served
    sched.release([], ended=cams)
    assert sched.claim(0.1) is None  # every camera ended: the threads stop


def test_scheduler_prefers_cameras_with_frames_and_waits_while_all_are_held():
    from pipeline.runner import CameraScheduler

    ready = {"a": False, "b": True, "c": True}
    sched = CameraScheduler(list(ready), share=2, ready=lambda c: ready[c])
    assert sched.claim(0) == ["b", "c"]  # "a" has nothing decoded
    assert sched.claim(0) == ["a"]
    assert sched.claim(0.05) == []  # all held
