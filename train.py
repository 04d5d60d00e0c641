"""Train ARASFSR from a config (paper sec. 4.2): the training loop and its command line.

    python train.py --config configs/train/NAME.yaml [--data DIR] [--out DIR] [--resume] [--steps N]

Samples LR-HR pairs (models/data.py) from a prepared face folder (prepare.py), decodes sampled query
pixels with the implicit function, minimises the Charbonnier loss (eq. 13) with Adam (step decay x0.1
at half of the run), validates PSNR (Y) periodically with evaluate.py's protocol (models/scoring.py)
and writes, under runs/NAME/ (or --out):
  last.safetensors, best.safetensors   model checkpoints (models.save_checkpoint)
  last.optim.safetensors               Adam state and RNG state for --resume (models.save_optimizer_state)
  config.yaml, log.jsonl               the resolved config; loss / validation records
The config's schema and defaults: models/train_config.py.

Example:
    python prepare.py --src ../shared/data/faces/utkface --out data/prepared_utk --min-sharpness 50
    python train.py --config configs/train/cctv_cpu.yaml
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from common import cli
from common.config import plain
from common.errors import UserError
from models import (CheckpointError, build_model, charbonnier, load_model, load_optimizer_state, resolve_device,
                    save_checkpoint, save_optimizer_state)
from models.arasfsr import LatentGrid
from models.data import FaceSet, PairSampler, PairStream
from models.dlib_resnet import DlibResNet
from models.identity import IdentityLoss, chip_transforms
from models.scoring import EvalPairs, model_upscaler, score
from models.train_config import ROOT, TrainConfig, load_train_config, repo_path

log = logging.getLogger("train")


def train(cfg: TrainConfig, out: Path, resume: bool = False) -> dict:
    """Run (or resume) one training run; returns a summary dict."""
    tc, vc = cfg.train, cfg.val
    steps = tc.steps
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    device = resolve_device(tc.device)
    model = build_model(cfg.model_config()).to(device).train()
    if tc.init and not resume:
        init = load_model(repo_path(tc.init), device=device)
        if init.config != model.config:
            raise UserError(f"train.init: {tc.init} has another model config than {cfg.model}")
        model.load_state_dict(init.state_dict())
        log.info("starting from the weights of %s", tc.init)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    start, best, wall = 0, -math.inf, 0.0
    last, best_path, optim_path = out / "last.safetensors", out / "best.safetensors", out / "last.optim.safetensors"
    if resume:
        if not (last.is_file() and optim_path.is_file()):
            raise UserError(f"--resume: no {last.name} and {optim_path.name} in {out}")
        saved = load_model(last, device=device)
        if saved.config != model.config:
            raise UserError(f"--resume: {last} was trained with another model config than {cfg.model}")
        model.load_state_dict(saved.state_dict())
        state = load_optimizer_state(opt, model, optim_path)
        if state.get("step") != saved.metadata.get("step"):
            raise CheckpointError(f"{last} (step {saved.metadata.get('step')}) and {optim_path} "
                                  f"(step {state.get('step')}) do not belong together")
        start, best, wall = int(state["step"]), float(state.get("best_psnr") or -math.inf), float(state["wall_time_s"])
        log.info("resuming %s at step %d (best val PSNR %.3f)", cfg.name, start, best)
    data_root = repo_path(cfg.data.root)
    faces = FaceSet.load(data_root, "train")
    val_pairs = EvalPairs.make(FaceSet.load(data_root, "val", limit=vc.images), vc.lr, vc.hr, vc.degrade)
    ic = cfg.identity
    chips = chip_transforms(faces.images, data_root, faces.names) if ic.weight else None  # None: no chips rendered
    sampler = PairSampler(faces, cfg.data.pairs(), seed=tc.seed, chips=chips, identity_faces=ic.faces,
                          identity_grid=ic.grid)
    identity_loss = (IdentityLoss(DlibResNet.load(repo_path(ic.recognizer) if ic.recognizer else None)).to(device)
                     if ic.weight else None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump({**plain(cfg), "model_config": model.config}, sort_keys=False))
    records = open(out / "log.jsonl", "a", encoding="utf-8")
    meta = {"config": cfg.name, "data": str(cfg.data.root), "train_faces": len(faces),
            "device": str(device), "torch": torch.__version__}

    def save(step: int, psnr: float | None = None) -> None:
        info = {**meta, "step": step, "wall_time_s": round(wall + time.perf_counter() - t0, 1),
                "val_psnr": psnr, "best_psnr": best if math.isfinite(best) else None}
        save_optimizer_state(opt, model, optim_path, **info)
        save_checkpoint(model, last, **info)

    loader = DataLoader(PairStream(sampler, start, steps), batch_size=None, num_workers=tc.workers,
                        generator=torch.Generator().manual_seed(tc.seed))  # keeps the global RNG untouched
    decay_step = int(tc.decay_at * steps)
    t0, ema, psnr, step, window, id_window = time.perf_counter(), None, None, start, [], []
    bar = tqdm(total=steps, initial=start, desc=cfg.name, unit="step", dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 30.0)
    try:
        for step, batch in enumerate(loader, start):
            for group in opt.param_groups:
                group["lr"] = tc.lr * (tc.decay if step >= decay_step else 1.0)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            grid = model.encode(batch["lr"])
            loss = charbonnier(model.query_rgb(grid, batch["coord"], batch["ratio"]), batch["rgb"])
            if identity_loss is not None:  # the first faces' chips, rendered on their own grid
                k, g = len(batch["id_hr"]), ic.grid
                first = LatentGrid(grid.projected[:k], grid.lr[:k])
                sr = model.query_rgb(first, batch["id_coord"], batch["id_ratio"]).view(k, g, g, 3).permute(0, 3, 1, 2)
                id_value = identity_loss(sr, batch["id_hr"])
                id_window.append(id_value.item())
                loss = loss + ic.weight * id_value
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = loss.item()
            ema = value if ema is None else 0.98 * ema + 0.02 * value
            window.append(value)
            done = step + 1
            if done % tc.log_every == 0:  # the mean loss since the last record
                extra = {"identity": round(float(np.mean(id_window)), 5)} if id_window else {}
                records.write(json.dumps({"step": done, "loss": round(float(np.mean(window)), 5), **extra,
                                          "lr": opt.param_groups[0]["lr"],
                                          "time_s": round(wall + time.perf_counter() - t0, 1)}) + "\n")
                records.flush()
                window.clear()
                id_window.clear()
            over_time = bool(tc.max_minutes) and time.perf_counter() - t0 > 60 * tc.max_minutes
            if done % vc.every == 0 or done == steps or over_time:
                val = score(model_upscaler(model), val_pairs)
                psnr, ssim = val["psnr"] if val["psnr"] is not None else math.nan, val["ssim"]
                records.write(json.dumps({"step": done, "val_psnr": round(psnr, 4), "val_ssim": round(ssim, 4)}) + "\n")
                log.info("step %d: loss %.4f, val PSNR %.3f dB, SSIM %.4f (%dx%d -> %dx%d, %s)", done, ema, psnr,
                         ssim, vc.lr, vc.lr, vc.hr, vc.hr, vc.degrade)
                if psnr > best:
                    best = psnr
                    save_checkpoint(model, best_path, **meta, step=done, val_psnr=psnr,
                               wall_time_s=round(wall + time.perf_counter() - t0, 1))
            if done % tc.save_every == 0 or done == steps or over_time:
                save(done, psnr)
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.4f}", val_psnr=f"{psnr:.2f}" if psnr else "-", refresh=False)
            if over_time:
                log.warning("train.max_minutes (%s) reached at step %d of %d; saved, continue with --resume",
                            tc.max_minutes, done, steps)
                break
    except KeyboardInterrupt:
        if step > start:
            save(step, psnr)  # saved as `step` steps done: resume redoes the interrupted one
            log.info("interrupted: saved step %d to %s", step, last)
        raise
    finally:
        bar.close()
        records.close()
    seconds, done = time.perf_counter() - t0, (step + 1 if steps > start else start)
    return {"name": cfg.name, "steps": done, "trained_steps": done - start, "seconds": round(seconds, 1),
            "s_per_step": round(seconds / max(1, done - start), 3), "final_loss": ema,
            "best_val_psnr": best if math.isfinite(best) else None, "out": str(out)}


# --- CLI ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["prepare"]:  # the former `train.py prepare`, kept for existing scripts
        import prepare

        return prepare.main(argv[1:])
    ap = argparse.ArgumentParser(prog="train.py", description="Train ARASFSR from configs/train/NAME.yaml "
                                 "(data: prepare.py --help)")
    ap.add_argument("--config", required=True, help="configs/train/NAME.yaml")
    ap.add_argument("--data", help="prepared data folder (overrides data.root)")
    ap.add_argument("--out", type=Path, help="run folder (default runs/NAME)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors")
    ap.add_argument("--steps", type=int, help="total steps (overrides train.steps; the decay point scales)")
    ap.add_argument("--max-minutes", type=float, help="stop (saved, resumable) after this long (overrides "
                    "train.max_minutes)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return cli.run(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    cfg = load_train_config(repo_path(args.config))
    if args.data:
        cfg.data.root = args.data
    if args.steps is not None:
        if args.steps < 1:
            raise UserError(f"--steps must be >= 1, got {args.steps}")
        cfg.train.steps = args.steps
    if args.max_minutes is not None:
        if args.max_minutes <= 0:
            raise UserError(f"--max-minutes must be > 0, got {args.max_minutes}")
        cfg.train.max_minutes = args.max_minutes
    out = args.out or ROOT / "runs" / cfg.name
    with logging_redirect_tqdm():
        summary = train(cfg, out, resume=args.resume)
    if not summary["trained_steps"]:
        print(f"{summary['name']}: already at step {summary['steps']}; nothing to train ({summary['out']})")
        return 0
    print(f"trained {summary['name']}: {summary['trained_steps']} steps in {summary['seconds'] / 60:.1f} min "
          f"({summary['s_per_step']} s/step), final loss {summary['final_loss']:.4f}, best val PSNR "
          f"{summary['best_val_psnr'] or float('nan'):.3f} dB -> {summary['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
