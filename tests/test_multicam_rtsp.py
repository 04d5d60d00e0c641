"""Many live cameras in one process against real RTSP servers (GStreamer on 127.0.0.1): four cameras
and a file; one camera dies mid-run and comes back (it reconnects, the others go on undisturbed); a
camera that never answers fails alone, its URL masked; the metrics endpoint answers a plain HTTP
scrape with every camera's series; SIGINT stops the whole run within seconds."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from pipeline.demo import make_demo_clip
from pipeline.run_folder import load_run
from tests.rtsp_server import free_port
from tests.test_pipeline_rtsp import records, wait_for

ROOT = Path(__file__).resolve().parents[1]
LIVE = ("cam0", "cam1", "cam2", "cam3")
MOVING = ("cam0", "cam2")  # detect where the picture moved (cam0 is the one that restarts)
MOTION = ", detect: {motion: true, motion_full_every: 5}"


def scrape(url: str) -> dict[tuple[str, str], float]:
    """(series, camera) -> value of the per-camera series."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, s.labels.get("camera", "")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if family.name.startswith("facesr_") and "stage" not in s.labels and "state" not in s.labels}


def test_four_cameras_and_a_file_in_one_process_survive_a_camera_restart(rtsp_server, tmp_path):
    fps = 10
    video = make_demo_clip(tmp_path / "camera.mp4", n_frames=60, fps=fps)
    short = make_demo_clip(tmp_path / "file.mp4", n_frames=24, fps=fps)  # the file camera: read to its end
    servers = [rtsp_server(video=video) for _ in LIVE]
    dead = f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/never"
    cameras = tmp_path / "cameras.yaml"
    cameras.write_text("cameras:\n"
                       + "".join(f"  - {{id: {cam}, source: '{s.url}'{MOTION if cam in MOVING else ''}}}\n"
                                 for cam, s in zip(LIVE, servers))
                       + f"  - {{id: file, source: '{short}', detect: {{every: 1}}}}\n"
                       + f"  - {{id: dead, source: {{uri: '{dead}', first_frame_timeout: 3}}}}\n")
    out, port = tmp_path / "site", free_port()
    cmd = [sys.executable, str(ROOT / "run_stream.py"), "--cameras", str(cameras), "--out", str(out), "-q",
           "--metrics-port", str(port)]
    for setting in ("source.queue_size=4", "source.read_timeout=3", "source.backoff_max=2", "source.open_timeout=2",
                    "source.first_frame_timeout=20", "detect.min_face_size=20", "detect.every=2",
                    "track.min_hits=1", "enhance.method=bicubic", "output.save_comparison=false"):
        cmd += ["--set", setting]
    url = f"http://127.0.0.1:{port}/metrics"
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: all(records(out / cam) for cam in LIVE) or proc.poll() is not None, 150,
                 "faces from every live camera")
        assert proc.poll() is None, proc.communicate()[1]
        servers[0].kill()  # cam0 loses power
        decoded_bound = int(fps * (time.monotonic() - started)) + 2 * fps
        before = scrape(url)
        time.sleep(4.0)
        during = scrape(url)
        servers[0].start()  # and comes back on the same address
        wait_for(lambda: max(r["frame_index"] for r in records(out / "cam0")) > decoded_bound
                 or proc.poll() is not None, 150, "cam0's faces after its reconnect")
        assert proc.poll() is None, proc.communicate()[1]
        # a camera whose input ends is reported at once, while the others go on
        wait_for(lambda: (out / "file/summary.json").is_file() or proc.poll() is not None, 240, "the file's end")
        assert proc.poll() is None, proc.communicate()[1]
        values = scrape(url)
        stop_at = time.monotonic()
        proc.send_signal(signal.SIGINT)  # the operator stops the site
        _, stderr = proc.communicate(timeout=60)
        stop_s = time.monotonic() - stop_at
    finally:
        if proc.poll() is None:
            proc.kill()

    assert proc.returncode == 3, stderr  # one camera failed: the run says so
    assert "error: camera dead failed: rtsp://admin:***@127.0.0.1" in stderr and "hunter2" not in stderr
    assert "Traceback" not in stderr
    assert stop_s < 30, f"SIGINT took {stop_s:.1f} s"
    # the others kept decoding while cam0 was down
    for cam in LIVE[1:]:
        assert during[("facesr_frames_decoded_total", cam)] > before[("facesr_frames_decoded_total", cam)], cam
    # the endpoint serves every camera's series
    for cam in (*LIVE, "file", "dead"):
        for series in ("facesr_frames_decoded_total", "facesr_frames_processed_total", "facesr_frames_dropped_total",
                       "facesr_reconnects_total", "facesr_faces_detected_total", "facesr_faces_written_total",
                       "facesr_queue_depth", "facesr_camera_up"):
            assert (series, cam) in values, (series, cam)
    assert values[("facesr_camera_up", "dead")] == 0
    # each live camera's noise, measured on its own stream between its key frames (every 0.5 s); none for the
    # camera that never delivered a frame
    for cam in LIVE:
        assert 0 <= values[("facesr_camera_noise_sigma", cam)] < 20, cam
    assert ("facesr_camera_noise_sigma", "dead") not in values

    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == ["dead"] and summary["interrupted"] is True
    assert "hunter2" not in (out / "summary.json").read_text() + (out / "dead/summary.json").read_text()
    for cam in (*LIVE, "file"):
        run = load_run(out / cam)
        own = run.summary
        assert own["error"] is None and own["state"] == "finished", (cam, own["error"])
        assert own["faces_written"] == sum(len(v) for v in run.tracks().values()) > 0
        # no frame lost beyond what the camera itself dropped, and what was in flight at the stop: its queue
        # (source.queue_size) and the frames read for the detector call the stop cut short (detect.batch)
        assert own["frames_decoded"] - own["frames_processed"] - own["frames_dropped"] <= 4 + 4, cam
        assert own["reconnects"] == (own["reconnects"] if cam == "cam0" else 0)
        # detect.motion, per camera: a moving camera detects in parts (every 5th detection whole), the others never
        assert (own["frames_detected_in_parts"] > 0) is (cam in MOVING), cam
        assert values[("facesr_frames_detected_in_parts_total", cam)] <= own["frames_detected_in_parts"]
    assert load_run(out / "cam0").summary["reconnects"] >= 1
    assert load_run(out / "file").summary["frames_processed"] == 24  # the file was read to its end
