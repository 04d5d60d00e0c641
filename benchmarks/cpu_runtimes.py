"""CPU runtimes for the SR model, side by side in one run: faces/s of one fixed-shape batch (default 32 crops of
28 px -> 112 px) under each runtime, interleaved, per weights.

    python -m benchmarks.cpu_runtimes [--weights PATH|config:YAML ...] [--batch 32] [--lr 28] [--out 112] \
        [--threads N] [--repeats 3] [--runtimes eager channels_last compile onnxruntime openvino] \
        [--json out/cpu_runtimes.json]

Runtimes:
- eager: `ARASFSR.upscale` as the pipeline calls it (fp32, inference mode).
- channels_last: the same with the model's conv weights and the input in channels-last memory format.
- fixed_graph: the fixed-shape graph below, eager (inference mode): what the graph alone gains over `upscale`,
  so that the runtimes' gains can be told from the graph's.
- compile: `torch.compile` of the fixed-shape graph below (its compile time is reported apart).
- onnxruntime / openvino: that graph exported with `torch.onnx.export`, run by ONNX Runtime (CPU provider) and
  by OpenVINO (CPU, f32 precision hint) with the same thread count. ONNX Runtime won and is a project dependency
  (the enhancer's runtime: models/onnx_runtime.py, with graphs for every shape); OpenVINO is not: install it in a
  scratch environment to measure (a runtime that is not installed is skipped, with a message).

The fixed-shape graph (`FixedShapeUpscale`) is `upscale`'s decoding for one crop size: the same encoder,
decoder and ensemble, with the grid-only tensors (coordinates, modulation, ensemble geometry) as constants and
the query chunks unrolled, so that an exporter or compiler sees plain tensor code. Every runtime's output is
checked against eager `upscale` (max abs difference, must be <= --atol).
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.output import add_output_args, run_benchmark, write_json
from benchmarks.sr_speed import default_weights, latency_stats, load_weights, time_interleaved
from models.arasfsr import ARASFSR, make_coord

log = logging.getLogger("cpu_runtimes")
RUNTIMES = ("eager", "channels_last", "fixed_graph", "compile", "onnxruntime", "openvino")


class FixedShapeUpscale(nn.Module):
    """`model.upscale` for a batch of `batch` lr_px crops to out_px, as traceable tensor code."""

    def __init__(self, model: ARASFSR, batch: int, lr_px: int, out_px: int) -> None:
        super().__init__()
        self.model, self.batch, self.lr_px, self.out_px = model, batch, lr_px, out_px
        with torch.no_grad():
            coord = make_coord(out_px, out_px)
            index, query, weights = model._ensemble_queries(coord, lr_px, lr_px, out_px, out_px)
            g = model.coord_mod(coord) if model.coord_mod is not None else []
        self.register_buffer("coord", coord)
        self.register_buffer("index", index)  # 4 x Q: flat LR index of each ensemble member
        self.register_buffer("query", query)  # 4 x Q x (2 or 4)
        self.register_buffer("weights", weights)  # 4 x Q
        self.g = [gi.detach() for gi in g]
        self.step = max(1, model.max_queries // batch)  # the same chunks as upscale's

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        model, b, hw = self.model, self.batch, self.lr_px * self.lr_px
        grid = model.encode(lr)
        table = grid.projected.flatten(2).transpose(1, 2).reshape(b * hw, -1)
        base = (torch.arange(b) * hw)[:, None, None]
        up = model._skip(grid.lr, self.coord.expand(b, -1, -1)) if model.skip else None
        chunks = []
        for start in range(0, self.coord.shape[0], self.step):
            q = slice(start, start + self.step)
            chunks.append(model._render(table, self.index[None, :, q] + base,  # B x 4 x q
                                        self.query[None, :, q].expand(b, -1, -1, -1),
                                        self.weights[None, :, q].expand(b, -1, -1),
                                        up[:, q] if up is not None else None, [gi[q] for gi in self.g]))
        rgb = torch.cat(chunks, dim=1).clamp(0, 1)
        return rgb.transpose(1, 2).reshape(b, 3, self.out_px, self.out_px)


def eager(model: ARASFSR, lr: torch.Tensor, out_px: int) -> Callable[[], np.ndarray]:
    return lambda: model.upscale(lr, (out_px, out_px)).numpy()


def channels_last(model: ARASFSR, lr: torch.Tensor, out_px: int) -> Callable[[], np.ndarray]:
    cl_model = load_weights_like(model).to(memory_format=torch.channels_last)
    cl_lr = lr.contiguous(memory_format=torch.channels_last)
    return lambda: cl_model.upscale(cl_lr, (out_px, out_px)).numpy()


def load_weights_like(model: ARASFSR) -> ARASFSR:
    """A second model with `model`'s config and weights (so a memory-format change leaves `model` alone)."""
    twin = ARASFSR(model.config).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def fixed_graph(graph: FixedShapeUpscale, lr: torch.Tensor) -> Callable[[], np.ndarray]:
    def call() -> np.ndarray:
        with torch.inference_mode():
            return graph(lr).numpy()
    return call


