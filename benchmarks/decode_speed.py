"""What reading each frame's QP map costs the decoder, and whether the maps read are the same every time.

    python benchmarks/decode_speed.py [--clips ../shared/data/video/*.mp4] [--repeats 5] [--frames 300] \
        --json out/decode_speed.json --plot out/decode_speed.png

Three ways to decode each clip, alternated within every repeat (so the machine's load hits all alike):
- `frame_threads`: FFmpeg's fastest (frame and slice threads, `thread_type="AUTO"`), no QP: the baseline;
- `frame_threads_qp`: the same with the QP side data on (what the source did before: its maps are racy);
- `slice_threads_qp`: `common.qp.export_qp`, what the source does now.
Per clip and way: frames per second (median over the repeats) and the ratio to the baseline; for the two ways
with QP, how many frames' maps differ from the first slice-threaded read (`frames_differing`, summed over the
repeats: 0 means every read gave the same maps).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.output import add_output_args, pyplot, run_benchmark, save_figure, write_json  # noqa: E402
from common import qp  # noqa: E402
from common.errors import UserError  # noqa: E402

log = logging.getLogger("decode_speed")
WAYS = ("frame_threads", "frame_threads_qp", "slice_threads_qp")


def decode(path: Path, way: str, frames: int) -> tuple[float, list[bytes | None]]:
    """Seconds to decode the clip's first `frames` frames `way`, and each frame's QP grid (as bytes; None
    without QP)."""
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise UserError(f"{path}: not a readable video ({e})") from None
    with container:
        if not container.streams.video:
            raise UserError(f"{path}: no video stream")
        stream = container.streams.video[0]
        if way == "slice_threads_qp":
            qp.export_qp(stream.codec_context)
        else:
            stream.thread_type = "AUTO"
            if way == "frame_threads_qp":  # the source's former way, kept here to show what it read
                stream.codec_context.options = dict(qp._DECODER_OPTIONS)
        grids = []
        t0 = time.perf_counter()
        for frame in container.decode(stream):
            blocks = qp.qp_map(frame) if way != "frame_threads" else None
            grids.append(None if blocks is None else blocks.grid.tobytes())
            if len(grids) >= frames:
                break
        return time.perf_counter() - t0, grids


def measure(path: Path, repeats: int, frames: int) -> dict:
    seconds: dict[str, list[float]] = {w: [] for w in WAYS}
    grids: dict[str, list[list[bytes | None]]] = {w: [] for w in WAYS}
    decode(path, WAYS[0], frames)  # warm-up: the file into the page cache
    for r in range(repeats):
        for way in WAYS[r % len(WAYS):] + WAYS[:r % len(WAYS)]:
            s, g = decode(path, way, frames)
            seconds[way].append(s)
            grids[way].append(g)
    reference = grids["slice_threads_qp"][0]
    n = len(reference)
    base_fps = n / statistics.median(seconds["frame_threads"])
    result = {"frames": n}
    for way in WAYS:
        fps = n / statistics.median(seconds[way])
        row = {"fps": round(fps, 1), "ms_per_frame": round(1000 / fps, 3),
               "ratio_to_frame_threads": round(fps / base_fps, 3)}
        if way != "frame_threads":
            row["frames_differing"] = sum(a != b for g in grids[way] for a, b in zip(g, reference))
            row["frames_without_map"] = sum(b is None for b in grids[way][0])
        result[way] = row
    return result


def plot(report: dict, path: Path) -> None:
    plt = pyplot()
    names = list(report["clips"])
    fig, ax = plt.subplots(figsize=(1.8 * len(names) + 2, 4.5))
    width = 0.8 / len(WAYS)
    for k, way in enumerate(WAYS):
        ax.bar([i + (k - 1) * width for i in range(len(names))], [report["clips"][c][way]["fps"] for c in names],
               width, label=way)
    ax.set_xticks(range(len(names)), [n.replace("_", "\n", 1) for n in names], fontsize=8)
    ax.set_ylabel("frames decoded per second")
    ax.set_yscale("log")
    ax.set_title("H.264 decoding with and without the QP map")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=Path, nargs="+",
                   default=sorted((ROOT.parent / "shared/data/video").glob("*.mp4")))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--frames", type=int, default=300, help="decode at most this many frames of each clip")
    add_output_args(p, plot="bar chart of frames per second, per clip and way (PNG)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    def work() -> dict:
        if not args.clips:
            raise UserError("no clips: give --clips (../shared/data/video/ has none here)")
        if args.repeats < 1 or args.frames < 1:
            raise UserError("--repeats and --frames must be at least 1")
        report = {"benchmark": "decode_speed", "cpu_count": os.cpu_count(), "pyav": av.__version__,
                  "ffmpeg": av.library_versions.get("libavcodec"), "repeats": args.repeats, "load_note": args.note,
                  "clips": {}}
        for path in args.clips:
            report["clips"][path.name] = row = measure(path, args.repeats, args.frames)
            log.info("%s: %s", path.name, json.dumps(row))
        write_json(report, args.json)
        if args.plot:
            plot(report, args.plot)
        return report

    return run_benchmark(work, log)


if __name__ == "__main__":
    sys.exit(main())
