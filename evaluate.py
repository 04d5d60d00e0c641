"""PSNR / SSIM tables in the paper's layouts (sec. 4.1, Tables 1-3) for trained weights and bicubic.

    python evaluate.py --weights W [W ...] --data DIR --lr 64 --hr 96,128,256,512
                       [--degrade bicubic|nn-jpeg] [--split val] [--region photo|full] [--limit N]
                       [--json OUT] [--markdown OUT] [--title TEXT]

W is a checkpoint (`runs/x/best.safetensors`, optionally `LABEL=path`) or `bicubic`; one table row
each. --lr is one size for all columns or one per --hr size (Table 2: --lr 12,16,32 --hr 96,128,256).

Protocol: the LR image is made from the prepared ground truth (GT) directly (antialiased bicubic,
or nearest neighbour + JPEG quality 75 for nn-jpeg, the CelebAHQ-NN-JPEG-style case); the HR
reference at each size is the GT resized with antialiased bicubic (up-sampled where the size
exceeds the prepared GT: the table says so); SR by `model.upscale`, rounded to 8 bits; PSNR and
SSIM on Y (BT.601, [16, 235]), no border shave (models/metrics.py). --region photo (default)
scores only pixels that come from the face photo (the prepared faces are completed with
replicated border where the photo does not cover the canonical frame); --region full scores all.

Example:
    python evaluate.py --weights bicubic runs/cctv_cpu/best.safetensors --data data/prepared_utk \\
        --lr 64 --hr 96,128,256,512 --json out/table1.json --markdown out/table1.md
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from common import cli
from common.errors import UserError
from models import load_model
from models.data import EVAL_DEGRADATIONS, NN_JPEG_QUALITY, FaceSet
from models.scoring import REGIONS, EvalPairs, bicubic_upscaler, model_upscaler, score

log = logging.getLogger("evaluate")


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def settings_from(lrs: list[int], hrs: list[int]) -> list[tuple[int, int]]:
    """(LR, HR) per column: one LR for all HR sizes, or one LR per HR size."""
    if len(lrs) == 1:
        lrs = lrs * len(hrs)
    if len(lrs) != len(hrs):
        raise UserError(f"--lr gives {len(lrs)} sizes and --hr {len(hrs)}: give one LR size or one per HR size")
    if min(lrs) < 8:
        raise UserError(f"LR sizes must be >= 8 px (the models' minimum input), got {min(lrs)}")
    return list(zip(lrs, hrs))


def column(lr: int, hr: int) -> str:
    return f"x{hr / lr:.3g} {lr}-{hr}"


class Method:
    """One table row: bicubic interpolation or a checkpoint's model.upscale."""

    def __init__(self, spec: str, device: str):
        label, sep, path = spec.partition("=")
        label, path = (label, path) if sep else ("", spec)
        self.path = path
        if path.lower() == "bicubic":
            self.upscale, self.label, self.info = bicubic_upscaler, label or "Bicubic", {"weights": "bicubic"}
            return
        model = load_model(path, device=device)
        self.upscale = model_upscaler(model)
        meta = model.metadata
        self.label = label or f"{model.config['name']} ({Path(path).parent.name}/{Path(path).stem})"
        self.info = {"weights": path, "model": model.config["name"], "step": meta.get("step"),
                     "train_config": meta.get("config"), "val_psnr": meta.get("val_psnr")}


def evaluate(methods: list[Method], faces: FaceSet, settings: list[tuple[int, int]], degrade: str,
             jpeg_quality: int, region: str, batch: int) -> dict[str, dict[str, dict]]:
    """{method label: {column: {"psnr", "ssim", "n", "lr", "hr", "seconds"}}}, means over the faces."""
    results: dict[str, dict[str, dict]] = {m.label: {} for m in methods}
    bar = tqdm(total=len(settings) * len(methods) * len(faces), desc="evaluate", unit="img", dynamic_ncols=True)
    for lr_size, hr_size in settings:
        pairs = EvalPairs.make(faces, lr_size, hr_size, degrade, jpeg_quality, region)
        for method in methods:
            bar.set_postfix(setting=column(lr_size, hr_size), method=method.label[:24], refresh=False)
            start = time.perf_counter()
            result = score(method.upscale, pairs, batch, progress=bar.update)
            results[method.label][column(lr_size, hr_size)] = {
                **result, "lr": lr_size, "hr": hr_size, "seconds": round(time.perf_counter() - start, 2)}
    bar.close()
    return results


