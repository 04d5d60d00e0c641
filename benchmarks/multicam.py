"""Many cameras: one process for N cameras (one detector, one enhancer, shared batches) against N separate
single-camera processes on the same machine, on the same clip served as files and by real RTSP servers.

    python -m benchmarks.multicam [--cameras 1 2 4 8] [--sources file rtsp] [--clip A.mp4] \
        [--config configs/cctv.yaml] [--frames 60] [--seconds 90] [--set section.key=value ...] [--quick] \
        [--note "load ..."] [--json out/multicam.json] [--plot out/multicam.png]

For each camera count N and source kind, two arms run one after the other, each as `run_stream.py`
subprocesses (what users run), each with a metrics endpoint (--metrics-port) that this benchmark scrapes:

* one_process: `run_stream.py --cameras FILE` with N cameras cam1..camN;
* separate: N `run_stream.py --source ...` processes started together, each its own output folder.

Sources: `file` (every camera reads the clip, `--frames` frames each: runtime.max_frames) and `rtsp` (one
GStreamer RTSP server per camera on 127.0.0.1, tests/rtsp_server.py, serving the clip in a loop at its frame
rate). The servers run in both arms alike; their live H.264 encoding costs CPU too (one x264 thread each).

The measuring window opens once every camera of the arm has processed a frame (the interpreters have started
and the models are loaded: `startup_s`, reported apart) and closes `--seconds` later for RTSP (the processes
then get SIGINT) or when the arm's last process ends for files. Counts in the window: each camera's final
summary.json less the scrape at the window's opening. The opening follows a detector round (the first
frames processed); a stop cuts the round under way short and keeps the frames detected so far (one detector
and one enhancer call of about 0.5 s at most run on after it), so the window holds whole work, not
whole rounds only: a round of 4 cameras takes 10 s and more on a loaded 2-core CPU.

JSON (`--json`):

    {"benchmark": "multicam", "machine": {"platform", "processor", "cpu_count", "torch", "torch_threads",
                                          "loadavg_start", "loadavg_end"},
     "config": preset, "overrides": [...], "clip": name, "frames_per_camera": F, "seconds": S, "note": ...,
     "servers_note": ..., "window_note": ...,
     "runs": [{"cameras": N, "source": "file" | "rtsp",
               "one_process": ARM, "separate": ARM,
               "ratios": {"faces_per_s", "faces_per_cpu_s", "peak_rss_mb": one / separate each}}]}
    ARM = {"processes", "startup_s", "window_s", "faces_written", "faces_per_s", "cpu_s" (the arm's user +
           system CPU seconds in the window: on a shared machine N processes can take a larger share of the
           cores than one), "faces_per_cpu_s", "frames_processed",
           "camera_fps": [per camera], "frames_dropped", "peak_rss_mb" (the one process, or the sum of the N),
           "peak_rss_mb_each": [per process], "stage_seconds": {stage: seconds, summed over the cameras' own
           summary.json}, "loadavg": 1-minute load when the arm ended}

`--plot`: aggregate faces/s against N (a line per arm and source kind) and peak memory against N.
`--quick`: 1 camera, files only, 20 frames (a smoke run; pass e.g. --set enhance.method=bicubic too).
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.output import add_output_args, pyplot, run_benchmark, save_figure, write_json
from common.errors import UserError
from pipeline.run_folder import load_run
from tests.rtsp_server import RtspServer, free_port, gst_unavailable_reason

log = logging.getLogger("multicam")

ROOT = Path(__file__).resolve().parents[1]
SHARED_CLIP = ROOT.parent / "shared/data/video/stage_360p_two_faces.mp4"
ARMS = ("one_process", "separate")
#: The counters read from the metrics endpoints (facesr_<key>_total{camera=...}) and the summaries.
COUNTS = ("faces_written", "frames_processed", "frames_dropped")
WARM_TIMEOUT_S = 600  # start-up on a loaded 2-core machine: N interpreters importing torch at once
STOP_TIMEOUT_S = 120
POLL_S = 0.25
SERVERS_NOTE = ("RTSP: one GStreamer server process per camera on this machine (live x264, one thread each); "
                "they cost CPU in both arms alike")
WINDOW_NOTE = ("window: from the moment every camera of the arm has processed a frame (start-up excluded, see "
               "startup_s) to --seconds later (rtsp, then SIGINT) or to the end of the arm's last process (file)")


@dataclass
class Process:
    """One run_stream.py child: its output folder, its metrics endpoint, and once reaped its exit code
    and peak resident memory."""

    popen: subprocess.Popen
    out: Path
    port: int
    log_path: Path
    cameras: list[str]  # the summary folders under `out` ("" for a single-camera run)
    returncode: int | None = None
    peak_rss_kb: int = 0
    cpu_total_s: float = 0.0  # user + system CPU seconds of the whole run, once reaped

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def poll(self, block: bool = False) -> bool:
        """True once the process has ended (then reaped with wait4: its exit code and CPU seconds); while
        it runs, its peak RSS so far. The peak is the kernel's high-water mark (VmHWM), so polls miss
        nothing but the last moments of the run. Not wait4's ru_maxrss: that one starts from the parent's
        own peak (the exec replaces a copy of the parent's memory), this process's with torch loaded."""
        if self.returncode is None:
            self.peak_rss_kb = max(self.peak_rss_kb, _status_kb(self.popen.pid, "VmHWM"))
            pid, status, usage = os.wait4(self.popen.pid, 0 if block else os.WNOHANG)
            if pid == 0:
                return False
            self.returncode = self.popen.returncode = os.waitstatus_to_exitcode(status)
            self.cpu_total_s = usage.ru_utime + usage.ru_stime
        return True

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far, all threads (the run's total once it has ended)."""
        if self.returncode is not None:
            return self.cpu_total_s
        with open(f"/proc/{self.popen.pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def log_tail(self) -> str:
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return "\n".join(lines[-5:])


def _status_kb(pid: int, key: str) -> int:
    """A kB field of /proc/<pid>/status; 0 once the process is gone (or a zombie: no memory left)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Arm:
    """The processes of one arm, started together."""

    procs: list[Process] = field(default_factory=list)

    def scrape(self) -> dict[tuple[int, str], dict[str, float]] | None:
        """(process, camera) -> COUNTS now, over every endpoint; None while one does not answer yet.
        Keys as `summaries()`: a single-camera run's camera is "default" in both."""
        counts: dict[tuple[int, str], dict[str, float]] = {}
        for i, proc in enumerate(self.procs):
            try:
                text = urllib.request.urlopen(proc.url, timeout=5).read().decode()
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return None
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    key = sample.name.removeprefix("facesr_").removesuffix("_total")
                    if key in COUNTS and "camera" in sample.labels:
                        counts.setdefault((i, sample.labels["camera"]), {})[key] = sample.value
        return counts

    def wait_warm(self, n_cameras: int) -> dict[tuple[int, str], dict[str, float]]:
        """Block until every camera has processed a frame; the counts then."""
        deadline = time.monotonic() + WARM_TIMEOUT_S
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll():
                    raise UserError(f"a run ended before every camera had processed a frame (exit "
                                    f"{proc.returncode}); raise --frames, or see its log:\n{proc.log_tail()}")
            counts = self.scrape()
            if counts and len(counts) == n_cameras and all(c["frames_processed"] >= 1 for c in counts.values()):
                return counts
            time.sleep(POLL_S)
        raise UserError(f"the cameras were not all running after {WARM_TIMEOUT_S} s")

    def run_for(self, seconds: float) -> None:
        """Let the processes run `seconds` (polling their memory); an error if one ends meanwhile."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for p in self.procs:
                if p.poll():
                    raise UserError(f"a live run ended by itself (exit {p.returncode}):\n{p.log_tail()}")
            time.sleep(POLL_S)

    def wait_all(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not all(p.poll() for p in self.procs):
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                raise UserError(f"a run did not stop within {timeout:g} s of SIGINT")
            time.sleep(POLL_S)
        for p in self.procs:
            if p.returncode != 0:
                raise UserError(f"run_stream.py exited with {p.returncode}:\n{p.log_tail()}")

    def kill(self) -> None:
        for p in self.procs:
            if not p.poll():
                p.popen.kill()
                p.poll(block=True)

    def summaries(self) -> dict[tuple[int, str], dict]:
        """(process, camera) -> that camera's own summary.json."""
        return {(i, cam or "default"): load_run(p.out / cam).summary
                for i, p in enumerate(self.procs) for cam in p.cameras}


def run_stream(args: list[str], out: Path, sets: list[str], cameras: list[str], work: Path) -> Process:
    port = free_port()
    log_path = work / f"{out.name}.log"
    cmd = [sys.executable, str(ROOT / "run_stream.py"), *args, "--out", str(out), "-q",
           "--metrics-port", str(port), *[a for s in sets for a in ("--set", s)]]
    with open(log_path, "wb") as f:  # the child holds its own copy of the descriptor
        popen = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    return Process(popen, out, port, log_path, cameras)


def start_arm(arm: str, sources: list[str], preset: Path, sets: list[str], work: Path) -> Arm:
    if arm == "one_process":
        ids = [f"cam{i}" for i in range(1, len(sources) + 1)]
        cameras = work / "cameras.yaml"
        cameras.write_text(f"config: '{preset}'\ncameras:\n"
                           + "".join(f"  - {{id: {cam}, source: '{src}'}}\n" for cam, src in zip(ids, sources)))
        return Arm([run_stream(["--cameras", str(cameras)], work / "one", sets, ids, work)])
    return Arm([run_stream(["--source", src, "--config", str(preset)], work / f"separate{i}", sets, [""], work)
                for i, src in enumerate(sources, 1)])


def measure(arm_name: str, sources: list[str], live: bool, args: argparse.Namespace, work: Path) -> dict:
    """Run one arm on `sources` (a camera each) and measure it (see the module docstring)."""
    sets = ["output.report=false", *([] if live else [f"runtime.max_frames={args.frames}"]), *args.overrides]
    launched = time.monotonic()
    arm = start_arm(arm_name, sources, args.config, sets, work)
    try:
        first = arm.wait_warm(len(sources))
        opened = time.monotonic()
        cpu_opened = sum(p.cpu_s() for p in arm.procs)
        if live:
            arm.run_for(args.seconds)
            closed = time.monotonic()
            cpu = sum(p.cpu_s() for p in arm.procs) - cpu_opened
            for p in arm.procs:
                p.popen.send_signal(signal.SIGINT)
            arm.wait_all(STOP_TIMEOUT_S)
        else:
            arm.wait_all()
            closed = time.monotonic()
            cpu = sum(p.cpu_s() for p in arm.procs) - cpu_opened
    finally:
        arm.kill()  # only after an error: the others are reaped by now
    summaries = arm.summaries()
    last = {key: {k: s[k] for k in COUNTS} for key, s in summaries.items()}
    # Rounded once, here, and every rate below is computed from the rounded figures, so the report's numbers
    # agree with each other (the CPU time is a difference of /proc ticks and wait4's microseconds: a short
    # window's rate would move by a percent at two decimals).
    window, cpu = round(closed - opened, 3), round(cpu, 3)
    delta = {key: {k: last[key][k] - first[key][k] for k in COUNTS} for key in sorted(first)}
    faces = sum(d["faces_written"] for d in delta.values())
    stages: dict[str, float] = {}
    for s in summaries.values():
        for stage, v in s["stages"].items():
            stages[stage] = round(stages.get(stage, 0.0) + v["seconds"], 3)
    peaks = [round(p.peak_rss_kb / 1024, 1) for p in arm.procs]
    return {
        "processes": len(arm.procs), "startup_s": round(opened - launched, 2), "window_s": window,
        "faces_written": int(faces), "faces_per_s": round(faces / window, 4),
        "cpu_s": cpu, "faces_per_cpu_s": round(faces / cpu, 4) if cpu > 0 else None,
        "frames_processed": int(sum(d["frames_processed"] for d in delta.values())),
        "camera_fps": [round(d["frames_processed"] / window, 3) for d in delta.values()],
        "frames_dropped": int(sum(d["frames_dropped"] for d in delta.values())),
        "peak_rss_mb": round(sum(peaks), 1), "peak_rss_mb_each": peaks,
        "stage_seconds": stages, "loadavg": round(os.getloadavg()[0], 2),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def start_servers(clip: Path, n: int) -> list[RtspServer]:
    reason = gst_unavailable_reason()
    if reason:
        raise UserError(f"--sources rtsp needs the GStreamer RTSP server: {reason}")
    servers: list[RtspServer] = []
    try:
        for _ in range(n):
            servers.append(RtspServer(clip))
            servers[-1].start()
    except RuntimeError as exc:
        for s in servers:
            s.kill()
        raise UserError(f"cannot start an RTSP server on {clip}: {exc}") from None
    return servers


def run(args: argparse.Namespace) -> dict:
    clip = args.clip
    report = {"benchmark": "multicam", "machine": machine(), "config": str(args.config), "overrides": args.overrides,
              "frames_per_camera": args.frames, "seconds": args.seconds, "note": args.note,
              "servers_note": SERVERS_NOTE if "rtsp" in args.sources else None, "window_note": WINDOW_NOTE,
              "runs": []}
    with tempfile.TemporaryDirectory(prefix="multicam-") as tmp:
        if clip is None:
            from pipeline.demo import make_demo_clip

            clip = make_demo_clip(Path(tmp) / "demo.mp4", n_frames=max(args.frames, 60))
        elif not clip.is_file():
            raise UserError(f"--clip {clip}: no such file")
        report["clip"] = clip.name
        servers = start_servers(clip, max(args.cameras)) if "rtsp" in args.sources else []
        try:
            for kind in args.sources:
                for n in args.cameras:
                    sources = [s.url for s in servers[:n]] if kind == "rtsp" else [str(clip.resolve())] * n
                    row: dict = {"cameras": n, "source": kind}
                    for arm in ARMS:
                        log.info("%d camera(s), %s, %s", n, kind, arm)
                        work = Path(tmp) / f"{kind}{n}_{arm}"
                        work.mkdir()
                        row[arm] = measure(arm, sources, kind == "rtsp", args, work)
                        log.info("  %.3f faces/s, peak RSS %.0f MB", row[arm]["faces_per_s"], row[arm]["peak_rss_mb"])
                    one, sep = row["one_process"], row["separate"]
                    row["ratios"] = {"faces_per_s": ratio(one["faces_per_s"], sep["faces_per_s"]),
                                     "faces_per_cpu_s": ratio(one["faces_per_cpu_s"], sep["faces_per_cpu_s"]),
                                     "peak_rss_mb": ratio(one["peak_rss_mb"], sep["peak_rss_mb"])}
                    report["runs"].append(row)
        finally:
            for s in servers:
                s.kill()
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(markdown_table(report["runs"]))
    write_json(report, args.json)
    if args.plot:
        plot(report["runs"], args.plot)
    return report


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}


def markdown_table(rows: list[dict]) -> str:
    head = ["cameras", "source", "faces/s one process", "faces/s separate", "ratio",
            "faces per CPU s one / separate", "ratio", "camera fps one",
            "camera fps separate", "dropped one / separate", "peak RSS MB one", "peak RSS MB separate (sum)",
            "RSS ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        one, sep = r["one_process"], r["separate"]
        fps = [", ".join(f"{x:.2f}" for x in a["camera_fps"]) for a in (one, sep)]
        cols = [str(r["cameras"]), r["source"], f"{one['faces_per_s']:.3f}", f"{sep['faces_per_s']:.3f}",
                f"{r['ratios']['faces_per_s'] or 0:.2f}",
                f"{one['faces_per_cpu_s'] or 0:.3f} / {sep['faces_per_cpu_s'] or 0:.3f}",
                f"{r['ratios']['faces_per_cpu_s'] or 0:.2f}", *fps,
                f"{one['frames_dropped']} / {sep['frames_dropped']}", f"{one['peak_rss_mb']:.0f}",
                f"{sep['peak_rss_mb']:.0f}", f"{r['ratios']['peak_rss_mb'] or 0:.2f}"]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Aggregate faces/s and peak memory against the number of cameras, a line per arm and source kind."""
    plt = pyplot()
    fig, (faces_ax, mem_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for kind in dict.fromkeys(r["source"] for r in rows):
        runs = [r for r in rows if r["source"] == kind]
        n = [r["cameras"] for r in runs]
        for arm, style in zip(ARMS, ("-o", "--s")):
            label = f"{arm.replace('_', ' ')}, {kind}"
            faces_ax.plot(n, [r[arm]["faces_per_s"] for r in runs], style, label=label)
            mem_ax.plot(n, [r[arm]["peak_rss_mb"] for r in runs], style, label=label)
    faces_ax.set(xlabel="cameras", ylabel="faces enhanced per s (all cameras)", title="throughput")
    mem_ax.set(xlabel="cameras", ylabel="peak RSS, MB (separate: sum)", title="memory")
    for ax in (faces_ax, mem_ax):
        ax.set_xticks(sorted({r["cameras"] for r in rows}))
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cameras", nargs="+", type=int, default=[1, 2, 4, 8], help="camera counts N")
    ap.add_argument("--sources", nargs="+", choices=("file", "rtsp"), default=["file", "rtsp"])
    ap.add_argument("--clip", type=Path, default=SHARED_CLIP if SHARED_CLIP.is_file() else None,
                    help=f"the clip every camera shows (default: {SHARED_CLIP} if present, else a generated one)")
    ap.add_argument("--config", type=Path, default=ROOT / "configs/cctv.yaml", help="preset YAML")
    ap.add_argument("--frames", type=int, default=60, help="files: frames per camera (runtime.max_frames)")
    ap.add_argument("--seconds", type=float, default=90.0, help="rtsp: seconds measured per run, after start-up")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override passed to every run (repeatable)")
    ap.add_argument("--quick", action="store_true", help="1 camera, files only, 20 frames")
    add_output_args(ap, plot="PNG: faces/s and peak memory against the number of cameras")
    args = ap.parse_args(argv)
    if args.quick:
        args.cameras, args.sources, args.frames = [1], ["file"], 20
    if min(args.cameras) < 1 or args.frames < 1 or args.seconds <= 0:
        ap.error("--cameras and --frames must be >= 1, --seconds > 0")
    if not args.config.is_file():
        ap.error(f"--config {args.config}: no such file")
    args.config = args.config.resolve()
    args.cameras = sorted(set(args.cameras))
    return args


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(lambda: run(parse_args(argv)), log)


if __name__ == "__main__":
    raise SystemExit(main())
