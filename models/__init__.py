"""The ARASFSR super-resolution model library.

Example:
    >>> import torch, yaml
    >>> from models import build_model, save_checkpoint, load_model
    >>> model = build_model(yaml.safe_load(open("configs/model/arasfsr_edsr.yaml")))  # doctest: +SKIP
    >>> sr = model.upscale(torch.rand(1, 3, 28, 28), (112, 112))  # doctest: +SKIP
"""
from .arasfsr import ARASFSR, GlobalCoordinateModulation, LocalFrequencyEstimator, make_coord, positional_encoding
from .checkpoint import CheckpointError, build_model, load_model, read_metadata, resolve_device, save_checkpoint
from .config import load_config, resolve_config
from .losses import charbonnier

__all__ = [
    "ARASFSR", "CheckpointError", "GlobalCoordinateModulation", "LocalFrequencyEstimator", "build_model",
    "charbonnier", "load_config", "load_model", "make_coord", "positional_encoding", "read_metadata",
    "resolve_config", "resolve_device", "save_checkpoint",
]
