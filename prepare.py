#!/usr/bin/env python3
"""Prepare face data for training and evaluating ARASFSR: one aligned face per photo.

    python prepare.py --src DIR --out DIR [--sharpness-csv CSV] [--min-sharpness 50] [--size 128]

Detects (pipeline/detect.py, MTCNN) and aligns (pipeline/align.py, the pipeline's own warp) one
face per photo and writes it in the pipeline's canonical framing at size x size (JPEG), plus
manifest.csv (models/data.py reads it) and prepare.json (settings and counts).

Example:
    python prepare.py --src ../shared/data/faces/utkface --out data/prepared_utk --min-sharpness 50
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common import cli
from common.errors import UserError
from models.data import repack, split_for, write_manifest
from pipeline.align import laplacian_variance
from pipeline.files import IMAGE_SUFFIXES, is_image_file



def read_sharpness_csv(path: Path) -> dict[str, float]:
    """{file name: sharpness} from a CSV with a name column and a sharpness / Laplacian column."""
    if not path.is_file():
        raise UserError(f"sharpness CSV {path} not found")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        name = next((c for c in cols if c.strip().lower() in ("file", "filename", "name", "image", "path")), None)
        value = next((c for c in cols if re.search("sharp|lap|var", c, re.I)), None)
        if name is None or value is None:
            raise UserError(f"sharpness CSV {path}: need a file-name column and a sharpness column, got {cols}")
        return {Path(row[name]).name: float(row[value]) for row in reader}


def _choose_face(detections: list, ambiguity: float) -> tuple[object | None, str]:
    """The photo's face: the largest detection; None if there is none or a second one of similar size."""
    if not detections:
        return None, "no_face"
    ranked = sorted(detections, key=lambda d: d.size, reverse=True)
    if len(ranked) > 1 and ranked[1].size >= ambiguity * ranked[0].size:
        return None, "ambiguous"
    return ranked[0], ""


