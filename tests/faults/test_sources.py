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
