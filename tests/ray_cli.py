"""What the Ray tests share (tests/test_cluster.py, tests/faults/test_ray.py): `run_stream.py --cluster auto`
started as a user starts it, joining the test's cluster (conftest.ray_cluster) through RAY_ADDRESS.

The CLI is always a separate process: each process uploads the project's code to the cluster with its job
(pipeline.cluster.runtime_env()), and Ray remembers an upload per process, not per cluster, so a second cluster in
the test process would miss it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.demo import make_demo_clip

ROOT = Path(__file__).resolve().parents[1]
# Cheap settings (the distribution is what is tested, not the model); 2 cameras x 0.5 CPU + 1 enhancer
# replica x 1 CPU fit the 2 CPUs of the test cluster.
FAST = ["enhance.method=bicubic", "detect.min_face_size=20", "detect.max_side=320", "output.report=true",
        "runtime.progress=false", "cluster.camera_cpus=0.5", "cluster.enhance_cpus=1"]


def cameras_file(tmp_path: Path, clip: Path) -> Path:
    """Cameras a and b, both showing `clip`."""
    path = tmp_path / "cameras.yaml"
    path.write_text(f"cameras:\n  - {{id: a, source: {clip}}}\n  - {{id: b, source: {clip}}}\n")
    return path


def start_cli(cluster: str, tmp_path: Path, frames: int, *extra: str) -> tuple[subprocess.Popen, Path]:
    """run_stream.py --cluster auto on the cluster at `cluster`, cameras a and b on a generated clip of
    `frames` frames, FAST settings then `extra` arguments; the process and its output folder."""
    clip = make_demo_clip(tmp_path / "clip.mp4", n_frames=frames)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_stream.py"), "--cameras", str(cameras_file(tmp_path, clip)), "--out",
         str(out), "--cluster", "auto", "-q", *[x for s in FAST for x in ("--set", s)], *extra],
        cwd=ROOT, env={**os.environ, "RAY_ADDRESS": cluster}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    return proc, out
