"""Super-resolution speed: faces/s and p50/p99 latency of the model's fast path (`ARASFSR.upscale`), its
unoptimised reference path (`models.arasfsr.reference_upscale`) and the project's bicubic
(`pipeline.enhance.bicubic`, per crop on the CPU, as the pipeline runs it; `bicubic_device`: torch's bicubic on
the batch on the model's device, the floor on a GPU), measured in the same run, interleaved, for every weights /
device / crop size / output size / batch; with the peak memory of each (RSS, sampled; on CUDA also the max allocated).

    python -m benchmarks.sr_speed [--weights PATH|config:YAML ...] [--lr 14 20 28 40 64] [--out 112 160] \
        [--batch 1 8 32 128] [--device cpu cuda] [--threads N] [--repeats 5] [--quick] \
        [--runtime torch onnxruntime] [--json out/sr_speed.json] [--plot out/sr_speed.png]

`--weights config:configs/model/X.yaml` builds that model with random weights: speed does not depend on
them. Default weights: the paper's (the full decoder) and ARASFSR-LM (its trained file when present, else
random weights from its config). `--quick`: 28 px -> 112, batch 1 and 8, 3 repeats, CPU only.
Latency is per call (one batch); faces/s = batch / p50. The ratios are of faces/s in the same cell:
`fast_over_reference` (the fast path's speed-up) and `fast_over_bicubic` (below 1: SR costs more).
Each cell starts with one untimed warm-up call of each method at its sizes.
`--runtime torch onnxruntime`: the fast path once per runtime (`model.runtime`, models/onnx_runtime.py; CPU
cells only), interleaved with the others: methods `fast` (torch) and `fast_onnxruntime`, and their ratio
`onnxruntime_over_torch`. The ONNX graphs come from the enhancer's cache (exported on the first use).
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.output import add_output_args, pyplot, run_benchmark, save_figure, write_json
from common.errors import UserError
from models import build_model, load_model, load_model_config
from models.arasfsr import MIN_INPUT, ARASFSR, reference_upscale
from pipeline.enhance import bicubic

log = logging.getLogger("sr_speed")

ROOT = Path(__file__).resolve().parents[1]
LM_WEIGHTS = ROOT / "models/weights/arasfsr_lm.safetensors"
LM_CONFIG = ROOT / "configs/model/arasfsr_lm_cpu.yaml"
METHODS = ("fast", "reference", "bicubic", "bicubic_device")
RUNTIMES = ("torch", "onnxruntime")
QUICK = {"lr": [28], "out": [112], "batch": [1, 8], "repeats": 3, "device": ["cpu"]}


def default_weights() -> list[str]:
    """The full decoder (the pipeline's default weights) and ARASFSR-LM (random weights until trained)."""
    return [str(ROOT / "models/weights/arasfsr_paper.safetensors"),
            str(LM_WEIGHTS) if LM_WEIGHTS.is_file() else f"config:{LM_CONFIG}"]


def load_weights(spec: str, device: str | torch.device = "cpu") -> tuple[str, ARASFSR]:
    """`spec`: a checkpoint path, or `config:PATH` (a model config: random weights). Returns (label, model)."""
    if spec.startswith("config:"):
        path = Path(spec.removeprefix("config:"))
        torch.manual_seed(0)
        return f"{path.stem} (random)", build_model(load_model_config(path)).to(device).eval()
    return Path(spec).stem, load_model(spec, device)


def time_interleaved(calls: dict[str, Callable[[], object]], repeats: int,
                     sync: Callable[[], None] = lambda: None, during: Callable[[str], object] = nullcontext
                     ) -> dict[str, list[float]]:
    """Seconds per call of each of `calls`, taken round-robin (a, b, c, a, b, c, ...) after one warm-up call
    each, so that a change in the machine's load during the run hits every method alike. `during(name)`: a
    context around each timed call (e.g. to attribute memory to the method running)."""
    for fn in calls.values():
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            with during(name):
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)
    return times


def latency_stats(seconds: list[float], batch: int) -> dict[str, float]:
    p50, p99 = np.percentile(seconds, [50, 99])
    return {"p50_ms": round(1000 * p50, 6), "p99_ms": round(1000 * p99, 6), "faces_per_s": round(batch / p50, 3),
            "calls": len(seconds)}


