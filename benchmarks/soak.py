"""Soak test: run the pipeline for N minutes on a looped source and check that its memory stays flat.

    python benchmarks/soak.py --minutes 30 [--video A.mp4 --video B.mp4 ...] [--warmup 5] \
        [--interval 5] [--tolerance 0.10] [--out out/soak] [--set key=value ...]
    python benchmarks/soak.py --minutes 30 --rtsp --restart-every 5 --video A.mp4 [...]
    python benchmarks/soak.py --minutes 120 --rtsp --cameras 4 --restart-every 5 --config configs/cctv.yaml [...]

The clips (default: the CCTV clips of ../shared/data/video) are chained many times over in an FFmpeg
concat list, so the run sees one endless file; `run_stream.py` runs on it as a child process
(enhance.method=bicubic unless --set says otherwise) and its resident memory (VmRSS) is sampled every
`--interval` s. After `--minutes` the child gets SIGTERM, the normal way to end a run.

`--rtsp`: the first clip is served instead by the project's GStreamer RTSP server on 127.0.0.1
(tests/rtsp_server.py, in a loop at its frame rate) and read live, as a camera: frames converted only when read,
the oldest dropped when the pipeline lags. `--restart-every MIN` kills the server (no goodbye, sockets gone)
every MIN minutes and starts it again on the same port, so the camera reconnects, as real cameras make it do
(`reconnects` in soak.json, from the run's summary, against `server_restarts`).

`--cameras N`: N cameras in one process, as a site runs them (`run_stream.py --source A --source B ...`:
cameras cam1, cam2, ... sharing the detector and the enhancer): N copies of the looped file, or with `--rtsp`
N servers (camera k serves clip k of `--video`, round robin), of which `--restart-every` kills one at a time
in turn, so that every camera drops and comes back while the others keep running. soak.json then has each camera's counts (`cameras`: frames,
faces, drops, reconnects, its server's restarts) beside the totals.

Verdict: a straight line is fitted to the samples after the warm-up; the soak passes when that line
rises by at most `--tolerance` (a fraction) of the RSS at the end of the warm-up over the measured
window. Writes <out>/soak.json (samples, start / after-warm-up / end / peak RSS, slope, verdict) and
<out>/soak.png (RSS over time); exit 0 on pass, 1 on fail, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import cli  # noqa: E402
from common.errors import UserError  # noqa: E402

VIDEO = ROOT.parent / "shared/data/video"
DEFAULT_VIDEOS = (VIDEO / "cctv_walking_270p.mp4", VIDEO / "cctv_classroom_270p.mp4")
LOOP_SECONDS_PER_MINUTE = 60 * 60  # source seconds per soak minute: enough even at 60x real time
COUNTS = ("frames_processed", "faces_written", "frames_dropped", "reconnects")  # from the run's summary.json


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (None once it has exited)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def write_loop(videos: list[Path], minutes: float, path: Path) -> Path:
    """An FFmpeg concat list that repeats `videos` long enough for `minutes` of processing."""
    import av

    seconds = 0.0
    for v in videos:
        if not v.is_file():
            raise UserError(f"{v}: no such video")
        with av.open(str(v)) as c:
            stream = c.streams.video[0]
            seconds += float(stream.frames / stream.average_rate) if stream.frames and stream.average_rate else 1.0
    repeats = max(1, math.ceil(minutes * LOOP_SECONDS_PER_MINUTE / seconds))
    lines = ["ffconcat version 1.0"] + [f"file '{v.resolve()}'" for _ in range(repeats) for v in videos]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of y over x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx > 0 else 0.0
    return slope, my - slope * mx


def verdict(samples: list[tuple[float, float]], warmup_s: float, tolerance: float) -> dict:
    """Start / after-warm-up / end / peak RSS and the pass/fail on the post-warm-up slope."""
    after = [(t, r) for t, r in samples if t >= warmup_s]
    if len(after) < 3:
        raise UserError(f"only {len(after)} samples after the {warmup_s:g} s warm-up; run longer "
                        "(--minutes) or sample more often (--interval)")
    slope, intercept = fit_line(after)  # MB per second
    base = after[0][1]
    window = after[-1][0] - after[0][0]
    growth = slope * window
    return {
        "rss_start_mb": round(samples[0][1], 1), "rss_after_warmup_mb": round(base, 1),
        "rss_end_mb": round(samples[-1][1], 1), "rss_peak_mb": round(max(r for _, r in samples), 1),
        "slope_mb_per_min": round(slope * 60, 3), "window_s": round(window, 1),
        "fitted_growth_mb": round(growth, 1), "fitted_growth_fraction": round(growth / base, 4),
        "tolerance": tolerance, "passed": growth <= tolerance * base,
    }


def plot(samples: list[tuple[float, float]], result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([t / 60 for t, _ in samples], [r for _, r in samples], lw=1, label="RSS")
    ax.axvline(result["warmup_s"] / 60, color="grey", ls="--", lw=1, label="end of warm-up")
    ax.axhline(result["rss_after_warmup_mb"] * (1 + result["tolerance"]), color="red", ls=":", lw=1,
               label=f"+{result['tolerance']:.0%} of after-warm-up RSS")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MB)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"soak: {'PASS' if result['passed'] else 'FAIL'}, "
                 f"slope {result['slope_mb_per_min']:+.2f} MB/min after warm-up")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _start(server) -> None:
    try:
        server.start()
    except RuntimeError as e:  # the port taken, GStreamer broken: one line, not a traceback
        raise UserError(f"--rtsp: {e}") from None


def soak(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        return _soak(args, stack)


def _soak(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    if args.minutes <= 0 or args.interval <= 0 or not 0 <= args.warmup < args.minutes:
        raise UserError("need --minutes > 0, --interval > 0 and 0 <= --warmup < --minutes")
    if args.cameras < 1:
        raise UserError("--cameras must be at least 1")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    videos = args.video or list(DEFAULT_VIDEOS)
    servers = []
    if args.rtsp:
        from tests.rtsp_server import RtspServer, gst_unavailable_reason

        if (why := gst_unavailable_reason()) is not None:
            raise UserError(f"--rtsp: {why}")
        for v in videos:
            if not v.is_file():
                raise UserError(f"{v}: no such video")
        servers = [RtspServer(videos[k % len(videos)]) for k in range(args.cameras)]
        for server in servers:
            stack.callback(server.stop)  # however the soak ends: no server left behind
            _start(server)
        uris = [server.url for server in servers]
    else:
        if args.restart_every:
            raise UserError("--restart-every needs --rtsp")
        uris = [str(write_loop(videos, args.minutes, out / "loop.ffconcat"))] * args.cameras
    source = [a for uri in uris for a in ("--source", uri)]  # several: cameras cam1, cam2, ... in one process
    if args.config:
        source += ["--config", str(args.config)]
    if not args.rtsp:  # the concat list names absolute paths
        source += ["--set", "source.options={safe: '0'}"]
    cmd = [sys.executable, str(ROOT / "run_stream.py"), *source, "--out", str(out / "run"),
           "--overwrite", "--quiet",
           "--set", "enhance.method=bicubic", "--set", "output.report=false",
           *[a for s in args.overrides for a in ("--set", s)]]
    print("running:", shlex.join(cmd), flush=True)
    samples: list[tuple[float, float]] = []
    restarts, next_restart = [0] * len(servers), args.restart_every * 60 or math.inf
    with open(out / "run.log", "wb") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        t0 = time.monotonic()
        try:
            while True:
                time.sleep(args.interval)  # not at 0 s: the interpreter is still starting
                if (elapsed := time.monotonic() - t0) >= args.minutes * 60 or child.poll() is not None:
                    break
                if (rss := rss_mb(child.pid)) is not None:
                    samples.append((round(elapsed, 1), round(rss, 1)))
                if servers and elapsed >= next_restart:
                    k = sum(restarts) % len(servers)  # one camera at a time, in turn
                    servers[k].kill()
                    time.sleep(2.0)  # the camera notices: its reads time out or the connection drops
                    _start(servers[k])
                    restarts[k] += 1
                    next_restart += args.restart_every * 60
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=120)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    if elapsed < args.minutes * 60:
        raise UserError(f"the run ended after {elapsed:.0f} s with exit code {child.returncode}, before the "
                        f"{args.minutes:g} minutes were up; see {out / 'run.log'}")
    result = {"command": shlex.join(cmd), "minutes": args.minutes, "warmup_s": args.warmup * 60,
              "interval_s": args.interval, "exit_code": child.returncode,
              **verdict(samples, args.warmup * 60, args.tolerance)}
    summary = out / "run" / "summary.json"
    if summary.is_file():
        run = json.loads(summary.read_text(encoding="utf-8"))
        result.update({k: run.get(k) for k in COUNTS})
        if args.cameras > 1:
            cams = run.get("cameras", {})
            result["cameras"] = {i: {k: cam.get(k) for k in ("state", *COUNTS)} for i, cam in cams.items()}
            if servers:  # a camera's server known by the source it reads, as the run's summary names it
                restarts_of = dict(zip(uris, restarts))
                for i, cam in cams.items():
                    result["cameras"][i]["server_restarts"] = restarts_of.get(cam.get("source"))
    if servers:
        result.update(source="rtsp", server_restarts=sum(restarts))
    result["samples"] = samples
    (out / "soak.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    plot(samples, result, out / "soak.png")
    print(f"RSS start {result['rss_start_mb']} MB, after warm-up {result['rss_after_warmup_mb']} MB, "
          f"end {result['rss_end_mb']} MB, peak {result['rss_peak_mb']} MB; slope after warm-up "
          f"{result['slope_mb_per_min']:+.3f} MB/min ({result['fitted_growth_fraction']:+.1%} over "
          f"{result['window_s'] / 60:.1f} min): {'PASS' if result['passed'] else 'FAIL'}; "
          f"{out / 'soak.json'}, {out / 'soak.png'}")
    return 0 if result["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    ap.add_argument("--warmup", type=float, default=5.0, help="minutes left out of the verdict (default 5)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    ap.add_argument("--tolerance", type=float, default=0.10,
                    help="allowed growth after warm-up, a fraction of the RSS then (default 0.10)")
    ap.add_argument("--video", type=Path, action="append", help="clip to loop (repeatable; default: the CCTV clips)")
    ap.add_argument("--out", type=Path, default=ROOT / "out/soak", help="output folder (default out/soak)")
    ap.add_argument("--rtsp", action="store_true",
                    help="serve the first clip from a local RTSP server in a loop and read it live")
    ap.add_argument("--restart-every", type=float, default=0.0, metavar="MIN",
                    help="with --rtsp: kill and restart a server every MIN minutes (its camera reconnects; with "
                         "several cameras, one server at a time, in turn)")
    ap.add_argument("--cameras", type=int, default=1, metavar="N",
                    help="N cameras in one process (run_stream.py with --source repeated; default 1)")
    ap.add_argument("--config", type=Path, help="preset for run_stream.py (default: the built-in defaults)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="pipeline config override passed to run_stream.py (repeatable)")
    return cli.run(lambda: soak(ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
