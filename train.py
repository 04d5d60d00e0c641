"""Train ARASFSR from a config (paper sec. 4.2), and prepare its face data.

    python train.py prepare --src DIR --out DIR [--sharpness-csv CSV] [--min-sharpness 50] [--size 128]
    python train.py --config configs/train/NAME.yaml [--data DIR] [--out DIR] [--resume] [--steps N]

`prepare` detects (pipeline/detect.py, MTCNN) and aligns (pipeline/align.py) one face per photo
and writes it in the pipeline's canonical framing at size x size (JPEG) plus manifest.csv.
Training samples LR-HR pairs (models/data.py), decodes sampled query pixels with the implicit
function, minimises the Charbonnier loss (eq. 13) with Adam (step decay x0.1 at half of the run),
validates PSNR (Y) periodically and writes, under runs/NAME/ (or --out):
  last.safetensors, best.safetensors   model checkpoints (models.save_checkpoint)
  last.optim.safetensors               Adam state and RNG state for --resume (tensors, no pickle)
  config.yaml, log.jsonl               the resolved config; loss / validation records

Example:
    python train.py prepare --src ../shared/data/faces/utkface --out data/prepared_utk --min-sharpness 50
    python train.py --config configs/train/cctv_cpu.yaml
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from models import CheckpointError, build_model, charbonnier, load_model, resolve_device, save_checkpoint
from models.config import merge_config
from models.data import (EVAL_DEGRADATIONS, DataError, Degradation, FaceSet, FrameDegradation, PairConfig,
                         PairSampler, PairStream, laplacian_sharpness, make_lr, resize, resize_mask, split_for,
                         write_manifest)
from models.metrics import y_metrics
from pipeline.errors import PipelineError

ROOT = Path(__file__).resolve().parent
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
log = logging.getLogger("train")


class UserError(Exception):
    """Bad input from the user (paths, config); reported as one line, no traceback."""


# --- data preparation -----------------------------------------------------------------------


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
    stem, k = re.sub(r"\.(jpe?g|png|bmp|webp)$", "", stem, flags=re.I), 1
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

    from pipeline.align import UnalignableFaceError, estimate_transform, native_size
    from pipeline.detect import MTCNNDetector

    if not src.is_dir():
        raise UserError(f"source folder {src} does not exist")
    photos = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not photos:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {src}")
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
            sharp = known[path.name] if path.name in known else laplacian_sharpness(image)
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
                transform = estimate_transform(landmarks, size)
            except UnalignableFaceError:
                counts["unalignable"] += 1
                continue
            if native * max_upscale < size:
                counts["too_small"] += 1
                continue
            if native > size:  # shrinking: warp at native size, then area-average (no aliasing)
                n = int(round(native))
                big = cv2.warpAffine(image, estimate_transform(landmarks, n), (n, n), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REPLICATE)
                crop = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)
            else:
                crop = cv2.warpAffine(image, transform, (size, size), flags=cv2.INTER_CUBIC,
                                      borderMode=cv2.BORDER_REPLICATE)
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


# --- configs --------------------------------------------------------------------------------

TRAIN_DEFAULTS: dict = {
    "name": "",
    "base": "",               # a train config to start from (path relative to this file)
    "model": "",              # a configs/model/*.yaml file
    "model_overrides": {},    # merged over the model config, e.g. {skip: false}
    "data": {
        "root": "data/prepared_utk",
        "lr": [64, 64],       # LR level range, sampled per batch (inclusive)
        "hr": [64, 128],      # HR level range, sampled per batch (inclusive)
        "queries": 2304,      # HR pixels decoded per image (LIIF: 48^2)
        "batch_size": 16,
        "flip": True,
        "photo_only": True,   # sample queries only where the face photo is (not replicated border)
        "degradation": {"kernels": {"bicubic": 1.0}, "blur": 0.0, "blur_sigma": [0.3, 1.5], "noise": 0.0,
                        "noise_sigma": [1.0, 10.0], "jpeg": 0.0, "jpeg_quality": [30, 95]},
        "gray": 0.0,          # chance of a grayscale sample (night / IR cameras)
        # enabled: replace `degradation` by the camera-frame simulation (models.data.FrameDegradation)
        "frame": {"enabled": False, "aligned": 0.25, "clean": 0.35, "pixel_sigma": 0.35, "psf_sigma": [0.0, 0.7], "roll": 15.0,
                  "landmark_jitter": [0.0, 0.06], "noise": 0.5, "noise_sigma": [1.0, 10.0], "h264": 0.5,
                  "jpeg_quality": [25, 90], "h264_crf": [20, 40]},
    },
    "train": {"init": "",    # weights to start from (same model config), e.g. to fine-tune shipped weights
              "steps": 1000, "lr": 1.0e-4, "decay_at": 0.5, "decay": 0.1, "seed": 0, "device": "auto",
              "threads": 0, "workers": 0, "log_every": 50, "save_every": 500,
              "max_minutes": 0},   # > 0: stop (after saving; --resume continues) when this run takes longer
    "val": {"every": 500, "images": 64, "lr": 64, "hr": 128, "degrade": "bicubic"},
}
FREE_FORM = frozenset({"model_overrides", "data.degradation.kernels"})  # mappings taken as given


def load_train_config(path: str | Path) -> dict:
    """Read configs/train/NAME.yaml, following `base:` and completing it with TRAIN_DEFAULTS."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"train config {path} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the config must be a mapping")
    base = load_train_config(path.parent / raw["base"]) if raw.get("base") else TRAIN_DEFAULTS
    try:
        cfg = merge_config(base, raw, "train config", free_form=FREE_FORM)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
    cfg["name"], cfg["base"] = raw.get("name") or path.stem, raw.get("base", "")
    if not cfg["model"]:
        raise UserError(f"{path}: no `model:` (a configs/model/*.yaml file)")
    return cfg