def compiled(graph: FixedShapeUpscale, lr: torch.Tensor, info: dict) -> Callable[[], np.ndarray]:
    fn = torch.compile(graph, dynamic=False)
    t0 = time.perf_counter()
    with torch.inference_mode():
        fn(lr)
    info["compile_s"] = round(time.perf_counter() - t0, 2)

    def call() -> np.ndarray:
        with torch.inference_mode():
            return fn(lr).numpy()
    return call


def export_onnx(graph: FixedShapeUpscale, lr: torch.Tensor, folder: Path, info: dict) -> Path:
    """The graph as ONNX at its fixed shapes: the dynamo exporter, else the TorchScript one."""
    path = folder / "model.onnx"
    errors = []
    for dynamo in (True, False):
        try:
            t0 = time.perf_counter()
            with torch.no_grad():
                torch.onnx.export(graph, (lr,), str(path), input_names=["lr"], output_names=["sr"], dynamo=dynamo,
                                  opset_version=18)
            info["onnx_export_s"] = round(time.perf_counter() - t0, 2)
            info["onnx_exporter"] = "dynamo" if dynamo else "torchscript"
            return path
        except Exception as exc:  # an exporter's failure is a result to report, then the other one is tried
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(exc).__name__}: {str(exc)[:300]}")
    raise RuntimeError("torch.onnx.export failed: " + " | ".join(errors))


