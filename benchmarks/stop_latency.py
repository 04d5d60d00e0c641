#!/usr/bin/env python3
"""Stop latency: seconds from SIGINT (or SIGTERM) to the exit of `run_stream.py`, as an operator sees it.

Starts the CLI on a source, waits until it has written `--after` faces (so the enhancer has a
backlog, the slow case), sends the signal and times the exit. Prints one JSON line.

    python benchmarks/stop_latency.py --source ../shared/data/video/arcade_1080p_multiface.mp4
    python benchmarks/stop_latency.py --source clip.mp4 --signal TERM --after 5 -- --config configs/cctv.yaml

Arguments after `--` go to run_stream.py.
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def faces_written(out: Path) -> int:
    try:
        return (out / "tracks.jsonl").read_bytes().count(b'"type": "face"')
    except FileNotFoundError:
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True)
    ap.add_argument("--after", type=int, default=1, help="faces written before the signal is sent")
    ap.add_argument("--signal", choices=("INT", "TERM"), default="INT")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for the faces, then for the exit")
    ap.add_argument("extra", nargs="*", help="arguments for run_stream.py (after --)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, str(ROOT / "run_stream.py"), "--source", args.source, "--out", str(out), "-q",
               *args.extra]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = time.monotonic()
        while faces_written(out) < args.after and proc.poll() is None:
            if time.monotonic() - started > args.timeout:
                proc.kill()
                raise SystemExit(f"error: fewer than {args.after} faces after {args.timeout} s")
            time.sleep(0.1)
        if proc.poll() is not None:
            raise SystemExit(f"error: the run ended before the signal: {proc.communicate()[1].strip()}")
        sent = time.monotonic()
        proc.send_signal(getattr(signal, f"SIG{args.signal}"))
        _, stderr = proc.communicate(timeout=args.timeout)
        latency = time.monotonic() - sent
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
        print(json.dumps({"signal": f"SIG{args.signal}", "stop_latency_s": round(latency, 2),
                          "exit_code": proc.returncode, "run_s_before_signal": round(sent - started, 1),
                          "faces_written": summary.get("faces_written"),
                          "faces_skipped_at_stop": summary.get("faces_skipped_at_stop"),
                          "traceback": "Traceback" in stderr}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
