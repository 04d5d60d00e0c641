"""Cameras on a local Ray cluster (pipeline.cluster, run_stream.py --cluster): the same outputs as in
one process, a camera worker killed mid-run resumes, and a run without --cluster never imports Ray."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.cameras import load_cameras
from pipeline.demo import make_demo_clip
from pipeline.run_folder import TRACKS_FILE, load_run
from pipeline.runner import Runner

ROOT = Path(__file__).resolve().parents[1]
# Cheap settings (the distribution is what is tested, not the model); 2 cameras x 0.5 CPU + 1 enhancer
# replica x 1 CPU fit the 2 CPUs of the test cluster.
FAST = ["enhance.method=bicubic", "detect.min_face_size=20", "detect.max_side=320", "output.report=true",
        "runtime.progress=false", "cluster.camera_cpus=0.5", "cluster.enhance_cpus=1"]


@pytest.fixture(scope="module")
def cluster() -> str:
    """A local Ray cluster with 2 CPUs for the module; its address (for a CLI run: RAY_ADDRESS)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e .[cluster] (CI installs it)")
    from pipeline.cluster import RUNTIME_ENV

    ray.init(num_cpus=2, namespace="facesr", include_dashboard=False, logging_level=logging.WARNING,
             runtime_env=RUNTIME_ENV)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def cameras_file(tmp_path: Path, clip: Path) -> Path:
    path = tmp_path / "cameras.yaml"
    path.write_text(f"cameras:\n  - {{id: a, source: {clip}}}\n  - {{id: b, source: {clip}}}\n")
    return path


def lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / TRACKS_FILE).read_text().splitlines()]


def test_workers_and_the_serve_enhancer_write_what_one_process_writes(cluster, tmp_path):
    from pipeline.cluster import ClusterRunner

    clip = make_demo_clip(tmp_path / "clip.mp4", n_frames=24)
    cameras = load_cameras(cameras_file(tmp_path, clip), FAST)
    one = Runner(cameras[0].config, cameras, tmp_path / "one").run()
    summary = ClusterRunner(cameras[0].config, cameras, tmp_path / "ray").run()
    assert summary["failed"] == [] and summary["faces_written"] == one["faces_written"] > 0
    for cam in ("a", "b"):
        expected, got = lines(tmp_path / "one" / cam), lines(tmp_path / "ray" / cam)
        assert got == expected  # tracks.jsonl holds no timings: every record equal
        for rec in (r for r in expected if r["type"] == "face"):
            for key in ("image", "lr_image", "bicubic_image"):
                a = cv2.imread(str(tmp_path / "one" / cam / rec[key])).astype(int)
                b = cv2.imread(str(tmp_path / "ray" / cam / rec[key])).astype(int)
                assert a.shape == b.shape and np.abs(a - b).max() <= 1, rec[key]
        own, theirs = load_run(tmp_path / "ray" / cam).summary, load_run(tmp_path / "one" / cam).summary
        for key in ("state", "frames_decoded", "frames_processed", "faces_detected", "faces_aligned",
                    "faces_written", "faces_not_written", "tracks", "frames_expected", "enhance_method"):
            assert own[key] == theirs[key], key
        assert own["worker_restarts"] == own["enhance_retries"] == 0
        assert set(own["stages"]) >= {"detect", "track", "align", "select", "enhance", "sink"}
        assert own["face_latency_s"]["faces"] == own["faces_written"]
        assert (tmp_path / "ray" / cam / "index.html").is_file()
    assert (tmp_path / "ray" / "index.html").is_file()


def named_worker(ray, camera: str, timeout: float = 120.0):
    """The running worker actor of `camera` (named camera-<id>-<run> in namespace facesr)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["namespace"] == "facesr" and a["name"].startswith(f"camera-{camera}-")]
        if names:
            return ray.get_actor(names[0], namespace="facesr")
        time.sleep(0.2)
    raise AssertionError(f"no worker for camera {camera} within {timeout} s")


def start_cli(cluster: str, tmp_path: Path, frames: int) -> tuple[subprocess.Popen, Path]:
    """run_stream.py --cluster auto on the test cluster (RAY_ADDRESS), cameras a and b on a clip of `frames`."""
    clip = make_demo_clip(tmp_path / "clip.mp4", n_frames=frames)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_stream.py"), "--cameras", str(cameras_file(tmp_path, clip)), "--out",
         str(out), "--cluster", "auto", "-q", *[x for s in FAST for x in ("--set", s)]],
        cwd=ROOT, env={**os.environ, "RAY_ADDRESS": cluster}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    return proc, out


def wait_for_faces(proc: subprocess.Popen, out: Path, cameras: tuple[str, ...], timeout: float = 180.0) -> None:
    """Until every camera in `cameras` has written a face (the run is well under way)."""
    deadline = time.monotonic() + timeout
    while not all((out / cam / TRACKS_FILE).is_file() and (out / cam / TRACKS_FILE).read_text() for cam in cameras):
        assert time.monotonic() < deadline and proc.poll() is None, "no faces written"
        time.sleep(0.05)


def test_a_killed_worker_is_restarted_and_its_camera_resumes(cluster, tmp_path):
    import ray

    frames = 90
    proc, out = start_cli(cluster, tmp_path, frames)
    try:
        worker = named_worker(ray, "a")
        wait_for_faces(proc, out, ("a",))
        ray.kill(worker, no_restart=False)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    a, b = load_run(out / "a"), load_run(out / "b")
    assert a.summary["worker_restarts"] == 1 and b.summary["worker_restarts"] == 0
    assert a.summary["state"] == "finished" and a.summary["error"] is None
    # resumed where it was, not from the start: every frame processed once, no face written twice
    assert a.summary["frames_processed"] == b.summary["frames_processed"] == frames
    faces = [(r.track_id, r.frame_index) for recs in a.tracks().values() for r in recs]
    assert len(faces) == len(set(faces)) and max(f for _, f in faces) >= frames - 5
    assert json.loads((out / "summary.json").read_text())["worker_restarts"] == 1


def test_a_run_without_cluster_never_imports_ray(tmp_path):
    clip = make_demo_clip(tmp_path / "clip.mp4", n_frames=6)
    code = ("import sys, run_stream\n"
            f"rc = run_stream.main(['--source', {str(clip)!r}, '--source', {str(clip)!r}, '--out', "
            f"{str(tmp_path / 'out')!r}, '-q', '--set', 'enhance.method=bicubic'])\n"
            "assert rc == 0, rc\n"
            "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray was imported'\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


def test_sigint_stops_the_workers_drains_and_writes_the_summaries(cluster, tmp_path):
    frames = 400
    proc, out = start_cli(cluster, tmp_path, frames)
    try:
        wait_for_faces(proc, out, ("a", "b"))
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        stdout, stderr = proc.communicate(timeout=60)
        stopped_in = time.monotonic() - t0
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert stopped_in < 15, stopped_in  # the drain is DRAIN_S at most, then the summaries and Ray's goodbye
    overview = json.loads((out / "summary.json").read_text())
    assert overview["interrupted"] and overview["failed"] == []
    for cam in ("a", "b"):
        run = load_run(out / cam)  # valid: every line complete, every image there
        assert run.summary["interrupted"] and run.summary["state"] == "finished"
        assert 0 < run.summary["frames_processed"] < frames
        assert run.summary["faces_written"] == sum(len(recs) for recs in run.tracks().values()) > 0
        assert set(run.track_ends) == set(run.tracks())  # every track written has its end
