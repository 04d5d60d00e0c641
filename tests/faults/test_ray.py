"""run_stream.py --cluster against faults, as a user runs it (on the test's local Ray cluster, joined through
RAY_ADDRESS): a camera worker killed mid-run is restarted and its camera resumes; SIGINT drains and writes the
summaries; an enhancer replica that dies loses no face (its requests are sent again); a cluster too small
for the cameras is one error line."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from ray_cli import start_cli

from pipeline.run_folder import TRACKS_FILE, load_run


def alive(proc: subprocess.Popen) -> bool:
    """The run is still going; else fail with what it said."""
    if proc.poll() is None:
        return True
    raise AssertionError(f"the run ended (exit {proc.returncode}): {proc.stderr.read()[-3000:]}")


def named_worker(ray, proc: subprocess.Popen, camera: str, timeout: float = 120.0):
    """The running worker actor of `camera` (named camera-<id>-<run> in namespace facesr)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(proc):
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["namespace"] == "facesr" and a["name"].startswith(f"camera-{camera}-")]
        if names:
            return ray.get_actor(names[0], namespace="facesr")
        time.sleep(0.2)
    raise AssertionError(f"no worker for camera {camera} within {timeout} s")


def wait_for_faces(proc: subprocess.Popen, out: Path, cameras: tuple[str, ...], timeout: float = 180.0) -> None:
    """Until every camera in `cameras` has written a face (the run is well under way)."""
    deadline = time.monotonic() + timeout
    while not all((out / cam / TRACKS_FILE).is_file() and (out / cam / TRACKS_FILE).read_text() for cam in cameras):
        assert time.monotonic() < deadline and alive(proc), "no faces written"
        time.sleep(0.05)


def test_a_killed_worker_is_restarted_and_its_camera_resumes(ray_cluster, tmp_path):
    import ray

    frames = 90
    proc, out = start_cli(ray_cluster, tmp_path, frames)
    try:
        worker = named_worker(ray, proc, "a")
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


def test_sigint_stops_the_workers_drains_and_writes_the_summaries(ray_cluster, tmp_path):
    frames = 400
    proc, out = start_cli(ray_cluster, tmp_path, frames)
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


def test_a_cluster_too_small_for_the_cameras_is_one_error_line(ray_cluster, tmp_path):
    proc, out = start_cli(ray_cluster, tmp_path, 6, "--set", "cluster.camera_cpus=2")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in stderr
    error = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert error == ["error: the cluster has 2 CPUs, the run asks for 5: 2 cameras x cluster.camera_cpus (2) + "
                     "1 enhancer replicas x cluster.enhance_cpus (1); lower them or add nodes"]


def serve_replica(ray, proc: subprocess.Popen, timeout: float = 120.0):
    """The running replica of this run's enhancer (a Serve actor in namespace serve)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(proc):
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["namespace"] == "serve" and "facesr-enhance-" in a["name"] and "EnhanceService" in a["name"]]
        if names:
            return ray.get_actor(names[0], namespace="serve")
        time.sleep(0.2)
    raise AssertionError(f"no enhancer replica within {timeout} s")


def test_an_enhancer_replica_that_dies_loses_no_face(ray_cluster, tmp_path):
    import ray

    # The full ARASFSR decoder, one face per call, is far slower than the workers: faces are waiting at
    # the replica (and in front of it) when it is killed.
    frames = 20
    proc, out = start_cli(ray_cluster, tmp_path, frames, "--set", "enhance.method=arasfsr", "--set",
                          "enhance.batch_size=1")
    try:
        replica = serve_replica(ray, proc)
        wait_for_faces(proc, out, ("a",))  # the first face: the others wait for the enhancer
        ray.kill(replica, no_restart=True)  # Serve starts another one
        written_before = sum(len((out / cam / TRACKS_FILE).read_text().splitlines()) for cam in ("a", "b")
                             if (out / cam / TRACKS_FILE).is_file())
        _, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    a, b = load_run(out / "a").summary, load_run(out / "b").summary
    # Requests the dead replica held were sent again: by Serve's router, or by the driver when the error
    # reached it (counted in enhance_retries); either way every face was written after the kill.
    assert a["faces_written"] + b["faces_written"] > written_before
    # the same clip on both cameras: the same faces written, none skipped
    assert a["faces_written"] == b["faces_written"] > 0
    assert a["faces_skipped_at_stop"] == b["faces_skipped_at_stop"] == 0
    assert a["frames_processed"] == b["frames_processed"] == frames