def repo_path(p: str | Path) -> Path:
    """A path as given if it exists (relative to the working directory), else relative to the repo."""
    p = Path(p)
    return p if p.is_absolute() or p.exists() else ROOT / p


def model_config(cfg: dict) -> dict:
    path = repo_path(cfg["model"])
    if not path.is_file():
        raise UserError(f"model config {cfg['model']} not found")
    model_cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}

    def deep(a: dict, b: dict) -> dict:
        return {**a, **{k: deep(a.get(k, {}), v) if isinstance(v, dict) else v for k, v in b.items()}}

    return deep(model_cfg, cfg["model_overrides"] or {})


def pair_config(data: dict) -> PairConfig:
    try:
        deg, frame = data["degradation"], dict(data["frame"])
        if frame.pop("enabled"):
            degradation = FrameDegradation(**{k: tuple(v) if isinstance(v, list) else v for k, v in frame.items()})
        else:
            degradation = Degradation(kernels=dict(deg["kernels"]), blur=deg["blur"],
                                      blur_sigma=tuple(deg["blur_sigma"]), noise=deg["noise"],
                                      noise_sigma=tuple(deg["noise_sigma"]), jpeg=deg["jpeg"],
                                      jpeg_quality=tuple(deg["jpeg_quality"]))
        return PairConfig(lr=tuple(data["lr"]), hr=tuple(data["hr"]), queries=int(data["queries"]),
                          batch_size=int(data["batch_size"]), flip=bool(data["flip"]),
                          photo_only=bool(data["photo_only"]), gray=float(data["gray"]), degradation=degradation)
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad data config: {exc}") from None


# --- checkpoints with optimizer state ---------------------------------------------------------


