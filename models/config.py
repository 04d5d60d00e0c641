"""Model configs (configs/model/*.yaml): the typed schema, its defaults, and loading.

The model itself takes the plain dict form (`resolve_config`), which is also what a checkpoint stores
in its metadata, so a checkpoint stays readable without this module's classes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from common.config import build, merge, read_yaml, setting

KIND = "model config"


@dataclass
class EDSRConfig:
    """EDSR-baseline encoder (paper: "E-ARASFSR")."""

    name: str = "edsr"
    n_resblocks: int = setting(16, lo=1)
    n_feats: int = setting(64, lo=1)
    res_scale: float = setting(1.0, lo=0.0)


@dataclass
class RDNConfig:
    """RDN encoder (paper: "R-ARASFSR")."""

    name: str = "rdn"
    n_blocks: int = setting(16, lo=1)
    n_convs: int = setting(8, lo=1)
    growth: int = setting(64, lo=1)
    g0: int = setting(64, lo=1)


@dataclass
class DecoderConfig:
    hidden: int = setting(256, lo=1)  # LIIF's MLP width and depth
    layers: int = setting(4, lo=1)
    # 0: the paper's decoder, the whole MLP per output pixel. > 0: ARASFSR-LM, the MLP (width `hidden`) runs once
    # per LR position and only a render MLP of this width runs per output pixel (LMF's split, models/arasfsr.py)
    render: int = setting(0, lo=0)


@dataclass
class LocalFrequencyConfig:  # sec. 3.3
    enabled: bool = True
    latent: int = setting(64, lo=1)
    token: int = setting(8, lo=1)
    width: int = setting(64, lo=1)


@dataclass
class GlobalCoordinateConfig:  # sec. 3.4, eq. 6
    enabled: bool = True
    n_freqs: int = setting(10, lo=1)


@dataclass
class ModelConfig:
    name: str = "arasfsr"
    encoder: EDSRConfig | RDNConfig = field(default_factory=EDSRConfig)  # chosen by encoder.name
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    local_frequency: LocalFrequencyConfig = field(default_factory=LocalFrequencyConfig)
    global_coordinate: GlobalCoordinateConfig = field(default_factory=GlobalCoordinateConfig)
    scale_conditioning: bool = True  # r = [1/r_y, 1/r_x], eq. 3
    skip: bool = True  # long skip connection, sec. 3.5


def resolve_config(cfg: dict | None) -> dict:
    """`cfg` (parsed YAML or a checkpoint's stored config) checked and completed with the defaults.

    Raises ConfigError naming the dotted key (e.g. `decoder.hidden`) for unknown keys, wrong types
    and out-of-range values."""
    return dataclasses.asdict(build(ModelConfig, cfg, KIND))


def load_model_config(path: str | Path, overrides: dict | None = None) -> dict:
    """Read configs/model/NAME.yaml, with `overrides` merged over it section by section, and resolve it."""
    cfg = merge(ModelConfig, read_yaml(path, KIND), overrides or {})
    return resolve_config(cfg)