def markdown(title: str, notes: list[str], columns: list[str], results: dict[str, dict[str, dict]]) -> str:
    """The table in the paper's layout: one row per method, one 'PSNR / SSIM' cell per LR-HR setting."""
    lines = [f"### {title}", "", "| Method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, row in results.items():
        cells = [f"{r['psnr']:.2f} / {r['ssim']:.4f}" if r["psnr"] is not None else f"inf / {r['ssim']:.4f}"
                 for r in (row[c] for c in columns)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", action="extend", required=True,
                    help="checkpoint(s) ([LABEL=]path) and/or 'bicubic'; one row each")
    ap.add_argument("--data", type=Path, required=True, help="prepared face folder (prepare.py)")
    ap.add_argument("--lr", type=int_list, default=[64], help="LR size(s): one, or one per --hr size")
    ap.add_argument("--hr", type=int_list, default=[96, 128, 256, 512], help="HR sizes, comma-separated")
    ap.add_argument("--degrade", choices=EVAL_DEGRADATIONS, default="bicubic")
    ap.add_argument("--jpeg-quality", type=int, default=NN_JPEG_QUALITY, help="JPEG quality of nn-jpeg")
    ap.add_argument("--split", default="val", help="val, train or all")
    ap.add_argument("--region", choices=REGIONS, default="photo")
    ap.add_argument("--limit", type=int, help="evaluate the first N faces only")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--title", default="PSNR (dB) / SSIM on Y")
    ap.add_argument("--json", type=Path, help="write the results as JSON")
    ap.add_argument("--markdown", type=Path, help="write the table as markdown")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return cli.run(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_from(args.lr, args.hr)
    methods = [Method(spec, args.device) for spec in args.weights]
    if len({m.label for m in methods}) < len(methods):
        raise UserError("two rows would have the same label; name them with LABEL=path")
    faces = FaceSet.load(args.data, None if args.split == "all" else args.split, limit=args.limit)
    start = time.perf_counter()
    results = evaluate(methods, faces, settings, args.degrade, args.jpeg_quality, args.region, args.batch)
    columns = [column(lr, hr) for lr, hr in settings]
    lr_text = (f"nearest neighbour + JPEG q{args.jpeg_quality}" if args.degrade == "nn-jpeg"
               else "bicubic (antialiased)")
    notes = [f"data: {args.data} split={args.split}, {len(faces)} faces, ground truth {faces.size} px "
             f"(canonical framing); LR made from the ground truth by {lr_text}",
             f"region: {'photo pixels only (replicated border excluded)' if args.region == 'photo' else 'whole image'}"
             "; PSNR/SSIM on Y (BT.601), no border shave, SSIM 11x11 Gaussian sigma 1.5"]
    upsampled = [c for (lr, hr), c in zip(settings, columns) if hr > faces.size]
    if upsampled:
        notes.append(f"HR reference for {', '.join(upsampled)} is the {faces.size} px ground truth UP-SAMPLED "
                     "(bicubic): those columns measure closeness to a smooth target, not to real detail")
    table = markdown(args.title, notes, columns, results)
    print(table)
    report = {"title": args.title, "settings": {"data": str(args.data), "split": args.split, "faces": len(faces),
                                               "gt_size": faces.size, "degrade": args.degrade,
                                               "jpeg_quality": args.jpeg_quality if args.degrade == "nn-jpeg" else None,
                                               "region": args.region, "columns": columns},
              "notes": notes, "rows": [{"method": m.label, **m.info, "results": results[m.label]} for m in methods]}
    for path, text in ((args.json, json.dumps(report, indent=1) + "\n"), (args.markdown, table)):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    print(f"evaluated {len(methods)} method(s) x {len(settings)} setting(s) on {len(faces)} faces "
          f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