def save_optimizer(opt: torch.optim.Optimizer, model: torch.nn.Module, path: Path, **metadata) -> None:
    """Adam moments per parameter name, and the torch RNG state, as safetensors (atomic write)."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                tensors[f"{key}/{names[id(p)]}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"metadata": json.dumps(metadata)})
    tmp.replace(path)


def load_optimizer(opt: torch.optim.Optimizer, model: torch.nn.Module, path: Path) -> dict:
    try:
        tensors = load_file(str(path))
        with open(path, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        metadata = json.loads(header["__metadata__"]["metadata"])
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"optimizer state {path} cannot be read: {exc}") from None
    params = dict(model.named_parameters())
    for name, p in params.items():
        state = {key: tensors[f"{key}/{name}"] for key in ("step", "exp_avg", "exp_avg_sq") if f"{key}/{name}" in tensors}
        if state:
            state["exp_avg"], state["exp_avg_sq"] = (state[k].to(p.device) for k in ("exp_avg", "exp_avg_sq"))
            opt.state[p] = state
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
    return metadata


# --- training -------------------------------------------------------------------------------


class Validator:
    """PSNR / SSIM (Y, photo region) of model.upscale on a fixed set of validation faces."""

    def __init__(self, faces: FaceSet, lr: int, hr: int, degrade: str):
        if degrade not in EVAL_DEGRADATIONS:
            raise UserError(f"val.degrade must be one of {', '.join(EVAL_DEGRADATIONS)}, got {degrade!r}")
        self.hr, self.gt = hr, [resize(img, hr) for img in faces.images]
        self.masks = [resize_mask(m, hr) for m in faces.masks]
        lrs = np.stack([make_lr(img, lr, degrade) for img in faces.images])
        self.lr = torch.from_numpy(lrs).permute(0, 3, 1, 2).float() / 255.0

    def __call__(self, model, batch: int = 16) -> tuple[float, float]:
        scores = []
        for s in range(0, len(self.lr), batch):
            sr = model.upscale(self.lr[s:s + batch].to(model.device), (self.hr, self.hr))
            sr = (sr * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
            scores += [y_metrics(a, self.gt[s + k], self.masks[s + k]) for k, a in enumerate(sr)]
        return tuple(float(np.mean([s[i] for s in scores if math.isfinite(s[i])])) for i in (0, 1))


def train(cfg: dict, out: Path, resume: bool = False) -> dict:
    """Run (or resume) one training run; returns a summary dict."""
    tc, vc = cfg["train"], cfg["val"]
    steps = int(tc["steps"])
    if tc["threads"]:
        torch.set_num_threads(int(tc["threads"]))
    torch.manual_seed(int(tc["seed"]))
    device = resolve_device(tc["device"])
    try:
        model = build_model(model_config(cfg)).to(device).train()
    except ValueError as exc:
        raise UserError(f"bad model config {cfg['model']}: {exc}") from None
    if tc["init"] and not resume:
        init = load_model(repo_path(tc["init"]), device=device)
        if init.config != model.config:
            raise UserError(f"train.init: {tc['init']} has another model config than {cfg['model']}")
        model.load_state_dict(init.state_dict())
        log.info("starting from the weights of %s", tc["init"])
    opt = torch.optim.Adam(model.parameters(), lr=float(tc["lr"]))
    start, best, wall = 0, -math.inf, 0.0
    last, best_path, optim_path = out / "last.safetensors", out / "best.safetensors", out / "last.optim.safetensors"
    if resume:
        if not (last.is_file() and optim_path.is_file()):
            raise UserError(f"--resume: no {last.name} and {optim_path.name} in {out}")
        saved = load_model(last, device=device)
        if saved.config != model.config:
            raise UserError(f"--resume: {last} was trained with another model config than {cfg['model']}")
        model.load_state_dict(saved.state_dict())
        state = load_optimizer(opt, model, optim_path)
        if state.get("step") != saved.metadata.get("step"):
            raise CheckpointError(f"{last} (step {saved.metadata.get('step')}) and {optim_path} "
                                  f"(step {state.get('step')}) do not belong together")
        start, best, wall = int(state["step"]), float(state.get("best_psnr") or -math.inf), float(state["wall_time_s"])
        log.info("resuming %s at step %d (best val PSNR %.3f)", cfg["name"], start, best)
    data_root = repo_path(cfg["data"]["root"])
    faces = FaceSet.load(data_root, "train")
    val_faces = FaceSet.load(data_root, "val", limit=int(vc["images"]))
    validate = Validator(val_faces, int(vc["lr"]), int(vc["hr"]), vc["degrade"])
    sampler = PairSampler(faces, pair_config(cfg["data"]), seed=int(tc["seed"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump({**cfg, "model_config": model.config}, sort_keys=False))
    records = open(out / "log.jsonl", "a", encoding="utf-8")
    meta = {"config": cfg["name"], "data": str(cfg["data"]["root"]), "train_faces": len(faces),
            "device": str(device), "torch": torch.__version__}

    def save(step: int, psnr: float | None = None) -> None:
        info = {**meta, "step": step, "wall_time_s": round(wall + time.perf_counter() - t0, 1),
                "val_psnr": psnr, "best_psnr": best if math.isfinite(best) else None}
        save_optimizer(opt, model, optim_path, **info)
        save_checkpoint(model, last, **info)

    loader = DataLoader(PairStream(sampler, start, steps), batch_size=None, num_workers=int(tc["workers"]),
                        generator=torch.Generator().manual_seed(int(tc["seed"])))  # keeps the global RNG untouched
    decay_step = int(float(tc["decay_at"]) * steps)
    t0, ema, psnr, step, window = time.perf_counter(), None, None, start, []
    bar = tqdm(total=steps, initial=start, desc=cfg["name"], unit="step", dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 30.0)
    try:
        for step, batch in enumerate(loader, start):
            for group in opt.param_groups:
                group["lr"] = float(tc["lr"]) * (float(tc["decay"]) if step >= decay_step else 1.0)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            loss = charbonnier(model(batch["lr"], batch["coord"], batch["ratio"]), batch["rgb"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = loss.item()
            ema = value if ema is None else 0.98 * ema + 0.02 * value
            window.append(value)
            done = step + 1
            if done % int(tc["log_every"]) == 0:  # the mean loss since the last record
                records.write(json.dumps({"step": done, "loss": round(float(np.mean(window)), 5),
                                          "lr": opt.param_groups[0]["lr"],
                                          "time_s": round(wall + time.perf_counter() - t0, 1)}) + "\n")
                records.flush()
                window.clear()
            over_time = bool(tc["max_minutes"]) and time.perf_counter() - t0 > 60 * float(tc["max_minutes"])
            if done % int(vc["every"]) == 0 or done == steps or over_time:
                psnr, ssim = validate(model)
                records.write(json.dumps({"step": done, "val_psnr": round(psnr, 4), "val_ssim": round(ssim, 4)}) + "\n")
                log.info("step %d: loss %.4f, val PSNR %.3f dB, SSIM %.4f (%dx%d -> %dx%d, %s)", done, ema, psnr,
                         ssim, vc["lr"], vc["lr"], vc["hr"], vc["hr"], vc["degrade"])
                if psnr > best:
                    best = psnr
                    save_checkpoint(model, best_path, **meta, step=done, val_psnr=psnr,
                               wall_time_s=round(wall + time.perf_counter() - t0, 1))
            if done % int(tc["save_every"]) == 0 or done == steps or over_time:
                save(done, psnr)
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.4f}", val_psnr=f"{psnr:.2f}" if psnr else "-", refresh=False)
            if over_time:
                log.warning("train.max_minutes (%s) reached at step %d of %d; saved, continue with --resume",
                            tc["max_minutes"], done, steps)
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
    return {"name": cfg["name"], "steps": done, "trained_steps": done - start, "seconds": round(seconds, 1),
            "s_per_step": round(seconds / max(1, done - start), 3), "final_loss": ema,
            "best_val_psnr": best if math.isfinite(best) else None, "out": str(out)}


# --- CLI ------------------------------------------------------------------------------------


def prepare_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="train.py prepare", description=prepare.__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, required=True, help="folder of face photos")
    ap.add_argument("--out", type=Path, required=True, help="output folder (aligned faces + manifest.csv)")
    ap.add_argument("--sharpness-csv", type=Path, help="CSV of precomputed sharpness (else variance of Laplacian)")
    ap.add_argument("--min-sharpness", type=float, default=0.0, help="skip photos below this sharpness")
    ap.add_argument("--size", type=int, default=128, help="side of the aligned HR faces (px)")
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--min-face", type=int, default=40, help="MTCNN min_face_size (px)")
    ap.add_argument("--max-upscale", type=float, default=1.25, help="skip faces needing more up-sampling")
    args = ap.parse_args(argv)
    if args.size < 16:
        raise UserError(f"--size must be >= 16, got {args.size}")
    counts = prepare(args.src, args.out, args.size, args.sharpness_csv, args.min_sharpness, args.val_fraction,
                     args.min_face, args.max_upscale)
    print(f"prepare: {counts['photos']} photos -> {counts['written']} faces ({counts['train']} train, "
          f"{counts['val']} val), {counts['size_mb']} MB in {args.out}; skipped: {counts['unreadable']} unreadable, "
          f"{counts['too_blurry']} too blurry, {counts['no_face']} no face, {counts['ambiguous']} ambiguous, "
          f"{counts['too_small']} too small, {counts['unalignable']} unalignable ({counts['seconds']} s)")
    return 0


def train_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="train.py", description="Train ARASFSR from configs/train/NAME.yaml "
                                 "(or: train.py prepare --help)")
    ap.add_argument("--config", required=True, help="configs/train/NAME.yaml")
    ap.add_argument("--data", help="prepared data folder (overrides data.root)")
    ap.add_argument("--out", type=Path, help="run folder (default runs/NAME)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors")
    ap.add_argument("--steps", type=int, help="total steps (overrides train.steps; the decay point scales)")
    args = ap.parse_args(argv)
    cfg = load_train_config(repo_path(args.config))
    if args.data:
        cfg["data"]["root"] = args.data
    if args.steps is not None:
        if args.steps < 1:
            raise UserError(f"--steps must be >= 1, got {args.steps}")
        cfg["train"]["steps"] = args.steps
    out = args.out or ROOT / "runs" / cfg["name"]
    with logging_redirect_tqdm():
        summary = train(cfg, out, resume=args.resume)
    if not summary["trained_steps"]:
        print(f"{summary['name']}: already at step {summary['steps']}; nothing to train ({summary['out']})")
        return 0
    print(f"trained {summary['name']}: {summary['trained_steps']} steps in {summary['seconds'] / 60:.1f} min "
          f"({summary['s_per_step']} s/step), final loss {summary['final_loss']:.4f}, best val PSNR "
          f"{summary['best_val_psnr'] or float('nan'):.3f} dB -> {summary['out']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return prepare_main(argv[1:]) if argv[:1] == ["prepare"] else train_main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, DataError, CheckpointError, PipelineError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
