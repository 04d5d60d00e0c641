"""Detector cost and output on the shared stills and clips: faces found, seconds per frame, and where
the time goes (P-Net pyramid, R-Net, O-Net, other).

    python benchmarks/detect_speed.py [--config configs/cctv.yaml] [--set detect.min_face_size=20] \
        [--every 10 --first 300] [--baseline benchmarks/results/detect_speed_baseline.json] \
        [--against /path/to/other/checkout/pipeline/detect.py] \
        --json out/detect_speed.json --plot out/detect_speed.png

Input sets: every still under ../shared/data/stills/<folder>/** (one set per folder), and every
`--every`-th of the first `--first` frames of each clip ../shared/data/video/*.mp4 (one set per
clip). Each image goes through MTCNNDetector alone (one frame per detect() call, one torch thread,
the config's detect section on the CPU), after one warm-up call. Per set: faces found, seconds per
frame (p50, mean), the detector's `profile` (seconds per stage, P-Net pixels, R-/O-Net windows).
With --baseline (an earlier --json), each set's face count is compared with it: the change in %,
and `counts_within_1pct` over all sets (exit 1 when not). Timings move with the machine's load:
compare two versions of the detector with --against (another checkout's pipeline/detect.py, e.g.
from `git archive`): both detect every image, alternately (the order swapped from image to image),
so that the load hits both alike; the other's results are under "against" in the JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import cli  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.detect import STAGES, MTCNNDetector  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.files import is_image_file  # noqa: E402
from pipeline.source import SourceConfig, open_source  # noqa: E402

log = logging.getLogger("detect_speed")
DATA = ROOT.parent / "shared/data"
TOLERANCE = 0.01  # face counts may move by 1 % from the baseline


def still_sets(root: Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    """One set per folder under `root`: (relative path, BGR image) for every image below it."""
    sets = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
        sets[f"stills/{folder.name}"] = [(str(p.relative_to(root)), _read(p)) for p in paths]
    return sets


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise PipelineError(f"cannot decode {path}")
    return image


def clip_sets(root: Path, every: int, first: int) -> dict[str, list[tuple[str, np.ndarray]]]:
    """One set per clip: every `every`-th frame of its first `first` frames."""
    sets = {}
    for path in sorted(root.glob("*.mp4")):
        frames = []
        with open_source(str(path), SourceConfig()) as src:
            for frame in src:
                if frame.index >= first:
                    break
                if frame.index % every == 0:
                    frames.append((f"{path.name}#{frame.index}", frame.image))
        sets[f"video/{path.stem}"] = frames
    return sets


def measure(detectors: list[MTCNNDetector], images: list[tuple[str, np.ndarray]]) -> list[dict]:
    """Per detector: faces, seconds per frame and its profile over one input set. Each image goes
    through every detector in turn, the order rotated from image to image."""
    before = [d.profile.as_dict() for d in detectors]
    seconds: list[list[float]] = [[] for _ in detectors]
    faces: list[dict[str, int]] = [{} for _ in detectors]
    for k, (name, image) in enumerate(images):
        for j in np.roll(np.arange(len(detectors)), k):
            t0 = time.perf_counter()
            [found] = detectors[j].detect([image])
            seconds[j].append(time.perf_counter() - t0)
            faces[j][name] = len(found)
    return [_row(d.profile.as_dict(), b, s, f, len(images)) for d, b, s, f in zip(detectors, before, seconds, faces)]


def _row(after: dict, before: dict, seconds: list[float], faces: dict[str, int], frames: int) -> dict:
    n = max(frames, 1)
    return {
        "frames": frames, "faces": sum(faces.values()), "faces_per_image": faces,
        "s_per_frame_p50": round(float(np.median(seconds)), 4) if seconds else None,
        "s_per_frame_mean": round(float(np.mean(seconds)), 4) if seconds else None,
        "stage_s_per_frame": {s: round((after["seconds"][s] - before["seconds"][s]) / n, 4) for s in STAGES},
        "pnet_pixels_per_frame": round((after["pnet_pixels"] - before["pnet_pixels"]) / n),
        "rnet_windows_per_frame": round((after["rnet_windows"] - before["rnet_windows"]) / n, 1),
        "onet_windows_per_frame": round((after["onet_windows"] - before["onet_windows"]) / n, 1),
    }


def load_other_detector(path: Path, config) -> MTCNNDetector:
    """MTCNNDetector from another version of pipeline/detect.py (it must keep `profile`), loaded
    inside this checkout's `pipeline` package so that its relative imports resolve."""
    if not path.is_file():
        raise PipelineError(f"--against: {path} not found")
    spec = importlib.util.spec_from_file_location("pipeline._detect_against", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    detector = module.MTCNNDetector(module.DetectorConfig(**dataclasses.asdict(config)))
    if not hasattr(detector, "profile"):
        raise PipelineError(f"--against: {path} has no MTCNNDetector.profile (older than the profile)")
    return detector


def compare_counts(results: dict, baseline: dict) -> dict:
    """Per set: baseline faces, faces now, change in %; within_1pct over all sets."""
    rows = {}
    for name, now in results.items():
        was = baseline["sets"].get(name, {}).get("faces")
        change = None if not was else round(100.0 * (now["faces"] - was) / was, 2)
        rows[name] = {"baseline": was, "now": now["faces"], "change_pct": change}
    ok = all(r["baseline"] is not None and abs(r["now"] - r["baseline"]) <= TOLERANCE * max(r["baseline"], 1)
             for r in rows.values())
    return {"sets": rows, "counts_within_1pct": ok}


def plot(result: dict, path: Path) -> None:
    """Stacked bars: seconds per frame per stage, one bar per input set (matplotlib, Agg)."""
    try:
        import matplotlib
    except ImportError:
        raise PipelineError("--plot needs matplotlib: pip install -e .[dev]") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["sets"])
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 4.5))
    bottom = np.zeros(len(names))
    for stage in STAGES:
        values = np.array([result["sets"][n]["stage_s_per_frame"][stage] for n in names])
        ax.bar(names, values, bottom=bottom, label=stage)
        bottom += values
    for k, n in enumerate(names):
        ax.text(k, bottom[k], f"{result['sets'][n]['faces']} faces", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("detector seconds per frame (1 thread)")
    ax.set_title(f"MTCNN cost per stage ({result['config']})", fontsize=9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [*args.overrides, "detect.device=cpu"])
    detector = MTCNNDetector(cfg.detect.detector())
    for folder in (args.stills, args.videos):
        if not folder.is_dir():
            raise PipelineError(f"{folder} not found: the shared data (../shared/data) is needed")
    sets = {**still_sets(args.stills), **clip_sets(args.videos, args.every, args.first)}
    detectors = [detector] + ([load_other_detector(args.against, detector.config)] if args.against else [])
    for d in detectors:
        d.detect([np.zeros((240, 320, 3), np.uint8)])  # warm-up: first-call allocations
    result = {
        "config": args.config, "overrides": args.overrides, "every": args.every, "first": args.first,
        "threads": args.threads, "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "sets": {},
    }
    if args.against:
        result["against"] = {"detector": str(args.against), "sets": {}}
    for name, images in sets.items():
        rows = measure(detectors, images)
        result["sets"][name] = row = rows[0]
        if args.against:
            result["against"]["sets"][name] = rows[1]
        log.info("%-32s %4d frames %5d faces  p50 %.3f s  mean %.3f s%s", name, row["frames"], row["faces"],
                 row["s_per_frame_p50"] or 0, row["s_per_frame_mean"] or 0,
                 f"  (against: {rows[1]['faces']} faces, p50 {rows[1]['s_per_frame_p50'] or 0:.3f} s)"
                 if args.against else "")
    status = 0
    if args.baseline:
        result["baseline"] = str(args.baseline)
        result["counts"] = compare_counts(result["sets"], json.loads(args.baseline.read_text()))
        status = 0 if result["counts"]["counts_within_1pct"] else 1
    print(json.dumps({n: {k: v for k, v in r.items() if k != "faces_per_image"} for n, r in result["sets"].items()},
                     indent=1))
    if args.baseline:
        print(json.dumps(result["counts"], indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot(result, args.plot)
    return status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/cctv.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--stills", type=Path, default=DATA / "stills")
    ap.add_argument("--videos", type=Path, default=DATA / "video")
    ap.add_argument("--every", type=int, default=10, help="take every k-th frame of each clip")
    ap.add_argument("--first", type=int, default=300, help="from the first N frames of each clip")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: timings less bent by other load)")
    ap.add_argument("--baseline", type=Path, help="an earlier --json to compare face counts with")
    ap.add_argument("--against", type=Path, help="another version's pipeline/detect.py, timed alternately")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return cli.run(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
