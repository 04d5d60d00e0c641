"""Pipeline speed: end-to-end fps next to decode-only fps, and the seconds spent in each stage, per preset and
per clip, all in the same run.

    python -m benchmarks.pipeline_speed [--presets cctv default ...] [--clips A.mp4 ...] [--frames 300] \
        [--set section.key=value ...] [--json out/pipeline_speed.json] [--plot out/pipeline_speed.png]

Presets: names of configs/*.yaml (default: all of them) or paths. Clips: default the shared clips
(../shared/data/video/*.mp4); absent ones are skipped with a message. For each clip, the decode-only pass (the
same source stage: PyAV, reader thread, queue, with a consumer that does nothing) runs first, then the
whole pipeline once per preset on the same frames (`--frames`: runtime.max_frames).

Per-stage seconds are the run's own (summary.json "stages", read back from the run folder). The enhance and
sink stages run in threads beside the main thread's detect / track / align / select, so the stages overlap
and their seconds add up to more than the wall time; the slowest stage (most seconds, waits left out) bounds
the fps. `wait_for_frames` is time the main thread waited for the decoder.
"""
from __future__ import annotations

import argparse
import logging
import platform
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.output import add_output_args, pyplot, run_benchmark, save_figure, write_json
from common.errors import UserError
from pipeline.config import load_config
from pipeline.run_folder import load_run
from pipeline.runner import Runner
from pipeline.source import open_source

log = logging.getLogger("pipeline_speed")

ROOT = Path(__file__).resolve().parents[1]
SHARED_VIDEO = ROOT.parent / "shared/data/video"
WAITS = ("wait_for_frames",)  # stages that are waiting, not working: never "the slowest stage"


def preset_path(name: str) -> Path:
    """A preset name (configs/NAME.yaml) or a path."""
    path = Path(name)
    return path if path.suffix in (".yaml", ".yml") else ROOT / "configs" / f"{name}.yaml"


def decode_only(clip: Path, cfg, frames: int | None) -> dict:
    """The source stage alone on `clip`, up to `frames` frames: what the pipeline can reach at best."""
    n = 0
    t0 = time.perf_counter()
    with open_source(str(clip), cfg.source) as src:
        for _ in src:
            n += 1
            if frames and n >= frames:
                break
    wall = time.perf_counter() - t0
    return {"frames": n, "wall_s": round(wall, 3), "fps": round(n / wall, 2)}


def slowest_stage(stages: dict[str, dict]) -> str | None:
    working = {name: s["seconds"] for name, s in stages.items() if name not in WAITS}
    return max(working, key=working.get) if working else None


def run_pipeline(clip: Path, preset: Path, overrides: list[str], frames: int | None) -> dict:
    cfg = load_config(preset, [*overrides, "runtime.progress=false", "output.report=false",
                               *([f"runtime.max_frames={frames}"] if frames else [])])
    decode = decode_only(clip, cfg, frames)
    with tempfile.TemporaryDirectory() as out:
        Runner(cfg, str(clip), out).run()
        summary = load_run(out).summary  # what the run itself reported
    stages = {name: s["seconds"] for name, s in summary["stages"].items()}
    return {
        "clip": clip.name, "preset": preset.stem, "overrides": overrides,
        "decode_only": decode,
        "end_to_end": {"frames": summary["frames_processed"], "wall_s": summary["wall_time_s"], "fps": summary["fps"]},
        "end_to_end_over_decode": round(summary["fps"] / decode["fps"], 6) if summary["fps"] else None,
        "stage_seconds": stages, "stages": summary["stages"], "slowest_stage": slowest_stage(summary["stages"]),
        "faces_detected": summary["faces_detected"], "faces_written": summary["faces_written"],
        "tracks": summary["tracks"], "enhance_method": summary["enhance_method"],
    }


def run(args: argparse.Namespace) -> dict:
    presets = [preset_path(p) for p in args.presets]
    for p in presets:
        if not p.is_file():
            raise UserError(f"preset {p} not found (configs/*.yaml names or a path)")
    clips = []
    for clip in args.clips:
        if clip.is_file():
            clips.append(clip)
        else:
            log.warning("skipped clip %s: not found", clip)
    if not clips:
        raise UserError("no clip to run on: " + ", ".join(str(c) for c in args.clips) + " not found")
    rows = []
    for clip in clips:
        for preset in presets:
            log.info("%s with %s", clip.name, preset.stem)
            rows.append(run_pipeline(clip, preset, args.overrides, args.frames))
    report = {"benchmark": "pipeline_speed", "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "frames_limit": args.frames,
              "load_note": args.note, "runs": rows}
    print(markdown_table(rows))
    write_json(report, args.json)
    if args.plot:
        plot(rows, args.plot)
    return report


def markdown_table(rows: list[dict]) -> str:
    stages = [s for s in ("detect", "track", "align", "select", "enhance", "sink", *WAITS)
              if any(s in r["stage_seconds"] for r in rows)]
    head = ["clip", "preset", "frames", "end-to-end fps", "decode-only fps", *[f"{s} s" for s in stages], "slowest"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cols = [r["clip"], r["preset"], str(r["end_to_end"]["frames"]), f"{r['end_to_end']['fps']:.2f}",
                f"{r['decode_only']['fps']:.1f}", *[f"{r['stage_seconds'].get(s, 0):.2f}" for s in stages],
                r["slowest_stage"] or ""]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Per clip: each preset's stage seconds as grouped bars, titled with its end-to-end and decode-only fps."""
    plt = pyplot()
    clips = list(dict.fromkeys(r["clip"] for r in rows))
    stages = sorted({s for r in rows for s in r["stage_seconds"] if s not in WAITS})
    fig, axes = plt.subplots(len(clips), 1, figsize=(9, 3.2 * len(clips)), squeeze=False)
    for ax, clip in zip(axes[:, 0], clips):
        runs = [r for r in rows if r["clip"] == clip]
        width = 0.8 / len(stages)
        for k, stage in enumerate(stages):
            ax.bar([i + k * width for i in range(len(runs))], [r["stage_seconds"].get(stage, 0) for r in runs],
                   width, label=stage)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(runs))],
                      [f"{r['preset']}\n{r['end_to_end']['fps']:.1f} fps (decode {r['decode_only']['fps']:.0f})"
                       for r in runs], fontsize=8)
        ax.set(ylabel="seconds", title=clip)
        ax.legend(fontsize=7, ncol=len(stages))
    fig.tight_layout()
    save_figure(fig, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")),
                    help="configs/*.yaml names or paths (default: all presets)")
    ap.add_argument("--clips", nargs="+", type=Path, default=sorted(SHARED_VIDEO.glob("*.mp4")) or [SHARED_VIDEO],
                    help=f"video files (default: {SHARED_VIDEO}/*.mp4)")
    ap.add_argument("--frames", type=int, default=None, help="frames per clip (default: the whole clip)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override applied to every preset (repeatable)")
    add_output_args(ap, plot="PNG: stage seconds per preset, per clip")
    args = ap.parse_args(argv)
    if args.frames is not None and args.frames < 1:
        ap.error("--frames must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(lambda: run(parse_args(argv)), log)


if __name__ == "__main__":
    raise SystemExit(main())
