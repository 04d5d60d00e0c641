"""`run_stream.py` run in the background as a user runs it, for the fault tests that act on a run
while it goes (signals, a second run on its folder), and the check of what it left on disk."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from pipeline.run_folder import validate_record

ROOT = Path(__file__).resolve().parents[2]


class Run:
    """`run_stream.py` in the background, as a user starts it; stdout and stderr go to files read while it runs."""

    def __init__(self, source: Path | str, out: Path, *args: str) -> None:
        self.out, self.log, self.out_log = out, out.with_suffix(".stderr"), out.with_suffix(".stdout")
        with open(self.log, "w") as stderr, open(self.out_log, "w") as stdout:
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "run_stream.py"), "--source", str(source),
                                          "--out", str(out), "-q", *args], cwd=ROOT, stdout=stdout, stderr=stderr)

    @property
    def stderr(self) -> str:
        return self.log.read_text()

    @property
    def stdout(self) -> str:
        return self.out_log.read_text()

    def wait_for(self, predicate, what: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended before {what}: {self.stderr}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.02)

    def faces_on_disk(self) -> int:
        try:
            return (self.out / "tracks.jsonl").read_bytes().count(b'"type": "face"')
        except FileNotFoundError:
            return 0

    def stop(self, *signals: signal.Signals) -> float:
        """Send the signals, each once the run has acted on the one before (two signals close together
        would reach Python as one); seconds from the last one to the exit."""
        for i, sig in enumerate(signals):
            if i:
                self.wait_for(lambda: self.stderr.count(" received: stopping") >= i, f"{signals[i - 1].name}'s effect")
            self.proc.send_signal(sig)
        sent = time.monotonic()
        try:
            self.proc.wait(timeout=120)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return time.monotonic() - sent


def check_records(out: Path) -> list[dict]:
    """Every tracks.jsonl line parses and is valid, and every image it names exists and opens."""
    lines = [json.loads(line) for line in (out / "tracks.jsonl").read_text().splitlines()]
    faces = [r for r in lines if r["type"] == "face"]
    for rec in lines:
        validate_record(rec)
    for rec in faces:
        for key in ("image", "lr_image", "bicubic_image"):
            assert cv2.imread(str(out / rec[key])) is not None, rec[key]
    return faces
