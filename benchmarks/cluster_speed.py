"""Many cameras in one process vs on a local Ray cluster, in the same run: faces/s, end-to-end latency per
face (frame decoded -> its PNG written; p50/p99) and the seconds of each stage (docs/cluster.md's arithmetic).

    python -m benchmarks.cluster_speed [--clips A.mp4 ...] [--cameras 4] [--frames 60] [--preset cctv] \
        [--cpus 2] [--set section.key=value ...] [--json benchmarks/results/cluster_speed.json]

Cameras: one per clip, taking the clips in turn until --cameras (default: 4 cameras on the shared
stage_360p_two_faces clip, 60 frames each, the cctv preset: the file arm of the multi-camera benchmark at 4).
The one-process run (pipeline.runner.Runner) goes first, then the Ray run (pipeline.cluster.ClusterRunner) on a
local cluster started here with `ray.init(num_cpus=--cpus)`: same cameras, same settings. Ray's own start
(`ray_init_s`) is timed apart. `startup_s`: from `run()` to the stages running (the models loaded; for Ray the
enhancer deployed and the workers created: their models load in the background, inside `run_s`); `run_s`: from
there to the end; faces/s is over `run_s`, and over the whole wall time.

The latency of a face counts from its frame's decoding: a file is decoded ahead of the pipeline by up to
source.queue_size frames, so a file's latency includes that wait (a live camera, which drops frames
instead, waits less); both modes read the same way.
"""
from __future__ import annotations

import argparse
import logging
import platform
import tempfile
import threading
import time
from pathlib import Path

import torch

from benchmarks.output import add_output_args, run_benchmark, write_json
from common.errors import UserError
from pipeline.cameras import Camera
from pipeline.config import load_config
from pipeline.run_folder import load_run
from pipeline.runner import Runner

log = logging.getLogger("cluster_speed")

ROOT = Path(__file__).resolve().parents[1]
SHARED_VIDEO = ROOT.parent / "shared/data/video"
CLIP = SHARED_VIDEO / "stage_360p_two_faces.mp4"


def cameras(clips: list[Path], n: int, preset: Path, overrides: list[str]) -> list[Camera]:
    config = load_config(preset, overrides)
    return [Camera(f"cam{i + 1}", str(clips[i % len(clips)]), config) for i in range(n)]


def measure(mode: str, runner: Runner, out: Path) -> dict:
    running: list[float] = []
    watch = threading.Thread(target=lambda: runner.running.wait() and running.append(time.perf_counter()),
                             daemon=True)
    watch.start()
    t0 = time.perf_counter()
    summary = runner.run()
    end = time.perf_counter()
    watch.join(timeout=1)
    started = running[0] if running else t0
    per_camera = {cam: load_run(out / cam).summary for cam in summary["cameras"]}
    return {
        "mode": mode, "faces_written": summary["faces_written"], "frames_processed": summary["frames_processed"],
        "startup_s": round(started - t0, 2), "run_s": round(end - started, 2), "wall_s": round(end - t0, 2),
        "faces_per_s": round(summary["faces_written"] / (end - started), 2),
        "faces_per_wall_s": round(summary["faces_written"] / (end - t0), 2),
        "latency_s": summary["face_latency_s"], "worker_restarts": summary["worker_restarts"],
        "stages": summary["stages"],
        "camera_stages": {cam: s["stages"] for cam, s in per_camera.items()},
        "faces_per_frame": round(summary["faces_written"] / max(1, summary["frames_processed"]), 4),
    }


def run(args: argparse.Namespace) -> dict:
    clips = [c for c in args.clips if c.is_file()]
    for c in set(args.clips) - set(clips):
        log.warning("skipped clip %s: not found", c)
    if not clips:
        raise UserError("no clip to run on: " + ", ".join(str(c) for c in args.clips) + " not found")
    preset = Path(args.preset) if args.preset.endswith((".yaml", ".yml")) else ROOT / "configs" / f"{args.preset}.yaml"
    overrides = ["runtime.progress=false", "output.report=false", f"runtime.max_frames={args.frames}", *args.overrides]
    cams = cameras(clips, args.cameras, preset, overrides)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cluster_speed-") as tmp:
        log.info("one process: %d cameras", len(cams))
        rows.append(measure("one process", Runner(cams[0].config, cams, Path(tmp) / "one"), Path(tmp) / "one"))

        import ray

        from pipeline.cluster import RUNTIME_ENV, ClusterRunner

        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING, runtime_env=RUNTIME_ENV)
        ray_init = time.perf_counter() - t0
        try:
            log.info("Ray (%d CPUs): %d cameras", args.cpus, len(cams))
            rows.append(measure("ray", ClusterRunner(cams[0].config, cams, Path(tmp) / "ray"), Path(tmp) / "ray"))
        finally:
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    rows[-1]["ray_init_s"] = round(ray_init, 2)
    report = {"benchmark": "cluster_speed", "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "ray_cpus": args.cpus, "cameras": [c.source for c in cams],
              "preset": preset.stem, "frames_per_camera": args.frames, "overrides": args.overrides,
              "load_note": args.note, "runs": rows}
    print(markdown_table(rows))
    write_json(report, args.json)
    return report


def markdown_table(rows: list[dict]) -> str:
    stages = [s for s in ("detect", "track", "align", "select", "enhance", "sink")
              if any(s in r["stages"] for r in rows)]
    head = ["mode", "faces", "start-up s", "run s", "faces/s", "faces/s incl. start-up", "latency p50 s",
            "latency p99 s",
            *[f"{s} s" for s in stages]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lat = r["latency_s"] or {}
        cols = [r["mode"], str(r["faces_written"]), f"{r['startup_s']:.1f}", f"{r['run_s']:.1f}",
                f"{r['faces_per_s']:.2f}", f"{r['faces_per_wall_s']:.2f}", f"{lat.get('p50', 0):.2f}",
                f"{lat.get('p99', 0):.2f}",
                *[f"{r['stages'].get(s, {}).get('seconds', 0):.2f}" for s in stages]]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", nargs="+", type=Path, default=[CLIP],
                    help=f"video files, one per camera in turn (default: {CLIP})")
    ap.add_argument("--cameras", type=int, default=4, help="cameras (default 4)")
    ap.add_argument("--frames", type=int, default=60, help="frames per camera (runtime.max_frames; default 60)")
    ap.add_argument("--preset", default="cctv", help="configs/NAME.yaml or a path (default cctv)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster (default 2)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override for both runs, e.g. cluster.camera_cpus=0.25 (repeatable)")
    add_output_args(ap)
    args = ap.parse_args(argv)
    if args.cameras < 1 or args.frames < 1 or args.cpus < 1:
        ap.error("--cameras, --frames and --cpus must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(lambda: run(parse_args(argv)), log)


if __name__ == "__main__":
    raise SystemExit(main())
