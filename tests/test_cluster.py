"""Cameras on a local Ray cluster (pipeline.cluster, run_stream.py --cluster): the same outputs as in
one process, and a run without --cluster never imports Ray. Faults (a worker killed, SIGINT, a cluster too
small): tests/faults/test_ray.py."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from ray_cli import FAST, start_cli

from pipeline.cameras import load_cameras
from pipeline.demo import make_demo_clip
from pipeline.run_folder import TRACKS_FILE, load_run
from pipeline.runner import Runner
from tests.test_soak import needs_jemalloc

ROOT = Path(__file__).resolve().parents[1]


def lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / TRACKS_FILE).read_text().splitlines()]


def close(a, b, tol: float = 0.02) -> bool:
    """Records equal, numbers within `tol`: MTCNN's boxes move by ~1e-5 px with the batch a frame shares (one
    detector for two cameras here, one per worker there), which can flip a rounded digit."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= tol
    return a == b


def test_close_records():
    rec = {"bbox": [87.34, 99.31], "det_score": 1.0, "crop_size": 143, "image": "tracks/1/2.png", "qp": None}
    assert close(rec, {**rec, "bbox": [87.35, 99.31]})
    assert not close(rec, {**rec, "bbox": [87.40, 99.31]})
    assert not close(rec, {**rec, "crop_size": 144}) and not close(rec, {**rec, "image": "tracks/1/3.png"})
    assert not close(rec, {**rec, "qp": 0.0}) and not close(rec, {k: v for k, v in rec.items() if k != "qp"})


def test_workers_and_the_serve_enhancer_write_what_one_process_writes(ray_cluster, tmp_path):
    limit = "runtime.max_frames=20"  # of 24 frames: the limit is kept too
    proc, out = start_cli(ray_cluster, tmp_path, 24, "--set", limit)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    cameras = load_cameras(tmp_path / "cameras.yaml", [*FAST, limit])
    one = Runner(cameras[0].config, cameras, tmp_path / "one").run()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == [] and summary["faces_written"] == one["faces_written"] > 0
    for cam in ("a", "b"):
        expected, got = lines(tmp_path / "one" / cam), lines(out / cam)
        assert len(got) == len(expected)  # tracks.jsonl holds no timings: every record equal (close)
        for a, b in zip(got, expected):
            assert close(a, b), (a, b)
        for rec in (r for r in expected if r["type"] == "face"):
            for key in ("image", "lr_image", "bicubic_image"):
                a = cv2.imread(str(tmp_path / "one" / cam / rec[key])).astype(int)
                b = cv2.imread(str(out / cam / rec[key])).astype(int)
                assert a.shape == b.shape and np.abs(a - b).max() <= 1, rec[key]
        own, theirs = load_run(out / cam).summary, load_run(tmp_path / "one" / cam).summary
        for key in ("state", "frames_decoded", "frames_processed", "faces_detected", "faces_aligned",
                    "faces_written", "faces_not_written", "tracks", "frames_expected", "enhance_method", "noise_sigma"):
            assert own[key] == theirs[key], key
        assert own["frames_processed"] == 20 and own["worker_restarts"] == own["enhance_retries"] == 0
        assert set(own["stages"]) >= {"detect", "track", "align", "select", "enhance", "sink"}
        assert own["face_latency_s"]["faces"] == own["faces_written"]
        assert (out / cam / "index.html").is_file()
    assert (out / "index.html").is_file()


def processes(title: str) -> dict[int, str]:
    """pid -> /proc/pid/maps of this machine's processes whose command line (Ray's title for an actor's
    process: ray::CameraWorker...) contains `title`."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and title in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found[int(proc.name)] = (proc / "maps").read_text()
        except OSError:  # gone meanwhile
            continue
    return found


@needs_jemalloc
def test_camera_workers_and_the_enhancer_run_under_jemalloc_like_one_process(ray_cluster, tmp_path):
    # the test's cluster was started by pytest, without jemalloc: only the job's runtime env can preload it
    proc, _ = start_cli(ray_cluster, tmp_path, 600)
    try:
        deadline = time.monotonic() + 120
        while len(workers := processes("ray::CameraWorker")) < 2 or not (replicas := processes("ray::ServeReplica")):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no camera workers and enhancer within 120 s"
            time.sleep(0.2)
        assert all("libjemalloc" in maps for maps in workers.values()), sorted(workers)
        assert all("libjemalloc" in maps for maps in replicas.values()), sorted(replicas)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)


def test_a_run_without_cluster_never_imports_ray(tmp_path):
    clip = make_demo_clip(tmp_path / "clip.mp4", n_frames=6)
    code = ("import sys, run_stream\n"
            f"rc = run_stream.main(['--source', {str(clip)!r}, '--source', {str(clip)!r}, '--out', "
            f"{str(tmp_path / 'out')!r}, '-q', *{[x for s in FAST for x in ('--set', s)]!r}])\n"
            "assert rc == 0, rc\n"
            "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray was imported'\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
