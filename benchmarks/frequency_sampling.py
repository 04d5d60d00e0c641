"""Does the local frequency estimator's probabilistic branch (sec. 3.3) earn its cost?

    python benchmarks/frequency_sampling.py --data data/prepared_utk --limit 48 --lr 16 --hr 128 \
        [--samples 3] [--threads 1] [--json out/frequency_sampling.json]

Per weights file (default: models/weights/*.safetensors), on the first N validation faces with
evaluate.py's protocol (models/scoring.py: LR by antialiased bicubic from the ground truth, PSNR /
SSIM on Y over photo pixels):

- the estimator's Gaussian: median sigma = exp(logvar / 2) and median |mu| over all LR positions
  and latent channels (the model is trained without a KL term, so nothing keeps sigma near 1);
- PSNR / SSIM with z = mu (sigma = 0, what `upscale` does) and with z sampled as in training
  (mu + sigma * eps), one row per seed;
- CPU time per face (batch 1, median over the faces) of `upscale` with each, and of the
  estimator alone (on the first --time-faces faces).
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import load_model  # noqa: E402
from models.data import FaceSet  # noqa: E402
from models.scoring import EvalPairs, model_upscaler, score  # noqa: E402

log = logging.getLogger("frequency_sampling")


def _sampled_forward(self, lr: torch.Tensor) -> torch.Tensor:
    """LocalFrequencyEstimator.forward with training's reparameterised sample also at inference."""
    mean, logvar = self.encoder(lr).chunk(2, dim=1)
    return self.decoder(mean + torch.randn_like(mean) * torch.exp(0.5 * logvar.clamp(-30.0, 20.0)))


@contextmanager
def sampling(estimator):
    """Inside: the estimator samples z (as in training); afterwards it uses z = mu again."""
    estimator.forward = types.MethodType(_sampled_forward, estimator)
    try:
        yield
    finally:
        del estimator.forward


def gaussian_stats(model, lrs: np.ndarray) -> dict:
    """Median sigma and |mu| of the estimator's Gaussian over the LR images (all positions, channels)."""
    x = torch.from_numpy(lrs).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)  # as ARASFSR.encode
    with torch.inference_mode():
        mean, logvar = model.frequency.encoder(x).chunk(2, dim=1)
    sigma = torch.exp(0.5 * logvar)
    return {"median_sigma": float(sigma.median()), "median_abs_mu": float(mean.abs().median()),
            "median_sigma_over_abs_mu": float((sigma / mean.abs().clamp_min(1e-8)).median())}


def seconds_per_face(fns: dict, lrs: np.ndarray) -> dict[str, float]:
    """Median wall time per face (batch 1) of each fn over `lrs`, after one warm-up call each. The fns
    take turns face by face, so that a change in the machine's load affects them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for name, fn in fns.items():
        fn(lrs[:1])
    for k in range(len(lrs)):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(lrs[k:k + 1])
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(path: Path, faces: FaceSet, lr: int, hr: int, samples: int, time_faces: int) -> dict:
    model = load_model(path, device="cpu")
    if model.frequency is None:
        raise SystemExit(f"error: {path} has no local frequency estimator")
    pairs = EvalPairs.make(faces, lr, hr, "bicubic")
    lrs = pairs.lr
    row = {"weights": str(path), **gaussian_stats(model, lrs)}
    scores = {"mean": score(model_upscaler(model), pairs, batch=8)}
    estimator = model.frequency
    with sampling(estimator):
        for seed in range(samples):
            torch.manual_seed(seed)
            scores[f"sampled seed {seed}"] = score(model_upscaler(model), pairs, batch=8)

    def upscale_sampled(batch: np.ndarray) -> None:
        with sampling(estimator):
            model.upscale_uint8(batch, (hr, hr))

    def estimator_alone(batch: np.ndarray) -> None:
        with torch.inference_mode():
            estimator(torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255))

    row["seconds_per_face"] = seconds_per_face(
        {"mean": lambda x: model.upscale_uint8(x, (hr, hr)), "sampled": upscale_sampled, "estimator": estimator_alone},
        lrs[:time_faces])
    row["modes"] = {mode: {k: r[k] for k in ("psnr", "ssim")} for mode, r in scores.items()}
    return row


def markdown(rows: list[dict], n: int, lr: int, hr: int) -> str:
    lines = [f"PSNR (dB) / SSIM on Y, photo pixels, {n} validation faces, {lr} -> {hr} (antialiased bicubic LR); "
             "CPU ms per face (batch 1)", "",
             "| weights | median sigma | median abs(mu) | z = mu (default) | z sampled (per seed) | "
             "ms z = mu | ms sampled | ms estimator alone |", "|---" * 8 + "|"]
    for r in rows:
        m = r["modes"]
        sampled = ", ".join(f"{v['psnr']:.3f} / {v['ssim']:.4f}" for k, v in m.items() if k != "mean")
        t = r["seconds_per_face"]
        lines.append(f"| {Path(r['weights']).name} | {r['median_sigma']:.3f} | {r['median_abs_mu']:.3f} | "
                     f"{m['mean']['psnr']:.3f} / {m['mean']['ssim']:.4f} | {sampled} | {t['mean'] * 1e3:.0f} | "
                     f"{t['sampled'] * 1e3:.0f} | {t['estimator'] * 1e3:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", type=Path, default=sorted((ROOT / "models/weights").glob("*.safetensors")))
    ap.add_argument("--data", type=Path, required=True, help="prepared face folder (train.py prepare)")
    ap.add_argument("--limit", type=int, default=48)
    ap.add_argument("--lr", type=int, default=16)
    ap.add_argument("--hr", type=int, default=128)
    ap.add_argument("--samples", type=int, default=3, help="sampled runs (seeds 0..N-1)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (timing)")
    ap.add_argument("--time-faces", type=int, default=16, help="faces timed (the first N)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    faces = FaceSet.load(args.data, "val", limit=args.limit)
    rows = [measure(p, faces, args.lr, args.hr, args.samples, args.time_faces) for p in args.weights]
    print(markdown(rows, len(faces), args.lr, args.hr))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"faces": len(faces), "lr": args.lr, "hr": args.hr, "threads": args.threads,
                                         "torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
