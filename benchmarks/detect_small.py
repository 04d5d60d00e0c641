"""Detection recall on small, camera-degraded faces: LFW photos shrunk so the face is W px wide.

    python benchmarks/detect_small.py --n 200 --widths 12 16 24 \
        --cams clean jpeg50 jpeg30 noise8+jpeg50 h264crf36 \
        [--config configs/default.yaml] --set detect.min_face_size=12 --json out/detect_small.json

For N LFW photos (the first photo of every person, people in name order, N of them evenly spread),
dlib's HOG detector (RGB, upsample 1) gives the expected face box on the full 250 x 250 photo.
The whole photo is then shrunk (models.data.resize, bicubic with antialiasing) so that box is W px
wide, degraded by the camera model (models.camera.CameraModel, seeded per photo and cell), and
given to MTCNNDetector with the config's detect section. A probe counts as found when a detection
overlaps the shrunk expected box with IoU > 0.3 (MTCNN and dlib frame a face differently; 0.3
tolerates that, but not a box on the shoulder or the background). Reported per cell (W, camera):
recall, and the detector's seconds per image (one torch thread). Without --set, the detect section
is the config's own; the identity benchmark's probe setting is `--set detect.min_face_size=12`.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.identity import shrink_to_face_width  # noqa: E402  (the identity benchmark's probe scale)
from common import cli  # noqa: E402
from models.camera import CameraModel  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.detect import DetectorConfig, MTCNNDetector  # noqa: E402
from pipeline.files import is_image_file  # noqa: E402
from trackers.sort import iou_matrix  # noqa: E402

LFW = ROOT.parent / "shared/data/identity/lfw_dev"
WIDTHS = (12, 16, 24)
CAMS = ("clean", "jpeg50", "jpeg30", "noise8+jpeg50", "h264crf36")
IOU_FOUND = 0.3


@dataclass
class Probe:
    path: str
    box: tuple[float, float, float, float]  # dlib's face box on the full photo, xyxy (x2, y2 exclusive)


def load_probes(root: Path = LFW, n: int = 200) -> list[Probe]:
    """N photos with a dlib face: first photo per person, people sorted, N evenly spread over them
    (people without a dlib face are replaced by the next ones in the same stride order)."""
    from pipeline.recognition import DlibEmbedder

    people = sorted(p for p in Path(root).iterdir() if p.is_dir())
    firsts = [min(f for f in p.iterdir() if is_image_file(f)) for p in people]
    step = max(1, len(firsts) // n)
    order = [firsts[i] for offset in range(step) for i in range(offset, len(firsts), step)]
    reference = DlibEmbedder(realign=False)  # the identity benchmark's reference face box
    probes: list[Probe] = []
    for path in order:
        if len(probes) == n:
            break
        box = reference.face_box(cv2.imread(str(path), cv2.IMREAD_COLOR))
        if box is not None:
            probes.append(Probe(str(path), tuple(float(v) for v in box)))
    return probes


def make_image(probe: Probe, width: int, cam: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The probe photo shrunk so its face box is `width` px wide, through the camera model.
    Returns (BGR uint8 image, expected box xyxy in its pixels)."""
    small, box = shrink_to_face_width(cv2.imread(probe.path, cv2.IMREAD_COLOR), probe.box, width)
    rng = np.random.default_rng([seed, zlib.crc32(f"{Path(probe.path).name}|{width}|{cam}".encode())])
    return CameraModel.parse(cam)(small, rng), box


def make_grid(probes: list[Probe], widths=WIDTHS, cams=CAMS, seed: int = 0) -> dict:
    """{(width, cam): [(image, box), ...]}: the degraded images, made once for any number of settings."""
    return {(w, c): [make_image(p, w, c, seed) for p in probes] for w in widths for c in cams}


def evaluate(detector: MTCNNDetector, grid: dict) -> dict:
    """Recall and detector seconds per image for each cell, plus the totals."""
    cells, found_all, n_all, seconds_all = {}, 0, 0, 0.0
    for (width, cam), items in grid.items():
        found, seconds, false = 0, 0.0, 0
        for image, box in items:
            t0 = time.perf_counter()
            [faces] = detector.detect([image])
            seconds += time.perf_counter() - t0
            hits = (iou_matrix(np.array([f.box for f in faces]).reshape(-1, 4), box[None]).ravel() > IOU_FOUND).tolist()
            found += any(hits)
            false += len(hits) - sum(hits)
        cells[f"{width}/{cam}"] = {"width": width, "cam": cam, "n": len(items), "found": found,
                                   "recall": round(found / max(1, len(items)), 4),
                                   "other_detections": false,
                                   "seconds_per_image": round(seconds / max(1, len(items)), 5)}
        found_all, n_all, seconds_all = found_all + found, n_all + len(items), seconds_all + seconds
    return {"cells": cells, "recall": round(found_all / max(1, n_all), 4),
            "seconds_per_image": round(seconds_all / max(1, n_all), 5)}


def table(result: dict, widths, cams) -> str:
    lines = ["| W px | " + " | ".join(cams) + " | s/img |", "|---" * (len(cams) + 2) + "|"]
    for w in widths:
        cells = [result["cells"][f"{w}/{c}"] for c in cams]
        sec = sum(c["seconds_per_image"] * c["n"] for c in cells) / max(1, sum(c["n"] for c in cells))
        lines.append(f"| {w} | " + " | ".join(f"{c['recall']:.3f}" for c in cells) + f" | {sec * 1000:.1f} ms |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", type=Path, default=LFW)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS))
    ap.add_argument("--cams", nargs="+", default=list(CAMS))
    ap.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="detect.KEY=VALUE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable timings)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    return cli.run(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)

    cfg = load_config(args.config, [*args.overrides, "detect.device=cpu"])
    settings: DetectorConfig = cfg.detect.detector()
    detector = MTCNNDetector(settings)
    probes = load_probes(args.lfw, args.n)
    grid = make_grid(probes, args.widths, args.cams, args.seed)
    result = evaluate(detector, grid)
    report = {"config": args.config, "overrides": args.overrides, "detector": asdict(settings),
              "n": len(probes), "iou_found": IOU_FOUND, "seed": args.seed, "threads": args.threads,
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__, **result}
    print(f"{len(probes)} LFW probes, detector {asdict(settings)}; recall (IoU > {IOU_FOUND}):")
    print(table(result, args.widths, args.cams))
    print(f"overall recall {result['recall']:.3f}, {result['seconds_per_image'] * 1000:.1f} ms per image")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