def onnxruntime_session(onnx_path: Path, lr: torch.Tensor, threads: int) -> Callable[[], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = {"lr": lr.numpy()}
    return lambda: session.run(None, feed)[0]


def openvino_model(onnx_path: Path, lr: torch.Tensor, threads: int) -> Callable[[], np.ndarray]:
    import openvino as ov

    compiled_model = ov.Core().compile_model(str(onnx_path), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
    request = compiled_model.create_infer_request()
    data = lr.numpy()
    return lambda: request.infer({0: data})[compiled_model.output(0)]


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def measure_weights(spec: str, args: argparse.Namespace, folder: Path) -> dict:
    label, model = load_weights(spec)
    lr = torch.rand(args.batch, 3, args.lr, args.lr, generator=torch.Generator().manual_seed(0))
    graph = FixedShapeUpscale(model, args.batch, args.lr, args.out).eval()
    expected = model.upscale(lr, (args.out, args.out)).numpy()
    with torch.inference_mode():
        graph_error = float(np.abs(graph(lr).numpy() - expected).max())
    info: dict = {"weights": label, "spec": spec, "fixed_graph_max_abs_diff": graph_error}
    calls: dict[str, Callable[[], np.ndarray]] = {}
    skipped: dict[str, str] = {}
    onnx_path: Path | None = None
    for name in args.runtimes:
        try:
            if name == "eager":
                calls[name] = eager(model, lr, args.out)
            elif name == "channels_last":
                calls[name] = channels_last(model, lr, args.out)
            elif name == "fixed_graph":
                calls[name] = fixed_graph(graph, lr)
            elif name == "compile":
                calls[name] = compiled(graph, lr, info)
            else:
                if not installed(name):
                    skipped[name] = f"{name} is not installed (pip install {name} in a scratch environment)"
                    continue
                onnx_path = onnx_path or export_onnx(graph, lr, folder, info)
                make = onnxruntime_session if name == "onnxruntime" else openvino_model
                calls[name] = make(onnx_path, lr, torch.get_num_threads())
        except Exception as exc:  # a runtime that fails on this build is reported, the others still run
            skipped[name] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
    for name, why in skipped.items():
        log.warning("%s: skipped %s: %s", label, name, why)
    results = {}
    for name, fn in list(calls.items()):
        diff = float(np.abs(fn() - expected).max())
        results[name] = {"max_abs_diff_vs_eager": diff, "equal": diff <= args.atol}
        if diff > args.atol:
            log.warning("%s: %s differs from eager by %.2e (> %.0e): its timing is reported, not its speed-up",
                        label, name, diff, args.atol)
    log.info("%s: timing %s, interleaved", label, ", ".join(calls))
    times = time_interleaved(calls, args.repeats)
    base = np.median(times["eager"]) if "eager" in times else None
    for name in calls:
        results[name] |= latency_stats(times[name], args.batch)
        if base is not None:
            results[name]["speedup_vs_eager"] = round(float(base / np.median(times[name])), 4)
    return info | {"runtimes": results, "skipped": skipped}


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    versions = {"torch": torch.__version__}
    for module in ("onnxruntime", "openvino"):
        if installed(module):
            versions[module] = __import__(module).__version__
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure_weights(spec, args, Path(tmp)) for spec in args.weights]
    report = {"benchmark": "cpu_runtimes", "machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "versions": versions, "batch": args.batch, "lr": args.lr,
              "out": args.out, "repeats": args.repeats, "load_note": args.note, "weights": rows}
    print(markdown_table(report))
    write_json(report, args.json)
    return report


def markdown_table(report: dict) -> str:
    lines = ["| weights | runtime | faces/s | p50 ms | vs eager | max abs diff | note |", "|---|---|---|---|---|---|---|"]
    for row in report["weights"]:
        for name, r in row["runtimes"].items():
            note = f"compile {row['compile_s']} s" if name == "compile" and "compile_s" in row else ""
            lines.append(f"| {row['weights']} | {name} | {r['faces_per_s']:.2f} | {r['p50_ms']:.0f} | "
                         f"{r.get('speedup_vs_eager', float('nan')):.2f}x | {r['max_abs_diff_vs_eager']:.1e} | {note} |")
        for name, why in row["skipped"].items():
            lines.append(f"| {row['weights']} | {name} | | | | | skipped: {why} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", nargs="+", default=None, metavar="PATH|config:YAML",
                    help="checkpoints, or config:PATH (random weights); default: the paper's weights and ARASFSR-LM")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=int, default=28, help="crop side, px")
    ap.add_argument("--out", type=int, default=112, help="output side, px")
    ap.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    ap.add_argument("--threads", type=int, default=0, help="CPU threads of every runtime (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--atol", type=float, default=1e-4, help="largest difference from eager that counts as equal")
    add_output_args(ap)
    args = ap.parse_args(argv)
    args.weights = args.weights or default_weights()
    if min(args.batch, args.out, args.repeats) < 1 or args.lr < 8 or args.threads < 0:
        ap.error("--batch, --out, --repeats must be >= 1, --lr >= 8, --threads >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(lambda: run(parse_args(argv)), log)


if __name__ == "__main__":
    raise SystemExit(main())