def rss_mb() -> float:
    """Resident memory of this process now (MB); the lifetime peak where /proc is absent."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """Peak memory per method while its timed calls run: RSS sampled by a thread every `interval` s (a
    lifetime peak, ru_maxrss, could not tell the methods of one run apart) and, on CUDA, the max allocated."""

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device, self.interval = device, interval
        self.rss: dict[str, float] = {}
        self.cuda: dict[str, float] = {}
        self._current: str | None = None
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(self.interval):
            self._note(rss_mb())

    def _note(self, mb: float) -> None:
        if (name := self._current) is not None:
            self.rss[name] = max(self.rss.get(name, 0.0), mb)

    @contextmanager
    def during(self, name: str):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._current = name
        try:
            yield
        finally:
            self._note(rss_mb())  # a call shorter than the interval still counts once
            self._current = None
            if self.device.type == "cuda":
                self.cuda[name] = max(self.cuda.get(name, 0.0), torch.cuda.max_memory_allocated(self.device) / 2**20)

    def __enter__(self) -> "PeakMemory":
        self._sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._sampler.join()


def method_calls(model: ARASFSR, lr: torch.Tensor, size: int, methods: list[str],
                 amp: str | None, runtimes: dict[str, object | None]) -> dict[str, Callable[[], object]]:
    """One zero-argument call per method on the same batch, the fast path once per runtime in `runtimes`
    (name -> `model.runtime`; "torch" is None). Bicubic runs as the pipeline runs it: per crop, uint8 HWC in
    and out."""
    crops = [np.ascontiguousarray(c) for c in (lr * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()]

    def fast(runtime) -> Callable[[], object]:
        def call():
            model.runtime = runtime
            try:
                return model.upscale(lr, (size, size), amp=amp)
            finally:
                model.runtime = None
        return call

    available = {
        "fast": {("fast" if name == "torch" else f"fast_{name}"): fast(rt) for name, rt in runtimes.items()},
        "reference": {"reference": lambda: reference_upscale(model, lr, (size, size))},
        "bicubic": {"bicubic": lambda: [bicubic(c, size) for c in crops]},
        # torch's bicubic on the batch where the model runs: a speed floor on a GPU (issue 13: "against bicubic on
        # the same GPU"); the product's bicubic is the CPU one above
        "bicubic_device": {"bicubic_device": lambda: F.interpolate(lr, size=(size, size), mode="bicubic",
                                                                     align_corners=False).clamp_(0, 1)},
    }
    return {name: call for m in methods for name, call in available[m].items()}


def measure_cell(model: ARASFSR, device: torch.device, lr_px: int, out_px: int, batch: int, methods: list[str],
                 repeats: int, amp: str | None, runtimes: dict[str, object | None]) -> dict[str, dict]:
    """Every method on one batch of `batch` random lr_px crops to out_px, interleaved."""
    generator = torch.Generator().manual_seed(batch * 1000 + lr_px)
    lr = torch.rand(batch, 3, lr_px, lr_px, generator=generator).to(device)
    calls = method_calls(model, lr, out_px, methods, amp, runtimes)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with PeakMemory(device) as memory:
        times = time_interleaved(calls, repeats, sync, memory.during)
    result = {}
    for name in calls:
        result[name] = latency_stats(times[name], batch) | {"rss_peak_mb": round(memory.rss[name], 1)}
        if name in memory.cuda:
            result[name]["cuda_max_allocated_mb"] = round(memory.cuda[name], 1)
    return result


def ratios(row: dict) -> dict[str, float]:
    """faces/s of the fast path over the reference path and over bicubic, and of the fast path on ONNX Runtime
    over torch (same cell, same run)."""
    out = {}
    for name, (a, b) in {"fast_over_reference": ("fast", "reference"), "fast_over_bicubic": ("fast", "bicubic"),
                         "fast_over_bicubic_device": ("fast", "bicubic_device"),
                         "onnxruntime_over_torch": ("fast_onnxruntime", "fast")}.items():
        if a in row and b in row:
            out[name] = round(row[a]["faces_per_s"] / row[b]["faces_per_s"], 6)
    return out


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device(d) for d in args.device if d == "cpu" or torch.cuda.is_available()]
    skipped = sorted(set(args.device) - {d.type for d in devices})
    if skipped:
        log.info("skipped device(s) %s: CUDA is not available", ", ".join(skipped))
    cells = []
    for spec in args.weights:
        for device in devices:
            label, model = load_weights(spec, device)
            model.max_queries = args.max_queries  # None: the device's default
            runtimes = {name: runtime(name, model) for name in args.runtime if device.type == "cpu" or name == "torch"}
            for lr_px in args.lr:
                for out_px in args.out:
                    for batch in args.batch:
                        log.info("%s on %s: %d px -> %d px, batch %d", label, device, lr_px, out_px, batch)
                        row = measure_cell(model, device, lr_px, out_px, batch, args.methods, args.repeats, args.amp,
                                           runtimes)
                        cells.append({"weights": label, "spec": spec, "device": str(device), "lr": lr_px,
                                      "out": out_px, "batch": batch, "methods": row, "ratios": ratios(row)})
    report = {"benchmark": "sr_speed", "machine": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "repeats": args.repeats, "amp": args.amp, "max_queries": args.max_queries, "runtimes": args.runtime,
              "load_note": args.note,
              "cells": cells}
    print(markdown_table(report))
    write_json(report, args.json)
    if args.plot:
        plot(report, args.plot)
    return report


def runtime(name: str, model: ARASFSR):
    """`model.runtime` for a runtime name: None for torch, else ONNX Runtime with the current thread count."""
    if name == "torch":
        return None
    from models.onnx_runtime import INSTALL, OnnxRuntime, available

    if not available():
        raise UserError(f"--runtime onnxruntime: onnxruntime is not installed: {INSTALL}")
    return OnnxRuntime(model)


def markdown_table(report: dict) -> str:
    methods = list(dict.fromkeys(m for c in report["cells"] for m in c["methods"]))
    ratios = {"fast_over_reference": "fast / reference", "fast_over_bicubic": "fast / bicubic",
              "fast_over_bicubic_device": "fast / bicubic_device", "onnxruntime_over_torch": "onnxruntime / torch"}
    ratios = {k: v for k, v in ratios.items() if any(k in c["ratios"] for c in report["cells"])}
    head = ["weights", "device", "crop", "batch"]
    head += [f"{m} faces/s (p50 / p99 ms)" for m in methods] + list(ratios.values())
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in report["cells"]:
        cols = [c["weights"], c["device"], f"{c['lr']} -> {c['out']}", str(c["batch"])]
        for m in methods:
            s = c["methods"].get(m)
            cols.append(f"{s['faces_per_s']:.3g} ({ms(s['p50_ms'])} / {ms(s['p99_ms'])})" if s else "")
        cols += [f"{c['ratios'][k]:.3g}x" if k in c["ratios"] else "" for k in ratios]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def ms(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def plot(report: dict, path: Path) -> None:
    """faces/s against batch, one panel per crop -> output size, one line per weights x method."""
    plt = pyplot()
    panels = sorted({(c["lr"], c["out"], c["device"]) for c in report["cells"]})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (lr_px, out_px, device) in zip(axes[0], panels):
        cells = [c for c in report["cells"] if (c["lr"], c["out"], c["device"]) == (lr_px, out_px, device)]
        lines = sorted({(c["weights"], m) for c in cells for m in c["methods"]})
        for weights, method in lines:
            if method == "bicubic" and weights != cells[0]["weights"]:
                continue  # bicubic does not depend on the weights: one line
            pts = sorted((c["batch"], c["methods"][method]["faces_per_s"]) for c in cells
                         if c["weights"] == weights and method in c["methods"])
            ax.plot(*zip(*pts), marker="o", label=method if method == "bicubic" else f"{weights} {method}")
        ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="faces/s", title=f"{lr_px} -> {out_px} px, {device}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", nargs="+", default=None, metavar="PATH|config:YAML",
                    help="checkpoints, or config:PATH for a model config with random weights (default: the "
                         "paper's weights and ARASFSR-LM)")
    ap.add_argument("--lr", type=int, nargs="+", default=[14, 20, 28, 40, 64], help="crop sides, px")
    ap.add_argument("--out", type=int, nargs="+", default=[112, 160], help="output sides, px")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--device", nargs="+", choices=("cpu", "cuda"), default=["cpu", "cuda"],
                    help="devices to measure on; cuda is skipped when not available")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per method and cell")
    ap.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="autocast of the fast path on CUDA")
    ap.add_argument("--max-queries", type=int, default=None,
                    help="queries decoded at once (default: the device's, ARASFSR.max_queries)")
    ap.add_argument("--runtime", nargs="+", choices=RUNTIMES, default=["torch"],
                    help="runtimes of the fast path (onnxruntime: CPU cells only)")
    ap.add_argument("--quick", action="store_true", help="28 -> 112 px, batch 1 and 8, 3 repeats, CPU only")
    add_output_args(ap, plot="PNG: faces/s against batch")
    args = ap.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.weights = args.weights or default_weights()
    if min(args.lr) < MIN_INPUT:
        ap.error(f"--lr values must be >= {MIN_INPUT} (the model's smallest input)")
    if min(args.out + args.batch) < 1:
        ap.error("--out and --batch values must be >= 1")
    if args.repeats < 1 or args.threads < 0 or (args.max_queries is not None and args.max_queries < 1):
        ap.error("--repeats and --max-queries must be >= 1 and --threads >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(lambda: run(parse_args(argv)), log)


if __name__ == "__main__":
    raise SystemExit(main())