def _safe_name(source: str, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", source.removesuffix(".chip.jpg")).strip("._") or "face"
    stem, k = (Path(stem).stem if is_image_file(Path(stem)) else stem), 1
    name = f"{stem}.jpg"
    while name in taken:
        k += 1
        name = f"{stem}_{k}.jpg"
    taken.add(name)
    return name


def prepare(src: Path, out: Path, size: int = 128, sharpness_csv: Path | None = None, min_sharpness: float = 0.0,
            val_fraction: float = 0.05, min_face: int = 40, max_upscale: float = 1.25, ambiguity: float = 0.7,
            quality: int = 95, batch: int = 32, detector=None) -> dict:
    """Detect, align and write one canonical face per photo of `src` into `out`; returns the counts.

    Photos are padded (constant grey, half their side) before detection so that faces filling
    the photo are seen whole. Skipped: unreadable, sharpness < min_sharpness, no face, two faces
    of similar size (second >= `ambiguity` x the first), faces whose canonical frame is smaller
    than size / max_upscale px (the ground truth would be up-sampled), unalignable landmarks.
    """
    import cv2

    from pipeline.align import UnalignableFaceError, align_face, native_size
    from pipeline.detect import MTCNNDetector

    if not src.is_dir():
        raise UserError(f"source folder {src} does not exist")
    photos = sorted(p for p in src.iterdir() if is_image_file(p) and p.is_file())
    if not photos:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {src}")
    known = read_sharpness_csv(sharpness_csv) if sharpness_csv else {}
    detector = detector or MTCNNDetector(device="cpu", min_face_size=min_face)
    out.mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(["photos", "unreadable", "too_blurry", "no_face", "ambiguous", "too_small",
                            "unalignable", "written", "train", "val"], 0)
    counts["photos"] = len(photos)
    rows: list[dict] = []
    taken: set[str] = set()
    start = time.perf_counter()
    bar = tqdm(total=len(photos), desc="prepare", unit="photo", dynamic_ncols=True)
    for i in range(0, len(photos), batch):
        chunk = []
        for path in photos[i:i + batch]:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                counts["unreadable"] += 1
                continue
            # the central 128 px: the window utkface_sharpness.csv was computed on
            sharp = known[path.name] if path.name in known else laplacian_variance(image, 128)
            if sharp < min_sharpness:
                counts["too_blurry"] += 1
                continue
            chunk.append((path, image, sharp))
        pads = [max(img.shape[:2]) // 2 for _, img, _ in chunk]
        padded = [cv2.copyMakeBorder(img, p, p, p, p, cv2.BORDER_CONSTANT, value=(128, 128, 128))
                  for (_, img, _), p in zip(chunk, pads)]
        for (path, image, sharp), pad, dets in zip(chunk, pads, detector.detect(padded) if padded else []):
            face, reason = _choose_face(dets, ambiguity)
            if face is None:
                counts[reason] += 1
                continue
            landmarks = np.asarray(face.landmarks, np.float64) - pad
            try:
                native = native_size(landmarks)
                if native * max_upscale < size:
                    counts["too_small"] += 1
                    continue
                aligned = align_face(image, replace(face, landmarks=landmarks), 0, 0, min_size=size, max_size=size)
            except UnalignableFaceError:
                counts["unalignable"] += 1
                continue
            crop, transform = aligned.crop, aligned.transform
            name = _safe_name(path.name, taken)
            if not cv2.imwrite(str(out / name), crop, [cv2.IMWRITE_JPEG_QUALITY, quality]):
                raise UserError(f"cannot write {out / name}")
            split = split_for(path.name, val_fraction)
            counts["written"] += 1
            counts[split] += 1
            rows.append({"file": name, "source": path.name, "split": split, "sharpness": round(sharp, 2),
                         "score": round(float(face.score), 4), "native": round(native, 1),
                         "landmarks": [round(float(v), 2) for v in landmarks.ravel()],
                         "transform": [round(float(v), 6) for v in transform.ravel()],
                         "src_h": image.shape[0], "src_w": image.shape[1]})
        bar.update(min(batch, len(photos) - i))
        bar.set_postfix(written=counts["written"], refresh=False)
    bar.close()
    write_manifest(out, rows)
    counts["size_mb"] = round(sum((out / r["file"]).stat().st_size for r in rows) / 1e6, 1)
    counts["seconds"] = round(time.perf_counter() - start, 1)
    settings = {"src": str(src), "size": size, "min_sharpness": min_sharpness, "sharpness_csv": str(sharpness_csv or ""),
                "val_fraction": val_fraction, "min_face": min_face, "max_upscale": max_upscale,
                "ambiguity": ambiguity, "jpeg_quality": quality}
    (out / "prepare.json").write_text(json.dumps({"settings": settings, "counts": counts}, indent=1) + "\n")
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="prepare.py", description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, required=True, help="folder of face photos")
    ap.add_argument("--out", type=Path, required=True, help="output folder (aligned faces + manifest.csv)")
    ap.add_argument("--sharpness-csv", type=Path, help="CSV of precomputed sharpness (else variance of Laplacian)")
    ap.add_argument("--min-sharpness", type=float, default=0.0, help="skip photos below this sharpness")
    ap.add_argument("--size", type=int, default=128, help="side of the aligned HR faces (px)")
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--min-face", type=int, default=40, help="MTCNN min_face_size (px)")
    ap.add_argument("--max-upscale", type=float, default=1.25, help="skip faces needing more up-sampling")
    ap.add_argument("--repack", type=int, metavar="QUALITY",
                    help="--src is a prepared set: copy it to --out as WebP at QUALITY (1-100), e.g. to carry it "
                         "to a GPU machine (models.data.repack)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return cli.run(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    if args.repack is not None:
        if not 1 <= args.repack <= 100:
            raise UserError(f"--repack must be a quality in 1..100, got {args.repack}")
        faces = repack(args.src, args.out, args.repack)
        size = sum(f.stat().st_size for f in args.out.iterdir()) / 1e6
        print(f"prepare: {faces} faces of {args.src} repacked as WebP (quality {args.repack}), {size:.1f} MB in "
              f"{args.out}")
        return 0
    if args.size < 16:
        raise UserError(f"--size must be >= 16, got {args.size}")
    counts = prepare(args.src, args.out, args.size, args.sharpness_csv, args.min_sharpness, args.val_fraction,
                     args.min_face, args.max_upscale)
    print(f"prepare: {counts['photos']} photos -> {counts['written']} faces ({counts['train']} train, "
          f"{counts['val']} val), {counts['size_mb']} MB in {args.out}; skipped: {counts['unreadable']} unreadable, "
          f"{counts['too_blurry']} too blurry, {counts['no_face']} no face, {counts['ambiguous']} ambiguous, "
          f"{counts['too_small']} too small, {counts['unalignable']} unalignable ({counts['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
