"""Time `model.upscale` for an LR crop to the recognizer size, next to bicubic measured in the same run.

    python benchmarks/bench_upscale.py --config configs/model/arasfsr_edsr.yaml --lr 28 --out-size 112 \
        --batch 1 32 --json out/bench_upscale.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import cli  # noqa: E402
from models import build_model, load_model, load_model_config, resolve_device  # noqa: E402


def timed(fn, repeats: int, device: torch.device) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="model config YAML (random weights: speed does not depend on them)")
    src.add_argument("--weights", help="a checkpoint (.safetensors)")
    ap.add_argument("--lr", type=int, default=28)
    ap.add_argument("--out-size", type=int, default=112)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    return cli.run(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    model = (load_model(args.weights, device) if args.weights else
             build_model(load_model_config(args.config)).to(device).eval())
    results = []
    for batch in args.batch:
        lr = torch.rand(batch, 3, args.lr, args.lr, device=device)
        size = (args.out_size, args.out_size)
        sr = timed(lambda: model.upscale(lr, size, amp=args.amp), args.repeats, device)
        bic = timed(lambda: F.interpolate(lr, size=size, mode="bicubic", align_corners=False).clamp(0, 1),
                    args.repeats, device)
        row = {"batch": batch, "lr": args.lr, "out": args.out_size, "arasfsr_s": statistics.median(sr),
               "bicubic_s": statistics.median(bic)}
        row["arasfsr_faces_per_s"] = batch / row["arasfsr_s"]
        row["ratio_vs_bicubic"] = row["arasfsr_s"] / row["bicubic_s"]
        results.append(row)
        print(f"batch {batch:3d}: arasfsr {row['arasfsr_s'] * 1000:9.1f} ms ({row['arasfsr_faces_per_s']:.1f} faces/s)"
              f"   bicubic {row['bicubic_s'] * 1000:7.2f} ms")
    report = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "model": args.weights or args.config,
              "params": sum(p.numel() for p in model.parameters()), "amp": args.amp, "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
