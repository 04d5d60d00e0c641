"""End-to-end pipeline speed next to decode-only speed, measured in the same run on the same file.

    python benchmarks/bench_pipeline.py --source ../shared/data/video/cctv_classroom_270p.mp4 \
        [--config configs/default.yaml] [--set key=value ...] --json out/bench_pipeline.json

Decode-only: the same source stage (PyAV, reader thread, queue) with a consumer that does nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import cli  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.runner import Runner  # noqa: E402
from pipeline.source import open_source  # noqa: E402


def decode_only(source: str, cfg) -> dict:
    t0 = time.perf_counter()
    with open_source(source, cfg.source) as src:
        n = sum(1 for _ in src)
    wall = time.perf_counter() - t0
    return {"frames": n, "wall_s": round(wall, 3), "fps": round(n / wall, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True)
    ap.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    return cli.run(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, [*args.overrides, "runtime.progress=false", "output.report=false"])
    decode = decode_only(args.source, cfg)
    with tempfile.TemporaryDirectory() as out:
        summary = Runner(cfg, args.source, out).run()
    result = {
        "source": args.source, "config": args.config, "overrides": args.overrides,
        "decode_only": decode,
        "end_to_end": {"frames": summary["frames_processed"], "wall_s": summary["wall_time_s"], "fps": summary["fps"]},
        "ratio_end_to_end_vs_decode": round(summary["fps"] / decode["fps"], 4),
        "faces_detected": summary["faces_detected"], "faces_written": summary["faces_written"],
        "tracks": summary["tracks"], "stages": summary["stages"], "enhance_method": summary["enhance_method"],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "stages"}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
