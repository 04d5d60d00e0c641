"""Training configs (configs/train/*.yaml): the typed schema, its defaults, and loading.

A config names a model config file (`model:`, with optional `model_overrides:`), the data and its
LR-HR pair sampling (`data:`, models.data.PairConfig plus the folder and the camera-frame switch),
the optimisation (`train:`) and the validation (`val:`). `base: OTHER.yaml` starts from another
config (path relative to this one): sections merge key by key, other values are replaced.

Example:
    >>> cfg = load_train_config("configs/train/cctv_cpu.yaml")  # doctest: +SKIP
    >>> cfg.data.pairs().lr, cfg.train.steps  # doctest: +SKIP
    ((12, 64), 8000)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from common.config import build, merge, read_yaml, setting
from common.errors import ConfigError

from .config import load_model_config
from .data import EVAL_DEGRADATIONS, Degradation, FrameDegradation, PairConfig

ROOT = Path(__file__).resolve().parents[1]
KIND = "train config"


def repo_path(p: str | Path) -> Path:
    """A path as given if it exists (relative to the working directory), else relative to the project."""
    p = Path(p)
    return p if p.is_absolute() or p.exists() else ROOT / p


@dataclass
class FrameSettings(FrameDegradation):
    enabled: bool = False  # replace `degradation` by the camera-frame simulation (FrameDegradation)


@dataclass
class DataSettings(PairConfig):
    root: str = "data/prepared_utk"  # a prepared face folder (prepare.py)
    degradation: Degradation = field(default_factory=Degradation)
    frame: FrameSettings = field(default_factory=FrameSettings)

    def pairs(self) -> PairConfig:
        """The pair sampler's settings, with the camera-frame degradation when `frame.enabled`."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(PairConfig)}
        if self.frame.enabled:
            values["degradation"] = FrameDegradation(
                **{f.name: getattr(self.frame, f.name) for f in dataclasses.fields(FrameDegradation)})
        return PairConfig(**values)


@dataclass
class TrainSettings:
    init: str = ""  # weights to start from (same model config), e.g. to fine-tune shipped weights
    steps: int = setting(1000, lo=1)
    lr: float = setting(1.0e-4, lo=0.0)
    decay_at: float = setting(0.5, lo=0.0, hi=1.0)  # step decay (x decay) at this fraction of the steps
    decay: float = setting(0.1, lo=0.0)
    seed: int = 0
    device: str = "auto"
    threads: int = setting(0, lo=0)  # torch CPU threads (0: torch's default)
    workers: int = setting(0, lo=0, hi=32)  # DataLoader workers making batches (any count gives the same batches)
    log_every: int = setting(50, lo=1)
    save_every: int = setting(500, lo=1)
    max_minutes: float = setting(0.0, lo=0.0)  # > 0: stop (after saving; --resume continues) when this run takes longer


@dataclass
class IdentitySettings:
    """The identity loss (models/identity.py): weight 0 leaves it out."""

    weight: float = setting(0.0, lo=0.0)  # lambda: the descriptor distance's weight against the pixel loss
    faces: int = setting(2, lo=1)  # faces of each batch whose chip is rendered for it (the first ones)
    grid: int = setting(100, lo=16, hi=150)  # the chip rendered at grid x grid, resized to 150 (decoder time)
    recognizer: str = ""  # dlib's network: its .dat or DlibResNet.save's .safetensors ("": the installed .dat)


@dataclass
class ValSettings:
    every: int = setting(500, lo=1)
    images: int = setting(64, lo=1)
    lr: int = setting(64, lo=8)
    hr: int = setting(128, lo=8)
    degrade: str = setting("bicubic", choices=EVAL_DEGRADATIONS)


@dataclass
class TrainConfig:
    name: str = ""  # default: the file's stem
    base: str = ""  # a train config to start from (path relative to this file)
    model: str = ""  # a configs/model/*.yaml file
    model_overrides: dict = field(default_factory=dict)  # merged over the model config, e.g. {skip: false}
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    val: ValSettings = field(default_factory=ValSettings)
    identity: IdentitySettings = field(default_factory=IdentitySettings)

    def model_config(self) -> dict:
        """The resolved model config: the `model` file with `model_overrides` merged over it."""
        try:
            return load_model_config(repo_path(self.model), self.model_overrides)
        except ConfigError as exc:
            where = f"{self.model} with model_overrides" if self.model_overrides else self.model
            raise ConfigError(f"{where}: {exc}") from None


def _raw(path: Path) -> dict:
    """The file's mapping with its `base:` chain merged under it."""
    raw = read_yaml(path, KIND)
    if not raw.get("base"):
        return raw
    if not isinstance(raw["base"], str):
        raise ConfigError(f"{path}: base must be a file name, got {raw['base']!r}")
    return merge(TrainConfig, _raw(path.parent / raw["base"]), raw)


def load_train_config(path: str | Path) -> TrainConfig:
    """Read configs/train/NAME.yaml, following `base:`; missing keys take the dataclass defaults."""
    path = Path(path)
    raw = _raw(path)
    own = read_yaml(path, KIND)
    raw.update(name=own.get("name") or path.stem, base=own.get("base", ""))
    try:
        cfg = build(TrainConfig, raw, KIND)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not cfg.model:
        raise ConfigError(f"{path}: no `model:` (a configs/model/*.yaml file)")
    if cfg.identity.weight and cfg.identity.faces > cfg.data.batch_size:
        raise ConfigError(f"{path}: identity.faces ({cfg.identity.faces}) is more than data.batch_size "
                          f"({cfg.data.batch_size})")
    return cfg
