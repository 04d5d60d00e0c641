"""The ARASFSR super-resolution model library.

Example:
    >>> import torch
    >>> from models import build_model, load_model, load_model_config, save_checkpoint
    >>> model = build_model(load_model_config("configs/model/arasfsr_edsr.yaml"))  # doctest: +SKIP
    >>> sr = model.upscale(torch.rand(1, 3, 28, 28), (112, 112))  # doctest: +SKIP
"""
from .arasfsr import ARASFSR, GlobalCoordinateModulation, LocalFrequencyEstimator, make_coord, positional_encoding
from .checkpoint import (CheckpointError, build_model, load_model, load_optimizer_state, read_metadata, resolve_device,
                         save_checkpoint, save_optimizer_state)
from .config import load_model_config, resolve_config
from .losses import charbonnier

__all__ = [
    "ARASFSR", "CheckpointError", "GlobalCoordinateModulation", "LocalFrequencyEstimator", "build_model",
    "charbonnier", "load_model", "load_model_config", "load_optimizer_state", "make_coord", "positional_encoding",
    "read_metadata", "resolve_config", "resolve_device", "save_checkpoint", "save_optimizer_state",
]
