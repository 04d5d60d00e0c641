#!/usr/bin/env python3
"""Run the face super-resolution pipeline on a video file, an RTSP camera, a webcam or an image folder,
or on many cameras in one process.

    python run_stream.py --source clip.mp4 [--config configs/cctv.yaml] [--out DIR] [--set key=value ...]
    python run_stream.py --cameras configs/cameras.example.yaml --out DIR [--set key=value ...]
    python run_stream.py --cameras FILE --out DIR --cluster auto|ray://HOST:PORT   (Ray: docs/cluster.md)

SRC: a video file, rtsp://..., webcam:N, a folder of images, or `demo` (a generated clip of a face
moving and shrinking from 80 to 16 px, written to DIR/input/demo.mp4). Writes DIR/tracks.jsonl,
DIR/tracks/<id>/<frame>.png, DIR/summary.json and DIR/index.html; DIR is locked while the run lasts.

Many cameras (a cameras file, see pipeline/cameras.py, or --source repeated: cameras cam1, cam2, ...)
share one detector and one enhancer; each camera writes DIR/<camera id>/ as above, and DIR/summary.json
and DIR/index.html cover them all. A camera that fails (never reachable, broken file) ends alone and
the others go on; the run then exits with 3 and names the failed cameras on stderr. With --cluster the
cameras run on Ray (pipeline/cluster.py) and write the same folders; without it Ray is never imported.

On bad input: one line on stderr and a non-zero exit. Ctrl-C (or SIGTERM) stops within seconds and
still writes the summary and report (exit 0); a second one exits at once (exit 130).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from common import cli, memory
from common.errors import ConfigError

EXIT_CAMERAS_FAILED = 3  # a multi-camera run ended with at least one camera failed (the others' outputs are valid)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--source", action="append", help="video file, rtsp://..., webcam:N, image folder, or "
                      "'demo'; repeat it for several cameras in one process (ids cam1, cam2, ...)")
    what.add_argument("--cameras", metavar="FILE", help="cameras file (see configs/cameras.example.yaml): many "
                      "cameras in one process, each with its own settings; its `config:` names the preset")
    ap.add_argument("--config", help="preset YAML (configs/*.yaml); default: the built-in defaults, which "
                    "configs/default.yaml documents")
    ap.add_argument("--out", help="output folder (default: output.dir of the config)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one config value, e.g. --set enhance.output_size=160 (repeatable)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace a previous run in the output folder (only the files this program wrote go)")
    ap.add_argument("--metrics-port", type=int, metavar="N", help="serve live Prometheus metrics at "
                    "http://HOST:N/metrics while the run lasts (0: any free port, logged)")
    ap.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                    help="address the metrics are served on (default 127.0.0.1: this machine only)")
    ap.add_argument("--cluster", metavar="auto|ray://HOST:PORT", help="run the cameras on a Ray cluster "
                    "(docs/cluster.md; needs pip install -e .[cluster]): a worker per camera, the enhancer shared "
                    "by all; auto: the cluster in RAY_ADDRESS, else a local one for this run")
    ap.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bar")
    args = ap.parse_args(argv)
    if args.cameras and args.config:
        ap.error("--config: with --cameras, the preset is the cameras file's `config:` key")
    if args.cluster is not None and args.cluster != "auto" and not args.cluster.startswith("ray://"):
        ap.error(f"--cluster: auto or ray://HOST:PORT, got {args.cluster!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    memory.start_trimming()  # keeps RSS flat on long runs (a daemon thread)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("run_stream").debug("memory allocator: %s", memory.allocator())
    return cli.run(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    # Imported here so that --help is instant.
    from pipeline.cameras import cameras_from_sources, load_cameras
    from pipeline.config import load_config
    from pipeline.runner import Runner, install_signal_handlers

    overrides = list(args.overrides)
    if args.overwrite:
        overrides.append("output.overwrite=true")
    if args.quiet:
        overrides.append("runtime.progress=false")
    if args.cameras or len(args.source) > 1 or args.cluster:
        cameras = (load_cameras(args.cameras, overrides) if args.cameras
                   else cameras_from_sources(args.source, args.config, overrides))
        config, source = cameras[0].config, cameras  # what the cameras share is the same in every camera's
    else:
        config, source = load_config(args.config, overrides), args.source[0]
    out_dir = Path(args.out or config.output.dir)
    runner = cluster_runner(args.cluster, source, out_dir) if args.cluster else Runner(config, source, out_dir)
    install_signal_handlers(runner)
    with contextlib.ExitStack() as stack:
        if args.metrics_port is not None:
            from pipeline.metrics import MetricsServer

            stack.enter_context(MetricsServer(args.metrics_port, runner.snapshot, host=args.metrics_host))
        summary = runner.run()
    if runner.multi:
        return report_cameras(summary, out_dir)
    lost = not_written(summary)
    print(f"{summary['frames_processed']} frames, {summary['faces_detected']} faces detected, "
          f"{summary['faces_written']} faces in {summary['tracks']} tracks written to {out_dir} "
          f"{f'(not written: {lost}) ' if lost else ''}({summary['fps']} fps); open {out_dir / 'index.html'}")
    return 0  # also after one SIGINT/SIGTERM: stopping a live stream that way is the normal end of a run


def cluster_runner(address: str, cameras: list, out_dir: Path):
    """The runner of `--cluster` (Ray is imported here only: a run without it never imports Ray)."""
    try:
        from pipeline.cluster import ClusterRunner
    except ImportError as exc:
        raise ConfigError(f"--cluster needs Ray ({exc}): pip install -e .[cluster]") from None
    return ClusterRunner(cameras[0].config, cameras, out_dir, address=address)


def not_written(summary: dict) -> str:
    """Why detected faces were not written, for the end-of-run line: each reason with a count, and the faces
    a stop left unenhanced (SIGINT / SIGTERM while the enhancer had a backlog), which summary.json counts apart.

    >>> not_written({"faces_not_written": {"too_small": 3, "below_score": 0}, "faces_skipped_at_stop": 2})
    '3 too small, 2 skipped at stop'
    """
    counts = {**summary["faces_not_written"], "skipped_at_stop": summary.get("faces_skipped_at_stop", 0)}
    return ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in counts.items() if n)


def report_cameras(summary: dict, out_dir: Path) -> int:
    """A line per camera, the totals, an `error:` line per failed camera; the exit code."""
    for cam, info in summary["cameras"].items():
        print(f"{cam}: {info['frames_processed']} frames, {info['faces_detected']} faces detected, "
              f"{info['faces_written']} faces in {info['tracks']} tracks ({info['state']}; {info['fps']} fps)")
    print(f"{len(summary['cameras'])} cameras: {summary['faces_written']} faces in {summary['tracks']} tracks "
          f"written to {out_dir}; open {out_dir / 'index.html'}")
    for cam in summary["failed"]:
        print(f"error: camera {cam} failed: {summary['cameras'][cam]['error']}", file=sys.stderr)
    return EXIT_CAMERAS_FAILED if summary["failed"] else 0


if __name__ == "__main__":
    memory.restart_under_jemalloc(sys.argv)  # glibc's heaps fragment over a long run: common/memory.py
    sys.exit(main())
