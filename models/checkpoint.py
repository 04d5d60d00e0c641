"""Checkpoints: safetensors files carrying the model config in their metadata, and the optimizer
state written beside them for resuming a training run. Nothing is unpickled."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from common.errors import ConfigError, UserError
from pipeline.files import atomic_write_bytes

from .arasfsr import ARASFSR
from .config import resolve_config

FORMAT = "arasfsr-checkpoint"
MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be loaded: not safetensors, truncated, or not matching its config."""


def build_model(cfg: dict) -> ARASFSR:
    """Build a model from the parsed YAML of configs/model/*.yaml (missing keys take defaults)."""
    return ARASFSR(resolve_config(cfg))


def save_checkpoint(model: ARASFSR, path: str | Path, **metadata) -> Path:
    """Write the model's tensors and config (plus JSON-serialisable `metadata`) to a safetensors file.

    Written to a temporary name and renamed, so an interrupted save never leaves a half-written file.

    Example:
        >>> save_checkpoint(model, "runs/x/last.safetensors", step=1000, psnr=31.2)  # doctest: +SKIP
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {"format": FORMAT, "config": json.dumps(model.config), "metadata": json.dumps(metadata)}
    return _write(tensors, path, header)


def _write(tensors: dict[str, torch.Tensor], path: str | Path, header: dict[str, str]) -> Path:
    """Write a safetensors file atomically (pipeline.files): never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(tensors, metadata=header))
    return path


def _read_header(path: Path) -> dict:
    """Check that `path` is a complete safetensors file before handing it to the loader."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(9)
        # safetensors: 8-byte little-endian header length, then the JSON header ("{"). Only a file that
        # is not that is checked for pickle/zip magic: a header length of 128 mod 256 also starts with 0x80.
        if head[8:9] != b"{" and (head[:2] == b"PK" or head[:1] == b"\x80"):
            raise CheckpointError(f"checkpoint {path} is a pickle/PyTorch file, not safetensors; "
                                  "refusing to unpickle it (convert it with save_checkpoint)")
        if len(head) < 9:
            raise CheckpointError(f"checkpoint {path} is not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head[:8])
        if n > MAX_HEADER or n > size - 8:
            raise CheckpointError(f"checkpoint {path} is not a safetensors file or is truncated (bad header length)")
        fh.seek(8)
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"checkpoint {path} is not a safetensors file (unreadable header)") from None
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"checkpoint {path} is truncated: {size} bytes, {8 + n + end} expected")
    return header.get("__metadata__") or {}


def read_metadata(path: str | Path) -> dict:
    """The model config and training metadata stored in a checkpoint, without loading tensors."""
    meta = _read_header(Path(path))
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(f"checkpoint {path} has no model config in its metadata (not written by save_checkpoint)")
    info = {}
    for key, what in (("config", "model config"), ("metadata", "training metadata")):
        try:
            info[key] = json.loads(meta.get(key, "{}"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"checkpoint {path}: its stored {what} is not JSON ({exc.msg})") from None
    return info


def resolve_device(device: str | torch.device = "auto", key: str = "device") -> torch.device:
    """The torch device for a config value: "auto" is CUDA when available, else the CPU.

    A name torch does not know, or CUDA asked for where there is none, is a user mistake: a
    ConfigError naming `key`. The one resolver of the detector, the enhancer and training.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}", key=key) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{str(device)!r} requested but CUDA is not available", key=key)
    return resolved


def load_model(path: str | Path, device: str | torch.device = "auto") -> ARASFSR:
    """Rebuild a model from a checkpoint file alone, in eval mode on `device` ("auto": CUDA if available).

    The stored metadata is available as `model.metadata`.

    Example:
        >>> model = load_model("models/weights/arasfsr_cctv.safetensors")  # doctest: +SKIP
        >>> sr = model.upscale(lr, (112, 112))  # doctest: +SKIP
    """
    path = Path(path)
    info = read_metadata(path)
    try:
        model = build_model(info["config"])
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path} has an invalid model config: {exc}") from None
    except (RuntimeError, ValueError, MemoryError) as exc:  # valid keys, but e.g. layers too large to allocate
        raise CheckpointError(f"checkpoint {path} describes a model that cannot be built "
                              f"({' '.join(str(exc).split())[:200]})") from None
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or mismatched:
        parts = [f"{label} {len(keys)} (e.g. {keys[0]})" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)) if keys]
        raise CheckpointError(f"checkpoint {path}: tensors do not match its config: {'; '.join(parts)}")
    # NaN/Inf weights would silently write black faces: refuse them here, naming the first bad tensor.
    broken = sorted(k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all())
    if broken:
        raise CheckpointError(f"checkpoint {path} has NaN or infinite weights in {len(broken)} tensor(s) "
                              f"(e.g. {broken[0]}); the training run that wrote it diverged")
    model.load_state_dict(tensors)
    model.metadata = info["metadata"]
    return model.to(resolve_device(device)).eval()


# --- optimizer state, beside the model checkpoint ---------------------------------------------


def save_optimizer_state(opt: torch.optim.Optimizer, model: torch.nn.Module, path: str | Path, **metadata) -> Path:
    """Adam moments per parameter name and the torch RNG state(s), as safetensors (for --resume)."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                tensors[f"{key}/{names[id(p)]}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return _write(tensors, path, {"metadata": json.dumps(metadata)})


def load_optimizer_state(opt: torch.optim.Optimizer, model: torch.nn.Module, path: str | Path) -> dict:
    """Restore what save_optimizer_state wrote into `opt` (for `model`'s parameters) and the RNG
    state; returns the metadata saved with it."""
    path = Path(path)
    header = _read_header(path)  # a CheckpointError for what is not a complete safetensors file
    try:
        metadata = json.loads(header["metadata"])
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"optimizer state {path} cannot be read: {exc}") from None
    for name, p in model.named_parameters():
        state = {key: tensors[f"{key}/{name}"] for key in ("step", "exp_avg", "exp_avg_sq") if f"{key}/{name}" in tensors}
        if state:
            state["exp_avg"], state["exp_avg_sq"] = (state[k].to(p.device) for k in ("exp_avg", "exp_avg_sq"))
            opt.state[p] = state
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
    return metadata
